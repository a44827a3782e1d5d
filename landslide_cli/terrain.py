"""Terrain input bands: elevation (``dem``, metres) and slope (``slope``, degrees).

A model's :class:`~landslide_cli.preprocess.InputSpec` names its bands; the names in
:data:`TERRAIN_BANDS` mark *terrain* bands, physical quantities that do not come from the
imagery: ``dem`` is the elevation in metres, ``slope`` the steepest-descent slope in degrees
(0 = flat, 90 = vertical). They are normalised like every band (``(value / scale - mean) /
std``, the model's ``mean``/``std`` of that band), but ``predict`` never reads them from the
scene and never changes them with ``--rescale``: it resamples the ``--dem`` raster onto the
scene's pixel grid and computes the slope there (:mod:`landslide_cli.predict.terrain`).

Slope (Horn 1981, the formula of GDAL's ``gdaldem slope`` and ArcGIS), for the 3x3
neighbourhood ``a b c / d e f / g h i`` of a pixel (rows top to bottom) on a grid of
``dx`` x ``dy`` metres::

    dz/dx = ((c + 2f + i) - (a + 2d + g)) / (8 dx)
    dz/dy = ((g + 2h + i) - (a + 2b + c)) / (8 dy)
    slope = degrees(atan(sqrt(dz/dx² + dz/dy²)))

Every pixel needs its eight neighbours: :func:`horn_slope` takes the elevations with a
1-pixel halo around the pixels it returns (so windows read with their halo give exactly the
slope of the whole array), :func:`slope_degrees` pads a whole array by repeating its edge.
A pixel whose neighbourhood holds a non-finite elevation (nodata) gets NaN.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

#: terrain band names -> their unit (the values a model with such a band is trained on)
TERRAIN_BANDS = {"dem": "metres", "slope": "degrees"}
#: other names accepted for the terrain bands in an InputSpec (compared case-insensitively)
TERRAIN_ALIASES = {"elevation": "dem", "dtm": "dem", "dsm": "dem"}


def terrain_kind(name: str) -> str | None:
    """``"dem"``/``"slope"`` when ``name`` names a terrain band, else ``None``."""
    low = str(name).strip().lower()
    low = TERRAIN_ALIASES.get(low, low)
    return low if low in TERRAIN_BANDS else None


def terrain_positions(spec: Any) -> list[tuple[int, str]]:
    """``(position in spec.bands, kind)`` of every terrain band of an InputSpec."""
    out = []
    for i, name in enumerate(spec.bands):
        kind = terrain_kind(name)
        if kind is not None:
            out.append((i, kind))
    return out


def has_terrain(spec: Any) -> bool:
    return bool(terrain_positions(spec))


def describe_terrain(spec: Any) -> str:
    """``"slope (degrees), dem (metres)"`` for the terrain bands of ``spec``."""
    return ", ".join(f"{spec.bands[i]} ({TERRAIN_BANDS[k]})" for i, k in terrain_positions(spec))


def spectral_spec(spec: Any) -> Any:
    """``spec`` without its terrain bands: what is read from the scene itself (bands,
    ``band_indices``, mean/std and percentiles of the other bands). ``spec`` itself when it has
    no terrain band."""
    terrain = {i for i, _ in terrain_positions(spec)}
    if not terrain:
        return spec
    keep = [i for i in range(len(spec.bands)) if i not in terrain]
    if not keep:
        from landslide_cli.errors import LandslideError

        raise LandslideError(f"the model's bands ({', '.join(spec.bands)}) are all terrain "
                             "bands; predict needs at least one band from the scene")

    def pick(values: Any) -> Any:
        return None if values is None else [values[i] for i in keep]

    percentiles = None if spec.percentiles is None else {
        k: pick(v) for k, v in spec.percentiles.items()}
    fields = {"derived": []} if hasattr(spec, "derived") else {}  # (model inputs, not read)
    return replace(spec, bands=pick(spec.bands), band_indices=pick(spec.band_indices),
                   mean=pick(spec.mean), std=pick(spec.std), percentiles=percentiles, **fields)


def spectral_indices(spec: Any) -> list[int]:
    """0-based positions of the bands that are not terrain bands."""
    terrain = {i for i, _ in terrain_positions(spec)}
    return [i for i in range(len(spec.bands)) if i not in terrain]


# ----------------------------------------------------------------------------- slope


def horn_slope(z: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """Slope in degrees (Horn's method, module docstring) of the inner ``(h, w)`` pixels of
    ``z``: elevations ``(h + 2, w + 2)`` in metres with a 1-pixel halo, ``dx``/``dy`` the pixel
    size in metres along columns/rows. float32; NaN where the 3x3 neighbourhood is not
    finite."""
    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 2 or z.shape[0] < 3 or z.shape[1] < 3:
        raise ValueError(f"horn_slope needs a (h+2, w+2) array with h, w >= 1, got {z.shape}")
    if not (dx > 0 and dy > 0):
        raise ValueError(f"pixel size must be positive, got {dx} x {dy}")
    a, b, c = z[:-2, :-2], z[:-2, 1:-1], z[:-2, 2:]
    d, f = z[1:-1, :-2], z[1:-1, 2:]
    g, h, i = z[2:, :-2], z[2:, 1:-1], z[2:, 2:]
    with np.errstate(invalid="ignore"):
        gx = ((c + 2 * f + i) - (a + 2 * d + g)) / (8.0 * dx)
        gy = ((g + 2 * h + i) - (a + 2 * b + c)) / (8.0 * dy)
        out = np.degrees(np.arctan(np.hypot(gx, gy)))
        centre_ok = np.isfinite(z[1:-1, 1:-1])  # (the centre does not enter the formula)
    out[~centre_ok] = np.nan
    return out.astype(np.float32)


def slope_degrees(z: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """Slope in degrees of a whole ``(h, w)`` elevation array (edges: the edge pixel repeated,
    as :mod:`landslide_cli.predict.terrain` does at the border of a scene)."""
    z = np.asarray(z, dtype=np.float64)
    return horn_slope(np.pad(z, 1, mode="edge"), dx, dy)
