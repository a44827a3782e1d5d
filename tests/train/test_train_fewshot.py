"""Few-shot adaptation (issue #11 item 4): ``train segment --init <segmentation model>``
fine-tunes the whole model, keeps its architecture, InputSpec and threshold; the ``few-shot``
preset; the committed few-shot split of the shared sources."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
import torch
import yaml

from landslide_cli.checkpoint import CheckpointMeta, load_checkpoint, read_metadata, save_checkpoint
from landslide_cli.errors import LandslideError
from landslide_cli.preprocess import InputSpec
from landslide_cli.train.config import SegmentConfig, given_options, resolve_config
from landslide_cli.train.presets import get_preset

ROOT = Path(__file__).resolve().parents[2]
SPLIT = ROOT / "benchmarks" / "splits" / "few-shot.json"
SOURCES = {"sichuan": 36, "bijie": 36, "hokkaido": 20, "amunet_uav": 642}
#: what docs/training.md documents for --preset few-shot
FEW_SHOT = {"steps": 300, "batch_size": 4, "lr_backbone": 1e-4, "lr_backbone_final": 1e-6,
            "lr_decoder": 1e-4, "lr_decoder_final": 1e-6, "schedule": "cosine",
            "warmup_steps": 20, "weight_decay": 0.01, "grad_clip": 5.0, "val_every": 25}
#: tiny and fast; no --decoder-width: the architecture must come from the init model
RUN = ["--size", "64", "-b", "2", "--num-workers", "0", "--device", "cpu",
       "--train-split", "all"]
INPUT = InputSpec(mean=[0.3, 0.4, 0.5], std=[0.2, 0.25, 0.3], normalization="tile", tile=96,
                  percentiles={"2": [1.0, 2.0, 3.0], "98": [200.0, 210.0, 220.0]}).to_dict()
AUGMENT = {"rot90": False, "flips": True, "color_jitter": 0.2, "scale_jitter": 0.1,
           "photometric": 0.3, "fg_crop": 0.25}


def _init_model(path: Path, *, bands: int = 3, width: int = 16, threshold: float = 0.37) -> Path:
    """A random pvt_v2_b0+dcf segmentation checkpoint as `train segment` writes one."""
    from landslide_cli.zoo import build_segmenter, parse_spec

    torch.manual_seed(3)
    arch = parse_spec("pvt_v2_b0+dcf", decoder_width=width, in_chans=bands)
    spec = dict(INPUT) if bands == 3 else InputSpec(
        bands=[f"b{i}" for i in range(bands)], mean=[0.5] * bands, std=[0.2] * bands).to_dict()
    meta = CheckpointMeta(kind="segmenter", name=path.stem, architecture=arch.to_dict(),
                          input=spec, threshold=threshold,
                          training={"phase": "segment", "size": 48, "augment": AUGMENT,
                                    "sampling": "region"})
    return save_checkpoint(path, build_segmenter(arch).state_dict(), meta)


def _one_line_error(res, text: str) -> None:
    assert res.exit_code == 1 and "Traceback" not in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert text in res.stderr, res.stderr


def test_init_fine_tunes_the_whole_model_and_keeps_its_spec(run_cli, tiny_tiles, tmp_path):
    init = _init_model(tmp_path / "init.safetensors")
    run = tmp_path / "ft"
    res = run_cli("train", "segment", "--data", tiny_tiles, "--init", init, "--out", run,
                  *RUN, "--steps", "2", "--val-split", "none", "--lr-backbone", "1e-3",
                  "--lr-decoder", "1e-3")
    assert res.exit_code == 0, res.stderr
    start = load_checkpoint(init)[1]
    meta, state = load_checkpoint(run / "last.safetensors")
    assert set(state) == set(start)
    from landslide_cli.zoo import build_segmenter

    params = {n for n, _ in build_segmenter(meta.arch).named_parameters()}
    changed = {n for n in params if not torch.equal(state[n], start[n])}
    for part in ("backbone.", "decoder."):  # every parameter of both parts trained
        own = {n for n in params if n.startswith(part)}
        assert own and own <= changed, sorted(own - changed)[:3]
    assert meta.architecture == read_metadata(init).architecture  # width 16, not the default
    assert meta.input == INPUT  # normalization, tile, mean/std and percentiles of the init
    assert meta.threshold == pytest.approx(0.37)  # no validation tiles: the init's threshold
    init_info = meta.training["init"]
    assert init_info["from"] == "segmenter" and init_info["threshold"] == pytest.approx(0.37)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["decoder_width"] == 16 and saved["init"] == str(init)
    # without the preset the run's own augmentation settings apply (defaults here)
    assert meta.training["augment"]["photometric"] == 0.0


def test_preset_inherits_augmentations_repicks_threshold_and_resumes(run_cli, tiny_tiles,
                                                                     tmp_path):
    init = _init_model(tmp_path / "init.safetensors")
    run = tmp_path / "fs"
    common = ["--data", tiny_tiles, "--init", init, *RUN, "--steps", "3", "--val-split", "all",
              "--color-jitter", "0.05"]
    # 4 tiles, batch 2 (flag over the preset's 4): 2 steps per epoch -> 2 epochs
    res = run_cli("train", "segment", "--preset", "few-shot", *common, "--out", run,
                  "--stop-after", "1")
    assert res.exit_code == 0, res.stderr
    assert not (run / "last.safetensors").exists()  # val_every 25: not yet validated
    res = run_cli("train", "segment", "--resume", run, "--device", "cpu")
    assert res.exit_code == 0, res.stderr
    meta = read_metadata(run / "last.safetensors")
    t = meta.training
    assert t["preset"] == "few-shot" and t["steps_done"] == 3 and t["batch_size"] == 2
    assert t["lr_backbone"] == [1e-4, 1e-6] and t["lr_decoder"] == [1e-4, 1e-6]
    # the init's recorded crop size and augmentations, except the flag given
    assert t["size"] == 64  # --size given
    # the init model records no scale_range / density_jitter: their defaults (off)
    assert t["augment"] == {**AUGMENT, "color_jitter": 0.05, "scale_range": None,
                            "density_jitter": 0.0}
    assert t["sampling"] == "region"
    # validated once, after the last epoch: the threshold is the validation's best F1
    val = meta.metrics["val"]["overall"]
    assert meta.threshold == pytest.approx(val["threshold"]) and val["threshold"] != 0.37
    assert meta.input == INPUT and meta.arch.decoder_width == 16


def test_preset_resolves_to_the_documented_values(tmp_path):
    cfg = resolve_config(SegmentConfig, {"preset": "few-shot"})
    assert {k: getattr(cfg, k) for k in FEW_SHOT} == FEW_SHOT
    assert cfg.preset == "few-shot"
    assert dict(get_preset("few_shot", "segment").values) == FEW_SHOT
    assert not {"steps", "batch_size"} & given_options(cfg)  # preset values are not "given"
    # a config file is above the preset, flags above both; the file may name the preset
    file = tmp_path / "ft.yaml"
    file.write_text("preset: few-shot\nsteps: 120\nbatch_size: 2\n")
    cfg = resolve_config(SegmentConfig, {"batch_size": 8}, config_file=file)
    assert (cfg.preset, cfg.steps, cfg.batch_size, cfg.lr_decoder) == ("few-shot", 120, 8, 1e-4)
    assert {"steps", "batch_size"} <= given_options(cfg)
    with pytest.raises(LandslideError, match="unknown preset"):
        resolve_config(SegmentConfig, {"preset": "many-shot"})
    # the documentation states the same numbers
    doc = (ROOT / "docs" / "training.md").read_text()
    assert "--preset few-shot" in doc
    for text in ("1e-4", "1e-6", "300", "warm-up 20", "val_every 25", "batch 4"):
        assert text in doc, text


def test_arch_override_bands_unknown_name_and_preset_without_init(run_cli, tiny_tiles,
                                                                  tmp_path):
    init = _init_model(tmp_path / "init.safetensors")
    base = ["train", "segment", "--data", tiny_tiles, *RUN, "--val-split", "none"]
    res = run_cli(*base, "--init", init, "--decoder-width", "32", "--out", tmp_path / "a")
    _one_line_error(res, f"incompatible --init {init}: it is a pvt_v2_b0+dcf model of decoder "
                         "width 16, not --decoder-width 32")
    res = run_cli(*base, "--init", _init_model(tmp_path / "nir.safetensors", bands=4),
                  "--out", tmp_path / "b")
    _one_line_error(res, "the data has 3 band(s) but the model input has 4")
    assert "incompatible --init" in res.stderr
    res = run_cli(*base, "--init", "landslide-no-such-model", "--out", tmp_path / "c")
    _one_line_error(res, "--init landslide-no-such-model: checkpoint not found")
    assert "shipped model" in res.stderr
    res = run_cli(*base, "--preset", "few-shot", "--out", tmp_path / "d")
    _one_line_error(res, "--preset few-shot fine-tunes a trained segmentation model")
    res = run_cli(*base, "--preset", "lots", "--out", tmp_path / "e")
    _one_line_error(res, "--preset 'lots'")
    assert not any((tmp_path / x).exists() for x in "abcde")


# ------------------------------------------------------------------------- the split file

def _split() -> dict:
    return json.loads(SPLIT.read_text(encoding="utf-8"))


def _by_source(keys: list[str]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {s: set() for s in SOURCES}
    for k in keys:
        out[k.split("/", 1)[0]].add(k)
    return out


def test_few_shot_split_file_covers_each_source():
    from landslide_cli.data.splits import load_split_file

    data = _split()
    split = load_split_file(SPLIT)  # the project's split-file format (no key twice)
    assert data["format"] == "landslide-split" and data["mode"] == "few-shot" and data["rule"]
    assert split.val == [] and split.excluded == []
    train, test = _by_source(split.train), _by_source(split.test)
    assert set(train) == set(SOURCES)
    for src, n in SOURCES.items():
        assert train[src] and test[src] and not train[src] & test[src], src
        assert len(train[src]) + len(test[src]) == n, src
    assert [len(train[s]) for s in ("sichuan", "bijie", "hokkaido")] == [7, 7, 8]
    scenes = {s: {re.match(r"amunet_uav/amu([ABC])_", k).group(1) for k in keys}
              for s, keys in (("train", train["amunet_uav"]), ("test", test["amunet_uav"]))}
    assert scenes == {"train": {"B"}, "test": {"A", "C"}}


def test_few_shot_split_matches_the_shared_tiles_and_its_rule(shared_data):
    """train ∪ test = every tile of each source, and the file is what its rule gives."""
    root = shared_data / "landslides"
    split = _split()
    train, test = _by_source(split["train"]), _by_source(split["test"])
    for src in SOURCES:
        keys = sorted(f"{src}/{p.stem}" for p in (root / src / "img").iterdir()
                      if p.is_file() and not p.name.startswith("."))
        assert train[src] | test[src] == set(keys), src
        if src == "amunet_uav":
            expected = {k for k in keys if k.startswith("amunet_uav/amuB_")}
        else:  # the rule written in the file, implemented here independently
            n = 8 if src == "hokkaido" else round(len(keys) / 5)
            order = list(keys)
            random.Random(f"few-shot:{split['seed']}:{src}").shuffle(order)
            expected = set(order[:n])
        assert train[src] == expected, src
