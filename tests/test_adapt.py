"""BatchNorm statistics re-estimated on the target data (landslide_cli.adapt, --adapt-bn)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from landslide_cli.adapt import (
    SceneWindows,
    adapt_backend,
    batchnorm_layers,
    choose_tiles,
    choose_windows,
    scene_batches,
)
from landslide_cli.checkpoint import file_sha256
from landslide_cli.errors import DataError, LandslideError
from landslide_cli.preprocess import InputSpec


class ToyBackend:
    """A torch stand-in backend: conv -> dropout -> BatchNorm -> LayerNorm-over-channels."""

    name = "torch"
    device = "cpu"
    model_name = "toy"
    model_sha256 = "0" * 64
    fixed_tile = None

    def __init__(self, model: nn.Module | None = None) -> None:
        torch.manual_seed(0)
        self.model = model or ToyNet()
        self.model.eval()
        self.spec = InputSpec(tile=16)
        self.threshold = 0.5
        self.metadata: dict = {}

    @torch.inference_mode()
    def predict(self, batch: np.ndarray) -> np.ndarray:
        logits = self.model(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)))
        return torch.softmax(logits, dim=1)[:, 1].numpy()


class ToyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bn_in = nn.BatchNorm2d(3)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.drop = nn.Dropout(0.9)  # would wreck the statistics if it ran in training mode
        self.bn = nn.BatchNorm2d(4)
        self.norm = nn.LayerNorm(4)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.drop(self.conv(self.bn_in(x))))
        y = self.norm(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.head(torch.relu(y))


def _target(n: int, seed: int, shift: float = 3.0, size: int = 8) -> np.ndarray:
    """Target-domain batches: far from the (0, 1) statistics the model was built with."""
    rng = np.random.default_rng(seed)
    scale = np.array([0.5, 2.0, 1.0], dtype=np.float32).reshape(1, 3, 1, 1)
    return rng.standard_normal((n, 3, size, size)).astype(np.float32) * scale + shift


def test_running_stats_become_the_target_statistics():
    be = ToyBackend()
    batches = [_target(4, 1), _target(4, 2)]
    adapted, done = adapt_backend(be, iter(batches))
    assert (done.layers, done.windows, done.batches) == (2, 8, 2)
    model = adapted.model
    # first layer: a direct computation on the inputs. momentum=None is the plain average of
    # the per-batch statistics (PyTorch keeps the unbiased variance)
    x = [b.astype(np.float64) for b in batches]
    mean = np.mean([b.mean(axis=(0, 2, 3)) for b in x], axis=0)
    var = np.mean([b.var(axis=(0, 2, 3), ddof=1) for b in x], axis=0)
    np.testing.assert_allclose(model.bn_in.running_mean.numpy(), mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.bn_in.running_var.numpy(), var, rtol=1e-5)
    np.testing.assert_allclose(mean, np.concatenate(x).mean(axis=(0, 2, 3)), atol=1e-9)
    # second layer: its input computed independently, with the first layer normalizing by
    # each batch's own statistics (training mode) and the dropout off (eval mode)
    conv = be.model.conv
    feats = []
    for b in batches:
        t = torch.from_numpy(b).double()
        m, v = t.mean(dim=(0, 2, 3), keepdim=True), t.var(dim=(0, 2, 3), unbiased=False,
                                                           keepdim=True)
        g = be.model.bn_in.weight.double().view(1, -1, 1, 1)
        beta = be.model.bn_in.bias.double().view(1, -1, 1, 1)
        normed = (t - m) / torch.sqrt(v + be.model.bn_in.eps) * g + beta
        feats.append(torch.nn.functional.conv2d(normed, conv.weight.double(),
                                                conv.bias.double(), padding=1).detach())
    mean2 = torch.stack([f.mean(dim=(0, 2, 3)) for f in feats]).mean(0).numpy()
    var2 = torch.stack([f.var(dim=(0, 2, 3)) for f in feats]).mean(0).numpy()
    np.testing.assert_allclose(model.bn.running_mean.numpy(), mean2, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(model.bn.running_var.numpy(), var2, rtol=1e-4)
    assert int(model.bn.num_batches_tracked) == 2


def test_only_batchnorm_buffers_change_and_the_input_backend_is_untouched():
    be = ToyBackend()
    before = {k: v.clone() for k, v in be.model.state_dict().items()}
    adapted, _ = adapt_backend(be, [_target(4, 1)])
    assert adapted is not be and adapted.model is not be.model
    for k, v in be.model.state_dict().items():  # the backend passed in: unchanged
        assert torch.equal(v, before[k]), k
    after = adapted.model.state_dict()
    stats = {f"{n}.{b}" for n in ("bn_in", "bn") for b in ("running_mean", "running_var",
                                                          "num_batches_tracked")}
    for k, v in after.items():
        if k in stats:
            assert not torch.equal(v, before[k]), k
        else:  # every weight, LayerNorm included
            assert torch.equal(v, before[k]), k
    # every module back in eval mode, the momentum restored
    assert not any(m.training for m in adapted.model.modules())
    assert all(bn.momentum == 0.1 for bn in batchnorm_layers(adapted.model))
    # the adapted model normalizes the target data: the first layer's output is ~ N(beta, 1)
    x = torch.from_numpy(_target(4, 1))
    with torch.no_grad():
        y = adapted.model.bn_in(x)
    assert y.mean(dim=(0, 2, 3)).abs().max() < 1e-4
    p_adapted, p_plain = adapted.predict(_target(2, 5)), be.predict(_target(2, 5))
    assert np.abs(p_adapted - p_plain).max() > 1e-3


def test_no_batches_and_no_batchnorm():
    with pytest.raises(DataError, match="no window"):
        adapt_backend(ToyBackend(), [])
    plain = ToyBackend(nn.Sequential(nn.Conv2d(3, 2, 1)))
    same, done = adapt_backend(plain, [_target(2, 1)])
    assert same is plain and done.layers == 0 and "no BatchNorm" in (done.note or "")


def test_other_backends_are_refused_in_one_line(tmp_path):
    from landslide_cli.adapt import check_adapt_request, torch_model

    for ref, backend in [("m.onnx", "auto"), ("m.safetensors", "onnx"), (None, "ONNX")]:
        with pytest.raises(LandslideError, match="--adapt-bn needs the torch backend"):
            check_adapt_request(ref, backend)
    with pytest.raises(LandslideError, match="weight-free baseline"):
        check_adapt_request("baseline:rg")
    check_adapt_request(None, "auto")
    check_adapt_request(tmp_path / "m.safetensors", "torch")

    class Onnx:
        name = "onnx"

    with pytest.raises(LandslideError, match="this model runs on onnx"):
        torch_model(Onnx())


def test_tiny_pvt_decoder_batchnorms_adapt_layernorms_and_the_file_do_not(tiny_checkpoint):
    from landslide_cli.backends import TorchBackend

    digest = file_sha256(tiny_checkpoint)
    be = TorchBackend(tiny_checkpoint, device="cpu")
    before = {k: v.clone() for k, v in be.model.state_dict().items()}
    adapted, done = adapt_backend(be, [_target(2, 1, shift=1.0, size=32)])
    bn_names = {n for n, m in adapted.model.named_modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    assert done.layers == len(bn_names) > 0
    assert all(not n.startswith("backbone") for n in bn_names)  # PVTv2 itself: LayerNorm only
    ln = [n for n, m in adapted.model.named_modules() if isinstance(m, nn.LayerNorm)]
    assert ln
    after = adapted.model.state_dict()
    for k, v in after.items():
        owner = k.rsplit(".", 1)[0]
        if owner in bn_names and k.rsplit(".", 1)[1].startswith(("running", "num_batches")):
            continue
        assert torch.equal(v, before[k]), k
    assert any(not torch.equal(after[k], before[k]) for k in after if "running_mean" in k)
    assert file_sha256(tiny_checkpoint) == digest


# --------------------------------------------------------------------------- windows, tiles


def _scene(path: Path, h: int, w: int, *, nodata_left: bool = False, value: int = 0) -> Path:
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(0)
    data = rng.integers(1, 255, (3, h, w), dtype=np.uint8)
    if nodata_left:
        data[:, :, : w // 2] = 0
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=3, dtype="uint8",
                       crs="EPSG:32633", transform=from_origin(500000, 4000000, 2, 2),
                       nodata=0 if nodata_left else None) as ds:
        ds.write(data)
    return path


def test_windows_are_spread_evenly_over_the_valid_area(tmp_path):
    import rasterio

    from landslide_cli.predict.raster import open_scene
    from landslide_cli.predict.windows import GridLayout

    def scene(info, tile=32):
        return SceneWindows(info, [1, 2, 3], GridLayout(info.height, info.width, tile, 0.0))

    half = scene(open_scene(_scene(tmp_path / "half.tif", 128, 256, nodata_left=True)))
    chosen = choose_windows([half], 4)
    # 4 x 8 grid; the right half (16 windows) is valid; picks 0, 5, 10, 15 of them
    assert chosen == [(0, 0, 4), (0, 1, 5), (0, 2, 6), (0, 3, 7)]
    assert len(choose_windows([half], 100)) == 16
    batches = list(scene_batches([half], chosen, spec=InputSpec(), batch_size=3))
    assert [b.shape for b in batches] == [(3, 3, 32, 32), (1, 3, 32, 32)]
    # prepared by predict's reader: the normalized pixels of the window
    with rasterio.open(half.info.path) as ds:
        raw = ds.read(window=((32, 64), (160, 192)))
    np.testing.assert_allclose(batches[0][1], InputSpec().normalize(raw), atol=1e-6)
    full = scene(open_scene(_scene(tmp_path / "full.tif", 64, 64)))
    both = choose_windows([half, full], 5)
    assert {s for s, _, _ in both} == {0, 1} and len(both) == 5
    path = _scene(tmp_path / "empty.tif", 64, 64, nodata_left=True)
    with rasterio.open(path, "r+") as ds:
        ds.write(np.zeros((3, 64, 64), dtype=np.uint8))
    assert choose_windows([scene(open_scene(path))], 4) == []


def test_tiles_are_chosen_evenly():
    assert choose_tiles(10, 4) == [0, 3, 6, 9]
    assert choose_tiles(3, 64) == [0, 1, 2] and choose_tiles(0, 5) == []


# --------------------------------------------------------------------------- predict, eval, CLI


def test_predict_adapt_bn_is_recorded_and_the_model_file_untouched(run_cli, tiny_checkpoint,
                                                                     tmp_path):
    import pyogrio

    digest = file_sha256(tiny_checkpoint)
    scene = _scene(tmp_path / "scene.tif", 64, 96, nodata_left=True)
    out = tmp_path / "slides.gpkg"
    res = run_cli("predict", scene, "--out", out, "--model", tiny_checkpoint, "--device", "cpu",
                  "--tile", 32, "--adapt-bn", "--adapt-bn-windows", 3, "--tta", "flips",
                  "--json", "-q")
    assert res.exit_code == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["adapt_bn"]["windows"] == 3 and summary["adapt_bn"]["layers"] > 0
    assert summary["tta"] == "flips"
    runs = pyogrio.read_dataframe(out, layer="runs")
    assert int(runs.adapt_bn_windows.iloc[0]) == 3 and runs.tta.iloc[0] == "flips"
    assert file_sha256(tiny_checkpoint) == digest


def test_predict_adapt_bn_changes_the_probabilities_of_an_open_backend_copy(tiny_checkpoint,
                                                                            tmp_path):
    import rasterio

    from landslide_cli.backends import TorchBackend
    from landslide_cli.predict import predict_scenes

    be = TorchBackend(tiny_checkpoint, device="cpu")
    before = {k: v.clone() for k, v in be.model.state_dict().items()}
    scene = _scene(tmp_path / "scene.tif", 48, 48)
    maps = []
    for adapt in (False, True):
        prob = tmp_path / f"p{adapt}.tif"
        predict_scenes(scene, tmp_path / f"o{adapt}.gpkg", model=be, tile=32, prob_out=prob,
                       prob_dtype="float32", adapt_bn=adapt, adapt_bn_windows=4)
        with rasterio.open(prob) as ds:
            maps.append(ds.read(1))
    assert np.abs(maps[0] - maps[1]).max() > 1e-4
    assert all(torch.equal(v, before[k]) for k, v in be.model.state_dict().items())


def test_cli_eval_adapt_bn(run_cli, tiny_checkpoint, tmp_path):
    import rasterio

    root = tmp_path / "tiles"
    for folder in ("img", "mask"):
        (root / folder).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for k in range(3):
        for folder, arr in (("img", rng.integers(0, 255, (3, 32, 32), dtype=np.uint8)),
                            ("mask", (rng.random((1, 32, 32)) > 0.8).astype(np.uint8))):
            with rasterio.open(root / folder / f"t{k}.tif", "w", driver="GTiff", width=32,
                               height=32, count=arr.shape[0], dtype="uint8") as ds:
                ds.write(arr)
    out = tmp_path / "r.json"
    digest = file_sha256(tiny_checkpoint)
    res = run_cli("eval", "--root", root, "--split", "all", "--model", tiny_checkpoint,
                  "--device", "cpu", "--adapt-bn", "--adapt-bn-windows", 2, "--json", out)
    assert res.exit_code == 0, res.stderr
    assert "BatchNorm adapted on 2 tiles" in res.stdout
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["model"]["adapt_bn"]["windows"] == 2 and report["model"]["tta"] == "none"
    assert file_sha256(tiny_checkpoint) == digest


@pytest.mark.parametrize("command", ["predict", "eval"])
def test_cli_adapt_bn_with_onnx_is_one_line(run_cli, tiny_checkpoint, tmp_path, command):
    scene = _scene(tmp_path / "scene.tif", 32, 32)
    args = (["predict", scene, "--out", tmp_path / "x.gpkg"] if command == "predict"
            else ["eval", "--root", tmp_path])
    for extra in (["--model", tiny_checkpoint, "--backend", "onnx"],
                  ["--model", tmp_path / "m.onnx"]):
        res = run_cli(*args, *extra, "--adapt-bn")
        assert res.exit_code == 1, res.stderr
        assert "--adapt-bn needs the torch backend" in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    assert not (tmp_path / "x.gpkg").exists()
