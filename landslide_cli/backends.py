"""Inference backends behind one small interface, shared by ``predict`` and ``eval``.

A backend turns a batch of *normalized* tiles ``(N, C, H, W)`` float32 into landslide
probabilities ``(N, H, W)`` float32. Windowing, stitching, metrics and polygonizing never look
past this interface, so the torch and ONNX Runtime paths give the same results.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from landslide_cli.errors import LandslideError
from landslide_cli.preprocess import InputSpec
from landslide_cli.registry import Registry, canonical


@runtime_checkable
class Backend(Protocol):
    name: str  #: "torch" or "onnx"
    device: str  #: what actually runs it, e.g. "cpu", "cuda:0", "CUDAExecutionProvider"
    spec: InputSpec  #: bands, scaling and normalization the model expects
    threshold: float  #: decision threshold from the model's metadata
    model_name: str
    model_sha256: str
    metadata: dict  #: the checkpoint's full JSON metadata
    fixed_tile: int | None  #: a tile size the model requires (ONNX static shape), else None

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """(N, C, H, W) normalized float32 -> (N, H, W) float32 landslide probability."""
        ...


class TorchBackend:
    name = "torch"

    def __init__(self, model_ref: str | Path | None = None, *, device: str = "auto",
                 amp: bool = True, precision: str = "auto") -> None:
        import torch

        from landslide_cli.devices import resolve_device
        from landslide_cli.precision import autocast_dtype, settle_torch_precision
        from landslide_cli.zoo.loading import load_model

        dev = resolve_device(device)
        loaded = load_model(model_ref, device=dev)
        # channels-last weights and inputs: oneDNN's convolutions then run without layout
        # reorders, and PVTv2's token <-> grid moves are views (about 25 % faster per tile)
        self.model = loaded.model.to(memory_format=torch.channels_last)
        self.torch_device = dev
        self.device = str(dev)
        self.spec = loaded.meta.input_spec
        self.threshold = loaded.meta.threshold
        self.model_name = loaded.name
        self.model_sha256 = loaded.sha256
        self.metadata = loaded.meta.to_dict()
        self.model_path = loaded.path
        self.fixed_tile = None
        # --precision (landslide_cli.precision): checked on the shipped parity tiles at first
        # use; ``precision_note`` is a warning for the caller to report (empty: none)
        settled = settle_torch_precision(self.model, dev, precision if amp else "fp32",
                                         spec=self.spec, threshold=self.threshold)
        self.precision, self.precision_check = settled.precision, settled.check
        self.precision_note = settled.warning
        self.autocast = autocast_dtype(self.precision)
        self.amp = self.autocast is not None and dev.type == "cuda"

    def predict(self, batch: np.ndarray) -> np.ndarray:
        import torch

        from landslide_cli.precision import landslide_probability

        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
            if self.torch_device.type == "cuda":
                x = x.pin_memory().to(self.torch_device, non_blocking=True)
            x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.torch_device.type, dtype=self.autocast or torch.float32,
                                enabled=self.autocast is not None):
                logits = self.model(x)
            return landslide_probability(logits).cpu().numpy()


def _onnx_backend(model_ref: str | Path | None = None, *, device: str = "auto",
                  precision: str = "auto", **options: object) -> Backend:
    """Open an ``.onnx`` file with ONNX Runtime (imported only when this backend is used);
    ``precision`` int8 runs its cached static quantization (``landslide_cli.onnx_cache``)."""
    if precision != "auto":
        from landslide_cli.onnx_cache import open_onnx_file

        return open_onnx_file(model_ref, device=device, precision=precision, **options)
    from landslide_cli.onnx_backend import OnnxBackend

    return OnnxBackend(model_ref, device=device, **options)  # type: ignore[arg-type]


#: name -> ``factory(model_ref, *, device) -> Backend``. Every backend is listed here up front
#: (so errors and help name them all); heavy runtimes are imported by their factory.
BACKENDS: Registry = Registry("backend")
BACKENDS.add("torch", TorchBackend, description="PyTorch eager (CPU or CUDA)")
BACKENDS.add("onnx", _onnx_backend, description="ONNX Runtime (CUDA execution provider if "
             "available, else CPU) on a file from `landslide export`")

#: what ``--backend`` accepts: ``auto`` plus every registered backend
AUTO = "auto"


def backend_choices() -> list[str]:
    """``["auto", "torch", "onnx", ...]``: every value ``--backend`` accepts."""
    return [AUTO, *BACKENDS.names()]


def check_backend(name: str) -> str:
    """``"auto"`` or the registered backend called ``name``; else a one-line error that lists
    every choice (cheap: no runtime is imported)."""
    text = str(name or "").strip()
    if canonical(text) == AUTO:
        return AUTO
    if text not in BACKENDS:
        raise LandslideError(f"unknown backend {text!r}; choose one of: "
                             f"{', '.join(backend_choices())}")
    return BACKENDS.resolve(text)


def open_backend(model_ref: str | Path | None = None, *, backend: str = "auto",
                 device: str = "auto", precision: str = "auto") -> Backend:
    """Open ``model_ref`` with the named backend; ``auto`` picks ONNX for ``.onnx`` files.
    A ``baseline:<name>`` reference is a weight-free colour index (``landslide_cli.baselines``).
    ``precision`` (``landslide_cli.precision.PRECISIONS``) goes to the torch and ONNX backends
    (``predict`` resolves ``auto`` on CPU with ``landslide_cli.onnx_cache.open_auto_backend``)."""
    backend = check_backend(backend)
    if isinstance(model_ref, str) and model_ref.strip().lower().startswith("baseline:"):
        from landslide_cli.baselines import BaselineBackend

        if backend != AUTO:
            raise LandslideError(f"--backend {backend}: {model_ref} is a weight-free baseline; "
                                 "leave --backend at auto")
        return BaselineBackend(model_ref, device=device)
    if backend == AUTO:
        backend = "onnx" if str(model_ref or "").lower().endswith(".onnx") else "torch"
    if precision != "auto":
        return BACKENDS.build(backend, model_ref, device=device, precision=precision)
    return BACKENDS.build(backend, model_ref, device=device)
