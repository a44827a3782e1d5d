"""PyTorch side of the data layer: :class:`SegmentationDataset` and :class:`Augment`.

Pixels go through exactly the :class:`~landslide_cli.preprocess.InputSpec` of the model:
``x = (raw / scale - mean) / std`` (``normalization: fixed``) or the per-tile standardisation
of ``normalization: tile`` over the crop's valid pixels. Augmentations work in the *scaled*
space ``raw / scale`` (roughly [0, 1]) before mean/std, and every geometric operation is
applied identically to the image and the mask.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from landslide_cli.data.base import TileSet, select_bands
from landslide_cli.data.photometric import photometric as sensor_photometric
from landslide_cli.errors import LandslideError
from landslide_cli.preprocess import TILE_STD_MIN, InputSpec
from landslide_cli.terrain import spectral_indices, terrain_positions

#: mask value marking padded pixels while transforms run (replaced before returning)
_PAD = -1


def _uniform(lo: float, hi: float, g: torch.Generator | None) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def _coin(g: torch.Generator | None) -> bool:
    return bool(torch.rand((), generator=g) < 0.5)


def check_scale_range(value: Any) -> tuple[float, float]:
    """``(lo, hi)`` of a scale range (a pair, or ``"LO,HI"``), checked: ``0 < lo <= hi <= 8``."""
    if isinstance(value, str):
        value = value.split(",")
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise LandslideError(f"scale range must be two numbers LO,HI, got {value!r}") from None
    if not (0.0 < lo <= hi <= 8.0):
        raise LandslideError(f"scale range must satisfy 0 < LO <= HI <= 8, got {lo:g},{hi:g}")
    return lo, hi


@dataclass
class Augment:
    """Random training augmentations, identical geometry for image and mask.

    Attributes:
        rot90: rotate by a random multiple of 90 degrees (the KDA paper's augmentation).
        flips: random horizontal and vertical flips (the paper's).
        color_jitter: strength ``s`` in [0, 1): brightness, contrast and (3-band images)
            saturation factors drawn from ``U(1 - s, 1 + s)``; 0 disables it.
        scale_jitter: strength ``s`` in [0, 1): rescale image (bilinear) and mask (nearest) by a
            factor from ``U(1 - s, 1 + s)``; 0 disables it.
        scale_range: ``(lo, hi)`` with ``0 < lo <= hi``: rescale by a factor drawn
            log-uniformly from ``[lo, hi]`` instead (``lo = 1/3`` shows a 1 m tile as 3 m
            imagery would: a ground-resolution augmentation across sensors); overrides
            ``scale_jitter``; None: off.
        photometric_strength: sensor augmentation strength in [0, 1] (brightness, contrast,
            gamma, hue/saturation, blur, JPEG artefacts, noise; see
            :mod:`landslide_cli.data.photometric`), applied after colour jitter; 0 disables it.
        fg_crop: probability in [0, 1] that a random crop is centred on a random landslide
            pixel (mask value 1) of the tile, when it has any (class-balanced crops).
        density_jitter: strength ``s >= 0`` (``normalization: tile`` only): the per-tile
            statistics are computed with the landslide pixels weighted by ``exp(U(-s, s))``,
            so a crop is standardised as if its landslide share were up to ``e^s`` times
            higher or lower. Per-tile standardisation otherwise ties the network's input to
            the landslide share of the window (dense Hokkaido tiles came out under-confident);
            0 disables it.

    Randomness comes from the ``generator`` passed to each call (``None``: torch's global RNG),
    so results are reproducible given a seeded :class:`torch.Generator`.
    """

    rot90: bool = True
    flips: bool = True
    color_jitter: float = 0.0
    scale_jitter: float = 0.0
    scale_range: tuple[float, float] | None = None
    photometric_strength: float = 0.0
    fg_crop: float = 0.0
    density_jitter: float = 0.0

    def __post_init__(self) -> None:
        for name in ("color_jitter", "scale_jitter"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise LandslideError(f"augment {name} must be in [0, 1), got {value}")
        for name in ("photometric_strength", "fg_crop"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise LandslideError(f"augment {name} must be in [0, 1], got {value}")
        if self.scale_range is not None:
            self.scale_range = check_scale_range(self.scale_range)
        if not 0.0 <= self.density_jitter <= 8.0:
            raise LandslideError(f"augment density_jitter must be in [0, 8], got "
                                 f"{self.density_jitter}")

    def crop_center(self, mask: torch.Tensor,
                    generator: torch.Generator | None = None) -> tuple[int, int] | None:
        """With probability ``fg_crop``, a random landslide pixel ``(y, x)`` of ``mask``."""
        if not self.fg_crop:
            return None
        if float(torch.rand((), generator=generator)) >= self.fg_crop:
            return None
        fg = torch.nonzero(mask == 1)
        if fg.shape[0] == 0:
            return None
        j = int(torch.randint(0, fg.shape[0], (), generator=generator))
        return int(fg[j, 0]), int(fg[j, 1])

    def stat_weights(self, mask: torch.Tensor, valid: torch.Tensor,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        """Pixel weights of the per-tile statistics: ``valid``, landslide pixels times
        ``exp(U(-s, s))`` (``s = density_jitter``)."""
        w = valid.to(torch.float64)
        if self.density_jitter:
            u = _uniform(-self.density_jitter, self.density_jitter, generator)
            w = torch.where(mask == 1, w * math.exp(u), w)
        return w

    def rescale(self, image: torch.Tensor, mask: torch.Tensor,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale jitter: ``image (C,H,W)`` bilinear, ``mask (H,W)`` nearest, same new size."""
        if self.scale_range is not None:
            lo, hi = (math.log(v) for v in self.scale_range)
            f = math.exp(_uniform(lo, hi, generator))
        elif self.scale_jitter:
            f = _uniform(1 - self.scale_jitter, 1 + self.scale_jitter, generator)
        else:
            return image, mask
        h, w = image.shape[-2:]
        size = (max(1, round(h * f)), max(1, round(w * f)))
        if size == (h, w):
            return image, mask
        image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False,
                              antialias=f < 1)[0]
        mask = F.interpolate(mask[None, None].float(), size=size, mode="nearest-exact")[0, 0]
        return image, mask.to(torch.int64)

    def spatial(self, image: torch.Tensor, mask: torch.Tensor,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Random rot90 and flips of ``image (C,H,W)`` and ``mask (H,W)``."""
        if self.rot90:
            k = int(torch.randint(0, 4, (), generator=generator))
            if k:
                image = torch.rot90(image, k, dims=(-2, -1))
                mask = torch.rot90(mask, k, dims=(-2, -1))
        if self.flips:
            if _coin(generator):
                image, mask = image.flip(-1), mask.flip(-1)
            if _coin(generator):
                image, mask = image.flip(-2), mask.flip(-2)
        return image.contiguous(), mask.contiguous()

    def photometric(self, image: torch.Tensor,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """Colour jitter, then the sensor augmentation (``photometric_strength``), in the scaled
        space; values are clipped to ``[0, max(1, max(x))]``."""
        s = self.color_jitter
        if not s:
            return sensor_photometric(image, self.photometric_strength, generator)
        hi = max(1.0, float(image.max())) if image.numel() else 1.0
        brightness = _uniform(1 - s, 1 + s, generator)
        contrast = _uniform(1 - s, 1 + s, generator)
        saturation = _uniform(1 - s, 1 + s, generator)
        image = image * brightness
        mean = image.mean(dim=(-2, -1), keepdim=True)
        image = (image - mean) * contrast + mean
        if image.shape[0] == 3:
            gray = image.mean(dim=0, keepdim=True)
            image = (image - gray) * saturation + gray
        image = image.clamp(0.0, hi)
        return sensor_photometric(image, self.photometric_strength, generator)

    def __call__(self, image: torch.Tensor, mask: torch.Tensor,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """All enabled augmentations: rescale, rot90/flips, colour jitter."""
        image, mask = self.rescale(image, mask, generator)
        image, mask = self.spatial(image, mask, generator)
        return self.photometric(image, generator), mask


def crop_or_pad(image: torch.Tensor, mask: torch.Tensor, size: int, *, fill: torch.Tensor,
                random: bool, generator: torch.Generator | None = None,
                center: tuple[int, int] | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop/pad ``image (C,H,W)`` and ``mask (H,W)`` to ``size x size``.

    ``random``: random offsets (training) else centred; ``center`` ``(y, x)``: along each axis
    longer than ``size``, the crop window is centred on that pixel (clamped to the tile).
    Padding fills the image with ``fill``
    (per-band, shape (C,1,1)) and the mask with -1 (marks invalid pixels).
    """
    c, h, w = image.shape
    out_img = fill.to(image.dtype).expand(c, size, size).clone()
    out_mask = torch.full((size, size), _PAD, dtype=torch.int64)

    def offsets(n: int, at: int | None) -> tuple[int, int]:
        # (source start, destination start) along one axis
        slack = abs(n - size)
        off = int(torch.randint(0, slack + 1, (), generator=generator)) if random else slack // 2
        if at is not None and n > size:
            off = min(max(at - size // 2, 0), slack)
        return (off, 0) if n >= size else (0, off)

    cy, cx = center if center is not None else (None, None)
    (sy, dy), (sx, dx) = offsets(h, cy), offsets(w, cx)
    ch, cw = min(h, size), min(w, size)
    out_img[:, dy:dy + ch, dx:dx + cw] = image[:, sy:sy + ch, sx:sx + cw]
    out_mask[dy:dy + ch, dx:dx + cw] = mask[sy:sy + ch, sx:sx + cw]
    return out_img, out_mask


class SegmentationDataset(Dataset):
    """A torch Dataset over a :class:`TileSet`, normalized with the model's :class:`InputSpec`.

    Items are ``dict(image=float32 (C,S,S), mask=int64 (S,S), valid=bool (S,S), region=str,
    name=str, index=int)``. ``size=None`` keeps each tile's native size (evaluation);
    ``size=S`` random-crops (training, with ``augment``; pads if smaller) or centre-crops/pads
    (without). Padded pixels have image value 0 (the band mean after normalization), mask
    ``pad_label`` (default 0 = background) and ``valid=False``.

    ``seed``: with an int, augmentation and crops are deterministic per ``(seed, epoch,
    index)`` (call :meth:`set_epoch` each epoch); ``None`` uses torch's global RNG (which
    DataLoader seeds per worker).
    """

    def __init__(self, tiles: TileSet, spec: InputSpec, augment: Augment | None = None,
                 size: int | None = None, *, seed: int | None = None,
                 pad_label: int = 0) -> None:
        if size is not None and size < 1:
            raise LandslideError(f"tile size must be positive, got {size}")
        self.tiles = tiles
        self.spec = spec
        self.augment = augment
        self.size = size
        self.seed = seed
        self.epoch = 0
        self.pad_label = pad_label
        self._mean = torch.tensor(spec.mean, dtype=torch.float32).view(-1, 1, 1)
        self._std = torch.tensor(spec.std, dtype=torch.float32).view(-1, 1, 1)
        #: the image bands (not the terrain bands: elevation and slope are physical values
        #: that no sensor changes, so the photometric augmentation leaves them alone)
        self._spectral = spectral_indices(spec) if terrain_positions(spec) else None
        #: ``raw / scale`` per band (terrain bands: 1, their values are metres and degrees)
        self._scales = np.asarray(spec.band_scales(), dtype=np.float32).reshape(-1, 1, 1)

    def item_regions(self) -> list[str]:
        """The region of every item, in index order (region-balanced sampling)."""
        return [s.region for s in self.tiles.samples]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.tiles)

    def generator(self, index: int) -> torch.Generator | None:
        if self.seed is None:
            return None
        mixed = ((self.seed * 1_000_003 + self.epoch) * 1_000_033 + index) % (2**63 - 1)
        return torch.Generator().manual_seed(mixed)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.tiles[index]
        raw, raw_mask = self.tiles.read(index)
        raw = select_bands(raw, self.spec, source=str(sample.image_path))
        image = torch.from_numpy(raw.astype(np.float32, copy=False) / self._scales)
        mask = torch.from_numpy(raw_mask.astype(np.int64))
        g = self.generator(index)
        if self.augment is not None:
            image, mask = self.augment.rescale(image, mask, g)
        if self.size is not None:
            center = self.augment.crop_center(mask, g) if self.augment is not None else None
            image, mask = crop_or_pad(image, mask, self.size, fill=self._mean,
                                      random=self.augment is not None, generator=g,
                                      center=center)
        if self.augment is not None:
            image, mask = self.augment.spatial(image, mask, g)
            if self._spectral is None:
                image = self.augment.photometric(image, g)
            elif self._spectral:
                image = image.clone()
                image[self._spectral] = self.augment.photometric(image[self._spectral], g)
        valid = mask != _PAD
        if not bool(valid.all()):
            mask = torch.where(valid, mask, torch.tensor(self.pad_label, dtype=torch.int64))
        derived = None
        if self.spec.derived:
            # colour-index channels of the augmented tile, as preprocess.normalize appends
            # them at inference (from the bands before standardisation, 0 outside ``valid``)
            from landslide_cli.baselines import derived_channels

            derived = torch.from_numpy(derived_channels(
                image.numpy(), self.spec, valid.numpy(), scaled=True))
        if self.spec.normalization == "tile":
            weights = None
            if self.augment is not None and self.augment.density_jitter:
                weights = self.augment.stat_weights(mask, valid, g)
            image = standardize_tile(image, valid, weights)
        else:
            image = (image - self._mean) / self._std
        if derived is not None:
            image = torch.cat([image.to(torch.float32), derived])
        image = image.to(torch.float32).contiguous()
        return {"image": image, "mask": mask.contiguous(), "valid": valid,
                "region": sample.region, "name": sample.name, "index": index}


def standardize_tile(image: torch.Tensor, valid: torch.Tensor | None = None,
                     weights: torch.Tensor | None = None) -> torch.Tensor:
    """``normalization: tile`` of a scaled ``(C, H, W)`` tile, as
    :func:`landslide_cli.preprocess.normalize`: per band ``(x - m) / max(s, TILE_STD_MIN)``
    with the mean ``m`` and standard deviation ``s`` of the valid pixels; invalid ones -> 0.
    ``weights`` ((H, W), zero outside ``valid``): a weighted mean and deviation instead
    (the training augmentation ``density_jitter``)."""
    x = image.to(torch.float64)
    if weights is None:
        if valid is None or bool(valid.all()):
            m = x.mean(dim=(-2, -1), keepdim=True)
            v = ((x - m) ** 2).mean(dim=(-2, -1), keepdim=True)
            return ((x - m) / v.sqrt().clamp_min(TILE_STD_MIN)).to(torch.float32)
        weights = valid
    w = weights.to(torch.float64)
    n = w.sum().clamp_min(1e-12)  # no valid pixel: both sums are 0, so m = v = 0
    m = (x * w).sum(dim=(-2, -1), keepdim=True) / n
    v = (((x - m) ** 2) * w).sum(dim=(-2, -1), keepdim=True) / n
    out = (x - m) / v.sqrt().clamp_min(TILE_STD_MIN)
    if valid is not None:
        out = out * valid
    return out.to(torch.float32)
