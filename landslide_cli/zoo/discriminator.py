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

:class:`AuthorsDiscriminator` (registered as ``kda_authors``) follows the design of the paper's
public code: transposed convolutions turn the ``grid x grid`` map (16x16 for a 224 teacher
input) into a 3-channel pseudo-image of ``grid * patch`` pixels (224), the whole frozen DINOv2
(patch embedding included) reads it, a ``conv width->512->128->1`` head scores every token
and ``Linear(grid^2, 1)`` plus sigmoid gives one probability per sample. Its bounded output is
what the paper's adversarial objective (``--adv-loss paper``) needs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
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

    #: raw (unbounded) scores: fit for the least-squares GAN objective only
    sigmoid_output = False
    #: GroupNorm only: scores do not depend on what else is in the batch
    joint_batch = False

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


class AuthorsDiscriminator(nn.Module):
    """The authors' KDA discriminator; ``forward(map) -> (N, 1)`` probabilities in (0, 1).

    1. ``(N, in_dim, grid, grid)`` -> four transposed convolutions (kernel 4, stride 2,
       widths ``up_widths`` then 3: ``ReLU`` between, BatchNorm after the last two) -> a
       ``(N, 3, 16*grid, 16*grid)`` map, resized (bilinear) to the ViT's input side
       ``grid * patch`` (16 -> 256 -> 224 for the paper's 16x16 grid): the pseudo-image.
    2. The frozen ViT ``vit`` reads it like an image (patch embedding, blocks, final norm):
       a ``(N, width, grid, grid)`` token map.
    3. ``3x3 conv width->512 -> BN -> ReLU -> 3x3 conv 512->128 -> BN -> ReLU -> 1x1 conv
       128->1`` (``head_widths``) -> flatten -> ``Linear(grid^2, 1)`` -> sigmoid.

    ``vit`` is injected (the teacher's own network in training, a tiny random ViT in tests); it
    stays frozen and in eval mode, but gradients flow through it into the input map. Because
    of the BatchNorm layers, score teacher and student maps in one batch (``joint_batch``).
    """

    #: probabilities in (0, 1): bounded, as ``--adv-loss paper`` requires
    sigmoid_output = True
    #: BatchNorm statistics: teacher and student maps should be scored in one batch
    joint_batch = True

    def __init__(self, vit: ViTTeacher, in_dim: int, *, grid: int = 16,
                 up_widths: tuple[int, int, int] = (512, 256, 64),
                 head_widths: tuple[int, int] = (512, 128)) -> None:
        super().__init__()
        if in_dim < 1 or grid < 1 or min(up_widths) < 1 or min(head_widths) < 1:
            raise LandslideError(
                f"kda_authors discriminator needs in_dim, grid and widths >= 1 "
                f"(got {in_dim}, {grid}, {up_widths}, {head_widths})")
        self.backbone = vit
        self.in_dim = int(in_dim)
        self.grid = int(grid)
        self.width = int(vit.embed_dim)
        self.image_size = self.grid * int(vit.patch_size)
        u1, u2, u3 = (int(w) for w in up_widths)

        def up(cin: int, cout: int) -> nn.ConvTranspose2d:
            return nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1)

        self.to_image = nn.Sequential(
            up(self.in_dim, u1), nn.ReLU(inplace=True),
            up(u1, u2), nn.ReLU(inplace=True),
            up(u2, u3), nn.BatchNorm2d(u3), nn.ReLU(inplace=True),
            up(u3, 3), nn.BatchNorm2d(3),
        )
        h1, h2 = (int(w) for w in head_widths)
        self.head = nn.Sequential(
            nn.Conv2d(self.width, h1, 3, padding=1), nn.BatchNorm2d(h1), nn.ReLU(inplace=True),
            nn.Conv2d(h1, h2, 3, padding=1), nn.BatchNorm2d(h2), nn.ReLU(inplace=True),
            nn.Conv2d(h2, 1, 1),
        )
        self.fc = nn.Linear(self.grid * self.grid, 1)

    def pseudo_image(self, x: torch.Tensor) -> torch.Tensor:
        """The ``(N, 3, grid*p, grid*p)`` pseudo-image of a feature map."""
        if x.ndim != 4 or x.shape[1] != self.in_dim or tuple(x.shape[-2:]) != (self.grid,
                                                                                self.grid):
            raise LandslideError(
                f"kda_authors discriminator expects (N, {self.in_dim}, {self.grid}, "
                f"{self.grid}) maps, got {tuple(x.shape)}")
        img = self.to_image(x)
        size = (self.image_size, self.image_size)
        return F.interpolate(img, size=size, mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone(self.pseudo_image(x))  # (N, width, grid, grid)
        scores = self.head(feats).flatten(1)  # (N, grid*grid)
        return torch.sigmoid(self.fc(scores))

    def train(self, mode: bool = True) -> AuthorsDiscriminator:
        super().train(mode)
        self.backbone.train(False)
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """State of the upsampler and head only (the frozen ViT comes from its weights)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("backbone.")}


def build_authors_discriminator(in_dim: int | None = None, *, vit: ViTTeacher | None = None,
                                vit_name: str = "vit_large_patch14_dinov2", grid: int = 16,
                                pretrained: bool = False, weights: str | Path | None = None,
                                up_widths: tuple[int, int, int] = (512, 256, 64),
                                head_widths: tuple[int, int] = (512, 128),
                                **timm_overrides: Any) -> AuthorsDiscriminator:
    """``kda_authors``: the authors' discriminator on ``vit`` (injected: e.g. the teacher, or a
    tiny ViT in tests) or, without it, on a frozen ``vit_name`` DINOv2 built here."""
    if vit is None:
        import landslide_cli.zoo.teachers  # noqa: F401 - registers the teachers

        name = TEACHERS.resolve(vit_name)
        if TEACHERS.entry(name).info.get("family") != "dinov2":
            raise LandslideError(f"the kda_authors discriminator needs a DINOv2 ViT, not {name}")
        vit = TEACHERS.build(name, pretrained=pretrained, weights=weights, **timm_overrides)
    if not isinstance(vit, ViTTeacher):
        raise LandslideError("the kda_authors discriminator needs a DINOv2 (ViT) network")
    return AuthorsDiscriminator(vit, in_dim if in_dim is not None else vit.embed_dim, grid=grid,
                                up_widths=up_widths, head_widths=head_widths)


#: name of the authors' discriminator in :data:`DISCRIMINATORS`
AUTHORS = "kda_authors"


def _register() -> None:
    DISCRIMINATORS.add(AUTHORS, build_authors_discriminator, sigmoid=True,
                       head="transposed conv -> 3x224^2 pseudo-image -> frozen DINOv2 -> "
                            "conv 512/128/1 -> Linear + sigmoid")
    for entry in TEACHERS:
        if entry.info.get("family") != "dinov2":
            continue

        def build(in_dim: int | None = None, *, _name: str = entry.name,
                  **kw: Any) -> Discriminator:
            return build_discriminator(_name, in_dim, **kw)

        build.__doc__ = f"KDA discriminator on a frozen {entry.name}"
        DISCRIMINATORS.add(entry.name, build, embed_dim=entry.info.get("embed_dim"),
                           depth=entry.info.get("depth"), head="multi-level PatchGAN",
                           sigmoid=False)


_register()
