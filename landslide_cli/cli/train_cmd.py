"""`landslide train distill|segment`: thin Typer layers over :mod:`landslide_cli.train`.

Every option defaults to ``None`` ("not given") so that precedence is flags > ``--config``
file > built-in defaults (the paper's recipe); see docs/training.md.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import typer

from landslide_cli.cli import common, options
from landslide_cli.cli.reporting import cli_reporter
from landslide_cli.errors import LandslideError
from landslide_cli.train.config import C, DistillConfig, SegmentConfig, resolve_config
from landslide_cli.train.presets import preset_names

app = typer.Typer(help="Train models: KDA distillation (phase 1) and segmentation (phase 2).",
                  no_args_is_help=True)


def _parse_kv(items: list[str] | None, flag: str) -> dict[str, Any] | None:
    if not items:
        return None
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise LandslideError(f"{flag} {item!r}: expected KEY=VALUE")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            out[key.strip()] = value
    return out


def _teachers(values: dict[str, Any]) -> None:
    """``--teacher`` (repeatable, or comma-separated): the first is ``teacher``, the others are
    ``extra_teachers``. ``--teacher-arg NAME:KEY=VALUE`` and ``--teacher-weights NAME=PATH``
    address a further teacher; without ``NAME`` they are the first teacher's."""
    given = _regions(values.pop("teacher"))
    if given:
        values["teacher"], values["extra_teachers"] = given[0], given[1:]
    first = given[0] if given else None
    plain: list[str] = []
    named: dict[str, dict[str, Any]] = {}
    for item in values.pop("teacher_arg") or []:
        key, sep, rest = item.partition("=")
        name, colon, key = key.rpartition(":") if ":" in key else ("", "", key)
        if colon and name.strip() and name.strip() != first:
            parsed = _parse_kv([f"{key}{sep}{rest}"], f"--teacher-arg {name.strip()}:")
            named.setdefault(name.strip(), {}).update(parsed or {})
        else:
            plain.append(f"{key}{sep}{rest}")
    values["teacher_args"] = _parse_kv(plain, "--teacher-arg")
    values["extra_teacher_args"] = named or None
    weights: dict[str, str] = {}
    for item in values.pop("teacher_weights") or []:
        name, sep, path = item.partition("=")
        name = name.strip()
        if sep and _TEACHER_NAME.fullmatch(name):
            if name != first:
                weights[name] = path
                continue
            item = path
        if values.get("teacher_weights") is not None:
            raise LandslideError("--teacher-weights PATH is given twice (a further teacher's "
                                 "file is given as NAME=PATH)")
        values["teacher_weights"] = item
    values["extra_teacher_weights"] = weights or None


#: a teacher name before "=" in --teacher-weights NAME=PATH (a path has "/", "\\" or ".")
_TEACHER_NAME = re.compile(r"[A-Za-z0-9_-]+")


def _regions(items: list[str] | None) -> list[str] | None:
    if not items:
        return None
    return [r.strip() for item in items for r in item.split(",") if r.strip()]


def _report(result: Any, phase: str) -> None:
    from landslide_cli.train.distributed import env_world

    if env_world()[0] != 0:
        return
    if not result.finished:
        common.out.print(f"stopped after epoch {result.epochs_done}; continue with "
                         f"`landslide train {phase} --resume {result.run_dir}`", highlight=False)
    for kind, path in sorted(result.outputs.items()):
        common.out.print(f"{kind}: {path}", highlight=False)
    if result.best is not None:
        common.out.print(f"best validation landslide IoU: {result.best:.4f}", highlight=False)


_O = options.TrainOption
_DATA, _RUN, _MODEL = options.DATA, options.RUN, options.MODEL


@app.command("distill")
@options.train_command(
    DistillConfig,
    _O("teacher", list[str], ("--teacher",), "Teacher; repeat (or separate with commas) to "
       "distil several at once: one neck and KL term each, D on the first.", _MODEL),
    _O("pretrained_teacher", bool, ("--pretrained-teacher",),
       "Pretrained teacher weights via timm (the default).", _MODEL, value=False),
    _O("teacher_random", bool, ("--teacher-random",),
       "Random-init teacher (tests/ablations only).", _MODEL, value=False),
    _O("teacher_weights", list[str], ("--teacher-weights",), "Local teacher weights file; "
       "NAME=PATH for a further teacher (repeatable).", _MODEL),
    _O("teacher_size", int, ("--teacher-size",),
       "Teacher input side (multiple of its patch size).", _MODEL,
       default="the multiple nearest --size"),
    _O("teacher_arg", list[str], ("--teacher-arg",),
       "timm override KEY=VALUE for the teacher (repeatable), e.g. depth=2; "
       "NAME:KEY=VALUE for a further teacher.", _MODEL),
    _O("backbone", str, ("--backbone", "--student"), "Student backbone.", _MODEL),
    _O("student_pretrained", bool, ("--student-pretrained/--student-random",),
       "Start the student from timm (ImageNet) weights.", _MODEL),
    _O("student_weights", Path, ("--student-weights",),
       "Start the student from this timm weights file.", _MODEL),
    _O("discriminator", str, ("--discriminator",), "Discriminator: kda_authors (the "
       "authors' design, sigmoid output) or a DINOv2 name (multi-level PatchGAN on that ViT).",
       _MODEL, default="PatchGAN on the teacher's ViT"),
    _O("discriminator_vit", str, ("--discriminator-vit",), "Frozen DINOv2 of kda_authors when "
       "the teacher is not one.", _MODEL, default="the teacher"),
    _O("discriminator_weights", Path, ("--discriminator-weights",),
       "Weights of a separate discriminator ViT.", _MODEL),
    _O("d_levels", int, ("--d-levels",), "Discriminator ViT levels.", _MODEL),
    _O("d_head_width", int, ("--d-head-width",), "Discriminator head width.", _MODEL),
    options.train_choice("method", "kd (KL only) or kda (KL + adversarial)."),
    options.train_choice("adv_loss", "lsgan (least squares, targets 1/0) or paper (Eq. 2/3: "
                         "D maximises MSE(D(T), D(S)); needs a sigmoid discriminator)."),
    options.train_choice("loss_weighting",
                         "fixed (0.6/0.4) or adaptive (learned uncertainty)."),
    options.train_choice("align", "last, or intermediate (also a middle stage)."),
    _O("mid_stage", int, ("--mid-stage",), "Student stage for --align intermediate."),
    _O("mid_level", int, ("--mid-level",), "Teacher level for --align intermediate.",
       default="middle"),
    _O("tau", float, ("--tau",), "KL temperature."),
    _O("kl_weight", float, ("--kl-weight",), "Weight of the KL term."),
    _O("adv_weight", float, ("--adv-weight",), "Weight of the adversarial term."),
    _O("lr", float, ("--lr",), "Student learning rate."),
    _O("lr_final", float, ("--lr-final",), "Final student learning rate."),
    _O("d_lr", float, ("--d-lr",), "Discriminator learning rate."),
    _O("d_lr_final", float, ("--d-lr-final",), "Final discriminator learning rate."),
    _O("weighting_lr", float, ("--weighting-lr",), "LR of adaptive loss weights."),
)
def distill(**values: Any) -> None:
    """Phase 1: distil a frozen DINOv2 teacher into a PVT student (KDA)."""
    from landslide_cli.train.distill import train_distill

    pretrained_teacher, teacher_random = (values.pop("pretrained_teacher"),
                                          values.pop("teacher_random"))
    if pretrained_teacher and teacher_random:
        raise LandslideError("--pretrained-teacher and --teacher-random exclude each other")
    values["teacher_init"] = "random" if teacher_random else (
        "pretrained" if pretrained_teacher else None)
    _teachers(values)
    cfg, quiet = _resolve(DistillConfig, values)
    _report(train_distill(cfg, reporter=cli_reporter(quiet)), "distill")


@app.command("segment")
@options.train_command(
    SegmentConfig,
    _O("val_split", str, ("--val-split",), "Validation split, or none.", _DATA,
       values=options.VAL_SPLIT_CHOICES, check=options.check_val_split),
    _O("val_size", int, ("--val-size",), "Validate on centre crops of this size.", _DATA,
       default="native tiles"),
    _O("val_batch_size", int, ("--val-batch-size",), "Validation batch size.", _DATA),
    _O("photometric", float, ("--photometric",), "Sensor augmentation strength in [0, 1]: "
       "brightness, contrast, gamma, hue/saturation, blur, noise, JPEG (0: off).", _DATA),
    options.train_choice("sampling", "uniform (every tile once per epoch) or region (every "
                         "region equally often).", _DATA),
    _O("fg_crop", float, ("--fg-crop",),
       "Probability that a crop is centred on a landslide pixel.", _DATA),
    _O("density_jitter", float, ("--density-jitter",),
       "Per-tile normalization statistics with landslide pixels weighted by exp(U(-s, s)) "
       "(0: off).", _DATA),
    _O("cpu_amp", bool, ("--cpu-amp/--no-cpu-amp",),
       "Train under bf16 autocast on CPU (loss and validation in fp32).", _RUN),
    _O("sync_bn", bool, ("--sync-bn/--no-sync-bn",), "SyncBatchNorm under torchrun.", _RUN),
    _O("name", str, ("--name",), "Model name in the checkpoint.", _RUN,
       default="run folder name"),
    _O("backbone", str, ("--backbone",), "Backbone.", _MODEL),
    _O("decoder", str, ("--decoder",), "Decoder head: dcf, segformer, upernet, unet.", _MODEL),
    _O("decoder_width", int, ("--decoder-width",), "Decoder width.", _MODEL),
    _O("init", Path, ("--init",), "Backbone checkpoint from `landslide train distill` (or its "
       "run folder), or a segmentation checkpoint / shipped model name to fine-tune whole "
       "(its architecture, input spec and threshold are kept).", _MODEL),
    _O("preset", str, ("--preset",), "Named option set under --config and flags: few-shot "
       "(fine-tune an --init model on a few tiles; docs/training.md).", _RUN,
       values=preset_names("segment")),
    _O("pretrained", bool, ("--pretrained/--random-init",),
       "Start the backbone from timm (ImageNet) weights.", _MODEL),
    _O("weights", Path, ("--weights",), "Local timm weights file for the backbone.", _MODEL),
    _O("steps", int, ("--steps",), "Optimizer steps of the whole run; overrides --epochs "
       "(epochs = ceil(steps / steps per epoch))."),
    _O("lr_backbone", float, ("--lr-backbone",), "Backbone learning rate."),
    _O("lr_backbone_final", float, ("--lr-backbone-final",), "Final backbone learning rate."),
    _O("lr_decoder", float, ("--lr-decoder",), "Decoder learning rate."),
    _O("lr_decoder_final", float, ("--lr-decoder-final",), "Final decoder learning rate."),
    _O("ce_weight", float, ("--ce-weight",), "Weight of cross-entropy."),
    _O("focal_weight", float, ("--focal-weight",), "Weight of focal loss."),
    _O("gamma", float, ("--gamma",), "Focal gamma."),
    _O("class_weights", str, ("--class-weights",), "Class weights 'background,landslide'."),
    _O("threshold_bins", int, ("--threshold-bins",),
       "Histogram bins for the best-F1 threshold."),
)
def segment(**values: Any) -> None:
    """Phase 2: train backbone + decoder for landslide segmentation."""
    from landslide_cli.train.segment import train_segment

    cfg, quiet = _resolve(SegmentConfig, values)
    _report(train_segment(cfg, reporter=cli_reporter(quiet)), "segment")


def _resolve(config: type[C], values: dict[str, Any]) -> tuple[C, bool]:
    """The phase's configuration from the flags (``None``: not given) and ``--config``."""
    config_file = values.pop("config")
    values["regions"] = _regions(values["regions"])
    quiet = values["quiet"]
    values["quiet"] = (common.state.quiet or quiet) or None
    return resolve_config(config, _strs(values), config_file), quiet


def _strs(values: dict[str, Any]) -> dict[str, Any]:
    """Paths to strings (the config stores plain YAML scalars)."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in values.items()}
