"""Landslide4Sense (Ghorbanzadeh et al., IEEE TGRS 2022): HDF5 patches of 128x128x14.

Image files ``image_N.h5`` hold dataset ``img`` shaped ``(128, 128, 14)`` (float); mask files
``mask_N.h5`` hold ``mask`` shaped ``(128, 128)`` with 0/1. Bands, in file order (the paper):
Sentinel-2 B1-B12 (B1 B2 B3 B4 B5 B6 B7 B8 B9 B10 B11 B12), ALOS PALSAR slope (B13) and DEM
(B14), all at ~10 m.

The files store every band scaled to values around 1; :class:`H5Reader` returns the two terrain
bands in physical units, as every terrain band of this project is (:mod:`landslide_cli.terrain`):
``slope`` in degrees and ``dem`` in metres. The factors are those of the released files: their
slope band holds whole degrees times :data:`L4S_SLOPE_STEP` and their DEM whole metres times
:data:`L4S_DEM_STEP` (in the real Landslide4Sense patches shared with the project every value is an
integer multiple of these steps to 1e-12: 0-74 degrees, 391-2774 m; the slope computed from the
DEM at 10 m agrees with the slope band). The spec hint's mean/std of the two bands are the
published ones converted by the same factors, so a model sees exactly the normalised values of
the L4S baseline code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from landslide_cli.data.base import Sample, binarize_mask
from landslide_cli.errors import DataError, LandslideError
from landslide_cli.preprocess import InputSpec

L4S_BANDS = ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B9", "B10", "B11", "B12",
             "slope", "dem"]
_ALIASES = {"b13": "slope", "b14": "dem", "elevation": "dem", "red": "b4", "green": "b3",
            "blue": "b2", "nir": "b8"}
_PRESETS = {"rgb": ["B4", "B3", "B2"], "all": list(L4S_BANDS)}
#: Per-band mean/std of the raw patch values, as published with the L4S baseline code.
L4S_MEAN = [-0.4914, -0.3074, -0.1277, -0.0625, 0.0439, 0.0803, 0.0644, 0.0802, 0.3000, 0.4082,
            0.0823, 0.0516, 0.3338, 0.7819]
L4S_STD = [0.9325, 0.8775, 0.8860, 0.8869, 0.8857, 0.8418, 0.8354, 0.8491, 0.9061, 1.6072,
           0.8848, 0.9232, 0.9018, 1.2913]
#: one degree of slope (band 13) and one metre of elevation (band 14) in the files' units
L4S_SLOPE_STEP = 0.04927981818285986
L4S_DEM_STEP = 0.0012939432042305726
#: 1-based band -> file units per physical unit (degrees, metres)
L4S_TERRAIN_STEPS = {13: L4S_SLOPE_STEP, 14: L4S_DEM_STEP}


def l4s_band_stats(index: int) -> tuple[float, float]:
    """``(mean, std)`` of 1-based band ``index`` in the units :class:`H5Reader` returns."""
    step = L4S_TERRAIN_STEPS.get(index, 1.0)
    return L4S_MEAN[index - 1] / step, L4S_STD[index - 1] / step


def parse_l4s_bands(bands: Sequence[int | str] | str | None) -> list[int] | None:
    """Band names (``B4``, ``slope``, ``dem``; ``red``/``green``/``blue``/``nir`` for B4/B3/B2/B8;
    presets ``rgb``/``all``) or 1-based indices -> 1-based indices into the 14 bands (None:
    all)."""
    if bands is None:
        return None
    items = bands.split(",") if isinstance(bands, str) else list(bands)
    lookup = {b.lower(): i + 1 for i, b in enumerate(L4S_BANDS)}
    out: list[int] = []
    for item in items:
        text = str(item).strip()
        if not text:
            continue
        low = text.lower()
        if low in _PRESETS:
            out += [lookup[b.lower()] for b in _PRESETS[low]]
            continue
        idx = int(low) if low.isdigit() else lookup.get(_ALIASES.get(low, low).lower(), 0)
        if not 1 <= idx <= len(L4S_BANDS):
            raise LandslideError(
                f"unknown Landslide4Sense band {text!r}; use 1..14 or one of: "
                f"{', '.join(L4S_BANDS)} (or red, green, blue, nir, rgb, all)"
            )
        out.append(idx)
    return out or None


def l4s_spec_hint(indices: list[int] | None) -> InputSpec:
    idx = indices or list(range(1, len(L4S_BANDS) + 1))
    return InputSpec(
        bands=[L4S_BANDS[i - 1] for i in idx],
        band_indices=idx,
        scale=1.0,
        mean=[l4s_band_stats(i)[0] for i in idx],
        std=[l4s_band_stats(i)[1] for i in idx],
        dtype="float32",
        resolution_m=[10.0, 10.0],
        tile=128,
    )


def _h5_array(path: object, key: str) -> np.ndarray:
    import h5py

    try:
        with h5py.File(path, "r") as fh:
            if key not in fh:
                raise DataError(f"{path}: no dataset {key!r} (has: {', '.join(fh.keys())})")
            return np.asarray(fh[key][()])
    except OSError as exc:
        first = (str(exc).strip().splitlines() or ["unreadable"])[0][:160]
        raise DataError(f"cannot read HDF5 file {path}: {first}") from None


def to_physical(image: np.ndarray) -> np.ndarray:
    """Bands 13 (slope) and 14 (DEM) of a ``(14, H, W)`` float image from file units to degrees
    and metres, in place (and returned)."""
    for index, step in L4S_TERRAIN_STEPS.items():
        image[index - 1] /= image.dtype.type(step)
    return image


@dataclass
class H5Reader:
    """Reads ``img`` (H, W, C) -> (C, H, W) and ``mask`` (H, W) from Landslide4Sense files;
    bands 13 and 14 (of a 14-band file) come out in degrees and metres (module docstring)."""

    bands: list[int] | None = None
    image_key: str = "img"
    mask_key: str = "mask"

    def _image(self, sample: Sample) -> np.ndarray:
        arr = _h5_array(sample.image_path, self.image_key)
        if arr.ndim != 3:
            raise DataError(f"{sample.image_path}: expected an (H, W, bands) image, "
                            f"got shape {arr.shape}")
        arr = np.ascontiguousarray(np.moveaxis(arr, -1, 0))
        if arr.shape[0] == len(L4S_BANDS):
            if arr.dtype.kind != "f":
                arr = arr.astype(np.float32)
            to_physical(arr)
        if self.bands:
            if max(self.bands) > arr.shape[0]:
                raise DataError(f"{sample.image_path}: has {arr.shape[0]} bands; bands "
                                f"{self.bands} were requested")
            arr = arr[[b - 1 for b in self.bands]]
        return arr

    def _mask(self, sample: Sample, shape: tuple[int, ...]) -> np.ndarray:
        if sample.mask_path is None:
            return np.zeros(shape, dtype=np.uint8)
        raw = _h5_array(sample.mask_path, self.mask_key)
        if raw.ndim == 3 and 1 in (raw.shape[0], raw.shape[-1]):
            raw = raw.squeeze(0 if raw.shape[0] == 1 else -1)
        if raw.shape != tuple(shape):
            raise DataError(f"{sample.mask_path}: mask shape {raw.shape} does not match image "
                            f"{sample.image_path} ({tuple(shape)})")
        return binarize_mask(raw, sample.mask_path, "strict")

    def read(self, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        image = self._image(sample)
        return image, self._mask(sample, image.shape[1:])

    def check(self, sample: Sample) -> None:
        self.read(sample)  # patches are tiny; a full read is the simplest complete check

    def image_info(self, sample: Sample) -> tuple[int, int, int, str]:
        image = self._image(sample)
        return image.shape[0], image.shape[1], image.shape[2], str(image.dtype)
