"""The generic training loop shared by both phases.

A phase implements :class:`TrainTask` (build models, one optimisation step, validation, output
checkpoints); :func:`fit` (a :class:`FitLoop`: restore, run epoch, end of epoch) owns
everything around it: seeding and deterministic data order, epochs, progress display,
``metrics.csv``/TensorBoard logging, the per-epoch resume state, ``--resume``,
``--stop-after``, and the distributed bookkeeping (rank-0-only I/O, reductions, barriers).

Determinism: at the start of epoch ``e`` every process re-seeds Python, numpy and torch with a
value derived from ``(seed, e, rank)``, the shuffling sampler with ``(seed, e)`` and the
DataLoader's worker seeds with ``(seed, e, rank)``. The data order and augmentations of an epoch
therefore depend on nothing but the seed and the epoch number, which is what makes a resumed run
reproduce an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler

from landslide_cli.checkpoint import atomic_write
from landslide_cli.errors import CheckpointError, LandslideError
from landslide_cli.reporting import (
    NullReporter,
    ProgressHandle,
    QuietReporter,
    Reporter,
    as_reporter,
)
from landslide_cli.train.config import TrainConfig, save_config
from landslide_cli.train.distributed import DistContext, setup
from landslide_cli.train.state import load_state, rng_state, save_state, set_rng_state

STATE_FILE = "state.safetensors"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.csv"
#: validation metrics shown in the one-line epoch summary
SUMMARY_VAL_KEYS = ("iou", "f1", "miou", "threshold")


# --------------------------------------------------------------------------- seeding

def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (stable across runs and platforms)."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h ^= (int(p) + 0x9E3779B97F4A7C15 + ((h << 6) & 0xFFFFFFFFFFFFFFFF) + (h >> 2))
        h &= 0xFFFFFFFFFFFFFFFF
    return h & 0x7FFFFFFFFFFFFFFF


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- schedules

class LRSchedule:
    """Per-step learning-rate decay of every param group from ``initial_lr`` to ``final_lr``.

    ``cosine``: ``lr(t) = final + (initial - final) * (1 + cos(pi * t / T)) / 2``;
    ``poly``: ``lr(t) = final + (initial - final) * (1 - t / T) ** power``; ``t`` counts optimizer
    steps, ``T`` is the total number of steps of the run. An optional linear warm-up multiplies by
    ``(t + 1) / warmup`` during the first ``warmup`` steps. Each group must carry ``initial_lr``
    and ``final_lr`` keys.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int, *,
                 kind: str = "cosine", power: float = 0.9, warmup: int = 0) -> None:
        self.optimizer = optimizer
        self.total_steps = max(1, int(total_steps))
        self.kind = kind
        self.power = power
        self.warmup = max(0, int(warmup))
        self.step_count = 0
        self._apply()

    def factor(self, t: int) -> float:
        frac = min(1.0, t / self.total_steps)
        if self.kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * frac))
        return (1.0 - frac) ** self.power

    def lr_at(self, t: int, initial: float, final: float) -> float:
        lr = final + (initial - final) * self.factor(t)
        if self.warmup and t < self.warmup:
            lr *= (t + 1) / self.warmup
        return lr

    def _apply(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step_count, group["initial_lr"], group["final_lr"])

    def step(self) -> None:
        self.step_count += 1
        self._apply()

    def state_dict(self) -> dict[str, Any]:
        return {"step_count": self.step_count, "total_steps": self.total_steps,
                "kind": self.kind, "power": self.power, "warmup": self.warmup}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # total_steps stays as configured now: resuming with more --epochs stretches the decay
        self.step_count = int(state["step_count"])
        self.kind = str(state["kind"])
        self.power = float(state["power"])
        self.warmup = int(state["warmup"])
        self._apply()


# --------------------------------------------------------------------------- AMP

def amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of training, or None: ``amp`` on CUDA, bf16 on CPU with
    ``cpu_amp``, else none."""
    if device.type == "cpu" and getattr(cfg, "cpu_amp", False):
        return torch.bfloat16
    if device.type != "cuda" or cfg.amp == "off":
        return None
    return torch.bfloat16 if cfg.amp == "bf16" else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def make_scaler(device: torch.device, dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """A GradScaler, enabled only for fp16 on CUDA (bf16 needs none)."""
    return torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)


# --------------------------------------------------------------------------- steps

def planned_steps(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """Optimizer steps of the whole run: ``cfg.steps``, else ``epochs * steps_per_epoch``."""
    if getattr(cfg, "steps", None):
        return int(cfg.steps)  # type: ignore[arg-type]
    return int(cfg.epochs) * int(steps_per_epoch)


def planned_epochs(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """Epochs of the run: ``ceil(steps / steps_per_epoch)`` with ``cfg.steps``, else epochs."""
    if getattr(cfg, "steps", None):
        return max(1, math.ceil(int(cfg.steps) / max(1, int(steps_per_epoch))))  # type: ignore
    return int(cfg.epochs)


# --------------------------------------------------------------------------- data

class RegionBalancedSampler(Sampler[int]):
    """``num_samples`` indices drawn with replacement, weight ``1 / count(region)`` per item:
    every region is drawn equally often in expectation.

    The draw is a function of ``(seed, epoch)`` only (:meth:`set_epoch`), so a resumed run
    repeats it; under torchrun all ranks draw the same list and take ``rank::world``.
    """

    def __init__(self, regions: list[str], *, seed: int, rank: int = 0, world: int = 1,
                 num_samples: int | None = None) -> None:
        counts: dict[str, int] = {}
        for r in regions:
            counts[r] = counts.get(r, 0) + 1
        self.weights = torch.tensor([1.0 / counts[r] for r in regions], dtype=torch.float64)
        self.seed, self.rank, self.world = int(seed), int(rank), int(world)
        self.num_samples = len(regions) if num_samples is None else int(num_samples)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, 2))
        drawn = torch.multinomial(self.weights, self.num_samples, replacement=True, generator=g)
        return iter(drawn[self.rank::self.world].tolist())

    def __len__(self) -> int:
        return len(range(self.rank, self.num_samples, self.world))


class _Shard(Sampler[int]):
    """Indices ``rank::world`` without padding (evaluation: every sample exactly once)."""

    def __init__(self, n: int, rank: int, world: int) -> None:
        self.indices = list(range(rank, n, world))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class EpochLoader:
    """A training DataLoader whose order and worker seeds are a function of (seed, epoch)."""

    def __init__(self, dataset: Dataset, *, batch_size: int, seed: int, ctx: DistContext,
                 num_workers: int = 0, drop_last: bool = True,
                 pin_memory: bool = False, sampling: str = "uniform") -> None:
        self.seed = seed
        self.ctx = ctx
        self.dataset = dataset
        self.generator = torch.Generator()
        self.sampler: Sampler[int]
        if sampling == "region":
            regions = getattr(dataset, "item_regions", None)
            if regions is None:
                raise LandslideError("--sampling region: the training data set has no regions")
            self.sampler = RegionBalancedSampler(regions(), seed=seed, rank=ctx.rank,
                                                 world=ctx.world_size)
        elif ctx.distributed:
            from torch.utils.data.distributed import DistributedSampler

            self.sampler = DistributedSampler(dataset, num_replicas=ctx.world_size,
                                              rank=ctx.rank, shuffle=True, seed=seed,
                                              drop_last=False)
        else:
            self.sampler = RandomSampler(dataset, generator=self.generator)
        n_local = len(self.sampler)  # type: ignore[arg-type]
        self.drop_last = drop_last and n_local >= batch_size
        self.loader = DataLoader(dataset, batch_size=batch_size, sampler=self.sampler,
                                 num_workers=num_workers, drop_last=self.drop_last,
                                 pin_memory=pin_memory, generator=self.generator,
                                 persistent_workers=False)

    def __len__(self) -> int:
        return len(self.loader)

    def epoch(self, epoch: int) -> DataLoader:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)  # per-(seed, epoch, index) augmentation
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
        self.generator.manual_seed(derive_seed(self.seed, epoch, self.ctx.rank, 1))
        return self.loader


class _SizeGroupedBatches(Sampler[list[int]]):
    """Batches of indices whose items share one shape (tiles of different sizes)."""

    def __init__(self, indices: list[int], shapes: list[tuple[int, int]],
                 batch_size: int) -> None:
        groups: dict[tuple[int, int], list[int]] = {}
        for i in indices:
            groups.setdefault(tuple(shapes[i]), []).append(i)  # type: ignore[arg-type]
        self.batches = [idx[j:j + batch_size] for idx in groups.values()
                        for j in range(0, len(idx), batch_size)]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def eval_loader(dataset: Dataset, *, batch_size: int, ctx: DistContext, num_workers: int = 0,
                shapes: list[tuple[int, int]] | None = None) -> DataLoader:
    """In-order loader over this process's shard (no padding, no duplicates).

    With ``shapes`` (one ``(H, W)`` per item) batches only group items of equal size, so
    native-size tiles of different sizes can be validated with ``batch_size > 1``.
    """
    sampler = _Shard(len(dataset), ctx.rank, ctx.world_size)  # type: ignore[arg-type]
    if shapes is not None and batch_size > 1:
        batches = _SizeGroupedBatches(sampler.indices, shapes, batch_size)
        return DataLoader(dataset, batch_sampler=batches, num_workers=num_workers)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers)


def worker_errors(loader: Any) -> Iterator[Any]:
    """Iterate ``loader``; a :class:`LandslideError` raised in a DataLoader worker comes back
    as its own one-line message (PyTorch re-raises it with the worker's traceback in the
    message text)."""
    it = iter(loader)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except LandslideError as exc:
            text = str(exc)
            if "Original Traceback" not in text:
                raise
            last = text.rstrip().splitlines()[-1]
            name, sep, message = last.partition(": ")
            raise type(exc)(message if sep and name.endswith(type(exc).__name__)
                            else last) from None
        yield batch


# --------------------------------------------------------------------------- logging

class MetricsLog:
    """``metrics.csv`` (rewritten atomically each epoch) and optional TensorBoard."""

    def __init__(self, run_dir: Path, *, tensorboard: bool = False, enabled: bool = True,
                 reporter: Reporter | None = None) -> None:
        self.path = run_dir / METRICS_FILE
        self.enabled = enabled
        self.rows: list[dict[str, Any]] = []
        self.writer = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(run_dir / "tensorboard"))
            except (ImportError, ModuleNotFoundError):
                as_reporter(reporter).warn("--tensorboard: the tensorboard package is not "
                                           "installed; logging to metrics.csv only")

    def load(self, upto_epoch: int) -> None:
        """Keep the rows of epochs ``<= upto_epoch`` from an existing file (resume)."""
        if not self.path.is_file():
            return
        with open(self.path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        self.rows = [r for r in rows if int(float(r.get("epoch", 0) or 0)) <= upto_epoch]

    def log(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.rows.append(row)
        columns: list[str] = []
        for r in self.rows:
            columns.extend(k for k in r if k not in columns)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, restval="")
        writer.writeheader()
        for r in self.rows:
            writer.writerow({k: _fmt(v) for k, v in r.items()})
        text = buf.getvalue()
        atomic_write(self.path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
        if self.writer is not None:
            step = int(row.get("epoch", len(self.rows)))
            for k, v in row.items():
                if isinstance(v, int | float) and k != "epoch":
                    self.writer.add_scalar(k.replace("_", "/", 1), v, step)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


class ProgressDisplay:
    """Training progress through a :class:`Reporter`: a progress display per epoch (in
    tiles) and a status line (step, loss terms, img/s, run ETA) at most about five times per
    epoch. Ranks other than 0 and ``--quiet`` get a reporter that drops both."""

    def __init__(self, reporter: Reporter, epochs: int, steps_per_epoch: int,
                 tiles_per_step: int) -> None:
        self.reporter = reporter
        self.epochs = epochs
        self.steps = steps_per_epoch
        self.tiles_per_step = max(1, tiles_per_step)
        self.plain_every = max(1, math.ceil(steps_per_epoch / 5))
        self.handle: ProgressHandle | None = None
        self.epoch = 0
        self.done = 0
        self.next_plain = self.plain_every

    def start_epoch(self, epoch: int, steps: int | None = None) -> None:
        """Epoch ``epoch`` of ``steps`` steps (default: a whole epoch) begins."""
        self.close()
        self.epoch, self.done = epoch, 0
        self.next_plain = self.plain_every
        self.handle = self.reporter.progress((steps or self.steps) * self.tiles_per_step,
                                             f"epoch {epoch}/{self.epochs}")

    def update(self, step: int, info: str) -> None:
        if self.handle is not None and step > self.done:
            self.handle.advance((step - self.done) * self.tiles_per_step)
            self.done = step
        if step >= self.next_plain or step == self.steps:
            self.next_plain = (step // self.plain_every + 1) * self.plain_every
            self.reporter.info(f"epoch {self.epoch}/{self.epochs} step {step}/{self.steps}  "
                               f"{info}")

    def message(self, text: str) -> None:
        self.reporter.info(text)

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None


def _hms(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


# --------------------------------------------------------------------------- task protocol

class TrainTask(ABC):
    """What a training phase provides to :func:`fit`."""

    #: short loss names shown in the progress line, in order
    loss_names: tuple[str, ...] = ("loss",)
    #: name of the validation metric used to pick the best checkpoint (None: no best)
    best_metric: str | None = None
    #: optimizer steps of the whole run (set by :func:`fit` before :meth:`setup`)
    total_steps: int | None = None

    def __init__(self, cfg: TrainConfig, ctx: DistContext) -> None:
        self.cfg = cfg
        self.ctx = ctx

    @property
    @abstractmethod
    def train_dataset(self) -> Dataset: ...

    @abstractmethod
    def setup(self, steps_per_epoch: int) -> None:
        """Create optimizers and schedules (the number of steps per epoch is known now)."""

    @abstractmethod
    def train_step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """One optimisation step; returns detached scalar loss terms."""

    def batch_size_of(self, batch: dict[str, Any]) -> int:
        return int(batch["image"].shape[0])

    def set_train(self, mode: bool) -> None:  # noqa: B027 - optional hook
        pass

    def validate(self, epoch: int) -> dict[str, float]:
        return {}

    @abstractmethod
    def lrs(self) -> dict[str, float]: ...

    def epoch_extras(self) -> dict[str, float]:
        """Further per-epoch values for metrics.csv (e.g. learned loss weights)."""
        return {}

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume (models, optimizers, schedules, scaler)."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    @abstractmethod
    def save_outputs(self, run_dir: Path, epoch: int, val: dict[str, float],
                     is_best: bool, history: list[dict[str, Any]]) -> dict[str, Path]:
        """Write the epoch's model checkpoints (called on rank 0 only)."""


def trainable_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """State dict without frozen parameters (``requires_grad=False``); buffers are kept."""
    frozen = {n for n, p in module.named_parameters() if not p.requires_grad}
    return {k: v for k, v in module.state_dict().items() if k not in frozen}


def load_trainable_state(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    frozen = {n for n, p in module.named_parameters() if not p.requires_grad}
    missing, unexpected = module.load_state_dict(state, strict=False)
    missing = [m for m in missing if m not in frozen]
    if missing or unexpected:
        bad = missing[0] if missing else unexpected[0]
        raise CheckpointError(f"resume state does not match the {what} ({bad})")


# --------------------------------------------------------------------------- run directory

def kept_files(run_dir: Path) -> list[str]:
    """What makes ``run_dir`` a run worth keeping: the resume state and model checkpoints
    (every ``*.safetensors`` file in it), sorted; empty for a folder without any."""
    if not run_dir.is_dir():
        return []
    return sorted(p.name for p in run_dir.glob("*.safetensors") if p.is_file())


def prepare_run_dir(cfg: TrainConfig, ctx: DistContext | None = None, *,
                    reporter: Reporter | None = None) -> Path:
    """Check ``--out``/``--resume`` before any work (nothing is created or removed here).

    A folder that holds a ``config.yaml`` but no state and no checkpoint is a run killed during
    its first epoch: there is nothing to lose, so ``--out`` on it starts the run again (the
    stale start-up files are replaced by :func:`fit`) and ``--resume`` on it starts its saved
    configuration from epoch 1 (``cfg.resume`` is cleared); either prints a one-line note.
    A folder with state or checkpoints is never overwritten.
    """
    say = phase_reporter(cfg, ctx, reporter).info
    if cfg.resume:
        run_dir = Path(cfg.resume)
        if (run_dir / STATE_FILE).is_file():
            return run_dir
        kept = kept_files(run_dir)
        if kept:
            raise LandslideError(f"--resume {run_dir}: no {STATE_FILE} there (only "
                                 f"{', '.join(kept)}), so it cannot be continued; start a new "
                                 "run in another --out folder")
        say(f"--resume {run_dir}: no epoch was completed there, nothing to resume; "
            f"starting the run from epoch 1 with its {CONFIG_FILE}")
        cfg.resume = None
        return run_dir
    if not cfg.out:
        raise LandslideError("--out RUN_DIR is required")
    run_dir = Path(cfg.out)
    if run_dir.exists():
        if not run_dir.is_dir():
            raise LandslideError(f"--out {run_dir} exists and is not a folder")
        kept = kept_files(run_dir)
        if kept:
            raise LandslideError(f"--out {run_dir} already holds a run ({', '.join(kept)}); "
                                 f"continue it with --resume {run_dir} or choose another folder")
        if (run_dir / CONFIG_FILE).exists():
            say(f"--out {run_dir}: the run there stopped before completing an epoch "
                f"(no {STATE_FILE}); starting it again")
    return run_dir


# --------------------------------------------------------------------------- the loop

def fit(task: TrainTask, cfg: TrainConfig, ctx: DistContext, run_dir: Path, *,
        reporter: Reporter | None = None) -> dict[str, Any]:
    """Train ``task`` for ``cfg.epochs`` or ``cfg.steps`` optimizer steps (or until
    ``cfg.stop_after`` epochs in this call); progress and notes go to ``reporter``."""
    return FitLoop(task, cfg, ctx, run_dir, phase_reporter(cfg, ctx, reporter)).run()


@dataclass
class EpochStats:
    """What :meth:`FitLoop.run_epoch` measured: loss means and images over all processes."""

    means: dict[str, float]
    images: float
    started: float  #: ``time.perf_counter()`` at the start of the epoch
    train_seconds: float


class FitLoop:
    """One :func:`fit` call: the run's plan and counters, and its three steps.

    :meth:`restore` continues from the resume state or starts the run folder afresh;
    :meth:`run_epoch` runs the optimisation steps of one epoch; :meth:`end_epoch` validates,
    tracks the best score and writes the metrics row, the checkpoints and the resume state.
    """

    def __init__(self, task: TrainTask, cfg: TrainConfig, ctx: DistContext, run_dir: Path,
                 reporter: Reporter) -> None:
        self.task, self.cfg, self.ctx, self.run_dir, self.rep = task, cfg, ctx, run_dir, reporter
        self.main = ctx.is_main
        # the loss terms are read back from the device only when someone is told them
        self.show = self.main and not isinstance(reporter, (NullReporter, QuietReporter))
        self.loader = EpochLoader(task.train_dataset, batch_size=cfg.batch_size, seed=cfg.seed,
                                  ctx=ctx, num_workers=cfg.workers,
                                  pin_memory=ctx.device.type == "cuda",
                                  sampling=getattr(cfg, "sampling", "uniform"))
        self.steps_per_epoch = len(self.loader)
        if self.steps_per_epoch == 0:
            raise LandslideError("the training split yields no batches")
        self.total_steps = planned_steps(cfg, self.steps_per_epoch)
        self.epochs = planned_epochs(cfg, self.steps_per_epoch)
        task.total_steps = self.total_steps
        task.setup(self.steps_per_epoch)
        self.start_epoch, self.step, self.best = 0, 0, None
        self.log = MetricsLog(run_dir, tensorboard=cfg.tensorboard, enabled=self.main,
                              reporter=reporter)
        self.progress = ProgressDisplay(reporter, self.epochs, self.steps_per_epoch,
                                        cfg.batch_size * ctx.world_size)
        self.outputs: dict[str, Path] = {}
        self.ran = 0  #: epochs run by this call
        self.run_t0 = 0.0
        self.done_steps = 0  #: steps of this call shown so far (for the run ETA)

    @property
    def finished(self) -> bool:
        return self.start_epoch + self.ran >= self.epochs or self.step >= self.total_steps

    def run(self) -> dict[str, Any]:
        self.restore()
        self.ctx.barrier()
        stopped_early = False
        self.run_t0 = time.perf_counter()
        try:
            for epoch in range(self.start_epoch, self.epochs):
                if self.step >= self.total_steps:
                    break
                self.end_epoch(epoch, self.run_epoch(epoch))
                self.ran += 1
                stop_after = self.cfg.stop_after
                if stop_after is not None and self.ran >= stop_after and not self.finished:
                    stopped_early = True
                    break
        finally:
            self.progress.close()
            self.log.close()
        if stopped_early:
            self.rep.info(f"stopped after {self.ran} epoch(s); continue with --resume "
                          f"{self.run_dir}")
        return self.result()

    def restore(self) -> None:
        """Continue from ``state.safetensors`` (``--resume``), or start the run folder."""
        cfg, ctx, run_dir = self.cfg, self.ctx, self.run_dir
        if cfg.resume:
            saved = load_state(run_dir / STATE_FILE)
            if saved.get("phase") != cfg.phase:
                raise CheckpointError(f"{run_dir / STATE_FILE}: is a {saved.get('phase')!r} "
                                      f"run, not {cfg.phase!r}")
            self.task.load_state_dict(saved["task"])
            self.start_epoch, self.step = int(saved["epoch"]), int(saved["step"])
            self.best = saved.get("best")
            rng = saved.get("rng_all") or []
            if ctx.rank < len(rng):
                set_rng_state(rng[ctx.rank])
            self.log.load(self.start_epoch)
            if (self.start_epoch >= self.epochs or self.step >= self.total_steps) and self.main:
                self.rep.info(f"run {run_dir} already finished {self.start_epoch} epochs "
                              f"({self.step} steps)")
        elif self.main:
            run_dir.mkdir(parents=True, exist_ok=True)
            if (run_dir / CONFIG_FILE).exists():
                # start-up files of a run that never completed an epoch (see prepare_run_dir)
                (run_dir / METRICS_FILE).unlink(missing_ok=True)
            save_config(cfg, run_dir / CONFIG_FILE)

    def run_epoch(self, epoch: int) -> EpochStats:
        """The optimisation steps of epoch ``epoch`` (0-based), seeded by ``(seed, epoch)``."""
        cfg, ctx, task = self.cfg, self.ctx, self.task
        # the last epoch of a run counted in steps may be partial
        epoch_steps = min(self.steps_per_epoch, self.total_steps - self.step)
        t0 = time.perf_counter()
        seed_everything(derive_seed(cfg.seed, epoch, ctx.rank))
        task.set_train(True)
        self.progress.start_epoch(epoch + 1, epoch_steps)
        # running sums stay on the device: no host sync per step (only when displayed)
        acc = torch.float64 if ctx.device.type in ("cpu", "cuda") else torch.float32
        sums: dict[str, torch.Tensor] = {}
        count = torch.zeros((), dtype=acc)
        seen = 0
        last_logged = 0
        for i, batch in enumerate(worker_errors(self.loader.epoch(epoch))):
            if i >= epoch_steps:
                break
            terms = task.train_step(batch)
            n = task.batch_size_of(batch)
            seen += n
            for k, v in terms.items():
                v = v.detach().to(acc) * n
                sums[k] = sums[k] + v if k in sums else v
            count += n
            self.step += 1
            if self.show and ((i + 1) % max(1, cfg.log_every) == 0 or i + 1 == epoch_steps):
                now = time.perf_counter()
                rate = seen * ctx.world_size / max(now - t0, 1e-9)
                self.done_steps += (i + 1) - last_logged
                last_logged = i + 1
                left = self.total_steps - self.step
                eta = (now - self.run_t0) / max(self.done_steps, 1) * left
                info = "  ".join(f"{k} {(sums[k] / count).item():.4g}" for k in sums)
                self.progress.update(i + 1, f"{info}  {rate:.1f} img/s  run eta {_hms(eta)}")
        # epoch means over all processes
        names = sorted(sums)
        packed = torch.stack([sums[k].cpu() for k in names] + [count]) if names \
            else count[None]
        packed = ctx.all_reduce_sum(packed.double())
        means = {k: float(packed[j] / packed[-1]) for j, k in enumerate(names)}
        return EpochStats(means, float(packed[-1]), t0, time.perf_counter() - t0)

    def validates(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` (0-based) ends with validation: every ``val_every`` epochs
        and always after the last one."""
        done = epoch + 1
        return done % max(1, self.cfg.val_every) == 0 or done >= self.epochs

    def end_epoch(self, epoch: int, stats: EpochStats) -> None:
        """Validate epoch ``epoch`` (0-based) and write its row, checkpoints and state."""
        task, run_dir = self.task, self.run_dir
        task.set_train(False)
        validated = self.validates(epoch)
        val = task.validate(epoch + 1) if validated else {}
        seconds = time.perf_counter() - stats.started
        is_best = False
        if task.best_metric is not None and task.best_metric in val:
            score = val[task.best_metric]
            if self.best is None or score > self.best:
                self.best, is_best = score, True
        row: dict[str, Any] = {"epoch": epoch + 1, "step": self.step}
        row.update({f"train_{k}": v for k, v in stats.means.items()})
        row.update({f"lr_{k}": v for k, v in task.lrs().items()})
        row.update(task.epoch_extras())
        row.update({f"val_{k}": v for k, v in val.items()})
        row.update({"img_per_s": stats.images / max(stats.train_seconds, 1e-9),
                    "seconds": seconds})
        rngs = _gather_rng(self.ctx)
        if self.main:
            self.log.log(row)
            if validated:  # checkpoints carry the validation's threshold and metrics
                self.outputs = task.save_outputs(run_dir, epoch + 1, val, is_best,
                                                 self.log.rows)
            save_state(run_dir / STATE_FILE, {
                "phase": self.cfg.phase, "epoch": epoch + 1, "step": self.step,
                "best": self.best, "task": task.state_dict(), "rng_all": rngs,
            })
            summary = "  ".join(f"{k} {v:.4g}" for k, v in stats.means.items())
            vsum = "  ".join(f"{k} {val[k]:.4g}" for k in SUMMARY_VAL_KEYS if k in val)
            self.progress.message(f"epoch {epoch + 1}/{self.epochs}: {summary}"
                                  + (f" | val {vsum}" if vsum else "") + f" ({seconds:.1f}s)")
        self.ctx.barrier()

    def result(self) -> dict[str, Any]:
        """What :func:`fit` returns (``outputs``: this call's checkpoints, else those on disk)."""
        outputs = self.outputs
        if self.main and not outputs:
            outputs = {p.stem: p for p in (self.run_dir / "last.safetensors",
                                           self.run_dir / "best.safetensors") if p.is_file()}
        return {"run_dir": self.run_dir, "epochs_done": self.start_epoch + self.ran,
                "finished": self.finished, "best": self.best, "outputs": outputs,
                "history": list(self.log.rows), "steps_done": self.step}


def _gather_rng(ctx: DistContext) -> list[dict[str, Any]]:
    mine = rng_state()
    if not ctx.distributed:
        return [mine]
    import torch.distributed as dist

    gathered: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, mine)
    return gathered


def phase_reporter(cfg: TrainConfig, ctx: DistContext | None,
                   reporter: Reporter | None) -> Reporter:
    """What one process of a training phase reports to: rank 0 only; with ``cfg.quiet``
    only the warnings."""
    if ctx is not None and not ctx.is_main:
        return NullReporter()
    rep = as_reporter(reporter)
    return QuietReporter(rep) if cfg.quiet else rep


def run_phase(cfg: TrainConfig, build_task: Callable[..., Any], *,
              reporter: Reporter | None = None) -> Any:
    """Run (or resume) one training phase: validate, set up, fit, clean up; a TrainResult.

    Everything that can fail on user input (data root, empty split, weights, run folder) is
    checked by ``cfg.validate`` and ``build_task(cfg, ctx, reporter=)`` before ``fit``
    writes anything. ``reporter`` receives notes, warnings and progress (``None``: nothing).
    """
    from landslide_cli.train.result import TrainResult

    cfg.validate()
    ctx = setup(cfg.device)
    try:
        rep = phase_reporter(cfg, ctx, reporter)
        run_dir = prepare_run_dir(cfg, ctx, reporter=rep)
        task = build_task(cfg, ctx, reporter=rep)
        result = fit(task, cfg, ctx, run_dir, reporter=rep)
    except BaseException:
        ctx.close(barrier=False)
        raise
    ctx.close()
    return TrainResult.from_fit(result)
