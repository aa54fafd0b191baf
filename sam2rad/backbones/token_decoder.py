"""SAM's mask decoder (single-mask output) and SAM-style upscaling stacks in channels-last token layout.

SAM's mask decoder (and the PPN's mask head) upsample with 2x2 stride-2 transposed convolutions,
channel LayerNorms and GELUs on NCHW tensors, then dot every pixel with a hypernetwork vector. On a
CPU most of that time goes to layout changes: the transposed convolutions hand back tensors whose
gradients arrive in another memory layout, and elementwise backward kernels on mixed layouts run
about 4x slower than on contiguous ones (gelu_backward on 5x32x256x256: 127 ms vs 29 ms on 2
threads). Here the same weights run as matrix products on (..., C) tokens, where a 2x2/2 transposed
convolution is a linear map to (..., 2, 2, C_out) and a LayerNorm2d is F.layer_norm on the last axis;
every tensor stays contiguous and only the final one-channel mask is shuffled into pixel order.
The result equals the module's own forward up to float rounding (tests check both).

The two-way transformer runs here too, on the same modules' weights, for two CPU savings: image
tokens attending to the ~10 prompt tokens use a plain softmax (the fused kernel is about 1.6x slower
forward+backward at that shape), and the image positional encoding is added once per layer, not twice.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _is_layer_norm_2d(module: nn.Module) -> bool:
    # sam2's LayerNorm2d and ours share the shape of their parameters and an eps; neither is a subclass
    # of nn.LayerNorm, so they are recognised by name.
    return type(module).__name__ == "LayerNorm2d" and hasattr(module, "eps")


def supports_tokens(stack: nn.Sequential) -> bool:
    """True when every layer of `stack` has a token-layout equivalent here."""
    for m in stack:
        if isinstance(m, nn.ConvTranspose2d):
            ok = (m.kernel_size == (2, 2) and m.stride == (2, 2) and m.padding == (0, 0)
                  and m.output_padding == (0, 0) and m.groups == 1 and m.dilation == (1, 1))
        elif isinstance(m, nn.Conv2d):
            ok = m.kernel_size == (1, 1) and m.stride == (1, 1) and m.groups == 1 and m.padding in ((0, 0), "valid")
        elif isinstance(m, nn.GELU) or _is_layer_norm_2d(m):
            ok = True
        else:
            ok = False
        if not ok:
            return False
    return True


def run_stack_on_tokens(stack: nn.Sequential, tokens: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Run a conv/LayerNorm2d/GELU stack on (N, H, W, C) tokens.

    Returns (N, H, W, 2, 2, ..., C_out) with one (2, 2) pair of sub-pixel axes per transposed
    convolution (row offset, then column offset), and the number of such pairs.
    """
    x = tokens
    ups = 0
    for m in stack:
        if isinstance(m, nn.ConvTranspose2d):
            c_in, c_out = m.weight.shape[:2]
            # out[2i+a, 2j+b, o] = sum_c x[i, j, c] * W[c, o, a, b] + bias[o]
            weight = m.weight.permute(2, 3, 1, 0).reshape(4 * c_out, c_in)  # rows ordered (a, b, o)
            bias = None if m.bias is None else m.bias.repeat(4)
            x = F.linear(x, weight, bias).unflatten(-1, (2, 2, c_out))
            ups += 1
        elif isinstance(m, nn.Conv2d):
            x = F.linear(x, m.weight[:, :, 0, 0], m.bias)
        elif isinstance(m, nn.GELU):
            x = F.gelu(x, approximate=m.approximate)
        else:  # LayerNorm2d: normalise over channels, i.e. the last axis here
            x = F.layer_norm(x, (x.shape[-1],), m.weight, m.bias, m.eps)
    return x, ups


class _RowDot(torch.autograd.Function):
    """(N, P, C) . (N, C) -> (N, P). Autograd's own backward for bmm(features, vector) forms the
    (N, P, C) gradient as a batched product with an inner size of 1, which is slow on a CPU; a
    broadcast multiply writes the same numbers several times faster."""

    @staticmethod
    def forward(ctx, features: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(features, vectors)
        return torch.bmm(features, vectors.unsqueeze(2)).squeeze(2)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        features, vectors = ctx.saved_tensors
        g_features = grad.unsqueeze(2) * vectors.unsqueeze(1) if ctx.needs_input_grad[0] else None
        g_vectors = torch.bmm(grad.unsqueeze(1), features).squeeze(1) if ctx.needs_input_grad[1] else None
        return g_features, g_vectors


def _pixel_order(masks: torch.Tensor, ups: int) -> torch.Tensor:
    """(N, K, H, W, [2, 2] * ups) sub-pixel values -> (N, K, H * 2^ups, W * 2^ups) images."""
    n, k, h, w = masks.shape[:4]
    # axes: n, k, h, w, a1, b1, a2, b2, ... -> n, k, h, a1, a2, ..., w, b1, b2, ...
    rows = [4 + 2 * i for i in range(ups)]
    cols = [5 + 2 * i for i in range(ups)]
    scale = 2 ** ups
    return masks.permute(0, 1, 2, *rows, 3, *cols).reshape(n, k, h * scale, w * scale)


def project_to_masks(features: torch.Tensor, ups: int, vectors: torch.Tensor) -> torch.Tensor:
    """Dot (N, H, W, [2, 2] * ups, C) features with per-row vectors (N, K, C): masks (N, K, H*2^u, W*2^u)."""
    n, h, w = features.shape[:3]
    c = features.shape[-1]
    k = vectors.shape[1]
    flat = features.reshape(n, -1, c)
    masks = torch.bmm(vectors, flat.transpose(1, 2)) if k > 1 else _RowDot.apply(flat, vectors[:, 0]).unsqueeze(1)
    return _pixel_order(masks.reshape(n, k, h, w, *(2, 2) * ups), ups)


def stack_to_masks(stack: nn.Sequential, tokens: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """project_to_masks(run_stack_on_tokens(stack, tokens), vectors) for (N, H, W, C) tokens.

    When the stack ends in a transposed convolution (nothing nonlinear after it), the vectors are
    folded into its weights first: dotting its output with a vector is itself a linear map, so the
    largest tensor of the stack (C_out channels at the final resolution) is never formed.
    """
    last = stack[-1]
    if not isinstance(last, nn.ConvTranspose2d) or len(stack) < 2:
        features, ups = run_stack_on_tokens(stack, tokens)
        return project_to_masks(features, ups, vectors)
    features, ups = run_stack_on_tokens(stack[:-1], tokens)
    n, h, w = features.shape[:3]
    c_in = features.shape[-1]
    k = vectors.shape[1]
    # mask[.., a, b] = sum_c x[c] * (sum_o v[o] W[c, o, a, b]) + sum_o v[o] bias[o]
    folded = torch.einsum("coab,nko->nckab", last.weight, vectors).reshape(n, c_in, k * 4)
    masks = torch.bmm(features.reshape(n, -1, c_in), folded).unflatten(-1, (k, 4))
    if last.bias is not None:
        masks = masks + (vectors @ last.bias)[:, None, :, None]
    masks = masks.reshape(n, h, w, *(2, 2) * ups, k, 2, 2).movedim(-3, 1)  # k after n
    return _pixel_order(masks, ups + 1)


def nchw_to_tokens(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1)


_FEW_KEYS = 64  # at most this many keys: plain softmax attention beats the fused kernel on a CPU


def multi_head_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Softmax attention of (N, Lq, C) queries over (N, Lk, C) keys/values split into heads."""
    q, k, v = (t.unflatten(-1, (heads, -1)).transpose(1, 2) for t in (q, k, v))
    if k.shape[-2] <= _FEW_KEYS:
        out = torch.softmax((q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5, dim=-1) @ v
    else:
        out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).flatten(2)


def _attend(attn: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """sam2's Attention (no dropout: the decoder is frozen and in eval mode)."""
    out = multi_head_attention(attn.q_proj(q), attn.k_proj(k), attn.v_proj(v), attn.num_heads)
    return attn.out_proj(out)


def two_way_transformer(transformer: nn.Module, image: torch.Tensor, image_pe: torch.Tensor,
                        tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sam2's TwoWayTransformer on (N, HW, C) image tokens and a (1, HW, C) positional encoding."""
    queries, keys = tokens, image
    for layer in transformer.layers:
        if layer.skip_first_layer_pe:
            queries = layer.norm1(_attend(layer.self_attn, queries, queries, queries))
        else:
            q = queries + tokens
            queries = layer.norm1(queries + _attend(layer.self_attn, q, q, queries))
        keys_pe = keys + image_pe  # keys do not change until the end of the layer
        queries = layer.norm2(queries + _attend(layer.cross_attn_token_to_image, queries + tokens, keys_pe, keys))
        queries = layer.norm3(queries + layer.mlp(queries))
        keys = layer.norm4(keys + _attend(layer.cross_attn_image_to_token, keys_pe, queries + tokens, queries))
    final = _attend(transformer.final_attn_token_to_image, queries + tokens, keys + image_pe, keys)
    return transformer.norm_final_attn(queries + final), keys


def single_mask_decoder_supported(decoder: nn.Module) -> bool:
    """sam2's MaskDecoder without high-resolution skips or stability-based mask switching."""
    transformer = getattr(decoder, "transformer", None)
    attentions = [m for m in transformer.modules() if "Attention" in type(m).__name__] if transformer else []
    return (type(transformer).__name__ == "TwoWayTransformer"
            # RoPE or other attention variants are not reproduced here
            and all(type(m).__name__ in ("Attention", "TwoWayAttentionBlock") for m in attentions)
            and not getattr(decoder, "use_high_res_features", False)
            and not getattr(decoder, "dynamic_multimask_via_stability", False)
            and supports_tokens(decoder.output_upscaling))


def decode_single_mask(decoder: nn.Module, image_embedding: torch.Tensor, image_pe: torch.Tensor,
                       sparse: torch.Tensor, dense: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """sam2 MaskDecoder(multimask_output=False, repeat_image=False) computing only the mask it returns.

    image_embedding (N, C, h, w); image_pe (1, C, h, w); sparse (N, K, C); dense (N, C, h, w).
    Returns (masks (N, 1, 4h, 4w), iou (N,), object-score logits (N, 1) or None).
    """
    s = 1 if decoder.pred_obj_scores else 0
    parts = ([decoder.obj_score_token.weight] if s else []) + [decoder.iou_token.weight, decoder.mask_tokens.weight]
    output_tokens = torch.cat(parts, dim=0).unsqueeze(0).expand(sparse.shape[0], -1, -1)
    tokens = torch.cat([output_tokens, sparse], dim=1)
    n, c, h, w = image_embedding.shape
    image = nchw_to_tokens(image_embedding + dense).reshape(n, h * w, c).contiguous()
    # One row of positional encoding, broadcast (SAM's own path copies it per row).
    hs, keys = two_way_transformer(decoder.transformer, image, nchw_to_tokens(image_pe).reshape(1, h * w, c), tokens)
    features, ups = run_stack_on_tokens(decoder.output_upscaling, keys.reshape(n, h, w, c))
    hyper = decoder.output_hypernetworks_mlps[0](hs[:, s + 1])  # the single-mask token is token 0
    masks = project_to_masks(features, ups, hyper[:, None])
    iou = decoder.iou_prediction_head(hs[:, s])[:, 0]
    obj = decoder.pred_obj_score_head(hs[:, 0]) if s else None
    return masks, iou, obj
