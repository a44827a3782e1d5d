"""Input description and normalization, shared by training, eval, predict and export.

The :class:`InputSpec` lives in every checkpoint's metadata, so all three paths scale and
normalize pixels identically: ``x = (raw / scale - mean) / std`` per band
(``normalization: fixed``, the default and what checkpoints without the field mean), or, with
``normalization: tile``, per-tile standardisation::

    x = raw / scale
    z = (x - m) / max(s, TILE_STD_MIN)        # per band; m, s: mean and std of the tile's
                                              # valid pixels (all pixels when no mask is given)

``z`` is exactly what the fixed normalization gives for the tile re-coloured to per-band mean
``mean`` and standard deviation ``std`` in the scaled space (``x' = z * std + mean``, then
``(x' - mean) / std = z``), so the model sees the range of ImageNet-normalised input whatever
the sensor's brightness, contrast or white balance. "Tile" is the array handed to
:func:`normalize`: a training crop, an ``eval`` tile, a ``predict`` window.

*Terrain bands* (named ``dem`` or ``slope``, :mod:`landslide_cli.terrain`) hold metres and
degrees, not sensor values: ``scale`` does not apply to them (their scale is 1, see
:meth:`InputSpec.band_scales`), so their ``mean``/``std`` are in metres and degrees.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from landslide_cli.errors import LandslideError

# ImageNet statistics (for [0, 1]-scaled RGB), the usual choice for timm backbones.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: ``normalization`` values of an :class:`InputSpec`
NORMALIZATIONS = ("fixed", "tile")
#: percentiles of the training pixels recorded in a model's InputSpec (see
#: :func:`reference_percentiles`)
REFERENCE_PERCENTS = (0.5, 1.0, 2.0, 50.0, 98.0, 99.0, 99.5)
#: floor of the per-tile standard deviation (scaled units: 2.55 levels of 8-bit data), so
#: a flat tile is not amplified into noise
TILE_STD_MIN = 0.01


@dataclass
class InputSpec:
    """What a model expects to be fed.

    Attributes:
        bands: names of the input bands, in the order the model expects them.
        band_indices: 1-based raster band indices to read by default (``None``: 1..len(bands)).
        scale: raw values are divided by this (255 for 8-bit, 10000 for reflectance DNs, 1 for
            float data already in [0, 1]).
        mean, std: per-band normalization applied after scaling.
        dtype: the raster data type the model was trained on ("uint8", "uint16", "float32").
        resolution_m: nominal ground sampling distance range [min, max] in metres, if known.
        tile: the tile size the model was trained and is run at.
        normalization: ``fixed`` (``(raw / scale - mean) / std``) or ``tile`` (per-tile,
            per-band standardisation after ``raw / scale``; see the module docstring).
        percentiles: per-band percentiles of the training pixels in raw units, keyed by the
            percent as text (``{"2": [r, g, b], "98": [...]}``), or ``None`` (models made
            before they were recorded). ``predict``/``eval`` map other radiometry (16-bit,
            float reflectance) onto these; see :data:`REFERENCE_PERCENTS`.
        derived: colour indices (names of :data:`landslide_cli.baselines.BASELINES`, e.g.
            ``["rg"]``) computed by :func:`normalize` from the raw red, green and blue bands
            (``raw / scale``, before any normalization, so they keep the absolute colour that
            per-tile normalization removes) and appended after the bands as extra model input
            channels in [0, 1]; see :attr:`model_channels`. ``[]`` (the default): none.
    """

    bands: list[str] = field(default_factory=lambda: ["red", "green", "blue"])
    band_indices: list[int] | None = None
    scale: float = 255.0
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    dtype: str = "uint8"
    resolution_m: list[float] | None = None
    tile: int = 512
    normalization: str = "fixed"
    percentiles: dict[str, list[float]] | None = None
    derived: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.derived:
            from landslide_cli.baselines import BASELINES

            self.derived = [BASELINES.resolve(str(name)) for name in self.derived]
            if self.num_bands < 3:
                raise LandslideError(f"input spec: derived channels {', '.join(self.derived)} "
                                     f"need red, green and blue bands, got "
                                     f"{', '.join(self.bands)}")
        if self.normalization not in NORMALIZATIONS:
            raise LandslideError(f"input spec: normalization {self.normalization!r}: choose "
                                 f"one of {', '.join(NORMALIZATIONS)}")
        n = len(self.bands)
        if n == 0:
            raise LandslideError("input spec: at least one band is required")
        if len(self.mean) != n or len(self.std) != n:
            raise LandslideError(
                f"input spec: {n} bands but {len(self.mean)} means and {len(self.std)} stds"
            )
        if self.band_indices is not None and len(self.band_indices) != n:
            raise LandslideError(
                f"input spec: {n} bands but {len(self.band_indices)} band indices"
            )
        if self.scale <= 0 or any(s <= 0 for s in self.std):
            raise LandslideError("input spec: scale and std must be positive")
        if self.percentiles is not None:
            clean: dict[str, list[float]] = {}
            for key, values in self.percentiles.items():
                try:
                    pct = float(key)
                except ValueError:
                    pct = -1.0
                if not 0.0 <= pct <= 100.0 or len(values) != n:
                    raise LandslideError(
                        f"input spec: percentiles[{key!r}] must be a percent in [0, 100] "
                        f"with {n} per-band values")
                clean[_percent_key(pct)] = [float(v) for v in values]
            self.percentiles = dict(sorted(clean.items(), key=lambda kv: float(kv[0])))

    def percentile(self, pct: float) -> list[float] | None:
        """The recorded per-band ``pct`` percentile of the training pixels (raw units)."""
        if not self.percentiles:
            return None
        return self.percentiles.get(_percent_key(pct))

    @property
    def num_bands(self) -> int:
        return len(self.bands)

    @property
    def model_channels(self) -> int:
        """Channels of the model input :func:`normalize` produces: bands + derived."""
        return self.num_bands + len(self.derived)

    def band_scales(self) -> list[float]:
        """The divisor of each band: :attr:`scale`, but 1 for terrain bands (elevation in
        metres, slope in degrees; :mod:`landslide_cli.terrain`)."""
        from landslide_cli.terrain import terrain_kind

        return [1.0 if terrain_kind(b) else float(self.scale) for b in self.bands]

    @property
    def indices(self) -> list[int]:
        """1-based band indices to read from a raster."""
        return list(self.band_indices) if self.band_indices else list(range(1, self.num_bands + 1))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InputSpec:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def normalize(self, raw: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        """Scale and normalize a (C, H, W) or (N, C, H, W) array to float32."""
        return normalize(raw, self, valid)


def normalize(raw: np.ndarray, spec: InputSpec, valid: np.ndarray | None = None, *,
              out: np.ndarray | None = None) -> np.ndarray:
    """``(raw / scale - mean) / std`` per band, as float32. Channel axis is -3.

    With ``spec.normalization == "tile"``: per image and band ``(x - m) / max(s, TILE_STD_MIN)``
    of ``x = raw / scale``, ``m`` and ``s`` over the pixels where ``valid`` ((H, W) or
    (N, H, W) bool; None: all) is true; invalid pixels come out as 0. The derived index
    channels (``spec.derived``) follow the bands. ``out``: a float32 array of the result's
    shape (``spec.model_channels`` channels) to write into, e.g. a slot of a batch (returned).
    """
    if raw.ndim not in (3, 4):
        raise LandslideError(f"expected a (C,H,W) or (N,C,H,W) array, got shape {raw.shape}")
    c = raw.shape[-3]
    if c != spec.num_bands:
        raise LandslideError(
            f"the model expects {spec.num_bands} bands ({', '.join(spec.bands)}), got {c}"
        )
    out = float32_output(out, (*raw.shape[:-3], c + len(spec.derived), *raw.shape[-2:]),
                         "normalize")
    bands = out[..., :c, :, :]
    if spec.normalization == "tile":
        bands[...] = _normalize_tile(raw, spec, valid)
    else:
        per_band = (c, 1, 1)
        scales = np.asarray(spec.band_scales(), dtype=np.float32).reshape(per_band)
        mean = np.asarray(spec.mean, dtype=np.float32).reshape(per_band) * scales
        inv = 1.0 / (np.asarray(spec.std, dtype=np.float32).reshape(per_band) * scales)
        np.subtract(raw, mean, out=bands, dtype=np.float32)
        bands *= inv
    if spec.derived:
        from landslide_cli.baselines import derived_channels

        derived_channels(raw, spec, valid, out=out[..., c:, :, :])
    return out


def float32_output(out: np.ndarray | None, shape: tuple[int, ...], what: str) -> np.ndarray:
    """``out`` checked to be a float32 array of ``shape`` (else a one-line error naming
    ``what``), or a new empty one when ``out`` is None."""
    if out is None:
        return np.empty(shape, dtype=np.float32)
    if out.shape != shape or out.dtype != np.float32:
        raise LandslideError(f"{what}: out is {out.dtype} {out.shape}, expected float32 {shape}")
    return out


def _normalize_tile(raw: np.ndarray, spec: InputSpec, valid: np.ndarray | None) -> np.ndarray:
    x = raw.astype(np.float64) / np.asarray(spec.band_scales(), dtype=np.float64)[:, None, None]
    if valid is None:
        m = x.mean(axis=(-2, -1), keepdims=True)
        s = np.sqrt(((x - m) ** 2).mean(axis=(-2, -1), keepdims=True))
        return ((x - m) / np.maximum(s, TILE_STD_MIN)).astype(np.float32)
    w = np.asarray(valid, dtype=np.float64)[..., None, :, :]
    n = np.maximum(w.sum(axis=(-2, -1), keepdims=True), 1.0)
    m = (x * w).sum(axis=(-2, -1), keepdims=True) / n
    s = np.sqrt((((x - m) ** 2) * w).sum(axis=(-2, -1), keepdims=True) / n)
    return ((x - m) / np.maximum(s, TILE_STD_MIN) * w).astype(np.float32)


def _percent_key(pct: float) -> str:
    return f"{float(pct):g}"


def reference_percentiles(images: Any, *, percents: tuple[float, ...] = REFERENCE_PERCENTS,
                          max_pixels: int = 2_000_000, seed: int = 0
                          ) -> dict[str, list[float]]:
    """Per-band percentiles over an iterable of (C, H, W) raw arrays (training tiles).

    Pixels that are 0 in every band (the usual fill of padded tiles) are left out. Each
    image contributes the same number of randomly drawn pixels (so 1024² tiles do not drown
    128² patches), ``max_pixels`` in all; the result is keyed by percent as text.
    """
    arrays = list(images)
    if not arrays:
        raise LandslideError("reference percentiles: no images")
    rng = np.random.default_rng(seed)
    per = max(1, max_pixels // len(arrays))
    samples = []
    for a in arrays:
        flat = np.asarray(a).reshape(a.shape[0], -1)
        flat = flat[:, np.any(flat != 0, axis=0)]
        if flat.shape[1] == 0:
            continue
        k = min(per, flat.shape[1])
        idx = rng.choice(flat.shape[1], size=k, replace=False) if k < flat.shape[1] else None
        samples.append(flat if idx is None else flat[:, idx])
    if not samples:
        raise LandslideError("reference percentiles: every pixel is 0 (fill)")
    pix = np.concatenate(samples, axis=1).astype(np.float64)
    values = np.percentile(pix, percents, axis=1)  # (P, C)
    return {_percent_key(p): [round(float(v), 4) for v in row]
            for p, row in zip(percents, values, strict=True)}
