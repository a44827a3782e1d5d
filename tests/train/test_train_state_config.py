"""Resume-state serialization (no pickle), schedules and configuration resolution."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from torch import nn

from landslide_cli.errors import CheckpointError, LandslideError
from landslide_cli.train.config import DistillConfig, SegmentConfig, resolve_config, save_config
from landslide_cli.train.engine import LRSchedule
from landslide_cli.train.state import load_state, rng_state, save_state, set_rng_state


def _model_and_opt():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    opt = torch.optim.AdamW([{"params": model[0].parameters(), "lr": 1e-2},
                             {"params": list(model[1].parameters())
                              + list(model[2].parameters()), "lr": 1e-3}])
    return model, opt


def _train(model, opt, steps, seed=1):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(8, 4, generator=g)
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_state_roundtrip_restores_optimizer_and_rng(tmp_path):
    model, opt = _model_and_opt()
    _train(model, opt, 3)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    random.seed(5)
    np.random.seed(6)
    torch.manual_seed(7)
    state = {"model": model.state_dict(), "opt": opt.state_dict(), "scaler": scaler.state_dict(),
             "epoch": 3, "best": None, "rng": rng_state(), "misc": {1: (2.5, "x"), "nan": 1.5}}
    path = save_state(tmp_path / "s.safetensors", state)
    expected_draws = (random.random(), np.random.rand(), torch.rand(1).item())

    # the file is safetensors + JSON: no pickle anywhere
    raw = path.read_bytes()
    assert b"\x80\x04" not in raw[:16]
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + header_len])
    assert json.loads(header["__metadata__"]["state"])["epoch"] == 3

    loaded = load_state(path)
    assert loaded["misc"] == {1: (2.5, "x"), "nan": 1.5}
    model2, opt2 = _model_and_opt()
    model2.load_state_dict(loaded["model"])
    opt2.load_state_dict(loaded["opt"])
    set_rng_state(loaded["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected_draws
    # continuing both gives identical weights
    _train(model, opt, 2, seed=9)
    _train(model2, opt2, 2, seed=9)
    for a, b in zip(model.state_dict().values(), model2.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert opt2.state_dict()["param_groups"][0]["betas"] == (0.9, 0.999)


def test_corrupt_or_foreign_state_is_one_line_error(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="unreadable training state"):
        load_state(bad)
    with pytest.raises(CheckpointError, match="not found"):
        load_state(tmp_path / "missing.safetensors")


def test_cosine_and_poly_schedules_reach_final_lr():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([{"params": [p], "initial_lr": 5e-4, "final_lr": 5e-6, "lr": 1.0}])
    sched = LRSchedule(opt, total_steps=10)
    assert opt.param_groups[0]["lr"] == pytest.approx(5e-4)
    for _ in range(5):
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(5e-6 + (5e-4 - 5e-6) * 0.5)
    for _ in range(5):
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(5e-6)
    poly = LRSchedule(opt, total_steps=4, kind="poly", power=1.0)
    poly.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(5e-6 + (5e-4 - 5e-6) * 0.75)
    again = LRSchedule(opt, total_steps=4, kind="poly", power=1.0)
    again.load_state_dict(poly.state_dict())
    assert again.step_count == 1


def test_config_precedence_flags_over_file_over_defaults(tmp_path):
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text("epochs: 7\nlr: 5e-5\nbatch-size: 4\nteacher_args: {depth: 2}\n"
                        "method: kd\n")
    cfg = resolve_config(DistillConfig, {"epochs": 3, "tau": None}, cfg_file)
    assert cfg.epochs == 3  # flag wins
    assert cfg.batch_size == 4 and cfg.method == "kd"  # file wins over defaults
    assert cfg.lr == 5e-5 and isinstance(cfg.lr, float)  # "5e-5" is a string to YAML
    assert cfg.teacher_args == {"depth": 2}
    assert cfg.tau == 5.0 and cfg.d_lr == 5e-6 and cfg.d_lr_final == 5e-9  # paper defaults
    seg = SegmentConfig()
    assert (seg.epochs, seg.batch_size, seg.lr_backbone, seg.lr_backbone_final,
            seg.lr_decoder, seg.lr_decoder_final) == (200, 16, 5e-6, 5e-9, 5e-4, 5e-6)


def test_config_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochz: 3\n")
    with pytest.raises(LandslideError, match="unknown option 'epochz'"):
        resolve_config(DistillConfig, {}, bad)
    bad.write_text("epochs: many\n")
    with pytest.raises(LandslideError, match="invalid value 'many' for epochs"):
        resolve_config(DistillConfig, {}, bad)
    bad.write_text("phase: segment\n")
    with pytest.raises(LandslideError, match="is a 'segment' configuration"):
        resolve_config(DistillConfig, {}, bad)
    with pytest.raises(LandslideError, match="--method 'gan'"):
        resolve_config(DistillConfig, {"method": "gan"})
    with pytest.raises(LandslideError, match="config file not found"):
        resolve_config(DistillConfig, {}, tmp_path / "nope.yaml")


def test_saved_config_roundtrips_and_resume_limits_overrides(tmp_path):
    cfg = resolve_config(SegmentConfig, {"epochs": 2, "class_weights": "1,3", "out": "x",
                                         "stop_after": 1})
    assert cfg.class_weights == [1.0, 3.0]
    save_config(cfg, tmp_path / "config.yaml")
    text = (tmp_path / "config.yaml").read_text()
    assert "phase: segment" in text and "stop_after" not in text
    back = resolve_config(SegmentConfig, {"resume": str(tmp_path), "epochs": 4})
    assert back.epochs == 4 and back.class_weights == [1.0, 3.0]
    assert back.resume == str(tmp_path) and back.out == str(tmp_path)
    with pytest.raises(LandslideError, match="cannot be changed when resuming"):
        resolve_config(SegmentConfig, {"resume": str(tmp_path), "lr_decoder": 1.0})
    with pytest.raises(LandslideError, match="is a 'segment' configuration"):
        resolve_config(DistillConfig, {"resume": str(tmp_path)})
