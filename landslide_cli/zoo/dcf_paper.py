"""DCF as published (KDA paper, Eq. 1, and the authors' decoder code): ``dcf_paper``.

The ``dcf`` decoder (:mod:`landslide_cli.zoo.dcf`) is a lighter variant (249,226 parameters at
encoder widths 128/256/512/1024 and width 128). This module follows the authors' layers:

1. projection: stages 2-4 get ``GELU(Conv(X_i))`` with a biased 1x1 convolution to width ``d``
   (``conv=3``: the 3x3 convolution Eq. 1 writes); stage 1 is used as it is when its width is
   already ``d`` (the authors' case, 128), else it gets the same projection;
2. one squeeze-excitation block *per stage*: ``a_i = sigmoid(FC(ReLU(FC(GAP(P_i)))))`` with
   bias-free FCs ``d -> d/16 -> d``;
3. "GSoftmax": per channel, a softmax of ``a_i`` across the four stages; ``F_i = w_i * P_i``;
4. top-down fusion with DySample (:mod:`landslide_cli.zoo.dysample`, 'lp', 4 groups, scope
   0.25): ``G_4 = F_4``, ``G_i = DySample_x2(G_{i+1}) + F_i``;
5. a x4 DySample of ``G_1`` to the input resolution and a 1x1 classifier.

The decoder therefore returns logits at stride 1 (``output_stride = 1``); the segmenter's final
resize is then the identity. Step 5 is computed without materialising the ``d``-channel map at
full resolution: a 1x1 convolution is a per-pixel affine map and bilinear sampling (border
padding) has weights summing to one, so per channel group ``g`` the classifier's slice
``W_g`` commutes with the sampling, ``W (S_g(G)) + b = sum_g S_g(W_g G_g) + b``; the decoder
samples ``groups x num_classes`` channels instead of ``d`` (16x less memory at ``d = 128``;
``fused_head=False`` runs the literal order, the tests compare both).

Parameter count, encoder widths 128/256/512/1024, ``d = 128``, 2 classes:

* projections of stages 2-4 (1x1, bias): (256 + 512 + 1024) x 128 + 3 x 128 = 229,760
* four SE blocks (bias-free, d/16 = 8): 4 x 2 x 128 x 8 = 8,192
* three x2 DySamples (2 x 4 groups x 2^2 = 32 offset channels): 3 x (128 x 32 + 32) = 12,384
* one x4 DySample (2 x 4 x 4^2 = 128 offset channels): 128 x 128 + 128 = 16,512
* classifier (1x1): 128 x 2 + 2 = 258
* **total 267,106**

With ``conv=3`` (``dcf_paper_3x3``) the projections have 9 x 1792 x 128 weights plus 384 biases
and the decoder counts 2,102,114.

How the layer set was found: a scratch enumeration of the candidate differences from ``dcf``
(stage-1 projection or not; projection bias; BatchNorm; SE shared or per stage, with or without
bias; DySample groups 2/4/8, static or dynamic scope; DySample or bilinear for the x2 and the x4
upsampling), 384 combinations, gives 267,106 for four of them: per-stage bias-free SE, biased
projections without BN and three x2 DySamples in all four, then either (no stage-1 projection
+ x4 DySample) or (a stage-1 projection + bilinear x4) -- both add 16,512 -- each with 4 groups
and a static scope or 2 groups and a dynamic scope (the same offset-channel count). The count
alone does not decide; the authors' code does: no stage-1 projection, a x4 DySample, and
DySample's defaults (4 groups, static scope 0.25), as implemented here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from landslide_cli.errors import LandslideError
from landslide_cli.zoo.dysample import DySample
from landslide_cli.zoo.heads import _resize
from landslide_cli.zoo.registries import DECODERS


class SqueezeExcite(nn.Module):
    """GAP -> FC(d -> d/r, no bias) -> ReLU -> FC(d/r -> d, no bias) -> sigmoid: ``(N, d)``."""

    def __init__(self, width: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(width // reduction, 1)
        self.fc1 = nn.Linear(width, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3))))))


def _projection(cin: int, width: int, conv: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, width, conv, padding=conv // 2), nn.GELU())


class DCFPaperDecoder(nn.Module):
    """The published DCF: per-stage SE, GSoftmax, DySample fusion and x4 DySample output."""

    output_stride = 1

    def __init__(self, in_channels: list[int], num_classes: int = 2, width: int = 128, *,
                 conv: int = 1, reduction: int = 16, groups: int = 4,
                 fused_head: bool = True) -> None:
        super().__init__()
        if conv not in (1, 3):
            raise LandslideError(f"dcf_paper: conv must be 1 or 3, got {conv}")
        if width % groups:
            raise LandslideError(f"dcf_paper: decoder width {width} is not a multiple of the "
                                 f"{groups} DySample groups")
        self.num_classes = num_classes
        self.groups = groups
        self.fused_head = fused_head
        self.proj = nn.ModuleList(
            nn.Identity() if i == 0 and c == width else _projection(c, width, conv)
            for i, c in enumerate(in_channels)
        )
        self.attention = nn.ModuleList(SqueezeExcite(width, reduction) for _ in in_channels)
        self.up = nn.ModuleList(DySample(width, 2, groups) for _ in in_channels[:-1])
        self.final_up = DySample(width, 4, groups)
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def stage_weights(self, projected: list[torch.Tensor]) -> torch.Tensor:
        """(N, stages, d) per-channel stage weights, summing to one over the stage axis."""
        scores = torch.stack([se(p) for se, p in zip(self.attention, projected, strict=True)],
                             dim=1)
        return torch.softmax(scores, dim=1)

    def fuse(self, features: list[torch.Tensor]) -> torch.Tensor:
        """The fused stride-4 map ``G_1`` (width ``d``)."""
        projected = [proj(f) for proj, f in zip(self.proj, features, strict=True)]
        weights = self.stage_weights(projected)
        fused = [p * weights[:, i, :, None, None] for i, p in enumerate(projected)]
        out = fused[-1]
        for i in range(len(fused) - 2, -1, -1):  # coarse to fine; up[i] takes stage i+1 to i
            out = _resize(self.up[i](out), fused[i].shape[-2:]) + fused[i]
        return out

    def head(self, g1: torch.Tensor) -> torch.Tensor:
        """x4 DySample and the 1x1 classifier (in the memory-saving order unless disabled)."""
        if not self.fused_head:
            return self.classifier(self.final_up(g1))
        offsets = self.final_up.offsets(g1)
        groups, k = self.groups, self.num_classes
        n, width, h, w = g1.shape
        # per channel group g, the classifier's columns of g: (groups, k, d/groups) @ G_g
        # (a matmul rather than a grouped conv with a computed kernel, which ONNX cannot export)
        weight = self.classifier.weight.reshape(k, groups, width // groups).transpose(0, 1)
        partial = torch.matmul(weight, g1.reshape(n, groups, width // groups, h * w))
        sampled = self.final_up.sample(partial.reshape(n, groups * k, h, w), offsets)
        logits = sampled.reshape(n, groups, k, *sampled.shape[-2:]).sum(dim=1)
        return logits + self.classifier.bias.view(1, k, 1, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.head(self.fuse(features))


@DECODERS.register("dcf_paper", aliases=("dcf_published", "dsmsff_paper"), output_stride=1,
                   description="DCF as published: per-stage SE, DySample (267,106 params at "
                               "128/256/512/1024, width 128)")
def build_dcf_paper(in_channels: list[int], num_classes: int = 2, width: int = 128,
                    conv: int = 1) -> DCFPaperDecoder:
    return DCFPaperDecoder(list(in_channels), num_classes=num_classes, width=width, conv=conv)


@DECODERS.register("dcf_paper_3x3", aliases=("dcf_paper_conv3",), output_stride=1,
                   description="dcf_paper with Eq. 1's 3x3 projection convolutions")
def build_dcf_paper_3x3(in_channels: list[int], num_classes: int = 2,
                        width: int = 128) -> DCFPaperDecoder:
    return DCFPaperDecoder(list(in_channels), num_classes=num_classes, width=width, conv=3)
