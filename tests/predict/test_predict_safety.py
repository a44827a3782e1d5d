"""predict never touches its inputs, never leaves partial outputs, never replaces silently."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyogrio
import pytest
from _predict_helpers import bright_standin, write_tif

from landslide_cli.errors import LandslideError
from landslide_cli.predict import predict_scenes


@pytest.fixture
def scene(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    return write_tif(tmp_path / "s.tif", rng.integers(0, 255, (3, 70, 90), np.uint8))


def _one_line_error(res, *words: str) -> None:
    assert res.exit_code != 0 and "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    for w in words:
        assert w.lower() in res.stderr.lower(), res.stderr


def _listing(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def test_quicklook_never_overwrites_the_input_scene(run_cli, scene, tiny_checkpoint, tmp_path):
    before = _listing(tmp_path)
    for extra in ([], ["--overwrite"]):
        res = run_cli("predict", scene, "--out", tmp_path / "a.gpkg", "--model",
                      tiny_checkpoint, "--tile", 64, "--quicklook", scene, *extra)
        _one_line_error(res, "input of this run")
    assert _listing(tmp_path) == before  # scene intact, nothing written


def test_prob_out_never_replaces_the_input_even_with_overwrite(run_cli, scene, tiny_checkpoint,
                                                               tmp_path):
    before = _listing(tmp_path)
    res = run_cli("predict", scene, "--out", tmp_path / "a.gpkg", "--model", tiny_checkpoint,
                  "--tile", 64, "--prob-out", scene, "--overwrite")
    _one_line_error(res, "input of this run")
    res = run_cli("predict", scene, "--out", tmp_path / "a.gpkg", "--model", tiny_checkpoint,
                  "--tile", 64, "--prob-out", tmp_path / "a.tif", "--quicklook",
                  tmp_path / "a.tif")
    _one_line_error(res, "--quicklook")
    assert _listing(tmp_path) == before


def test_existing_quicklook_needs_overwrite_and_is_checked_before_any_work(
        run_cli, scene, tiny_checkpoint, tmp_path):
    look = tmp_path / "q.png"
    look.write_bytes(b"my own picture")
    out = tmp_path / "a.gpkg"
    res = run_cli("predict", scene, "--out", out, "--model", tiny_checkpoint, "--tile", 64,
                  "--quicklook", look)
    _one_line_error(res, "already exists", "--overwrite")
    assert look.read_bytes() == b"my own picture" and not out.exists()
    # a folder where the PNG should go: refused up front, no GeoPackage left behind
    folder = tmp_path / "pics.png"
    folder.mkdir()
    res = run_cli("predict", scene, "--out", out, "--model", tiny_checkpoint, "--tile", 64,
                  "--quicklook", folder, "--overwrite")
    _one_line_error(res, "is a folder")
    assert not out.exists()
    res = run_cli("predict", scene, "--out", out, "--model", tiny_checkpoint, "--tile", 64,
                  "--quicklook", look, "--overwrite", "-q")
    assert res.exit_code == 0, res.stderr
    assert look.read_bytes().startswith(b"\x89PNG") and out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.gpkg", "pics.png", "q.png", "s.tif"]


def test_a_quicklook_failure_mid_write_leaves_no_output(scene, tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    def broken_savefig(self, fname, **kw):
        Path(fname).write_bytes(b"\x89PNG half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    out, prob, look = tmp_path / "a.gpkg", tmp_path / "p.tif", tmp_path / "q.png"
    with pytest.raises(LandslideError, match=r"q\.png: No space left on device"):
        predict_scenes(scene, out, model=bright_standin(), tile=64, prob_out=prob,
                       quicklook=look)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.tif"]


def test_the_same_scene_twice_is_refused(run_cli, scene, tiny_checkpoint, tmp_path):
    link = tmp_path / "again.tif"
    link.symlink_to(scene)
    for twice in ([scene, scene], [scene, link]):
        res = run_cli("predict", *twice, "--out", tmp_path / "a.gpkg", "--model",
                      tiny_checkpoint, "--tile", 64)
        _one_line_error(res, "given twice")
    assert not (tmp_path / "a.gpkg").exists()


@pytest.mark.parametrize("tile", ["0", "-5", "8"])
def test_tile_below_16_is_refused(run_cli, scene, tiny_checkpoint, tmp_path, tile):
    res = run_cli("predict", scene, "--out", tmp_path / "a.gpkg", "--model", tiny_checkpoint,
                  "--tile", tile)
    _one_line_error(res, "--tile")


_SLOW_RUN = """
import sys, time
sys.path.insert(0, {helpers!r})
from _predict_helpers import bright_standin
from landslide_cli.predict import predict_scenes

model = bright_standin()
inner = model.predict
def slow(batch):
    time.sleep(0.2)
    return inner(batch)
model.predict = slow
predict_scenes({scene!r}, {out!r}, model=model, tile=32, overlap=0.0, batch_size=1,
               prob_out={prob!r})
"""


def test_temporaries_left_by_kill_9_are_removed_by_the_next_run(scene, tmp_path):
    out, prob = tmp_path / "a.gpkg", tmp_path / "p.tif"
    code = _SLOW_RUN.format(helpers=str(Path(__file__).parent), scene=str(scene), out=str(out),
                            prob=str(prob))
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ,
                                                               "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            temps = [p for p in tmp_path.iterdir() if p.name.startswith((".a.gpkg.", ".p.tif."))]
            if any(".stream.tif" in p.name for p in temps) and any(
                    ".tmp.gpkg" in p.name for p in temps):
                break
            time.sleep(0.05)
        else:
            pytest.fail("the writer never started")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    left = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert any(str(proc.pid) in n for n in left), left
    assert not out.exists() and not prob.exists()
    predict_scenes(scene, out, model=bright_standin(), tile=64, prob_out=prob)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.gpkg", "p.tif", "s.tif"]
    assert pyogrio.read_info(out, layer="landslides")["features"] >= 0
