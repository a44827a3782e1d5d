"""int8 ONNX models: ONNX Runtime static quantization (QDQ), checked against fp32.

:func:`quantize_int8` takes an fp32 file written by ``landslide export`` and writes its int8
version: weights quantized per output channel to int8, activations to uint8 with scales from a
MinMax calibration on real tiles (default: the parity tiles shipped in the package, mirrored to
the graph's tile; or images the user names), in the QDQ format (quantize/dequantize pairs that
ONNX Runtime fuses into integer kernels). On CPUs without int8 dot-product instructions (VNNI)
the weights use a 7-bit range (``reduce_range``), which avoids the overflow of the u8 x s8
AVX2 kernels.

Nothing is written unless the int8 model's masks at the model's threshold agree with fp32 on the
check tiles: intersection over union at least :data:`INT8_MIN_IOU`, at most
:data:`INT8_MASK_TOLERANCE` of the pixels changed and probabilities within
:data:`INT8_TOLERANCE`. The file keeps the landslide metadata with ``export.precision = "int8"``
and a ``quantization`` record. Needs the ``onnx`` and ``onnxruntime`` packages, not PyTorch.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from landslide_cli.errors import LandslideError
from landslide_cli.onnx_format import INPUT_NAME, METADATA_KEY, OUTPUT_NAME, read_onnx_metadata
from landslide_cli.precision import (
    INT8,
    PrecisionCheck,
    compare,
    cpu_has_vnni,
    mirror_to,
    parity_tiles,
)
from landslide_cli.preprocess import InputSpec
from landslide_cli.reporting import Reporter, as_reporter
from landslide_cli.safety import atomic_write, check_target, first_line, sha256_file

#: the int8 model's masks must agree with fp32 this well on the check tiles
INT8_MIN_IOU = 0.9
INT8_MASK_TOLERANCE = 0.05
INT8_TOLERANCE = 0.25
#: calibration images read from a user folder, at most
MAX_CALIBRATION = 16
_IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")


@dataclass
class QuantizeReport:
    """What :func:`quantize_int8` wrote and how it checked it."""

    path: Path
    source: Path
    source_sha256: str
    size_bytes: int
    source_size_bytes: int
    tile: int
    calibration: list[str]
    reduce_range: bool
    check: PrecisionCheck
    seconds: float
    precision: str = INT8
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"], data["source"] = str(self.path), str(self.source)
        data["check"] = self.check.to_dict()
        return data


def _threads() -> int:
    text = os.environ.get("OMP_NUM_THREADS", "").strip()
    if text.isdigit() and int(text) > 0:
        return int(text)
    from landslide_cli.onnx_backend import cpu_cores

    return cpu_cores()


def _session(model: str | bytes) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = _threads()
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise LandslideError(f"ONNX Runtime cannot load the model: {first_line(exc)}") from None


def _run(session: Any, tiles: np.ndarray) -> np.ndarray:
    return np.concatenate([session.run([OUTPUT_NAME], {INPUT_NAME: tiles[i:i + 1]})[0]
                           for i in range(len(tiles))]).astype(np.float32)


def read_calibration(folder: str | os.PathLike[str], spec: InputSpec, size: int,
                     limit: int = MAX_CALIBRATION) -> tuple[np.ndarray, list[str]]:
    """Up to ``limit`` images under ``folder`` (or the one image ``folder``), the model's bands,
    mirrored or centre-cropped to ``size``, normalized: ``(N, C, size, size)`` float32."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    root = Path(folder).expanduser()
    if not root.exists():
        raise LandslideError(f"calibration data not found: {root}")
    paths = [root] if root.is_file() else sorted(
        p for p in root.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES
        and "mask" not in p.parent.name.lower())
    tiles, used = [], []
    for path in paths:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                with rasterio.open(path) as src:
                    if max(spec.indices) > src.count:
                        continue
                    data = src.read(spec.indices)
        except Exception:
            continue
        tiles.append(mirror_to(data[None], size)[0])
        used.append(str(path))
        if len(tiles) == limit:
            break
    if not tiles:
        raise LandslideError(f"no readable image with the model's {spec.num_bands} bands under "
                             f"{root}")
    return np.ascontiguousarray(spec.normalize(np.stack(tiles)), dtype=np.float32), used


def calibration_tiles(spec: InputSpec, size: int,
                      data: str | os.PathLike[str] | None = None
                      ) -> tuple[np.ndarray, list[str]]:
    """The calibration (and check) tiles: images under ``data``, else the shipped parity tiles
    mirrored to ``size``."""
    if data is not None:
        return read_calibration(data, spec, size)
    tiles = parity_tiles(spec, size)
    if tiles is None:
        raise LandslideError(f"int8 calibration: the shipped tiles are RGB but the model takes "
                             f"{spec.num_bands} bands; pass --calibration-data with images of "
                             f"its bands ({', '.join(spec.bands)})")
    return tiles, ["shipped parity tiles (landslide_cli/parity_tiles)"]


def _quantize(source: Path, target: Path, tiles: np.ndarray, reduce_range: bool) -> list[str]:
    """Run ORT's pre-processing (best effort) and ``quantize_static`` into ``target``."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    notes = []
    model_in: Path = source
    pre = target.with_name("pre.onnx")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quant_pre_process(str(source), str(pre), skip_symbolic_shape=True)
        model_in = pre
    except Exception as exc:  # optional: the quantizer works on the raw graph too
        notes.append(f"pre-processing skipped ({first_line(exc)})")

    class Reader(CalibrationDataReader):
        """One calibration tile per call."""

        def __init__(self) -> None:
            self.i = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self.i >= len(tiles):
                return None
            self.i += 1
            return {INPUT_NAME: tiles[self.i - 1:self.i]}

        def rewind(self) -> None:
            self.i = 0

    reader = Reader()
    root = logging.getLogger()
    level = root.level
    try:
        # the quantizer logs one line per rank-1 weight through the root logger
        root.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_static(str(model_in), str(target), reader, quant_format=QuantFormat.QDQ,
                            per_channel=True, reduce_range=reduce_range,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax,
                            extra_options={"CalibTensorRangeSymmetric": False})
    except LandslideError:
        raise
    except Exception as exc:
        raise LandslideError(f"int8 quantization failed: {first_line(exc)}") from None
    finally:
        root.setLevel(level)
    return notes


def _embed(target: Path, source_doc: dict[str, Any], record: dict[str, Any]) -> bytes:
    """The quantized graph with the source's landslide metadata, marked int8."""
    import onnx

    proto = onnx.load(str(target))
    doc = json.loads(json.dumps(source_doc))
    doc.setdefault("export", {})["precision"] = INT8
    doc["quantization"] = record
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(doc, sort_keys=True)
    flat = {"landslide.precision": INT8,
            "landslide.name": str(doc["checkpoint"].get("name") or ""),
            "landslide.threshold": repr(float(doc["checkpoint"].get("threshold", 0.5)))}
    for key, value in flat.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "landslide"
    return proto.SerializeToString()


def quantize_int8(source: str | os.PathLike[str], out: str | os.PathLike[str], *,
                  calibration_data: str | os.PathLike[str] | None = None,
                  overwrite: bool = False, min_iou: float = INT8_MIN_IOU,
                  flags: frozenset[str] | None = None,
                  reporter: Reporter | None = None) -> QuantizeReport:
    """Quantize the fp32 landslide ONNX file ``source`` to int8 into ``out`` (atomically).

    Args:
        source: an fp32 ``.onnx`` from ``landslide export`` (not fp16, not already int8).
        out: the ``.onnx`` to write.
        calibration_data: an image or a folder of images for the calibration and the check
            (default: the shipped parity tiles; needed for models that do not take RGB).
        overwrite: replace an existing ``out``.
        min_iou: the smallest mask IoU (int8 vs fp32 at the model's threshold) accepted.
        flags: CPU flags (default: this CPU's) deciding ``reduce_range`` (no VNNI: 7-bit).
        reporter: receives short status lines.

    Raises:
        LandslideError: unusable source, quantization failure or failed check; ``out`` is
            then left untouched.
    """
    say = as_reporter(reporter).info
    started = time.perf_counter()
    source, out = Path(source).expanduser(), Path(out).expanduser()
    check_target(out, overwrite=overwrite, what="--out", suffixes=(".onnx",), inputs=[source])
    doc = read_onnx_metadata(source)
    precision = str((doc.get("export") or {}).get("precision") or "fp32")
    if precision != "fp32":
        raise LandslideError(f"{source}: int8 quantization needs an fp32 export, this file is "
                             f"{precision} (export it again without --fp16)")
    spec = InputSpec.from_dict(doc["checkpoint"]["input"])
    tile = int((doc.get("export") or {}).get("tile") or spec.tile)
    threshold = float(doc["checkpoint"].get("threshold", 0.5))
    tiles, used = calibration_tiles(spec, tile, calibration_data)
    reduce_range = not cpu_has_vnni(flags)
    say(f"calibrating int8 on {len(tiles)} tile(s) of {tile}x{tile}"
        f"{' (7-bit weights: no VNNI on this CPU)' if reduce_range else ''}")
    with tempfile.TemporaryDirectory(prefix="landslide-int8-") as tmp:
        raw = Path(tmp) / "int8.onnx"
        notes = _quantize(source, raw, tiles, reduce_range)
        record = {"method": "onnxruntime.quantization.quantize_static", "format": "QDQ",
                  "weights": "int8 per channel", "activations": "uint8",
                  "calibration": "MinMax", "calibration_tiles": len(tiles),
                  "reduce_range": reduce_range, "source_sha256": sha256_file(source)}
        payload = _embed(raw, doc, record)
    check = compare(_run(_session(str(source)), tiles), _run(_session(payload), tiles),
                    threshold, precision=INT8, tolerance=INT8_TOLERANCE,
                    mask_tolerance=INT8_MASK_TOLERANCE, min_iou=min_iou)
    if not check.passed:
        raise LandslideError(f"int8 check failed ({check.describe()}); {out} was not written")
    try:
        atomic_write(out, lambda tmp: tmp.write_bytes(payload), suffix=".onnx.tmp")
    except OSError as exc:
        raise LandslideError(f"cannot write {out}: {exc.strerror or first_line(exc)}") from None
    return QuantizeReport(path=out, source=source, source_sha256=record["source_sha256"],
                          size_bytes=out.stat().st_size, source_size_bytes=source.stat().st_size,
                          tile=tile, calibration=list(used), reduce_range=reduce_range,
                          check=check, seconds=time.perf_counter() - started, notes=notes)


def check_quantize(value: str | None) -> str | None:
    """``--quantize``: ``None`` or ``int8``."""
    if value is None or str(value).strip().lower() in ("", "none"):
        return None
    if str(value).strip().lower() != INT8:
        raise LandslideError(f"--quantize {value}: only int8 is supported")
    return INT8


def export_int8(model_ref: Any, out: str | os.PathLike[str], *,
                calibration_data: str | os.PathLike[str] | None = None,
                overwrite: bool = False, reporter: Reporter | None = None,
                **export_options: Any) -> tuple[Any, QuantizeReport]:
    """``landslide export --quantize int8``: export ``model_ref`` in fp32 (with its parity
    check, :func:`landslide_cli.export.export_onnx` and ``export_options``) into a temporary
    folder, then :func:`quantize_int8` it into ``out``. Returns both reports."""
    from landslide_cli.export import export_onnx

    out = Path(out).expanduser()
    inputs = [Path(model_ref)] if isinstance(model_ref, (str, os.PathLike)) else []
    check_target(out, overwrite=overwrite, what="--out", suffixes=(".onnx",), inputs=inputs)
    if export_options.get("fp16"):
        raise LandslideError("--quantize int8 and --fp16 exclude each other (int8 starts from "
                             "the fp32 export)")
    with tempfile.TemporaryDirectory(prefix="landslide-export-int8-") as tmp:
        fp32 = export_onnx(model_ref, Path(tmp) / "fp32.onnx", reporter=reporter,
                           **export_options)
        report = quantize_int8(fp32.path, out, calibration_data=calibration_data,
                               overwrite=overwrite, reporter=reporter)
    return fp32, report
