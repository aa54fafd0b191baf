"""TinyViT image encoder, as used by LiteMedSAM (written here because timm cannot be imported).

Parameter names follow the published checkpoints (`patch_embed.seq.*`, `layers.N.blocks.M.*`,
`neck.*`) so the real LiteMedSAM weights load with strict=True. Besides the neck output the encoder
returns every stage's output, which the Prompt Predictor Network reads as a feature pyramid.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class TinyViTConfig:
    img_size: int = 256
    in_chans: int = 3
    embed_dims: tuple[int, ...] = (64, 128, 160, 320)
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (2, 4, 5, 10)
    window_sizes: tuple[int, ...] = (7, 7, 14, 7)
    mlp_ratio: float = 4.0
    mbconv_expand_ratio: float = 4.0
    local_conv_size: int = 3
    # LiteMedSAM's released checkpoint embeds patches with 1x1 stride-1 convolutions (MobileSAM
    # used 3x3 stride 2); the weight shapes decide, so it is configurable.
    patch_kernel: int = 1
    patch_stride: int = 1
    neck_dim: int = 256


class Conv2dBN(nn.Sequential):
    """Bias-free convolution followed by batch norm (names `c` and `bn` as in the checkpoints)."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1):
        super().__init__()
        self.add_module("c", nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(cout))

    @torch.no_grad()
    def fused(self) -> nn.Conv2d:
        """One convolution with the (frozen) batch norm folded into its weight and bias."""
        c, bn = self.c, self.bn
        conv = nn.Conv2d(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding,
                         groups=c.groups, bias=True).to(c.weight.device)
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        conv.weight.copy_(c.weight * scale[:, None, None, None])
        conv.bias.copy_(bn.bias - bn.running_mean * scale)
        return conv


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of an NCHW tensor."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class PatchEmbed(nn.Module):
    def __init__(self, cfg: TinyViTConfig):
        super().__init__()
        dim = cfg.embed_dims[0]
        k, s = cfg.patch_kernel, cfg.patch_stride
        self.seq = nn.Sequential(Conv2dBN(cfg.in_chans, dim // 2, k, s), nn.GELU(), Conv2dBN(dim // 2, dim, k, s))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual block (expand 1x1, depthwise 3x3, project 1x1)."""

    def __init__(self, dim: int, expand_ratio: float):
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = Conv2dBN(dim, hidden)
        self.conv2 = Conv2dBN(hidden, hidden, 3, groups=hidden)
        self.conv3 = Conv2dBN(hidden, dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.conv1(x))
        y = self.act(self.conv2(y))
        return self.act(self.conv3(y) + x)


class PatchMerging(nn.Module):
    """Channel change plus (usually) 2x downsampling; the last merge keeps resolution."""

    def __init__(self, dim: int, out_dim: int, stride: int):
        super().__init__()
        self.conv1 = Conv2dBN(dim, out_dim)
        self.conv2 = Conv2dBN(out_dim, out_dim, 3, stride, groups=out_dim)
        self.conv3 = Conv2dBN(out_dim, out_dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # NCHW -> NCHW
        x = self.act(self.conv1(x))
        x = self.act(self.conv2(x))
        return self.conv3(x)


class WindowAttention(nn.Module):
    """Multi-head attention inside a window, with a learned bias per absolute (dy, dx) offset."""

    def __init__(self, dim: int, num_heads: int, window: int):
        super().__init__()
        self.num_heads = num_heads
        self.key_dim = dim // num_heads
        self.scale = self.key_dim ** -0.5
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window * window))
        # Offsets are numbered in order of first appearance scanning window positions row-major,
        # which is simply |dy| * window + |dx|.
        ys, xs = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
        ys, xs = ys.flatten(), xs.flatten()
        idx = (ys[:, None] - ys[None, :]).abs() * window + (xs[:, None] - xs[None, :]).abs()
        self.register_buffer("bias_idx", idx, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, C)
        b, n, _ = x.shape
        qkv = self.qkv(self.norm(x)).view(b, n, self.num_heads, -1)
        q, k, v = qkv.split([self.key_dim] * 3, dim=3)
        q, k, v = (t.permute(0, 2, 1, 3) for t in (q, k, v))
        bias = self.attention_biases[:, self.bias_idx]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class TinyViTBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, window: int, mlp_ratio: float, local_conv: int):
        super().__init__()
        self.window = window
        self.attn = WindowAttention(dim, num_heads, window)
        self.mlp = _Mlp(dim, int(dim * mlp_ratio))
        self.local_conv = Conv2dBN(dim, dim, local_conv, groups=dim)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:  # (B, H*W, C)
        h, w = hw
        b, n, c = x.shape
        win = self.window
        if h == win and w == win:
            attn = self.attn(x)
        else:
            # Zero padding happens before the attention's own LayerNorm, as in the reference model.
            grid = x.view(b, h, w, c)
            pad_b, pad_r = (win - h % win) % win, (win - w % win) % win
            if pad_b or pad_r:
                grid = F.pad(grid, (0, 0, 0, pad_r, 0, pad_b))
            ph, pw = h + pad_b, w + pad_r
            nh, nw = ph // win, pw // win
            windows = grid.view(b, nh, win, nw, win, c).transpose(2, 3).reshape(b * nh * nw, win * win, c)
            windows = self.attn(windows)
            grid = windows.view(b, nh, nw, win, win, c).transpose(2, 3).reshape(b, ph, pw, c)
            attn = grid[:, :h, :w].reshape(b, n, c)
        x = x + attn
        x = self.local_conv(x.transpose(1, 2).reshape(b, c, h, w)).view(b, c, n).transpose(1, 2)
        return x + self.mlp(x)


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


class _ConvStage(nn.Module):
    def __init__(self, dim: int, depth: int, expand: float, downsample: PatchMerging | None):
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand) for _ in range(depth))
        self.downsample = downsample


class _AttnStage(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, window: int, cfg: TinyViTConfig,
                 downsample: PatchMerging | None):
        super().__init__()
        self.blocks = nn.ModuleList(
            TinyViTBlock(dim, heads, window, cfg.mlp_ratio, cfg.local_conv_size) for _ in range(depth)
        )
        self.downsample = downsample


class TinyViT(nn.Module):
    """Returns (neck embedding, [stage outputs]) for an NCHW batch at `img_size`."""

    def __init__(self, cfg: TinyViTConfig = TinyViTConfig()):
        super().__init__()
        self.cfg = cfg
        self.channels_last = False
        dims = cfg.embed_dims
        self.patch_embed = PatchEmbed(cfg)
        stages: list[nn.Module] = []
        for i, dim in enumerate(dims):
            merge = None
            if i < len(dims) - 1:
                # The merge into the last stage keeps resolution (the neck works at 1/4 of the input).
                stride = 1 if i == len(dims) - 2 else 2
                merge = PatchMerging(dim, dims[i + 1], stride)
            if i == 0:
                stages.append(_ConvStage(dim, cfg.depths[0], cfg.mbconv_expand_ratio, merge))
            else:
                stages.append(_AttnStage(dim, cfg.depths[i], cfg.num_heads[i], cfg.window_sizes[i], cfg, merge))
        self.layers = nn.ModuleList(stages)
        self.neck = nn.Sequential(
            nn.Conv2d(dims[-1], cfg.neck_dim, 1, bias=False),
            LayerNorm2d(cfg.neck_dim),
            nn.Conv2d(cfg.neck_dim, cfg.neck_dim, 3, padding=1, bias=False),
            LayerNorm2d(cfg.neck_dim),
        )

    def fuse_for_inference(self) -> "TinyViT":
        """Fold every batch norm into its convolution and switch to channels-last memory.

        Only for a frozen encoder (the state dict then no longer has the checkpoint's `bn` keys).
        On a 2-thread CPU this takes the 256x256 LiteMedSAM encoder from about 1.7 s to 1.2 s an
        image; outputs move by about 1e-6 (benchmarks/bench_model.py, tests/test_model.py).
        """
        for module in list(self.modules()):
            for name, child in list(module.named_children()):
                if isinstance(child, Conv2dBN):
                    setattr(module, name, child.fused())
        self.channels_last = True
        return self.to(memory_format=torch.channels_last)

    @property
    def stage_channels(self) -> tuple[int, ...]:
        return tuple(self.cfg.embed_dims)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if self.channels_last:
            # Depthwise and 1x1 convolutions run faster on NHWC on the CPU, and the attention
            # stages' (B, H*W, C) tokens are then views, not copies.
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.patch_embed(x)
        stage_outputs: list[torch.Tensor] = []
        for stage in self.layers:
            if isinstance(stage, _ConvStage):
                for block in stage.blocks:
                    x = block(x)
            else:
                b, c, h, w = x.shape
                tokens = x.flatten(2).transpose(1, 2)
                for block in stage.blocks:
                    tokens = block(tokens, (h, w))
                x = tokens.transpose(1, 2).reshape(b, c, h, w)
            stage_outputs.append(x.contiguous())
            if stage.downsample is not None:
                x = stage.downsample(x)
        return self.neck(x).contiguous(), stage_outputs
