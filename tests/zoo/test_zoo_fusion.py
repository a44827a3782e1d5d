"""Late fusion with a colour index: InputSpec ``derived`` channels, Architecture ``fusion``,
``landslide fuse``, and the fused model through torch, ONNX and eval."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from landslide_cli.baselines import BaselineBackend, derived_channels, red_green
from landslide_cli.checkpoint import load_checkpoint, read_metadata
from landslide_cli.errors import LandslideError
from landslide_cli.preprocess import InputSpec, normalize
from landslide_cli.zoo.fusion import fuse_checkpoint
from landslide_cli.zoo.loading import load_model
from landslide_cli.zoo.spec import Architecture


def _raw(seed: int = 0, n: int = 2, size: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3, size, size), dtype=np.uint8)


def test_derived_channel_is_the_index_of_the_raw_bands() -> None:
    raw = _raw()
    for normalization in ("fixed", "tile"):
        spec = InputSpec(normalization=normalization, derived=["rg"])
        x = normalize(raw, spec)
        assert x.shape == (2, 4, 64, 64) and spec.model_channels == 4
        base = normalize(raw, InputSpec(normalization=normalization))
        np.testing.assert_array_equal(x[:, :3], base)  # the bands are untouched
        r, g = raw[:, 0].astype(np.float64) / 255, raw[:, 1].astype(np.float64) / 255
        expected = np.clip(0.5 * ((r - g) / (r + g + 1e-6) + 1.0), 0, 1)
        np.testing.assert_allclose(x[:, 3], expected, atol=1e-5)


def test_derived_channel_finds_bands_by_name_and_zeroes_invalid_pixels() -> None:
    raw = _raw(1, n=1)[0]
    bgr = raw[::-1].copy()  # blue, green, red order
    spec = InputSpec(bands=["blue", "green", "red"], derived=["rg"])
    valid = np.ones(raw.shape[1:], bool)
    valid[:8] = False
    out = derived_channels(bgr, spec, valid)
    rgb = raw.astype(np.float32) / 255
    expected = np.clip(red_green(rgb[0], rgb[1], rgb[2]), 0, 1)
    np.testing.assert_allclose(out[0, 8:], expected[8:], atol=1e-6)
    assert (out[0, :8] == 0).all()


def test_derived_names_are_validated() -> None:
    assert InputSpec(derived=["red_green"]).derived == ["rg"]  # alias -> registered name
    with pytest.raises(LandslideError, match="nope"):
        InputSpec(derived=["nope"])
    with pytest.raises(LandslideError, match="red, green and blue"):
        InputSpec(bands=["nir"], mean=[0.5], std=[0.2], derived=["rg"])


def test_architecture_fusion_is_validated() -> None:
    arch = Architecture(fusion={"index": "rg", "channel": 3, "weight": 0.25})
    assert arch.input_channels == 4
    assert Architecture.from_dict(arch.to_dict()).fusion == arch.fusion
    with pytest.raises(LandslideError, match="in \\[0, 1\\]"):
        Architecture(fusion={"index": "rg", "channel": 3, "weight": 1.5})
    with pytest.raises(LandslideError, match="input bands"):
        Architecture(fusion={"index": "rg", "channel": 1, "weight": 0.5})
    with pytest.raises(LandslideError, match="expected index"):
        Architecture(fusion={"index": "rg"})


@pytest.fixture(scope="module")
def fused(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from tests.conftest import make_checkpoint

    folder = tmp_path_factory.mktemp("fusion")
    base = make_checkpoint(folder / "base.safetensors", width=16, threshold=0.4,
                           input=InputSpec(normalization="tile", tile=64).to_dict())
    out = folder / "fused.safetensors"
    fuse_checkpoint(base, out, index="rg", weight=0.3, threshold=0.45, note="test")
    return base, out


def test_fused_probability_is_the_mixture(fused: tuple[Path, Path]) -> None:
    base_path, fused_path = fused
    base, model = load_model(base_path), load_model(fused_path)
    raw = _raw(2)
    spec = model.meta.input_spec
    assert spec.derived == ["rg"] and model.meta.threshold == 0.45
    with torch.no_grad():
        p_base = base.model.predict_proba(torch.from_numpy(normalize(raw, base.meta.input_spec)))
        p_fused = model.model.predict_proba(torch.from_numpy(normalize(raw, spec)))
    index = BaselineBackend("baseline:rg").predict(raw.astype(np.float32) / 255)
    expected = 0.7 * p_base.numpy() + 0.3 * index
    np.testing.assert_allclose(p_fused.numpy(), expected, atol=1e-5)
    # same tensors, different metadata
    _, s_base = load_checkpoint(base_path)
    _, s_fused = load_checkpoint(fused_path)
    assert s_base.keys() == s_fused.keys()
    assert all(torch.equal(s_base[k], s_fused[k]) for k in s_base)
    meta = read_metadata(fused_path)
    assert meta.training["fusion"]["weight"] == 0.3
    assert meta.training["fusion"]["base_threshold"] == 0.4


def test_fuse_refuses_bad_requests(fused: tuple[Path, Path], tmp_path: Path) -> None:
    base, out = fused
    with pytest.raises(LandslideError, match="already fused"):
        fuse_checkpoint(out, tmp_path / "twice.safetensors", weight=0.5, threshold=0.5)
    with pytest.raises(LandslideError, match="already exists"):
        fuse_checkpoint(base, out, weight=0.5, threshold=0.5)
    with pytest.raises(LandslideError, match="input of this run"):
        fuse_checkpoint(base, base, weight=0.5, threshold=0.5, overwrite=True)
    with pytest.raises(LandslideError, match=r"\.safetensors"):
        fuse_checkpoint(base, tmp_path / "x.onnx", weight=0.5, threshold=0.5)
    assert not (tmp_path / "twice.safetensors").exists()


def test_fuse_cli(fused: tuple[Path, Path], tmp_path: Path, run_cli) -> None:
    base, _ = fused
    out = tmp_path / "cli.safetensors"
    res = run_cli("fuse", str(base), "--out", str(out), "--weight", "0.5", "--threshold",
                  "0.6", "--index", "exg")
    assert res.exit_code == 0, res.stderr
    meta = read_metadata(out)
    assert meta.architecture["fusion"] == {"index": "exg", "channel": 3, "weight": 0.5}
    bad = run_cli("fuse", str(base), "--out", str(tmp_path / "b.safetensors"), "--weight",
                  "0.5", "--threshold", "0.6", "--index", "nope")
    assert bad.exit_code != 0 and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "b.safetensors").exists()


def test_fused_model_exports_to_onnx_with_parity(fused: tuple[Path, Path], tmp_path: Path
                                                 ) -> None:
    from landslide_cli.backends import open_backend
    from landslide_cli.export import export_onnx

    _, fused_path = fused
    onnx_path = tmp_path / "fused.onnx"
    report = export_onnx(fused_path, onnx_path)
    assert report.to_dict()["parity"]["random_max_diff"] <= 1e-4
    raw = _raw(3)
    torch_be = open_backend(str(fused_path), backend="torch", device="cpu", precision="fp32")
    onnx_be = open_backend(str(onnx_path), backend="onnx", device="cpu")
    assert onnx_be.spec.derived == ["rg"]
    x = normalize(raw, torch_be.spec)
    np.testing.assert_allclose(onnx_be.predict(x), torch_be.predict(x), atol=1e-4)


def test_mismatched_spec_and_fusion_is_refused(fused: tuple[Path, Path], tmp_path: Path
                                               ) -> None:
    from landslide_cli.checkpoint import save_checkpoint

    _, fused_path = fused
    meta, state = load_checkpoint(fused_path)
    meta.input = {**meta.input, "derived": []}
    bad = save_checkpoint(tmp_path / "bad.safetensors", state, meta)
    with pytest.raises(LandslideError, match="input channel"):
        load_model(bad)
