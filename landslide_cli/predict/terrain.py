"""``predict --dem``: the terrain bands of a model (:mod:`landslide_cli.terrain`) from a DEM.

When a model's InputSpec has terrain bands (``dem``: elevation in metres, ``slope``: degrees),
``predict`` reads its other bands from the scene and makes the terrain bands from the
``--dem`` raster, window by window, on the scene's own pixel grid:

1. The DEM (band 1, elevations in metres, any CRS GDAL knows: projected or geographic) is
   warped onto the scene's grid grown by one pixel on every side (a GDAL ``WarpedVRT``,
   bilinear, exact transformation: no approximation that could differ between windows; DEM
   nodata and pixels outside the DEM become NaN).
2. Each window is read from it with a 1-pixel halo, so the slope of a window's edge pixels uses
   the true neighbours of the next window: window by window gives exactly the slope of the
   whole scene (seamless). Halo pixels outside the scene that the DEM does not cover repeat the
   scene's edge pixel.
3. Slope is computed with Horn's method (:func:`landslide_cli.terrain.horn_slope`) using the
   scene's pixel size in metres (:func:`~landslide_cli.predict.resample.ground_sampling`), so
   a DEM in degrees of latitude/longitude gives slopes in degrees over metres like any other.
4. The terrain bands are inserted among the scene's bands at the model's positions; pixels
   whose elevation (or slope neighbourhood) is nodata are invalid, like nodata pixels of the
   scene.

With ``--resample-to``, the terrain bands are made at the scene's native resolution and then
resampled with the scene's bands. Every problem is found before anything is written: a model
with terrain bands and no ``--dem``, ``--dem`` for a model without one, a DEM or a scene
without CRS, a DEM that does not cover a scene (one-line errors).
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from landslide_cli.errors import DataError, LandslideError
from landslide_cli.terrain import (
    TERRAIN_BANDS,
    describe_terrain,
    horn_slope,
    terrain_positions,
)

#: share of a scene the DEM may leave uncovered (its outer half pixel, rounding)
COVER_SLACK = 1e-6
#: largest error (in DEM pixels) of GDAL's approximate transformer while warping the DEM (rasterio
#: refuses 0, the exact transformer; this is as good)
WARP_TOLERANCE = 1e-6
#: points per side of the DEM outline transformed into a scene's CRS for the coverage check
OUTLINE_POINTS = 64


@dataclass(frozen=True)
class DemInfo:
    """A ``--dem`` raster's header."""

    path: str
    crs: Any
    transform: Any
    width: int
    height: int
    nodata: float | None

    @property
    def name(self) -> str:
        return Path(self.path).name


def open_dem(path: str | os.PathLike[str]) -> DemInfo:
    """Read the header of the ``--dem`` raster; a missing file, an unreadable raster or a DEM
    without CRS is a one-line :class:`DataError`."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioError

    from landslide_cli.safety import first_line

    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"--dem {p}: file not found")
    if not p.is_file():
        raise DataError(f"--dem {p}: not a file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(p) as ds:
                info = DemInfo(str(p), ds.crs, ds.transform, ds.width, ds.height, ds.nodata)
                count = ds.count
    except RasterioError as exc:
        raise DataError(f"--dem {p}: not a raster GDAL can read ({first_line(exc)})") from None
    if count < 1 or info.width == 0 or info.height == 0:
        raise DataError(f"--dem {p}: raster has no pixels")
    if info.crs is None:
        raise DataError(f"--dem {p} has no CRS, so it cannot be placed on the scene's pixels; "
                        "georeference it first (e.g. gdal_edit.py -a_srs EPSG:...)")
    return info


def check_terrain_request(spec: Any, dem: Any) -> None:
    """Refuse a model with terrain bands without ``--dem`` and ``--dem`` for a model without
    one (the DEM would be ignored)."""
    if terrain_positions(spec):
        if dem is None:
            raise LandslideError(
                f"the model expects terrain band(s) {describe_terrain(spec)} besides the "
                "scene's bands; give the elevation model with --dem PATH")
    elif dem is not None:
        raise LandslideError(
            f"--dem {dem}: the model has no terrain band (its bands: {', '.join(spec.bands)}); "
            "leave --dem out")


def coverage(dem: DemInfo, crs: Any, transform: Any, width: int, height: int) -> float:
    """The share of a scene's area (pixel centres' extent, in its CRS) that ``dem`` covers."""
    import shapely
    from rasterio.warp import transform as warp_points

    t = dem.transform
    n = OUTLINE_POINTS
    side = np.linspace(0.0, 1.0, n, endpoint=False)
    cols = np.concatenate([side * dem.width, np.full(n, dem.width), (1 - side) * dem.width,
                           np.zeros(n)])
    rows = np.concatenate([np.zeros(n), side * dem.height, np.full(n, dem.height),
                           (1 - side) * dem.height])
    xs = t.c + cols * t.a + rows * t.b
    ys = t.f + cols * t.d + rows * t.e
    try:
        sx, sy = warp_points(dem.crs, crs, xs.tolist(), ys.tolist())
    except Exception:  # a CRS pair PROJ cannot transform between: nothing is covered
        return 0.0
    outline = shapely.Polygon(np.column_stack([sx, sy]))
    if not outline.is_valid:
        outline = shapely.make_valid(outline)
    s = transform
    centres = [(0.5, 0.5), (width - 0.5, 0.5), (width - 0.5, height - 0.5), (0.5, height - 0.5)]
    if width == 1 or height == 1:  # a degenerate box: the whole pixel
        centres = [(0, 0), (width, 0), (width, height), (0, height)]
    scene = shapely.Polygon([(s.c + c * s.a + r * s.b, s.f + c * s.d + r * s.e)
                             for c, r in centres])
    if scene.area <= 0:
        return 1.0 if outline.covers(scene) else 0.0
    return float(outline.intersection(scene).area / scene.area)


@dataclass(frozen=True)
class TerrainSource:
    """The terrain bands of one scene: what each window reader opens (plain, picklable data).

    ``positions``: ``(index in the model's bands, kind)`` of the terrain bands; ``bands``: the
    model's band count; ``dx``/``dy``: the scene's pixel size in metres.
    """

    dem: DemInfo
    positions: tuple[tuple[int, str], ...]
    bands: int
    crs: Any
    transform: Any
    width: int
    height: int
    dx: float
    dy: float
    label: str = "scene"

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(k for _, k in self.positions)

    def open(self) -> TerrainReader:
        return TerrainReader(self)

    def record(self) -> dict[str, Any]:
        """The ``dem`` fields of the run's summary and ``runs`` table."""
        return {"dem": self.dem.path, "terrain_bands": ",".join(self.kinds)}


def check_dem_covers(dem: DemInfo, info: Any, label: str) -> None:
    """Refuse (one line) a scene ``info`` (a :class:`~landslide_cli.predict.raster.SceneInfo`)
    without CRS, or one that ``dem`` does not cover."""
    if info.crs is None:
        raise DataError(f"--dem: {label} has no CRS, so the DEM cannot be placed on its pixels")
    share = coverage(dem, info.crs, info.transform, info.width, info.height)
    if share < 1.0 - COVER_SLACK:
        raise DataError(f"--dem {dem.name} does not cover {label} (it covers "
                        f"{100.0 * share:.3g} % of it); give a DEM that covers the whole scene")


def plan_terrain(spec: Any, dem: DemInfo, info: Any, label: str) -> TerrainSource:
    """The :class:`TerrainSource` of scene ``info`` for a model with ``spec``, or a one-line
    error (:func:`check_dem_covers`)."""
    from landslide_cli.predict.resample import scene_ground_sampling

    check_dem_covers(dem, info, label)
    gsd = scene_ground_sampling(info)
    assert gsd is not None  # a scene with a CRS
    return TerrainSource(dem=dem, positions=tuple(terrain_positions(spec)),
                         bands=len(spec.bands), crs=info.crs, transform=info.transform,
                         width=info.width, height=info.height, dx=gsd.x_m, dy=gsd.y_m,
                         label=label)


class TerrainReader:
    """The DEM warped onto one scene's grid (grown by a 1-pixel halo); :meth:`read` gives a
    window's terrain bands. Open it in the thread that reads (GDAL handles are not
    thread-safe)."""

    def __init__(self, source: TerrainSource) -> None:
        self.source = source
        self._ds: Any = None
        self._vrt: Any = None

    def __enter__(self) -> TerrainReader:
        import rasterio
        from affine import Affine
        from rasterio.enums import Resampling
        from rasterio.errors import RasterioError
        from rasterio.vrt import WarpedVRT

        from landslide_cli.safety import first_line

        s = self.source
        try:
            self._ds = rasterio.open(s.dem.path)
            self._vrt = WarpedVRT(
                self._ds, crs=s.crs, transform=s.transform @ Affine.translation(-1, -1),
                width=s.width + 2, height=s.height + 2, resampling=Resampling.bilinear,
                tolerance=WARP_TOLERANCE, nodata=float("nan"), dtype="float32")
        except RasterioError as exc:
            self.close()
            raise DataError(f"--dem {s.dem.path}: cannot warp it onto {s.label} "
                            f"({first_line(exc)})") from None
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for handle in (self._vrt, self._ds):
            if handle is not None and not handle.closed:
                handle.close()
        self._vrt = self._ds = None

    def elevation(self, y0: int, x0: int, h: int, w: int) -> np.ndarray:
        """Elevations ``(h + 2, w + 2)`` float64 of scene rows ``y0 - 1 .. y0 + h`` and columns
        ``x0 - 1 .. x0 + w`` (NaN: nodata); halo pixels outside the scene that are NaN take
        the value of the scene's edge pixel next to them."""
        from rasterio.errors import RasterioError
        from rasterio.windows import Window

        from landslide_cli.safety import first_line

        s = self.source
        try:
            z = self._vrt.read(1, window=Window(x0, y0, w + 2, h + 2)).astype(np.float64)
        except RasterioError as exc:
            raise DataError(f"--dem {s.dem.path}: cannot read it for {s.label} at row {y0}, "
                            f"column {x0} ({first_line(exc)})") from None
        if s.dem.nodata is not None and not math.isnan(s.dem.nodata):
            z[z == s.dem.nodata] = np.nan  # (the warp maps nodata to NaN; kept for safety)
        z[~np.isfinite(z)] = np.nan
        if y0 == 0:
            _fill(z[0], z[1])
        if y0 + h == s.height:
            _fill(z[-1], z[-2])
        if x0 == 0:
            _fill(z[:, 0], z[:, 1])
        if x0 + w == s.width:
            _fill(z[:, -1], z[:, -2])
        return z

    def read(self, y0: int, x0: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The terrain bands ``(T, h, w)`` float32 of a window (in :attr:`TerrainSource.kinds`
        order) and their validity ``(h, w)`` (``None``: all valid)."""
        s = self.source
        z = self.elevation(y0, x0, h, w)
        out = np.empty((len(s.positions), h, w), dtype=np.float32)
        for k, kind in enumerate(s.kinds):
            if kind == "slope":
                out[k] = horn_slope(z, s.dx, s.dy)
            else:
                out[k] = z[1:-1, 1:-1]
        ok = np.isfinite(out).all(axis=0)
        if ok.all():
            return out, None
        out[:, ~ok] = 0.0  # invalid pixels are zeroed after normalization anyway
        return out, ok

    def assemble(self, raw: np.ndarray, terrain: np.ndarray) -> np.ndarray:
        """The model's ``(C, h, w)`` float32 input: the scene's bands ``raw`` with the terrain
        bands at their positions."""
        s = self.source
        out = np.empty((s.bands, *raw.shape[-2:]), dtype=np.float32)
        terrain_at = [i for i, _ in s.positions]
        scene_at = [i for i in range(s.bands) if i not in terrain_at]
        if len(scene_at) != raw.shape[0]:
            raise LandslideError(f"{s.label}: {raw.shape[0]} scene band(s) read, the model "
                                 f"takes {len(scene_at)} besides its terrain bands")
        out[scene_at] = raw
        out[terrain_at] = terrain
        return out

    def window(self, raw: np.ndarray, valid: np.ndarray | None, y0: int, x0: int
               ) -> tuple[np.ndarray, np.ndarray | None]:
        """A scene window ``raw`` (``(C', h, w)``, after ``--rescale``) and its validity ->
        the model's bands and the validity of scene and terrain together."""
        h, w = raw.shape[-2:]
        terrain, ok = self.read(y0, x0, h, w)
        if ok is not None:
            valid = ok if valid is None else valid & ok
        return self.assemble(raw, terrain), valid


def _fill(edge: np.ndarray, inner: np.ndarray) -> None:
    """NaN pixels of a halo row/column outside the scene take the scene pixel next to them."""
    bad = np.isnan(edge)
    if bad.any():
        edge[bad] = inner[bad]


__all__ = ["TERRAIN_BANDS", "DemInfo", "TerrainReader", "TerrainSource", "check_dem_covers",
           "check_terrain_request", "coverage", "open_dem", "plan_terrain"]
