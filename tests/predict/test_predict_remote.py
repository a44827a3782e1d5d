"""Remote scenes: a COG over HTTP (range requests) and STAC Items, from a local server.

The server listens on 127.0.0.1 only (a random free port, in its own process) and answers
``Range: bytes=a-b`` with ``206 Partial Content``, which the standard library's
``http.server`` does not; it records every request so the tests can check that GDAL read the
COG by ranges rather than downloading it whole.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
from _predict_helpers import ConvStandIn, write_tif
from rasterio.transform import from_origin

from landslide_cli.errors import DataError, LandslideError
from landslide_cli.predict import predict_scenes
from landslide_cli.predict.remote import RemoteScene, open_source
from landslide_cli.safety import check_target, is_url, same_file

_SERVER = r"""
import re, sys, urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

root, log = Path(sys.argv[1]).resolve(), sys.argv[2]
RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _serve(self, body):
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"{self.command}\t{self.path}\t{self.headers.get('Range') or ''}\n")
        rel = urllib.parse.unquote(self.path.split("?", 1)[0]).lstrip("/")
        path = (root / rel).resolve()
        if root not in path.parents or not path.is_file():
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = path.read_bytes()
        size = len(data)
        ctype = "application/json" if path.suffix == ".json" else "image/tiff"
        start, end, status = 0, size - 1, 200
        m = RANGE.match(self.headers.get("Range") or "")
        if m:
            a, b = m.groups()
            if a == "":  # the last b bytes
                start = max(0, size - int(b))
            else:
                start, end = int(a), min(size - 1, int(b) if b else size - 1)
            if start >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(end - start + 1))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if body:
            self.wfile.write(data[start:end + 1])

    def do_GET(self):
        self._serve(True)

    def do_HEAD(self):
        self._serve(False)


httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
httpd.daemon_threads = True
print(httpd.server_address[1], flush=True)
httpd.serve_forever()
"""


class RangeServer:
    """Serve the files of ``root`` over HTTP/1.1 with single byte ranges.

    The server runs in its own process: GDAL reads some remote headers with the GIL held, so a
    server thread in the test process could not answer them (a deadlock until the timeout).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.log = root.parent / "requests.log"
        self.log.write_text("")
        self.proc = subprocess.Popen([sys.executable, "-c", _SERVER, str(root), str(self.log)],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())

    @property
    def requests(self) -> list[tuple[str, str, str | None]]:
        """(method, path, Range) of every request so far."""
        rows = [line.split("\t") for line in self.log.read_text().splitlines() if line]
        return [(m, p, r or None) for m, p, r in rows]

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def ranges(self, name: str) -> list[str]:
        return [r for m, p, r in self.requests if p.endswith(name) and m == "GET" and r]

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.fixture
def server(tmp_path, monkeypatch):
    """A range-answering HTTP server on 127.0.0.1 (never a proxy, never another host)."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy",
                "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    root = tmp_path / "www"
    root.mkdir()
    srv = RangeServer(root)
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture(autouse=True)
def _gdal_remote_env():
    """No retries and a short timeout for GDAL's HTTP reads (the server is local)."""
    with rasterio.Env(GDAL_HTTP_MAX_RETRY="0", GDAL_HTTP_TIMEOUT="20"):
        yield


def _scene(h=150, w=170, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(3, h, w), dtype=np.uint8)


def _cog(path: Path, data: np.ndarray, *, transform=None, **profile) -> Path:
    c, h, w = data.shape
    with rasterio.open(path, "w", driver="COG", width=w, height=h, count=c,
                       dtype=data.dtype.name, crs="EPSG:32633", blocksize=128,
                       transform=transform or from_origin(500000.0, 4000000.0, 2.0, 2.0),
                       **profile) as ds:
        ds.write(data)
    return path


def _model() -> ConvStandIn:
    return ConvStandIn(weight=[0.7, -1.3, 0.4], bias=0.1)


def _predict(scene, out, **kw):
    return predict_scenes(scene, out, model=_model(), tile=64, batch_size=2,
                          prob_dtype="float32", **kw)


def _same_outputs(a: Path, b: Path, pa: Path, pb: Path) -> None:
    with rasterio.open(pa) as x, rasterio.open(pb) as y:
        np.testing.assert_array_equal(x.read(1), y.read(1))
        assert x.transform == y.transform and x.crs == y.crs
    ga = pyogrio.read_dataframe(a, layer="landslides")
    gb = pyogrio.read_dataframe(b, layer="landslides")
    assert len(ga) == len(gb) > 0
    assert all(g.equals(h) for g, h in zip(ga.geometry, gb.geometry, strict=True))
    np.testing.assert_allclose(ga.area_m2, gb.area_m2)


def test_cog_url_predicts_like_the_local_file_by_range_requests(tmp_path, server):
    data = _scene()
    cog = _cog(server.root / "scene.tif", data)
    url = server.url("scene.tif")
    _predict(cog, tmp_path / "local.gpkg", prob_out=tmp_path / "local.tif")
    remote = _predict(url, tmp_path / "remote.gpkg", prob_out=tmp_path / "remote.tif")
    _same_outputs(tmp_path / "local.gpkg", tmp_path / "remote.gpkg", tmp_path / "local.tif",
                  tmp_path / "remote.tif")
    ranges = server.ranges("scene.tif")
    assert ranges, f"GDAL made no range requests: {server.requests}"
    assert all(r.startswith("bytes=") for r in ranges)
    s = remote.scenes[0]
    assert s.scene == "scene.tif" and s.path == url
    run = pyogrio.read_dataframe(tmp_path / "remote.gpkg", layer="runs").iloc[0]
    assert run["path"] == url
    with rasterio.open(tmp_path / "remote.tif") as ds:
        assert ds.tags()["SCENE"] == "scene.tif"


def test_stac_item_with_one_asset_per_band_is_stacked(tmp_path, server):
    data = _scene(seed=1)
    reference = write_tif(tmp_path / "rgb.tif", data, transform=from_origin(
        500000.0, 4000000.0, 2.0, 2.0))
    # assets in another order than the model's bands, found by common_name / key
    for i, band in enumerate(("B04", "B03", "B02")):  # red, green, blue
        _cog(server.root / f"{band}.tif", data[i:i + 1])
    item = {
        "type": "Feature", "stac_version": "1.0.0", "id": "S2_TEST_ITEM",
        "properties": {"platform": "sentinel-2a", "datetime": "2024-01-01T00:00:00Z"},
        "geometry": None, "links": [],
        "assets": {
            "thumbnail": {"href": "thumb.png", "type": "image/png", "roles": ["thumbnail"]},
            "blue": {"href": "B02.tif", "type": "image/tiff; application=geotiff",
                     "eo:bands": [{"name": "B02", "common_name": "blue"}]},
            "B04": {"href": "./B04.tif", "type": "image/tiff; application=geotiff"},
            "green": {"href": server.url("B03.tif"), "roles": ["data"],
                      "bands": [{"name": "B03", "eo:common_name": "green"}]},
            "metadata": {"href": "meta.xml", "type": "application/xml"},
        },
    }
    (server.root / "item.json").write_text(json.dumps(item))
    local = _predict(reference, tmp_path / "local.gpkg", prob_out=tmp_path / "local.tif")
    remote = _predict(server.url("item.json"), tmp_path / "remote.gpkg",
                      prob_out=tmp_path / "remote.tif")
    _same_outputs(tmp_path / "local.gpkg", tmp_path / "remote.gpkg", tmp_path / "local.tif",
                  tmp_path / "remote.tif")
    assert remote.scenes[0].scene == "S2_TEST_ITEM" and local.polygons == remote.polygons
    assert server.ranges("B04.tif") and server.ranges("B02.tif")
    # a STAC API's item URL has no suffix: the server's JSON answer tells
    (server.root / "items").mkdir()
    item["assets"]["B04"]["href"] = server.url("B04.tif")
    item["assets"]["blue"]["href"] = server.url("B02.tif")
    (server.root / "items" / "S2_TEST_ITEM").write_text(json.dumps(item))
    src = open_source(server.url("items/S2_TEST_ITEM"), bands=["red", "green", "blue"])
    assert isinstance(src, RemoteScene) and src.assets == (("B04", 1), ("green", 1),
                                                          ("blue", 1))
    with rasterio.open(src) as ds:  # the VRT names its bands
        assert ds.descriptions == ("red", "green", "blue")
        assert [c.name for c in ds.colorinterp] == ["red", "green", "blue"]
    src.close()


def test_local_stac_item_with_a_visual_asset(tmp_path):
    data = _scene(seed=2)
    _cog(tmp_path / "tci.tif", data)
    item = {"type": "Feature", "id": "visual_item", "properties": {}, "geometry": None,
            "assets": {"visual": {"href": "tci.tif", "type": "image/tiff",
                                  "roles": ["visual"]},
                       "B04": {"href": "b04_missing.tif", "type": "image/tiff"}}}
    (tmp_path / "item.json").write_text(json.dumps(item))
    src = open_source(tmp_path / "item.json", bands=["red", "green", "blue"], dtype="uint8")
    assert src.gdal_path == str(tmp_path / "tci.tif")  # read directly, no VRT
    assert set(src.local_files) == {tmp_path / "item.json", (tmp_path / "tci.tif").resolve()}
    _predict(tmp_path / "item.json", tmp_path / "stac.gpkg", prob_out=tmp_path / "stac.tif")
    _predict(tmp_path / "tci.tif", tmp_path / "tci.gpkg", prob_out=tmp_path / "tci_p.tif")
    _same_outputs(tmp_path / "tci.gpkg", tmp_path / "stac.gpkg", tmp_path / "tci_p.tif",
                  tmp_path / "stac.tif")
    # the Item's local asset is an input: never overwritten
    with pytest.raises(LandslideError, match="is an input"):
        _predict(tmp_path / "item.json", tmp_path / "x.gpkg", prob_out=tmp_path / "tci.tif",
                 overwrite=True)


def test_remote_errors_are_one_line(tmp_path, server):
    (server.root / "notraster.tif").write_text("hello, not a TIFF\n" * 100)
    (server.root / "collection.json").write_text(json.dumps({"type": "Collection", "id": "c"}))
    (server.root / "empty.json").write_text(json.dumps(
        {"type": "Feature", "id": "empty", "assets": {
            "thumb": {"href": "t.png", "type": "image/png", "roles": ["thumbnail"]}}}))
    cases = [
        (server.url("missing.tif"), "404"),
        (server.url("notraster.tif"), "cannot read the remote scene"),
        (server.url("missing.json"), "HTTP 404"),
        (server.url("collection.json"), "not a STAC Item"),
        (server.url("empty.json"), "no usable asset for band red, green, blue"),
    ]
    for i, (scene, message) in enumerate(cases):
        out = tmp_path / f"out{i}.gpkg"
        with pytest.raises(DataError) as err:
            _predict(scene, out)
        text = str(err.value)
        assert message in text and "\n" not in text, text
        assert not out.exists()


def test_cli_reads_a_url(tmp_path, server, run_cli, tiny_checkpoint):
    _cog(server.root / "cli scene.tif", _scene(h=70, w=80, seed=3))
    url = server.url("cli%20scene.tif")
    out = tmp_path / "cli.gpkg"
    look = tmp_path / "cli.png"
    res = run_cli("predict", url, "--out", out, "--tile", "64", "--json", "-q",
                  "--model", tiny_checkpoint, "--quicklook", look)
    assert res.exit_code == 0, res.stderr
    assert look.stat().st_size > 0  # drawn from the remote scene too
    data = json.loads(res.stdout)
    assert data["scenes"][0]["path"] == url and data["scenes"][0]["scene"] == "cli scene.tif"
    assert out.exists() and server.ranges("cli%20scene.tif")
    missing = run_cli("predict", server.url("nope.tif"), "--out", tmp_path / "n.gpkg")
    assert missing.exit_code != 0 and len(missing.stderr.strip().splitlines()) == 1


def test_urls_are_inputs_that_never_collide(tmp_path):
    url = "https://example.invalid/data/scene.tif"
    assert is_url(url) and is_url("HTTP://x/y") and not is_url(tmp_path / "scene.tif")
    assert same_file(url, url) and not same_file(url, tmp_path / "scene.tif")
    target = tmp_path / "scene.tif"
    target.write_bytes(b"old")
    assert check_target(target, overwrite=True, inputs=[url]) == target
