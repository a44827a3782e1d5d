"""Radiometry and band identity: bring any scene into the input domain of a model.

``--rescale`` (:data:`RESCALE_MODES`) maps a scene's raw values, band by band and linearly, onto
the raw values the model was trained on, before :func:`~landslide_cli.preprocess.normalize`::

    y = clip((x - src_low) / (src_high - src_low) * (dst_high - dst_low) + dst_low, dtype range)

* ``auto`` (default): nothing when the scene's data type is in the model's family (8-bit scene,
  8-bit model); otherwise ``percentile:2,98``.
* ``percentile[:LOW,HIGH]``: ``src`` are the scene's LOW/HIGH percentiles (default 2, 98) of
  its valid pixels, ``dst`` the model's recorded training percentiles
  (:meth:`~landslide_cli.preprocess.InputSpec.percentile`, interpolated between the recorded
  percents); a model that records none gets :func:`default_targets`.
* ``range:MIN,MAX`` (all bands) or ``range:MIN,MAX/MIN,MAX/...`` (one pair per band):
  ``MIN..MAX`` onto the model's ``0..scale`` (``0..255`` for an 8-bit model, like
  ``gdal_translate -scale MIN MAX``). Every mapping has an equivalent ``range:`` value
  (:meth:`BandMapping.repeat`), recorded so a run can be repeated exactly.
* ``none``: values pass through unchanged (a scene of another data-type family is refused).

Scene statistics (:func:`scene_statistics`) come from the overviews when the scene has some,
else from the whole scene when it is small, else from a fixed grid of windows spread over it:
memory and reads are bounded by ``max_pixels``, never by the scene's size. Nodata, alpha bands,
internal masks and non-finite floats are left out.

Bands by name (:func:`resolve_bands`): ``--bands red,green,blue`` (or ``B04,B03,B02``, or mixed
with numbers) are matched against each band's colour interpretation and description.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np

from landslide_cli.errors import DataError, LandslideError
from landslide_cli.preprocess import InputSpec
from landslide_cli.registry import Registry

#: default percents of ``auto`` and ``percentile``
DEFAULT_PERCENTS = (2.0, 98.0)
#: at most this many pixels per band are read for a scene's statistics
DEFAULT_MAX_PIXELS = 1_000_000
#: largest side of the windows sampled from a scene without overviews; smaller budgets get
#: smaller windows, so that there are at least :data:`MIN_SAMPLE_WINDOWS` of them
SAMPLE_WINDOW = 64
MIN_SAMPLE_WINDOWS = 64
#: fewer valid sampled pixels than this: read the whole scene decimated instead
MIN_VALID_SAMPLE = 1000

# --------------------------------------------------------------------------- --rescale parsing


@dataclass(frozen=True)
class Rescale:
    """A parsed ``--rescale`` value.

    Attributes:
        mode: ``auto``, ``none``, ``percentile`` or ``range`` (:data:`RESCALE_MODES`).
        percents: scene percentiles used by ``auto``/``percentile``.
        ranges: ``range``'s ``(MIN, MAX)`` pairs: one for all bands, or one per band.
        text: the value as given (for messages and the run metadata).
    """

    mode: str = "auto"
    percents: tuple[float, float] = DEFAULT_PERCENTS
    ranges: tuple[tuple[float, float], ...] = ()
    text: str = "auto"

    def __str__(self) -> str:
        return self.text


RescaleParser = Callable[[str | None, str], Rescale]
#: ``--rescale`` modes: name -> parser of the text after ``NAME:`` (``None`` without a colon)
RESCALE_MODES: Registry[RescaleParser] = Registry("--rescale mode")


def _numbers(text: str, what: str, given: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or not all(math.isfinite(v) for v in values):
        raise LandslideError(f"--rescale {given!r}: {what}")
    return values


@RESCALE_MODES.register("auto", help="8-bit scene for an 8-bit model: unchanged; other data "
                                     "types: percentile:2,98")
def _parse_auto(arg: str | None, given: str) -> Rescale:
    if arg:
        raise LandslideError(f"--rescale {given!r}: auto takes no values")
    return Rescale("auto", text="auto")


@RESCALE_MODES.register("none", help="values pass through unchanged")
def _parse_none(arg: str | None, given: str) -> Rescale:
    if arg:
        raise LandslideError(f"--rescale {given!r}: none takes no values")
    return Rescale("none", text="none")


@RESCALE_MODES.register("percentile", aliases=("percentiles", "pct"),
                        help="scene LOW/HIGH percentiles onto the model's (default 2,98)")
def _parse_percentile(arg: str | None, given: str) -> Rescale:
    if not arg:
        return Rescale("percentile", text="percentile:2,98")
    values = _numbers(arg, "expected percentile:LOW,HIGH, e.g. percentile:2,98", given)
    if len(values) != 2 or not 0.0 <= values[0] < values[1] <= 100.0:
        raise LandslideError(f"--rescale {given!r}: expected percentile:LOW,HIGH with "
                             "0 <= LOW < HIGH <= 100, e.g. percentile:2,98")
    low, high = values
    return Rescale("percentile", (low, high), text=f"percentile:{low:g},{high:g}")


@RESCALE_MODES.register("range", help="MIN,MAX (or MIN,MAX/MIN,MAX/... per band) onto the "
                                      "model's 0..scale")
def _parse_range(arg: str | None, given: str) -> Rescale:
    usage = "expected range:MIN,MAX or one MIN,MAX per band (range:MIN,MAX/MIN,MAX/...)"
    if not arg:
        raise LandslideError(f"--rescale {given!r}: {usage}")
    pairs = []
    for part in arg.split("/"):
        values = _numbers(part, usage, given)
        if len(values) != 2:
            raise LandslideError(f"--rescale {given!r}: {usage}")
        if not values[1] > values[0]:
            raise LandslideError(f"--rescale {given!r}: MAX must be above MIN")
        pairs.append((values[0], values[1]))
    text = "range:" + "/".join(f"{lo:.10g},{hi:.10g}" for lo, hi in pairs)
    return Rescale("range", ranges=tuple(pairs), text=text)


def parse_rescale(value: str | Rescale | None) -> Rescale:
    """``"auto"``, ``"none"``, ``"percentile[:LOW,HIGH]"`` or ``"range:MIN,MAX[/MIN,MAX...]"``
    -> :class:`Rescale` (``None``: auto); a bad value is a one-line :class:`LandslideError`."""
    if value is None:
        return Rescale()
    if isinstance(value, Rescale):
        return value
    text = str(value).strip()
    name, colon, arg = text.partition(":")
    try:
        parser = RESCALE_MODES.get(name)
    except LandslideError:
        raise LandslideError(
            f"--rescale {text!r}: choose one of auto, none, percentile[:LOW,HIGH], "
            "range:MIN,MAX") from None
    return parser(arg.strip() if colon else None, text)


# --------------------------------------------------------------------------- data types


def dtype_family(dtype: str) -> str:
    """``8-bit``, ``16-bit``, ``32-bit integer``, ``64-bit integer`` or ``floating point``: a
    model trained on one family accepts scenes of any member of it without rescaling."""
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return "floating point"
    if dt.kind in "ui":
        return f"{dt.itemsize * 8}-bit" + (" integer" if dt.itemsize >= 4 else "")
    return dt.name


def dtype_range(dtype: str) -> tuple[float, float] | None:
    """The values a model's data type can hold (``None`` for floating point: no clipping)."""
    dt = np.dtype(dtype)
    if dt.kind in "ui":
        info = np.iinfo(dt)
        return float(info.min), float(info.max)
    return None


# --------------------------------------------------------------------------- the mapping


@dataclass
class BandMapping:
    """The per-band linear map a run applies, and where its numbers came from.

    ``src_low``/``src_high`` are in scene units, ``dst_low``/``dst_high`` in the model's raw
    units; ``None`` (the identity) passes values through. ``clip`` is the model data type's
    range.
    """

    mode: str  # what ran: "none" (identity), "percentile" or "range"
    requested: str = "auto"  # the --rescale value given
    src_low: list[float] | None = None
    src_high: list[float] | None = None
    dst_low: list[float] | None = None
    dst_high: list[float] | None = None
    clip: tuple[float, float] | None = None
    percents: tuple[float, float] | None = None
    target: str | None = None  # "model percentiles", "default (...)", "0..scale"
    stats: str | None = None  # "overviews", "full", "sample", "decimated", "per tile"
    pixels: int = 0  # valid pixels the statistics came from (per band)
    notes: list[str] = field(default_factory=list)

    @property
    def identity(self) -> bool:
        return self.src_low is None

    def coefficients(self) -> tuple[np.ndarray, np.ndarray]:
        """``(gain, offset)`` per band: ``y = x * gain + offset`` (before clipping)."""
        assert self.src_low is not None and self.src_high is not None
        assert self.dst_low is not None and self.dst_high is not None
        sl, sh = np.asarray(self.src_low, np.float64), np.asarray(self.src_high, np.float64)
        dl, dh = np.asarray(self.dst_low, np.float64), np.asarray(self.dst_high, np.float64)
        gain = (dh - dl) / np.maximum(sh - sl, 1e-12)
        return gain, dl - sl * gain

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """Map a ``(C, H, W)`` (or ``(N, C, H, W)``) array; the identity returns it as is.

        The result is float32 in the model's raw units (not rounded: the model normalizes
        floats as it does integers)."""
        if self.identity:
            return raw
        gain, offset = self.coefficients()
        shape = (-1, 1, 1)
        out = raw.astype(np.float32, copy=True)
        out *= gain.astype(np.float32).reshape(shape)
        out += offset.astype(np.float32).reshape(shape)
        if self.clip is not None:
            np.clip(out, self.clip[0], self.clip[1], out=out)
        return out

    def repeat(self, scale: float) -> str | None:
        """The ``--rescale range:...`` value giving this same mapping (for a model of
        ``scale``), or ``None`` for the identity."""
        if self.identity:
            return None
        gain, offset = self.coefficients()
        lows = (0.0 - offset) / gain
        highs = (float(scale) - offset) / gain
        return "range:" + "/".join(f"{lo:.8g},{hi:.8g}" for lo, hi in zip(lows, highs,
                                                                          strict=True))

    def to_dict(self, scale: float | None = None) -> dict[str, Any]:
        """JSON-friendly record for ``--json`` and the ``runs`` table."""
        def r(values: list[float] | None) -> list[float] | None:
            return None if values is None else [round(float(v), 4) for v in values]

        out: dict[str, Any] = {
            "requested": self.requested, "mode": self.mode,
            "percents": list(self.percents) if self.percents else None,
            "src_low": r(self.src_low), "src_high": r(self.src_high),
            "dst_low": r(self.dst_low), "dst_high": r(self.dst_high),
            "clip": list(self.clip) if self.clip else None,
            "target": self.target, "stats": self.stats, "pixels": int(self.pixels),
        }
        if scale is not None:
            out["repeat"] = self.repeat(scale)
        if self.notes:
            out["notes"] = list(self.notes)
        return out

    def columns(self, scale: float) -> dict[str, Any]:
        """The ``runs`` table columns (text; per-band values comma-separated)."""
        def j(values: list[float] | None) -> str:
            return "" if values is None else ",".join(f"{v:.6g}" for v in values)

        return {  # text, "" where not applicable (an all-NULL column has no type)
            "rescale": self.requested, "rescale_mode": self.mode,
            "rescale_stats": self.stats or "", "rescale_src_low": j(self.src_low),
            "rescale_src_high": j(self.src_high), "rescale_dst_low": j(self.dst_low),
            "rescale_dst_high": j(self.dst_high), "rescale_repeat": self.repeat(scale) or "",
        }


def identity_mapping(requested: str = "auto") -> BandMapping:
    return BandMapping(mode="none", requested=requested)


def needs_statistics(rescale: Rescale, spec: InputSpec, dtypes: Sequence[str]) -> bool:
    """Whether ``rescale`` needs the scene's percentiles (``auto`` on another data-type
    family, or ``percentile``)."""
    if rescale.mode == "percentile":
        return True
    if rescale.mode == "auto":
        want = dtype_family(spec.dtype)
        return any(dtype_family(d) != want for d in dtypes)
    return False


def default_targets(spec: InputSpec, percents: Sequence[float]) -> tuple[list[float], list[float]]:
    """Targets for a model that records no training percentiles (e.g. ``v1``).

    The scene's LOW/HIGH percentiles go where the model's own normalization puts the same
    percentiles of a standard normal distribution: ``(mean + z * std) * scale`` with
    ``z = Φ⁻¹(percent / 100)`` (±2.054 for 2/98), clipped to the model data type's range.
    For an 8-bit ImageNet-normalized RGB model that is about 4..244 (red), 0..234 (green),
    0..221 (blue).
    """
    return (_normal_targets(spec, percents[0]), _normal_targets(spec, percents[1]))


def _normal_targets(spec: InputSpec, pct: float) -> list[float]:
    z = NormalDist().inv_cdf(min(max(pct, 0.01), 99.99) / 100.0)
    lim = dtype_range(spec.dtype)
    out = []
    for m, s in zip(spec.mean, spec.std, strict=True):
        v = (m + z * s) * spec.scale
        if lim is not None:
            v = min(max(v, lim[0]), lim[1])
        out.append(float(v))
    return out


def model_targets(spec: InputSpec, percents: Sequence[float]
                  ) -> tuple[list[float], list[float], str]:
    """``(dst_low, dst_high, where)``: the model's recorded percentiles for ``percents``
    (interpolated linearly between recorded percents), else :func:`default_targets`."""
    recorded = spec.percentiles or {}
    keys = sorted(float(k) for k in recorded)
    if keys and all(keys[0] <= p <= keys[-1] for p in percents):
        table = np.asarray([spec.percentile(k) for k in keys], dtype=np.float64)  # (P, C)
        lows = [float(np.interp(percents[0], keys, table[:, c])) for c in range(table.shape[1])]
        highs = [float(np.interp(percents[1], keys, table[:, c]))
                 for c in range(table.shape[1])]
        return lows, highs, "model percentiles"
    lows, highs = default_targets(spec, percents)
    return lows, highs, "default (normal quantiles of the model's mean/std)"


def plan_mapping(rescale: Rescale, spec: InputSpec, dtypes: Sequence[str],
                 stats: Callable[[tuple[float, float]], tuple[np.ndarray, str, int]] | None,
                 *, where: str = "scene") -> BandMapping:
    """The :class:`BandMapping` for data of ``dtypes`` (the chosen bands) and a model with
    ``spec``.

    ``stats(percents)`` returns ``(values (2, C) in scene units, source, pixels)``; it is only
    called when the mode needs statistics. ``none`` on another data-type family is refused
    with a one-line :class:`DataError` naming ``--rescale``.
    """
    n = spec.num_bands
    if rescale.mode == "none" or (rescale.mode == "auto"
                                  and not needs_statistics(rescale, spec, dtypes)):
        if rescale.mode == "none":
            _refuse_other_family(spec, dtypes, where)
        return identity_mapping(rescale.text)
    clip = dtype_range(spec.dtype)
    if rescale.mode == "range":
        pairs = list(rescale.ranges)
        if len(pairs) == 1:
            pairs = pairs * n
        if len(pairs) != n:
            raise LandslideError(f"--rescale {rescale.text}: {len(pairs)} MIN,MAX pairs for a "
                                 f"model of {n} bands (give one pair, or one per band)")
        return BandMapping(
            mode="range", requested=rescale.text, src_low=[p[0] for p in pairs],
            src_high=[p[1] for p in pairs], dst_low=[0.0] * n,
            dst_high=[float(spec.scale)] * n, clip=clip, target=f"0..{spec.scale:g}",
            stats="given")
    assert stats is not None
    values, source, pixels = stats(rescale.percents)
    lows, highs = [float(v) for v in values[0]], [float(v) for v in values[1]]
    notes = []
    for c in range(n):
        if not highs[c] > lows[c]:
            notes.append(f"band {c + 1} is flat at {lows[c]:g} in the {source} statistics")
            highs[c] = lows[c] + 1.0
    dst_low, dst_high, target = model_targets(spec, rescale.percents)
    return BandMapping(mode="percentile", requested=rescale.text, src_low=lows, src_high=highs,
                       dst_low=dst_low, dst_high=dst_high, clip=clip,
                       percents=rescale.percents, target=target, stats=source, pixels=pixels,
                       notes=notes)


def _refuse_other_family(spec: InputSpec, dtypes: Sequence[str], where: str) -> None:
    want = dtype_family(spec.dtype)
    for i, have in enumerate(dtypes, 1):
        if dtype_family(have) != want:
            raise DataError(
                f"{where}: band {i} is {have} but the model expects {spec.dtype} data and "
                f"--rescale none passes values unchanged; use --rescale auto (or "
                f"percentile:2,98, range:MIN,MAX)")


# --------------------------------------------------------------------------- array statistics


def array_percentiles(values: np.ndarray, percents: Sequence[float]) -> np.ndarray:
    """``(P, C)`` percentiles of ``(C, N)`` valid values (numpy's linear interpolation)."""
    return np.percentile(values.astype(np.float64, copy=False), list(percents), axis=1)


def tile_statistics(image: np.ndarray, percents: Sequence[float]
                    ) -> tuple[np.ndarray, str, int]:
    """Statistics of one ``(C, H, W)`` tile (``eval``): pixels that are 0 in every band (the
    usual fill) and non-finite pixels are left out; a tile with no other pixel uses all."""
    flat = image.reshape(image.shape[0], -1)
    keep = np.any(flat != 0, axis=0)
    if flat.dtype.kind == "f":
        keep &= np.isfinite(flat).all(axis=0)
    if not keep.any():
        keep = np.isfinite(flat).all(axis=0) if flat.dtype.kind == "f" else np.ones(
            flat.shape[1], bool)
    if not keep.any():
        return np.zeros((len(percents), flat.shape[0])), "per tile", 0
    vals = flat[:, keep]
    return array_percentiles(vals, percents), "per tile", int(vals.shape[1])


class TileRescaler:
    """``eval``'s conversion: each tile mapped with its own statistics (``range``: fixed).

    :attr:`summary` describes what was done, for the report."""

    def __init__(self, rescale: Rescale | str | None, spec: InputSpec) -> None:
        self.rescale = parse_rescale(rescale)
        self.spec = spec
        self.tiles = 0
        self.mapped = 0
        self._fixed: BandMapping | None = None
        if self.rescale.mode == "range":
            self._fixed = plan_mapping(self.rescale, spec, [spec.dtype] * spec.num_bands, None)

    def __call__(self, image: np.ndarray, source: str = "tile") -> np.ndarray:
        self.tiles += 1
        dtypes = [image.dtype.name] * image.shape[0]
        if self._fixed is not None:
            mapping = self._fixed
        else:
            mapping = plan_mapping(self.rescale, self.spec, dtypes,
                                   lambda p: tile_statistics(image, p), where=source)
        if mapping.identity:
            return image
        self.mapped += 1
        return mapping.apply(image)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"requested": self.rescale.text, "tiles": self.tiles,
                               "tiles_mapped": self.mapped}
        if self._fixed is not None:
            out.update(self._fixed.to_dict(self.spec.scale))
        elif self.rescale.mode != "none":
            pct = self.rescale.percents
            lows, highs, target = model_targets(self.spec, pct)
            out.update({"mode": "percentile per tile" if self.mapped else "none",
                        "percents": list(pct), "dst_low": [round(v, 4) for v in lows],
                        "dst_high": [round(v, 4) for v in highs], "target": target})
        else:
            out["mode"] = "none"
        return out


# --------------------------------------------------------------------------- scene statistics


def band_validity(ds: Any, raw: np.ndarray, indexes: Sequence[int], *, window: Any = None,
                  out_shape: tuple[int, int] | None = None, nodata: float | None = None,
                  use_mask: bool = True) -> np.ndarray | None:
    """``(h, w)`` bool: pixels valid in every chosen band (``None``: all valid).

    GDAL's masks (nodata, alpha band, internal/external mask); with ``nodata`` (``--nodata``)
    the scene's own nodata value is replaced by it (``raw == nodata`` in any band is invalid),
    while alpha bands and masks still apply. Non-finite floats are invalid.
    """
    from rasterio.enums import MaskFlags

    idx = list(indexes)
    valid: np.ndarray | None = None
    if use_mask or nodata is not None:
        flags = [ds.mask_flag_enums[i - 1] for i in idx]
        masked = [i for i, f in zip(idx, flags, strict=True) if MaskFlags.all_valid not in f
                  and (nodata is None or MaskFlags.nodata not in f)]
        if masked:
            kw: dict[str, Any] = {"window": window}
            if out_shape is not None:
                kw["out_shape"] = (len(masked), *out_shape)
            masks = ds.read_masks(masked, **kw)
            valid = np.logical_and.reduce(masks != 0, axis=0)
    if nodata is not None:
        hit = np.isnan(raw) if (isinstance(nodata, float) and math.isnan(nodata)) else (
            raw == nodata)
        ok = ~np.any(hit, axis=0)
        valid = ok if valid is None else valid & ok
    if raw.dtype.kind == "f":
        finite = np.isfinite(raw).all(axis=0)
        valid = finite if valid is None else valid & finite
    if valid is not None and valid.all():
        return None
    return valid


def check_nodata(nodata: float | None, dtypes: Sequence[str]) -> None:
    """Refuse a ``--nodata`` value the scene's data type cannot hold (it would match nothing)."""
    if nodata is None:
        return
    for dt in dtypes:
        lim = dtype_range(dt)
        if lim is not None and (math.isnan(nodata) or not lim[0] <= nodata <= lim[1]
                                or nodata != int(nodata)):
            raise DataError(f"--nodata {nodata:g}: not a value of the scene's {dt} data")


def sample_windows(width: int, height: int, max_pixels: int,
                   block: tuple[int, int] | None = None,
                   size: int = SAMPLE_WINDOW) -> list[tuple[int, int, int, int]]:
    """``(y0, x0, h, w)`` windows of ``size``, one at the centre of each cell of a regular grid
    over the scene (a stratified sample), at most ``max_pixels`` in all; aligned to the file's
    blocks (``(height, width)``) when they are no larger than a window."""
    s = min(size, max(16, math.isqrt(max(1, max_pixels // MIN_SAMPLE_WINDOWS))), width, height)
    n = max(1, max_pixels // (s * s))
    gx = max(1, min(width // s, round(math.sqrt(n * width / height))))
    gy = max(1, min(height // s, n // gx))
    bh, bw = block or (1, 1)

    def offsets(length: int, count: int, b: int) -> list[int]:
        out = []
        for k in range(count):
            o = round((k + 0.5) * length / count - s / 2)
            if 1 < b <= s:  # (larger blocks would merge neighbouring cells)
                o = round(o / b) * b
            out.append(min(max(o, 0), length - s))
        return sorted(set(out))

    return [(y, x, s, s) for y in offsets(height, gy, bh) for x in offsets(width, gx, bw)]


@dataclass
class SceneStatistics:
    """Percentiles of a scene's valid pixels and how they were obtained."""

    values: np.ndarray  # (P, C) in scene units
    source: str  # overviews | full | sample | decimated
    pixels: int  # valid pixels (per band) they came from
    windows: int  # reads made


def scene_statistics(path: Any, indexes: Sequence[int], percents: Sequence[float], *,
                     nodata: float | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                     name: str | None = None) -> SceneStatistics:
    """Percentiles of the valid pixels of bands ``indexes`` of the raster at ``path``.

    From the finest overview of at most ``max_pixels`` when there is one; else the whole scene
    (read in strips) when it has at most ``max_pixels``; else a grid of
    :data:`SAMPLE_WINDOW`-pixel windows spread over the scene (:func:`sample_windows`),
    ``max_pixels`` in all (if those hold fewer than :data:`MIN_VALID_SAMPLE` valid pixels, one
    decimated read of the whole scene at ``max_pixels``). Never more than about ``max_pixels``
    values per band in memory.
    """
    import warnings

    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioError
    from rasterio.windows import Window

    idx = list(indexes)
    label = name or str(path)
    chunks: list[np.ndarray] = []
    count = 0

    def take(raw: np.ndarray, valid: np.ndarray | None) -> int:
        flat = raw.reshape(raw.shape[0], -1)
        if valid is not None:
            flat = flat[:, valid.reshape(-1)]
        if flat.shape[1]:
            chunks.append(flat.astype(np.float64))
        return int(flat.shape[1])

    try:
        with warnings.catch_warnings(), rasterio.Env(GDAL_CACHEMAX=64 * 1024 * 1024):
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(os.fspath(path) if isinstance(path, os.PathLike)
                               else path) as ds:
                width, height = ds.width, ds.height
                has_masks = any("all_valid" not in [f.name for f in ds.mask_flag_enums[i - 1]]
                                for i in idx)

                def decimated(h: int, w: int) -> int:
                    raw = ds.read(idx, out_shape=(len(idx), h, w))
                    return take(raw, band_validity(ds, raw, idx, out_shape=(h, w),
                                                   nodata=nodata, use_mask=has_masks))

                factors = ds.overviews(idx[0])
                fits = [f for f in factors
                        if math.ceil(width / f) * math.ceil(height / f) <= max_pixels]
                if fits:
                    f = min(fits)
                    pixels = decimated(math.ceil(height / f), math.ceil(width / f))
                    source, count = "overviews", 1
                elif width * height <= max_pixels:
                    pixels, strip = 0, max(1, min(height, max(256, 65536 // width)))
                    for y0 in range(0, height, strip):
                        win = Window(0, y0, width, min(strip, height - y0))
                        raw = ds.read(idx, window=win)
                        pixels += take(raw, band_validity(ds, raw, idx, window=win,
                                                          nodata=nodata, use_mask=has_masks))
                        count += 1
                    source = "full"
                else:
                    block = ds.block_shapes[idx[0] - 1]
                    pixels = 0
                    for y0, x0, h, w in sample_windows(width, height, max_pixels, block):
                        win = Window(x0, y0, w, h)
                        raw = ds.read(idx, window=win)
                        pixels += take(raw, band_validity(ds, raw, idx, window=win,
                                                          nodata=nodata, use_mask=has_masks))
                        count += 1
                    source = "sample"
                    if pixels < MIN_VALID_SAMPLE:
                        chunks.clear()
                        k = math.sqrt(width * height / max_pixels)
                        pixels = decimated(max(1, int(height / k)), max(1, int(width / k)))
                        source, count = "decimated", count + 1
    except RasterioError as exc:
        text = (str(exc).strip().splitlines() or ["unreadable"])[0][:200]
        raise DataError(f"{label}: cannot read pixels for the --rescale statistics "
                        f"({text})") from None
    if not pixels:
        raise DataError(f"{label}: no valid pixels for the --rescale statistics (every pixel "
                        "read is nodata or masked); give --rescale range:MIN,MAX")
    values = array_percentiles(np.concatenate(chunks, axis=1), percents)
    return SceneStatistics(values=values, source=source, pixels=pixels, windows=count)


def scene_mapping(rescale: Rescale | str | None, spec: InputSpec, path: Any,
                  indexes: Sequence[int], dtypes: Sequence[str], *,
                  nodata: float | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                  name: str | None = None) -> BandMapping:
    """The :class:`BandMapping` of one scene (``dtypes``: those of the chosen bands)."""
    resc = parse_rescale(rescale)

    def stats(percents: tuple[float, float]) -> tuple[np.ndarray, str, int]:
        s = scene_statistics(path, indexes, percents, nodata=nodata, max_pixels=max_pixels,
                             name=name)
        return s.values, s.source, s.pixels

    return plan_mapping(resc, spec, dtypes, stats, where=name or str(path))


# --------------------------------------------------------------------------- bands by name

#: colour names a band can be asked for, with the words that name them
BAND_ALIASES: dict[str, tuple[str, ...]] = {
    "red": ("red", "r"),
    "green": ("green", "g"),
    "blue": ("blue", "b"),
    "nir": ("nir", "nearinfrared", "near_infrared", "infrared"),
    "alpha": ("alpha",),
    "coastal": ("coastal", "aerosol"),
    "rededge": ("rededge", "red_edge"),
    "swir1": ("swir1",),
    "swir2": ("swir2",),
    "pan": ("pan", "panchromatic"),
}
#: sensor band codes that name the same colour in Sentinel-2 and Landsat 8/9 (B2 blue, B3
#: green, B4 red); B8/B08/B8A are Sentinel-2's near infrared
BAND_CODES = {"b2": "blue", "b3": "green", "b4": "red", "b8": "nir", "b8a": "nir"}
_WORD = re.compile(r"[a-z0-9]+")


def _canon_word(word: str) -> str:
    """``B04`` -> ``b4`` (sensor codes without leading zeros), other words unchanged."""
    m = re.fullmatch(r"b0*(\d+a?)", word)
    return f"b{m.group(1)}" if m else word


def _colour_of(word: str) -> str | None:
    for name, words in BAND_ALIASES.items():
        if word in words:
            return name
    return BAND_CODES.get(word)


def band_names(description: str | None, colorinterp: str | None) -> set[str]:
    """Names a band answers to: its colour interpretation (red/green/blue/alpha...), the
    colour its description names ("B04 red", "Red", "near infrared"), its sensor code ("b4"
    for "B04") and the whole description."""
    names: set[str] = set()
    ci = (colorinterp or "").lower()
    if ci in ("red", "green", "blue", "alpha"):
        names.add(ci)
    desc = (description or "").strip().lower()
    if desc:
        names.add(re.sub(r"\s+", " ", desc))
        words = [_canon_word(w) for w in _WORD.findall(desc)]
        names.update(w for w in words if re.fullmatch(r"b\d+a?", w))
        k = 0
        while k < len(words):  # two-word names first: "red edge", "near infrared"
            pair = _colour_of(words[k] + words[k + 1]) if k + 1 < len(words) else None
            colour = pair or _colour_of(words[k])
            if colour:
                names.add(colour)
            k += 2 if pair else 1
    return names


def _token_key(token: str) -> str:
    t = re.sub(r"\s+", " ", token.strip().lower())
    word = _canon_word(t)
    return _colour_of(word) or word


def describe_bands(descriptions: Sequence[str | None], colorinterp: Sequence[str]) -> str:
    """``1: B04 red/gray, 2: B03 green/undefined`` (index: description/colour interp.)."""
    parts = []
    for i in range(max(len(descriptions), len(colorinterp))):
        desc = descriptions[i] if i < len(descriptions) and descriptions[i] else "-"
        ci = colorinterp[i] if i < len(colorinterp) else "-"
        parts.append(f"{i + 1}: {desc}/{ci}")
    return ", ".join(parts)


def find_band(token: str, descriptions: Sequence[str | None], colorinterp: Sequence[str]
              ) -> list[int]:
    """1-based bands answering to the name ``token``."""
    key = _token_key(token)
    raw = re.sub(r"\s+", " ", token.strip().lower())
    count = max(len(descriptions), len(colorinterp))
    out = []
    for i in range(count):
        names = band_names(descriptions[i] if i < len(descriptions) else None,
                           colorinterp[i] if i < len(colorinterp) else None)
        if key in names or raw in names:
            out.append(i + 1)
    return out


def resolve_bands(tokens: Sequence[int | str], descriptions: Sequence[str | None],
                  colorinterp: Sequence[str], *, scene: str = "scene") -> list[int]:
    """``--bands`` tokens (numbers or names) -> 1-based band indices.

    A name must pick exactly one band; an unknown or ambiguous name is a one-line
    :class:`DataError` listing the scene's bands."""
    out = []
    for tok in tokens:
        if isinstance(tok, int):
            out.append(tok)
            continue
        hits = find_band(tok, descriptions, colorinterp)
        listing = describe_bands(descriptions, colorinterp)
        if not hits:
            raise DataError(f"--bands {tok}: {scene} has no band of that name; its bands "
                            f"(index: description/colour): {listing}")
        if len(hits) > 1:
            # several bands answer: prefer the one whose colour interpretation says so
            by_ci = [h for h in hits if h <= len(colorinterp)
                     and colorinterp[h - 1].lower() == _token_key(tok)]
            if len(by_ci) != 1:
                raise DataError(
                    f"--bands {tok}: several bands of {scene} answer to it "
                    f"({', '.join(map(str, hits))}); give numbers. Its bands: {listing}")
            hits = by_ci
        out.append(hits[0])
    return out


def bands_by_name(wanted: Sequence[str], descriptions: Sequence[str | None],
                  colorinterp: Sequence[str]) -> list[int] | None:
    """The bands named ``wanted`` (a model's ``InputSpec.bands``) when each name picks
    exactly one distinct band, else ``None``."""
    out = []
    for name in wanted:
        hits = find_band(name, descriptions, colorinterp)
        if len(hits) != 1:
            return None
        out.append(hits[0])
    return out if len(set(out)) == len(out) else None


def parse_band_tokens(bands: str | Sequence[int | str] | None) -> list[int | str] | None:
    """``"1,2,3"``, ``"red,green,blue"``, ``"B04,3,2"`` or a list -> numbers (1-based) and
    names; ``None`` stays ``None``. A bad value is a one-line :class:`LandslideError`."""
    if bands is None:
        return None
    items = bands.split(",") if isinstance(bands, str) else list(bands)
    out: list[int | str] = []
    for item in items:
        if isinstance(item, (int, np.integer)) and not isinstance(item, bool):
            out.append(int(item))
            continue
        text = str(item).strip()
        if not text:
            continue
        if re.fullmatch(r"[+-]?\d+", text):
            out.append(int(text))
        elif re.fullmatch(r"[A-Za-z][\w .-]*", text):
            out.append(text)
        else:
            out = []
            break
    if not out or any(isinstance(b, int) and b < 1 for b in out):
        raise LandslideError(f"--bands {bands!r}: expected 1-based band numbers or band "
                             "names, like 1,2,3 or red,green,blue")
    return out
