"""DySample: upsampling by learnt point sampling (Liu et al., ICCV 2023), 'lp' style.

For an input ``x`` of shape ``(N, C, h, w)`` and an integer ``scale`` ``s``:

1. a 1x1 convolution on the *low-resolution* map predicts, for each of ``groups`` channel
   groups and each of the ``s x s`` sub-positions of every input pixel, a 2-D offset
   (``2 * groups * s^2`` channels; the 'l' of 'lp');
2. the offsets are multiplied by a static scope factor (0.25: a sampling point moves at most a
   quarter pixel per unit of the raw output, which keeps neighbouring points from crossing) and
   rearranged to the high-resolution grid by a pixel shuffle (the 'p');
3. output pixel ``(Y, X)`` of group ``g`` is the bilinear sample of ``x``'s group ``g`` at
   ``((X + 0.5) / s + dx, (Y + 0.5) / s + dy)`` in input pixel units (pixel edges at integers),
   via :func:`torch.nn.functional.grid_sample` (``align_corners=False``, border padding).

With zero offsets the sampling points are exactly those of
``F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)`` (the paper's
"initial sampling position"), so DySample starts as bilinear upsampling; the offset layer is
initialised with N(0, 0.001) weights and zero bias as in the paper. Parameters:
``(C + 1) * 2 * groups * s^2`` (4,128 for C = 128, s = 2, groups = 4; 16,512 for s = 4).

The position base is written as ``(X + 0.5) / s``, which equals the paper's formulation (pixel
centre of the low-resolution pixel plus a fixed sub-pixel "initial position" of
``(j - (s - 1) / 2) / s``), so no buffer is stored. ONNX: ``grid_sample`` exports from opset 16.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DySample(nn.Module):
    """Learnt point-sampling upsampler ('lp' style, static scope factor)."""

    def __init__(self, channels: int, scale: int = 2, groups: int = 4,
                 scope: float = 0.25) -> None:
        super().__init__()
        if scale < 1 or groups < 1 or channels % groups:
            raise ValueError(f"DySample: {channels} channels cannot form {groups} groups "
                             f"(scale {scale})")
        self.channels = channels
        self.scale = int(scale)
        self.groups = int(groups)
        self.scope = float(scope)
        self.offset = nn.Conv2d(channels, 2 * groups * scale * scale, 1)
        nn.init.normal_(self.offset.weight, std=1e-3)
        nn.init.zeros_(self.offset.bias)

    def offsets(self, x: torch.Tensor) -> torch.Tensor:
        """Scaled offsets on the high-resolution grid, ``(N, 2, groups, s*h, s*w)``, pixels."""
        n, _, h, w = x.shape
        off = F.pixel_shuffle(self.offset(x) * self.scope, self.scale)
        return off.reshape(n, 2, self.groups, self.scale * h, self.scale * w)

    def sample(self, x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """Sample ``x`` (``groups`` channel groups, any channel count) at the offset points."""
        n, c, h, w = x.shape
        g = self.groups
        big_h, big_w = offsets.shape[-2:]
        xs = (torch.arange(big_w, device=x.device, dtype=offsets.dtype) + 0.5) / self.scale
        ys = (torch.arange(big_h, device=x.device, dtype=offsets.dtype) + 0.5) / self.scale
        gx = (xs.view(1, 1, 1, big_w) + offsets[:, 0]) * (2.0 / w) - 1.0
        gy = (ys.view(1, 1, big_h, 1) + offsets[:, 1]) * (2.0 / h) - 1.0
        grid = torch.stack([gx, gy], dim=-1).reshape(n * g, big_h, big_w, 2)
        out = F.grid_sample(x.reshape(n * g, c // g, h, w), grid.to(x.dtype), mode="bilinear",
                            padding_mode="border", align_corners=False)
        return out.reshape(n, c, big_h, big_w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sample(x, self.offsets(x))
