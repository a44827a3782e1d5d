"""Where scenes overlap: one rule for every run, single-process or distributed.

The rule (:func:`dissolve_overlaps`, documented in ``docs/predict.md``)
    Landslide polygons of *different* scenes whose interiors overlap are dissolved into one
    polygon (transitively: a chain of overlapping detections becomes one landslide). The
    dissolved polygon keeps the largest ``max_prob`` of its parts and the area-weighted mean of
    their ``mean_prob`` (weights: each part's own ``area_m2``); ``area_m2`` and
    ``perimeter_m`` are measured again on the dissolved outline (in the output CRS); ``scene``
    lists the scenes of the parts, joined by ``;``. A detection in the overlap of two scenes
    that only one of them finds is kept as it is (the union of the scenes' detections).
    Polygons of one scene never overlap each other, and polygons that only touch (a shared
    edge or corner) are not dissolved.

Streaming (:class:`Inventory`)
    A polygon that does not reach another scene's extent cannot overlap another scene's
    detection, so it is numbered and written at once; only polygons that reach another
    scene's extent (the overlap margins) are held until every scene is done and then go
    through :func:`dissolve_overlaps`. Scenes are fed in input order, so ids are the same
    whichever way the scenes were computed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import shapely
from affine import Affine

from landslide_cli.predict.vectors import Reprojector, SceneGeo, VectorWriter

#: attribute columns of a landslide polygon besides ``id`` and ``scene``
MEASURES = ("area_m2", "perimeter_m", "mean_prob", "max_prob")
#: the ``scene`` value of a polygon dissolved from several scenes joins their labels with this
SCENE_SEPARATOR = ";"
#: points per side of a scene's outline before it is reprojected (curved edges stay covered)
EXTENT_POINTS = 32
#: the extent is grown by this fraction of its size (a conservative "may overlap" test)
EXTENT_MARGIN = 0.01


class LandslideSink(Protocol):
    """Where a scene's finished polygons go (output CRS, before the overlap rule)."""

    def add(self, index: int, rows: dict[str, Any], geoms: Any) -> None:
        """``rows``: ``scene`` (labels) and :data:`MEASURES` arrays; ``geoms`` alike long."""


def scene_extent(info: Any, out_crs: Any) -> Any:
    """The outline of a scene's pixel grid in the output CRS, densified and grown a little: a
    superset of where its polygons can be."""
    geo = SceneGeo(info.crs, info.transform, info.width, info.height)
    box = shapely.segmentize(shapely.box(0, 0, info.width, info.height),
                             max(info.width, info.height) / EXTENT_POINTS)
    outline = Reprojector(info.crs, out_crs)(geo.to_crs(box))
    minx, miny, maxx, maxy = outline.bounds
    return outline.buffer(EXTENT_MARGIN * max(maxx - minx, maxy - miny, 1e-9))


def output_measure(crs: Any, extents: Sequence[Any]) -> Callable[[Any], tuple[Any, Any]]:
    """``(area_m2, perimeter_m)`` of geometries in the output CRS (:class:`SceneGeo`'s
    measures; a geographic CRS is measured in an equal-area projection centred on the
    scenes)."""
    cx = cy = 0.0
    if len(extents):
        minx, miny, maxx, maxy = shapely.total_bounds(np.asarray(extents, dtype=object))
        cx, cy = (minx + maxx) / 2.0, (miny + maxy) / 2.0
    # SceneGeo takes the centre of a 0 x 0 grid at (c, f) for its equal-area projection
    geo = SceneGeo(crs, Affine.translation(cx, cy), 0, 0)
    return geo.measure


def dissolve_overlaps(scene_index: np.ndarray, rows: dict[str, Any], geoms: np.ndarray,
                      measure: Callable[[Any], tuple[Any, Any]]
                      ) -> tuple[dict[str, Any], np.ndarray]:
    """Apply the overlap rule (module docstring) to polygons ``geoms`` of scenes
    ``scene_index`` with attribute ``rows`` (``scene`` + :data:`MEASURES`); return the rows and
    geometries after it, in the order of each group's first polygon."""
    n = len(geoms)
    scene_index = np.asarray(scene_index)
    if n == 0:
        return rows, geoms
    parent = np.arange(n)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = int(parent[i])
        return i

    tree = shapely.STRtree(geoms)
    a, b = tree.query(geoms, predicate="intersects")
    pair = (a < b) & (scene_index[a] != scene_index[b])
    a, b = a[pair], b[pair]
    if len(a):
        shared = shapely.area(shapely.intersection(geoms[a], geoms[b]))
        area = shapely.area(geoms)
        tiny = 1e-9 * np.minimum(area[a], area[b])
        for i, j in zip(a[shared > tiny], b[shared > tiny], strict=True):
            ri, rj = find(int(i)), find(int(j))
            if ri != rj:
                parent[max(ri, rj)] = min(ri, rj)
    roots = np.array([find(i) for i in range(n)])
    out_rows: dict[str, list[Any]] = {"scene": [], **{k: [] for k in MEASURES}}
    out_geoms: list[Any] = []
    for root in np.unique(roots):  # roots are each group's smallest index: input order
        members = np.flatnonzero(roots == root)
        if len(members) == 1:
            i = int(members[0])
            out_rows["scene"].append(rows["scene"][i])
            for k in MEASURES:
                out_rows[k].append(float(rows[k][i]))
            out_geoms.append(geoms[i])
            continue
        weights = np.asarray(rows["area_m2"], dtype=np.float64)[members]
        means = np.asarray(rows["mean_prob"], dtype=np.float64)[members]
        mean = float((weights * means).sum() / weights.sum()) if weights.sum() > 0 \
            else float(means.mean())
        top = float(np.max(np.asarray(rows["max_prob"], dtype=np.float64)[members]))
        labels = list(dict.fromkeys(rows["scene"][int(i)] for i in members))
        union = shapely.union_all(geoms[members])
        parts = [union] if union.geom_type == "Polygon" else [
            g for g in getattr(union, "geoms", []) if g.geom_type == "Polygon"]
        area, perim = measure(np.asarray(parts, dtype=object))
        for part, pa, pp in zip(parts, area, perim, strict=True):
            out_rows["scene"].append(SCENE_SEPARATOR.join(labels))
            out_rows["area_m2"].append(float(pa))
            out_rows["perimeter_m"].append(float(pp))
            out_rows["mean_prob"].append(mean)
            out_rows["max_prob"].append(top)
            out_geoms.append(part)
    geoms_out = np.empty(len(out_geoms), dtype=object)
    geoms_out[:] = out_geoms
    return ({"scene": out_rows["scene"],
             **{k: np.asarray(out_rows[k], dtype=np.float64) for k in MEASURES}}, geoms_out)


class Inventory:
    """The ``landslides`` layer of one run: polygons numbered and written in the order they
    are added, except those that may overlap another scene's, which are held and written,
    after the overlap rule, by :meth:`finish`."""

    def __init__(self, writer: VectorWriter, extents: Sequence[Any],
                 measure: Callable[[Any], tuple[Any, Any]]) -> None:
        self.writer, self.measure = writer, measure
        self.extents = np.asarray(list(extents), dtype=object)
        self._tree = shapely.STRtree(self.extents) if len(self.extents) > 1 else None
        self._held: list[tuple[np.ndarray, dict[str, Any], np.ndarray]] = []
        self.next_id = 1
        self.polygons = 0
        self.area_m2 = 0.0
        self.dissolved = 0  # polygons that the overlap rule merged into others

    def add(self, index: int, rows: dict[str, Any], geoms: Any) -> None:
        geoms = np.asarray(geoms, dtype=object)
        n = len(geoms)
        if n == 0:
            return
        hold = np.zeros(n, bool)
        if self._tree is not None:
            src, hit = self._tree.query(geoms, predicate="intersects")
            hold[src[hit != index]] = True
        if hold.any():
            self._held.append((np.full(int(hold.sum()), index), _take(rows, hold), geoms[hold]))
        if not hold.all():
            self._write(_take(rows, ~hold), geoms[~hold])

    def finish(self) -> None:
        """Dissolve the held polygons by the overlap rule and write them."""
        if not self._held:
            return
        index = np.concatenate([h[0] for h in self._held])
        rows = {"scene": [s for h in self._held for s in h[1]["scene"]],
                **{k: np.concatenate([np.asarray(h[1][k], np.float64) for h in self._held])
                   for k in MEASURES}}
        geoms = np.concatenate([h[2] for h in self._held])
        self._held.clear()
        merged, out = dissolve_overlaps(index, rows, geoms, self.measure)
        self.dissolved += len(geoms) - len(out)
        self._write(merged, out)

    def _write(self, rows: dict[str, Any], geoms: np.ndarray) -> None:
        n = len(geoms)
        if n == 0:
            return
        ids = np.arange(self.next_id, self.next_id + n, dtype=np.int64)
        self.next_id += n
        self.writer.append_landslides({"id": ids, "scene": list(rows["scene"]),
                                       **{k: np.asarray(rows[k], np.float64) for k in MEASURES}},
                                      geoms)
        self.polygons += n
        self.area_m2 += float(np.sum(rows["area_m2"]))


class PolygonCollector:
    """A :class:`LandslideSink` that keeps what it is given (a task's result, a scene's
    polygons before they join the inventory)."""

    def __init__(self) -> None:
        self.parts: list[tuple[dict[str, Any], np.ndarray]] = []

    def add(self, index: int, rows: dict[str, Any], geoms: Any) -> None:
        if len(geoms):
            self.parts.append((rows, np.asarray(geoms, dtype=object)))

    def extend(self, rows: dict[str, Any], geoms: Any) -> None:
        self.add(0, rows, geoms)

    def table(self) -> tuple[dict[str, Any], np.ndarray]:
        """Everything collected as one ``(rows, geoms)``."""
        return concat_tables(self.parts)


def concat_tables(parts: Sequence[tuple[dict[str, Any], np.ndarray]]
                  ) -> tuple[dict[str, Any], np.ndarray]:
    rows: dict[str, Any] = {"scene": [s for r, _ in parts for s in r["scene"]],
                            **{k: np.concatenate([np.asarray(r[k], np.float64) for r, _ in parts])
                               if parts else np.empty(0) for k in MEASURES}}
    geoms = (np.concatenate([g for _, g in parts]) if parts else np.empty(0, dtype=object))
    return rows, geoms


def _take(rows: dict[str, Any], keep: np.ndarray) -> dict[str, Any]:
    scene = rows["scene"]
    return {"scene": [s for s, k in zip(scene, keep, strict=True) if k],
            **{k: np.asarray(rows[k], np.float64)[keep] for k in MEASURES}}
