"""Vector side of ``predict``: block-wise polygonizing with border merging, per-polygon
statistics and measures, footprints, and the staged output writers, one per format and chosen
by the output's suffix (:data:`VECTOR_FORMATS`: GeoPackage with a QGIS style, FlatGeobuf,
GeoParquet).

Polygonizing works in *global pixel coordinates* (integers), so pieces that meet at block
borders share exact vertices and unions are exact; geometries are mapped to the scene's CRS
only when a polygon is complete.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import rasterio.features
import shapely
import shapely.geometry
from affine import Affine

from landslide_cli.errors import LandslideError
from landslide_cli.predict.windows import Block
from landslide_cli.registry import Registry
from landslide_cli.safety import Staged, check_distinct, check_target, first_line, temp_path

# ---------------------------------------------------------------------------- polygonizing


@dataclass
class PolygonBatch:
    """Complete landslides in global pixel coordinates with their probability statistics."""

    geoms: np.ndarray  #: object array of shapely Polygons
    prob_sum: np.ndarray  #: float64
    pixels: np.ndarray  #: int64
    prob_max: np.ndarray  #: float64

    def __len__(self) -> int:
        return len(self.geoms)

    @property
    def mean_prob(self) -> np.ndarray:
        return self.prob_sum / np.maximum(self.pixels, 1)

    def select(self, keep: np.ndarray) -> PolygonBatch:
        return PolygonBatch(self.geoms[keep], self.prob_sum[keep], self.pixels[keep],
                            self.prob_max[keep])


def _block_shapes(mask: np.ndarray) -> list[dict[str, Any]]:
    """GeoJSON polygons (4-connected) of a boolean mask, in the mask's pixel coordinates."""
    return [g for g, _ in
            rasterio.features.shapes(mask.view(np.uint8), mask=mask, connectivity=4)]


def _to_shapely(polys: list[dict[str, Any]], x0: int = 0, y0: int = 0) -> np.ndarray:
    """GeoJSON polygons -> object array of shapely Polygons shifted by ``(x0, y0)``.

    One vectorized ``from_ragged_array`` call instead of a Python constructor per polygon.
    """
    if not polys:
        return np.empty(0, dtype=object)
    rings = [ring for g in polys for ring in g["coordinates"]]
    ring_sizes = np.fromiter((len(r) for r in rings), dtype=np.int64, count=len(rings))
    geom_sizes = np.fromiter((len(g["coordinates"]) for g in polys), dtype=np.int64,
                             count=len(polys))
    coords = np.array([pt for ring in rings for pt in ring], dtype=np.float64)
    coords += (x0, y0)
    ring_offsets = np.concatenate([[0], np.cumsum(ring_sizes)])
    geom_offsets = np.concatenate([[0], np.cumsum(geom_sizes)])
    return shapely.from_ragged_array(shapely.GeometryType.POLYGON, coords,
                                     (ring_offsets, geom_offsets))


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def add(self, i: int) -> None:
        self.parent[i] = i

    def find(self, i: int) -> int:
        parent = self.parent
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:
            parent[i], i = root, parent[i]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def discard(self, ids: list[int]) -> None:
        for i in ids:
            self.parent.pop(i, None)


class Polygonizer:
    """Polygonize thresholded blocks (added in row-major order) and merge across borders.

    Each block is polygonized on its own with ``rasterio.features.shapes``; the pieces are
    rasterized back to a label image to get per-piece probability sums/maxima. Pieces that do
    not touch a border shared with another block are complete at once. The others are kept
    with a union-find that joins pieces 4-adjacent across the left and top block borders
    (compared on the label lines either side of the border). After each row of blocks every
    group that does not reach the row's bottom edge is complete: its pieces are dissolved
    (``shapely.union_all``, exact on integer pixel coordinates, holes kept). Between rows only
    the label line under the current block row (``8 * width`` bytes) and the still-open
    border pieces are kept.

    Row bands (distributed runs): with ``open_top`` the blocks start inside the scene and
    pieces on the band's top edge stay open too; :meth:`open_pieces` hands the still-open
    groups over at the band's end, and :meth:`add_band` joins a band's open groups to the
    previous band's exactly as block rows are joined.
    """

    def __init__(self, width: int, threshold: float,
                 emit: Callable[[PolygonBatch], None], *, open_top: bool = False) -> None:
        self.width = width
        self.threshold = float(threshold)
        self.emit = emit
        #: labels of the band's first pixel row (``open_top``): pieces there stay open
        self._top = np.zeros(width, dtype=np.int64) if open_top else None
        self._top_rows = True  # still in the first block row
        self._uf = _UnionFind()
        self._pieces: dict[int, tuple[Any, float, int, float]] = {}
        self._next_id = 1
        self._right: np.ndarray | None = None
        self._bottom_prev = np.zeros(width, dtype=np.int64)
        self._bottom_cur = np.zeros(width, dtype=np.int64)
        self.pixels = 0  # landslide pixels so far

    def foreground(self, block: Block) -> np.ndarray:
        fg = block.prob >= self.threshold
        if block.valid is not None:
            fg &= block.valid
        return fg

    def add(self, block: Block) -> None:
        h, w = block.shape
        fg = self.foreground(block)
        labels = np.zeros((h, w), dtype=np.int64)
        if fg.any():
            polys = _block_shapes(fg)
            n = len(polys)
            local = rasterio.features.rasterize(
                zip(polys, range(1, n + 1), strict=True), out_shape=(h, w), fill=0,
                dtype="int32")
            npx = int(np.count_nonzero(fg))
            if int(np.count_nonzero(local)) != npx:  # pragma: no cover - GDAL invariant
                raise RuntimeError("polygonize/rasterize disagree on a block")
            self.pixels += npx
            lab = local[fg]
            prob = block.prob[fg].astype(np.float64)
            sums = np.bincount(lab, weights=prob, minlength=n + 1)[1:]
            counts = np.bincount(lab, minlength=n + 1)[1:]
            order = np.argsort(lab, kind="stable")
            lab_s, prob_s = lab[order], prob[order]
            starts = np.flatnonzero(np.r_[True, lab_s[1:] != lab_s[:-1]])
            maxs = np.zeros(n + 1)
            maxs[lab_s[starts]] = np.maximum.reduceat(prob_s, starts)
            maxs = maxs[1:]
            geoms = _to_shapely(polys, block.x0, block.y0)
            # pieces on a border shared with another block may continue there
            edges = [local[0, :] if block.row > 0 else None,
                     local[-1, :] if not block.last_row else None,
                     local[:, 0] if block.col > 0 else None,
                     local[:, -1] if not block.last_col else None]
            on_border = np.zeros(n + 1, bool)
            for edge in edges:
                if edge is not None:
                    on_border[edge] = True
            on_border = on_border[1:]
            inner = ~on_border
            if inner.any():
                self.emit(PolygonBatch(geoms[inner], sums[inner], counts[inner], maxs[inner]))
            base = self._next_id - 1
            self._next_id += n
            for k in np.flatnonzero(on_border):
                gid = base + int(k) + 1
                self._uf.add(gid)
                self._pieces[gid] = (geoms[k], float(sums[k]), int(counts[k]), float(maxs[k]))
            labels[fg] = lab + base
        if self._top is not None and self._top_rows:
            self._top[block.x0:block.x0 + w] = labels[0, :]
        if block.col > 0 and self._right is not None:
            self._join(self._right, labels[:, 0])
        if block.row > 0:
            self._join(self._bottom_prev[block.x0:block.x0 + w], labels[0, :])
        self._right = labels[:, -1].copy()
        self._bottom_cur[block.x0:block.x0 + w] = labels[-1, :]
        if block.last_col:
            self._end_row(final=block.last_row)

    def _join(self, a: np.ndarray, b: np.ndarray) -> None:
        both = (a > 0) & (b > 0)
        if not both.any():
            return
        pairs = np.unique(np.stack([a[both], b[both]], axis=1), axis=0)
        for i, j in pairs:
            self._uf.union(int(i), int(j))

    def _end_row(self, *, final: bool) -> None:
        open_roots: set[int] = set()
        if not final:
            open_roots = {self._uf.find(int(i)) for i in np.unique(self._bottom_cur) if i}
        if self._top is not None:
            self._top_rows = False
            open_roots |= {self._uf.find(int(i)) for i in np.unique(self._top) if i}
        groups: dict[int, list[int]] = {}
        for gid in self._pieces:
            root = self._uf.find(gid)
            if root not in open_roots:
                groups.setdefault(root, []).append(gid)
        geoms, sums, counts, maxs = [], [], [], []
        for ids in groups.values():
            parts = [self._pieces.pop(i) for i in ids]
            geom = parts[0][0] if len(parts) == 1 else shapely.union_all([p[0] for p in parts])
            self._uf.discard(ids)
            for poly in _polygons(geom):
                geoms.append(poly)
                sums.append(sum(p[1] for p in parts))
                counts.append(sum(p[2] for p in parts))
                maxs.append(max(p[3] for p in parts))
        self._bottom_prev, self._bottom_cur = self._bottom_cur, self._bottom_prev
        self._bottom_cur[:] = 0
        self._right = None
        if geoms:
            arr = np.empty(len(geoms), dtype=object)
            arr[:] = geoms
            self.emit(PolygonBatch(arr, np.asarray(sums, np.float64),
                                   np.asarray(counts, np.int64), np.asarray(maxs, np.float64)))


    def open_pieces(self) -> OpenPieces:
        """At the end of a band: every still-open group dissolved into one piece, with the
        band's top and bottom label lines in group ids (``None`` at the scene's edges)."""
        groups: dict[int, list[int]] = {}
        for gid in self._pieces:
            groups.setdefault(self._uf.find(gid), []).append(gid)
        pieces = {}
        for root, ids in groups.items():
            parts = [self._pieces.pop(i) for i in ids]
            geom = parts[0][0] if len(parts) == 1 else shapely.union_all([p[0] for p in parts])
            pieces[root] = (geom, sum(p[1] for p in parts), sum(p[2] for p in parts),
                            max(p[3] for p in parts))

        def relabel(line: np.ndarray | None) -> np.ndarray | None:
            if line is None or not line.any():
                return None
            out = np.zeros_like(line)
            for i in np.unique(line[line > 0]):
                if int(i) in self._uf.parent:  # else: a piece already complete (scene edge)
                    out[line == i] = self._uf.find(int(i))
            return out if out.any() else None

        top, bottom = relabel(self._top), relabel(self._bottom_prev)
        self._uf = _UnionFind()
        return OpenPieces(pieces, top, bottom)

    def add_band(self, band: OpenPieces, *, final: bool) -> None:
        """Join the next band's open pieces to the previous band's open ones (across the
        border between them) and emit every group that does not reach this band's bottom."""
        offset = self._next_id
        self._next_id += max(band.pieces, default=0) + 1
        for gid, piece in band.pieces.items():
            self._uf.add(gid + offset)
            self._pieces[gid + offset] = piece
        if band.top is not None:
            self._join(self._bottom_prev, np.where(band.top > 0, band.top + offset, 0))
        if band.bottom is not None and not final:
            self._bottom_cur[:] = np.where(band.bottom > 0, band.bottom + offset, 0)
        self._end_row(final=final)


@dataclass
class OpenPieces:
    """A band's landslide pieces that may continue in the neighbouring bands (pixel
    coordinates): ``{id: (geometry, prob_sum, pixels, prob_max)}`` and the band's top and
    bottom label lines (``width`` ids, 0 = no open piece; ``None``: none at all)."""

    pieces: dict[int, tuple[Any, float, int, float]]
    top: np.ndarray | None
    bottom: np.ndarray | None


def _polygons(geom: Any) -> list[Any]:
    if geom.geom_type == "Polygon":
        return [geom]
    return [g for g in getattr(geom, "geoms", []) if g.geom_type == "Polygon" and not g.is_empty]


class FootprintBuilder:
    """Outline of a scene's valid pixels, accumulated block by block (pixel coordinates)."""

    def __init__(self, height: int, width: int, *, all_valid: bool) -> None:
        self.all_valid = all_valid
        self.height, self.width = height, width
        self._row: list[Any] = []
        self._rows: list[Any] = []
        self.valid_pixels = height * width if all_valid else 0

    def add(self, block: Block) -> None:
        if self.all_valid:
            return
        h, w = block.shape
        if block.valid is None:
            self._row.append(shapely.box(block.x0, block.y0, block.x0 + w, block.y0 + h))
            self.valid_pixels += h * w
        elif block.valid.any():
            self.valid_pixels += int(np.count_nonzero(block.valid))
            self._row.extend(_to_shapely(_block_shapes(block.valid), block.x0, block.y0))
        if block.last_col and self._row:
            self._rows.append(shapely.union_all(self._row))
            self._row = []

    def geometry(self) -> Any:
        """The footprint (Polygon or MultiPolygon, pixel coordinates; empty if no valid pixel)."""
        if self.all_valid:
            return shapely.box(0, 0, self.width, self.height)
        if not self._rows:
            return shapely.Polygon()
        return shapely.simplify(shapely.union_all(self._rows), 0.0)


# ---------------------------------------------------------------------------- geography


class SceneGeo:
    """Pixel -> CRS mapping and equal-area measures for one scene.

    * projected CRS: planar area/length in CRS units times the linear unit factor (^2);
    * geographic CRS: geometries are projected to a Lambert azimuthal equal-area projection
      centred on the scene (areas exact, lengths accurate near the centre);
    * no CRS: the geotransform's units are taken as metres (pixel units for plain images).
    """

    def __init__(self, crs: Any, transform: Affine, width: int, height: int) -> None:
        self.crs, self.transform = crs, transform
        self.kind = "none" if crs is None else ("geographic" if crs.is_geographic else "projected")
        self.unit_factor = 1.0
        self._laea = None
        if self.kind == "projected":
            try:
                self.unit_factor = float(crs.linear_units_factor[1])
            except Exception:  # CRS without a linear unit: assume metres
                self.unit_factor = 1.0
        elif self.kind == "geographic":
            from pyproj import CRS as ProjCRS
            from pyproj import Transformer

            t = transform
            lon = t.a * width / 2.0 + t.b * height / 2.0 + t.c
            lat = t.d * width / 2.0 + t.e * height / 2.0 + t.f
            laea = ProjCRS.from_proj4(
                f"+proj=laea +lat_0={lat:.8f} +lon_0={lon:.8f} +x_0=0 +y_0=0 "
                "+ellps=WGS84 +units=m +no_defs")
            self._laea = Transformer.from_crs(ProjCRS.from_user_input(crs.to_wkt()), laea,
                                              always_xy=True)
        self.pixel_size_m = self._pixel_size_m(width, height)

    def to_crs(self, geoms: Any) -> Any:
        """Global pixel coordinates -> scene CRS (the raster's geotransform)."""
        t = self.transform
        return shapely.transform(geoms, lambda xy: np.column_stack([
            t.a * xy[:, 0] + t.b * xy[:, 1] + t.c, t.d * xy[:, 0] + t.e * xy[:, 1] + t.f]))

    def _metric(self, geoms_crs: Any) -> Any:
        if self._laea is None:
            return geoms_crs
        tr = self._laea
        return shapely.transform(geoms_crs, lambda xy: np.column_stack(
            tr.transform(xy[:, 0], xy[:, 1])))

    def measure(self, geoms_crs: Any) -> tuple[np.ndarray, np.ndarray]:
        """``(area_m2, perimeter_m)`` arrays for geometries in the scene CRS."""
        metric = self._metric(np.asarray(geoms_crs, dtype=object))
        f = self.unit_factor if self.kind == "projected" else 1.0
        return shapely.area(metric) * f * f, shapely.length(metric) * f

    def _pixel_size_m(self, width: int, height: int) -> float:
        cx, cy = width // 2, height // 2
        px = self.to_crs(shapely.box(cx, cy, cx + 1, cy + 1))
        area, _ = self.measure([px])
        return float(np.sqrt(area[0]))


class Reprojector:
    """Transform geometries between two CRSs (identity when they are equal)."""

    def __init__(self, src: Any, dst: Any) -> None:
        self.identity = src is None or dst is None or src == dst
        if not self.identity:
            from pyproj import CRS as ProjCRS
            from pyproj import Transformer

            self._tr = Transformer.from_crs(ProjCRS.from_user_input(src.to_wkt()),
                                            ProjCRS.from_user_input(dst.to_wkt()),
                                            always_xy=True)

    def __call__(self, geoms: Any) -> Any:
        if self.identity:
            return geoms
        tr = self._tr
        return shapely.transform(geoms, lambda xy: np.column_stack(
            tr.transform(xy[:, 0], xy[:, 1])))


# ---------------------------------------------------------------------------- GeoPackage

LANDSLIDE_COLUMNS = ("id", "scene", "area_m2", "perimeter_m", "mean_prob", "max_prob")

QML_STYLE = """<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis version="3.28.0" styleCategories="Symbology|MapTips">
 <renderer-v2 type="singleSymbol" symbollevels="0" enableorderby="0" forceraster="0"
   referencescale="-1">
  <symbols>
   <symbol type="fill" name="0" alpha="1" clip_to_extent="1" force_rhr="0">
    <layer class="SimpleFill" enabled="1" locked="0" pass="0">
     <Option type="Map">
      <Option type="QString" name="color" value="227,26,28,102"/>
      <Option type="QString" name="joinstyle" value="bevel"/>
      <Option type="QString" name="offset" value="0,0"/>
      <Option type="QString" name="offset_unit" value="MM"/>
      <Option type="QString" name="outline_color" value="165,0,38,255"/>
      <Option type="QString" name="outline_style" value="solid"/>
      <Option type="QString" name="outline_width" value="0.4"/>
      <Option type="QString" name="outline_width_unit" value="MM"/>
      <Option type="QString" name="style" value="solid"/>
     </Option>
     <prop k="color" v="227,26,28,102"/>
     <prop k="joinstyle" v="bevel"/>
     <prop k="offset" v="0,0"/>
     <prop k="offset_unit" v="MM"/>
     <prop k="outline_color" v="165,0,38,255"/>
     <prop k="outline_style" v="solid"/>
     <prop k="outline_width" v="0.4"/>
     <prop k="outline_width_unit" v="MM"/>
     <prop k="style" v="solid"/>
    </layer>
   </symbol>
  </symbols>
  <rotation/>
  <sizescale/>
 </renderer-v2>
 <blendMode>0</blendMode>
 <featureBlendMode>0</featureBlendMode>
 <layerOpacity>1</layerOpacity>
 <mapTip>landslide [% "id" %]: [% round("area_m2") %] m², p [% round("mean_prob", 2) %]</mapTip>
 <previewExpression>"id"</previewExpression>
 <layerGeometryType>2</layerGeometryType>
</qgis>
"""

SLD_STYLE = """<?xml version="1.0" encoding="UTF-8"?>
<StyledLayerDescriptor xmlns="http://www.opengis.net/sld" version="1.1.0"
  xmlns:se="http://www.opengis.net/se" xmlns:ogc="http://www.opengis.net/ogc"
  xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
 <NamedLayer>
  <se:Name>landslides</se:Name>
  <UserStyle>
   <se:Name>landslides</se:Name>
   <se:FeatureTypeStyle>
    <se:Rule>
     <se:Name>landslide</se:Name>
     <se:PolygonSymbolizer>
      <se:Fill>
       <se:SvgParameter name="fill">#e31a1c</se:SvgParameter>
       <se:SvgParameter name="fill-opacity">0.4</se:SvgParameter>
      </se:Fill>
      <se:Stroke>
       <se:SvgParameter name="stroke">#a50026</se:SvgParameter>
       <se:SvgParameter name="stroke-width">1</se:SvgParameter>
      </se:Stroke>
     </se:PolygonSymbolizer>
    </se:Rule>
   </se:FeatureTypeStyle>
  </UserStyle>
 </NamedLayer>
</StyledLayerDescriptor>
"""


#: ``gpkg_contents.description`` of each layer (what a GIS user sees in the layer properties)
LAYER_DESCRIPTIONS = {
    "landslides": "landslide polygons mapped by landslide predict (one row per landslide)",
    "footprints": "valid-data outline of each predicted scene",
    "runs": "one row per scene: model, parameters and timing of the landslide predict run",
}

#: GeoPackage version written: 1.2 (``user_version`` 10200) opens without a warning in GDAL
#: 3.6 (Debian bookworm, QGIS LTR builds); GDAL >= 3.7 writes 1.4 by default, which older GDAL
#: reads with "user_version ... may only be partially supported".
GPKG_VERSION = "1.2"


def _crs_arg(crs: Any) -> Any:
    if crs is None:
        return None
    code = crs.to_epsg() if hasattr(crs, "to_epsg") else None
    return f"EPSG:{code}" if code else crs.to_wkt()


def _quiet_write(target: Path, write: Callable[[], object]) -> None:
    """Run one GDAL write, turning any failure into a one-line error naming ``target``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            warnings.simplefilter("ignore", UserWarning)  # e.g. "'crs' was not provided"
            write()
    except LandslideError:
        raise
    except Exception as exc:
        raise LandslideError(f"cannot write {target}: {first_line(exc)}") from None


#: ``runs`` columns that may be missing (None) in some rows but are numbers
RUNS_REAL_COLUMNS = ("gsd_m", "resample_m")


class _GpkgLayers:
    """The ``landslides``/``footprints``/``runs`` layers written into one GeoPackage file
    (the staged output of :class:`GpkgWriter`, or the staging file of a one-layer format)."""

    def __init__(self, path: Path, crs: Any, target: Path) -> None:
        self.path, self.crs, self.target = path, crs, target
        self.features = 0
        self._created = False
        self._create_landslides()

    def _gdf(self, data: dict[str, Any], geoms: Any) -> Any:
        import geopandas as gpd

        return gpd.GeoDataFrame(data, geometry=gpd.GeoSeries(list(geoms), crs=_crs_arg(self.crs)))

    def _write(self, frame: Any, layer: str, *, append: bool = False, **kw: Any) -> None:
        import pyogrio

        if not append:
            kw["layer_options"] = {"DESCRIPTION": LAYER_DESCRIPTIONS.get(layer, layer)}
        if not self._created:
            kw["dataset_options"] = {"VERSION": GPKG_VERSION}
        _quiet_write(self.target, lambda: pyogrio.write_dataframe(
            frame, self.path, layer=layer, driver="GPKG", append=append, **kw))
        self._created = True

    def _create_landslides(self) -> None:
        import pandas as pd

        empty = {
            "id": pd.Series([], dtype="int64"), "scene": pd.Series([], dtype=object),
            **{c: pd.Series([], dtype="float64") for c in LANDSLIDE_COLUMNS[2:]},
        }
        self._write(self._gdf(empty, []), "landslides", geometry_type="Polygon")

    def append_landslides(self, rows: dict[str, Any], geoms: Any) -> None:
        if len(geoms) == 0:
            return
        self._write(self._gdf(rows, geoms), "landslides", geometry_type="Polygon", append=True)
        self.features += len(geoms)

    def write_footprints(self, rows: dict[str, Any], geoms: Any) -> None:
        self._write(self._gdf(rows, geoms), "footprints", geometry_type="MultiPolygon",
                    promote_to_multi=True)

    def write_runs(self, rows: list[dict[str, Any]]) -> None:
        import pandas as pd

        frame = pd.DataFrame(rows)
        for col in RUNS_REAL_COLUMNS:  # REAL even when every value is missing (NULL)
            if col in frame:
                frame[col] = frame[col].astype("float64")
        self._write(frame, "runs")


class VectorWriter:
    """The vector outputs of one ``predict`` run, staged beside their targets.

    Every file is written to a hidden temporary beside its target and renamed onto it by
    :meth:`commit` (after :meth:`finish`), or removed by :meth:`cleanup`; the targets are never
    partial. Subclasses are registered in :data:`VECTOR_FORMATS` under the output suffix.
    """

    suffix = ""

    def __init__(self, target: Path, crs: Any) -> None:
        self.target = Path(target)
        self.crs = crs
        self._finished = False

    @classmethod
    def targets(cls, target: Path) -> dict[str, Path]:
        """Every file written for ``target``: ``{what: path}`` (the target itself first)."""
        return {"output": Path(target)}

    @property
    def features(self) -> int:
        """Landslide polygons written so far."""
        return self._layers.features

    @property
    def gpkg(self) -> Path:
        """A GeoPackage with the ``landslides`` layer written so far (quicklooks read it)."""
        return self._layers.path

    def append_landslides(self, rows: dict[str, Any], geoms: Any) -> None:
        self._layers.append_landslides(rows, geoms)

    def write_footprints(self, rows: dict[str, Any], geoms: Any) -> None:
        self._layers.write_footprints(rows, geoms)

    def write_runs(self, rows: list[dict[str, Any]]) -> None:
        self._layers.write_runs(rows)

    def write_style(self) -> None:
        """A default QGIS style for the landslides."""

    def finish(self) -> None:
        """Complete every staged file (nothing is published yet); :meth:`commit` calls it."""
        self._finished = True

    def commit(self) -> None:
        raise NotImplementedError

    def cleanup(self) -> None:
        raise NotImplementedError


VECTOR_FORMATS: Registry[type[VectorWriter]] = Registry("vector output format")


@VECTOR_FORMATS.register(".gpkg", description="GeoPackage: layers landslides, footprints, "
                                               "runs and a QGIS default style")
class GpkgWriter(VectorWriter):
    """Write the output GeoPackage to a temporary file beside ``target``; rename on commit."""

    suffix = ".gpkg"

    def __init__(self, target: Path, crs: Any) -> None:
        super().__init__(target, crs)
        self._staged = Staged(self.target, ".tmp.gpkg")
        self.tmp = self._staged.tmp
        try:
            self._layers = _GpkgLayers(self.tmp, crs, self.target)
        except BaseException:
            self._staged.cleanup()
            raise

    def write_style(self) -> None:
        """Add the ``layer_styles`` table QGIS reads, with a default style for landslides."""
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        con = sqlite3.connect(self.tmp)
        try:
            with con:
                con.execute(
                    "CREATE TABLE IF NOT EXISTS layer_styles ("
                    "id INTEGER PRIMARY KEY AUTOINCREMENT, f_table_catalog TEXT(256), "
                    "f_table_schema TEXT(256), f_table_name TEXT(256), "
                    "f_geometry_column TEXT(256), styleName TEXT(30), styleQML TEXT, "
                    "styleSLD TEXT, useAsDefault BOOLEAN, description TEXT, owner TEXT(30), "
                    "ui TEXT(30), update_time DATETIME DEFAULT "
                    "(strftime('%Y-%m-%dT%H:%M:%fZ','now')))")
                geom_col = con.execute(
                    "SELECT column_name FROM gpkg_geometry_columns WHERE table_name=?",
                    ("landslides",)).fetchone()
                con.execute(
                    "INSERT INTO layer_styles (f_table_catalog, f_table_schema, f_table_name, "
                    "f_geometry_column, styleName, styleQML, styleSLD, useAsDefault, "
                    "description, owner, ui, update_time) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                    ("", "", "landslides", geom_col[0] if geom_col else "geom", "landslides",
                     QML_STYLE, SLD_STYLE, 1, "landslide default style", "", None, now))
                con.execute(
                    "INSERT OR REPLACE INTO gpkg_contents (table_name, data_type, identifier, "
                    "description, last_change) VALUES (?,?,?,?,?)",
                    ("layer_styles", "attributes", "layer_styles", "QGIS layer styles", now))
        except sqlite3.Error as exc:
            raise LandslideError(f"cannot write {self.target}: {exc}") from None
        finally:
            con.close()

    def commit(self) -> None:
        self.finish()
        self._staged.commit()

    def cleanup(self) -> None:
        self._staged.cleanup()


class _OneLayerWriter(VectorWriter):
    """A format holding one layer per file: ``NAME.<suffix>`` gets the landslides, and beside
    it ``NAME.footprints.<suffix>``, ``NAME.runs.json`` (the run metadata) and ``NAME.qml``
    (the QGIS default style, which QGIS loads with ``NAME.<suffix>``).

    While the run goes on, the layers are appended to a hidden staging GeoPackage (memory stays
    bounded); :meth:`finish` streams them from there into the staged files in batches.
    """

    #: rows per batch when streaming the staging GeoPackage into the output
    BATCH = 10_000

    def __init__(self, target: Path, crs: Any) -> None:
        super().__init__(target, crs)
        paths = self.targets(self.target)
        self._staged = {what: Staged(path, f".tmp{path.suffix}")
                        for what, path in paths.items()}
        self._stage = temp_path(self.target, ".stage.gpkg")
        self._runs: list[dict[str, Any]] = []
        self._styled = False
        try:
            self._layers = _GpkgLayers(self._stage, crs, self.target)
        except BaseException:
            self.cleanup()
            raise

    @classmethod
    def targets(cls, target: Path) -> dict[str, Path]:
        target = Path(target)
        stem = target.name[:-len(target.suffix)] if target.suffix else target.name
        return {
            "output": target,
            "footprints": target.with_name(f"{stem}.footprints{target.suffix}"),
            "runs": target.with_name(f"{stem}.runs.json"),
            "style": target.with_name(f"{stem}.qml"),
        }

    def write_runs(self, rows: list[dict[str, Any]]) -> None:
        self._runs = [dict(r) for r in rows]

    def write_style(self) -> None:
        self._styled = True

    def finish(self) -> None:
        if self._finished:
            return
        paths = self.targets(self.target)
        self._export("landslides", self._staged["output"].tmp)
        self._export("footprints", self._staged["footprints"].tmp)
        doc = {
            "format": "landslide-runs", "version": 1,
            "landslides": paths["output"].name, "footprints": paths["footprints"].name,
            "crs": _crs_arg(self.crs), "runs": self._runs,
        }
        try:
            self._staged["runs"].tmp.write_text(
                json.dumps(doc, indent=2, default=str) + "\n", encoding="utf-8")
            if self._styled:
                self._staged["style"].tmp.write_text(QML_STYLE, encoding="utf-8")
        except OSError as exc:
            raise LandslideError(f"cannot write {self.target}: {first_line(exc)}") from None
        self._finished = True

    def _export(self, layer: str, dest: Path) -> None:
        raise NotImplementedError

    def _batches(self, layer: str) -> Any:
        """``(meta, reader)``: the staging layer as a stream of Arrow record batches."""
        import pyogrio

        return pyogrio.open_arrow(self._stage, layer=layer, use_pyarrow=True,
                                  batch_size=self.BATCH)

    def commit(self) -> None:
        self.finish()
        # the side files first: once NAME.<suffix> is there, its companions are too
        for what in ("footprints", "runs", "style", "output"):
            staged = self._staged[what]
            if what == "style" and not self._styled:
                continue
            staged.commit()
        self._remove_stage()

    def cleanup(self) -> None:
        for staged in getattr(self, "_staged", {}).values():
            staged.cleanup()
        self._remove_stage()

    def _remove_stage(self) -> None:
        for side in ("", *Staged.SIDE_SUFFIXES):
            with contextlib.suppress(OSError):
                Path(str(self._stage) + side).unlink(missing_ok=True)


@VECTOR_FORMATS.register(".fgb", description="FlatGeobuf (one layer; footprints, runs and "
                                              "style beside it)")
class FlatGeobufWriter(_OneLayerWriter):
    """FlatGeobuf through pyogrio (GDAL), with a spatial index."""

    suffix = ".fgb"

    def _export(self, layer: str, dest: Path) -> None:
        import pyogrio

        def write() -> None:
            with self._batches(layer) as (meta, reader):
                pyogrio.write_arrow(reader, dest, layer=layer, driver="FlatGeobuf",
                                    geometry_name=meta["geometry_name"],
                                    geometry_type=meta["geometry_type"],
                                    crs=_crs_arg(self.crs))

        _quiet_write(self.target, write)


@VECTOR_FORMATS.register(".parquet", description="GeoParquet 1.1 (one layer; footprints, runs "
                                                  "and style beside it)")
class GeoParquetWriter(_OneLayerWriter):
    """GeoParquet 1.1 (WKB geometry column ``geometry``, zstd) through pyarrow, streamed in
    batches; read it with ``geopandas.read_parquet``."""

    suffix = ".parquet"

    def _export(self, layer: str, dest: Path) -> None:
        _quiet_write(self.target, lambda: self._write_parquet(layer, dest))

    def _write_parquet(self, layer: str, dest: Path) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        with self._batches(layer) as (meta, reader):
            geom_name = meta["geometry_name"]
            fields = [pa.field("geometry", f.type) if f.name == geom_name
                      else f.remove_metadata() for f in reader.schema]
            schema = pa.schema(fields)
            bounds = np.array([np.inf, np.inf, -np.inf, -np.inf])
            types: set[str] = set()
            with pq.ParquetWriter(dest, schema, compression="zstd") as out:
                for batch in reader:
                    wkb = batch.column(geom_name).to_numpy(zero_copy_only=False)
                    geoms = shapely.from_wkb(wkb)
                    if len(geoms):
                        b = shapely.bounds(geoms)
                        bounds = np.r_[np.minimum(bounds[:2], np.nanmin(b[:, :2], axis=0)),
                                       np.maximum(bounds[2:], np.nanmax(b[:, 2:], axis=0))]
                        types.update(shapely.get_type_id(geoms).tolist())
                    out.write_batch(pa.RecordBatch.from_arrays(batch.columns, schema=schema))
                column: dict[str, Any] = {
                    "encoding": "WKB",
                    "geometry_types": sorted(_GEOM_TYPES[t] for t in types if t in _GEOM_TYPES),
                    "crs": self._projjson(),
                }
                if np.isfinite(bounds).all():
                    column["bbox"] = [float(v) for v in bounds]
                geo = {"version": "1.1.0", "primary_column": "geometry",
                       "columns": {"geometry": column}}
                out.add_key_value_metadata({"geo": json.dumps(geo)})

    def _projjson(self) -> dict[str, Any] | None:
        """The CRS as PROJJSON (GeoParquet's encoding); ``None``: unknown (no CRS)."""
        if self.crs is None:
            return None
        from pyproj import CRS as ProjCRS

        return ProjCRS.from_user_input(self.crs.to_wkt()).to_json_dict()


#: shapely geometry type ids -> GeoParquet ``geometry_types`` names
_GEOM_TYPES = {3: "Polygon", 6: "MultiPolygon"}


def vector_suffixes() -> tuple[str, ...]:
    """The output suffixes ``predict --out`` accepts (``.gpkg``, ``.fgb``, ``.parquet``)."""
    return tuple(VECTOR_FORMATS.names())


def vector_writer_class(target: str | Path) -> type[VectorWriter]:
    """The writer registered for ``target``'s suffix (case-insensitive)."""
    suffix = Path(target).suffix.lower()
    if suffix not in VECTOR_FORMATS:
        raise LandslideError(f"output {target}: expected a "
                             f"{' or '.join(vector_suffixes())} file name")
    return VECTOR_FORMATS.get(suffix)


def check_vector_targets(target: str | Path, *, overwrite: bool,
                         inputs: Any = ()) -> list[tuple[str, Path]]:
    """Check every file the writer for ``target`` publishes (see
    :func:`~landslide_cli.safety.check_target`); return ``[(what, path), ...]``."""
    cls = vector_writer_class(target)
    checked = []
    for what, path in cls.targets(Path(target)).items():
        label = "output" if what == "output" else f"{Path(target).name}'s {what} file"
        checked.append((label, check_target(path, overwrite=overwrite, what=label,
                                            inputs=inputs)))
    check_distinct(checked)
    return checked


def open_vector_writer(target: str | Path, crs: Any) -> VectorWriter:
    """A staged writer for ``target``, chosen by its suffix from :data:`VECTOR_FORMATS`."""
    return vector_writer_class(target)(Path(target), crs)
