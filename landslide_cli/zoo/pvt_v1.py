"""PVT v1 (Wang et al., ICCV 2021) at the KDA authors' student widths: ``pvt_v1_kda``.

The student of the KDA paper (Wang et al., IEEE GRSL 2025) is a Pyramid Vision Transformer v1
with widths 128/256/512/1024 and depths 2/4/6/2, not one of the published PVT sizes (those use
widths 64/128/320/512). timm ships only PVTv2, so this module builds PVT v1 from timm's layers
(:class:`timm.layers.Mlp`, :class:`timm.layers.DropPath`, imported when a model is built, so
that registering the zoo does not import timm):

* four stages; each starts with a non-overlapping patch embedding (a convolution with kernel =
  stride = 4, 2, 2, 2, then LayerNorm), adds an absolute position embedding and runs ``depth``
  transformer blocks; the stage's tokens are reshaped to an NCHW map. The maps have strides
  4/8/16/32 (``features_only`` semantics, as the other backbones).
* a block is pre-norm: ``x + attn(LN(x))`` then ``x + mlp(LN(x))`` (LayerNorm eps 1e-6).
* spatial-reduction attention (SRA): queries from every token; keys and values from the map
  downsampled by a ``sr x sr`` convolution of stride ``sr`` (then LayerNorm); sr = 8/4/2/1.
* MLP ratios 8/8/4/4, biased q/kv projections, GELU, stochastic depth 0.1 (linear over blocks).
* heads 1/2/4/8, as in every published PVT v1 size and in the authors' configuration; the
  number of heads changes no parameter count (head widths 128/128/128/128 here).
* the position embeddings are learnt for a 224 x 224 input (grids 56/28/14/7) and bilinearly
  resized to the actual grid; the last stage's table has one extra row (the class-token slot of
  the classification model, unused here) so that the reference implementation's checkpoints
  load unchanged.

Parameter count (``in_chans=3``), per stage with width ``C``, MLP ratio ``r``, SR ratio ``s``:
a block has ``(4 + 2r) C^2 + [s > 1] s^2 C^2`` weights plus ``(r + 9) C + [s > 1] 3C`` biases
and norm parameters, i.e. 1,378,816 / 2,364,416 / 4,202,496 / 12,596,224 per block; the blocks
give 2 x 1,378,816 + 4 x 2,364,416 + 6 x 4,202,496 + 2 x 12,596,224 = 62,622,720; the patch
embeddings 6,528 + 131,840 + 525,824 + 2,100,224 = 2,764,416; the position embeddings
56^2 x 128 + 28^2 x 256 + 14^2 x 512 + (7^2 + 1) x 1024 = 753,664. Total **66,140,800**
(66.1 M, the count quoted in issue 15 for the authors' model). The configuration was checked by
enumerating the free choices: MLP ratios 4/4/4/4 give 63.8 M, 8/8/4/4 give 66.1 M, 8/8/8/8
give 95.5 M; no qkv bias removes 19,200; position embeddings for a 512 input add 3.2 M. timm's
PVTv2 at the same widths, depths and MLP ratios counts 69,151,488 (overlapping 7x7/3x3 patch
embeddings, depthwise convolutions in the MLP, no position embeddings).

The layer settings are those of the authors' public model code (MLP ratios 8/8/4/4, heads
1/2/4/8, qkv bias, block LayerNorm eps 1e-6, 224 position grid, stochastic depth 0.1); there is
no difference in the layer set or the count. One in behaviour: their forward resizes a position
table unless the grid has as many tokens as the *first* stage's table (so, e.g., a 448 input
fails in stage 2 there); here a table is resized whenever its grid differs from the input's.
This backbone has no published weights:
``pretrained=True`` is refused; ``weights=PATH`` loads a local state dict (``.safetensors``,
``.pth``/``.pt``), e.g. the encoder of the authors' checkpoint (``encoder.``/``module.``/
``backbone.`` prefixes are stripped, classification-only keys are ignored).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from landslide_cli.errors import WeightsUnavailable
from landslide_cli.zoo.registries import BACKBONES

#: the KDA authors' student configuration
KDA_CONFIG = {
    "embed_dims": (128, 256, 512, 1024),
    "depths": (2, 4, 6, 2),
    "num_heads": (1, 2, 4, 8),
    "mlp_ratios": (8, 8, 4, 4),
    "sr_ratios": (8, 4, 2, 1),
}
#: parameter count of ``pvt_v1_kda`` with 3 input bands (pinned in the tests)
KDA_PARAMS = 66_140_800


class PatchEmbed(nn.Module):
    """Non-overlapping patches: ``Conv(k = stride = patch)`` then LayerNorm over channels."""

    def __init__(self, in_chans: int, dim: int, patch: int) -> None:
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch, stride=patch)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        h, w = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), int(h), int(w)


class SRAttention(nn.Module):
    """Multi-head attention whose keys/values come from a ``sr``-times downsampled map."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.sr_ratio = sr_ratio
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        heads = self.num_heads
        q = self.q(x).reshape(b, n, heads, c // heads).transpose(1, 2)
        src = x
        if self.sr_ratio > 1:
            grid = x.transpose(1, 2).reshape(b, c, h, w)
            src = self.norm(self.sr(grid).flatten(2).transpose(1, 2))
        k, v = self.kv(src).reshape(b, -1, 2, heads, c // heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """Pre-norm transformer block with SRA and a GELU MLP."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, sr_ratio: int,
                 drop_path: float = 0.0, qkv_bias: bool = True) -> None:
        from timm.layers import DropPath, Mlp

        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = SRAttention(dim, num_heads, sr_ratio, qkv_bias=qkv_bias)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), h, w))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PVTv1(nn.Module):
    """PVT v1 feature extractor: four NCHW maps at strides 4/8/16/32.

    Attribute names follow the reference implementation (``patch_embed{i}``, ``pos_embed{i}``,
    ``block{i}``) so its state dicts load without renaming.
    """

    reduction = 32

    def __init__(self, *, in_chans: int = 3, embed_dims: Sequence[int] = (64, 128, 256, 512),
                 depths: Sequence[int] = (3, 4, 6, 3), num_heads: Sequence[int] = (1, 2, 4, 8),
                 mlp_ratios: Sequence[float] = (8, 8, 4, 4),
                 sr_ratios: Sequence[int] = (8, 4, 2, 1), img_size: int = 224,
                 qkv_bias: bool = True, drop_path_rate: float = 0.1) -> None:
        from timm.layers import trunc_normal_

        super().__init__()
        self.widths: list[int] = [int(d) for d in embed_dims]
        self.strides: list[int] = [4, 8, 16, 32]
        self.depths = [int(d) for d in depths]
        total = sum(self.depths)
        rates = [drop_path_rate * j / max(total - 1, 1) for j in range(total)]
        start = 0
        cin = in_chans
        for i, (dim, depth) in enumerate(zip(self.widths, self.depths, strict=True)):
            grid = img_size // self.strides[i]
            rows = grid * grid + (1 if i == 3 else 0)  # the last table keeps the cls-token slot
            pos = nn.Parameter(torch.zeros(1, rows, dim))
            trunc_normal_(pos, std=0.02)
            blocks = nn.ModuleList(
                Block(dim, num_heads[i], mlp_ratios[i], sr_ratios[i], rates[start + j], qkv_bias)
                for j in range(depth)
            )
            start += depth
            setattr(self, f"patch_embed{i + 1}", PatchEmbed(cin, dim, 4 if i == 0 else 2))
            setattr(self, f"pos_embed{i + 1}", pos)
            setattr(self, f"block{i + 1}", blocks)
            cin = dim
        self.apply(_init_weights)

    def _pos(self, i: int, h: int, w: int) -> torch.Tensor:
        table: torch.Tensor = getattr(self, f"pos_embed{i + 1}")
        if i == 3:
            table = table[:, 1:]
        side = math.isqrt(table.shape[1])
        if (side, side) == (h, w):
            return table
        grid = table.reshape(1, side, side, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=False)
        return grid.flatten(2).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        b = x.shape[0]
        for i in range(4):
            tokens, h, w = getattr(self, f"patch_embed{i + 1}")(x)
            tokens = tokens + self._pos(i, h, w)
            for block in getattr(self, f"block{i + 1}"):
                tokens = block(tokens, h, w)
            x = tokens.transpose(1, 2).reshape(b, -1, h, w)
            outs.append(x)
        return outs


def _init_weights(m: nn.Module) -> None:
    from timm.layers import trunc_normal_

    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise WeightsUnavailable(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, foreign pickle: one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise WeightsUnavailable(f"could not read weights {path}: {first}") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise WeightsUnavailable(f"{path} does not hold a state dict")
    return state


def load_pvt_v1_weights(model: PVTv1, path: str | Path) -> PVTv1:
    """Load a local PVT v1 state dict (prefixes stripped, first conv adapted to the bands)."""
    from timm.models import adapt_input_conv

    path = Path(path)
    state = _read_state_dict(path)
    own = model.state_dict()
    picked: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = key
        for prefix in ("module.", "encoder.", "backbone."):
            if name.startswith(prefix):
                name = name[len(prefix):]
        if name in own and isinstance(value, torch.Tensor):
            picked[name] = value
    missing = sorted(set(own) - set(picked))
    if missing:
        raise WeightsUnavailable(f"{path} is not a matching PVT v1 state dict: {len(missing)} "
                                 f"tensors missing (first: {missing[0]})")
    stem = "patch_embed1.proj.weight"
    if picked[stem].shape[1] != own[stem].shape[1]:
        picked[stem] = adapt_input_conv(own[stem].shape[1], picked[stem])
    wrong = [k for k, v in picked.items() if v.shape != own[k].shape]
    if wrong:
        raise WeightsUnavailable(f"{path}: tensor {wrong[0]} has shape "
                                 f"{tuple(picked[wrong[0]].shape)}, expected "
                                 f"{tuple(own[wrong[0]].shape)}")
    model.load_state_dict(picked)
    return model


@BACKBONES.register("pvt_v1_kda", aliases=("pvt_kda", "kda_student"), family="pvt_v1",
                    source="landslide (timm layers)", params=KDA_PARAMS,
                    description="PVT v1, widths 128/256/512/1024, depths 2/4/6/2 (KDA student)")
def build_pvt_v1_kda(*, in_chans: int = 3, pretrained: bool = False,
                     weights: str | Path | None = None) -> PVTv1:
    """The KDA authors' student: PVT v1 at widths 128/256/512/1024, depths 2/4/6/2 (66.1 M)."""
    if pretrained and weights is None:
        raise WeightsUnavailable("pvt_v1_kda has no published pretrained weights; pass a local "
                                 "PVT v1 state dict with --weights PATH (or train from scratch)")
    model = PVTv1(in_chans=in_chans, **KDA_CONFIG)  # type: ignore[arg-type]
    if weights is not None:
        load_pvt_v1_weights(model, weights)
    return model
