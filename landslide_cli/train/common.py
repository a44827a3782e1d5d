"""Pieces both phases share: data sets, input spec, optimizers, DDP wrapping, run metadata."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import torch
from torch import nn

from landslide_cli import __version__
from landslide_cli.errors import DataError, LandslideError
from landslide_cli.preprocess import InputSpec
from landslide_cli.train.config import TrainConfig
from landslide_cli.train.distributed import DistContext


def open_split(cfg: TrainConfig, split: str, *, what: str = "training") -> Any:
    """Open one split of the configured data set; missing root / empty split are one-liners."""
    if not cfg.data:
        raise LandslideError("--root ROOT is required (the data set folder)")
    root = Path(cfg.data).expanduser()
    if not root.exists():
        raise DataError(f"data root not found: {root}")
    if not root.is_dir():
        raise DataError(f"data root is not a folder: {root}")
    if cfg.split_file is not None and not Path(cfg.split_file).is_file():
        raise DataError(f"split file not found: {cfg.split_file}")
    from landslide_cli.data import open_dataset

    kwargs: dict[str, Any] = {"split": split, "split_file": cfg.split_file,
                              "seed": cfg.split_seed, "regions": cfg.regions,
                              "skip_bad": cfg.skip_bad, "bands": cfg.bands}
    if cfg.split_mode is not None:
        kwargs["split_mode"] = cfg.split_mode
    tiles = open_dataset(cfg.dataset, root, **kwargs)
    if len(tiles) == 0:
        regions = f" (regions {', '.join(cfg.regions)})" if cfg.regions else ""
        raise DataError(f"{cfg.dataset} data set {root}: the {split!r} split used for "
                        f"{what} is empty{regions}")
    if not cfg.skip_bad:  # (with skip_bad, open_dataset has already dropped bad tiles)
        # every mask (values, size) and image header up front: a bad tile found by a
        # DataLoader worker in the middle of an epoch would stop the run there
        try:
            tiles.validate()
        except DataError as exc:
            raise DataError(f"{exc} ({what} data; --skip-bad leaves such tiles out)") from None
    return tiles


def input_spec_for(tiles: Any, cfg: TrainConfig, overrides: dict[str, Any] | None = None
                   ) -> InputSpec:
    """The data set's suggested InputSpec, with ``overrides`` and ``tile = cfg.size``."""
    hint: InputSpec = tiles.input_spec_hint
    data = hint.to_dict()
    data.update(overrides or {})
    if "tile" not in (overrides or {}):
        data["tile"] = cfg.size
    spec = InputSpec.from_dict(data)
    if spec.percentiles is None and len(tiles):
        spec.percentiles = training_percentiles(tiles, spec)
    return spec


def training_percentiles(tiles: Any, spec: InputSpec, *, max_tiles: int = 256
                         ) -> dict[str, list[float]]:
    """Per-band reference percentiles of (up to ``max_tiles`` evenly spaced) training tiles,
    recorded in the model's InputSpec so that ``--rescale auto`` can map other radiometry
    (16-bit, reflectance) onto what the model saw."""
    from landslide_cli.preprocess import reference_percentiles

    n = len(tiles)
    step = max(1, -(-n // max_tiles))
    images = (tiles.select_bands(tiles.read(i)[0], spec) for i in range(0, n, step))
    return reference_percentiles(images, seed=0)


def make_augment(cfg: TrainConfig) -> Any:
    from landslide_cli.data import Augment

    return Augment(rot90=cfg.rot90, flips=cfg.flips, color_jitter=cfg.color_jitter,
                   scale_jitter=cfg.scale_jitter,
                   scale_range=tuple(cfg.scale_range) if cfg.scale_range else None,
                   photometric_strength=cfg.photometric,
                   fg_crop=cfg.fg_crop, density_jitter=cfg.density_jitter)


def train_dataset(tiles: Any, spec: InputSpec, cfg: TrainConfig) -> Any:
    from landslide_cli.data import SegmentationDataset

    return SegmentationDataset(tiles, spec, augment=make_augment(cfg), size=cfg.size,
                               seed=cfg.seed)


def adamw(groups: list[dict[str, Any]], cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over ``groups``; each group carries ``initial_lr``/``final_lr`` for the schedule."""
    for g in groups:
        g.setdefault("weight_decay", cfg.weight_decay)
        g["lr"] = g["initial_lr"]
    return torch.optim.AdamW(groups)


def wrap_ddp(module: nn.Module, ctx: DistContext, *, sync_bn: bool = False) -> nn.Module:
    """DistributedDataParallel around ``module`` when running under torchrun."""
    if not ctx.distributed:
        return module
    if sync_bn:
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DDP(module, device_ids=ids, output_device=ids[0] if ids else None)


def unwrap(module: nn.Module) -> nn.Module:
    return getattr(module, "module", module)


def clip(params: list[nn.Parameter], max_norm: float | None) -> None:
    if max_norm:
        torch.nn.utils.clip_grad_norm_(params, max_norm)


def environment(ctx: DistContext) -> dict[str, Any]:
    """Where a model was trained (recorded in checkpoint metadata)."""
    dev = ctx.device
    info: dict[str, Any] = {"device": str(dev), "world_size": ctx.world_size,
                            "torch": torch.__version__, "python": platform.python_version(),
                            "landslide": __version__}
    if dev.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(dev)
    return info

