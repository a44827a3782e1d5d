"""The KDA paper's Table IV decoders as its authors built them: ``segformer_paper``,
``upernet_paper``, ``unet_paper``.

The heads in :mod:`landslide_cli.zoo.heads` (``segformer``, ``upernet``, ``unet``) are this
project's compact versions (0.31 / 3.44 / 2.05 M parameters at encoder widths 128/256/512/1024
and width 128). The presets here reproduce the layer settings of the authors' head code, so
that with the paper's encoder (``pvt_v1_kda``, widths 128/256/512/1024), 2 classes and the
default width 128 they count what Table IV reports:

===================  ============  ========  ==========================================
preset               parameters    paper     channel settings
===================  ============  ========  ==========================================
``segformer_paper``  758,018       0.76 M    embedding ``2 x width`` = 256
``upernet_paper``    972,674       0.97 M    ``width`` = 128 everywhere, 1x1 convolutions
``unet_paper``       12,155,586    12.16 M   decoder widths mirror the encoder (512/256/128/64)
===================  ============  ========  ==========================================

* ``segformer_paper``: per stage ``ReLU(BN(Conv1x1(X_i)))`` (biased conv) to ``E = 2 x width``,
  bilinear resize to stride 4, concatenation, ``ReLU(BN(Conv1x1))`` fusion (4E -> E, biased),
  dropout 0.1 and a 1x1 classifier. Count: 1920E + 4E + 8E (BN) + 4E^2 + E + 2E + 2E + 2
  = 758,018 at E = 256. (``segformer`` with ``width=256`` counts 755,714: no BN and no
  projection activation.)
* ``upernet_paper``: a pyramid pooling module on stage 4 (adaptive *max* pooling to 1/2/3/6,
  a biased 1x1 convolution per bin, concatenation with the input, ``ReLU(BN(Conv1x1))`` to
  ``d = width``); FPN top-down path ``x = Conv1x1(up2(P_4)) + L_3(X_3)`` for the first step and
  ``x = up2(P) + L_i(X_i)`` after, each followed by ``ReLU(BN(Conv1x1))``; laterals
  ``L_i = ReLU(BN(Conv1x1))``; the four levels resized to stride 4, concatenated, fused by
  ``ReLU(BN(Conv1x1))`` (4d -> d) and classified by a 3x3 convolution. Count at d = 128:
  PPM 524,800 + 196,992; laterals 65,920 + 33,152 + 16,768; FPN outputs 3 x 16,768; extra
  top 1x1 16,512; fusion 65,920; classifier 2,306; total 972,674.
* ``unet_paper``: for stages 4 -> 3 -> 2 -> 1, a 2x2 stride-2 transposed convolution to the
  skip's width, concatenation with the skip, and a double ``ReLU(BN(Conv3x3))`` block; then a
  further transposed convolution to half the first width (stride 2), a double conv block and a
  1x1 classifier. Count at widths 128/256/512/1024: 2,097,664 + 7,080,960 + 524,544 +
  1,771,008 + 131,200 + 443,136 + 32,832 + 74,112 + 130 = 12,155,586.

Deviations from the authors' code, none affecting the counts: resizes use
``align_corners=False`` (this project's convention, as in the segmenter) where theirs use
``True``; ``upernet_paper`` applies its 3x3 classifier at stride 4 and lets the segmenter
upsample the logits (theirs upsamples the 128-channel map to the input size first, 16x the
memory); ``unet_paper`` returns stride-2 logits (``output_stride = 2``) and theirs resizes to a
fixed 224 x 224. The width argument scales ``segformer_paper`` and ``upernet_paper``;
``unet_paper``'s widths follow the encoder and ignore it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from landslide_cli.zoo.heads import _resize
from landslide_cli.zoo.registries import DECODERS

#: parameter counts with encoder widths 128/256/512/1024, 2 classes, width 128 (tests pin them)
PAPER_COUNTS = {"segformer_paper": 758_018, "upernet_paper": 972_674,
                "unet_paper": 12_155_586}


def cbr(cin: int, cout: int, k: int = 1) -> nn.Sequential:
    """``ReLU(BN(Conv(k x k, biased)))``, "same" padding, as in the authors' heads."""
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class SegFormerPaperHead(nn.Module):
    """SegFormer's all-MLP head with conv-BN-ReLU projections (the authors' variant)."""

    def __init__(self, in_channels: list[int], num_classes: int = 2, embed: int = 256,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.proj = nn.ModuleList(cbr(c, embed) for c in in_channels)
        self.fuse = cbr(embed * len(in_channels), embed)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(embed, num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        size = features[0].shape[-2:]
        maps = [_resize(p(f), size) for p, f in zip(self.proj, features, strict=True)]
        return self.classifier(self.dropout(self.fuse(torch.cat(maps, dim=1))))


class MaxPyramidPooling(nn.Module):
    """Adaptive max pooling to each bin, a biased 1x1 conv per bin, concat with the input,
    ``ReLU(BN(Conv1x1))`` bottleneck (no BN on the pooled maps: batch-1 training works)."""

    def __init__(self, cin: int, width: int, bins: tuple[int, ...] = (1, 2, 3, 6)) -> None:
        super().__init__()
        self.bins = bins
        self.branches = nn.ModuleList(nn.Conv2d(cin, width, 1) for _ in bins)
        self.bottleneck = cbr(cin + width * len(bins), width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [_resize(conv(F.adaptive_max_pool2d(x, b)), size)
                  for b, conv in zip(self.bins, self.branches, strict=True)]
        return self.bottleneck(torch.cat([*pooled, x], dim=1))


class UPerNetPaperHead(nn.Module):
    """UPerNet (PPM + FPN) with 1x1 convolutions throughout and a 3x3 classifier."""

    def __init__(self, in_channels: list[int], num_classes: int = 2, width: int = 128) -> None:
        super().__init__()
        self.ppm = MaxPyramidPooling(in_channels[-1], width)
        self.top = nn.Conv2d(width, width, 1)
        # finest-first lists over stages 1..3
        self.lateral = nn.ModuleList(cbr(c, width) for c in in_channels[:-1])
        self.fpn_out = nn.ModuleList(cbr(width, width) for _ in in_channels[:-1])
        self.fuse = cbr(width * len(in_channels), width)
        self.classifier = nn.Conv2d(width, num_classes, 3, padding=1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        levels = [self.ppm(features[-1])]
        x = self.top(_resize(levels[0], features[-2].shape[-2:]))
        for i in range(len(features) - 2, -1, -1):
            if i != len(features) - 2:
                x = _resize(levels[-1], features[i].shape[-2:])
            levels.append(self.fpn_out[i](x + self.lateral[i](features[i])))
        size = levels[-1].shape[-2:]
        fused = self.fuse(torch.cat([_resize(level, size) for level in levels], dim=1))
        return self.classifier(fused)


class DoubleConv(nn.Sequential):
    """Two ``ReLU(BN(Conv3x3, biased))``."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(cbr(cin, cout, 3), cbr(cout, cout, 3))


class UNetPaperHead(nn.Module):
    """UNet decoder with transposed-convolution upsampling; widths mirror the encoder."""

    output_stride = 2

    def __init__(self, in_channels: list[int], num_classes: int = 2) -> None:
        super().__init__()
        widths = list(in_channels)
        self.up = nn.ModuleList()
        self.blocks = nn.ModuleList()
        for coarse, skip in zip(widths[:0:-1], widths[-2::-1], strict=True):
            self.up.append(nn.ConvTranspose2d(coarse, skip, 2, stride=2))
            self.blocks.append(DoubleConv(2 * skip, skip))
        last = max(widths[0] // 2, 1)
        self.final_up = nn.ConvTranspose2d(widths[0], last, 2, stride=2)
        self.final_block = DoubleConv(last, last)
        self.classifier = nn.Conv2d(last, num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        for up, block, skip in zip(self.up, self.blocks, features[-2::-1], strict=True):
            x = block(torch.cat([_resize(up(x), skip.shape[-2:]), skip], dim=1))
        return self.classifier(self.final_block(self.final_up(x)))


@DECODERS.register("segformer_paper", params_paper=PAPER_COUNTS["segformer_paper"],
                   description="SegFormer head, the KDA authors' settings (0.76 M, Table IV)")
def build_segformer_paper(in_channels: list[int], num_classes: int = 2,
                          width: int = 128) -> SegFormerPaperHead:
    return SegFormerPaperHead(list(in_channels), num_classes=num_classes, embed=2 * width)


@DECODERS.register("upernet_paper", params_paper=PAPER_COUNTS["upernet_paper"],
                   description="UPerNet head, the KDA authors' settings (0.97 M, Table IV)")
def build_upernet_paper(in_channels: list[int], num_classes: int = 2,
                        width: int = 128) -> UPerNetPaperHead:
    return UPerNetPaperHead(list(in_channels), num_classes=num_classes, width=width)


@DECODERS.register("unet_paper", params_paper=PAPER_COUNTS["unet_paper"], output_stride=2,
                   description="UNet head, the KDA authors' settings (12.16 M, Table IV)")
def build_unet_paper(in_channels: list[int], num_classes: int = 2,
                     width: int = 128) -> UNetPaperHead:
    del width  # the decoder widths follow the encoder's
    return UNetPaperHead(list(in_channels), num_classes=num_classes)
