"""Phase 2: segmentation training of backbone + decoder (DCF or any registered head).

Loss ``L_M = 0.4 CE + 0.6 Focal(gamma=2)``; AdamW with two parameter groups (backbone and
decoder) whose learning rates decay per step to their final values. Every epoch the model is
validated with :mod:`landslide_cli.metrics`; ``last.safetensors`` and ``best.safetensors`` (by
validation landslide IoU at threshold 0.5) are self-describing segmentation checkpoints that
``predict``, ``eval`` and ``export`` load unchanged, with the best-F1 threshold of validation
stored as the model's decision threshold.

``--init`` starts the backbone from a phase-1 checkpoint, or the whole model from a segmentation
checkpoint (or shipped model name): then architecture, InputSpec and, without validation, the
threshold are the init model's (:func:`adopt_init_model`, :func:`init_input`); ``--preset
few-shot`` (:mod:`landslide_cli.train.presets`) is the schedule for a few tiles.
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
from landslide_cli.train.presets import Preset
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
                 init_info: dict[str, Any], default_threshold: float = 0.5) -> None:
        super().__init__(cfg, ctx)
        self.cfg: SegmentConfig = cfg
        #: decision threshold when validation cannot pick one (no validation tiles, or none
        #: with landslide pixels): 0.5, or the threshold of a segmentation model given to --init
        self.default_threshold = default_threshold
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
        threshold = best["threshold"] if total.pos.sum() > 0 else self.default_threshold
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
        threshold = (float(val.get("overall", {}).get("threshold", self.default_threshold))
                     if val else self.default_threshold)
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
                            "scale_range": cfg.scale_range,
                            "photometric": cfg.photometric, "fg_crop": cfg.fg_crop,
                            "density_jitter": cfg.density_jitter},
                "sampling": cfg.sampling,
                "init": self.init_info,
                "preset": cfg.preset,
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
    the shipped model names (as ``--model`` of ``eval`` and ``predict``).
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

    shipped = shipped_models()
    if str(ref) in shipped:
        return shipped[str(ref)]
    raise CheckpointError(f"--init {ref}: checkpoint not found (neither a file, a run folder "
                          f"nor a shipped model: {', '.join(shipped) or 'none bundled'})")


def _check_weights(prefix: str, what: str, own: dict[str, torch.Tensor],
                   state: dict[str, torch.Tensor]) -> None:
    """Raise one line unless ``state`` has exactly the tensors (names, shapes) of ``own``."""
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if not (missing or unexpected or shapes):
        return
    if shapes:
        k = shapes[0]
        why = f"{k} has shape {tuple(state[k].shape)}, expected {tuple(own[k].shape)}"
    elif missing:
        why = f"{len(missing)} tensors missing (e.g. {missing[0]})"
    else:
        why = f"{len(unexpected)} unexpected tensors (e.g. {unexpected[0]})"
    raise CheckpointError(f"{prefix}: weights do not fit {what}: {why}")


def load_init(path: str | Path, model: Segmenter) -> dict[str, Any]:
    """Load ``--init``: a phase-1 backbone checkpoint into ``model.backbone``, or a segmentation
    checkpoint into the whole ``model`` (built with its architecture); raise one line."""
    from landslide_cli.checkpoint import file_sha256
    from landslide_cli.zoo.registries import BACKBONES

    path = Path(path)
    meta, state = load_checkpoint(path)
    prefix = f"incompatible --init {path}"
    if meta.kind == "segmenter":
        _check_weights(prefix, f"{model.arch.spec} (width {model.arch.decoder_width})",
                       model.state_dict(), state)
        model.load_state_dict(state)
        return {"from": "segmenter", "path": str(path), "name": meta.name,
                "sha256": file_sha256(path), "architecture": meta.arch.to_dict(),
                "threshold": meta.threshold}
    if meta.kind != "backbone":
        raise CheckpointError(f"{prefix}: it is a {meta.kind} checkpoint; expected a backbone "
                              "checkpoint from `landslide train distill` or a segmentation "
                              "model")
    try:
        theirs = BACKBONES.resolve(meta.arch.backbone)
    except LandslideError:
        theirs = meta.arch.backbone
    if theirs != model.arch.backbone:
        raise CheckpointError(f"{prefix}: backbone {theirs}, but this run trains "
                              f"{model.arch.backbone}")
    _check_weights(prefix, model.arch.backbone, model.backbone.state_dict(), state)
    model.backbone.load_state_dict(state)
    return {"from": "distill", "path": str(path), "name": meta.name,
            "teacher": meta.training.get("teacher"), "method": meta.training.get("method")}


#: architecture fields that a segmentation ``--init`` fixes, with their flags
ARCH_FIELDS = {"backbone": "--backbone", "decoder": "--decoder",
               "decoder_width": "--decoder-width"}


def adopt_init_model(cfg: SegmentConfig, meta: CheckpointMeta, *,
                     preset: Preset | None = None) -> None:
    """Make ``cfg`` describe fine-tuning the segmentation model ``meta`` (an ``--init``).

    The architecture comes from the model: a backbone, decoder or width that a config file or a
    flag gives must be the model's (one-line error otherwise). With a ``preset``, its
    :attr:`~landslide_cli.train.presets.Preset.inherit` fields (crop size, augmentations,
    sampling) that were not given take the values recorded in the model's training metadata.
    ``cfg`` is changed in place, so ``config.yaml`` records what the run uses.
    """
    from landslide_cli.train.config import given_options
    from landslide_cli.train.presets import inherited_value
    from landslide_cli.zoo.registries import BACKBONES, DECODERS

    given = given_options(cfg)
    arch = meta.arch

    def canon(name: str, value: Any) -> Any:
        registry = {"backbone": BACKBONES, "decoder": DECODERS}.get(name)
        if registry is None:
            return value
        try:
            return registry.resolve(str(value))
        except LandslideError:
            return value

    theirs = {name: canon(name, getattr(arch, name)) for name in ARCH_FIELDS}
    for name, flag in ARCH_FIELDS.items():
        if name in given and canon(name, getattr(cfg, name)) != theirs[name]:
            raise CheckpointError(
                f"incompatible --init {cfg.init}: it is a {arch.spec} model of decoder width "
                f"{arch.decoder_width}, not {flag} {getattr(cfg, name)} (leave {flag} out to "
                "fine-tune it)")
        setattr(cfg, name, theirs[name])
    if preset is not None:
        for name in preset.inherit:
            value = inherited_value(meta.training, name)
            if name not in given and value is not None:
                setattr(cfg, name, value)
    cfg.validate()


def init_input(cfg: SegmentConfig, meta: CheckpointMeta) -> dict[str, Any]:
    """The InputSpec fields of a run that fine-tunes the segmentation model ``meta``: the
    model's (bands, scale, mean/std, normalization, tile, percentiles, ...) with the run's
    ``input`` overrides on top; a band count other than the model's is a one-line error."""
    out = {**meta.input, **(cfg.input or {})}
    fusion = meta.arch.fusion
    if fusion and "derived" not in (cfg.input or {}):
        # a fused model (landslide fuse) fine-tunes its network; the colour index it
        # was mixed with is not an input of that network
        out["derived"] = [d for d in out.get("derived") or [] if d != fusion["index"]]
    bands = out.get("bands") or []
    channels = len(bands) + len(out.get("derived") or [])
    if channels != meta.arch.in_chans:
        raise CheckpointError(
            f"incompatible --init {cfg.init}: the model takes {meta.arch.in_chans} band(s) "
            f"({', '.join(meta.input.get('bands') or [])}), the input options give "
            f"{channels}")
    return out


def build_segment_task(cfg: SegmentConfig, ctx: DistContext, *,
                       reporter: Reporter | None = None) -> SegmentTask:
    """Validate data and --init, build the model (no files written)."""
    import landslide_cli.zoo  # noqa: F401 - registration
    from landslide_cli.checkpoint import read_metadata
    from landslide_cli.train.presets import get_preset
    from landslide_cli.zoo.registries import BACKBONES, DECODERS
    from landslide_cli.zoo.segmenter import build_segmenter

    preset = get_preset(cfg.preset, cfg.phase) if cfg.preset else None
    train_tiles = common.open_split(cfg, cfg.train_split, what="training")
    val_tiles = None
    if cfg.val_split.lower() != "none":
        val_tiles = common.open_split(cfg, cfg.val_split, what="validation")
    overrides = dict(cfg.input or {})
    if cfg.init:
        # the file, not the folder, goes into config.yaml and the checkpoint metadata
        cfg.init = str(resolve_init(cfg.init))
    init_meta = read_metadata(cfg.init) if cfg.init else None
    if preset is not None and preset.requires_init and (
            init_meta is None or init_meta.kind != "segmenter"):
        raise LandslideError(
            f"--preset {preset.name} fine-tunes a trained segmentation model: give --init a "
            "segmentation checkpoint or a shipped model name"
            + (f" ({cfg.init} is a {init_meta.kind} checkpoint)" if init_meta else ""))
    from_model = init_meta is not None and init_meta.kind == "segmenter"
    if from_model:
        adopt_init_model(cfg, init_meta, preset=preset)  # type: ignore[arg-type]
        overrides = init_input(cfg, init_meta)  # type: ignore[arg-type]
    elif init_meta is not None and init_meta.kind == "backbone" and not cfg.input:
        # keep the normalisation the backbone was distilled with
        overrides = {k: v for k, v in init_meta.input.items() if k != "tile"}
    backbone = BACKBONES.resolve(cfg.backbone)
    decoder = DECODERS.resolve(cfg.decoder)
    hint = train_tiles.input_spec_hint
    bands = list(overrides.get("bands") or hint.bands)
    if hint.num_bands != len(bands):  # (before the training percentiles read the tiles)
        raise LandslideError(f"the data has {hint.num_bands} band(s) but the model input "
                             f"has {len(bands)} ({', '.join(bands)})"
                             + (f"; incompatible --init {cfg.init}" if init_meta else ""))
    spec = common.input_spec_for(train_tiles, cfg, overrides)
    if from_model and reporter is not None and "scale" not in (cfg.input or {}) and (
            hint.scale != spec.scale):
        reporter.warn(f"the data set suggests input scale {hint.scale:g}, the --init model "
                      f"divides by {spec.scale:g} (kept; `input: {{scale: ...}}` changes it)")
    arch = Architecture(backbone=backbone, decoder=decoder, decoder_width=cfg.decoder_width,
                        num_classes=2, in_chans=spec.model_channels)
    seed_everything(cfg.seed)
    model = build_segmenter(arch, pretrained=cfg.pretrained, weights=cfg.weights)
    if cfg.init:
        init_info = load_init(cfg.init, model)
    elif cfg.pretrained or cfg.weights:
        init_info = {"from": "timm", "weights": str(cfg.weights) if cfg.weights else "hub"}
    else:
        init_info = {"from": "random"}
    return SegmentTask(cfg, ctx, model=model, spec=spec, train_tiles=train_tiles,
                       val_tiles=val_tiles, init_info=init_info,
                       default_threshold=init_meta.threshold if from_model else 0.5)


def train_segment(cfg: SegmentConfig, *, reporter: Reporter | None = None) -> TrainResult:
    """Run (or resume) phase 2 as configured; returns where the checkpoints are. Notes,
    warnings and progress go to ``reporter`` (``None``: nothing is printed)."""
    return run_phase(cfg, build_segment_task, reporter=reporter)

