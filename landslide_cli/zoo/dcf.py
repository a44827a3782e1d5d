"""Dynamic cross-layer fusion (DCF) decoder, KDA paper Eq. 1.

For the four backbone stages ``X_i`` (strides 4/8/16/32):

1. ``P_i = ReLU(BN(Conv1x1(X_i)))`` projects every stage to a common width ``d``.
2. Channel attention with weights shared by all stages:
   ``a_i = sigmoid(FC_2(ReLU(FC_1(GAP(P_i)))))`` with ``FC_1: d -> d/16``.
3. "GSoftmax": for every channel, a softmax across the four stages, ``w_i = softmax_i(a_i)``.
4. Hadamard product ``F_i = w_i * P_i`` (broadcast over space).
5. Progressive top-down fusion, coarse to fine: ``G_4 = F_4``, ``G_i = up2(G_{i+1}) + F_i``.
6. "UCM": a 1x1 classifier and x4 bilinear upsampling to the input resolution.

Bilinear interpolation is linear with weights summing to one and a 1x1 convolution is a
per-pixel affine map, so classifying at stride 4 and then upsampling gives exactly the same
logits as upsampling 128-channel features first, at 1/64 of the memory. The decoder returns the
stride-4 logits; :class:`~landslide_cli.zoo.segmenter.Segmenter` does the final upsampling.
By the same argument the classifier is applied to every stage *before* the top-down fusion
(with the stage weights folded into one ``(K, d)`` matrix per sample), so steps 4-5 add and
upsample K-channel maps instead of d-channel ones; the result equals fusing first.

For PVT widths [128, 256, 512, 1024] and ``d = 128`` the decoder has about 0.25M parameters
(the paper reports 0.27M with learned DySample upsamplers in place of bilinear ones).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from landslide_cli.zoo.registries import DECODERS


def conv_bn_relu(cin: int, cout: int, k: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=k // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class StageAttention(nn.Module):
    """GAP -> FC(d -> d/r) -> ReLU -> FC(d/r -> d) -> sigmoid, one weight set for all stages."""

    def __init__(self, width: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(width // reduction, 1)
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.mean(dim=(2, 3))
        return torch.sigmoid(self.fc2(F.relu(self.fc1(pooled))))


class DCFDecoder(nn.Module):
    def __init__(self, in_channels: list[int], num_classes: int = 2, width: int = 128,
                 reduction: int = 16) -> None:
        super().__init__()
        self.proj = nn.ModuleList(conv_bn_relu(c, width) for c in in_channels)
        self.attention = StageAttention(width, reduction)
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def stage_weights(self, projected: list[torch.Tensor]) -> torch.Tensor:
        """(N, stages, d) per-channel stage weights, summing to one over the stage axis."""
        scores = torch.stack([self.attention(p) for p in projected], dim=1)
        return torch.softmax(scores, dim=1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        projected = [proj(f) for proj, f in zip(self.proj, features, strict=True)]
        weights = self.stage_weights(projected)  # (N, S, d)
        # classify each stage first: C (w_i * P_i) = (C diag w_i) P_i, one (K, d) matrix per
        # sample and stage, so the top-down fusion runs on K-channel maps, not d-channel ones
        # (exact: the fusion and bilinear upsampling are linear, the bias is added once)
        cls = self.classifier.weight[:, :, 0, 0]  # (K, d)
        per_stage = weights[:, :, None, :] * cls  # (N, S, K, d)
        logits = [torch.matmul(per_stage[:, i].to(p.dtype), p.flatten(2)).unflatten(
            2, p.shape[-2:]) for i, p in enumerate(projected)]
        out = logits[-1]
        for finer in reversed(logits[:-1]):
            out = F.interpolate(out, size=finer.shape[-2:], mode="bilinear", align_corners=False)
            out = out + finer
        bias = self.classifier.bias
        return out if bias is None else out + bias[:, None, None].to(out.dtype)


@DECODERS.register("dcf", aliases=("dsmsff", "decoder_dsmsff"),
                   description="dynamic cross-layer fusion (KDA paper, Eq. 1)")
def build_dcf(in_channels: list[int], num_classes: int = 2, width: int = 128) -> DCFDecoder:
    return DCFDecoder(in_channels, num_classes=num_classes, width=width)
