"""Ground sampling distance of a scene, the model-resolution check and on-the-fly resampling.

Ground sampling distance (GSD)
    The size of one pixel on the ground, in metres, along the raster's x (column) and y (row)
    axes at the scene centre:

    * projected CRS: the geotransform's column/row vectors (``hypot(a, d)``, ``hypot(b, e)``)
      times the CRS's linear unit (US survey feet, feet, ... -> metres);
    * geographic CRS: the same vectors in degrees, turned into metres on the CRS's ellipsoid at
      the scene centre's latitude (``N·cos φ`` per radian of longitude, ``M`` per radian of
      latitude, ``M``/``N`` the meridional / prime-vertical radii of curvature);
    * no CRS: unknown (``None``): nothing is checked.

    The single figure reported and compared with the model's ``InputSpec.resolution_m`` is the
    geometric mean ``sqrt(gsd_x · gsd_y)``; the range check allows 1 % of slack
    (:data:`RANGE_SLACK`) so that 3.0004 m counts as 3 m.

Resampling (``--resample-to``)
    Windows are laid out over the scene *in native pixels*, sized so that one window resampled
    to the target GSD fills (at most) one model tile: ``floor(T / f)`` native pixels per axis for
    ``f = gsd / target`` model pixels per native pixel (a 512 tile at 3 m covers 153 pixels of a
    10 m scene). Each window is read at native resolution, resampled to
    ``round(h·f_y) x round(w·f_x)`` model pixels (padded to the tile as usual), run through the
    model, and its probabilities are resampled back to the window's ``h x w`` native pixels
    before stitching, so blending, thresholds, polygons, footprints and the probability map all
    stay in the scene's own pixel grid. Both directions use the same separable kernel
    (:func:`axis_weights`: linear interpolation when enlarging, an area-weighted triangle
    filter when shrinking), which maps the window's extent exactly onto itself.
    Invalid (nodata) pixels are left out of the image resampling (normalized convolution:
    ``R(x·v) / R(v)``), and a model pixel is valid when at least half of its resampling weight
    lies on valid native pixels, so fill values never leak into valid pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from landslide_cli.errors import DataError, LandslideError

#: relative slack of the model-resolution check (3.0004 m is inside 0.2–3 m)
RANGE_SLACK = 0.01
#: relative difference below which a requested GSD equals the scene's (no resampling)
SAME_GSD = 1e-6
#: the fewest native pixels a resampled window may span (smaller: the factor is absurd)
MIN_NATIVE_WINDOW = 16
#: ``--resample-to`` words (besides a number of metres)
RESAMPLE_WORDS = ("auto", "none")

# WGS 84, the fallback when a geographic CRS's ellipsoid cannot be read
_WGS84_A = 6378137.0
_WGS84_INV_F = 298.257223563


# ---------------------------------------------------------------------------- GSD


@dataclass(frozen=True)
class GroundSampling:
    """A scene's pixel size on the ground in metres along its x (columns) and y (rows) axes."""

    x_m: float
    y_m: float

    @property
    def mean_m(self) -> float:
        """The single figure reported and checked: ``sqrt(x_m * y_m)``."""
        return math.sqrt(self.x_m * self.y_m)


def _ellipsoid(crs: Any) -> tuple[float, float]:
    """``(semi-major axis in m, first eccentricity squared)`` of a geographic CRS."""
    a, inv_f = _WGS84_A, _WGS84_INV_F
    try:
        from pyproj import CRS as ProjCRS

        ell = ProjCRS.from_user_input(crs.to_wkt()).ellipsoid
        if ell is not None and ell.semi_major_metre:
            a = float(ell.semi_major_metre)
            inv_f = float(ell.inverse_flattening or 0.0)
    except Exception:  # an unusual CRS: WGS 84 is within 0.1 % for any Earth ellipsoid
        pass
    f = 1.0 / inv_f if inv_f else 0.0
    return a, f * (2.0 - f)


def metres_per_degree(lat: float, crs: Any = None) -> tuple[float, float]:
    """``(metres per degree of longitude, metres per degree of latitude)`` at latitude ``lat``
    on the ellipsoid of ``crs`` (WGS 84 when ``None``)."""
    a, e2 = (_WGS84_A, (1 / _WGS84_INV_F) * (2 - 1 / _WGS84_INV_F)) if crs is None \
        else _ellipsoid(crs)
    phi = math.radians(max(-90.0, min(90.0, lat)))
    s2 = math.sin(phi) ** 2
    w = math.sqrt(1.0 - e2 * s2)
    n = a / w  # prime vertical radius of curvature
    m = a * (1.0 - e2) / w ** 3  # meridional radius of curvature
    rad = math.pi / 180.0
    return n * math.cos(phi) * rad, m * rad


def ground_sampling(crs: Any, transform: Any, width: int, height: int
                    ) -> GroundSampling | None:
    """The scene's GSD in metres (see the module docstring); ``None`` without a CRS."""
    if crs is None:
        return None
    t = transform
    if crs.is_geographic:
        lat = t.d * width / 2.0 + t.e * height / 2.0 + t.f
        kx, ky = metres_per_degree(lat, crs)
        return GroundSampling(math.hypot(t.a * kx, t.d * ky), math.hypot(t.b * kx, t.e * ky))
    try:
        unit = float(crs.linear_units_factor[1])
    except Exception:  # a projected CRS without a readable linear unit: metres
        unit = 1.0
    return GroundSampling(math.hypot(t.a, t.d) * unit, math.hypot(t.b, t.e) * unit)


def scene_ground_sampling(info: Any) -> GroundSampling | None:
    """:func:`ground_sampling` of a :class:`~landslide_cli.predict.raster.SceneInfo`."""
    return ground_sampling(info.crs, info.transform, info.width, info.height)


# ---------------------------------------------------------------------------- the check


def parse_resample_to(value: str | float | None) -> str | float | None:
    """``--resample-to`` as ``None`` (none), ``"auto"`` or a positive number of metres."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        metres = float(value)
    else:
        text = str(value).strip().lower().removesuffix("m").strip()
        if text in ("none", ""):
            return None
        if text == "auto":
            return "auto"
        try:
            metres = float(text)
        except ValueError:
            raise LandslideError(f"--resample-to {value!r}: use auto, none or a ground "
                                 "sampling distance in metres, e.g. 3") from None
    if not math.isfinite(metres) or metres <= 0:
        raise LandslideError(f"--resample-to {value!r}: must be a positive number of metres")
    return metres


def _fmt(metres: float) -> str:
    return f"{metres:.3g}"


def _range_text(resolution_m: list[float]) -> str:
    lo, hi = resolution_m
    return f"{_fmt(lo)} m" if lo == hi else f"{_fmt(lo)}–{_fmt(hi)} m"


def in_range(gsd_m: float, resolution_m: list[float] | None) -> bool:
    """Whether ``gsd_m`` is inside the model's ``[min, max]`` (with :data:`RANGE_SLACK`)."""
    if not resolution_m:
        return True
    lo, hi = sorted(float(v) for v in resolution_m)
    return lo * (1 - RANGE_SLACK) <= gsd_m <= hi * (1 + RANGE_SLACK)


def nearest_in_range(gsd_m: float, resolution_m: list[float]) -> float:
    """The end of the model's range nearest to ``gsd_m`` (``gsd_m`` itself when inside)."""
    lo, hi = sorted(float(v) for v in resolution_m)
    return min(max(gsd_m, lo), hi)


@dataclass(frozen=True)
class ResolutionCheck:
    """A scene's GSD against the model's ``resolution_m``, and what ``--resample-to`` makes
    of it: ``target_m`` is the GSD windows are resampled to (``None``: native)."""

    gsd: GroundSampling | None
    model_m: list[float] | None
    target_m: float | None
    warning: str | None

    @property
    def gsd_m(self) -> float | None:
        return None if self.gsd is None else self.gsd.mean_m

    @property
    def effective_m(self) -> float | None:
        """The GSD the model sees."""
        return self.target_m if self.target_m is not None else self.gsd_m

    def record(self) -> dict[str, Any]:
        """The fields of the ``runs`` table / ``--json`` scene summary."""
        return {
            "gsd_m": None if self.gsd_m is None else round(self.gsd_m, 4),
            "model_resolution_m": None if not self.model_m else _range_text(self.model_m),
            "resample_m": None if self.target_m is None else round(self.target_m, 4),
            "resolution_warning": self.warning or "",
        }


def check_resolution(label: str, gsd: GroundSampling | None, model_m: list[float] | None,
                     resample_to: str | float | None) -> ResolutionCheck:
    """Decide the resampling target of one scene and word its warning (``None``: fine).

    ``resample_to``: ``None`` (never resample), ``"auto"`` (the nearest end of the model's
    range when the scene is outside it) or metres (always, unless already at that GSD).
    """
    model_m = [float(v) for v in model_m] if model_m else None
    if gsd is None:
        if isinstance(resample_to, float):
            raise DataError(f"--resample-to {resample_to:g}: {label} has no CRS, so its ground "
                            "sampling distance is unknown; georeference it first")
        return ResolutionCheck(None, model_m, None, None)
    native = gsd.mean_m
    target: float | None = None
    if resample_to == "auto":
        if model_m and not in_range(native, model_m):
            target = nearest_in_range(native, model_m)
    elif isinstance(resample_to, float):
        same = all(abs(g - resample_to) <= SAME_GSD * resample_to for g in (gsd.x_m, gsd.y_m))
        target = None if same else resample_to
    effective = native if target is None else target
    warning = None
    if model_m and not in_range(effective, model_m):
        if target is None:
            warning = (f"{label}: ground sampling distance {_fmt(native)} m is outside the "
                       f"model's {_range_text(model_m)}; expect poorer results, or resample "
                       f"the windows to {_fmt(nearest_in_range(native, model_m))} m with "
                       "--resample-to auto")
        else:
            warning = (f"{label}: resampled from {_fmt(native)} m to {_fmt(target)} m, still "
                       f"outside the model's {_range_text(model_m)}")
    return ResolutionCheck(gsd, model_m, target, warning)


# ---------------------------------------------------------------------------- resampling


def axis_weights(n_in: int, n_out: int) -> np.ndarray:
    """The ``(n_out, n_in)`` float32 matrix resampling one axis of ``n_in`` pixels to
    ``n_out``, both spanning the same extent.

    Output pixel ``j`` is centred at ``c = (j + 0.5) · n_in / n_out`` in input pixel units; the
    input pixel ``i`` (centred at ``i + 0.5``) gets the triangle weight
    ``max(0, 1 - |i + 0.5 - c| / s)`` with ``s = max(1, n_in / n_out)`` (linear interpolation
    when enlarging, an area-weighted triangle when shrinking), normalized so each row sums to 1
    (beyond the ends, only the pixels that exist count).
    """
    if n_in < 1 or n_out < 1:
        raise LandslideError(f"cannot resample {n_in} pixels to {n_out}")
    scale = n_in / n_out
    support = max(1.0, scale)
    centres = (np.arange(n_out, dtype=np.float64) + 0.5) * scale
    pix = np.arange(n_in, dtype=np.float64) + 0.5
    w = np.maximum(0.0, 1.0 - np.abs(pix[None, :] - centres[:, None]) / support)
    w /= w.sum(axis=1, keepdims=True)
    return w.astype(np.float32)


def resize(a: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """``(..., h, w)`` -> ``(..., out_h, out_w)`` float32 with :func:`axis_weights`."""
    h, w = a.shape[-2:]
    x = np.asarray(a, dtype=np.float32)
    if w != out_w:
        x = x @ axis_weights(w, out_w).T
    if h != out_h:
        x = np.swapaxes(np.swapaxes(x, -1, -2) @ axis_weights(h, out_h).T, -1, -2)
    return np.ascontiguousarray(x)


@dataclass(frozen=True)
class WindowResampler:
    """Window sizes and the two resampling directions of one scene (see the module docstring).

    ``fx``/``fy``: model pixels per native pixel along x/y; ``tile``: the model tile.
    """

    fx: float
    fy: float
    tile: int

    @classmethod
    def for_scene(cls, gsd: GroundSampling, target_m: float, tile: int, *,
                  label: str = "scene") -> WindowResampler:
        rs = cls(gsd.x_m / target_m, gsd.y_m / target_m, int(tile))
        ty, tx = rs.native_tile
        if min(ty, tx) < MIN_NATIVE_WINDOW:
            raise DataError(
                f"--resample-to {target_m:g}: a {tile}-pixel model tile at {target_m:g} m "
                f"covers only {min(ty, tx)} pixels of {label} ({_fmt(gsd.mean_m)} m); choose "
                f"a coarser --resample-to (at least "
                f"{_fmt(max(gsd.x_m, gsd.y_m) * MIN_NATIVE_WINDOW / tile)} m)")
        return rs

    @property
    def native_tile(self) -> tuple[int, int]:
        """``(rows, cols)`` of the native window whose resampling fills at most one tile."""
        return (max(1, math.floor(self.tile / self.fy + 1e-9)),
                max(1, math.floor(self.tile / self.fx + 1e-9)))

    def model_shape(self, h: int, w: int) -> tuple[int, int]:
        """Model pixels of a native ``h x w`` window (at most the tile)."""
        return (min(self.tile, max(1, round(h * self.fy))),
                min(self.tile, max(1, round(w * self.fx))))

    def to_model(self, raw: np.ndarray, valid: np.ndarray | None
                 ) -> tuple[np.ndarray, np.ndarray | None]:
        """A native ``(C, h, w)`` window and its validity -> model pixels (float32)."""
        h, w = raw.shape[-2:]
        oh, ow = self.model_shape(h, w)
        if valid is None:
            return resize(raw, oh, ow), None
        v = valid.astype(np.float32)
        num = resize(np.where(valid[None], raw, 0).astype(np.float32), oh, ow)
        den = resize(v, oh, ow)
        out = num / np.maximum(den, 1e-12)[None]
        valid_m = den >= 0.5
        return out, None if valid_m.all() else valid_m

    def to_scene(self, prob: np.ndarray, h: int, w: int) -> np.ndarray:
        """The model's ``(>=oh, >=ow)`` probabilities of a native ``h x w`` window -> ``(h,
        w)`` native pixels."""
        oh, ow = self.model_shape(h, w)
        return resize(prob[:oh, :ow], h, w)
