"""Backbone + decoder = segmentation model, for any input size."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from landslide_cli.zoo.registries import BACKBONES, DECODERS, native_backbone
from landslide_cli.zoo.spec import Architecture

#: fused probabilities are clamped to [eps, 1 - eps] before their logit
FUSION_EPS = 1e-6


class Segmenter(nn.Module):
    """Segmentation model returning logits ``(N, num_classes, H, W)`` for any ``H, W``.

    Inputs whose sides are not multiples of the backbone's total stride (32) are padded at the
    bottom/right by reflection and the logits are cropped back, so tiles of any size work.
    """

    def __init__(self, backbone: nn.Module, decoder: nn.Module, arch: Architecture) -> None:
        super().__init__()
        self.backbone = backbone
        self.decoder = decoder
        self.arch = arch
        self.multiple = int(getattr(backbone, "reduction", 32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fusion = self.arch.fusion
        if not fusion:
            return self._logits(x)
        # late fusion with a colour index channel (Architecture.fusion): the network sees its
        # bands only; its landslide probability is mixed with the index and returned as the
        # logits of a two-class softmax that gives back exactly that mixture
        weight = float(fusion["weight"])
        index = x[:, int(fusion["channel"])].float()
        logits = self._logits(x[:, :self.arch.in_chans])
        p = torch.softmax(logits.float(), dim=1)[:, 1]
        mixed = ((1.0 - weight) * p + weight * index).clamp(FUSION_EPS, 1.0 - FUSION_EPS)
        logit = torch.log(mixed) - torch.log1p(-mixed)
        return torch.stack([torch.zeros_like(logit), logit], dim=1).to(logits.dtype)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph = (-h) % self.multiple
        pw = (-w) % self.multiple
        if ph or pw:
            mode = "reflect" if ph < h and pw < w else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        logits = self.decoder(self.backbone(x))
        logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        if ph or pw:
            logits = logits[..., :h, :w]
        return logits

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Landslide probability ``(N, H, W)`` (softmax over classes, class 1)."""
        return torch.softmax(self.forward(x).float(), dim=1)[:, 1]


def build_segmenter(arch: Architecture | str, *, pretrained: bool = False,
                    weights: str | Path | None = None, native: bool = False) -> Segmenter:
    """Build a segmenter; ``pretrained``/``weights`` apply to the backbone only.

    ``native=True`` (loading a checkpoint for inference) builds the backbone's torch-only twin
    (:data:`~landslide_cli.zoo.registries.NATIVE_BACKBONES`: the same state-dict keys and
    outputs, default init, no timm import) when it has one and no pretrained weights are asked
    for; otherwise the registered builder is used.
    """
    if isinstance(arch, str):
        from landslide_cli.zoo.spec import parse_spec

        arch = parse_spec(arch)
    import landslide_cli.zoo  # noqa: F401 - registers all builders

    arch.backbone = BACKBONES.resolve(arch.backbone)
    arch.decoder = DECODERS.resolve(arch.decoder)
    twin = native_backbone(arch.backbone) if native and not pretrained and weights is None \
        else None
    if twin is not None:
        backbone = twin(in_chans=arch.in_chans)
    else:
        backbone = BACKBONES.build(arch.backbone, in_chans=arch.in_chans, pretrained=pretrained,
                                   weights=weights)
    decoder = DECODERS.build(arch.decoder, list(backbone.widths), num_classes=arch.num_classes,
                             width=arch.decoder_width)
    return Segmenter(backbone, decoder, arch)
