"""Shared fixtures: CLI runner, paths to ../shared data, tiny random checkpoints."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

# OMP_NUM_THREADS wins when set: on a shared machine two spinning OpenMP threads per process
# cost several times the CPU time of one.
_threads = os.environ.get("OMP_NUM_THREADS", "").strip()
torch.set_num_threads(int(_threads) if _threads.isdigit() and int(_threads) > 0
                      else max(1, min(2, os.cpu_count() or 1)))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download
os.environ.setdefault("MPLBACKEND", "Agg")
# predict's `--backend auto` keeps PyTorch for checkpoints in the suite: on a CPU it would
# otherwise export each tiny checkpoint to ONNX into the user cache (landslide_cli.onnx_cache);
# tests/test_onnx_cache.py covers that path with its own cache folder
os.environ.setdefault("LANDSLIDE_CPU_BACKEND", "torch")

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("LANDSLIDE_SHARED", ROOT.parent / "shared"))
SHARED_DATA = SHARED / "data"


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """Run ``landslide ARGS...`` in-process through the real entry point."""
    from landslide_cli.cli import common
    from landslide_cli.cli.app import main

    def run(*args: str | os.PathLike[str]) -> CliResult:
        capsys.readouterr()
        logger = logging.getLogger("landslide")
        saved = logger.handlers[:], logger.level, logger.propagate
        try:
            code = main([str(a) for a in args])
        finally:
            # the CLI installs its Rich handler on the "landslide" logger: later tests that
            # log (or capture stderr) must not see it
            logger.handlers[:], logger.level, logger.propagate = saved
        captured = capsys.readouterr()
        common.state.verbose, common.state.quiet = 0, False
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init pvt_v2_b0+dcf segmentation checkpoint (decoder width 32)."""
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")


def make_checkpoint(path: Path, *, spec: str = "pvt_v2_b0+dcf", width: int = 32,
                    seed: int = 0, **meta_overrides: object) -> Path:
    from landslide_cli.checkpoint import CheckpointMeta, save_checkpoint
    from landslide_cli.preprocess import InputSpec
    from landslide_cli.zoo import build_segmenter, parse_spec

    torch.manual_seed(seed)
    arch = parse_spec(spec, decoder_width=width)
    in_spec = meta_overrides.pop("input", None) or InputSpec().to_dict()
    arch.in_chans = len(in_spec["bands"])  # type: ignore[index]
    model = build_segmenter(arch)
    meta = CheckpointMeta(kind="segmenter", architecture=arch.to_dict(), input=in_spec,
                          name=path.stem, **meta_overrides)  # type: ignore[arg-type]
    save_checkpoint(path, model.state_dict(), meta)
    return path
