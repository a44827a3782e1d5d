"""Alternative decoder heads for the KDA paper's Table IV ablation.

Every head is registered in :data:`~landslide_cli.zoo.registries.DECODERS` with the same builder
signature as the DCF decoder, ``build(in_channels, num_classes=2, width=128)``, takes the four
backbone maps (strides 4/8/16/32) and returns logits at stride 4 (the
:class:`~landslide_cli.zoo.segmenter.Segmenter` upsamples them to the input size).

* ``segformer``: the SegFormer all-MLP head. A per-stage linear projection (a 1x1 convolution)
  to ``width``, bilinear upsampling of every stage to stride 4, concatenation, a 1x1
  fuse + BN + ReLU and a 1x1 classifier.
* ``upernet``: a pyramid pooling module (PPM, bins 1/2/3/6) on the deepest stage, an FPN
  (1x1 laterals, top-down ``up2 + add``, 3x3 output convolutions), every level upsampled to
  stride 4, concatenated and fused by a 3x3 conv-BN-ReLU before the classifier.
* ``unet``: a UNet-style decoder. The deepest map is projected to ``width``; then for each finer
  stage: upsample, concatenate the skip connection, two 3x3 conv-BN-ReLU. One width for all
  levels keeps the head small for every PVTv2 variant (b0 ... b5).

``width=128`` (the :class:`~landslide_cli.zoo.spec.Architecture` default) is a sensible setting
for all of PVT-b0 ... b5; the original SegFormer/UPerNet papers use 256-768 for larger encoders.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from landslide_cli.zoo.registries import DECODERS


def conv_bn_relu(cin: int, cout: int, k: int = 1) -> nn.Sequential:
    """``Conv(k x k, no bias) -> BN -> ReLU`` with "same" padding."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=k // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def _resize(x: torch.Tensor, size: torch.Size | tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class SegFormerHead(nn.Module):
    """All-MLP decoder (SegFormer): project, upsample to stride 4, concat, fuse, classify."""

    def __init__(self, in_channels: list[int], num_classes: int = 2, width: int = 128,
                 dropout: float = 0.1) -> None:
        super().__init__()
        # a per-pixel Linear layer is a 1x1 convolution
        self.proj = nn.ModuleList(nn.Conv2d(c, width, 1) for c in in_channels)
        self.fuse = conv_bn_relu(width * len(in_channels), width, 1)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        size = features[0].shape[-2:]
        maps = [_resize(p(f), size) for p, f in zip(self.proj, features, strict=True)]
        # SegFormer concatenates coarse-to-fine
        return self.classifier(self.dropout(self.fuse(torch.cat(maps[::-1], dim=1))))


class PyramidPooling(nn.Module):
    """PSPNet pyramid pooling on the deepest stage, followed by a 3x3 bottleneck.

    The pooled branches use a biased convolution without BatchNorm: a 1x1 pooled map has a single
    value per channel, which BatchNorm cannot normalise in training with batch size 1.
    """

    def __init__(self, cin: int, width: int, bins: tuple[int, ...] = (1, 2, 3, 6)) -> None:
        super().__init__()
        self.bins = bins
        self.branches = nn.ModuleList(
            nn.Sequential(nn.Conv2d(cin, width, 1), nn.ReLU(inplace=True)) for _ in bins
        )
        self.bottleneck = conv_bn_relu(cin + width * len(bins), width, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [
            _resize(branch(F.adaptive_avg_pool2d(x, b)), size)
            for b, branch in zip(self.bins, self.branches, strict=True)
        ]
        return self.bottleneck(torch.cat([x, *pooled], dim=1))


class UPerNetHead(nn.Module):
    """UPerNet: PPM on the deepest stage + FPN top-down path + multi-level fusion."""

    def __init__(self, in_channels: list[int], num_classes: int = 2, width: int = 128,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.ppm = PyramidPooling(in_channels[-1], width)
        self.lateral = nn.ModuleList(conv_bn_relu(c, width, 1) for c in in_channels[:-1])
        self.fpn_out = nn.ModuleList(conv_bn_relu(width, width, 3) for _ in in_channels[:-1])
        self.fuse = conv_bn_relu(width * len(in_channels), width, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        laterals = [lat(f) for lat, f in zip(self.lateral, features[:-1], strict=True)]
        laterals.append(self.ppm(features[-1]))
        for i in range(len(laterals) - 1, 0, -1):  # top-down: coarse into fine
            laterals[i - 1] = laterals[i - 1] + _resize(laterals[i], laterals[i - 1].shape[-2:])
        outs = [conv(lat) for conv, lat in zip(self.fpn_out, laterals[:-1], strict=True)]
        outs.append(laterals[-1])
        size = outs[0].shape[-2:]
        fused = self.fuse(torch.cat([_resize(o, size) for o in outs], dim=1))
        return self.classifier(self.dropout(fused))


class UNetBlock(nn.Module):
    """Upsample to the skip's size, concatenate it, then two 3x3 conv-BN-ReLU."""

    def __init__(self, cin: int, cskip: int, cout: int) -> None:
        super().__init__()
        self.conv1 = conv_bn_relu(cin + cskip, cout, 3)
        self.conv2 = conv_bn_relu(cout, cout, 3)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = torch.cat([_resize(x, skip.shape[-2:]), skip], dim=1)
        return self.conv2(self.conv1(x))


class UNetHead(nn.Module):
    """UNet-style decoder with a constant width at every level."""

    def __init__(self, in_channels: list[int], num_classes: int = 2, width: int = 128) -> None:
        super().__init__()
        self.bottom = conv_bn_relu(in_channels[-1], width, 1)
        self.blocks = nn.ModuleList(UNetBlock(width, c, width) for c in in_channels[-2::-1])
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = self.bottom(features[-1])
        for block, skip in zip(self.blocks, features[-2::-1], strict=True):
            x = block(x, skip)
        return self.classifier(x)


@DECODERS.register("segformer", aliases=("mlp", "all_mlp"),
                   description="SegFormer all-MLP head (Table IV ablation)")
def build_segformer(in_channels: list[int], num_classes: int = 2,
                    width: int = 128) -> SegFormerHead:
    return SegFormerHead(list(in_channels), num_classes=num_classes, width=width)


@DECODERS.register("upernet", aliases=("uper",),
                   description="UPerNet head: PPM + FPN (Table IV ablation)")
def build_upernet(in_channels: list[int], num_classes: int = 2,
                  width: int = 128) -> UPerNetHead:
    return UPerNetHead(list(in_channels), num_classes=num_classes, width=width)


@DECODERS.register("unet", description="UNet-style decoder (Table IV ablation)")
def build_unet(in_channels: list[int], num_classes: int = 2, width: int = 128) -> UNetHead:
    return UNetHead(list(in_channels), num_classes=num_classes, width=width)
