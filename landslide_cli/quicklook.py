"""Quicklook PNG: a scene, read at reduced resolution, with landslide polygons drawn over it."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np

from landslide_cli.errors import LandslideError
from landslide_cli.safety import atomic_write, check_target


def _display_rgb(data: np.ndarray) -> np.ndarray:
    """(C, H, W) raster values -> (H, W, 3) float in [0, 1] with a 2-98 % stretch per band."""
    bands = data[:3] if data.shape[0] >= 3 else np.repeat(data[:1], 3, axis=0)
    out = np.empty((*bands.shape[1:], 3), dtype=np.float32)
    for i, band in enumerate(bands.astype(np.float32)):
        valid = band[np.isfinite(band)]
        lo, hi = np.percentile(valid, (2, 98)) if valid.size else (0.0, 1.0)
        out[..., i] = np.clip((band - lo) / max(hi - lo, 1e-6), 0, 1)
    return out


def render_quicklook(scene: str | Path, gpkg: str | Path, out: str | Path, *,
                     layer: str = "landslides", max_side: int = 2048,
                     bands: list[int] | None = None, title: str | None = None,
                     overwrite: bool = True) -> Path:
    """Draw the polygons of ``gpkg``/``layer`` that belong to ``scene`` over the scene image
    and write the PNG ``out`` atomically (never over ``scene`` or ``gpkg``)."""
    out = check_target(out, overwrite=overwrite, what="quicklook", inputs=(scene, gpkg))
    return atomic_write(out, lambda tmp: save_quicklook(scene, gpkg, tmp, layer=layer,
                                                        max_side=max_side, bands=bands,
                                                        title=title), suffix=".tmp.png")


def save_quicklook(scene: str | Path, gpkg: str | Path, path: str | Path, *,
                   layer: str = "landslides", max_side: int = 2048,
                   bands: list[int] | None = None, title: str | None = None) -> None:
    """Draw the quicklook and save it as PNG straight to ``path`` (the caller stages it)."""
    import geopandas as gpd
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import rasterio
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import PathPatch
    from matplotlib.path import Path as MplPath

    scene, gpkg = Path(scene), Path(gpkg)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            src = rasterio.open(scene)
    except rasterio.errors.RasterioIOError as exc:
        raise LandslideError(f"cannot read scene {scene}: {exc}") from None
    with src:
        factor = max(1, math.ceil(max(src.width, src.height) / max_side))
        shape = (max(1, src.height // factor), max(1, src.width // factor))
        idx = bands or list(range(1, min(src.count, 3) + 1))
        data = src.read(idx, out_shape=(len(idx), *shape), masked=True)
        rgb = _display_rgb(np.ma.filled(data.astype(np.float32), np.nan))
        left, bottom, right, top = src.bounds
        crs = src.crs
    try:
        gdf = gpd.read_file(gpkg, layer=layer)
    except Exception as exc:
        raise LandslideError(f"cannot read layer {layer!r} of {gpkg}: {exc}") from None
    if "scene" in gdf.columns:
        mine = gdf[gdf["scene"].astype(str).isin({scene.name, str(scene), scene.stem})]
        gdf = mine if len(mine) else gdf
    if crs is not None and gdf.crs is not None and gdf.crs != crs:
        gdf = gdf.to_crs(crs)

    patches = []
    for geom in gdf.geometry:
        if geom is None or geom.is_empty:
            continue
        for poly in getattr(geom, "geoms", [geom]):
            rings = [poly.exterior, *poly.interiors]
            verts = np.concatenate([np.asarray(r.coords)[:, :2] for r in rings])
            codes = np.concatenate([
                [MplPath.MOVETO] + [MplPath.LINETO] * (len(r.coords) - 2) + [MplPath.CLOSEPOLY]
                for r in rings
            ])
            patches.append(PathPatch(MplPath(verts, codes)))

    aspect = shape[1] / shape[0]
    fig, ax = plt.subplots(figsize=(min(16, 8 * aspect), 8), dpi=110)
    ax.imshow(rgb, extent=(left, right, bottom, top), interpolation="bilinear")
    ax.add_collection(PatchCollection(patches, facecolor=(1, 0.1, 0.1, 0.25),
                                      edgecolor=(1, 0.2, 0.1, 1.0), linewidth=0.8))
    ax.set_xlim(left, right)
    ax.set_ylim(bottom, top)
    ax.set_title(title or f"{scene.name}: {len(patches)} landslide polygons", fontsize=11)
    ax.tick_params(labelsize=7)
    fig.tight_layout()

    try:
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
