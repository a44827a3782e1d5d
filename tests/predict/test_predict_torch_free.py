"""``landslide predict --backend onnx model.onnx`` never imports torch (a fresh interpreter)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent

SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from _tiny_onnx import write_rgb_scene, write_tiny_onnx
from pathlib import Path
tmp = Path({tmp!r})
model = write_tiny_onnx(tmp / "tiny.onnx", tile=64)
scene = write_rgb_scene(tmp / "scene.tif")
from landslide_cli.cli.app import main
code = main(["predict", str(scene), "--out", str(tmp / "out.gpkg"), "--model", str(model),
             "--backend", "onnx", "--device", "cpu", "--json", "--quiet"])
print("EXIT", code)
print("TORCH", "torch" in sys.modules)
"""


def test_onnx_predict_never_imports_torch(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LANDSLIDE_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-c", SCRIPT.format(tests=str(TESTS),
                                                               tmp=str(tmp_path))],
                          capture_output=True, text=True, timeout=300, env=env, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert "EXIT 0" in lines, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "TORCH False" in lines, "torch was imported by an ONNX Runtime predict"
    summary = json.loads(proc.stdout[:proc.stdout.index("EXIT")])
    assert summary["backend"] == "onnx" and summary["precision"] == "fp32"
    assert summary["tiles"] >= 2 and (tmp_path / "out.gpkg").is_file()
