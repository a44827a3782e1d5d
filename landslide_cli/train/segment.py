"""Phase 2: segmentation training of backbone + decoder (DCF or any registered head).

Loss ``L_M = 0.4 CE + 0.6 Focal(gamma=2)``; AdamW with two parameter groups (backbone and
decoder) whose learning rates decay per step to their final values. Every epoch the model is
validated with :mod:`landslide_cli.metrics`; ``last.safetensors`` and ``best.safetensors`` (by
validation landslide IoU at threshold 0.5) are self-describing segmentation checkpoints that
``predict``, ``eval`` and ``export`` load unchanged, with the best-F1 threshold of validation
stored as the model's decision threshold.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from landslide_cli.checkpoint import CLASSES, CheckpointMeta, load_checkpoint, save_checkpoint
from landslide_cli.errors import CheckpointError, LandslideError
from landslide_cli.preprocess import InputSpec
from landslide_cli.reporting import Reporter
from landslide_cli.train import common
from landslide_cli.train.config import SegmentConfig
from landslide_cli.train.distributed import DistContext
from landslide_cli.train.engine import (
    LRSchedule,
    TrainTask,
    amp_dtype,
    autocast,
    eval_loader,
    make_scaler,
    planned_steps,
    run_phase,
    seed_everything,
    worker_errors,
)
from landslide_cli.train.losses import SegmentationLoss
from landslide_cli.train.result import TrainResult
from landslide_cli.zoo.segmenter import Segmenter
from landslide_cli.zoo.spec import Architecture

IGNORE = -100
#: validation metrics copied into the progress line / metrics.csv
VAL_KEYS = ("iou", "precision", "recall", "f1", "miou", "oa", "mean_f1")


class SegmentTask(TrainTask):
    """CE + focal training with per-epoch validation, for :func:`fit`."""

    best_metric = "iou"

    def __init__(self, cfg: SegmentConfig, ctx: DistContext, *, model: Segmenter,
                 spec: InputSpec, train_tiles: Any, val_tiles: Any | None,
                 init_info: dict[str, Any]) -> None:
        super().__init__(cfg, ctx)
        self.cfg: SegmentConfig = cfg
        dev = ctx.device
        self.spec = spec
        self.train_tiles = train_tiles
        self.val_tiles = val_tiles
        self.init_info = init_info
        self.model_module = model.to(dev)
        self.model = common.wrap_ddp(self.model_module, ctx, sync_bn=cfg.sync_bn)
        if cfg.sync_bn and ctx.distributed:
            self.model_module = common.unwrap(self.model)  # type: ignore[assignment]
        self.criterion = SegmentationLoss(cfg.ce_weight, cfg.focal_weight, cfg.gamma,
                                          cfg.class_weights, ignore_index=IGNORE).to(dev)
        self.dtype = amp_dtype(cfg, dev)
        self.scaler = make_scaler(dev, self.dtype)
        #: validation autocast: as training on CUDA; fp32 on CPU (``cpu_amp`` trains only)
        self.val_dtype = self.dtype if dev.type == "cuda" else None
        self._dataset = common.train_dataset(train_tiles, spec, cfg)
        self.val_dataset = None
        self.regions: list[str] = []
        if val_tiles is not None:
            from landslide_cli.data import SegmentationDataset

            self.val_dataset = SegmentationDataset(val_tiles, spec, augment=None,
                                                   size=cfg.val_size)
            self.regions = list(val_tiles.regions)
        self._val_shapes: list[tuple[int, int]] | None = None
        self.last_val: dict[str, Any] = {}
        self.best_val: dict[str, Any] = {}

    @property
    def train_dataset(self) -> Dataset:
        return self._dataset

    def setup(self, steps_per_epoch: int) -> None:
        cfg = self.cfg
        m = self.model_module
        groups = [
            {"params": [p for p in m.backbone.parameters() if p.requires_grad],
             "initial_lr": cfg.lr_backbone, "final_lr": cfg.lr_backbone_final,
             "name": "backbone"},
            {"params": [p for p in m.decoder.parameters() if p.requires_grad],
             "initial_lr": cfg.lr_decoder, "final_lr": cfg.lr_decoder_final,
             "name": "decoder"},
        ]
        self.opt = common.adamw(groups, cfg)
        total = self.total_steps or planned_steps(cfg, steps_per_epoch)
        self.sched = LRSchedule(self.opt, total, kind=cfg.schedule,
                                power=cfg.poly_power, warmup=cfg.warmup_steps)

    def set_train(self, mode: bool) -> None:
        self.model.train(mode)

    def train_step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        dev = self.ctx.device
        x = batch["image"].to(dev, non_blocking=True)
        y = batch["mask"].to(dev, non_blocking=True)
        if "valid" in batch:
            y = torch.where(batch["valid"].to(dev), y, torch.full_like(y, IGNORE))
        with autocast(dev, self.dtype):
            logits = self.model(x)
        terms = self.criterion.terms(logits.float(), y)  # the loss in fp32
        loss = self.cfg.ce_weight * terms["ce"] + self.cfg.focal_weight * terms["focal"]
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.grad_clip:
            self.scaler.unscale_(self.opt)
            common.clip(list(self.model_module.parameters()), self.cfg.grad_clip)
        self.scaler.step(self.opt)
        self.scaler.update()
        self.sched.step()
        return {"loss": loss.detach(), "ce": terms["ce"].detach(),
                "focal": terms["focal"].detach()}

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self, epoch: int) -> dict[str, float]:
        if self.val_dataset is None:
            return {}
        from landslide_cli.metrics import PRHistogram

        cfg, dev = self.cfg, self.ctx.device
        bins = cfg.threshold_bins
        model = self.model_module
        model.eval()
        per_region = {r: PRHistogram(bins) for r in self.regions}
        loader = eval_loader(self.val_dataset, batch_size=cfg.val_batch_size, ctx=self.ctx,
                             num_workers=min(cfg.workers, 2), shapes=self.val_shapes())
        for batch in worker_errors(loader):
            x = batch["image"].to(dev, non_blocking=True)
            with autocast(dev, self.val_dtype):
                logits = model(x)
            prob = torch.softmax(logits.float(), dim=1)[:, 1].cpu()
            y = batch["mask"]
            valid = batch.get("valid")
            for i, region in enumerate(batch["region"]):
                per_region[region].update(prob[i], y[i], None if valid is None else valid[i])
        if self.ctx.distributed:  # sum the histograms of all processes
            packed = torch.from_numpy(np.stack([np.concatenate([h.pos, h.neg])
                                                for h in per_region.values()]))
            packed = self.ctx.all_reduce_sum(packed).numpy()
            for row, h in zip(packed, per_region.values(), strict=True):
                n = h.pos.shape[0]
                h.pos[:] = row[:n]
                h.neg[:] = row[n:]
        total = PRHistogram(bins)
        for h in per_region.values():
            total += h
        best = total.best_f1()
        threshold = best["threshold"] if total.pos.sum() > 0 else 0.5
        at_half = total.at(0.5).compute()
        at_t = total.at(threshold).compute()
        out: dict[str, float] = {k: at_half[k] for k in VAL_KEYS}
        out["threshold"] = threshold
        out["iou_at_threshold"] = at_t["iou"]
        out["f1_at_threshold"] = at_t["f1"]
        regions = {}
        for r, h in per_region.items():
            m = h.at(0.5).compute()
            mt = h.at(threshold).compute()
            regions[r] = {"iou": m["iou"], "f1": m["f1"], "iou_at_threshold": mt["iou"],
                          "f1_at_threshold": mt["f1"], "pixels": int(h.pos.sum() + h.neg.sum()),
                          "landslide_pixels": int(h.pos.sum())}
            out[f"{r}/iou"] = m["iou"]
        self.last_val = {"overall": {**{k: at_half[k] for k in (*VAL_KEYS, "background_iou")},
                                     "threshold": threshold, "iou_at_threshold": at_t["iou"],
                                     "f1_at_threshold": at_t["f1"],
                                     "precision_at_threshold": at_t["precision"],
                                     "recall_at_threshold": at_t["recall"]},
                         "per_region": regions, "epoch": epoch,
                         "tiles": len(self.val_dataset)}  # type: ignore[arg-type]
        return out

    def val_shapes(self) -> list[tuple[int, int]] | None:
        """Native tile sizes (read once from the headers) for size-grouped batching."""
        if self.cfg.val_batch_size <= 1 or self.cfg.val_size is not None:
            return None
        if self._val_shapes is None:
            tiles = self.val_tiles
            self._val_shapes = [tuple(tiles.reader.image_info(s)[1:3])  # type: ignore[misc]
                                for s in tiles.samples]
        return self._val_shapes

    def lrs(self) -> dict[str, float]:
        return {g.get("name", str(i)): g["lr"] for i, g in enumerate(self.opt.param_groups)}

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model_module.state_dict(), "opt": self.opt.state_dict(),
                "sched": self.sched.state_dict(), "scaler": self.scaler.state_dict(),
                "best_val": self.best_val}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing, unexpected = self.model_module.load_state_dict(state["model"], strict=False)
        if missing or unexpected:
            raise CheckpointError("resume state does not match the model "
                                  f"({(missing or unexpected)[0]})")
        self.opt.load_state_dict(state["opt"])
        self.sched.load_state_dict(state["sched"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.best_val = dict(state.get("best_val") or {})

    # ------------------------------------------------------------------ outputs
    def meta(self, run_dir: Path, epoch: int, val: dict[str, Any],
             history: list[dict[str, Any]]) -> CheckpointMeta:
        cfg = self.cfg
        last = history[-1] if history else {}
        losses = {k[len("train_"):]: float(v) for k, v in last.items()
                  if k.startswith("train_")}
        threshold = float(val.get("overall", {}).get("threshold", 0.5)) if val else 0.5
        return CheckpointMeta(
            kind="segmenter",
            name=cfg.name or Path(run_dir).name,
            architecture=self.model_module.arch.to_dict(),
            input=self.spec.to_dict(),
            threshold=threshold,
            classes=list(CLASSES),
            training={
                "phase": "segment",
                "epoch": epoch,
                "epochs": cfg.epochs,
                "steps": self.total_steps,
                "steps_done": self.sched.step_count,
                "batch_size": cfg.batch_size * self.ctx.world_size,
                "size": cfg.size,
                "optimizer": "AdamW",
                "weight_decay": cfg.weight_decay,
                "lr_backbone": [cfg.lr_backbone, cfg.lr_backbone_final],
                "lr_decoder": [cfg.lr_decoder, cfg.lr_decoder_final],
                "schedule": cfg.schedule,
                "loss": {"ce": cfg.ce_weight, "focal": cfg.focal_weight, "gamma": cfg.gamma,
                         "class_weights": cfg.class_weights},
                "augment": {"rot90": cfg.rot90, "flips": cfg.flips,
                            "color_jitter": cfg.color_jitter, "scale_jitter": cfg.scale_jitter,
                            "photometric": cfg.photometric, "fg_crop": cfg.fg_crop},
                "sampling": cfg.sampling,
                "init": self.init_info,
                "seed": cfg.seed,
                "amp": ("bf16-cpu" if self.ctx.device.type == "cpu" else cfg.amp)
                if self.dtype is not None else "off",
                "losses": losses,
                "dataset": self.train_tiles.info(),
                "val_dataset": self.val_tiles.info()
                if self.val_tiles is not None else None,
                "environment": common.environment(self.ctx),
            },
            metrics={"val": val} if val else {},
        )

    def save_outputs(self, run_dir: Path, epoch: int, val: dict[str, float], is_best: bool,
                     history: list[dict[str, Any]]) -> dict[str, Path]:
        state = self.model_module.state_dict()
        out = {"last": save_checkpoint(run_dir / "last.safetensors", state,
                                       self.meta(run_dir, epoch, self.last_val, history))}
        if is_best:
            self.best_val = dict(self.last_val)
            out["best"] = save_checkpoint(run_dir / "best.safetensors", state,
                                          self.meta(run_dir, epoch, self.last_val, history))
        elif (run_dir / "best.safetensors").is_file():
            out["best"] = run_dir / "best.safetensors"
        return out


# ---------------------------------------------------------------------- building

#: what ``--init RUN_DIR`` takes from a run folder (a distillation run writes only ``last``)
INIT_FILE = "last.safetensors"


def resolve_init(ref: str | Path) -> Path:
    """The checkpoint file ``--init ref`` means, or raise one line.

    An existing file is used as is; an existing folder (a ``landslide train distill`` run
    folder) gives its ``last.safetensors``; only a path that does not exist is looked up among
    the shipped model names.
    """
    path = Path(ref).expanduser()
    if path.is_dir():
        found = path / INIT_FILE
        if found.is_file():
            return found
        raise CheckpointError(f"--init {path}: the folder holds no {INIT_FILE} (give a run "
                              "folder of `landslide train distill` that completed an epoch, "
                              "or a checkpoint file)")
    if path.exists():
        return path
    from landslide_cli.zoo.loading import shipped_models

    shipped = shipped_models().get(str(ref))
    if shipped is not None:
        return shipped
    raise CheckpointError(f"--init {ref}: checkpoint not found (neither a file nor a run "
                          "folder)")


def load_init(path: str | Path, model: Segmenter) -> dict[str, Any]:
    """Load a phase-1 backbone checkpoint into ``model.backbone``, or raise one line."""
    from landslide_cli.zoo.registries import BACKBONES

    path = Path(path)
    meta, state = load_checkpoint(path)
    prefix = f"incompatible --init {path}"
    if meta.kind != "backbone":
        raise CheckpointError(f"{prefix}: it is a {meta.kind} checkpoint; expected a backbone "
                              "checkpoint from `landslide train distill`")
    try:
        theirs = BACKBONES.resolve(meta.arch.backbone)
    except LandslideError:
        theirs = meta.arch.backbone
    if theirs != model.arch.backbone:
        raise CheckpointError(f"{prefix}: backbone {theirs}, but this run trains "
                              f"{model.arch.backbone}")
    own = model.backbone.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        if shapes:
            k = shapes[0]
            what = f"{k} has shape {tuple(state[k].shape)}, expected {tuple(own[k].shape)}"
        elif missing:
            what = f"{len(missing)} tensors missing (e.g. {missing[0]})"
        else:
            what = f"{len(unexpected)} unexpected tensors (e.g. {unexpected[0]})"
        raise CheckpointError(f"{prefix}: weights do not fit {model.arch.backbone}: {what}")
    model.backbone.load_state_dict(state)
    return {"from": "distill", "path": str(path), "name": meta.name,
            "teacher": meta.training.get("teacher"), "method": meta.training.get("method")}


def build_segment_task(cfg: SegmentConfig, ctx: DistContext, *,
                       reporter: Reporter | None = None) -> SegmentTask:
    """Validate data and --init, build the model (no files written)."""
    import landslide_cli.zoo  # noqa: F401 - registration
    from landslide_cli.checkpoint import read_metadata
    from landslide_cli.zoo.registries import BACKBONES, DECODERS
    from landslide_cli.zoo.segmenter import build_segmenter

    backbone = BACKBONES.resolve(cfg.backbone)
    decoder = DECODERS.resolve(cfg.decoder)
    train_tiles = common.open_split(cfg, cfg.train_split, what="training")
    val_tiles = None
    if cfg.val_split.lower() != "none":
        val_tiles = common.open_split(cfg, cfg.val_split, what="validation")
    overrides = dict(cfg.input or {})
    if cfg.init:
        # the file, not the folder, goes into config.yaml and the checkpoint metadata
        cfg.init = str(resolve_init(cfg.init))
    init_meta = read_metadata(cfg.init) if cfg.init else None
    if init_meta is not None and init_meta.kind == "backbone" and not cfg.input:
        # keep the normalisation the backbone was distilled with
        overrides = {k: v for k, v in init_meta.input.items() if k != "tile"}
    spec = common.input_spec_for(train_tiles, cfg, overrides)
    hint = train_tiles.input_spec_hint
    if hint.num_bands != spec.num_bands:
        raise LandslideError(f"the data has {hint.num_bands} band(s) but the model input "
                             f"has {spec.num_bands} ({', '.join(spec.bands)})"
                             + (f"; incompatible --init {cfg.init}" if init_meta else ""))
    arch = Architecture(backbone=backbone, decoder=decoder, decoder_width=cfg.decoder_width,
                        num_classes=2, in_chans=spec.num_bands)
    seed_everything(cfg.seed)
    model = build_segmenter(arch, pretrained=cfg.pretrained, weights=cfg.weights)
    if cfg.init:
        init_info = load_init(cfg.init, model)
    elif cfg.pretrained or cfg.weights:
        init_info = {"from": "timm", "weights": str(cfg.weights) if cfg.weights else "hub"}
    else:
        init_info = {"from": "random"}
    return SegmentTask(cfg, ctx, model=model, spec=spec, train_tiles=train_tiles,
                       val_tiles=val_tiles, init_info=init_info)


def train_segment(cfg: SegmentConfig, *, reporter: Reporter | None = None) -> TrainResult:
    """Run (or resume) phase 2 as configured; returns where the checkpoints are. Notes,
    warnings and progress go to ``reporter`` (``None``: nothing is printed)."""
    return run_phase(cfg, build_segment_task, reporter=reporter)

