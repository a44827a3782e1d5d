"""KDA discriminator: a frozen DINOv2 backbone plus a trainable multi-level convolutional head.

The discriminator scores feature maps as teacher-like (target 1) or student-like (target 0)
with a least-squares GAN objective (MSE on raw scores). Design:

1. Input: a feature map ``(N, in_dim, h, w)`` (the teacher's width or the student's projected
   width). If ``in_dim`` differs from the ViT width, a trainable 1x1 convolution projects it.
2. The map is used as the patch-token grid of a frozen DINOv2 ViT: its (interpolated) position
   embeddings are added, the class/register tokens prepended and the frozen blocks run. The
   patch embedding is skipped (the input already is a feature map).
3. The outputs of ``levels`` evenly spaced blocks (e.g. blocks 2, 5, 8, 11 of 12) pass through
   the ViT's final LayerNorm and are reshaped to NCHW grids.
4. One trainable head per level: ``3x3 conv -> LeakyReLU(0.2) -> 3x3 stride-2 conv ->
   GroupNorm -> LeakyReLU(0.2)``.
5. Fusion (``fuse="concat"``): concatenate the level features, ``1x1 conv -> LeakyReLU``, then
   a ``3x3`` convolution to a one-channel PatchGAN score map ``(N, 1, ceil(h/2), ceil(w/2))``.
   ``fuse="sum"``: every level ends in its own 3x3 score convolution and the maps are averaged.

The ViT's parameters never require gradients, but nothing runs under ``no_grad``: gradients
flow through the frozen blocks into the input map, which is how the generator (the student)
is trained against the discriminator.

Use :meth:`Discriminator.trainable_parameters` for the optimizer and
:meth:`Discriminator.trainable_state_dict` to save only the parts that learn.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from landslide_cli.errors import LandslideError
from landslide_cli.zoo.registries import DISCRIMINATORS, TEACHERS
from landslide_cli.zoo.teachers import ViTTeacher

FUSE_MODES = ("concat", "sum")


def evenly_spaced(depth: int, levels: int) -> list[int]:
    """``levels`` block indices spread over ``depth`` blocks, always ending with the last one."""
    levels = max(1, min(levels, depth))
    return sorted({round((i + 1) * depth / levels) - 1 for i in range(levels)})


def _groups(channels: int) -> int:
    for g in (32, 16, 8, 4, 2):
        if channels % g == 0:
            return g
    return 1


class LevelHead(nn.Module):
    """3x3 conv -> LeakyReLU -> 3x3 stride-2 conv -> GroupNorm -> LeakyReLU."""

    def __init__(self, cin: int, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, width, 3, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(width, width, 3, stride=2, padding=1),
            nn.GroupNorm(_groups(width), width),
            nn.LeakyReLU(0.2, inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Discriminator(nn.Module):
    """Frozen DINOv2 + multi-level PatchGAN head; ``forward(map) -> (N, 1, h', w')`` scores."""

    def __init__(self, backbone: ViTTeacher, in_dim: int, *, levels: int = 4,
                 head_width: int = 128, fuse: str = "concat") -> None:
        super().__init__()
        if fuse not in FUSE_MODES:
            raise LandslideError(f"unknown discriminator fusion {fuse!r}; choose concat or sum")
        if in_dim < 1 or head_width < 1 or levels < 1:
            raise LandslideError(
                f"discriminator needs in_dim, head_width and levels >= 1 "
                f"(got {in_dim}, {head_width}, {levels})"
            )
        self.backbone = backbone
        self.in_dim = int(in_dim)
        self.width = backbone.embed_dim
        self.fuse_mode = fuse
        self.proj: nn.Module = (
            nn.Conv2d(in_dim, self.width, 1) if in_dim != self.width else nn.Identity()
        )
        self.level_indices = evenly_spaced(backbone.num_levels, levels)
        self.heads = nn.ModuleList(LevelHead(self.width, head_width) for _ in self.level_indices)
        if fuse == "concat":
            self.fuse = nn.Sequential(
                nn.Conv2d(head_width * len(self.level_indices), head_width, 1),
                nn.LeakyReLU(0.2, inplace=True),
                nn.Conv2d(head_width, 1, 3, padding=1),
            )
        else:
            self.fuse = nn.ModuleList(
                nn.Conv2d(head_width, 1, 3, padding=1) for _ in self.level_indices
            )

    def level_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Projected input run through the frozen ViT: one NCHW map per selected block."""
        if x.ndim != 4 or x.shape[1] != self.in_dim:
            raise LandslideError(
                f"discriminator expects (N, {self.in_dim}, h, w) maps, got {tuple(x.shape)}"
            )
        return self.backbone.run_grid(self.proj(x), self.level_indices, norm=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [head(m) for head, m in zip(self.heads, self.level_maps(x), strict=True)]
        if self.fuse_mode == "concat":
            return self.fuse(torch.cat(feats, dim=1))
        scores = [conv(f) for conv, f in zip(self.fuse, feats, strict=True)]
        return torch.stack(scores, dim=0).mean(dim=0)

    def train(self, mode: bool = True) -> Discriminator:
        super().train(mode)
        self.backbone.train(False)  # frozen ViT: always eval
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """State of the projection and heads only (the frozen ViT comes from its weights)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("backbone.")}


def build_discriminator(teacher_name: str = "vit_small_patch14_dinov2", in_dim: int | None = None,
                        *, pretrained: bool = False, weights: str | Path | None = None,
                        levels: int = 4, head_width: int = 128, fuse: str = "concat",
                        **timm_overrides: Any) -> Discriminator:
    """Build the KDA discriminator on a frozen DINOv2 ViT.

    ``in_dim=None`` means the ViT's own width (no input projection). ``pretrained``/``weights``
    and ``timm_overrides`` apply to the ViT as for :data:`TEACHERS` (see
    :mod:`landslide_cli.zoo.teachers`).
    """
    import landslide_cli.zoo.teachers  # noqa: F401 - registers the teachers

    name = TEACHERS.resolve(teacher_name)
    if TEACHERS.entry(name).info.get("family") != "dinov2":
        raise LandslideError(
            f"the discriminator needs a DINOv2 (ViT) backbone, not {name}; choose one of: "
            + ", ".join(DISCRIMINATORS.names())
        )
    backbone = TEACHERS.build(name, pretrained=pretrained, weights=weights, **timm_overrides)
    return Discriminator(backbone, in_dim if in_dim is not None else backbone.embed_dim,
                         levels=levels, head_width=head_width, fuse=fuse)


def _register() -> None:
    for entry in TEACHERS:
        if entry.info.get("family") != "dinov2":
            continue

        def build(in_dim: int | None = None, *, _name: str = entry.name,
                  **kw: Any) -> Discriminator:
            return build_discriminator(_name, in_dim, **kw)

        build.__doc__ = f"KDA discriminator on a frozen {entry.name}"
        DISCRIMINATORS.add(entry.name, build, embed_dim=entry.info.get("embed_dim"),
                           depth=entry.info.get("depth"), head="multi-level PatchGAN")


_register()
