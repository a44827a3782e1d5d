"""Training configurations: dataclasses with the paper's defaults, a YAML file, and CLI flags.

Precedence: command-line flags > ``--config run.yaml`` > ``--preset NAME`` (a named option set
of :mod:`landslide_cli.train.presets`; ``train segment`` only) > dataclass defaults. The resolved
configuration is written to ``RUN_DIR/config.yaml`` and read back by ``--resume RUN_DIR``.

The YAML file is flat: the keys are the dataclass field names below (``-`` and ``_`` are
interchangeable), e.g.::

    data: /data/CAS
    dataset: cas
    epochs: 200
    batch_size: 8
    lr: 5.0e-5
    teacher: vit_base_patch14_dinov2

An optional ``phase: distill|segment`` key guards against feeding one phase's file to the other.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from landslide_cli.errors import LandslideError

C = TypeVar("C", bound="TrainConfig")

#: fields that describe one invocation, not the run (never written to config.yaml)
RUNTIME_FIELDS = frozenset({"resume", "stop_after", "quiet", "config_file"})
#: fields that ``--resume`` accepts from the command line (the rest comes from config.yaml)
RESUME_OVERRIDABLE = frozenset({"epochs", "steps", "device", "num_workers", "log_every",
                                "val_every", "tensorboard", "stop_after", "quiet"})

CHOICES: dict[str, tuple[str, ...]] = {
    "amp": ("bf16", "fp16", "off"),
    "schedule": ("cosine", "poly"),
    "method": ("kd", "kda"),
    "adv_loss": ("lsgan", "paper"),
    "loss_weighting": ("fixed", "adaptive"),
    "align": ("last", "intermediate"),
    "teacher_init": ("pretrained", "random"),
    "sampling": ("uniform", "region"),
}

#: most DataLoader workers chosen automatically (more rarely helps with tiles of this size)
MAX_AUTO_WORKERS = 4


def default_num_workers() -> int:
    """DataLoader workers when ``--num-workers`` is not given: ``min(4, CPUs / processes)``.

    CPUs are the ones this process may run on (``os.sched_getaffinity``: respects taskset,
    cgroup CPU sets and batch-job allocations), shared by the ``LOCAL_WORLD_SIZE`` processes
    torchrun starts on this node; at least 1. Asking for more workers than CPUs makes PyTorch
    warn and only adds contention.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cpus = os.cpu_count() or 1
    try:
        local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        local = 1
    return max(1, min(MAX_AUTO_WORKERS, cpus // local))


@dataclass
class TrainConfig:
    """Options shared by both phases."""

    #: run directory (checkpoints, config.yaml, metrics.csv)
    out: str | None = None
    #: data set root folder and loader name (see ``landslide_cli.data.DATASETS``)
    data: str | None = None
    dataset: str = "folder"
    split_file: str | None = None
    split_mode: str | None = None
    #: seed of the train/val/test split (kept apart from ``seed`` so runs share one split)
    split_seed: int = 0
    train_split: str = "train"
    val_split: str = "val"
    regions: list[str] | None = None
    #: bands to train on, handed to the data set (``--bands``): 1-based raster indices, or for
    #: landslide4sense names (``red,green,blue,slope``, ``B4,B3,B2,dem``); None: all bands
    bands: list[str] | None = None
    #: skip unpaired or malformed tiles (with a warning) instead of stopping
    skip_bad: bool = False
    epochs: int = 200
    #: optimizer steps of the whole run; when set it overrides ``epochs``: the run has
    #: ``ceil(steps / steps_per_epoch)`` epochs, the LR schedule spans exactly ``steps`` and
    #: training stops at step ``steps`` (its last epoch may be partial)
    steps: int | None = None
    batch_size: int = 8
    #: random-crop size of training tiles
    size: int = 512
    #: DataLoader workers per process; None: :func:`default_num_workers` of the machine the
    #: run is on (also when resumed elsewhere); see :attr:`workers`
    num_workers: int | None = None
    seed: int = 0
    device: str = "auto"
    #: mixed precision on CUDA (ignored on CPU)
    amp: str = "bf16"
    #: bf16 autocast of the training forward pass on CPU (loss in fp32, validation in fp32)
    cpu_amp: bool = False
    weight_decay: float = 0.01
    #: per-step decay from the initial to the final learning rate
    schedule: str = "cosine"
    poly_power: float = 0.9
    warmup_steps: int = 0
    grad_clip: float | None = None
    #: augmentation: random 90-degree rotations, flips, colour and scale jitter
    rot90: bool = True
    flips: bool = True
    color_jitter: float = 0.0
    scale_jitter: float = 0.0
    #: ground-resolution augmentation: rescale crops by a factor drawn log-uniformly from
    #: ``[LO, HI]`` (e.g. ``[0.33, 1.5]``: 1 m tiles seen as 0.67-3 m imagery); overrides
    #: ``scale_jitter``; None: off
    scale_range: list[float] | None = None
    #: sensor augmentation strength in [0, 1] (0: off): brightness, contrast, gamma,
    #: hue/saturation, blur, noise, JPEG artefacts (see ``landslide_cli.data.photometric``)
    photometric: float = 0.0
    #: tile order: ``uniform`` (each tile once per epoch) or ``region`` (tiles drawn with
    #: replacement, weight 1/count(region): every region contributes equally; same length)
    sampling: str = "uniform"
    #: probability that a training crop is centred on a random landslide pixel
    fg_crop: float = 0.0
    #: per-tile normalization statistics with landslide pixels weighted by exp(U(-s, s)):
    #: the network learns not to depend on the window's landslide share (0: off)
    density_jitter: float = 0.0
    sync_bn: bool = False
    log_every: int = 10
    #: validate (and write the model checkpoints) every N epochs and after the last one; the
    #: resume state is saved after every epoch either way
    val_every: int = 1
    tensorboard: bool = False
    # ---- runtime only
    resume: str | None = None
    stop_after: int | None = None
    quiet: bool = False
    config_file: str | None = None

    phase: typing.ClassVar[str] = ""

    def to_dict(self, *, runtime: bool = False) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if not runtime:
            for name in RUNTIME_FIELDS:
                data.pop(name, None)
        return data

    @property
    def workers(self) -> int:
        """The DataLoader workers to use: ``num_workers``, or the machine's default."""
        return default_num_workers() if self.num_workers is None else self.num_workers

    def validate(self) -> None:
        for name, choices in CHOICES.items():
            if hasattr(self, name) and getattr(self, name) not in choices:
                raise LandslideError(f"--{name.replace('_', '-')} {getattr(self, name)!r}: "
                                     f"choose one of {', '.join(choices)}")
        for name in ("epochs", "batch_size", "size", "val_every"):
            if getattr(self, name) < 1:
                raise LandslideError(f"--{name.replace('_', '-')} must be >= 1")
        if self.num_workers is not None and self.num_workers < 0:
            raise LandslideError("--num-workers must be >= 0")
        if self.stop_after is not None and self.stop_after < 1:
            raise LandslideError("--stop-after must be >= 1")
        if self.steps is not None and self.steps < 1:
            raise LandslideError("--steps must be >= 1")
        for name in ("photometric", "fg_crop"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise LandslideError(f"--{name.replace('_', '-')} must be in [0, 1]")
        if not 0.0 <= self.density_jitter <= 8.0:
            raise LandslideError("--density-jitter must be in [0, 8]")
        if self.scale_range is not None:
            from landslide_cli.data.torch_data import check_scale_range

            try:
                self.scale_range = list(check_scale_range(self.scale_range))
            except LandslideError as exc:
                raise LandslideError(f"--scale-range: {exc}") from None


@dataclass
class DistillConfig(TrainConfig):
    """Phase 1: KDA distillation of a frozen teacher into a PVT student (paper defaults)."""

    epochs: int = 200
    batch_size: int = 8
    #: teacher (``TEACHERS`` registry) and its weights: ``pretrained`` (timm/HF hub, or the
    #: ``teacher_weights`` file) or an explicitly requested ``random`` init (tests, ablations)
    teacher: str = "vit_base_patch14_dinov2"
    teacher_init: str = "pretrained"
    teacher_weights: str | None = None
    #: teacher input side (multiple of its patch size); None: the multiple nearest to ``size``
    teacher_size: int | None = None
    #: extra timm keyword arguments for the teacher and the discriminator's ViT (e.g. depth: 2)
    teacher_args: dict[str, Any] = field(default_factory=dict)
    #: multi-teacher distillation: further frozen teachers (``TEACHERS``), each with its own
    #: neck and KL term; all terms share ``loss_weighting`` (docs/training.md)
    extra_teachers: list[str] = field(default_factory=list)
    #: per further teacher (keyed by its name in ``extra_teachers``): timm keyword arguments
    #: and a local weights file
    extra_teacher_args: dict[str, Any] = field(default_factory=dict)
    extra_teacher_weights: dict[str, Any] = field(default_factory=dict)
    #: student backbone (``BACKBONES`` registry) and its optional starting weights
    backbone: str = "pvt_v2_b0"
    student_pretrained: bool = False
    student_weights: str | None = None
    method: str = "kda"
    loss_weighting: str = "fixed"
    align: str = "last"
    tau: float = 5.0
    kl_weight: float = 0.6
    adv_weight: float = 0.4
    #: student stage (0-3) and teacher level aligned by ``align: intermediate``
    mid_stage: int = 2
    mid_level: int | None = None
    lr: float = 5e-5
    lr_final: float = 5e-8
    d_lr: float = 5e-6
    d_lr_final: float = 5e-9
    d_levels: int = 4
    d_head_width: int = 128
    #: discriminator (``DISCRIMINATORS``): a DINOv2 name (the multi-level PatchGAN on that
    #: ViT; None: on the teacher's own network, shared) or ``kda_authors`` (the authors' design,
    #: on the teacher's ViT or on ``discriminator_vit``), and the weights of a separate ViT
    discriminator: str | None = None
    discriminator_weights: str | None = None
    discriminator_vit: str | None = None
    #: adversarial objective: ``lsgan`` (least squares, targets 1/0) or ``paper`` (Eq. 2/3:
    #: D maximises MSE(D(O_T), D(O_S)), the student minimises it; needs a sigmoid output)
    adv_loss: str = "lsgan"
    #: initial learning rate of the adaptive weights' log-variances (decays like the student's)
    weighting_lr: float = 1e-3

    phase: typing.ClassVar[str] = "distill"

    def validate(self) -> None:
        super().validate()
        if self.tau <= 0:
            raise LandslideError("--tau must be positive")
        if not 0 <= self.mid_stage <= 3:
            raise LandslideError("--mid-stage must be 0, 1, 2 or 3")
        self._validate_extra_teachers()

    def _validate_extra_teachers(self) -> None:
        """The per-teacher options name further teachers (names are checked when built)."""
        further = ", ".join(self.extra_teachers) or "none"
        for name, value in self.extra_teacher_args.items():
            if name not in self.extra_teachers:
                raise LandslideError(f"--teacher-arg {name}:KEY=VALUE: {name!r} is not a further "
                                     f"teacher (further teachers: {further})")
            if not isinstance(value, dict):
                raise LandslideError(f"extra_teacher_args: {name}: expected a mapping of timm "
                                     "option: value")
        for name, value in self.extra_teacher_weights.items():
            if name not in self.extra_teachers:
                raise LandslideError(f"--teacher-weights {name}=PATH: {name!r} is not a further "
                                     f"teacher (further teachers: {further})")
            if not isinstance(value, str):
                raise LandslideError(f"extra_teacher_weights: {name}: expected a file path")


@dataclass
class SegmentConfig(TrainConfig):
    """Phase 2: backbone + decoder segmentation training (paper defaults)."""

    epochs: int = 200
    batch_size: int = 16
    backbone: str = "pvt_v2_b0"
    decoder: str = "dcf"
    decoder_width: int = 128
    #: backbone initialisation: a phase-1 checkpoint, timm weights, or random (neither)
    init: str | None = None
    pretrained: bool = False
    weights: str | None = None
    lr_backbone: float = 5e-6
    lr_backbone_final: float = 5e-9
    lr_decoder: float = 5e-4
    lr_decoder_final: float = 5e-6
    ce_weight: float = 0.4
    focal_weight: float = 0.6
    gamma: float = 2.0
    class_weights: list[float] | None = None
    #: validation: native tile size (None) or a center crop of this side; batch size
    val_size: int | None = None
    val_batch_size: int = 1
    #: bins of the validation probability histogram used to pick the best-F1 threshold
    threshold_bins: int = 1000
    #: InputSpec overrides (bands, scale, mean, std, ...); None: the data set's default
    input: dict[str, Any] | None = None
    #: model name written into the checkpoint metadata (default: the run folder's name)
    name: str | None = None
    #: named option set (``landslide_cli.train.presets``) under the config file and the flags
    preset: str | None = None

    phase: typing.ClassVar[str] = "segment"

    def validate(self) -> None:
        super().validate()
        if self.init and (self.pretrained or self.weights):
            raise LandslideError("--init cannot be combined with --pretrained/--weights")
        if self.class_weights is not None and len(self.class_weights) != 2:
            raise LandslideError("--class-weights needs two values (background, landslide)")
        if self.val_batch_size < 1:
            raise LandslideError("--val-batch-size must be >= 1")


# --------------------------------------------------------------------------- resolution

def _key(name: str) -> str:
    return name.strip().replace("-", "_")


def _types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, tp: Any, name: str, source: str) -> Any:
    """Convert ``value`` (from YAML or a flag) to the annotated field type, or raise one line."""
    if value is None:
        return None
    origin = typing.get_origin(tp)
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if origin in (typing.Union, types.UnionType):
        return _coerce(value, args[0], name, source)
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if tp is int:
            if isinstance(value, bool) or float(value) != int(float(value)):
                raise ValueError(value)
            return int(float(value))
        if tp is float:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)  # YAML reads "5e-5" (no dot) as a string
        if tp is str:
            if isinstance(value, dict | list):
                raise ValueError(value)
            return str(value)
        if origin is list:
            if isinstance(value, str):
                value = [v for v in value.split(",") if v.strip()]
            if not isinstance(value, list | tuple):
                raise ValueError(value)
            return [_coerce(v, args[0], name, source) for v in value]
        if origin is dict:
            if not isinstance(value, dict):
                raise ValueError(value)
            return dict(value)
    except (TypeError, ValueError):
        raise LandslideError(f"{source}: invalid value {value!r} for {name}") from None
    return value


def read_yaml(path: str | Path) -> dict[str, Any]:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise LandslideError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise LandslideError(f"{path}: invalid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise LandslideError(f"{path}: expected a mapping of option: value")
    return data


def given_options(cfg: TrainConfig) -> frozenset[str]:
    """The fields a config file or the command line set (not defaults, not a preset); after
    ``--resume``, every key of the run's config.yaml."""
    return frozenset(cfg.__dict__.get("_given", ()))


def _apply(cfg: C, values: dict[str, Any], source: str, *, allowed: frozenset[str] | None = None,
           given: bool = True) -> None:
    hints = _types(type(cfg))
    names = {f.name for f in dataclasses.fields(cfg)}
    for raw_key, value in values.items():
        key = _key(str(raw_key))
        if key == "phase":
            if value != cfg.phase:
                raise LandslideError(f"{source}: is a {value!r} configuration, not {cfg.phase!r}")
            continue
        if key not in names:
            raise LandslideError(f"{source}: unknown option {raw_key!r} for train {cfg.phase}")
        if allowed is not None and key not in allowed:
            raise LandslideError(
                f"--{key.replace('_', '-')} cannot be changed when resuming; the run's "
                "config.yaml fixes it")
        setattr(cfg, key, _coerce(value, hints[key], key, source))
        if given:
            cfg.__dict__.setdefault("_given", set()).add(key)


def resolve_config(cls: type[C], overrides: dict[str, Any] | None = None,
                   config_file: str | Path | None = None) -> C:
    """Defaults < ``config_file`` < ``overrides`` (flags given on the command line; ``None``
    values mean "not given"). With ``overrides['resume']`` the run's saved config.yaml replaces
    defaults and file, and only :data:`RESUME_OVERRIDABLE` flags may be given."""
    overrides = {_key(k): v for k, v in (overrides or {}).items() if v is not None}
    cfg = cls()
    resume = overrides.pop("resume", None)
    if resume is not None:
        run_dir = Path(resume)
        saved = run_dir / "config.yaml"
        if not saved.is_file():
            raise LandslideError(f"--resume {run_dir}: no config.yaml there (not a run folder)")
        _apply(cfg, read_yaml(saved), str(saved))
        if config_file is not None:
            raise LandslideError("--config cannot be combined with --resume (the run's "
                                 "config.yaml is used)")
        runtime = {k: overrides.pop(k) for k in list(overrides) if k in RUNTIME_FIELDS}
        _apply(cfg, overrides, "command line", allowed=RESUME_OVERRIDABLE)
        _apply(cfg, runtime, "command line")
        cfg.resume = str(run_dir)
        cfg.out = str(run_dir)
    else:
        file_values = read_yaml(config_file) if config_file is not None else {}
        preset = overrides.get("preset") or {_key(str(k)): v for k, v in file_values.items()
                                             }.get("preset")
        if preset is not None and "preset" in {f.name for f in dataclasses.fields(cfg)}:
            from landslide_cli.train.presets import get_preset

            chosen = get_preset(str(preset), cfg.phase)
            _apply(cfg, dict(chosen.values), f"preset {chosen.name}", given=False)
            overrides["preset"] = chosen.name
        if config_file is not None:
            _apply(cfg, file_values, str(config_file))
            cfg.config_file = str(config_file)
        _apply(cfg, overrides, "command line")
    cfg.validate()
    return cfg


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    """Write the resolved configuration (without runtime-only fields) as YAML, atomically."""
    import yaml

    from landslide_cli.checkpoint import atomic_write

    data = {"phase": cfg.phase, **cfg.to_dict()}
    text = yaml.safe_dump(data, sort_keys=False, default_flow_style=None)
    atomic_write(Path(path), lambda tmp: tmp.write_text(text, encoding="utf-8"))
