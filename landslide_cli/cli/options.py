"""Options that several commands take, declared once.

Choice options list their values in ``--help`` (``<auto|torch|onnx>``) and reject anything else
while the command line is parsed, as one line (``error: ...``, exit 1). The value lists come
from where the library keeps them: the registries (``BACKENDS``, ``DATASETS``,
``SPLIT_MODES``) and :data:`landslide_cli.train.config.CHOICES`. A registry option accepts
what the registry accepts (any case, ``-`` for ``_``, aliases) and passes the value on as typed.

Training options (:data:`TRAIN_OPTIONS`, :func:`train_command`) show their defaults from the
config dataclasses while defaulting to ``None`` ("not given"), so that flags > ``--config``
file > built-in defaults.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from landslide_cli.backends import backend_choices, check_backend
from landslide_cli.data.datasets import DATASETS
from landslide_cli.data.splits import SPLIT_MODES, SPLITS
from landslide_cli.errors import LandslideError
from landslide_cli.train.config import CHOICES, TrainConfig
from landslide_cli.tta import check_tta, tta_names

#: ``--prob-dtype`` values; ``landslide_cli.predict.raster.PROB_DTYPES`` checks them (a test
#: keeps the two equal; importing predict here would load the raster stack with every command)
PROB_DTYPES = ("uint8", "float32")
#: ``--exporter`` values; ``landslide_cli.export.EXPORTERS`` checks them (a test keeps them equal)
EXPORTERS = ("torchscript", "dynamo")
#: ``--split`` / ``--train-split`` values
SPLIT_CHOICES = (*SPLITS, "all")
#: ``--val-split`` also takes ``none`` (no validation)
VAL_SPLIT_CHOICES = (*SPLIT_CHOICES, "none")


# --------------------------------------------------------------------------- choices

def one_of(flag: str, values: Sequence[str]) -> Callable[[str], object]:
    """A check that ``value`` is exactly one of ``values`` (the config's own message)."""
    def check(value: str) -> None:
        if value not in values:
            raise LandslideError(f"{flag} {value!r}: choose one of {', '.join(values)}")
    return check


def choice(default: Any, *decls: str, values: Sequence[str],
           check: Callable[[str], object] | None = None, **kw: Any) -> Any:
    """A ``typer.Option`` that takes one of ``values``: listed by ``--help``, checked by
    ``check`` (default: exact membership) when parsed; the value passes on unchanged."""
    validate = check or one_of(decls[0], values)

    def parse(value: Any) -> Any:
        validate(str(value))
        return value

    return typer.Option(default, *decls, parser=parse, metavar=f"<{'|'.join(values)}>", **kw)


def _registry_check(registry: Any) -> Callable[[str], object]:
    return registry.resolve  # one line "unknown <kind> 'x'; choose one of: ..."


def check_val_split(value: str) -> None:
    if value.lower() != "none":
        one_of("--val-split", VAL_SPLIT_CHOICES)(value)


# --------------------------------------------------------------------------- shared options

DEVICE_HELP = "auto, cpu, cuda or cuda:N."


def backend() -> Any:
    return choice("auto", "--backend", values=backend_choices(), check=check_backend,
                  help="Inference runtime (auto: ONNX Runtime for .onnx models; `predict` on a "
                       "CPU runs a checkpoint on a cached ONNX Runtime export, or on PyTorch "
                       "bf16 where the CPU has it; else PyTorch).")


def precision() -> Any:
    from landslide_cli.precision import PRECISIONS, check_precision

    return choice("auto", "--precision", values=PRECISIONS, check=check_precision,
                  help="Inference precision. auto: bf16 on CPUs with AMX / AVX-512 BF16 "
                       "(checked against fp32 on shipped tiles at first use), fp16 mixed "
                       "precision on CUDA, else fp32; int8: ONNX Runtime static quantization "
                       "(CPU, checked against fp32).")


def device(default: str = "auto", help: str = DEVICE_HELP, **kw: Any) -> Any:
    return typer.Option(default, "--device", help=help, **kw)


def model() -> Any:
    return typer.Option(
        None, "--model", "-m",
        help="Checkpoint (.safetensors), exported ONNX model, shipped model name or a "
             "weight-free baseline such as baseline:rg (default: the embedded default model).")


def overwrite(help: str) -> Any:
    return typer.Option(False, "--overwrite", help=help)


def json_flag(help: str) -> Any:
    return typer.Option(False, "--json", help=help)


def quiet(help: str, **kw: Any) -> Any:
    return typer.Option(False, "--quiet", "-q", help=help, **kw)


def dataset(default: str | None, **kw: Any) -> Any:
    kw.setdefault("help", "Data set layout.")
    return choice(default, "--dataset", "-d", values=DATASETS.names(),
                  check=_registry_check(DATASETS), **kw)


def split_mode(help: str, **kw: Any) -> Any:
    return choice(None, "--split-mode", values=SPLIT_MODES.names(),
                  check=_registry_check(SPLIT_MODES), help=help, **kw)


def split(default: str | None, *decls: str, **kw: Any) -> Any:
    return choice(default, *(decls or ("--split",)), values=SPLIT_CHOICES, **kw)


def tta() -> Any:
    return choice("none", "--tta", values=tta_names(), check=check_tta,
                  help="Test-time augmentation: average the probabilities over flips (4 "
                       "passes) or flips and quarter turns (d4, 8 passes; non-square tiles: 4).")


def adapt_bn() -> Any:
    return typer.Option(False, "--adapt-bn",
                        help="Re-estimate the model's BatchNorm statistics on the target data "
                             "before predicting (torch backend; the model file is unchanged).")


def adapt_bn_windows(what: str) -> Any:
    return typer.Option(64, "--adapt-bn-windows", min=1,
                        help=f"How many {what} --adapt-bn estimates the statistics on "
                             "(spread evenly).")


def resample_to() -> Any:
    """``--resample-to``: resample windows to the model's ground sampling distance
    (:mod:`landslide_cli.predict.resample`), checked while the command line is parsed."""
    def parse(value: Any) -> Any:
        from landslide_cli.predict.resample import parse_resample_to

        parse_resample_to(str(value))
        return value

    return typer.Option(
        "none", "--resample-to", parser=parse, metavar="<auto|none|METRES>",
        help="Resample windows to the model's scale on the fly: auto (a scene outside the "
             "model's resolution range goes to its nearest end, e.g. 10 m -> 3 m), a ground "
             "sampling distance in metres, or none. Polygons stay in the scene's pixel grid.")


def prob_dtype() -> Any:
    return choice("uint8", "--prob-dtype", values=PROB_DTYPES,
                  help="uint8 (p*254, nodata 255) or float32 (nodata NaN).")


def exporter() -> Any:
    def check(value: str) -> None:
        from landslide_cli.export import EXPORTERS as registry

        registry.resolve(value)

    return choice("torchscript", "--exporter", values=EXPORTERS, check=check,
                  help="torch.onnx exporter.")


# --------------------------------------------------------------------------- regional runs
# (``landslide predict``: inputs at regional scale and Dask distributed, see docs/predict.md)

REGION = "Regional runs (Dask distributed)"


def scene_list() -> Any:
    return typer.Option(None, "--scene-list", rich_help_panel=REGION,
                        help="A text file of scenes: one path or URL per line, # comments "
                             "(like @FILE as a scene argument).")


def workers() -> Any:
    return typer.Option(None, "--workers", min=1, rich_help_panel=REGION,
                        help="Map the scenes on a local Dask cluster of N worker processes.")


def scheduler() -> Any:
    return typer.Option(None, "--scheduler", rich_help_panel=REGION,
                        help="Map the scenes on a running Dask cluster (scheduler address, "
                             "e.g. tcp://host:8786).")


def threads_per_worker() -> Any:
    return typer.Option(1, "--threads-per-worker", min=1, rich_help_panel=REGION,
                        help="Threads of each local worker (--workers).")


def band_rows() -> Any:
    return typer.Option(None, "--band-rows", min=0, rich_help_panel=REGION,
                        help="Window rows per task (default: split scenes of more than 4096 "
                             "windows into bands; 0: one task per scene).")


def resume() -> Any:
    return typer.Option(False, "--resume", rich_help_panel=REGION,
                        help="Skip scenes an earlier run already put into --out (by path, "
                             "size and modification time, or URL and ETag) and replace --out "
                             "with the old and the new scenes.")


def rescale(what: str) -> Any:
    """``--rescale``: radiometric conversion into the model's input domain
    (:mod:`landslide_cli.radiometry`), checked while the command line is parsed."""
    def parse(value: Any) -> Any:
        from landslide_cli.radiometry import parse_rescale

        parse_rescale(str(value))
        return value

    return typer.Option(
        "auto", "--rescale", parser=parse,
        metavar="<auto|none|percentile[:LOW,HIGH]|range:MIN,MAX>",
        help=f"Convert {what} into the model's input range: auto (8-bit for an 8-bit model: "
             "unchanged; 16-bit/float: percentile:2,98), percentile:LOW,HIGH (the "
             f"{what}' percentiles onto the model's training percentiles), range:MIN,MAX "
             "(onto 0..255 for an 8-bit model; MIN,MAX/MIN,MAX/... per band) or none.")


# --------------------------------------------------------------------------- training options

DATA = "Data"
RUN = "Run"
MODEL = "Model"
OPT = "Optimisation"
#: help panels in the order ``--help`` shows them
PANELS = (DATA, RUN, MODEL, OPT)


@dataclass(frozen=True)
class TrainOption:
    """One training flag. ``name`` is the command's parameter and, mostly, the config field
    whose default ``--help`` shows (``default`` when the field's ``None`` needs words)."""

    name: str
    type: Any
    decls: tuple[str, ...]
    help: str
    panel: str = OPT
    default: str | None = None
    #: the values it takes (listed by --help), and a check other than exact membership
    values: Sequence[str] | None = None
    check: Callable[[str], object] | None = None
    #: an option of the command alone (not a config field): its own default, shown as is
    value: Any = None

    def shown_default(self, cfg: TrainConfig) -> str | bool:
        if self.default is not None:
            return self.default
        if self.value is not None or not hasattr(cfg, self.name):
            return False
        value = getattr(cfg, self.name)
        if value is None or isinstance(value, list | dict):
            return False
        if isinstance(value, bool):  # the flag that is in effect
            on, _, off = self.decls[0].partition("/")
            return (on if value or not off else off).lstrip("-")
        return format(value, "g") if isinstance(value, float) else str(value)

    def parameter(self, cfg: TrainConfig) -> inspect.Parameter:
        kw: dict[str, Any] = {"help": self.help, "rich_help_panel": self.panel,
                              "show_default": self.shown_default(cfg)}
        if self.values is not None:
            option = choice(self.value, *self.decls, values=self.values, check=self.check, **kw)
        else:
            option = typer.Option(self.value, *self.decls, **kw)
        return inspect.Parameter(self.name, inspect.Parameter.KEYWORD_ONLY, default=option,
                                 annotation=self.type)


def train_choice(name: str, help: str, panel: str = OPT) -> TrainOption:
    """The training option ``name`` of :data:`~landslide_cli.train.config.CHOICES`."""
    flag = f"--{name.replace('_', '-')}"
    return TrainOption(name, str, (flag,), help, panel, values=CHOICES[name])


#: the options ``train distill`` and ``train segment`` share
TRAIN_OPTIONS: tuple[TrainOption, ...] = (
    TrainOption("data", Path, ("--root", "--data"), "Data set root folder.", DATA),
    TrainOption("dataset", str, ("--dataset", "-d"), "Data set layout.", DATA,
                values=DATASETS.names(), check=_registry_check(DATASETS)),
    TrainOption("skip_bad", bool, ("--skip-bad/--no-skip-bad",),
                "Skip unpaired or malformed tiles with a warning.", DATA),
    TrainOption("split_file", Path, ("--split-file",), "JSON split file (created if missing).",
                DATA),
    TrainOption("split_mode", str, ("--split-mode",), "How tiles are split.", DATA,
                default="the data set's", values=SPLIT_MODES.names(),
                check=_registry_check(SPLIT_MODES)),
    TrainOption("split_seed", int, ("--split-seed",), "Seed of the split.", DATA),
    TrainOption("train_split", str, ("--train-split",), "Split to train on.", DATA,
                values=SPLIT_CHOICES),
    TrainOption("regions", list[str], ("--regions", "--region"),
                "Regions (sub-datasets) to keep; repeat or separate with commas.", DATA),
    TrainOption("bands", str, ("--bands",),
                "Bands to train on: 1-based indices (e.g. 3,2,1), or Landslide4Sense names "
                "(e.g. red,green,blue,slope; B4,B3,B2,dem).", DATA, default="all bands"),
    TrainOption("size", int, ("--size",), "Random-crop size of training tiles.", DATA),
    TrainOption("color_jitter", float, ("--color-jitter",), "Colour jitter strength.", DATA),
    TrainOption("scale_jitter", float, ("--scale-jitter",), "Scale jitter strength.", DATA),
    TrainOption("scale_range", str, ("--scale-range",),
                "LO,HI: rescale crops by a log-uniform factor in [LO, HI] (ground-resolution "
                "augmentation; overrides --scale-jitter).", DATA),
    TrainOption("num_workers", int, ("--num-workers",), "DataLoader workers per process.", DATA,
                default="min(4, CPU cores available)"),
    TrainOption("out", Path, ("--out", "-o"),
                "Run folder (checkpoints, config.yaml, metrics.csv).", RUN),
    TrainOption("config", Path, ("--config", "-c"), "YAML file of options (flags win).", RUN),
    TrainOption("resume", Path, ("--resume",), "Continue the run in this folder.", RUN),
    TrainOption("stop_after", int, ("--stop-after",),
                "Stop (resumably) after N epochs in this call.", RUN),
    TrainOption("device", str, ("--device",), DEVICE_HELP, RUN),
    train_choice("amp", "Mixed precision on CUDA.", RUN),
    TrainOption("seed", int, ("--seed",), "Random seed.", RUN),
    TrainOption("log_every", int, ("--log-every",), "Progress update interval in steps.", RUN),
    TrainOption("val_every", int, ("--val-every",),
                "Validate and write checkpoints every N epochs (and after the last).", RUN),
    TrainOption("quiet", bool, ("--quiet", "-q"), "No progress output.", RUN, value=False),
    TrainOption("tensorboard", bool, ("--tensorboard/--no-tensorboard",),
                "Also log to TensorBoard (if installed).", RUN),
    TrainOption("epochs", int, ("--epochs",), "Epochs."),
    TrainOption("batch_size", int, ("--batch-size", "-b"), "Batch size per process."),
    TrainOption("weight_decay", float, ("--weight-decay",), "AdamW weight decay."),
    train_choice("schedule", "Learning-rate decay per step."),
    TrainOption("warmup_steps", int, ("--warmup-steps",), "Linear warm-up steps."),
    TrainOption("grad_clip", float, ("--grad-clip",), "Clip gradient norm to this value."),
)


def train_command(config: type[TrainConfig], *only: TrainOption
                  ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a ``def command(**values)`` the parameters :data:`TRAIN_OPTIONS` + ``only`` (the
    phase's own), grouped by panel, with the defaults of ``config`` in ``--help``."""
    cfg = config()
    names = [o.name for o in (*TRAIN_OPTIONS, *only)]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate training options: {names}")
    ordered = sorted((*TRAIN_OPTIONS, *only), key=lambda o: PANELS.index(o.panel))

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        func.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [o.parameter(cfg) for o in ordered], return_annotation=None)
        return func

    return decorate
