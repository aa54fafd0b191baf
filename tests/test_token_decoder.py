"""The token-layout upscaling path must reproduce the NCHW modules it stands in for."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from sam2rad.backbones.litemedsam import LiteMedSAMBackbone
from sam2rad.backbones.tinyvit import LayerNorm2d
from sam2rad.backbones.token_decoder import (decode_single_mask, nchw_to_tokens, project_to_masks,
                                             run_stack_on_tokens, single_mask_decoder_supported,
                                             stack_to_masks, supports_tokens)


def _close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-5) -> None:
    assert a.shape == b.shape
    err = float((a - b).detach().abs().max())
    assert err <= rel * max(1.0, float(b.detach().abs().max())), f"max |difference| {err}"


def test_stack_on_tokens_matches_nchw_modules():
    torch.manual_seed(0)
    stack = nn.Sequential(nn.Conv2d(24, 16, 1), LayerNorm2d(16), nn.GELU(),
                          nn.ConvTranspose2d(16, 8, 2, stride=2), LayerNorm2d(8), nn.GELU(),
                          nn.ConvTranspose2d(8, 6, 2, stride=2))
    for m in stack:  # non-trivial norm parameters, so a swapped axis would show
        if isinstance(m, LayerNorm2d):
            nn.init.normal_(m.weight)
            nn.init.normal_(m.bias)
    x = torch.randn(3, 24, 5, 7)
    vectors = torch.randn(3, 2, 6)
    expected = torch.einsum("nkc,nchw->nkhw", vectors, stack(x))  # (3, 2, 20, 28)
    feats, ups = run_stack_on_tokens(stack, nchw_to_tokens(x))
    assert ups == 2
    _close(project_to_masks(feats, ups, vectors), expected)
    _close(project_to_masks(feats, ups, vectors[:, :1]), expected[:, :1])  # the single-vector branch
    # Folding the vectors into the last transposed convolution gives the same masks...
    for k in (1, 2):
        _close(stack_to_masks(stack, nchw_to_tokens(x), vectors[:, :k]), expected[:, :k])
    # ...and a stack ending in a nonlinearity takes the unfolded path.
    with_gelu = nn.Sequential(*stack, nn.GELU())
    _close(stack_to_masks(with_gelu, nchw_to_tokens(x), vectors),
           torch.einsum("nkc,nchw->nkhw", vectors, with_gelu(x)))


def test_unsupported_layers_are_refused():
    assert not supports_tokens(nn.Sequential(nn.Conv2d(4, 4, 3)))
    assert not supports_tokens(nn.Sequential(nn.ConvTranspose2d(4, 4, 2, stride=1)))
    assert not supports_tokens(nn.Sequential(nn.ReLU()))
    assert supports_tokens(nn.Sequential(nn.ConvTranspose2d(4, 4, 2, stride=2), nn.GELU()))


@pytest.fixture(scope="module")
def lite_backbone() -> LiteMedSAMBackbone:
    return LiteMedSAMBackbone()


def test_single_mask_decoder_matches_sam2_decoder_and_its_gradients(lite_backbone):
    bb = lite_backbone
    dec = bb.mask_decoder
    assert single_mask_decoder_supported(dec)
    g = torch.Generator().manual_seed(1)
    emb = torch.randn(3, 256, 64, 64, generator=g) * 0.5
    boxes = torch.tensor([[30.0, 40, 200, 120], [10, 10, 60, 90], [100, 150, 250, 250]])
    sparse, dense = bb.encode_prompts(boxes=boxes)
    extra = torch.randn(3, 4, 256, generator=g) * 0.1
    results = []
    for fast in (False, True):
        s = torch.cat([sparse, extra], 1).detach().requires_grad_()
        d = (dense + torch.randn(dense.shape, generator=torch.Generator().manual_seed(2)) * 0.1
             ).detach().requires_grad_()
        if fast:
            masks, iou, _ = decode_single_mask(dec, emb, bb.dense_pe(), s, d)
        else:
            masks, iou, _, _ = dec(image_embeddings=emb, image_pe=bb.dense_pe(), sparse_prompt_embeddings=s,
                                   dense_prompt_embeddings=d, multimask_output=False, repeat_image=False)
            iou = iou[:, 0]
        weights = torch.randn(masks.shape, generator=torch.Generator().manual_seed(3))
        ((masks * weights).sum() + iou.sum()).backward()
        results.append((masks.detach(), iou.detach(), s.grad, d.grad))
    for a, b in zip(results[1], results[0]):
        _close(a, b)


def test_backbone_decode_uses_the_fast_path_only_for_one_mask(lite_backbone):
    bb = lite_backbone
    emb = torch.randn(1, 256, 64, 64, generator=torch.Generator().manual_seed(4))
    sparse, dense = bb.encode_prompts(boxes=torch.tensor([[20.0, 20, 120, 90]]))
    from sam2rad.backbones.base import FeaturePyramid

    feats = FeaturePyramid(emb, [emb], None)
    with torch.no_grad():
        one = bb.decode(feats, sparse, dense)
        three = bb.decode(feats, sparse, dense, multimask=True)
    assert one.low_res_logits.shape == (1, 1, 256, 256) and one.iou.shape == (1,)
    assert three.low_res_logits.shape == (1, 3, 256, 256) and three.iou.shape == (1, 3)


def test_ppn_mask_head_matches_its_nchw_form():
    """The PPN's mask head in token layout equals its modules run on NCHW tensors plus an einsum."""
    import torch.nn.functional as F

    from sam2rad.backbones.base import FeaturePyramid
    from sam2rad.ppn import PPNConfig, PromptPredictor

    torch.manual_seed(5)
    ppn = PromptPredictor(PPNConfig(num_queries=4, num_blocks=2, mlp_dim=64), level_channels=(32, 16), dim=32)
    emb = torch.randn(2, 32, 16, 16)
    feats = FeaturePyramid(emb, [emb, torch.randn(2, 16, 8, 8)], None)
    captured = {}
    ppn.final_norm.register_forward_hook(lambda m, i, o: captured.update(queries=o))
    ppn.blocks[0].register_forward_hook(lambda m, i, o: captured.update(coarse=o[1]))
    out = ppn(feats)
    coarse = captured["coarse"].transpose(1, 2).reshape(2, 32, 16, 16)  # level 0 is not pooled here
    pixel = ppn.mask_features(emb + F.interpolate(coarse, size=(16, 16), mode="bilinear", align_corners=False))
    weights = ppn.mask_hyper(captured["queries"].mean(dim=1))
    expected = torch.einsum("nc,nchw->nhw", weights, pixel).unsqueeze(1) + ppn.mask_bias
    _close(out.mask_logits, expected)
