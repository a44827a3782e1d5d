"""float16 conversion of an exported ONNX graph: weights and activations in float16, the
``image`` input and ``probability`` output kept float32 (casts inside the graph)."""

from __future__ import annotations

import logging
import warnings
from typing import Any

from landslide_cli.errors import LandslideError


def to_float16(proto: Any) -> Any:
    """float32 -> float16 weights and activations, float32 inputs/outputs (casts inside)."""
    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError as exc:  # pragma: no cover - depends on the onnxruntime build
        raise LandslideError(
            f"--fp16 needs onnxruntime.transformers.float16, which is unavailable ({exc})"
        ) from None

    quiet = logging.getLogger("onnxruntime.transformers.float16")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            half = convert_float_to_float16(proto, keep_io_types=True)
    finally:
        quiet.setLevel(level)
    toposort(half.graph)  # the helper appends the input casts at the end of the node list
    return half


def toposort(graph: Any) -> None:
    """Reorder ``graph.node`` topologically (stable), as onnx.checker requires."""
    available = {v.name for v in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        rest = []
        for node in pending:
            if all(name in available for name in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise LandslideError("exported ONNX graph has a cycle or an undefined input")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)
