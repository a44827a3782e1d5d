"""Multi-teacher distillation (issue 15): one neck and one KL term per teacher, the adaptive
weighting over all terms, resume, metadata and bad input."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from _train_args import TINY_DISTILL

from landslide_cli.checkpoint import load_checkpoint, read_metadata
from landslide_cli.errors import LandslideError
from landslide_cli.train.losses import FixedWeighting, UncertaintyWeighting, kd_kl_loss

#: a second, tiny random ConvNeXt teacher (64 channels at stride 32)
CNX = ["--teacher", "convnext_tiny", "--teacher-arg", "convnext_tiny:depths=[1,1,1,1]",
       "--teacher-arg", "convnext_tiny:dims=[8,16,32,64]"]
TWO = [*TINY_DISTILL, *CNX]


def _rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


# ---------------------------------------------------------------------- the weighting maths

def test_adaptive_weighting_over_all_teachers_by_hand():
    names = ["kl", "kl_convnext_tiny", "adv"]
    terms = {"kl": torch.tensor(2.0), "kl_convnext_tiny": torch.tensor(3.0),
             "adv": torch.tensor(0.5)}
    init = {"kl": 0.6, "kl_convnext_tiny": 0.6, "adv": 0.4}
    # fixed: L = 0.6 * 2 + 0.6 * 3 + 0.4 * 0.5
    assert FixedWeighting(init)(terms).item() == pytest.approx(1.2 + 1.8 + 0.2)
    unc = UncertaintyWeighting(names, init)
    s = [-math.log(0.6), -math.log(0.6), -math.log(0.4)]  # s_i = -log w_i
    assert unc.log_vars.tolist() == pytest.approx(s)
    # L = sum_i exp(-s_i) L_i + s_i
    expected = 0.6 * 2.0 + s[0] + 0.6 * 3.0 + s[1] + 0.4 * 0.5 + s[2]
    loss = unc(terms)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # dL/ds_i = 1 - exp(-s_i) L_i
    loss.backward()
    assert unc.log_vars.grad.tolist() == pytest.approx([1 - 1.2, 1 - 1.8, 1 - 0.2], rel=1e-5)
    # one SGD step of lr 0.1 by hand, then the new weights exp(-s_i')
    opt = torch.optim.SGD(unc.parameters(), lr=0.1)
    opt.step()
    s_new = [si - 0.1 * g for si, g in zip(s, [1 - 1.2, 1 - 1.8, 1 - 0.2], strict=True)]
    assert list(unc.current().values()) == pytest.approx([math.exp(-v) for v in s_new],
                                                         rel=1e-5)
    assert list(unc.current()) == names
    # on constant terms the optimum is s_i = log L_i: each weight becomes 1 / L_i
    opt = torch.optim.Adam(unc.parameters(), lr=0.05)
    for _ in range(600):
        opt.zero_grad()
        unc(terms).backward()
        opt.step()
    assert unc.current() == pytest.approx({"kl": 0.5, "kl_convnext_tiny": 1 / 3, "adv": 2.0},
                                          rel=1e-2)


def test_student_has_one_neck_per_teacher_and_terms_match_the_maps(tiny_tiles: Path):
    from torch.utils.data import default_collate

    from landslide_cli.train.config import DistillConfig, resolve_config
    from landslide_cli.train.distill import build_distill_task
    from landslide_cli.train.distributed import DistContext

    cfg = resolve_config(DistillConfig, {
        "data": str(tiny_tiles), "train_split": "all", "size": 64, "batch_size": 2,
        "teacher": "vit_small_patch14_dinov2", "teacher_init": "random",
        "teacher_args": {"depth": 2, "embed_dim": 48, "num_heads": 2},
        "extra_teachers": ["convnext_tiny"],
        "extra_teacher_args": {"convnext_tiny": {"depths": [1, 1, 1, 1],
                                                 "dims": [8, 16, 32, 64]}},
        "method": "kd", "loss_weighting": "adaptive", "epochs": 1, "quiet": True})
    task = build_distill_task(cfg, DistContext())
    student = task.student_module
    assert student.neck.out_channels == 48
    assert [n.out_channels for n in student.extra_necks] == [64]
    assert task.term_names == ["kl", "kl_convnext_tiny"]
    assert task.weighting.current() == pytest.approx({"kl": 0.6, "kl_convnext_tiny": 0.6})
    task.setup(steps_per_epoch=4)
    assert any(g["name"] == "weighting" for g in task.opt_s.param_groups)
    task.set_train(True)
    ds = task.train_dataset
    ds.set_epoch(0)
    batch = default_collate([ds[i] for i in range(2)])
    x = batch["image"]
    t_maps = task.teacher_maps(x)
    # DINOv2: 64 -> 70 px, a 5x5 grid; ConvNeXt: stride 32, 2x2
    assert [tuple(m.shape) for m in t_maps] == [(2, 48, 5, 5), (2, 64, 2, 2)]
    with torch.no_grad():
        s_maps = student(x, [m.shape[-2:] for m in t_maps])
    expected = {"kl": kd_kl_loss(s_maps[0], t_maps[0]).item(),
                "kl_convnext_tiny": kd_kl_loss(s_maps[1], t_maps[1]).item()}
    before = {k: v.clone() for k, v in student.extra_necks.state_dict().items()}
    out = task.train_step(batch)
    assert {k: out[k].item() for k in expected} == pytest.approx(expected, rel=1e-5)
    s = [-math.log(0.6)] * 2
    assert out["loss"].item() == pytest.approx(
        sum(0.6 * v + si for v, si in zip(expected.values(), s, strict=True)), rel=1e-5)
    # the further teacher's neck and both weights were trained, the teachers stay frozen
    after = student.extra_necks.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert all(w != pytest.approx(0.6, abs=1e-6) for w in task.weighting.current().values())
    name, cnx = task.extra_teachers[0]
    assert name == "convnext_tiny" and not any(p.requires_grad for p in cnx.parameters())


# ---------------------------------------------------------------------- through the CLI

def test_cli_step_with_two_teachers(run_cli, tiny_tiles, tmp_path):
    run = tmp_path / "two"
    res = run_cli("train", "distill", "--data", tiny_tiles, "--out", run, "--epochs", "1",
                  *TWO)
    assert res.exit_code == 0, res.stderr
    assert "teachers vit_small_patch14_dinov2, convnext_tiny" in res.stderr
    (row,) = _rows(run)
    kl, kl2, adv, loss = (float(row[k]) for k in ("train_kl", "train_kl_convnext_tiny",
                                                  "train_adv", "train_loss"))
    assert kl > 0 and kl2 > 0
    # fixed weighting: 0.6 per teacher's KL, 0.4 for the (first teacher's) adversarial term
    assert loss == pytest.approx(0.6 * kl + 0.6 * kl2 + 0.4 * adv, rel=1e-4)
    saved = (run / "config.yaml").read_text()
    assert "extra_teachers: [convnext_tiny]" in saved and "dims: [8, 16, 32, 64]" in saved
    meta, state = load_checkpoint(run / "last.safetensors")
    assert meta.training["teacher"] == "vit_small_patch14_dinov2"
    assert meta.training["teachers"] == ["vit_small_patch14_dinov2", "convnext_tiny"]
    assert meta.training["extra_teacher_weights"] == {"convnext_tiny": None}
    assert set(meta.training["loss_weights"]) == {"kl", "kl_convnext_tiny", "adv"}
    # the checkpoint holds the student backbone only, no neck
    assert not any("neck" in k for k in state)


def test_single_teacher_run_is_unchanged(run_cli, tiny_tiles, tmp_path):
    run = tmp_path / "one"
    res = run_cli("train", "distill", "--data", tiny_tiles, "--out", run, "--epochs", "1",
                  *TINY_DISTILL, "--method", "kd")
    assert res.exit_code == 0, res.stderr
    (row,) = _rows(run)
    assert not any(k.startswith("train_kl_") for k in row)
    assert float(row["train_loss"]) == pytest.approx(0.6 * float(row["train_kl"]), rel=1e-4)
    meta = read_metadata(run / "last.safetensors")
    assert meta.training["teachers"] == ["vit_small_patch14_dinov2"]
    assert "extra_teacher_weights" not in meta.training
    assert "extra_teachers: []" in (run / "config.yaml").read_text()


def test_resume_restores_necks_and_adaptive_weights(run_cli, tiny_tiles, tmp_path):
    from landslide_cli.train.state import load_state

    args = ["train", "distill", "--data", tiny_tiles, "--epochs", "2", "--seed", "5", *TWO,
            "--method", "kd", "--loss-weighting", "adaptive", "--weighting-lr", "0.05"]
    full, part = tmp_path / "full", tmp_path / "part"
    assert run_cli(*args, "--out", full).exit_code == 0
    res = run_cli(*args, "--out", part, "--stop-after", "1")
    assert res.exit_code == 0, res.stderr
    state = load_state(part / "state.safetensors")
    task = state["task"]
    assert any(k.startswith("extra_necks.0.") for k in task["student"])
    assert tuple(task["weighting"]["log_vars"].shape) == (2,)
    res = run_cli("train", "distill", "--resume", part, "--device", "cpu")
    assert res.exit_code == 0, res.stderr
    ra, rb = _rows(full), _rows(part)
    assert len(rb) == 2
    for key in ("train_loss", "train_kl_convnext_tiny", "weight_kl", "weight_kl_convnext_tiny"):
        assert [r[key] for r in ra] == [r[key] for r in rb], key
    # the weights were learnt (not the initial 0.6) and carried over the restart
    assert float(rb[1]["weight_kl_convnext_tiny"]) != pytest.approx(0.6, abs=1e-4)
    wa = read_metadata(full / "last.safetensors").training["loss_weights"]
    wb = read_metadata(part / "last.safetensors").training["loss_weights"]
    assert wa == pytest.approx(wb, rel=1e-6)
    a, b = load_checkpoint(full / "last.safetensors")[1], load_checkpoint(
        part / "last.safetensors")[1]
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k


# ---------------------------------------------------------------------- bad input

def _one_line_error(res, run: Path) -> str:
    assert res.exit_code == 1, res.stderr
    assert "Traceback" not in res.stderr
    errors = [line for line in res.stderr.strip().splitlines()
              if not line.startswith("warning:")]
    assert len(errors) == 1, res.stderr
    assert not run.exists()
    return errors[0]


@pytest.mark.parametrize(("extra", "message"), [
    (["--teacher", "convnext_huge"], "unknown teacher 'convnext_huge'"),
    (["--teacher", "vit_small_patch14_dinov2"], "given twice"),
    (["--teacher-arg", "convnext_tiny:depth=2"], "'convnext_tiny' is not a further teacher"),
    (["--teacher-weights", "convnext_tiny=w.safetensors"], "is not a further teacher"),
])
def test_bad_teachers_are_one_line_errors(run_cli, tiny_tiles, tmp_path, extra, message):
    run = tmp_path / "bad"
    res = run_cli("train", "distill", "--data", tiny_tiles, "--out", run, *TINY_DISTILL, *extra)
    assert message in _one_line_error(res, run)


def test_extra_teacher_weights_with_random_teachers_is_refused(tiny_tiles):
    from landslide_cli.train.config import DistillConfig, resolve_config
    from landslide_cli.train.distill import build_distill_task
    from landslide_cli.train.distributed import DistContext

    cfg = resolve_config(DistillConfig, {
        "data": str(tiny_tiles), "teacher_init": "random", "extra_teachers": ["convnext_tiny"],
        "extra_teacher_weights": {"convnext_tiny": "w.safetensors"}, "quiet": True})
    with pytest.raises(LandslideError, match="--teacher-random cannot be combined"):
        build_distill_task(cfg, DistContext())
    with pytest.raises(LandslideError, match="expected a mapping"):
        resolve_config(DistillConfig, {"extra_teachers": ["convnext_tiny"],
                                       "extra_teacher_args": {"convnext_tiny": 3}})


def test_cli_parses_teacher_lists_and_named_options():
    from landslide_cli.cli.train_cmd import _teachers

    values = {"teacher": ["vit_small_patch14_dinov2,convnext_tiny", "convnext_small"],
              "teacher_arg": ["depth=2", "convnext_tiny:dims=[8,16,32,64]",
                              "vit_small_patch14_dinov2:num_heads=2"],
              "teacher_weights": ["runs/w/dino.safetensors", "convnext_small=/w/cnx.pth"]}
    _teachers(values)
    assert values["teacher"] == "vit_small_patch14_dinov2"
    assert values["extra_teachers"] == ["convnext_tiny", "convnext_small"]
    assert values["teacher_args"] == {"depth": 2, "num_heads": 2}
    assert values["extra_teacher_args"] == {"convnext_tiny": {"dims": [8, 16, 32, 64]}}
    assert values["teacher_weights"] == "runs/w/dino.safetensors"
    assert values["extra_teacher_weights"] == {"convnext_small": "/w/cnx.pth"}
    none = {"teacher": None, "teacher_arg": None, "teacher_weights": None}
    _teachers(none)
    assert none == {"teacher_args": None, "extra_teacher_args": None,
                    "extra_teacher_weights": None}
    with pytest.raises(LandslideError, match="given twice"):
        _teachers({"teacher": None, "teacher_arg": None,
                   "teacher_weights": ["a.safetensors", "b.safetensors"]})
