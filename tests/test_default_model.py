"""The embedded default model: present, self-describing, small, and it runs."""

from __future__ import annotations

import json

import numpy as np
import torch

from landslide_cli.backends import open_backend
from landslide_cli.checkpoint import read_metadata
from landslide_cli.zoo.loading import DEFAULT_MODEL, load_model, models_dir, shipped_models


def test_default_model_is_shipped_with_card_split_and_recipe():
    shipped = shipped_models()
    assert DEFAULT_MODEL in shipped
    path = shipped[DEFAULT_MODEL]
    assert path.stat().st_size <= 25 * 1024 * 1024
    folder = models_dir()
    for suffix in (".md", ".yaml", ".split.json"):
        assert (folder / f"{DEFAULT_MODEL}{suffix}").is_file()
    card = (folder / f"{DEFAULT_MODEL}.md").read_text(encoding="utf-8")
    for region in ("sichuan", "bijie", "hokkaido"):
        assert region in card.lower()
    split = json.loads((folder / f"{DEFAULT_MODEL}.split.json").read_text(encoding="utf-8"))
    assert not set(split["train"]) & set(split["val"])


def test_default_model_metadata_is_complete():
    meta = read_metadata(shipped_models()[DEFAULT_MODEL])
    assert meta.kind == "segmenter"
    assert meta.name == DEFAULT_MODEL
    assert meta.arch.backbone == "pvt_v2_b0" and meta.arch.decoder == "dcf"
    spec = meta.input_spec
    assert spec.bands == ["red", "green", "blue"] and spec.scale == 255 and spec.dtype == "uint8"
    assert 0.0 < meta.threshold < 1.0
    assert meta.classes == ["background", "landslide"]
    assert meta.training and meta.metrics
    per_region = json.dumps(meta.metrics)
    for region in ("sichuan", "bijie", "hokkaido", "amunet_uav"):
        assert region in per_region
    # v3's recipe (issue #11): fixed normalization, the red-green index as a fourth input
    # channel, training percentiles for --rescale auto, and a threshold from the
    # leave-one-source-out rule rather than the validation tiles' best F1
    assert spec.normalization == "fixed"
    assert spec.derived == ["rg"] and spec.model_channels == 4 and meta.arch.in_chans == 4
    rule = meta.training["threshold_rule"]
    assert rule["rule"] == "shift" and rule["shift"] < 0
    assert meta.threshold < rule["validation_threshold"]
    assert "leave-one-source-out" in meta.training["threshold_source"]
    low, mid, high = spec.percentile(2), spec.percentile(50), spec.percentile(98)
    assert low and mid and high
    assert all(0 < a < b < c < 255 for a, b, c in zip(low, mid, high, strict=True))
    assert spec.resolution_m == [0.2, 3.0]


def test_previous_default_is_still_shipped_and_unchanged():
    """v1 and v2 stay available by name (inventories made with them can be reproduced)."""
    from landslide_cli.checkpoint import file_sha256

    shipped = shipped_models()
    assert DEFAULT_MODEL == "landslide-pvtb0-dcf-v3"
    v1 = shipped["landslide-pvtb0-dcf-v1"]
    assert file_sha256(v1) == "d49c0205d7b29258d79b56911e693b7403bf780170b9993fad98c781527a8ace"
    assert read_metadata(v1).input_spec.normalization == "fixed"
    v2 = shipped["landslide-pvtb0-dcf-v2"]
    assert file_sha256(v2) == "0055b1f0f6c33c99bc41a7df383a9b224684f1ecd6420b78bd114da9154be42c"
    assert read_metadata(v2).input_spec.normalization == "tile"
    for model in ("landslide-pvtb0-dcf-v1", "landslide-pvtb0-dcf-v2", DEFAULT_MODEL):
        assert shipped[model].stat().st_size <= 32 * 1024 * 1024
    card = (models_dir() / f"{DEFAULT_MODEL}.md").read_text(encoding="utf-8")
    for name in ("landslide-pvtb0-dcf-v1", "landslide-pvtb0-dcf-v2", "baseline:rg"):
        assert name in card
    assert "leave-one-source-out" in card.lower()


def test_default_model_forward_pass_and_default_resolution():
    loaded = load_model(None)
    assert loaded.name == DEFAULT_MODEL
    torch.manual_seed(0)
    x = torch.randn(2, loaded.meta.input_spec.model_channels, 96, 80)
    with torch.no_grad():
        logits = loaded.model(x)
    assert logits.shape == (2, 2, 96, 80)
    assert torch.isfinite(logits).all()
    backend = open_backend(None, device="cpu")
    prob = backend.predict(backend.spec.normalize(np.full((1, 3, 64, 64), 90, np.uint8)))
    assert prob.shape == (1, 64, 64) and ((prob >= 0) & (prob <= 1)).all()


def test_default_model_separates_a_real_landslide_tile(shared_data):
    """On a real validation tile the model must score landslide pixels above background."""
    from landslide_cli.data import open_dataset

    split = models_dir() / f"{DEFAULT_MODEL}.split.json"
    tiles = open_dataset("folder", shared_data / "landslides", split="val", split_file=split)
    backend = open_backend(None, device="cpu")
    idx = next(i for i, s in enumerate(tiles) if s.region == "hokkaido")
    image, mask = tiles.read(idx)
    prob = backend.predict(backend.spec.normalize(image[None]))[0]
    assert prob[mask == 1].mean() > prob[mask == 0].mean() + 0.2


def test_torch_backend_runs_channels_last_with_the_contiguous_models_output(tiny_checkpoint):
    """TorchBackend converts weights and inputs to channels-last (faster oneDNN kernels);
    in fp32 the probabilities equal the plain contiguous model's."""
    from landslide_cli.backends import TorchBackend
    from landslide_cli.zoo.loading import load_model

    be = TorchBackend(tiny_checkpoint, device="cpu", precision="fp32")
    convs = [m for m in be.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(m.weight.is_contiguous(memory_format=torch.channels_last)
                         for m in convs if m.weight.shape[-1] > 1)
    plain = load_model(tiny_checkpoint, device=torch.device("cpu")).model.eval()
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64), dtype=np.float32)
    with torch.inference_mode():
        want = torch.softmax(plain(torch.from_numpy(x)), dim=1)[:, 1].numpy()
    np.testing.assert_allclose(be.predict(x), want, atol=1e-5)
