"""The project's ONNX file format: names and the metadata document (no torch, no exporter).

An exported file maps ``image`` ``(N, C, T, T)`` normalized float32 tiles to ``probability``
``(N, T, T)`` float32. Its ``metadata_props`` key ``landslide`` holds a JSON document with
``format`` = :data:`ONNX_FORMAT`, ``format_version`` = :data:`ONNX_FORMAT_VERSION` and the
checkpoint's metadata under ``checkpoint`` (its ``input`` spec included). Reading it needs only
the ``onnx`` package, so ONNX Runtime deployments load without PyTorch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from landslide_cli.errors import LandslideError
from landslide_cli.safety import first_line

#: value of ``format`` inside the ``landslide`` metadata JSON
ONNX_FORMAT = "landslide-onnx"
ONNX_FORMAT_VERSION = "1"
#: the ``metadata_props`` key holding the JSON document
METADATA_KEY = "landslide"
INPUT_NAME = "image"
OUTPUT_NAME = "probability"


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
