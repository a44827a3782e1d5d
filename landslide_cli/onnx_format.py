"""The project's ONNX file format: names and the metadata document (no torch, no exporter).

An exported file maps ``image`` ``(N, C, T, T)`` normalized float32 tiles to ``probability``
``(N, T, T)`` float32. Its ``metadata_props`` key ``landslide`` holds a JSON document with
``format`` = :data:`ONNX_FORMAT`, ``format_version`` = :data:`ONNX_FORMAT_VERSION` and the
checkpoint's metadata under ``checkpoint`` (its ``input`` spec included); a few flat
``landslide.*`` keys repeat the most useful fields for tools that cannot parse JSON. Writing
(:func:`embed_metadata`) and reading it need only the ``onnx`` package, so ONNX Runtime
deployments load without PyTorch.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from landslide_cli import __version__
from landslide_cli.errors import LandslideError
from landslide_cli.preprocess import InputSpec
from landslide_cli.safety import first_line

#: value of ``format`` inside the ``landslide`` metadata JSON
ONNX_FORMAT = "landslide-onnx"
ONNX_FORMAT_VERSION = "1"
#: the ``metadata_props`` key holding the JSON document
METADATA_KEY = "landslide"
INPUT_NAME = "image"
OUTPUT_NAME = "probability"


def embed_metadata(proto: Any, *, meta_dict: dict[str, Any], source_path: Path,
                   source_sha256: str, opset: int, fp16: bool, dynamic_batch: bool,
                   exporter: str, rewrites: list[str], torch_version: str) -> None:
    """Store the checkpoint metadata and export details in ``proto.metadata_props``.

    ``exporter`` is the exporter's registered name, ``torch_version`` the PyTorch that traced
    the graph; the producer fields and ``doc_string`` of ``proto`` are set too.
    """
    spec = InputSpec.from_dict(meta_dict["input"])
    arch = meta_dict.get("architecture", {})
    arch_text = f"{arch.get('backbone', '?')}+{arch.get('decoder', '?')}"
    name = meta_dict.get("name") or source_path.stem
    doc = {
        "format": ONNX_FORMAT,
        "format_version": ONNX_FORMAT_VERSION,
        "checkpoint": meta_dict,
        "source": {"file": source_path.name, "sha256": source_sha256},
        "export": {
            "opset": opset,
            "tile": spec.tile,
            "precision": "fp16" if fp16 else "fp32",
            "dynamic_batch": dynamic_batch,
            "exporter": exporter,
            "rewrites": rewrites,
            "input": INPUT_NAME,
            "output": OUTPUT_NAME,
            "output_meaning": "landslide probability (softmax over classes, class 1), (N, H, W)",
            "landslide_version": __version__,
            "torch_version": torch_version,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    }
    flat = {
        METADATA_KEY: json.dumps(doc, sort_keys=True),
        "landslide.name": name,
        "landslide.architecture": arch_text,
        "landslide.bands": ",".join(spec.bands),
        "landslide.scale": repr(float(spec.scale)),
        "landslide.mean": json.dumps(list(spec.mean)),
        "landslide.std": json.dumps(list(spec.std)),
        "landslide.tile": str(spec.tile),
        "landslide.threshold": repr(float(meta_dict.get("threshold", 0.5))),
        "landslide.classes": ",".join(meta_dict.get("classes") or []),
        "landslide.version": str(meta_dict.get("version", "")),
        "landslide.source_sha256": source_sha256,
    }
    del proto.metadata_props[:]
    for key, value in flat.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "landslide"
    proto.producer_version = __version__
    proto.doc_string = (f"landslide segmentation model {name} ({arch_text}): {INPUT_NAME} "
                        f"(N, {spec.model_channels}, {spec.tile}, {spec.tile}) normalized "
                        "float32 -> "
                        f"{OUTPUT_NAME} (N, {spec.tile}, {spec.tile}) landslide probability")


def read_onnx_metadata(path: str | Path) -> dict[str, Any]:
    """The ``landslide`` JSON document of an exported file (raises if it is missing)."""
    import onnx

    path = Path(path)
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise LandslideError(f"{path}: not an ONNX model ({first_line(exc)})") from None
    props = {p.key: p.value for p in proto.metadata_props}
    return parse_metadata(props, source=str(path))


def parse_metadata(props: dict[str, str], *, source: str) -> dict[str, Any]:
    """Validate the ``metadata_props`` of a landslide ONNX file; return the JSON document."""
    if METADATA_KEY not in props:
        raise LandslideError(f"{source}: not a landslide ONNX model: metadata missing "
                             "(export one with `landslide export`)")
    try:
        doc = json.loads(props[METADATA_KEY])
    except json.JSONDecodeError:
        raise LandslideError(f"{source}: landslide ONNX metadata is not valid JSON") from None
    if not isinstance(doc, dict) or doc.get("format") != ONNX_FORMAT:
        raise LandslideError(f"{source}: not a landslide ONNX model: metadata has no "
                             f"format={ONNX_FORMAT!r}")
    if str(doc.get("format_version")) != ONNX_FORMAT_VERSION:
        raise LandslideError(f"{source}: landslide ONNX format version "
                             f"{doc.get('format_version')!r} is not supported")
    if not isinstance(doc.get("checkpoint"), dict) or "input" not in doc["checkpoint"]:
        raise LandslideError(f"{source}: landslide ONNX metadata lacks the checkpoint's input "
                             "spec")
    return doc
