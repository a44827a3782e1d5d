"""BatchNorm statistics re-estimated on the target data (``--adapt-bn``).

A BatchNorm layer normalizes with the channel means and variances it saw in training; on
imagery from another sensor those are off, and everything after the layer shifts with them.
:func:`adapt_backend` re-estimates them on the data about to be predicted (no labels are used):
the BatchNorm layers alone run in training mode (every other module stays in eval mode, no
gradients, nothing is learned), their running statistics are reset and accumulated as a
cumulative average (``momentum=None``) over up to N windows of the target scene(s) or tiles of
the evaluated set, then the model predicts with them. PVTv2 normalizes with LayerNorm, so in
the shipped models only the decoder's BatchNorms change.

It works on a copy: the backend passed in, its model and the model file are never modified.
Only the PyTorch backend has BatchNorm layers to adapt; an ONNX graph holds their statistics as
constants (usually folded into the convolutions), and a baseline has none (one-line errors).

Which data: :func:`choose_windows` picks windows of ``predict``'s own grid evenly (in row-major
order, scene after scene) among those whose pixels are at least half valid, and
:func:`scene_batches` reads them with ``predict``'s reader (masks, ``--rescale``, resampling and
normalization exactly as when predicting);
:func:`tile_batches` picks tiles evenly over the evaluated set and normalizes them as ``eval``
does.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from landslide_cli.errors import DataError, LandslideError
from landslide_cli.preprocess import InputSpec, normalize
from landslide_cli.reporting import Reporter, as_reporter

#: default ``--adapt-bn-windows``
DEFAULT_WINDOWS = 64
#: a candidate window needs at least this share of valid pixels
MIN_VALID = 0.5
#: side of the decimated mask read to measure a window's valid share
_PROBE = 32


@dataclass
class BNAdaptation:
    """What :func:`adapt_backend` did; :meth:`to_dict` goes into run metadata."""

    layers: int  #: BatchNorm layers whose statistics were re-estimated
    windows: int  #: windows (predict) or tiles (eval) they were estimated on
    batches: int  #: forward passes
    note: str | None = None  #: a warning for the caller to pass on (e.g. no BatchNorm layer)

    def to_dict(self) -> dict[str, Any]:
        return {"layers": self.layers, "windows": self.windows, "batches": self.batches}


def check_adapt_request(model_ref: Any, backend: str = "auto") -> None:
    """Refuse ``--adapt-bn`` early (before a model is opened) where it cannot work: the ONNX
    backend or an ``.onnx`` file, or a weight-free baseline."""
    text = str(model_ref or "") if isinstance(model_ref, (str, os.PathLike)) else ""
    if str(backend or "").strip().lower() == "onnx" or text.lower().endswith(".onnx"):
        raise LandslideError("--adapt-bn needs the torch backend (an ONNX graph has its "
                             "BatchNorm statistics as constants): use --backend torch with the "
                             ".safetensors checkpoint")
    if text.strip().lower().startswith("baseline:"):
        raise LandslideError(f"--adapt-bn: {text} is a weight-free baseline without BatchNorm "
                             "statistics; use it without --adapt-bn")


def torch_model(backend: Any) -> Any:
    """The ``torch.nn.Module`` behind ``backend``; a one-line error for any other backend."""
    import torch

    model = getattr(backend, "model", None)
    if not isinstance(model, torch.nn.Module):
        name = getattr(backend, "name", type(backend).__name__)
        raise LandslideError(f"--adapt-bn needs the torch backend (this model runs on {name}); "
                             "use --backend torch with the .safetensors checkpoint")
    return model


def batchnorm_layers(model: Any) -> list[Any]:
    """Every BatchNorm layer of ``model`` that keeps running statistics."""
    from torch.nn.modules.batchnorm import _BatchNorm

    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


def reestimate_batchnorm(model: Any, batches: Iterable[np.ndarray], *, device: Any = "cpu",
                         progress: Any = None) -> tuple[int, int]:
    """Reset and re-estimate, in place, the running statistics of ``model``'s BatchNorm layers
    on ``batches`` of normalized ``(N, C, H, W)`` float32 inputs; return ``(inputs, batches)``
    seen.

    Only the BatchNorm layers run in training mode, with ``momentum=None`` (the running mean
    and variance become the plain average of the per-batch statistics; PyTorch's variance is
    the unbiased one). Afterwards every layer is back in eval mode with its momentum restored.
    Raises :class:`DataError` when ``batches`` is empty (the statistics would be reset only).
    """
    import torch

    layers = batchnorm_layers(model)
    momenta = [bn.momentum for bn in layers]
    was_training = model.training
    seen = passes = 0
    model.eval()
    for bn in layers:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    try:
        with torch.no_grad():
            for batch in batches:
                x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(device)
                if x.shape[0] == 0:
                    continue
                model(x)
                seen += int(x.shape[0])
                passes += 1
                if progress is not None:
                    progress.advance(int(x.shape[0]))
    finally:
        for bn, momentum in zip(layers, momenta, strict=True):
            bn.momentum = momentum
        model.train(was_training)
    if not seen:
        raise DataError("--adapt-bn: no window with valid pixels to re-estimate the BatchNorm "
                        "statistics on")
    return seen, passes


def adapt_backend(backend: Any, batches: Iterable[np.ndarray], *, total: int | None = None,
                  reporter: Reporter | None = None) -> tuple[Any, BNAdaptation]:
    """A copy of the torch ``backend`` whose model's BatchNorm statistics are re-estimated on
    ``batches`` (see :func:`reestimate_batchnorm`), and what was done. ``backend`` itself and
    its model are left as they are. A model without BatchNorm comes back unchanged, with a
    :attr:`BNAdaptation.note` saying so. ``total``: inputs expected (for the progress bar)."""
    from landslide_cli.tta import TTABackend

    if isinstance(backend, TTABackend):  # adapt the wrapped backend, keep the augmentation
        inner, done = adapt_backend(backend.inner, batches, total=total, reporter=reporter)
        return TTABackend(inner, backend.tta), done
    model = torch_model(backend)
    layers = batchnorm_layers(model)
    if not layers:
        name = getattr(backend, "model_name", "the model")
        return backend, BNAdaptation(0, 0, 0, note=f"--adapt-bn: {name} has no BatchNorm layer; "
                                                   "its statistics stay as trained")
    adapted = copy.copy(backend)
    adapted.model = copy.deepcopy(model)
    device = getattr(backend, "torch_device", None) or next(model.parameters()).device
    bar = as_reporter(reporter).progress(int(total or 0), "adapt-bn")
    try:
        seen, passes = reestimate_batchnorm(adapted.model, batches, device=device, progress=bar)
    finally:
        bar.close()
    return adapted, BNAdaptation(len(layers), seen, passes)


# ----------------------------------------------------------------------------- predict


@dataclass
class SceneWindows:
    """One scene of a ``predict`` run as :func:`choose_windows` and :func:`scene_batches`
    see it: its header, the bands read, its window layout (a
    :class:`~landslide_cli.predict.windows.GridLayout`) and the keywords ``predict`` gives
    its :class:`~landslide_cli.predict.raster.PrefetchReader` (``--rescale``, resampling)."""

    info: Any
    bands: list[int]
    layout: Any
    reader_options: dict[str, Any] = field(default_factory=dict)


class _Chosen:
    """A window layout restricted to some of its windows (what the reader iterates)."""

    def __init__(self, layout: Any, keep: set[tuple[int, int]]) -> None:
        self.layout, self.keep, self.tile = layout, keep, layout.tile

    def __getattr__(self, attr: str) -> Any:
        if attr == "layout":
            raise AttributeError(attr)
        return getattr(self.layout, attr)

    def __len__(self) -> int:
        return len(self.keep)

    def windows(self) -> Iterator[tuple[int, int, int, int, int, int]]:
        for win in self.layout.windows():
            if (win[0], win[1]) in self.keep:
                yield win


def _valid_share(ds: Any, info: Any, bands: list[int], y0: int, x0: int, h: int, w: int
                 ) -> float:
    """The share of valid pixels of a window, estimated from a decimated read of its masks
    (and pixels: NaN, or the ``--nodata`` value, is invalid)."""
    from rasterio.windows import Window

    override = getattr(info, "nodata_override", None)
    use_mask, is_float = info.needs_mask(bands), info.is_float(bands)
    if not (use_mask or is_float or override is not None):
        return 1.0
    win = Window(x0, y0, w, h)
    shape = (len(bands), min(h, _PROBE), min(w, _PROBE))
    valid = np.ones(shape[1:], dtype=bool)
    if use_mask and override is None:
        valid &= (ds.read_masks(bands, window=win, out_shape=shape) != 0).all(axis=0)
    if is_float or override is not None:
        raw = ds.read(bands, window=win, out_shape=shape)
        if is_float:
            valid &= np.isfinite(raw).all(axis=0)
        if override is not None:
            valid &= ~(raw == override).any(axis=0)
    return float(valid.mean())


def choose_windows(scenes: Sequence[SceneWindows], windows: int) -> list[tuple[int, int, int]]:
    """``(scene index, row, column)`` of up to ``windows`` windows of the scenes' layouts,
    evenly spaced in row-major order, scene after scene, over the windows whose pixels are at
    least :data:`MIN_VALID` valid."""
    import rasterio

    from landslide_cli.predict.raster import gdal_env

    candidates: list[tuple[int, int, int]] = []
    with gdal_env():
        for i, scene in enumerate(scenes):
            with rasterio.open(scene.info.path) as ds:
                for r, c, y0, x0, h, w in scene.layout.windows():
                    if _valid_share(ds, scene.info, scene.bands, y0, x0, h, w) >= MIN_VALID:
                        candidates.append((i, r, c))
    if not candidates:
        return []
    picks = np.unique(np.linspace(0, len(candidates) - 1, min(windows, len(candidates)))
                      .round().astype(int))
    return [candidates[k] for k in picks]


def scene_batches(scenes: Sequence[SceneWindows], chosen: Sequence[tuple[int, int, int]], *,
                  spec: InputSpec, batch_size: int = 4) -> Iterator[np.ndarray]:
    """Batches ``(k, C, T, T)`` of the ``chosen`` windows (from :func:`choose_windows`), read,
    masked, converted and normalized by ``predict``'s own reader; windows without a valid
    pixel are skipped, as ``predict`` skips them."""
    from landslide_cli.predict.raster import PrefetchReader

    for i, scene in enumerate(scenes):
        keep = {(r, c) for s, r, c in chosen if s == i}
        if not keep:
            continue
        with PrefetchReader(scene.info, _Chosen(scene.layout, keep), scene.bands, spec,
                            batch_size, **scene.reader_options) as reader:
            for item in reader:
                if item.batch is not None and len(item.batch):
                    yield item.batch


# -------------------------------------------------------------------------------- eval


def choose_tiles(count: int, windows: int) -> list[int]:
    """Up to ``windows`` tile indexes spread evenly over ``range(count)``."""
    if count <= 0:
        return []
    return [int(i) for i in np.unique(np.linspace(0, count - 1, min(windows, count))
                                      .round().astype(int))]


def tile_batches(tiles: Any, spec: InputSpec, *, windows: int = DEFAULT_WINDOWS,
                 batch_size: int = 4, skip_bad: bool = False,
                 rescale: Callable[..., np.ndarray] | None = None) -> Iterator[np.ndarray]:
    """Batches of up to ``windows`` tiles of the :class:`~landslide_cli.data.TileSet`
    ``tiles`` (chosen by :func:`choose_tiles`), bands selected, converted by ``rescale``
    (``eval``'s ``--rescale``: ``rescale(image, source=...)``) and normalized as ``eval``
    does; tiles of one size go into one batch. A tile that cannot be read is skipped with
    ``skip_bad``, else its :class:`DataError` is raised. The masks are never used."""
    from landslide_cli.data import select_bands

    pending: dict[tuple[int, ...], list[np.ndarray]] = {}
    for i in choose_tiles(len(tiles), windows):
        try:
            image, _ = tiles.read(i)
        except DataError:
            if skip_bad:
                continue
            raise
        source = str(tiles[i].image_path)
        image = select_bands(image, spec, source=source)
        if rescale is not None:
            image = rescale(image, source=source)
        group = pending.setdefault(tuple(image.shape), [])
        group.append(image)
        if len(group) == batch_size:
            yield normalize(np.stack(pending.pop(tuple(image.shape))), spec)
    for group in pending.values():
        yield normalize(np.stack(group), spec)
