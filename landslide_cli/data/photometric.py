"""Photometric (sensor) augmentation: what differs between cameras and processing chains.

:func:`photometric` works on one ``(C, H, W)`` float tile in the *scaled* space ``raw / scale``
(roughly [0, 1]; 8-bit data: ``raw / 255``), before the InputSpec's mean/std, in the training
data pipeline only. With strength ``s`` in (0, 1] each operation below is applied independently
with probability 1/2, its magnitude growing with ``s``:

* brightness: ``x * b``, ``b ~ U(1 - 0.4 s, 1 + 0.4 s)``
* contrast: ``(x - mean) * c + mean`` per band, ``c ~ U(1 - 0.4 s, 1 + 0.4 s)``
* gamma: ``x ** g``, ``log g ~ U(-0.5 s, 0.5 s)`` (on ``x / hi`` in [0, 1])
* hue / saturation (3 bands): rotation of the YIQ chroma plane by ``U(-36 s, 36 s)`` degrees
  and its scaling by ``U(1 - 0.5 s, 1 + 0.5 s)`` (one 3x3 matrix)
* Gaussian blur: separable kernel, sigma ``~ U(0.3, 0.3 + 1.2 s)`` pixels
* JPEG artefacts (3 bands): PIL JPEG round trip at quality ``~ U(95 - 70 s, 95)`` (a
  blockwise 8x8 DCT quantisation when Pillow is missing)
* Gaussian noise: ``sigma ~ U(0, 0.04 s)``

Values are clipped to ``[0, max(1, max(x))]`` at the end. Randomness comes only from the given
:class:`torch.Generator`, so a tile's augmentation is reproducible.
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
import torch.nn.functional as F

# RGB <-> YIQ (NTSC); rotating/scaling the I,Q plane shifts hue / saturation
_RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114],
                         [0.596, -0.274, -0.322],
                         [0.211, -0.523, 0.312]], dtype=torch.float32)
_YIQ2RGB = torch.linalg.inv(_RGB2YIQ)


def _u(lo: float, hi: float, g: torch.Generator | None) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def _coin(g: torch.Generator | None) -> bool:
    return bool(torch.rand((), generator=g) < 0.5)


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(C, H, W)`` (reflect padding)."""
    radius = max(1, math.ceil(2.5 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).to(image.dtype)
    h, w = image.shape[-2:]
    x = image[:, None]
    if h > radius and w > radius:
        x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    else:
        x = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, -1))
    x = F.conv2d(x, k.view(1, 1, -1, 1))
    return x[:, 0]


def jpeg(image: torch.Tensor, quality: int, hi: float = 1.0) -> torch.Tensor:
    """JPEG round trip of a 3-band ``(3, H, W)`` tile in [0, hi] (8-bit quantised)."""
    arr = (image / hi).clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a dependency of matplotlib
        return dct_quantise(image, quality, hi)
    buf = io.BytesIO()
    Image.fromarray(arr, mode="RGB").save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    out = np.asarray(Image.open(buf).convert("RGB"), dtype=np.float32)
    return torch.from_numpy(out).permute(2, 0, 1).contiguous() * (hi / 255.0)


def dct_quantise(image: torch.Tensor, quality: int, hi: float = 1.0) -> torch.Tensor:
    """Blockwise 8x8 DCT quantisation (JPEG-like, any band count) with a flat-ish table."""
    c, h, w = image.shape
    n = 8
    ph, pw = (-h) % n, (-w) % n
    x = F.pad(image[None] / hi * 255.0, (0, pw, 0, ph), mode="replicate")[0]
    i = torch.arange(n, dtype=torch.float32)
    d = torch.cos(math.pi * (2 * i[None, :] + 1) * i[:, None] / (2 * n)) * math.sqrt(2 / n)
    d[0] /= math.sqrt(2)
    q = 50.0 / max(1, quality) if quality < 50 else 2.0 - quality / 50.0
    table = (1.0 + (i[:, None] + i[None, :]) * 2.0) * max(q, 0.05) * 4.0
    H, W = x.shape[1:]
    blocks = x.view(c, H // n, n, W // n, n).permute(0, 1, 3, 2, 4)
    coef = d @ (blocks - 128.0) @ d.T
    coef = torch.round(coef / table) * table
    back = d.T @ coef @ d + 128.0
    out = back.permute(0, 1, 3, 2, 4).reshape(c, H, W)[:, :h, :w]
    return out.clamp(0, 255) * (hi / 255.0)


def photometric(image: torch.Tensor, strength: float,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Random sensor-like photometric changes of ``image (C, H, W)`` (see the module doc)."""
    s = float(strength)
    if s <= 0 or image.numel() == 0:
        return image
    g = generator
    hi = max(1.0, float(image.max()))
    x = image.to(torch.float32)
    three = x.shape[0] == 3
    # draw every random number in a fixed order (reproducible whatever is enabled)
    do = [_coin(g) for _ in range(7)]
    b = _u(1 - 0.4 * s, 1 + 0.4 * s, g)
    c = _u(1 - 0.4 * s, 1 + 0.4 * s, g)
    gamma = math.exp(_u(-0.5 * s, 0.5 * s, g))
    hue = math.radians(_u(-36.0 * s, 36.0 * s, g))
    sat = _u(1 - 0.5 * s, 1 + 0.5 * s, g)
    sigma = _u(0.3, 0.3 + 1.2 * s, g)
    quality = round(_u(95 - 70 * s, 95, g))
    noise = _u(0.0, 0.04 * s, g)
    if do[0]:
        x = x * b
    if do[1]:
        mean = x.mean(dim=(-2, -1), keepdim=True)
        x = (x - mean) * c + mean
    if do[2]:
        x = (x.clamp(0, hi) / hi).pow(gamma) * hi
    if do[3] and three:
        rot = torch.tensor([[1.0, 0.0, 0.0],
                            [0.0, math.cos(hue) * sat, -math.sin(hue) * sat],
                            [0.0, math.sin(hue) * sat, math.cos(hue) * sat]])
        m = _YIQ2RGB @ rot @ _RGB2YIQ
        x = torch.einsum("ij,jhw->ihw", m, x)
    if do[4]:
        x = gaussian_blur(x, sigma)
    if do[5]:
        x = x.clamp(0, hi)
        x = jpeg(x, quality, hi) if three else dct_quantise(x, quality, hi)
    if do[6] and noise > 0:
        x = x + noise * hi * torch.randn(x.shape, generator=g)
    return x.clamp(0.0, hi).to(image.dtype)
