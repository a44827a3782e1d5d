"""int8 static quantization (QDQ) of an exported model: checked against fp32 on real tiles."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from _tiny_onnx import write_tiny_onnx

from landslide_cli.errors import LandslideError
from landslide_cli.onnx_backend import OnnxBackend
from landslide_cli.precision import parity_tiles
from landslide_cli.preprocess import InputSpec
from landslide_cli.quantize import INT8_MIN_IOU, check_quantize, quantize_int8

VNNI = frozenset({"avx2", "avx512_vnni"})


def test_int8_masks_match_fp32_on_the_shipped_tiles(tmp_path):
    src = write_tiny_onnx(tmp_path / "fp32.onnx", tile=64)
    out = tmp_path / "int8.onnx"
    report = quantize_int8(src, out, flags=frozenset({"avx2"}))
    assert out.is_file() and report.reduce_range  # no VNNI: 7-bit weights
    assert report.check.passed and report.check.mask_iou >= INT8_MIN_IOU
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    # an independent IoU from the two models' own outputs on the same tiles
    fp32, int8 = OnnxBackend(src, device="cpu"), OnnxBackend(out, device="cpu")
    assert int8.precision == "int8" and fp32.precision == "fp32"
    tiles = parity_tiles(InputSpec(), 64)
    a, b = fp32.predict(tiles) >= 0.5, int8.predict(tiles) >= 0.5
    assert 0.05 < a.mean() < 0.95  # the masks are not trivial
    iou = (a & b).sum() / (a | b).sum()
    assert iou == pytest.approx(report.check.mask_iou, abs=1e-6) and iou >= INT8_MIN_IOU
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    doc = json.loads(props["landslide"])
    assert doc["export"]["precision"] == "int8" and doc["quantization"]["format"] == "QDQ"
    assert int8.threshold == fp32.threshold and int8.spec.bands == fp32.spec.bands


def test_a_failed_check_writes_nothing_and_bad_sources_are_refused(tmp_path):
    src = write_tiny_onnx(tmp_path / "fp32.onnx", tile=64)
    out = tmp_path / "int8.onnx"
    with pytest.raises(LandslideError, match="int8 check failed"):
        quantize_int8(src, out, min_iou=1.01, flags=VNNI)  # only a perfect mask would pass
    assert not out.exists() and not list(tmp_path.glob(".int8*"))
    report = quantize_int8(src, out, flags=VNNI)
    assert report.reduce_range is False
    with pytest.raises(LandslideError, match="exists"):
        quantize_int8(src, out)
    with pytest.raises(LandslideError, match="needs an fp32 export, this file is int8"):
        quantize_int8(out, tmp_path / "again.onnx")
    with pytest.raises(LandslideError, match="calibration data not found"):
        quantize_int8(src, tmp_path / "c.onnx", calibration_data=tmp_path / "missing")
    assert check_quantize("int8") == "int8" and check_quantize(None) is None
    with pytest.raises(LandslideError, match="only int8"):
        check_quantize("int4")


def test_onnx_file_with_precision_int8_uses_the_cached_quantization(tmp_path, monkeypatch):
    from landslide_cli.backends import open_backend

    monkeypatch.setenv("LANDSLIDE_CACHE", str(tmp_path / "cache"))
    src = write_tiny_onnx(tmp_path / "fp32.onnx", tile=64)
    be = open_backend(src, device="cpu", precision="int8")
    assert be.precision == "int8" and be.cache["hit"] is False and be.precision_check.passed
    assert be.model_sha256 == OnnxBackend(src, device="cpu").model_sha256
    again = open_backend(src, device="cpu", precision="int8")
    assert again.cache["hit"] is True
    tiles = np.zeros((2, 3, 64, 64), np.float32)
    assert again.predict(tiles).shape == (2, 64, 64)
    with pytest.raises(LandslideError, match="bf16 runs on the torch backend"):
        open_backend(src, device="cpu", precision="bf16")


def test_export_quantize_int8_cli(run_cli, tmp_path, monkeypatch):
    import landslide_cli.export as export

    class Report:
        def __init__(self, path):
            self.path = path

        def to_dict(self):
            return {"path": str(self.path), "precision": "fp32"}

    def fake(model_ref, out, *, tile=None, **kw):
        write_tiny_onnx(out, tile=64)
        return Report(out)

    monkeypatch.setattr(export, "export_onnx", fake)
    ckpt = tmp_path / "m.safetensors"
    ckpt.write_bytes(b"not read by the stand-in exporter")
    out = tmp_path / "m_int8.onnx"
    res = run_cli("export", ckpt, "--out", out, "--quantize", "int8", "--json")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["quantize"]["check"]["passed"] is True and doc["quantize"]["precision"] == "int8"
    assert OnnxBackend(out, device="cpu").precision == "int8"
    bad = run_cli("export", ckpt, "--out", tmp_path / "x.onnx", "--quantize", "int4")
    assert bad.exit_code != 0 and "only int8" in bad.stderr
    both = run_cli("export", ckpt, "--out", tmp_path / "y.onnx", "--quantize", "int8", "--fp16")
    assert both.exit_code != 0 and "exclude each other" in both.stderr
    assert not (tmp_path / "x.onnx").exists() and not (tmp_path / "y.onnx").exists()
