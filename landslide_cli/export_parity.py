"""The export's parity check: ONNX Runtime on the exported graph vs. PyTorch (fp32 eager).

Two inputs: :data:`PARITY_RANDOM` random normal tiles, then (when that passed) up to
:data:`PARITY_REAL` real image tiles, one per sub-folder of the parity data, normalized with the
checkpoint's input spec. The result is the max absolute probability difference of each.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from landslide_cli.errors import LandslideError
from landslide_cli.onnx_format import INPUT_NAME, OUTPUT_NAME
from landslide_cli.preprocess import InputSpec
from landslide_cli.safety import first_line

#: random tiles (batch) and real tiles (at most) used by the parity check
PARITY_RANDOM = 2
PARITY_REAL = 3
_IMAGE_SUFFIXES = {".png", ".tif", ".tiff", ".jpg", ".jpeg"}


@dataclass
class ParityResult:
    """Max absolute probability difference between ONNX Runtime and PyTorch (fp32 eager)."""

    tolerance: float
    random_max_diff: float | None = None
    real_max_diff: float | None = None
    #: the real tiles used (file paths); empty when none were found
    real_sources: list[str] = field(default_factory=list)
    #: why there is no real-input number, if there is none
    real_note: str = ""
    provider: str = "CPUExecutionProvider"

    @property
    def passed(self) -> bool:
        diffs = [d for d in (self.random_max_diff, self.real_max_diff) if d is not None]
        return all(d <= self.tolerance for d in diffs)

    def worst(self) -> tuple[float, str]:
        """The largest difference measured and its input (``random`` or ``real``)."""
        return max((d, name) for d, name in ((self.random_max_diff, "random"),
                                             (self.real_max_diff, "real")) if d is not None)


def default_parity_data() -> Path | None:
    """``$LANDSLIDE_SHARED/data/landslides`` when that variable is set, else ``None``: the
    package never looks for data outside itself (e.g. beside a source checkout)."""
    shared = os.environ.get("LANDSLIDE_SHARED")
    return Path(shared) / "data" / "landslides" if shared else None


def run_parity(module: nn.Module, payload: bytes, spec: InputSpec, device: torch.device, *,
               tolerance: float, dynamic_batch: bool,
               parity_data: str | Path | None) -> ParityResult:
    """Compare the serialized graph ``payload`` with ``module`` on random, then real tiles."""
    session = _ort_session(payload, device)
    result = ParityResult(tolerance=tolerance, provider=session.get_providers()[0])
    gen = np.random.default_rng(0)
    n = PARITY_RANDOM if dynamic_batch else 1
    random_batch = gen.standard_normal((n, spec.model_channels, spec.tile, spec.tile),
                                       dtype=np.float32)
    result.random_max_diff = _max_diff(module, session, random_batch, device, dynamic_batch)
    if not result.passed:  # failed already: no need to read real tiles
        result.real_note = "skipped (random-input parity failed)"
        return result

    tiles, sources, note = _real_tiles(spec, parity_data)
    result.real_sources, result.real_note = sources, note
    if tiles is not None:
        result.real_max_diff = _max_diff(module, session, tiles, device, dynamic_batch)
    return result


def _ort_session(payload: bytes, device: torch.device) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = max(1, torch.get_num_threads())
    opts.log_severity_level = 3  # fp16 graphs warn about CPU constant folding of Sqrt
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
    try:
        return ort.InferenceSession(payload, opts, providers=providers)
    except Exception as exc:
        raise LandslideError(f"ONNX Runtime cannot load the exported graph: {first_line(exc)}") \
            from None


@torch.inference_mode()
def _max_diff(module: nn.Module, session: Any, batch: np.ndarray, device: torch.device,
              dynamic_batch: bool) -> float:
    reference = module(torch.from_numpy(batch).to(device)).float().cpu().numpy()
    try:
        if dynamic_batch:
            got = session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]
        else:
            got = np.concatenate([session.run([OUTPUT_NAME], {INPUT_NAME: batch[i:i + 1]})[0]
                                  for i in range(len(batch))])
    except Exception as exc:
        raise LandslideError(f"ONNX Runtime failed on the exported graph: {first_line(exc)}") \
            from None
    if got.shape != reference.shape or got.dtype != np.float32:
        raise LandslideError(f"exported graph returns {got.dtype} {got.shape}, "
                             f"expected float32 {reference.shape}")
    return float(np.max(np.abs(got - reference)))


def _real_tiles(spec: InputSpec, parity_data: str | Path | None
                ) -> tuple[np.ndarray | None, list[str], str]:
    """Up to :data:`PARITY_REAL` real tiles (one per sub-folder), normalized per ``spec``."""
    root = Path(parity_data).expanduser() if parity_data else default_parity_data()
    if root is None:
        return None, [], "no real tiles given (--parity-data, or set LANDSLIDE_SHARED)"
    if not root.exists():
        if parity_data:
            raise LandslideError(f"parity data not found: {root}")
        return None, [], f"no real tiles ({root} not found)"
    candidates = [root] if root.is_file() else _one_per_folder(root)
    tiles, sources = [], []
    for path in candidates:
        tile = _read_tile(path, spec)
        if tile is not None:
            tiles.append(tile)
            sources.append(str(path))
        if len(tiles) == PARITY_REAL:
            break
    if not tiles:
        return None, [], (f"no readable image with the model's {spec.num_bands} bands "
                          f"under {root}")
    return spec.normalize(np.stack(tiles)), sources, ""


def _one_per_folder(root: Path) -> list[Path]:
    images = sorted(p for p in root.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES
                    and "mask" not in p.parent.name.lower())
    first: dict[Path, Path] = {}
    for path in images:
        first.setdefault(path.parent, path)
    return list(first.values()) + [p for p in images if p not in first.values()]


def _read_tile(path: Path, spec: InputSpec) -> np.ndarray | None:
    """The centre ``tile x tile`` window of ``path`` (padded if smaller), or None if unusable."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                if max(spec.indices) > src.count:
                    return None
                data = src.read(spec.indices)
    except Exception:
        return None
    t = spec.tile
    _, h, w = data.shape
    top, left = max(0, (h - t) // 2), max(0, (w - t) // 2)
    data = data[:, top:top + t, left:left + t]
    ph, pw = t - data.shape[1], t - data.shape[2]
    if ph or pw:
        mode = "reflect" if ph < data.shape[1] and pw < data.shape[2] else "edge"
        data = np.pad(data, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)),
                      mode=mode)
    return data
