"""Run folders of runs killed before their first epoch ended: restart and --resume (issue #10)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from _recording import RecordingReporter
from _train_args import TINY_SEGMENT

from landslide_cli.train.config import SegmentConfig, resolve_config
from landslide_cli.train.engine import STATE_FILE, prepare_run_dir


def _epochs(run: Path) -> list[str]:
    with open(run / "metrics.csv", newline="") as fh:
        return [r["epoch"] for r in csv.DictReader(fh)]


def _killed_in_epoch_1(run_cli, tiny_tiles: Path, run: Path, monkeypatch) -> None:
    """A real run interrupted (Ctrl-C / kill) at its first optimisation step."""
    from landslide_cli.train.segment import SegmentTask

    def interrupt(self, batch):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(SegmentTask, "train_step", interrupt)
        res = run_cli("train", "segment", "--data", tiny_tiles, "--out", run, "--epochs", "1",
                      *TINY_SEGMENT, "--val-split", "none")
    assert res.exit_code == 130
    assert (run / "config.yaml").is_file() and not (run / STATE_FILE).exists()
    assert not list(run.glob("*.safetensors"))


def test_plain_restart_of_a_run_killed_in_epoch_1(run_cli, tiny_tiles, tmp_path, monkeypatch):
    run = tmp_path / "run"
    _killed_in_epoch_1(run_cli, tiny_tiles, run, monkeypatch)
    # a stale metrics.csv (killed between logging and saving the state) is replaced too
    (run / "metrics.csv").write_text("epoch,step,train_loss\n7,70,9.9\n")
    res = run_cli("train", "segment", "--data", tiny_tiles, "--out", run, "--epochs", "1",
                  *TINY_SEGMENT, "--val-split", "none", "--seed", "5")
    assert res.exit_code == 0, res.stderr
    assert "stopped before completing an epoch" in res.stderr
    assert "starting it again" in res.stderr
    assert (run / "last.safetensors").is_file() and (run / STATE_FILE).is_file()
    assert _epochs(run) == ["1"]
    assert "seed: 5" in (run / "config.yaml").read_text()  # the new start-up files


def test_resume_of_a_run_killed_in_epoch_1_starts_it(run_cli, tiny_tiles, tmp_path,
                                                     monkeypatch):
    run = tmp_path / "run"
    _killed_in_epoch_1(run_cli, tiny_tiles, run, monkeypatch)
    res = run_cli("train", "segment", "--resume", run)
    assert res.exit_code == 0, res.stderr
    assert "nothing to resume" in res.stderr and "from epoch 1" in res.stderr
    assert "Traceback" not in res.stderr
    assert (run / "last.safetensors").is_file() and (run / STATE_FILE).is_file()
    assert _epochs(run) == ["1"]
    # now it is a real run: a second plain start is refused, --resume is a no-op
    again = run_cli("train", "segment", "--data", tiny_tiles, "--out", run, *TINY_SEGMENT)
    assert again.exit_code == 1 and "already holds a run" in again.stderr
    assert run_cli("train", "segment", "--resume", run).exit_code == 0


def _segment_cfg(out: Path) -> SegmentConfig:
    return resolve_config(SegmentConfig, {"out": str(out), "data": "unused"})


def _resume_cfg(run: Path) -> SegmentConfig:
    return resolve_config(SegmentConfig, {"resume": str(run)})


def test_folders_with_checkpoints_are_never_replaced(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("phase: segment\n")
    (run / "last.safetensors").write_bytes(b"weights")  # state.safetensors lost, say
    with pytest.raises(Exception, match="already holds a run") as info:
        prepare_run_dir(_segment_cfg(run))
    assert "last.safetensors" in str(info.value) and "\n" not in str(info.value)
    cfg = _resume_cfg(run)
    with pytest.raises(Exception, match="cannot be continued") as info:
        prepare_run_dir(cfg)
    assert "\n" not in str(info.value) and cfg.resume == str(run)
    assert (run / "last.safetensors").read_bytes() == b"weights"
    # a checkpoint alone (no config.yaml) is protected as well
    (run / "config.yaml").unlink()
    with pytest.raises(Exception, match="already holds a run"):
        prepare_run_dir(_segment_cfg(run))


def test_prepare_run_dir_accepts_start_up_files_only(tmp_path, capfd):
    run = tmp_path / "run"
    (run / "tensorboard").mkdir(parents=True)
    (run / "config.yaml").write_text("phase: segment\nepochs: 3\n")
    rec = RecordingReporter()
    assert prepare_run_dir(_segment_cfg(run), reporter=rec) == run
    cfg = _resume_cfg(run)
    assert cfg.epochs == 3
    assert prepare_run_dir(cfg, reporter=rec) == run
    assert cfg.resume is None and cfg.out == str(run)  # fit() starts it from epoch 1
    assert "starting it again" in rec.infos[0] and "nothing to resume" in rec.infos[1]
    assert capfd.readouterr() == ("", "")  # notes go to the reporter, never printed
    assert (run / "config.yaml").is_file()  # nothing is removed before the run starts
