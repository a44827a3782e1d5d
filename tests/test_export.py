"""`landslide export`: ONNX graph, embedded metadata, parity check, atomic output, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

TILE = 64


def _checkpoint(path: Path, *, tile: int = TILE, threshold: float = 0.4) -> Path:
    """A random-init pvt_v2_b0+dcf checkpoint (width 32) whose input spec has ``tile``."""
    from landslide_cli.checkpoint import CheckpointMeta, save_checkpoint
    from landslide_cli.preprocess import InputSpec
    from landslide_cli.zoo import build_segmenter, parse_spec

    torch.manual_seed(1)
    arch = parse_spec("pvt_v2_b0+dcf", decoder_width=32)
    model = build_segmenter(arch)
    meta = CheckpointMeta(kind="segmenter", architecture=arch.to_dict(),
                          input=InputSpec(tile=tile).to_dict(), threshold=threshold,
                          name="tiny-export", metrics={"iou": 0.5})
    return save_checkpoint(path, model.state_dict(), meta)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _checkpoint(tmp_path_factory.mktemp("export") / "tiny64.safetensors")


@pytest.fixture(scope="module")
def exported(ckpt: Path):
    from landslide_cli.export import export_onnx

    return export_onnx(ckpt, ckpt.with_suffix(".onnx"))


def test_cli_export_checker_and_parity(run_cli, ckpt, tmp_path):
    import onnx

    out = tmp_path / "m.onnx"
    res = run_cli("export", ckpt, "--out", out, "--json")
    assert res.exit_code == 0, res.stderr
    report = json.loads(res.stdout)
    assert Path(report["path"]) == out and out.is_file()
    assert report["size_bytes"] == out.stat().st_size > 1_000_000
    assert report["tile"] == TILE and report["opset"] == 17 and report["precision"] == "fp32"
    assert report["parity"]["random_max_diff"] <= 1e-4
    if report["parity"]["real_max_diff"] is not None:  # shared data present
        assert report["parity"]["real_max_diff"] <= 1e-4
        assert report["parity"]["real_sources"]
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto, full_check=True)
    (inp,), (outp,) = proto.graph.input, proto.graph.output
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims == ["batch", 3, TILE, TILE]
    assert inp.type.tensor_type.elem_type == outp.type.tensor_type.elem_type == 1  # float32
    assert len(outp.type.tensor_type.shape.dim) == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_cli_table_summary_and_overwrite(run_cli, ckpt, tmp_path):
    out = tmp_path / "m.onnx"
    out.write_text("keep me")
    res = run_cli("export", ckpt, "--out", out, "--no-parity")
    assert res.exit_code == 1 and "--overwrite" in res.stderr
    assert out.read_text() == "keep me"
    res = run_cli("export", ckpt, "--out", out, "--overwrite", "--static-batch")
    assert res.exit_code == 0, res.stderr
    for word in ("size", "opset", "parity random", "parity real", "time", str(out)):
        assert word in res.stdout
    assert out.stat().st_size > 1_000_000


def test_metadata_embedded(exported, ckpt):
    import onnx

    from landslide_cli.checkpoint import file_sha256, read_metadata
    from landslide_cli.export import read_onnx_metadata

    meta = read_metadata(ckpt)
    doc = read_onnx_metadata(exported.path)
    assert doc["checkpoint"] == json.loads(json.dumps(meta.to_dict()))
    assert doc["source"]["sha256"] == file_sha256(ckpt) == exported.source_sha256
    assert doc["export"]["tile"] == TILE and doc["export"]["precision"] == "fp32"
    props = {p.key: p.value for p in onnx.load(str(exported.path)).metadata_props}
    assert props["landslide.bands"] == "red,green,blue"
    assert props["landslide.tile"] == str(TILE)
    assert float(props["landslide.threshold"]) == pytest.approx(0.4)
    assert props["landslide.architecture"] == "pvt_v2_b0+dcf"
    assert props["landslide.source_sha256"] == exported.source_sha256
    assert json.loads(props["landslide.mean"]) == pytest.approx(meta.input_spec.mean)
    assert props["landslide.classes"] == "background,landslide"


def test_tile_override_and_given_real_tile(ckpt, tmp_path):
    import rasterio

    from landslide_cli.export import export_onnx, read_onnx_metadata

    img = tmp_path / "tile.tif"
    data = np.random.default_rng(0).integers(0, 255, (3, 40, 50), dtype=np.uint8)
    with rasterio.open(img, "w", driver="GTiff", width=50, height=40, count=3, dtype="uint8",
                       crs="EPSG:32654", transform=rasterio.Affine(1, 0, 0, 0, -1, 40)) as dst:
        dst.write(data)
    report = export_onnx(ckpt, tmp_path / "t96.onnx", tile=96, parity_data=img)
    doc = read_onnx_metadata(report.path)
    assert report.tile == 96 and doc["checkpoint"]["input"]["tile"] == 96
    assert doc["checkpoint"]["extra"]["trained_tile"] == TILE
    assert report.parity.real_sources == [str(img)]  # smaller than the tile: padded
    assert report.parity.real_max_diff <= 1e-4


def test_parity_failure_writes_nothing(ckpt, tmp_path, monkeypatch):
    from landslide_cli import export
    from landslide_cli.errors import LandslideError

    monkeypatch.setattr(export, "TOLERANCE", {"fp32": -1.0, "fp16": -1.0})
    out = tmp_path / "bad.onnx"
    with pytest.raises(LandslideError, match="parity check failed") as info:
        export.export_onnx(ckpt, out)
    assert "\n" not in str(info.value)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_fp16_export_parity(ckpt, exported, tmp_path):
    from landslide_cli.export import export_onnx
    from landslide_cli.onnx_backend import OnnxBackend

    try:
        report = export_onnx(ckpt, tmp_path / "h.onnx", fp16=True)
    except ImportError as exc:  # pragma: no cover - depends on the onnxruntime build
        pytest.skip(f"fp16 conversion unavailable: {exc}")
    assert report.precision == "fp16" and report.parity is not None
    assert report.parity.random_max_diff <= 1e-2
    backend = OnnxBackend(report.path, device="cpu")
    x = np.random.default_rng(3).standard_normal((2, 3, TILE, TILE), dtype=np.float32)
    p = backend.predict(x)
    assert p.dtype == np.float32 and p.shape == (2, TILE, TILE)  # io stays float32
    assert report.size_bytes < 0.6 * exported.size_bytes  # fp32 export of the same model


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--opset", "9"], "--opset 9"),
        (["--exporter", "tflite"], "unknown onnx exporter"),
        (["--exporter", "dynamo", "--opset", "17"], "opset 18"),
        (["--out", "/no/such/folder/m.onnx"], "does not exist"),
    ],
)
def test_cli_bad_arguments(run_cli, ckpt, tmp_path, args, message):
    base = ["export", ckpt] + ([] if "--out" in args else ["--out", tmp_path / "m.onnx"])
    res = run_cli(*base, *args)
    assert res.exit_code == 1
    assert message in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_cli_bad_model_files(run_cli, ckpt, exported, tmp_path):
    text = tmp_path / "notes.safetensors"
    text.write_text("hello")
    for model, message in [(text, "not a landslide checkpoint"),
                           (exported.path, "is an ONNX model, not a landslide checkpoint"),
                           (tmp_path / "missing.safetensors", "model not found")]:
        res = run_cli("export", model, "--out", tmp_path / "m.onnx")
        assert res.exit_code == 1, model
        assert message in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "m.onnx").exists()


def test_cli_default_model(run_cli, tmp_path):
    from landslide_cli.zoo.loading import DEFAULT_MODEL, shipped_models

    if DEFAULT_MODEL in shipped_models():
        pytest.skip("a default model is bundled; its export is covered by the checkpoint tests")
    res = run_cli("export", "--out", tmp_path / "m.onnx")
    assert res.exit_code == 1 and "no default model" in res.stderr
    assert not (tmp_path / "m.onnx").exists()


def test_rewrites_change_the_graph_not_the_math(ckpt, exported, tmp_path):
    import onnx

    from landslide_cli.export import export_onnx, read_onnx_metadata

    plain = export_onnx(ckpt, tmp_path / "plain.onnx", optimize=False)
    assert plain.rewrites == [] and plain.parity.random_max_diff <= 1e-4
    assert read_onnx_metadata(plain.path)["export"]["rewrites"] == []
    # the checkpoint loads the torch-only PVTv2, whose token <-> image moves are NHWC<->NCHW
    # permutes already (ORT folds them into its NCHWc reorders): no backbone rewrite is left,
    # and neither graph has (0, 2, 1) token transposes (timm's rewrites: tests/zoo/
    # test_pvt_native.py); the class softmax became a sigmoid
    assert exported.rewrites == ["two-class softmax as sigmoid(l1 - l0)"]
    assert read_onnx_metadata(exported.path)["export"]["rewrites"] == exported.rewrites

    def ops(path: Path) -> list[str]:
        return [n.op_type for n in onnx.load(str(path)).graph.node]

    def perms(path: Path) -> list[tuple[int, ...]]:
        return [tuple(n.attribute[0].ints) for n in onnx.load(str(path)).graph.node
                if n.op_type == "Transpose"]

    for graph in (exported.path, plain.path):
        assert perms(graph).count((0, 2, 1)) == 0
        assert perms(graph).count((0, 3, 1, 2)) >= 8
    assert "Sigmoid" in ops(exported.path)
    assert ops(exported.path).count("Softmax") == ops(plain.path).count("Softmax") - 1


def _refuses(res, message: str) -> None:
    assert res.exit_code == 1 and "Traceback" not in res.stderr, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    assert message in lines[0], res.stderr


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if the export loads a model (the target must be checked first)."""
    import landslide_cli.zoo.loading as loading

    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("model loaded"))


def test_cli_refuses_a_target_that_is_not_an_onnx_file(run_cli, ckpt, tmp_path, no_work):
    for name in ("m.txt", "m.onnx.bak", "model"):
        res = run_cli("export", ckpt, "--out", tmp_path / name)
        _refuses(res, "expected a .onnx file name")
    (tmp_path / "file").write_text("x")
    res = run_cli("export", ckpt, "--out", tmp_path / "file" / "m.onnx")
    _refuses(res, "is not a folder")
    res = run_cli("export", ckpt, "--out", "/nonexistent/dir/m.onnx")
    _refuses(res, "folder /nonexistent/dir does not exist")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_cli_refuses_an_unwritable_folder(run_cli, ckpt, tmp_path, no_work, monkeypatch):
    import os

    locked = tmp_path / "locked"
    locked.mkdir()
    if os.geteuid() != 0:  # root writes anywhere: then only the check itself is exercised
        locked.chmod(0o555)
    else:
        real = Path.write_bytes

        def denied(self, data):
            if self.parent == locked:
                raise PermissionError(13, "Permission denied", str(self))
            return real(self, data)
        monkeypatch.setattr(Path, "write_bytes", denied)
    try:
        res = run_cli("export", ckpt, "--out", locked / "m.onnx")
    finally:
        locked.chmod(0o755)
    _refuses(res, f"cannot write in {locked}")
    assert list(locked.iterdir()) == []


def test_write_failure_is_one_line(ckpt, tmp_path, monkeypatch):
    import landslide_cli.export as export
    from landslide_cli.errors import LandslideError

    def boom(path, write, **kw):
        raise FileNotFoundError(2, "No such file or directory")

    monkeypatch.setattr(export, "atomic_write", boom)
    with pytest.raises(LandslideError, match=r"cannot write .*m\.onnx: No such file"):
        export.export_onnx(ckpt, tmp_path / "m.onnx", check_parity=False)


@pytest.mark.parametrize("tile", ["0", "-64", "16"])
def test_cli_tile_too_small_is_one_line(run_cli, ckpt, tmp_path, tile, no_work):
    res = run_cli("export", ckpt, "--out", tmp_path / "m.onnx", "--tile", tile)
    _refuses(res, f"--tile {tile} is too small")
