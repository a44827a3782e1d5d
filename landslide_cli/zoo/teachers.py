"""Frozen teachers for distillation: DINOv2 ViTs (with and without registers) and ConvNeXt.

Contract (what the distillation code relies on)::

    teacher = TEACHERS.build(name, pretrained=False, weights=None, img_size=None, **timm_overrides)
    teacher.embed_dim       # channels of the final map
    teacher.patch_size      # 14 for DINOv2, 32 (total stride) for ConvNeXt
    teacher(x)              # (N, embed_dim, ceil(H/p), ceil(W/p)) NCHW, after the final norm
    teacher.num_levels      # transformer blocks (ViT) or stages (ConvNeXt)
    teacher.forward_levels(x, [i, j, ...]) -> [NCHW, ...]   # intermediate maps, in that order
    teacher.level_dims([i, j, ...]) -> [int, ...]
    teacher.mean, teacher.std  # per-channel input normalisation the weights were trained with

* Inputs of any size are accepted: they are padded at the bottom/right (reflection, as the
  segmenter does) to a multiple of ``patch_size``; the grid therefore has ``ceil(H/p)`` rows.
* DINOv2 models are created with ``dynamic_img_size=True``: the position embeddings are
  interpolated to the input grid on every call. Prefix tokens (class and register tokens) are
  dropped from the returned maps.
* Teachers are frozen: every parameter has ``requires_grad=False`` and the module stays in eval
  mode even when ``.train()`` is called (e.g. through a parent module). ``torch.no_grad`` is left
  to the caller: the KDA discriminator needs gradients to flow through the frozen network to its
  input.
* DINOv2 and ConvNeXt were trained on ImageNet-normalised RGB
  (mean ``(0.485, 0.456, 0.406)``, std ``(0.229, 0.224, 0.225)``); the values come from timm's
  pretrained config and are exposed as ``teacher.mean`` / ``teacher.std``.
* ``timm_overrides`` go straight to ``timm.create_model`` (``depth=2, embed_dim=48,
  num_heads=2`` builds a tiny DINOv2-shaped ViT for tests; ``depths=..., dims=...`` for ConvNeXt).
* Weights follow :mod:`landslide_cli.zoo.weights`: ``weights=PATH`` loads a local file,
  ``pretrained=True`` downloads through timm unless offline (then a one-line
  :class:`~landslide_cli.errors.WeightsUnavailable` names the file to supply).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from landslide_cli.errors import LandslideError
from landslide_cli.zoo.registries import TEACHERS
from landslide_cli.zoo.weights import create_timm

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: DINOv2 sizes: name stem -> (embed_dim, depth)
DINOV2_SIZES = {"small": (384, 12), "base": (768, 12), "large": (1024, 24), "giant": (1536, 40)}
#: ConvNeXt teachers: name -> final width
CONVNEXT = {"convnext_tiny": 768, "convnext_small": 768, "convnext_base": 1024,
            "convnext_large": 1536, "convnext_xlarge": 2048}


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad ``x`` at the bottom/right to a multiple of ``multiple`` (reflect, else replicate)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if not (ph or pw):
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


class Teacher(nn.Module):
    """Base class: a frozen feature extractor returning NCHW maps."""

    name: str
    embed_dim: int
    patch_size: int
    num_levels: int
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def freeze(self) -> Teacher:
        for p in self.parameters():
            p.requires_grad_(False)
        return super().train(False)

    def train(self, mode: bool = True) -> Teacher:
        """Teachers always stay in eval mode (frozen BatchNorm/dropout/drop-path)."""
        return super().train(False)

    def normalize_indices(self, indices: Sequence[int]) -> list[int]:
        """Absolute level indices (negative ones count from the end), validated."""
        out = []
        for i in indices:
            j = int(i) + self.num_levels if int(i) < 0 else int(i)
            if not 0 <= j < self.num_levels:
                raise LandslideError(
                    f"teacher {self.name}: level {i} is out of range "
                    f"(it has {self.num_levels} levels: 0..{self.num_levels - 1})"
                )
            out.append(j)
        return out

    def level_dims(self, indices: Sequence[int]) -> list[int]:
        raise NotImplementedError

    def forward_levels(self, x: torch.Tensor, indices: Sequence[int]) -> list[torch.Tensor]:
        raise NotImplementedError


class ViTTeacher(Teacher):
    """A frozen timm DINOv2 ViT returning the patch-token grid as an NCHW map."""

    def __init__(self, name: str, vit: nn.Module) -> None:
        super().__init__()
        self.name = name
        self.vit = vit
        self.embed_dim = int(vit.embed_dim)
        patch = vit.patch_embed.patch_size
        self.patch_size = int(patch[0] if isinstance(patch, (tuple, list)) else patch)
        self.num_levels = len(vit.blocks)
        self.num_prefix_tokens = int(vit.num_prefix_tokens)
        cfg = getattr(vit, "pretrained_cfg", None) or {}
        self.mean = tuple(cfg.get("mean", IMAGENET_MEAN))
        self.std = tuple(cfg.get("std", IMAGENET_STD))
        self.freeze()

    def level_dims(self, indices: Sequence[int]) -> list[int]:
        return [self.embed_dim for _ in self.normalize_indices(indices)]

    def patch_grid(self, x: torch.Tensor) -> torch.Tensor:
        """Patch embeddings of an image as an NCHW grid (before position embeddings)."""
        x = pad_to_multiple(x, self.patch_size)
        tokens = self.vit.patch_embed(x)  # NHWC because dynamic_img_size=True
        return tokens.permute(0, 3, 1, 2)

    def run_grid(self, grid: torch.Tensor, indices: Sequence[int], *, norm: bool = True,
                 final: bool = False) -> list[torch.Tensor]:
        """Treat an NCHW map of width ``embed_dim`` as patch tokens and run the blocks.

        Adds the (interpolated) position embeddings, prepends the class/register tokens, runs
        the transformer blocks up to the deepest requested index and returns the grids after
        the blocks in ``indices`` (in that order), optionally through the final LayerNorm.
        With ``final=True`` the output of the last block (after the final norm) is appended.
        This is how the discriminator feeds a feature map into a frozen ViT.
        """
        if grid.shape[1] != self.embed_dim:
            raise LandslideError(
                f"teacher {self.name}: expected a {self.embed_dim}-channel map, "
                f"got {grid.shape[1]} channels"
            )
        want = self.normalize_indices(indices)
        h, w = grid.shape[-2:]
        vit = self.vit
        x = vit._pos_embed(grid.permute(0, 2, 3, 1))  # NHWC -> (N, prefix + h*w, C)
        x = vit.patch_drop(x)
        x = vit.norm_pre(x)
        last = self.num_levels - 1 if final else max(want, default=-1)
        taken: dict[int, torch.Tensor] = {}
        for i, block in enumerate(vit.blocks):
            if i > last:
                break
            x = block(x)
            if i in want:
                taken[i] = vit.norm(x) if norm else x
        outs = [taken[i] for i in want]
        if final:
            outs.append(vit.norm(x))
        return [self._to_grid(t, h, w) for t in outs]

    def _to_grid(self, tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
        tokens = tokens[:, self.num_prefix_tokens:]
        return tokens.reshape(tokens.shape[0], h, w, -1).permute(0, 3, 1, 2).contiguous()

    def forward_levels(self, x: torch.Tensor, indices: Sequence[int], *,
                       norm: bool = True) -> list[torch.Tensor]:
        """Outputs of the blocks in ``indices`` as NCHW grids (through the final norm)."""
        return self.run_grid(self.patch_grid(x), indices, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run_grid(self.patch_grid(x), [], final=True)[0]


class ConvNeXtTeacher(Teacher):
    """A frozen timm ConvNeXt: stage outputs as levels, final map through the head's norm."""

    def __init__(self, name: str, model: nn.Module) -> None:
        super().__init__()
        self.name = name
        self.model = model
        info = model.feature_info
        self.dims = [int(d["num_chs"]) for d in info]
        self.strides = [int(d["reduction"]) for d in info]
        self.embed_dim = int(model.num_features)
        self.patch_size = self.strides[-1]
        self.num_levels = len(model.stages)
        cfg = getattr(model, "pretrained_cfg", None) or {}
        self.mean = tuple(cfg.get("mean", IMAGENET_MEAN))
        self.std = tuple(cfg.get("std", IMAGENET_STD))
        self.freeze()

    def level_dims(self, indices: Sequence[int]) -> list[int]:
        return [self.dims[i] for i in self.normalize_indices(indices)]

    def _final_norm(self, x: torch.Tensor) -> torch.Tensor:
        x = self.model.norm_pre(x)
        head_norm = getattr(getattr(self.model, "head", None), "norm", None)
        return head_norm(x) if head_norm is not None else x

    def forward_levels(self, x: torch.Tensor, indices: Sequence[int], *,
                       norm: bool = True) -> list[torch.Tensor]:
        """Stage outputs (strides 4/8/16/32); the last stage goes through the final norm."""
        want = self.normalize_indices(indices)
        x = self.model.stem(pad_to_multiple(x, self.patch_size))
        taken: dict[int, torch.Tensor] = {}
        for i, stage in enumerate(self.model.stages):
            if i > max(want, default=-1):
                break
            x = stage(x)
            if i in want:
                taken[i] = self._final_norm(x) if norm and i == self.num_levels - 1 else x
        return [taken[i] for i in want]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.model.stages(self.model.stem(pad_to_multiple(x, self.patch_size)))
        return self._final_norm(x)


def build_dinov2(name: str, *, pretrained: bool = False, weights: str | Path | None = None,
                 img_size: int | None = None, **timm_overrides: Any) -> ViTTeacher:
    """A frozen DINOv2 ViT teacher (``dynamic_img_size=True``, no classifier head)."""
    # dynamic_img_size is not optional: the token grid follows the input size
    kwargs: dict[str, Any] = {"num_classes": 0, **timm_overrides, "dynamic_img_size": True}
    if img_size is not None:
        kwargs["img_size"] = img_size
    vit = create_timm(name, pretrained=pretrained, weights=weights, **kwargs)
    return ViTTeacher(name, vit)


def build_convnext(name: str, *, pretrained: bool = False, weights: str | Path | None = None,
                   img_size: int | None = None, **timm_overrides: Any) -> ConvNeXtTeacher:
    """A frozen ConvNeXt teacher (``img_size`` is accepted and ignored: fully convolutional)."""
    del img_size
    kwargs: dict[str, Any] = {"num_classes": 0, **timm_overrides}
    model = create_timm(name, pretrained=pretrained, weights=weights, **kwargs)
    return ConvNeXtTeacher(name, model)


def _register() -> None:
    for size, (dim, depth) in DINOV2_SIZES.items():
        for reg in (False, True):
            name = f"vit_{size}_patch14_{'reg4_' if reg else ''}dinov2"

            def build(*, _name: str = name, **kw: Any) -> ViTTeacher:
                return build_dinov2(_name, **kw)

            build.__doc__ = f"Frozen DINOv2 ViT-{size[0].upper()}/14" + (
                " with 4 registers" if reg else "")
            TEACHERS.add(name, build, family="dinov2", source="timm", embed_dim=dim,
                         depth=depth, patch_size=14, registers=4 if reg else 0)
    for name, dim in CONVNEXT.items():

        def build_cnx(*, _name: str = name, **kw: Any) -> ConvNeXtTeacher:
            return build_convnext(_name, **kw)

        build_cnx.__doc__ = f"Frozen {name} (CNN teacher)"
        TEACHERS.add(name, build_cnx, family="convnext", source="timm", embed_dim=dim,
                     depth=4, patch_size=32, registers=0)


_register()
