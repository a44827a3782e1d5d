"""`landslide train distill|segment`: thin Typer layers over :mod:`landslide_cli.train`.

Every option defaults to ``None`` ("not given") so that precedence is flags > ``--config``
file > built-in defaults (the paper's recipe); see docs/training.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from landslide_cli.cli import common
from landslide_cli.cli.reporting import cli_reporter
from landslide_cli.errors import LandslideError

app = typer.Typer(help="Train models: KDA distillation (phase 1) and segmentation (phase 2).",
                  no_args_is_help=True)

_DATA = "Data"
_RUN = "Run"
_OPT = "Optimisation"
_MODEL = "Model"


def _opt(*names: str, help: str, panel: str = _OPT, **kw: Any) -> Any:
    return typer.Option(None, *names, help=help, rich_help_panel=panel, show_default=False, **kw)


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


@app.command("distill")
def distill(
    data: Path = _opt("--root", "--data", help="Data set root folder.", panel=_DATA),
    dataset: str = _opt("--dataset", "-d", help="Data set layout: folder, cas, bijie, "
                        "landslide4sense (default: folder).", panel=_DATA),
    skip_bad: bool = _opt("--skip-bad/--no-skip-bad", help="Skip unpaired or malformed "
                          "tiles with a warning.", panel=_DATA),
    split_file: Path = _opt("--split-file", help="JSON split file (created if missing).",
                            panel=_DATA),
    split_mode: str = _opt("--split-mode", help="random, blocked or official.", panel=_DATA),
    split_seed: int = _opt("--split-seed", help="Seed of the split (default: 0).", panel=_DATA),
    train_split: str = _opt("--train-split", help="Split to distil on: train, val, test, all "
                            "(default: train).", panel=_DATA),
    regions: list[str] = _opt("--regions", "--region", help="Regions (sub-datasets) to "
                              "keep; repeat or separate with commas.", panel=_DATA),
    size: int = _opt("--size", help="Random-crop size (default: 512).", panel=_DATA),
    color_jitter: float = _opt("--color-jitter", help="Colour jitter strength (default: 0).",
                               panel=_DATA),
    scale_jitter: float = _opt("--scale-jitter", help="Scale jitter strength (default: 0).",
                               panel=_DATA),
    num_workers: int = _opt("--num-workers", help="DataLoader workers per process "
                            "(default: min(4, CPU cores available)).", panel=_DATA),
    out: Path = _opt("--out", "-o", help="Run folder (checkpoints, config.yaml, metrics.csv).",
                     panel=_RUN),
    config: Path = _opt("--config", "-c", help="YAML file of options (flags win).", panel=_RUN),
    resume: Path = _opt("--resume", help="Continue the run in this folder.", panel=_RUN),
    stop_after: int = _opt("--stop-after", help="Stop (resumably) after N epochs in this call.",
                           panel=_RUN),
    device: str = _opt("--device", help="auto, cpu, cuda or cuda:N (default: auto).",
                       panel=_RUN),
    amp: str = _opt("--amp", help="Mixed precision on CUDA: bf16, fp16, off (default: bf16).",
                    panel=_RUN),
    seed: int = _opt("--seed", help="Random seed (default: 0).", panel=_RUN),
    log_every: int = _opt("--log-every", help="Progress update interval in steps.",
                          panel=_RUN),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output.",
                               rich_help_panel=_RUN),
    tensorboard: bool = _opt("--tensorboard/--no-tensorboard",
                             help="Also log to TensorBoard (if installed).", panel=_RUN),
    teacher: str = _opt("--teacher", help="Teacher (default: vit_base_patch14_dinov2).",
                        panel=_MODEL),
    pretrained_teacher: bool = typer.Option(False, "--pretrained-teacher",
                                            help="Pretrained teacher weights via timm "
                                                 "(the default).", rich_help_panel=_MODEL),
    teacher_random: bool = typer.Option(False, "--teacher-random",
                                        help="Random-init teacher (tests/ablations only).",
                                        rich_help_panel=_MODEL),
    teacher_weights: Path = _opt("--teacher-weights", help="Local teacher weights file.",
                                 panel=_MODEL),
    teacher_size: int = _opt("--teacher-size", help="Teacher input side (multiple of its "
                             "patch size).", panel=_MODEL),
    teacher_arg: list[str] = _opt("--teacher-arg", help="timm override KEY=VALUE for the "
                                  "teacher (repeatable), e.g. depth=2.", panel=_MODEL),
    backbone: str = _opt("--backbone", "--student", help="Student backbone "
                         "(default: pvt_v2_b0).", panel=_MODEL),
    student_pretrained: bool = _opt("--student-pretrained/--student-random",
                                    help="Start the student from timm (ImageNet) weights "
                                         "(default: random).", panel=_MODEL),
    student_weights: Path = _opt("--student-weights", help="Start the student from this "
                                 "timm weights file.", panel=_MODEL),
    discriminator: str = _opt("--discriminator", help="Discriminator ViT (default: the "
                              "teacher's).", panel=_MODEL),
    discriminator_weights: Path = _opt("--discriminator-weights",
                                       help="Weights of a separate discriminator ViT.",
                                       panel=_MODEL),
    d_levels: int = _opt("--d-levels", help="Discriminator ViT levels (default: 4).",
                         panel=_MODEL),
    d_head_width: int = _opt("--d-head-width", help="Discriminator head width (default: 128).",
                             panel=_MODEL),
    method: str = _opt("--method", help="kd (KL only) or kda (KL + adversarial) "
                       "(default: kda)."),
    loss_weighting: str = _opt("--loss-weighting", help="fixed (0.6/0.4) or adaptive "
                               "(learned uncertainty) (default: fixed)."),
    align: str = _opt("--align", help="last, or intermediate (also a middle stage) "
                      "(default: last)."),
    mid_stage: int = _opt("--mid-stage", help="Student stage for --align intermediate "
                          "(default: 2)."),
    mid_level: int = _opt("--mid-level", help="Teacher level for --align intermediate "
                          "(default: middle)."),
    tau: float = _opt("--tau", help="KL temperature (default: 5)."),
    kl_weight: float = _opt("--kl-weight", help="Weight of the KL term (default: 0.6)."),
    adv_weight: float = _opt("--adv-weight", help="Weight of the adversarial term "
                             "(default: 0.4)."),
    epochs: int = _opt("--epochs", help="Epochs (default: 200)."),
    batch_size: int = _opt("--batch-size", "-b", help="Batch size per process (default: 8)."),
    lr: float = _opt("--lr", help="Student learning rate (default: 5e-5)."),
    lr_final: float = _opt("--lr-final", help="Final student learning rate (default: 5e-8)."),
    d_lr: float = _opt("--d-lr", help="Discriminator learning rate (default: 5e-6)."),
    d_lr_final: float = _opt("--d-lr-final", help="Final discriminator learning rate "
                             "(default: 5e-9)."),
    weighting_lr: float = _opt("--weighting-lr", help="LR of adaptive loss weights "
                               "(default: 1e-3)."),
    weight_decay: float = _opt("--weight-decay", help="AdamW weight decay (default: 0.01)."),
    schedule: str = _opt("--schedule", help="cosine or poly (default: cosine)."),
    warmup_steps: int = _opt("--warmup-steps", help="Linear warm-up steps (default: 0)."),
    grad_clip: float = _opt("--grad-clip", help="Clip gradient norm to this value."),
) -> None:
    """Phase 1: distil a frozen DINOv2 teacher into a PVT student (KDA)."""
    values = dict(locals())
    from landslide_cli.train.config import DistillConfig, resolve_config
    from landslide_cli.train.distill import train_distill

    if pretrained_teacher and teacher_random:
        raise LandslideError("--pretrained-teacher and --teacher-random exclude each other")
    for key in ("config", "pretrained_teacher", "teacher_random", "teacher_arg", "regions"):
        values.pop(key)
    values["teacher_init"] = "random" if teacher_random else (
        "pretrained" if pretrained_teacher else None)
    values["teacher_args"] = _parse_kv(teacher_arg, "--teacher-arg")
    values["regions"] = _regions(regions)
    values["quiet"] = (common.state.quiet or quiet) or None
    cfg = resolve_config(DistillConfig, _strs(values), config)
    _report(train_distill(cfg, reporter=cli_reporter(quiet)), "distill")


@app.command("segment")
def segment(
    data: Path = _opt("--root", "--data", help="Data set root folder.", panel=_DATA),
    dataset: str = _opt("--dataset", "-d", help="Data set layout: folder, cas, bijie, "
                        "landslide4sense (default: folder).", panel=_DATA),
    skip_bad: bool = _opt("--skip-bad/--no-skip-bad", help="Skip unpaired or malformed "
                          "tiles with a warning.", panel=_DATA),
    split_file: Path = _opt("--split-file", help="JSON split file (created if missing).",
                            panel=_DATA),
    split_mode: str = _opt("--split-mode", help="random, blocked or official.", panel=_DATA),
    split_seed: int = _opt("--split-seed", help="Seed of the split (default: 0).", panel=_DATA),
    train_split: str = _opt("--train-split", help="Training split (default: train).",
                            panel=_DATA),
    val_split: str = _opt("--val-split", help="Validation split, or none (default: val).",
                          panel=_DATA),
    regions: list[str] = _opt("--regions", "--region", help="Regions (sub-datasets) to "
                              "keep; repeat or separate with commas.", panel=_DATA),
    size: int = _opt("--size", help="Training random-crop size (default: 512).", panel=_DATA),
    val_size: int = _opt("--val-size", help="Validate on centre crops of this size "
                         "(default: native tiles).", panel=_DATA),
    val_batch_size: int = _opt("--val-batch-size", help="Validation batch size (default: 1).",
                               panel=_DATA),
    color_jitter: float = _opt("--color-jitter", help="Colour jitter strength (default: 0).",
                               panel=_DATA),
    scale_jitter: float = _opt("--scale-jitter", help="Scale jitter strength (default: 0).",
                               panel=_DATA),
    photometric: float = _opt("--photometric", help="Sensor augmentation strength in [0, 1]: "
                              "brightness, contrast, gamma, hue/saturation, blur, noise, JPEG "
                              "(default: 0, off).", panel=_DATA),
    sampling: str = _opt("--sampling", help="uniform (every tile once per epoch) or region "
                         "(every region equally often) (default: uniform).", panel=_DATA),
    fg_crop: float = _opt("--fg-crop", help="Probability that a crop is centred on a "
                          "landslide pixel (default: 0).", panel=_DATA),
    num_workers: int = _opt("--num-workers", help="DataLoader workers per process "
                            "(default: min(4, CPU cores available)).", panel=_DATA),
    out: Path = _opt("--out", "-o", help="Run folder (checkpoints, config.yaml, metrics.csv).",
                     panel=_RUN),
    config: Path = _opt("--config", "-c", help="YAML file of options (flags win).", panel=_RUN),
    resume: Path = _opt("--resume", help="Continue the run in this folder.", panel=_RUN),
    stop_after: int = _opt("--stop-after", help="Stop (resumably) after N epochs in this call.",
                           panel=_RUN),
    device: str = _opt("--device", help="auto, cpu, cuda or cuda:N (default: auto).",
                       panel=_RUN),
    amp: str = _opt("--amp", help="Mixed precision on CUDA: bf16, fp16, off (default: bf16).",
                    panel=_RUN),
    cpu_amp: bool = _opt("--cpu-amp/--no-cpu-amp", help="Train under bf16 autocast on CPU "
                         "(loss and validation in fp32) (default: off).", panel=_RUN),
    seed: int = _opt("--seed", help="Random seed (default: 0).", panel=_RUN),
    log_every: int = _opt("--log-every", help="Progress update interval in steps.",
                          panel=_RUN),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output.",
                               rich_help_panel=_RUN),
    tensorboard: bool = _opt("--tensorboard/--no-tensorboard",
                             help="Also log to TensorBoard (if installed).", panel=_RUN),
    sync_bn: bool = _opt("--sync-bn/--no-sync-bn", help="SyncBatchNorm under torchrun.",
                         panel=_RUN),
    name: str = _opt("--name", help="Model name in the checkpoint (default: run folder name).",
                     panel=_RUN),
    backbone: str = _opt("--backbone", help="Backbone (default: pvt_v2_b0).", panel=_MODEL),
    decoder: str = _opt("--decoder", help="Decoder head: dcf, segformer, upernet, unet "
                        "(default: dcf).", panel=_MODEL),
    decoder_width: int = _opt("--decoder-width", help="Decoder width (default: 128).",
                              panel=_MODEL),
    init: Path = _opt("--init", help="Backbone checkpoint from `landslide train distill`, or "
                      "its run folder (its last.safetensors).", panel=_MODEL),
    pretrained: bool = _opt("--pretrained/--random-init", help="Start the backbone from timm "
                            "(ImageNet) weights.", panel=_MODEL),
    weights: Path = _opt("--weights", help="Local timm weights file for the backbone.",
                         panel=_MODEL),
    epochs: int = _opt("--epochs", help="Epochs (default: 200)."),
    steps: int = _opt("--steps", help="Optimizer steps of the whole run; overrides --epochs "
                      "(epochs = ceil(steps / steps per epoch))."),
    batch_size: int = _opt("--batch-size", "-b", help="Batch size per process (default: 16)."),
    lr_backbone: float = _opt("--lr-backbone", help="Backbone learning rate (default: 5e-6)."),
    lr_backbone_final: float = _opt("--lr-backbone-final", help="Final backbone learning rate "
                                    "(default: 5e-9)."),
    lr_decoder: float = _opt("--lr-decoder", help="Decoder learning rate (default: 5e-4)."),
    lr_decoder_final: float = _opt("--lr-decoder-final", help="Final decoder learning rate "
                                   "(default: 5e-6)."),
    weight_decay: float = _opt("--weight-decay", help="AdamW weight decay (default: 0.01)."),
    schedule: str = _opt("--schedule", help="cosine or poly (default: cosine)."),
    warmup_steps: int = _opt("--warmup-steps", help="Linear warm-up steps (default: 0)."),
    grad_clip: float = _opt("--grad-clip", help="Clip gradient norm to this value."),
    ce_weight: float = _opt("--ce-weight", help="Weight of cross-entropy (default: 0.4)."),
    focal_weight: float = _opt("--focal-weight", help="Weight of focal loss (default: 0.6)."),
    gamma: float = _opt("--gamma", help="Focal gamma (default: 2)."),
    class_weights: str = _opt("--class-weights", help="Class weights 'background,landslide'."),
    threshold_bins: int = _opt("--threshold-bins", help="Histogram bins for the best-F1 "
                               "threshold (default: 1000)."),
) -> None:
    """Phase 2: train backbone + decoder for landslide segmentation."""
    values = dict(locals())
    from landslide_cli.train.config import SegmentConfig, resolve_config
    from landslide_cli.train.segment import train_segment

    values.pop("config")
    values["regions"] = _regions(regions)
    values["quiet"] = (common.state.quiet or quiet) or None
    cfg = resolve_config(SegmentConfig, _strs(values), config)
    _report(train_segment(cfg, reporter=cli_reporter(quiet)), "segment")


def _strs(values: dict[str, Any]) -> dict[str, Any]:
    """Paths to strings (the config stores plain YAML scalars)."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in values.items()}
