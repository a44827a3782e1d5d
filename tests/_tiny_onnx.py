"""A tiny landslide ONNX model built with ``onnx.helper`` (no torch): 3x3 convolution to two
classes, softmax, class 1, with the landslide metadata of ``landslide export``. For tests of
the ONNX Runtime paths (cache, int8, torch-free predict) that must not trace a real model."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_tiny_onnx(path: Path, *, tile: int = 64, seed: int = 0, name: str = "tiny-onnx",
                    threshold: float = 0.5, source_sha256: str = "0" * 64) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from landslide_cli.onnx_format import INPUT_NAME, OUTPUT_NAME, embed_metadata
    from landslide_cli.preprocess import InputSpec

    rng = np.random.default_rng(seed)
    weight = (rng.standard_normal((2, 3, 3, 3)) * 0.4).astype(np.float32)
    weight[1, :, 1, 1] += np.array([1.5, -0.8, -0.6], dtype=np.float32)  # reddish = landslide
    bias = np.array([0.0, 0.2], dtype=np.float32)
    nodes = [
        helper.make_node("Conv", [INPUT_NAME, "w", "b"], ["logits"], pads=[1, 1, 1, 1]),
        helper.make_node("Softmax", ["logits"], ["soft"], axis=1),
        helper.make_node("Gather", ["soft", "one"], [OUTPUT_NAME], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", 3, tile, tile])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", tile, tile])],
        initializer=[numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b"),
                     numpy_helper.from_array(np.array(1, dtype=np.int64), "one")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    spec = InputSpec(tile=tile)
    meta = {"kind": "segmenter", "name": name, "input": spec.to_dict(), "threshold": threshold,
            "classes": ["background", "landslide"],
            "architecture": {"backbone": "conv3x3", "decoder": "none"}}
    embed_metadata(proto, meta_dict=meta, source_path=path.with_suffix(".safetensors"),
                   source_sha256=source_sha256, opset=17, fp16=False, dynamic_batch=True,
                   exporter="onnx.helper", rewrites=[], torch_version="none")
    onnx.checker.check_model(proto)
    path.write_bytes(proto.SerializeToString())
    return path


def write_rgb_scene(path: Path, *, height: int = 96, width: int = 80, seed: int = 0) -> Path:
    """A small georeferenced uint8 RGB GeoTIFF of smooth random texture."""
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (3, height // 8 + 1, width // 8 + 1)).astype(np.float32)
    data = np.repeat(np.repeat(base, 8, axis=1), 8, axis=2)[:, :height, :width]
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=3,
                       dtype="uint8", crs="EPSG:32633",
                       transform=from_origin(500000, 4000000, 1.0, 1.0)) as dst:
        dst.write(data.astype(np.uint8))
    return path
