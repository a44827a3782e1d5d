"""OnnxBackend: metadata round trip, parity with TorchBackend, providers, one-line errors."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

TILE = 64


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init pvt_v2_b0+dcf checkpoint (width 32), tile 64, threshold 0.35."""
    from landslide_cli.checkpoint import CheckpointMeta, save_checkpoint
    from landslide_cli.preprocess import InputSpec
    from landslide_cli.zoo import build_segmenter, parse_spec

    torch.manual_seed(2)
    arch = parse_spec("pvt_v2_b0+dcf", decoder_width=32)
    model = build_segmenter(arch)
    spec = InputSpec(tile=TILE, mean=[0.4, 0.5, 0.6], std=[0.2, 0.25, 0.3])
    meta = CheckpointMeta(kind="segmenter", architecture=arch.to_dict(), input=spec.to_dict(),
                          threshold=0.35, name="tiny-ort")
    return save_checkpoint(tmp_path_factory.mktemp("ort") / "tiny.safetensors",
                           model.state_dict(), meta)


@pytest.fixture(scope="module")
def onnx_path(ckpt: Path) -> Path:
    from landslide_cli.export import export_onnx

    return export_onnx(ckpt, ckpt.with_suffix(".onnx"), check_parity=False).path


@pytest.fixture(scope="module")
def static_path(ckpt: Path) -> Path:
    from landslide_cli.export import export_onnx

    out = ckpt.with_name("static.onnx")
    return export_onnx(ckpt, out, dynamic_batch=False, check_parity=False).path


def _batch(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, TILE, TILE), dtype=np.float32)


def test_metadata_round_trip(ckpt, onnx_path):
    from landslide_cli.backends import Backend, TorchBackend, open_backend
    from landslide_cli.checkpoint import file_sha256

    onnx_b = open_backend(onnx_path, device="cpu")  # "auto" picks onnx for .onnx
    torch_b = TorchBackend(ckpt, device="cpu", precision="fp32")
    assert isinstance(onnx_b, Backend) and onnx_b.name == "onnx"
    assert onnx_b.spec == torch_b.spec
    assert onnx_b.threshold == torch_b.threshold == pytest.approx(0.35)
    assert onnx_b.model_name == torch_b.model_name == "tiny-ort"
    assert onnx_b.metadata == torch_b.metadata
    assert onnx_b.model_sha256 == file_sha256(onnx_path) != torch_b.model_sha256
    assert onnx_b.onnx_metadata["source"]["sha256"] == torch_b.model_sha256
    assert onnx_b.fixed_tile == TILE and onnx_b.static_batch is None
    assert onnx_b.providers == ["CPUExecutionProvider"] == [onnx_b.device]


def test_parity_with_torch_backend(ckpt, onnx_path):
    from landslide_cli.backends import TorchBackend, open_backend

    torch_b = TorchBackend(ckpt, device="cpu", precision="fp32")
    onnx_b = open_backend(onnx_path, backend="onnx", device="cpu")
    x = _batch(3)
    p_t, p_o = torch_b.predict(x), onnx_b.predict(x)
    assert p_o.shape == (3, TILE, TILE) and p_o.dtype == np.float32
    assert np.abs(p_t - p_o).max() <= 1e-4
    assert p_o.min() >= 0.0 and p_o.max() <= 1.0
    assert onnx_b.predict(x[:0]).shape == (0, TILE, TILE)


def test_static_batch_is_split(onnx_path, static_path):
    from landslide_cli.onnx_backend import OnnxBackend

    dyn = OnnxBackend(onnx_path, device="cpu")
    static = OnnxBackend(static_path, device="cpu")
    assert static.static_batch == 1
    x = _batch(3, seed=1)
    assert np.abs(static.predict(x) - dyn.predict(x)).max() <= 1e-5


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((2, 4, TILE, TILE), "expects 3 bands"),
        ((2, 3, 32, 32), f"exported for {TILE}x{TILE} tiles, got 32x32"),
        ((3, TILE, TILE), "expects (N, 3, 64, 64) tiles"),
    ],
)
def test_wrong_input_shape(onnx_path, shape, message):
    from landslide_cli.errors import LandslideError
    from landslide_cli.onnx_backend import OnnxBackend

    backend = OnnxBackend(onnx_path, device="cpu")
    with pytest.raises(LandslideError) as info:
        backend.predict(np.zeros(shape, np.float32))
    assert message in str(info.value) and "\n" not in str(info.value)


def _foreign_onnx(path: Path) -> Path:
    """A valid ONNX graph (identity) without landslide metadata."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, TILE, TILE])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3, TILE, TILE])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "foreign", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_bad_model_files(ckpt, tmp_path):
    from landslide_cli.backends import open_backend
    from landslide_cli.errors import LandslideError

    text = tmp_path / "notes.onnx"
    text.write_text("this is not a model\n")
    renamed = tmp_path / "renamed.onnx"
    renamed.write_bytes(ckpt.read_bytes())
    cases = [
        (text, "not a valid ONNX model"),
        (renamed, "not a valid ONNX model"),
        (_foreign_onnx(tmp_path / "foreign.onnx"), "not a landslide ONNX model: metadata missing"),
        (tmp_path / "missing.onnx", "model not found"),
        (ckpt, "is a checkpoint, not an ONNX model"),
    ]
    for path, message in cases:
        with pytest.raises(LandslideError) as info:
            open_backend(path, backend="onnx", device="cpu")
        assert message in str(info.value), path
        assert "\n" not in str(info.value)
    with pytest.raises(LandslideError, match=r"needs an \.onnx file"):
        open_backend(None, backend="onnx")


def test_cuda_request(onnx_path, monkeypatch):
    import onnxruntime as ort

    from landslide_cli.errors import LandslideError
    from landslide_cli.onnx_backend import CUDA, OnnxBackend

    if CUDA in ort.get_available_providers():  # pragma: no cover - GPU build
        backend = OnnxBackend(onnx_path, device="cuda")
        assert backend.providers[0] == CUDA
        return
    with pytest.raises(LandslideError, match="no CUDAExecutionProvider"):
        OnnxBackend(onnx_path, device="cuda")
    # a build that lists CUDA but cannot start it: ORT falls back, and we say so
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, "CPUExecutionProvider"])
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("landslide.onnx")
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # onnxruntime's own notice about the provider
            backend = OnnxBackend(onnx_path, device="auto")
    finally:
        logger.removeHandler(handler)
    assert backend.providers == ["CPUExecutionProvider"]
    assert any("fell back" in r.getMessage() for r in records)


def test_threads_and_session_options(onnx_path):
    from landslide_cli.onnx_backend import OnnxBackend, cpu_cores

    backend = OnnxBackend(onnx_path, device="cpu", threads=1)
    assert backend.session.get_session_options().intra_op_num_threads == 1
    default = OnnxBackend(onnx_path, device="cpu")
    opts = default.session.get_session_options()
    assert opts.intra_op_num_threads == cpu_cores()
    assert "onnx" in default.describe() and "CPUExecutionProvider" in default.describe()


def test_predict_same_geopackage_torch_vs_onnx(shared_data, ckpt, tmp_path, run_cli):
    """Issue requirement: both backends give the same GeoPackage on a real scene."""
    import pyogrio
    import rasterio
    from rasterio.windows import Window

    from landslide_cli.backends import TorchBackend
    from landslide_cli.export import export_onnx
    from landslide_cli.predict import predict_scenes

    onnx_path = export_onnx(ckpt, tmp_path / "t128.onnx", tile=128, check_parity=False).path

    scene = shared_data / "scenes" / "hokkaido_iburi_2018_rgb.tif"
    crop = tmp_path / "crop.tif"
    with rasterio.open(scene) as src:  # a 512x384 piece keeps the test fast
        window = Window(800, 400, 512, 384)
        profile = {**src.profile, "width": 512, "height": 384,
                   "transform": src.transform @ rasterio.Affine.translation(800, 400),
                   "tiled": False}
        profile.pop("blockxsize", None), profile.pop("blockysize", None)
        data = src.read(window=window)
    with rasterio.open(crop, "w", **profile) as dst:
        dst.write(data)
    # a random-init model has no meaningful 0.5 threshold: use its 80th percentile on the crop
    torch_b = TorchBackend(ckpt, device="cpu", precision="fp32")
    probs = torch_b.predict(torch_b.spec.normalize(data[None]))
    thr = round(float(np.quantile(probs, 0.8)), 3)

    ref = predict_scenes(crop, tmp_path / "torch.gpkg", model=torch_b, threshold=thr,
                         tile=128)
    res = run_cli("predict", crop, "--model", onnx_path, "--backend", "onnx", "--device", "cpu",
                  "--threshold", str(thr), "--out", tmp_path / "onnx.gpkg", "--json")
    assert res.exit_code == 0, res.stderr
    assert '"backend": "onnx"' in res.stdout and "CPUExecutionProvider" in res.stdout
    a = pyogrio.read_dataframe(tmp_path / "torch.gpkg", layer="landslides")
    b = pyogrio.read_dataframe(tmp_path / "onnx.gpkg", layer="landslides")
    assert len(a) == ref.polygons >= 20  # enough polygons for the comparison to mean something
    assert len(b) == len(a)
    assert abs(b.area.sum() - a.area.sum()) <= 0.005 * a.area.sum()
    assert abs(b["area_m2"].sum() - a["area_m2"].sum()) <= 0.005 * a["area_m2"].sum()


def test_predict_cli_bad_onnx_models(shared_data, ckpt, tmp_path, run_cli):
    scene = shared_data / "scenes" / "hokkaido_iburi_2018_rgb.tif"
    text = tmp_path / "notes.onnx"
    text.write_text("not a model")
    foreign = _foreign_onnx(tmp_path / "foreign.onnx")
    for model, message in [(text, "not a valid ONNX model"),
                           (foreign, "not a landslide ONNX model: metadata missing"),
                           (ckpt, "is a checkpoint, not an ONNX model")]:
        res = run_cli("predict", scene, "--model", model, "--backend", "onnx",
                      "--out", tmp_path / "x.gpkg")
        assert res.exit_code == 1, model
        assert message in res.stderr and "Traceback" not in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.gpkg").exists()


def test_predict_cli_tile_mismatch(shared_data, onnx_path, tmp_path, run_cli):
    scene = shared_data / "scenes" / "hokkaido_iburi_2018_rgb.tif"
    res = run_cli("predict", scene, "--model", onnx_path, "--tile", "128",
                  "--out", tmp_path / "x.gpkg")
    assert res.exit_code == 1
    assert f"{TILE}x{TILE}" in res.stderr and "Traceback" not in res.stderr


def test_onnx_file_given_to_the_torch_backend_says_so(onnx_path, tmp_path):
    from landslide_cli.backends import open_backend
    from landslide_cli.errors import LandslideError

    renamed = tmp_path / "model.bin"  # recognised by content, not only by suffix
    renamed.write_bytes(onnx_path.read_bytes())
    cases = [(onnx_path, "--backend onnx (or --backend auto)"),
             (_foreign_onnx(tmp_path / "foreign.onnx"), "--backend onnx (or --backend auto)"),
             (renamed, "--backend onnx")]
    for path, hint in cases:
        with pytest.raises(LandslideError) as info:
            open_backend(path, backend="torch", device="cpu")
        msg = str(info.value)
        assert "is an ONNX model" in msg and hint in msg and "\n" not in msg, msg
        assert "header too large" not in msg
    assert "auto" not in str(info.value)  # auto would not pick onnx for a .bin file
    text = tmp_path / "notes.onnx"  # an .onnx name alone does not make it ONNX
    text.write_text("this is not a model\n")
    with pytest.raises(LandslideError, match="not a landslide checkpoint") as info:
        open_backend(text, backend="torch", device="cpu")
    assert "ONNX" not in str(info.value)


def test_predict_cli_onnx_model_with_torch_backend(onnx_path, tmp_path, run_cli):
    scene = Path(__file__).resolve().parent.parent / "examples" / "hokkaido_iburi_2018_rgb.tif"
    out = tmp_path / "x.gpkg"
    res = run_cli("predict", scene, "--model", onnx_path, "--backend", "torch", "--out", out)
    assert res.exit_code == 1 and "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "is an ONNX model" in lines[0] and "--backend onnx" in lines[0]
    assert not out.exists()


def test_unknown_backend_lists_every_choice(run_cli, tmp_path):
    from landslide_cli.backends import BACKENDS, backend_choices, check_backend, open_backend
    from landslide_cli.errors import LandslideError

    assert backend_choices() == ["auto", "torch", "onnx"] and "onnx" in BACKENDS
    assert check_backend("ONNX") == "onnx" and check_backend(" Auto ") == "auto"
    with pytest.raises(LandslideError, match=r"choose one of: auto, torch, onnx$"):
        open_backend(None, backend="tensorflow")
    scene = Path(__file__).resolve().parent.parent / "examples" / "hokkaido_iburi_2018_rgb.tif"
    for cmd in (("predict", scene, "--out", tmp_path / "x.gpkg"),
                ("eval", "--root", tmp_path)):
        res = run_cli(*cmd, "--backend", "tensorflow")
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert res.exit_code == 1 and len(lines) == 1, res.stderr
        assert "unknown backend 'tensorflow'; choose one of: auto, torch, onnx" in lines[0]


def test_backend_registry_does_not_import_onnxruntime():
    import subprocess
    import sys

    code = ("import sys\n"
            "from landslide_cli.backends import BACKENDS, check_backend\n"
            "from landslide_cli.errors import LandslideError\n"
            "assert BACKENDS.names() == ['torch', 'onnx'], BACKENDS.names()\n"
            "try:\n    check_backend('tf')\nexcept LandslideError as e:\n    print(e)\n"
            "assert 'onnxruntime' not in sys.modules and 'onnx' not in sys.modules\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().endswith("choose one of: auto, torch, onnx")
