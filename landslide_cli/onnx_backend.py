"""ONNX Runtime backend: runs a file written by ``landslide export`` behind the Backend protocol.

The ``"onnx"`` entry of :data:`landslide_cli.backends.BACKENDS` imports this module (and ONNX
Runtime) only when that backend is opened. The exported graph already returns the landslide
probability ``(N, H, W)``, so :meth:`OnnxBackend.predict` only validates shapes, splits batches
for static-batch models and calls ONNX Runtime.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from landslide_cli.errors import LandslideError
from landslide_cli.onnx_format import INPUT_NAME, OUTPUT_NAME, parse_metadata
from landslide_cli.preprocess import InputSpec
from landslide_cli.safety import sha256_file as file_sha256

log = logging.getLogger("landslide.onnx")

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def cpu_cores() -> int:
    """CPU cores this process may use (affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return max(1, os.cpu_count() or 1)


def choose_providers(device: str = "auto") -> list[Any]:
    """ONNX Runtime providers to request for ``device`` (``auto``, ``cpu``, ``cuda[:N]``)."""
    import onnxruntime as ort

    name = (device or "auto").strip().lower()
    available = ort.get_available_providers()
    if name == "cpu":
        return [CPU]
    if name == "auto":
        return [CUDA, CPU] if CUDA in available else [CPU]
    if name.startswith("cuda"):
        index = name.partition(":")[2]
        if index and not index.isdigit():
            raise LandslideError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N")
        if CUDA not in available:
            raise LandslideError(
                f"--device {device} was requested but this onnxruntime build has no "
                f"{CUDA} (available: {', '.join(available)}; install onnxruntime-gpu)"
            )
        return [(CUDA, {"device_id": int(index or 0)}), CPU]
    raise LandslideError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N")


class OnnxBackend:
    """Landslide probabilities from an exported ``.onnx`` file via ONNX Runtime.

    Attributes (besides the :class:`~landslide_cli.backends.Backend` protocol):
        providers: the execution providers the session actually uses, in priority order.
        requested_providers: what was asked for.
        static_batch: the batch size a static-batch export requires, else ``None``.
        model_path: the ``.onnx`` file.
        onnx_metadata: the full ``landslide`` metadata document (checkpoint + export info).
    """

    name = "onnx"

    def __init__(self, model_ref: str | Path | None = None, *, device: str = "auto",
                 threads: int | None = None) -> None:
        import onnxruntime as ort

        path = _resolve_onnx_path(model_ref)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.intra_op_num_threads = int(threads or cpu_cores())
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3  # errors only; we report fall-backs ourselves
        self.requested_providers = choose_providers(device)
        try:
            session = ort.InferenceSession(str(path), opts, providers=self.requested_providers)
        except Exception as exc:
            raise LandslideError(f"{path}: not a valid ONNX model ({_short(exc)})") from None
        self.session = session
        self.providers: list[str] = list(session.get_providers())
        wanted = [p[0] if isinstance(p, tuple) else p for p in self.requested_providers]
        if CUDA in wanted and CUDA not in self.providers:
            log.warning("%s was requested but ONNX Runtime fell back to %s (CUDA libraries "
                        "missing or no GPU)", CUDA, ", ".join(self.providers))
        self.device = self.providers[0]

        props = dict(session.get_modelmeta().custom_metadata_map)
        doc = parse_metadata(props, source=str(path))
        self.onnx_metadata = doc
        self.metadata: dict[str, Any] = doc["checkpoint"]
        self.model_path = path
        self.model_sha256 = file_sha256(path)
        self.model_name = str(self.metadata.get("name") or path.stem)
        self.threshold = float(self.metadata.get("threshold", 0.5))
        try:
            spec = InputSpec.from_dict(self.metadata["input"])
        except (TypeError, ValueError) as exc:
            raise LandslideError(f"{path}: invalid input spec in metadata ({exc})") from None

        inputs, outputs = session.get_inputs(), session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1 or len(inputs[0].shape) != 4:
            raise LandslideError(f"{path}: expected one (N, C, H, W) input and one output, got "
                                 f"{len(inputs)} inputs and {len(outputs)} outputs")
        self.input_name, self.output_name = inputs[0].name, outputs[0].name
        batch, bands, height, width = inputs[0].shape
        if not all(isinstance(v, int) for v in (bands, height, width)) or height != width:
            raise LandslideError(f"{path}: input shape {inputs[0].shape} is not (N, C, T, T) "
                                 "with a fixed square tile")
        if bands != spec.model_channels:
            raise LandslideError(f"{path}: graph takes {bands} bands but its metadata lists "
                                 f"{spec.model_channels} "
                                 f"({', '.join(spec.bands + spec.derived)})")
        spec.tile = int(height)
        self.spec = spec
        self.fixed_tile: int | None = int(height)
        self.static_batch: int | None = batch if isinstance(batch, int) else None
        #: the file's precision (fp32, fp16, int8: ``landslide export``); set by
        #: landslide_cli.onnx_cache with its parity result for cached exports
        self.precision = str((doc.get("export") or {}).get("precision") or "fp32")
        self.precision_check: Any = None
        if (self.input_name, self.output_name) != (INPUT_NAME, OUTPUT_NAME):
            log.debug("%s: input/output named %s/%s", path, self.input_name, self.output_name)

    def __repr__(self) -> str:
        return (f"OnnxBackend({self.model_path.name!r}, providers={self.providers}, "
                f"tile={self.fixed_tile}, batch={self.static_batch or 'dynamic'})")

    def describe(self) -> str:
        """One line for logs: file, providers, tile and batch."""
        return (f"onnx {self.model_path.name} on {', '.join(self.providers)} (tile "
                f"{self.fixed_tile}, batch {self.static_batch or 'dynamic'})")

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """(N, C, T, T) normalized float32 -> (N, T, T) float32 landslide probability."""
        batch = np.asarray(batch)
        self._check(batch)
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        n = batch.shape[0]
        if n == 0:
            return np.zeros((0, self.fixed_tile, self.fixed_tile), dtype=np.float32)
        step = self.static_batch
        if step is None or n == step:
            return self._run(batch)
        parts = []
        for start in range(0, n, step):
            chunk = batch[start:start + step]
            short = step - len(chunk)
            if short:
                chunk = np.concatenate([chunk, np.zeros((short, *chunk.shape[1:]), chunk.dtype)])
            parts.append(self._run(chunk)[:step - short])
        return np.concatenate(parts)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        out = self.session.run([self.output_name], {self.input_name: batch})[0]
        return np.asarray(out, dtype=np.float32)

    def _check(self, batch: np.ndarray) -> None:
        t, c = self.fixed_tile, self.spec.model_channels
        expected = f"(N, {c}, {t}, {t}) tiles ({', '.join(self.spec.bands + self.spec.derived)})"
        if batch.ndim != 4:
            raise LandslideError(f"the ONNX model {self.model_path.name} expects {expected}; "
                                 f"got an array of shape {tuple(batch.shape)}")
        if batch.shape[1] != c:
            raise LandslideError(f"the ONNX model {self.model_path.name} expects {c} bands "
                                 f"({', '.join(self.spec.bands)}), got {batch.shape[1]}")
        if batch.shape[2:] != (t, t):
            raise LandslideError(
                f"the ONNX model {self.model_path.name} was exported for {t}x{t} tiles, got "
                f"{batch.shape[2]}x{batch.shape[3]} (use --tile {t}, or re-export with "
                f"`landslide export --tile {batch.shape[2]}`)"
            )


def _resolve_onnx_path(model_ref: str | Path | None) -> Path:
    if model_ref is None or str(model_ref) in ("", "default"):
        raise LandslideError("the onnx backend needs an .onnx file (--model model.onnx); "
                             "create one with `landslide export`")
    path = Path(model_ref).expanduser()
    if not path.exists():
        raise LandslideError(f"model not found: {path}")
    if not path.is_file():
        raise LandslideError(f"model is not a file: {path}")
    if path.suffix.lower() == ".safetensors":
        raise LandslideError(f"{path} is a checkpoint, not an ONNX model; export it first with "
                             f"`landslide export {path} --out model.onnx` or use --backend torch")
    return path


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:200] if text else type(exc).__name__
