"""Test-time augmentation (landslide_cli.tta): the dihedral transforms, the averaging wrapper
around any backend (stand-ins, torch, ONNX Runtime) and --tta through predict and eval."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from landslide_cli.errors import LandslideError
from landslide_cli.preprocess import InputSpec
from landslide_cli.tta import D4, FLIPS, TTABackend, check_tta, transforms, tta_of, with_tta

TILE = 32


class PixelBackend:
    """A pixelwise stand-in (1x1 convolution + sigmoid): equivariant to every flip and turn."""

    name = "pixel"
    device = "cpu"
    model_name = "pixel"
    model_sha256 = "0" * 64
    fixed_tile: int | None = None

    def __init__(self) -> None:
        self.spec = InputSpec(tile=TILE)
        self.threshold = 0.5
        self.metadata: dict = {}
        self.calls: list[tuple[int, ...]] = []

    def predict(self, batch: np.ndarray) -> np.ndarray:
        self.calls.append(tuple(batch.shape))
        z = 1.5 * batch[:, 0] - 0.7 * batch[:, 1] + 0.3 * batch[:, 2] - 0.2
        return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)


class SkewedBackend(PixelBackend):
    """Not equivariant: the pixelwise score plus a fixed ramp down the rows and across the
    columns (a model that prefers one corner), and a 3-pixel shift to the right."""

    name = "skewed"

    def predict(self, batch: np.ndarray) -> np.ndarray:
        self.calls.append(tuple(batch.shape))
        h, w = batch.shape[-2:]
        ramp = np.linspace(-2, 1, h)[:, None] + np.linspace(0, 3, w)[None, :] ** 2 / 3
        z = np.roll(1.5 * batch[:, 0] - 0.7 * batch[:, 1], 3, axis=-1) + ramp
        return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)


def _batch(n: int = 2, h: int = TILE, w: int = TILE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, h, w)).astype(np.float32)


# --------------------------------------------------------------------------- transforms


def test_the_transforms_are_the_dihedral_group_and_invert_exactly():
    x = _batch(1, 5, 5)
    images = {t.apply(x).tobytes() for t in D4}
    assert len(D4) == 8 and len(images) == 8  # 8 distinct images of a generic square
    assert len(FLIPS) == 4 and set(FLIPS) <= set(D4)
    for t in D4:
        assert np.array_equal(t.invert(t.apply(x)), x), t.name
    # the flips mode is exactly identity, left-right, up-down and both
    expected = [x, x[..., ::-1], x[..., ::-1, :], x[..., ::-1, ::-1]]
    for t, want in zip(FLIPS, expected, strict=True):
        assert np.array_equal(t.apply(x), want), t.name
    assert [t.name for t in FLIPS] == ["identity", "hflip", "vflip", "rot180"]


def test_non_square_inputs_use_only_the_transforms_that_keep_the_shape():
    assert transforms("d4", 6, 6) == D4
    kept = transforms("d4", 6, 9)
    assert len(kept) == 4 and set(kept) == set(FLIPS)
    assert transforms("flips", 6, 9) == FLIPS
    be = PixelBackend()
    out = with_tta(be, "d4").predict(_batch(2, 6, 9))
    assert out.shape == (2, 6, 9) and len(be.calls) == 4
    assert all(shape == (2, 3, 6, 9) for shape in be.calls)


def test_mode_names_and_errors():
    assert [check_tta(m) for m in ("none", "FLIPS", "D4", "dihedral", "flip")] == [
        "none", "flips", "d4", "d4", "flips"]
    with pytest.raises(LandslideError, match="choose one of: none, flips, d4"):
        check_tta("rot45")
    be = PixelBackend()
    assert with_tta(be, "none") is be and with_tta(be, None) is be and tta_of(be) == "none"


def test_the_wrapper_keeps_the_backend_attributes():
    from landslide_cli.backends import Backend

    be = PixelBackend()
    wrapped = with_tta(be, "d4")
    assert isinstance(wrapped, TTABackend) and isinstance(wrapped, Backend)
    assert (wrapped.name, wrapped.model_name, wrapped.spec, wrapped.fixed_tile) == (
        "pixel", "pixel", be.spec, None)
    assert wrapped.inner is be and tta_of(wrapped) == "d4"
    with pytest.raises(AttributeError):
        _ = wrapped.no_such_attribute


# --------------------------------------------------------------------------- averaging


@pytest.mark.parametrize("mode", ["flips", "d4"])
def test_an_equivariant_model_gives_the_same_probabilities(mode):
    be = PixelBackend()
    x = _batch(3)
    plain = be.predict(x)
    out = with_tta(be, mode).predict(x)
    assert out.dtype == np.float32 and out.shape == plain.shape
    np.testing.assert_allclose(out, plain, atol=1e-6)
    assert len(be.calls) == 1 + len(transforms(mode))


def _by_hand(predict, x: np.ndarray, mode: str) -> np.ndarray:
    """The mean of ``predict`` over the transforms, written out with numpy's flips/turns."""
    ax = (-2, -1)
    pairs = [  # (transform of the input, the inverse for the output)
        (lambda a: a, lambda p: p),
        (lambda a: np.flip(a, -1), lambda p: np.flip(p, -1)),
        (lambda a: np.flip(a, -2), lambda p: np.flip(p, -2)),
        (lambda a: np.flip(a, ax), lambda p: np.flip(p, ax)),
    ]
    if mode == "d4":
        pairs += [
            (lambda a: np.rot90(a, 1, ax), lambda p: np.rot90(p, 3, ax)),
            (lambda a: np.rot90(a, 3, ax), lambda p: np.rot90(p, 1, ax)),
            (lambda a: np.swapaxes(a, -1, -2), lambda p: np.swapaxes(p, -1, -2)),
            (lambda a: np.rot90(np.swapaxes(a, -1, -2), 2, ax),
             lambda p: np.swapaxes(np.rot90(p, 2, ax), -1, -2)),
        ]
    preds = [back(predict(np.ascontiguousarray(fwd(x)))).astype(np.float64)
             for fwd, back in pairs]
    return np.mean(preds, axis=0)


@pytest.mark.parametrize("mode", ["flips", "d4"])
def test_a_non_equivariant_model_gives_the_hand_computed_average(mode):
    be = SkewedBackend()
    x = _batch(2)
    out = with_tta(be, mode).predict(x)
    want = _by_hand(be.predict, x, mode)
    np.testing.assert_allclose(out, want, atol=1e-6)
    assert np.abs(out - be.predict(x)).max() > 0.05  # the augmentation did change something


def test_a_non_square_batch_averages_the_four_shape_keeping_transforms():
    be = SkewedBackend()
    x = _batch(2, 12, 20)
    np.testing.assert_allclose(with_tta(be, "d4").predict(x), _by_hand(be.predict, x, "flips"),
                               atol=1e-6)


def test_eval_fixed_tile_windows_go_through_the_augmentation():
    """``eval`` with a fixed-tile backend: each square window is augmented."""
    from landslide_cli.evaluate import predict_tiles

    be = PixelBackend()
    be.fixed_tile = 16
    x = _batch(2, 20, 24)
    np.testing.assert_allclose(predict_tiles(with_tta(be, "d4"), x), predict_tiles(be, x),
                               atol=1e-6)
    assert {shape[-2:] for shape in be.calls} == {(16, 16)}


# --------------------------------------------------------------------------- torch and ONNX


@pytest.fixture(scope="module")
def tiny64(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # tests/conftest.py by path: a bare `import conftest` may find another folder's conftest
    import importlib.util

    spec = importlib.util.spec_from_file_location("_tests_root_conftest",
                                                  Path(__file__).with_name("conftest.py"))
    assert spec is not None and spec.loader is not None
    root_conftest = sys.modules.get(spec.name) or importlib.util.module_from_spec(spec)
    if spec.name not in sys.modules:
        sys.modules[spec.name] = root_conftest  # (dataclasses look their module up)
        spec.loader.exec_module(root_conftest)
    return root_conftest.make_checkpoint(tmp_path_factory.mktemp("tta") / "tiny64.safetensors",
                           input=InputSpec(tile=64).to_dict())


def test_torch_and_onnx_agree_with_tta(tiny64):
    from landslide_cli.backends import TorchBackend, open_backend
    from landslide_cli.export import export_onnx

    onnx_path = export_onnx(tiny64, tiny64.with_suffix(".onnx"), check_parity=False).path
    torch_b = TorchBackend(tiny64, device="cpu", precision="fp32")
    onnx_b = open_backend(onnx_path, device="cpu")
    x = np.random.default_rng(1).standard_normal((2, 3, 64, 64)).astype(np.float32)
    p_torch = with_tta(torch_b, "d4").predict(x)
    p_onnx = with_tta(onnx_b, "d4").predict(x)
    assert np.abs(p_torch - p_onnx).max() <= 1e-4
    np.testing.assert_allclose(p_torch, _by_hand(torch_b.predict, x, "d4"), atol=1e-5)
    assert np.abs(p_torch - torch_b.predict(x)).max() > 1e-4  # a real model is not equivariant


# --------------------------------------------------------------------------- predict and eval


def _scene(path: Path, h: int = 48, w: int = 56, seed: int = 0) -> Path:
    import rasterio
    from rasterio.transform import from_origin

    data = np.random.default_rng(seed).integers(0, 255, (3, h, w), dtype=np.uint8)
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=3, dtype="uint8",
                       crs="EPSG:32633", transform=from_origin(500000, 4000000, 2, 2)) as ds:
        ds.write(data)
    return path


def test_predict_with_an_equivariant_model_gives_the_same_map(tmp_path):
    import rasterio

    from landslide_cli.predict import predict_scenes

    scene = _scene(tmp_path / "scene.tif")
    maps = {}
    for mode in ("none", "d4"):
        prob = tmp_path / f"{mode}.tif"
        summary = predict_scenes(scene, tmp_path / f"{mode}.gpkg", model=PixelBackend(),
                                 tile=TILE, overlap=0.25, prob_out=prob, prob_dtype="float32",
                                 tta=mode)
        assert summary.tta == mode and summary.to_dict()["tta"] == mode
        with rasterio.open(prob) as ds:
            maps[mode] = ds.read(1)
    np.testing.assert_allclose(maps["d4"], maps["none"], atol=1e-6)


def test_cli_predict_tta_d4_is_recorded(run_cli, tiny_checkpoint, tmp_path):
    import pyogrio

    scene = _scene(tmp_path / "scene.tif")
    out = tmp_path / "slides.gpkg"
    res = run_cli("predict", scene, "--out", out, "--model", tiny_checkpoint, "--device", "cpu",
                  "--tile", TILE, "--tta", "d4", "--json", "-q")
    assert res.exit_code == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["tta"] == "d4" and summary["adapt_bn"] is None
    runs = pyogrio.read_dataframe(out, layer="runs")
    assert runs.tta.iloc[0] == "d4" and int(runs.adapt_bn_windows.iloc[0]) == 0
    res = run_cli("predict", scene, "--out", tmp_path / "x.gpkg", "--model", tiny_checkpoint,
                  "--tta", "rot45")
    assert res.exit_code == 1 and "rot45" in res.stderr and "d4" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "x.gpkg").exists()


def _tile_folder(root: Path, count: int = 3, h: int = 36, w: int = 40) -> Path:
    import rasterio

    rng = np.random.default_rng(3)
    for folder in ("img", "mask"):
        (root / folder).mkdir(parents=True)
    for k in range(count):
        mask = np.zeros((h, w), dtype=np.uint8)
        mask[5:20, 8:25] = 1
        image = rng.integers(0, 120, (3, h, w), dtype=np.uint8)
        image[0][mask > 0] = 210
        for folder, arr in (("img", image), ("mask", mask[None])):
            with rasterio.open(root / folder / f"t{k}.tif", "w", driver="GTiff", width=w,
                               height=h, count=arr.shape[0], dtype="uint8") as ds:
                ds.write(arr)
    return root


def test_cli_eval_tta_d4_on_non_square_tiles(run_cli, tiny_checkpoint, tmp_path):
    root = _tile_folder(tmp_path / "tiles")
    out = tmp_path / "report.json"
    res = run_cli("eval", "--dataset", "folder", "--root", root, "--split", "all", "--model",
                  tiny_checkpoint, "--device", "cpu", "--tta", "d4", "--json", out)
    assert res.exit_code == 0, res.stderr
    assert "TTA d4" in res.stdout
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["model"]["tta"] == "d4" and report["model"]["adapt_bn"] is None
    assert report["tiles"] == 3


def test_evaluate_tta_equals_hand_computed_average(tmp_path):
    """evaluate(tta=...) scores the averaged probabilities (checked through the PR histogram
    of a non-equivariant stand-in)."""
    from landslide_cli.data import open_dataset
    from landslide_cli.evaluate import evaluate
    from landslide_cli.metrics import PRHistogram
    from landslide_cli.preprocess import normalize

    root = _tile_folder(tmp_path / "tiles", count=2, h=24, w=24)
    tiles = open_dataset("folder", root, split="all")
    report = evaluate(SkewedBackend(), tiles, tta="flips")
    assert report.model["tta"] == "flips"
    want = PRHistogram(1000)
    for i in range(len(tiles)):
        raw, mask = tiles.read(i)
        prob = _by_hand(SkewedBackend().predict, normalize(raw[None], InputSpec()), "flips")
        want.update(prob[0].astype(np.float32), mask)
    assert report.histogram.best_f1() == want.best_f1()

