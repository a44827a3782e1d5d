"""Inference precision (``--precision auto|fp32|bf16|int8``) and its parity guard.

``auto`` picks, per device:

* CUDA: the existing mixed precision (float16 autocast, ``fp16``);
* CPU: ``bf16`` (``torch.autocast("cpu", dtype=torch.bfloat16)``) when the CPU has native
  bfloat16 instructions (AMX-BF16 or AVX-512 BF16, read from ``/proc/cpuinfo`` at run time), else
  ``fp32`` (elsewhere bf16 is emulated and slower than fp32).

Every reduced precision is guarded at first use: the model runs the parity tiles shipped inside
the package (:func:`parity_tiles`, three real 128 x 128 RGB crops, see
``landslide_cli/parity_tiles/README.md``) in fp32 and in the reduced precision; when the largest
probability difference exceeds :data:`BF16_TOLERANCE` or more than :data:`MASK_TOLERANCE` of the
pixels change side of the threshold, the run falls back to fp32 with a one-line warning. What
was used and how it was checked (:class:`PrecisionCheck`) goes into ``--json`` and the ``runs``
table.

``int8`` is ONNX Runtime static quantization (:mod:`landslide_cli.quantize`); the torch backend
refuses it. This module imports torch only inside the functions that run a torch model.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from landslide_cli.errors import LandslideError
from landslide_cli.preprocess import InputSpec

AUTO, FP32, FP16, BF16, INT8 = "auto", "fp32", "fp16", "bf16", "int8"
#: what ``--precision`` accepts
PRECISIONS = (AUTO, FP32, BF16, INT8)
#: CPU flags (``/proc/cpuinfo``) that mean native bfloat16 matrix instructions
BF16_FLAGS = ("amx_bf16", "avx512_bf16")
#: CPU flags that mean int8 dot-product instructions (VNNI)
VNNI_FLAGS = ("amx_int8", "avx512_vnni", "avx_vnni")
#: overrides the CPU flags read from /proc/cpuinfo (space separated; for tests and for forcing
#: a choice on CPUs whose flags the kernel does not report)
FLAGS_ENV = "LANDSLIDE_CPU_FLAGS"
#: largest |p_bf16 - p_fp32| accepted on the parity tiles
BF16_TOLERANCE = 0.02
#: largest fraction of parity-tile pixels whose mask may change at the threshold
MASK_TOLERANCE = 0.005
#: ``min_iou`` applies when the masks' union covers at least this fraction of the pixels
MIN_UNION = 0.01
#: size of the shipped parity tiles
PARITY_TILE = 128


def check_precision(name: str | None) -> str:
    """``name`` normalized to one of :data:`PRECISIONS`, else a one-line error."""
    text = str(name or AUTO).strip().lower()
    if text not in PRECISIONS:
        raise LandslideError(f"--precision {name}: choose one of {', '.join(PRECISIONS)}")
    return text


# ------------------------------------------------------------------------------ CPU features


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The CPU's feature flags: ``$LANDSLIDE_CPU_FLAGS`` when set, else the ``flags`` line of
    ``cpuinfo`` (default: ``/proc/cpuinfo``; empty where there is none)."""
    override = os.environ.get(FLAGS_ENV)
    if override is not None:
        return frozenset(override.replace(",", " ").split())
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return frozenset()
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cpu_has_bf16(flags: frozenset[str] | None = None) -> bool:
    """Native bfloat16 on this CPU (AMX-BF16 or AVX-512 BF16)."""
    flags = cpu_flags() if flags is None else flags
    return any(f in flags for f in BF16_FLAGS)


def cpu_has_vnni(flags: frozenset[str] | None = None) -> bool:
    """int8 dot-product instructions (AVX-512 VNNI, AVX-VNNI or AMX-INT8) on this CPU."""
    flags = cpu_flags() if flags is None else flags
    return any(f in flags for f in VNNI_FLAGS)


def cpu_precision(requested: str, flags: frozenset[str] | None = None) -> tuple[str, str]:
    """The precision a torch model runs in on the CPU for ``requested`` and a note (empty when
    there is nothing to say): ``auto`` is bf16 on CPUs with native bfloat16, else fp32."""
    requested = check_precision(requested)
    if requested == INT8:
        raise LandslideError("--precision int8 runs on ONNX Runtime: use --backend auto or "
                             "--backend onnx (the torch backend has no int8 path)")
    native = cpu_has_bf16(flags)
    if requested == AUTO:
        return (BF16 if native else FP32), ""
    if requested == BF16 and not native:
        return BF16, ("--precision bf16: this CPU has no AMX / AVX-512 BF16, so bfloat16 is "
                      "emulated (usually slower than fp32)")
    return requested, ""


# ------------------------------------------------------------------------------ parity tiles


def parity_folder() -> Path:
    """The folder of the shipped parity tiles (inside the installed package)."""
    return Path(str(resources.files("landslide_cli") / "parity_tiles"))


def parity_tile_paths() -> list[Path]:
    """The shipped parity tiles, sorted."""
    folder = parity_folder()
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".png", ".tif"))


def read_parity_tiles(size: int | None = None) -> np.ndarray:
    """The shipped tiles as ``(N, 3, S, S)`` uint8; ``size`` other than 128 mirrors each tile
    (symmetric padding around the centre, then a centre crop) to ``S = size``."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    tiles = []
    for path in parity_tile_paths():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                tiles.append(src.read())
    if not tiles:  # pragma: no cover - a broken installation
        raise LandslideError(f"no parity tiles in {parity_folder()}")
    batch = np.stack(tiles)
    return batch if size is None or size == batch.shape[-1] else mirror_to(batch, size)


def mirror_to(batch: np.ndarray, size: int) -> np.ndarray:
    """``(N, C, h, w)`` mirrored (``numpy.pad`` symmetric, repeated as needed) or centre-cropped
    to ``(N, C, size, size)``."""
    h, w = batch.shape[-2:]
    ph, pw = max(0, size - h), max(0, size - w)
    if ph or pw:
        batch = np.pad(batch, ((0, 0), (0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)),
                       mode="symmetric")
    h, w = batch.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return np.ascontiguousarray(batch[..., top:top + size, left:left + size])


def parity_tiles(spec: InputSpec, size: int | None = None) -> np.ndarray | None:
    """The shipped tiles normalized for a model with input ``spec`` (``(N, 3, S, S)`` float32),
    or ``None`` when the model does not take three bands (the tiles are RGB)."""
    if spec.num_bands != 3:
        return None
    return np.ascontiguousarray(spec.normalize(read_parity_tiles(size)), dtype=np.float32)


# ------------------------------------------------------------------------------ the check


@dataclass
class PrecisionCheck:
    """A reduced precision compared with fp32 on the parity tiles."""

    precision: str  #: the precision compared with fp32 (``bf16``, ``int8``)
    passed: bool | None  #: ``None``: not checked (see ``note``)
    max_prob_diff: float | None = None
    mask_diff_fraction: float | None = None
    #: intersection over union of the two masks at the threshold (1 when both are empty)
    mask_iou: float | None = None
    tiles: int = 0
    tolerance: float = BF16_TOLERANCE
    mask_tolerance: float = MASK_TOLERANCE
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("max_prob_diff", "mask_diff_fraction", "mask_iou"):
            if data[key] is not None:
                data[key] = round(float(data[key]), 6)
        return data

    def describe(self) -> str:
        """One line, e.g. ``bf16 vs fp32 on 3 tiles: max |dp| 0.0031, 0.00% of mask pixels
        changed: passed`` (the ``runs`` table's ``precision_check``)."""
        if self.passed is None:
            return f"{self.precision}: not checked ({self.note})"
        parts = []
        if self.max_prob_diff is not None:
            parts.append(f"max |dp| {self.max_prob_diff:.4f}")
        if self.mask_diff_fraction is not None:
            parts.append(f"{100 * self.mask_diff_fraction:.2f}% of mask pixels changed")
        if self.mask_iou is not None:
            parts.append(f"IoU {self.mask_iou:.4f}")
        verdict = "passed" if self.passed else "failed"
        return (f"{self.precision} vs fp32 on {self.tiles} tiles: {', '.join(parts)}: "
                f"{verdict}")


def compare(reference: np.ndarray, candidate: np.ndarray, threshold: float, *, precision: str,
            tolerance: float = BF16_TOLERANCE, mask_tolerance: float = MASK_TOLERANCE,
            min_iou: float | None = None) -> PrecisionCheck:
    """Compare probabilities ``candidate`` with the fp32 ``reference`` (same shape): the largest
    difference, the fraction of pixels whose mask (``p >= threshold``) differs and the masks'
    IoU; passed when within ``tolerance`` and ``mask_tolerance`` (and ``IoU >= min_iou``)."""
    reference = np.asarray(reference, dtype=np.float64)
    candidate = np.asarray(candidate, dtype=np.float64)
    if reference.shape != candidate.shape:
        raise LandslideError(f"precision check: shapes differ ({reference.shape} vs "
                             f"{candidate.shape})")
    if not np.isfinite(candidate).all():
        return PrecisionCheck(precision, False, float("inf"), 1.0, 0.0, len(reference),
                              tolerance, mask_tolerance, note="non-finite probabilities")
    a, b = reference >= threshold, candidate >= threshold
    union = int((a | b).sum())
    iou = 1.0 if union == 0 else int((a & b).sum()) / union
    diff = float(np.max(np.abs(candidate - reference))) if reference.size else 0.0
    flipped = float((a != b).mean()) if reference.size else 0.0
    passed = diff <= tolerance and flipped <= mask_tolerance
    if min_iou is not None and union >= MIN_UNION * reference.size:
        passed = passed and iou >= min_iou  # (IoU of masks of a few pixels says little)
    return PrecisionCheck(precision, bool(passed), diff, flipped, iou, len(reference),
                          tolerance, mask_tolerance)


# ------------------------------------------------------------------------------ torch


def autocast_dtype(precision: str) -> Any:
    """The ``torch.autocast`` dtype of a torch precision (``None``: plain fp32)."""
    import torch

    return {BF16: torch.bfloat16, FP16: torch.float16}.get(precision)


def landslide_probability(logits: Any) -> Any:
    """P(landslide) ``(N, H, W)`` float32 from logits ``(N, K, H, W)``: ``softmax[:, 1]``, for
    two classes computed as the identical ``sigmoid(l1 - l0)`` (a third of the time on CPU)."""
    import torch

    logits = logits.float()
    if logits.shape[1] == 2:
        return torch.sigmoid(logits[:, 1] - logits[:, 0])
    return torch.softmax(logits, dim=1)[:, 1]


def torch_probabilities(model: Any, batch: np.ndarray, device: Any, precision: str) -> np.ndarray:
    """``softmax(model(batch))[:, 1]`` as float32 numpy, under the autocast of ``precision``."""
    import contextlib

    import torch

    dtype = autocast_dtype(precision)
    with torch.inference_mode():
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(device)
        x = x.contiguous(memory_format=torch.channels_last)  # as TorchBackend runs it
        ctx = (torch.autocast(device.type, dtype=dtype) if dtype is not None
               else contextlib.nullcontext())
        with ctx:
            logits = model(x)
        return landslide_probability(logits).cpu().numpy()


@dataclass
class Settled:
    """The precision a torch model runs in, its check and a warning (empty: none)."""

    precision: str
    check: PrecisionCheck | None
    warning: str = ""


def settle_torch_precision(model: Any, device: Any, requested: str, *, spec: InputSpec,
                           threshold: float, flags: frozenset[str] | None = None) -> Settled:
    """Choose the precision of a torch model on ``device`` for ``requested`` and guard a
    reduced CPU precision with the parity tiles (fp32 and a warning when it fails)."""
    requested = check_precision(requested)
    if device.type == "cuda":
        return _cuda_precision(requested)
    chosen, note = cpu_precision(requested, flags)
    if chosen == FP32:
        return Settled(FP32, None, note)
    tiles = parity_tiles(spec)
    if tiles is None:
        check = PrecisionCheck(chosen, None, note=f"no shipped parity tiles for a "
                                                  f"{spec.num_bands}-band model")
        if requested == AUTO:
            return Settled(FP32, check)
        return Settled(chosen, check, note or f"--precision {chosen}: {check.note}, so it is "
                                               "not checked against fp32")
    reference = torch_probabilities(model, tiles, device, FP32)
    reduced = torch_probabilities(model, tiles, device, chosen)
    check = compare(reference, reduced, threshold, precision=chosen)
    if not check.passed:
        return Settled(FP32, check, f"{chosen} failed the parity check ({check.describe()}); "
                                    "running in fp32")
    return Settled(chosen, check, note)


def _cuda_precision(requested: str) -> Settled:
    import torch

    if requested == INT8:
        raise LandslideError("--precision int8 runs on ONNX Runtime's CPU provider; use "
                             "--device cpu")
    if requested == AUTO:
        return Settled(FP16, PrecisionCheck(FP16, None, note="CUDA mixed precision (autocast "
                                                             "float16)"))
    if requested == BF16 and not torch.cuda.is_bf16_supported():
        return Settled(FP16, None, "--precision bf16: this GPU has no bfloat16; running "
                                   "float16 autocast")
    return Settled(requested, None)


def precision_fields(backend: Any) -> dict[str, Any]:
    """``{"precision", "precision_check"}`` of an open backend for ``--json`` (the check as a
    dict or ``None``); backends that say nothing run fp32."""
    check = getattr(backend, "precision_check", None)
    return {"precision": str(getattr(backend, "precision", FP32) or FP32),
            "precision_check": check.to_dict() if isinstance(check, PrecisionCheck) else None}


def precision_row(backend: Any) -> dict[str, str]:
    """``{"precision", "precision_check"}`` for the ``runs`` table (the check as one line)."""
    check = getattr(backend, "precision_check", None)
    return {"precision": str(getattr(backend, "precision", FP32) or FP32),
            "precision_check": check.describe() if isinstance(check, PrecisionCheck) else ""}
