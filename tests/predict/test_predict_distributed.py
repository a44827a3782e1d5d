"""Regional mapping on Dask distributed: merged inventories equal the single-process ones,
bands join like window rows, faults are retried or reported, --resume skips done scenes,
overlapping scenes are dissolved alike in both paths, and region-scale inputs expand.

The cluster is a real ``distributed.LocalCluster`` with two workers of one thread each; its
workers are threads of the test process (``processes=False``): on the 2-core CI machine the
start of two process workers (each importing torch) alone takes longer than this whole file.
Tasks still go through the scheduler, with pickled tasks and results, retries and
``as_completed``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import shapely
from _predict_helpers import bright_standin, write_tif
from _recording import RecordingReporter
from rasterio.transform import from_origin

from landslide_cli.errors import LandslideError
from landslide_cli.predict import PredictOptions, pipeline, predict_scenes
from landslide_cli.predict import distributed as dist
from landslide_cli.predict.inputs import expand_inputs

distributed = pytest.importorskip("distributed")

OPTS = PredictOptions(tile=32, overlap=0.25, batch_size=8)


# ----------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                       dashboard_address=None, silence_logs=logging.ERROR)
    c = distributed.Client(cluster)
    yield c
    c.close()
    cluster.close()


def _scene(path: Path, x0: float, blobs: list[tuple[int, int, int, int]], h: int = 96,
           w: int = 80) -> Path:
    a = np.full((3, h, w), 40, np.uint8)
    for y, x, bh, bw in blobs:
        a[:, y:y + bh, x:x + bw] = 220
    return write_tif(path, a, transform=from_origin(500000.0 + x0, 4000000.0, 2.0, 2.0))


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> list[Path]:
    """Three scenes: a and b overlap by 40 m (20 pixels) with one landslide across it (seen
    by both); c lies apart. Blobs cross window rows (tile 32) and band borders."""
    d = tmp_path_factory.mktemp("region")
    return [
        _scene(d / "a.tif", 0, [(5, 5, 60, 8), (40, 62, 10, 18), (80, 30, 10, 10)]),
        _scene(d / "b.tif", 120, [(40, 0, 10, 8), (10, 30, 70, 6)]),  # (40, 0): a's blob
        _scene(d / "c.tif", 2000, [(20, 20, 50, 30)]),
    ]


@pytest.fixture(scope="module")
def reference(scenes, tmp_path_factory) -> Path:
    """The single-process inventory of the three scenes."""
    out = tmp_path_factory.mktemp("ref") / "single.gpkg"
    predict_scenes(scenes, out, model=bright_standin(), options=OPTS)
    return out


def _layer(path: Path, layer: str = "landslides"):
    return pyogrio.read_dataframe(path, layer=layer)


def _shapes(path: Path) -> list[str]:
    geoms = shapely.normalize(np.asarray(_layer(path).geometry.values, dtype=object))
    return sorted(shapely.to_wkt(geoms, rounding_precision=6))


def _same_inventory(a: Path, b: Path) -> None:
    da, db = _layer(a), _layer(b)
    assert len(da) == len(db) > 0
    assert _shapes(a) == _shapes(b)
    ka = da.sort_values(["area_m2", "max_prob"]).reset_index(drop=True)
    kb = db.sort_values(["area_m2", "max_prob"]).reset_index(drop=True)
    for col in ("area_m2", "perimeter_m", "mean_prob", "max_prob"):
        np.testing.assert_allclose(ka[col], kb[col], rtol=1e-9)
    assert list(ka["scene"]) == list(kb["scene"])
    fa, fb = _layer(a, "footprints"), _layer(b, "footprints")
    assert all(x.equals(y) for x, y in zip(fa.geometry, fb.geometry, strict=True))


class FailOnce:
    """Fails each task the first time it runs (a marker file per task remembers)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __call__(self, task) -> None:
        marker = self.folder / f"{task.index}-{task.band}"
        if not marker.exists():
            marker.write_text("x")
            raise RuntimeError("injected failure")


class AlwaysFail:
    def __init__(self, index: int) -> None:
        self.index = index

    def __call__(self, task) -> None:
        if task.index == self.index:
            raise OSError("injected: disk went away")


# ----------------------------------------------------------------------- equality


def test_cluster_inventory_equals_single_process_and_bands_join_like_rows(tmp_path, scenes,
                                                                           client, reference):
    single = reference
    whole = tmp_path / "whole.gpkg"
    s1 = dist.predict_distributed(scenes, whole, model=bright_standin(), options=OPTS,
                                  client=client, band_rows=0)
    banded = tmp_path / "banded.gpkg"
    s2 = dist.predict_distributed(scenes, banded, model=bright_standin(), options=OPTS,
                                  client=client, band_rows=1)  # every window row a task
    _same_inventory(single, whole)
    _same_inventory(single, banded)
    # unsplit tasks keep the single-process order: the same ids
    assert list(_layer(single)["id"]) == list(_layer(whole)["id"])
    assert s1.polygons == s2.polygons == len(_layer(single))
    assert [s.tiles for s in s1.scenes] == [s.tiles for s in s2.scenes]
    assert s1.failed == s2.failed == []
    # the blob across a's window rows 0-2 is one polygon, not one per band
    a_polys = _layer(banded)
    assert (a_polys["scene"] == "a.tif").sum() == 2


def test_band_split_of_one_scene_equals_unsplit(tmp_path):
    rng = np.random.default_rng(3)
    a = np.full((3, 150, 70), 40, np.uint8)
    for _ in range(12):  # random rectangles, many across window and band borders
        y, x = rng.integers(0, 130), rng.integers(0, 60)
        a[:, y:y + rng.integers(3, 60), x:x + rng.integers(2, 12)] = 220
    scene = write_tif(tmp_path / "tall.tif", a)
    ref = tmp_path / "ref.gpkg"
    predict_scenes(scene, ref, model=bright_standin(), options=OPTS)
    for rows in (1, 2):
        out = tmp_path / f"band{rows}.gpkg"
        dist.predict_distributed(scene, out, model=bright_standin(), options=OPTS,
                                 band_rows=rows)  # in-process executor
        _same_inventory(ref, out)


def test_band_ranges():
    assert dist.band_ranges(5, 3, 2) == [(0, 2), (2, 4), (4, 5)]
    assert dist.band_ranges(5, 3, 0) == [(0, 5)]
    assert dist.band_ranges(10, dist.AUTO_BAND_WINDOWS, None) == [(i, i + 1) for i in range(10)]


# ----------------------------------------------------------------------- faults


def test_task_failing_once_is_retried_and_run_completes(tmp_path, scenes, client, reference):
    out = tmp_path / "retry.gpkg"
    markers = tmp_path / "markers"
    markers.mkdir()
    summary = dist.predict_distributed(scenes, out, model=bright_standin(), options=OPTS,
                                       client=client, band_rows=2, task_hook=FailOnce(markers))
    assert summary.failed == []
    assert len(list(markers.iterdir())) == sum(len(dist.band_ranges(3, 3, 2)) for _ in scenes)
    _same_inventory(reference, out)


def test_scene_failing_twice_is_reported_and_the_rest_written(tmp_path, scenes, client):
    out = tmp_path / "partial.gpkg"
    rep = RecordingReporter()
    summary = dist.predict_distributed(scenes, out, model=bright_standin(), options=OPTS,
                                       client=client, task_hook=AlwaysFail(2), reporter=rep)
    assert [f["scene"] for f in summary.failed] == ["c.tif"]
    assert "disk went away" in summary.failed[0]["error"]
    assert "c.tif" in json.dumps(summary.to_dict()["failed"])
    assert any("c.tif" in w and "failed" in w for w in rep.warnings)
    written = _layer(out)
    assert set(written["scene"]) <= {"a.tif", "b.tif", "a.tif;b.tif"} and len(written) > 0
    assert list(_layer(out, "runs")["scene"]) == ["a.tif", "b.tif"]


def test_every_scene_failing_writes_nothing(tmp_path, scenes):
    out = tmp_path / "none.gpkg"
    with pytest.raises(LandslideError, match="every scene failed"):
        dist.predict_distributed(scenes[2:], out, model=bright_standin(), options=OPTS,
                                 task_hook=AlwaysFail(0))
    assert not out.exists()


# ----------------------------------------------------------------------- resume


def test_resume_skips_finished_scenes_without_reading_them(tmp_path, scenes, monkeypatch,
                                                           reference):
    out = tmp_path / "region.gpkg"
    first = dist.predict_distributed(scenes, out, model=bright_standin(), options=OPTS,
                                     resume=True, task_hook=AlwaysFail(1))
    assert [f["scene"] for f in first.failed] == ["b.tif"]
    state = json.loads((tmp_path / "region.gpkg.resume.json").read_text())
    assert len(state["scenes"]) == 2
    opened: list[str] = []
    real = pipeline.open_scene

    def spy(path, *a, **k):
        opened.append(Path(str(path)).name)
        return real(path, *a, **k)

    monkeypatch.setattr(pipeline, "open_scene", spy)
    monkeypatch.setattr(dist, "open_scene", spy)
    second = dist.predict_distributed(scenes, out, model=bright_standin(), options=OPTS,
                                      resume=True)
    assert opened == ["b.tif"]  # a and c: neither opened nor read
    assert second.resumed == ["a.tif", "c.tif"] and second.failed == []
    _same_inventory(reference, out)
    # a changed scene (new modification time) is done again
    c = scenes[2]
    st = c.stat()
    os.utime(c, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    opened.clear()
    third = dist.predict_distributed(scenes, out, model=bright_standin(), options=OPTS,
                                     resume=True)
    assert opened == ["c.tif"] and third.resumed == ["a.tif", "b.tif"]
    # other settings: refused, nothing changed
    before = out.read_bytes()
    with pytest.raises(LandslideError, match="other settings"):
        dist.predict_distributed(scenes, out, model=bright_standin(), resume=True,
                                 options=PredictOptions(tile=32, overlap=0.5))
    assert out.read_bytes() == before


# ----------------------------------------------------------------------- overlaps


def test_overlapping_scenes_are_dissolved_alike_in_both_paths(tmp_path, scenes, client):
    pair = scenes[:2]
    single = tmp_path / "single.gpkg"
    s = predict_scenes(pair, single, model=bright_standin(), options=OPTS)
    cluster = tmp_path / "cluster.gpkg"
    d = dist.predict_distributed(pair, cluster, model=bright_standin(), options=OPTS,
                                 client=client)
    _same_inventory(single, cluster)
    assert s.dissolved == d.dissolved == 1
    rows = _layer(single)
    both = rows[rows["scene"] == "a.tif;b.tif"]
    assert len(both) == 1  # a's blob at x 62..80 = b's blob at x 0..8 (+ a's part beyond b)
    geom = both.geometry.iloc[0]
    # one landslide of 10 x 20 pixels (2 m; a sees 18 columns, b 8): counted once
    assert geom.area == pytest.approx(10 * 20 * 4.0)
    assert both["area_m2"].iloc[0] == pytest.approx(800.0)
    assert s.landslide_area_m2 == pytest.approx(float(rows["area_m2"].sum()))
    per_scene = sum(x.landslide_area_m2 for x in s.scenes)
    assert per_scene > s.landslide_area_m2  # the scenes' own sums count the overlap twice


def test_dissolve_rule_keeps_max_and_area_weighted_mean():
    from landslide_cli.predict.merge import dissolve_overlaps

    geoms = np.array([shapely.box(0, 0, 2, 1), shapely.box(1, 0, 4, 1),
                      shapely.box(10, 0, 11, 1), shapely.box(3.5, 0, 5, 1)], dtype=object)
    rows = {"scene": ["a", "b", "a", "a"], "area_m2": np.array([2.0, 3.0, 1.0, 1.5]),
            "perimeter_m": np.zeros(4), "mean_prob": np.array([0.6, 0.8, 0.9, 0.7]),
            "max_prob": np.array([0.9, 0.95, 0.99, 0.8])}

    def measure(g):
        return shapely.area(g), shapely.length(g)

    out, out_geoms = dissolve_overlaps(np.array([0, 1, 0, 0]), rows, geoms, measure)
    assert out["scene"] == ["a;b", "a"]  # 0-1-3 chained through b; 2 apart
    assert out_geoms[0].equals(shapely.box(0, 0, 5, 1))
    assert out["area_m2"][0] == pytest.approx(5.0)
    assert out["max_prob"][0] == pytest.approx(0.95)
    assert out["mean_prob"][0] == pytest.approx((2 * 0.6 + 3 * 0.8 + 1.5 * 0.7) / 6.5)
    assert out["mean_prob"][1] == pytest.approx(0.9)


# ----------------------------------------------------------------------- no dask, inputs


def test_without_dask_workers_say_how_to_install(tmp_path, scenes, monkeypatch, run_cli):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    with pytest.raises(LandslideError, match=r"pip install 'landslide-kda\[distributed\]'"):
        dist.predict_distributed(scenes, tmp_path / "x.gpkg", model=bright_standin(),
                                 workers=2)
    res = run_cli("predict", scenes[0], "--out", tmp_path / "y.gpkg", "--scheduler",
                  "tcp://x:1")
    assert res.exit_code == 1
    assert "landslide-kda[distributed]" in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "y.gpkg").exists()


def test_inputs_expand_globs_lists_and_item_collections(tmp_path):
    for name in ("b.tif", "a.tif", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.tif").write_bytes(b"")
    assert expand_inputs([str(tmp_path / "*.tif")]) == [str(tmp_path / "a.tif"),
                                                        str(tmp_path / "b.tif")]
    listing = tmp_path / "scenes.txt"
    listing.write_text("# region\nb.tif\n\n  sub/c.tif  # late\nhttps://x.org/s.tif\n")
    assert expand_inputs([f"@{listing}"]) == [str(tmp_path / "b.tif"),
                                              str(tmp_path / "sub" / "c.tif"),
                                              "https://x.org/s.tif"]
    assert expand_inputs([], scene_list=listing)[0] == str(tmp_path / "b.tif")
    with pytest.raises(LandslideError, match="no file matches"):
        expand_inputs([str(tmp_path / "*.jp2")])
    items = [{"type": "Feature", "id": f"S2_{k}", "properties": {},
              "assets": {"visual": {"href": f"img/{k}.tif", "type": "image/tiff"}}}
             for k in range(2)]
    coll = tmp_path / "search.json"
    coll.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    split = expand_inputs([str(coll)], item_dir=tmp_path / "items")
    assert [Path(p).name for p in split] == ["S2_0.json", "S2_1.json"]
    item = json.loads(Path(split[1]).read_text())
    assert item["type"] == "Feature"
    assert item["assets"]["visual"]["href"] == str(tmp_path / "img" / "1.tif")
    single = tmp_path / "one.json"
    single.write_text(json.dumps(items[0]))
    assert expand_inputs([str(single)]) == [str(single)]  # a single Item: remote.py reads it
