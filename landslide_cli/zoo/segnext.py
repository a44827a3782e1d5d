"""SegNeXt's decoder (Guo et al., NeurIPS 2022): the light Hamburger head, ``segnext``.

The head of SegNeXt ("LightHam") models global context with a matrix decomposition instead of
attention (Geng et al., "Is attention better than matrix decomposition?", ICLR 2021):

1. stages 2-4 (strides 8/16/32) are bilinearly resized to stride 8 and concatenated; a
   ``ReLU(GN(Conv1x1))`` "squeeze" maps them to ``ham_channels``;
2. the Hamburger: ``z = ReLU(Conv1x1(x))`` (lower bread), ``z ~ D C^T`` by non-negative matrix
   factorisation (the ham; below), ``GN(Conv1x1(D C^T))`` (upper bread), output
   ``ReLU(x + upper)``;
3. ``ReLU(GN(Conv1x1))`` "align" to ``channels``, dropout 0.1, 1x1 classifier.

NMF (the ham, no parameters): per image, ``X`` is ``z`` reshaped to ``(d, n)`` (``d``
channels per group, ``n`` pixels), ``D`` ``(d, R)`` the bases, ``C`` ``(n, R)`` the codes.
``C = softmax(X^T D)`` over the bases, then ``steps`` multiplicative updates (Lee & Seung)
``C <- C * (X^T D) / (C D^T D)``, ``D <- D * (X C) / (D C^T C)`` without gradient, and one
last update of ``C`` with gradient (the paper's one-step gradient). ``R = 64`` bases, 6 steps in
training and 7 in evaluation, one group (``S = 1``), as in SegNeXt.

Determinism: SegNeXt draws new random bases on every forward pass, so its predictions vary
between runs. Here the initial bases are drawn once (a fixed seed), stored as a buffer of the
module (saved in checkpoints) and reused: predictions are reproducible and the ONNX export's
parity check holds. There is no online update of the bases.

Settings: ``ham_channels = channels = 2 x width`` (256 at the default width 128: SegNeXt-T/S
use 256/256, SegNeXt-B 512/512); GroupNorm with 32 groups (or the largest divisor of the
width). With encoder widths 128/256/512/1024 and width 128 the head counts 657,666
parameters. The head computes at stride 8; its logits are resized to stride 4, the decoder
contract (the segmenter resizes to the input).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from landslide_cli.zoo.registries import DECODERS

#: parameter count at encoder widths 128/256/512/1024, 2 classes, width 128 (pinned in tests)
SEGNEXT_PARAMS = 657_666


def _gn(channels: int, groups: int = 32) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(groups, channels), channels)


def conv_gn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), _gn(cout), nn.ReLU(inplace=True))


class NMF2D(nn.Module):
    """Non-negative matrix factorisation of a feature map by multiplicative updates."""

    def __init__(self, channels: int, rank: int = 64, train_steps: int = 6,
                 eval_steps: int = 7, eps: float = 1e-6, seed: int = 0) -> None:
        super().__init__()
        self.rank = rank
        self.train_steps = train_steps
        self.eval_steps = eval_steps
        self.eps = eps
        gen = torch.Generator().manual_seed(seed)
        bases = F.normalize(torch.rand(channels, rank, generator=gen), dim=0)
        self.register_buffer("bases", bases)

    def _update_codes(self, x: torch.Tensor, bases: torch.Tensor,
                      codes: torch.Tensor) -> torch.Tensor:
        num = torch.bmm(x.transpose(1, 2), bases)
        den = torch.bmm(codes, torch.bmm(bases.transpose(1, 2), bases))
        return codes * num / (den + self.eps)

    def _update_bases(self, x: torch.Tensor, bases: torch.Tensor,
                      codes: torch.Tensor) -> torch.Tensor:
        num = torch.bmm(x, codes)
        den = torch.bmm(bases, torch.bmm(codes.transpose(1, 2), codes))
        return bases * num / (den + self.eps)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        n, c, h, w = z.shape
        x = z.reshape(n, c, h * w)
        bases = self.bases.to(x.dtype).unsqueeze(0).expand(n, -1, -1)
        steps = self.train_steps if self.training else self.eval_steps
        with torch.no_grad():
            codes = torch.softmax(torch.bmm(x.transpose(1, 2), bases), dim=-1)
            for _ in range(steps):
                codes = self._update_codes(x, bases, codes)
                bases = self._update_bases(x, bases, codes)
        codes = self._update_codes(x, bases, codes)  # the one step with gradient
        return torch.bmm(bases, codes.transpose(1, 2)).reshape(n, c, h, w)


class Hamburger(nn.Module):
    """Lower bread (1x1 + ReLU), NMF ham, upper bread (1x1 + GN), residual and ReLU."""

    def __init__(self, channels: int, rank: int = 64) -> None:
        super().__init__()
        self.lower = nn.Conv2d(channels, channels, 1)
        self.ham = NMF2D(channels, rank)
        self.upper = nn.Sequential(nn.Conv2d(channels, channels, 1, bias=False), _gn(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.ham(F.relu(self.lower(x)))
        return F.relu(x + self.upper(z))


class LightHamHead(nn.Module):
    """SegNeXt's decoder: stages 2-4 -> squeeze -> Hamburger -> align -> classifier."""

    def __init__(self, in_channels: list[int], num_classes: int = 2, ham_channels: int = 256,
                 channels: int = 256, rank: int = 64, dropout: float = 0.1) -> None:
        super().__init__()
        self.squeeze = conv_gn_relu(sum(in_channels[1:]), ham_channels)
        self.hamburger = Hamburger(ham_channels, rank)
        self.align = conv_gn_relu(ham_channels, channels)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        size = features[1].shape[-2:]
        x = torch.cat([F.interpolate(f, size=size, mode="bilinear", align_corners=False)
                       if f.shape[-2:] != size else f for f in features[1:]], dim=1)
        x = self.align(self.hamburger(self.squeeze(x)))
        logits = self.classifier(self.dropout(x))
        return F.interpolate(logits, size=features[0].shape[-2:], mode="bilinear",
                             align_corners=False)


@DECODERS.register("segnext", aliases=("lightham", "hamburger", "ham"),
                   params_paper_encoder=SEGNEXT_PARAMS,
                   description="SegNeXt light Hamburger head, NMF (Table IV)")
def build_segnext(in_channels: list[int], num_classes: int = 2,
                  width: int = 128) -> LightHamHead:
    return LightHamHead(list(in_channels), num_classes=num_classes, ham_channels=2 * width,
                        channels=2 * width)
