"""PVTv2 feature extractor in plain torch, for inference without importing timm/torchvision.

Training builds the PVTv2 backbones through timm (random init, ImageNet weights; see
:mod:`landslide_cli.zoo.backbones`). Loading a checkpoint for inference builds this module
instead (``build_segmenter(..., native=True)``), so inference does not pay the resident
memory of importing timm and torchvision (which timm imports).

The module mirrors timm's ``features_only=True, out_indices=(0, 1, 2, 3)`` model: the same
parameter names and shapes (``patch_embed.*``, ``stages_{i}.downsample.*``,
``stages_{i}.blocks.{j}.{norm1,attn,norm2,mlp}.*``, ``stages_{i}.norm.*``), so a checkpoint's
``backbone.body.*`` tensors load with ``strict=True``, and the same eval-mode outputs:

* stem: convolution 7x7, stride 4, padding 3, then LayerNorm (eps 1e-5) over channels; each
  later stage starts with a 3x3, stride 2, padding 1 convolution + LayerNorm (``downsample``).
* block (pre-norm, LayerNorm eps 1e-6): ``x + attn(LN(x))`` then ``x + mlp(LN(x))``.
* spatial-reduction attention: queries from every token; keys/values from the map reduced by an
  ``sr x sr`` convolution of stride ``sr`` + LayerNorm (eps 1e-5), or, for the ``_li``
  (linear) variant, adaptive average pooling to 7x7, a 1x1 convolution, LayerNorm and GELU;
  scaled dot-product attention with the usual ``1/sqrt(head_dim)`` scale.
* MLP: linear -> (ReLU, ``_li`` only) -> 3x3 depthwise convolution on the token grid -> GELU
  -> linear.
* every stage ends with a LayerNorm (eps 1e-6) and returns its NCHW map (strides 4/8/16/32).

Token <-> image moves are NHWC reshape + permute (the layout ONNX Runtime folds into its NCHWc
reorders, see :mod:`landslide_cli.zoo.pvt_onnx`), so the ONNX export needs no rewrite for
this module. There is no dropout or stochastic depth (inference only); ``train()`` mode runs
the same forward. Parameters start from torch's default init: the module is meant to receive
a checkpoint's weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

#: spatial size of the pooled key/value map of the linear (``_li``) attention
LINEAR_POOL = 7


@dataclass(frozen=True)
class PVTv2Config:
    """Per-stage settings of one PVTv2 size."""

    depths: tuple[int, int, int, int]
    widths: tuple[int, int, int, int]
    heads: tuple[int, int, int, int] = (1, 2, 5, 8)
    sr_ratios: tuple[int, int, int, int] = (8, 4, 2, 1)
    mlp_ratios: tuple[float, float, float, float] = (8, 8, 4, 4)
    linear: bool = False


_WIDE = (64, 128, 320, 512)

#: the PVTv2 sizes (Wang et al., "PVT v2", CVMJ 2022), as timm's ``pvt_v2_*`` models
CONFIGS: dict[str, PVTv2Config] = {
    "pvt_v2_b0": PVTv2Config(depths=(2, 2, 2, 2), widths=(32, 64, 160, 256)),
    "pvt_v2_b1": PVTv2Config(depths=(2, 2, 2, 2), widths=_WIDE),
    "pvt_v2_b2": PVTv2Config(depths=(3, 4, 6, 3), widths=_WIDE),
    "pvt_v2_b2_li": PVTv2Config(depths=(3, 4, 6, 3), widths=_WIDE, linear=True),
    "pvt_v2_b3": PVTv2Config(depths=(3, 4, 18, 3), widths=_WIDE),
    "pvt_v2_b4": PVTv2Config(depths=(3, 8, 27, 3), widths=_WIDE),
    "pvt_v2_b5": PVTv2Config(depths=(3, 6, 40, 3), widths=_WIDE, mlp_ratios=(4, 4, 4, 4)),
}


def _to_tokens(grid: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, H * W, C)`` through an NHWC permute."""
    b, c = grid.shape[:2]
    return grid.permute(0, 2, 3, 1).reshape(b, -1, c)


def _to_grid(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``(B, H * W, C)`` -> ``(B, C, H, W)`` (a channels-last view)."""
    b, _, c = tokens.shape
    return tokens.reshape(b, h, w, c).permute(0, 3, 1, 2)


class PatchEmbed(nn.Module):
    """Overlapping patch embedding: ``Conv(k, stride, padding=k // 2)`` then LayerNorm.

    Takes an NCHW map, returns NHWC ``(B, H', W', C)``.
    """

    def __init__(self, in_chans: int, dim: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=kernel, stride=stride,
                              padding=kernel // 2)
        self.norm = nn.LayerNorm(dim, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class SpatialReductionAttention(nn.Module):
    """Multi-head attention with keys/values from a reduced copy of the token grid."""

    def __init__(self, dim: int, heads: int, sr_ratio: int, linear: bool) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.head_dim = dim // heads
        # the default 1/sqrt(head_dim), as a constant: the ONNX graph needs no Shape/Sqrt
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.linear = linear
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.pool: nn.Module | None = None
        self.sr: nn.Conv2d | None = None
        self.norm: nn.LayerNorm | None = None
        self.act: nn.Module | None = None
        if linear:
            self.pool = nn.AdaptiveAvgPool2d(LINEAR_POOL)
            self.sr = nn.Conv2d(dim, dim, kernel_size=1)
            self.norm = nn.LayerNorm(dim, eps=1e-5)
            self.act = nn.GELU()
        elif sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim, eps=1e-5)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        q = self.q(x).reshape(b, n, self.heads, self.head_dim).permute(0, 2, 1, 3)
        src = x
        if self.sr is not None and self.norm is not None:
            grid = _to_grid(x, h, w)
            if self.pool is not None:
                grid = self.pool(grid)
            src = self.norm(_to_tokens(self.sr(grid)))
            if self.act is not None:
                src = self.act(src)
        kv = self.kv(src).reshape(b, -1, 2, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        k, v = kv.unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class DepthwiseMlp(nn.Module):
    """``fc1 -> [ReLU] -> 3x3 depthwise conv on the grid -> GELU -> fc2``."""

    def __init__(self, dim: int, hidden: int, linear: bool) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.relu: nn.Module = nn.ReLU() if linear else nn.Identity()
        self.dwconv = nn.Conv2d(hidden, hidden, kernel_size=3, padding=1, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = self.relu(self.fc1(x))
        x = _to_tokens(self.dwconv(_to_grid(x, h, w)))
        return self.fc2(self.act(x))


class Block(nn.Module):
    """Pre-norm transformer block: spatial-reduction attention, then the depthwise MLP."""

    def __init__(self, dim: int, heads: int, sr_ratio: int, mlp_ratio: float,
                 linear: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = SpatialReductionAttention(dim, heads, sr_ratio, linear)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = DepthwiseMlp(dim, int(dim * mlp_ratio), linear)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), h, w)
        return x + self.mlp(self.norm2(x), h, w)


class Stage(nn.Module):
    """[Downsample] -> blocks -> LayerNorm; returns the stage's NCHW map.

    The input is NCHW when the stage has a ``downsample``, otherwise the stem's NHWC output.
    """

    def __init__(self, dim: int, depth: int, heads: int, sr_ratio: int, mlp_ratio: float,
                 linear: bool, in_dim: int | None) -> None:
        super().__init__()
        self.downsample = (PatchEmbed(in_dim, dim, kernel=3, stride=2)
                           if in_dim is not None else None)
        self.blocks = nn.ModuleList(Block(dim, heads, sr_ratio, mlp_ratio, linear)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample is not None:
            x = self.downsample(x)
        b, h, w, c = x.shape
        tokens = x.reshape(b, h * w, c)
        for block in self.blocks:
            tokens = block(tokens, h, w)
        return _to_grid(self.norm(tokens), h, w).contiguous()


class PVTv2(nn.Module):
    """The four-stage PVTv2 feature extractor: ``forward(x) -> [s4, s8, s16, s32]`` (NCHW)."""

    def __init__(self, config: PVTv2Config, *, in_chans: int = 3) -> None:
        super().__init__()
        self.config = config
        self.patch_embed = PatchEmbed(in_chans, config.widths[0], kernel=7, stride=4)
        for i in range(4):
            stage = Stage(config.widths[i], config.depths[i], config.heads[i],
                          config.sr_ratios[i], config.mlp_ratios[i], config.linear,
                          in_dim=config.widths[i - 1] if i else None)
            self.add_module(f"stages_{i}", stage)

    def stages(self) -> list[Stage]:
        return [getattr(self, f"stages_{i}") for i in range(4)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.patch_embed(x)
        outs: list[torch.Tensor] = []
        for stage in self.stages():
            x = stage(x)
            outs.append(x)
        return outs


class NativeFeatures(nn.Module):
    """Torch-only twin of :class:`~landslide_cli.zoo.backbones.TimmFeatures` for PVTv2: the
    same interface (``body``, ``widths``, ``strides``, ``reduction``, ``model_name``) and
    state-dict keys, four stride-4/8/16/32 maps."""

    reduction = 32

    def __init__(self, model_name: str, *, in_chans: int = 3) -> None:
        super().__init__()
        if model_name not in CONFIGS:
            raise ValueError(f"no native PVTv2 {model_name!r}; known: {', '.join(CONFIGS)}")
        self.model_name = model_name
        self.body = PVTv2(CONFIGS[model_name], in_chans=in_chans)
        self.widths: list[int] = list(CONFIGS[model_name].widths)
        self.strides: list[int] = [4, 8, 16, 32]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.body(x)
