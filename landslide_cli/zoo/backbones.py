"""Student backbones: PVTv2 (timm, ``features_only``), four stages at strides 4/8/16/32.

Each PVTv2 size also registers a torch-only twin (:class:`~landslide_cli.zoo.pvt_v2_native.
NativeFeatures`, same state-dict keys and outputs) in :data:`NATIVE_BACKBONES`: checkpoints
loaded for inference use it and never import timm. timm itself is imported only when a
:class:`TimmFeatures` is built (training, random-init specs).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from landslide_cli.registry import canonical
from landslide_cli.zoo.pvt_v2_native import NativeFeatures
from landslide_cli.zoo.registries import BACKBONES, NATIVE_BACKBONES
from landslide_cli.zoo.weights import create_timm

PVT_V2 = ("pvt_v2_b0", "pvt_v2_b1", "pvt_v2_b2", "pvt_v2_b2_li", "pvt_v2_b3", "pvt_v2_b4",
          "pvt_v2_b5")


class TimmFeatures(nn.Module):
    """A timm ``features_only`` model returning the four stride-4/8/16/32 feature maps."""

    reduction = 32

    def __init__(self, model_name: str, *, in_chans: int = 3, pretrained: bool = False,
                 weights: str | Path | None = None) -> None:
        super().__init__()
        self.model_name = model_name
        self.body = create_timm(model_name, pretrained=pretrained, weights=weights,
                                features_only=True, out_indices=(0, 1, 2, 3), in_chans=in_chans)
        self.widths: list[int] = list(self.body.feature_info.channels())
        self.strides: list[int] = list(self.body.feature_info.reduction())

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.body(x))


def _register_pvt(name: str) -> None:
    def build(*, in_chans: int = 3, pretrained: bool = False,
              weights: str | Path | None = None) -> TimmFeatures:
        return TimmFeatures(name, in_chans=in_chans, pretrained=pretrained, weights=weights)

    def build_native(*, in_chans: int = 3) -> NativeFeatures:
        return NativeFeatures(name, in_chans=in_chans)

    size = name.removeprefix("pvt_v2_").upper()
    build.__doc__ = f"PVTv2 {size} from timm (features_only)."
    build_native.__doc__ = f"PVTv2 {size} in plain torch (inference twin of the timm model)."
    BACKBONES.add(name, build, family="pvt_v2", source="timm", native=True)
    NATIVE_BACKBONES[canonical(name)] = build_native


for _name in PVT_V2:
    _register_pvt(_name)
