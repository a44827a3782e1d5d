"""Packaging: the distribution name, the command and ``python -m landslide_cli``, the wheel's
layout, and a package that never reaches into the source checkout at run time.

(``.ci/run`` builds the wheel, installs it into a clean virtual environment and runs the
commands from another folder; these tests check what can be checked without building.)
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import landslide_cli
from landslide_cli.zoo import loading

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "landslide_cli"


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    return subprocess.run(list(args), capture_output=True, text=True, timeout=120,
                          cwd=ROOT.parent, env=env, check=False)


def test_distribution_name_command_and_wheel_layout():
    project = _pyproject()
    # `landslide` on the package index is someone else's slideshow tool
    assert project["project"]["name"] == "landslide-kda"
    assert project["project"]["scripts"] == {"landslide": "landslide_cli.cli.app:run"}
    wheel = project["tool"]["hatch"]["build"]["targets"]["wheel"]
    assert wheel["packages"] == ["landslide_cli"]
    assert wheel["force-include"] == {"models": "landslide_cli/_models"}
    assert (ROOT / "models" / f"{loading.DEFAULT_MODEL}.safetensors").is_file()
    deps = {re.split(r"[<>=!~ ]", d, maxsplit=1)[0] for d in project["project"]["dependencies"]}
    assert {"pyogrio", "geopandas", "pyarrow"} <= deps  # .fgb and .parquet outputs
    assert "pip install landslide-kda" in (ROOT / "README.md").read_text(encoding="utf-8")


def test_version_from_the_command_and_from_python_m():
    expected = f"landslide {landslide_cli.__version__}"
    via_module = _run(sys.executable, "-m", "landslide_cli", "--version")
    assert via_module.returncode == 0, via_module.stderr
    assert via_module.stdout.strip() == expected
    script = Path(sys.executable).with_name("landslide")
    if not script.exists():
        pytest.skip("the landslide console script is not installed beside this Python")
    via_script = _run(str(script), "--version")
    assert via_script.returncode == 0, via_script.stderr
    assert via_script.stdout.strip() == expected


def test_python_m_behaves_like_the_command():
    """Same output and exit code: help, and a one-line error with the error's exit code."""
    script = Path(sys.executable).with_name("landslide")
    if not script.exists():
        pytest.skip("the landslide console script is not installed beside this Python")
    for args in (["--help"], ["predict", "missing.tif", "--out", "x.shp"]):
        a = _run(str(script), *args)
        b = _run(sys.executable, "-m", "landslide_cli", *args)
        assert (a.returncode, a.stdout, a.stderr) == (b.returncode, b.stdout, b.stderr)
    assert a.returncode != 0 and "error" in a.stderr and "Traceback" not in a.stderr
    assert "Usage: landslide" in _run(sys.executable, "-m", "landslide_cli", "--help").stdout


def test_no_run_time_path_into_the_checkout():
    """Nothing finds files through the source tree (``../shared``, ``parents[2]`` ...); the
    one allowed look beside the package is models_dir's checkout fallback, guarded below."""
    offenders = []
    pattern = re.compile(r"\.\./shared|parents\[[2-9]\]|parent\.parent\.parent")
    for path in PACKAGE.rglob("*.py"):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#", 1)[0]
            if pattern.search(code):
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert offenders == []


def test_export_reads_no_real_tiles_unless_told(monkeypatch, tmp_path, tiny_checkpoint):
    """Without --parity-data or LANDSLIDE_SHARED the real-tile check is skipped: an installed
    package does not look for ../shared beside its own files (it exists beside this checkout)."""
    from landslide_cli.export import export_onnx

    monkeypatch.delenv("LANDSLIDE_SHARED", raising=False)
    report = export_onnx(tiny_checkpoint, tmp_path / "m.onnx", tile=64)
    assert report.parity.random_max_diff is not None
    assert report.parity.real_max_diff is None and report.parity.real_sources == []
    assert "LANDSLIDE_SHARED" in report.parity.real_note


def _fake_package(root: Path) -> Path:
    module = root / "landslide_cli" / "zoo" / "loading.py"
    module.parent.mkdir(parents=True)
    module.write_text("")
    return module


def test_models_dir_inside_an_installed_package(monkeypatch, tmp_path):
    module = _fake_package(tmp_path / "site-packages")
    (tmp_path / "site-packages" / "models").mkdir()  # someone else's top-level folder
    (tmp_path / "site-packages" / "models" / "x.safetensors").write_bytes(b"")
    monkeypatch.setattr(loading, "__file__", str(module))
    assert loading.models_dir() == tmp_path / "site-packages" / "landslide_cli" / "_models"
    assert loading.shipped_models() == {}
    bundled = tmp_path / "site-packages" / "landslide_cli" / "_models"
    bundled.mkdir()
    (bundled / "m.safetensors").write_bytes(b"")
    assert loading.shipped_models() == {"m": bundled / "m.safetensors"}


def test_models_dir_of_a_source_checkout(monkeypatch, tmp_path):
    module = _fake_package(tmp_path / "checkout")
    (tmp_path / "checkout" / "pyproject.toml").write_text("")
    (tmp_path / "checkout" / "models").mkdir()
    monkeypatch.setattr(loading, "__file__", str(module))
    assert loading.models_dir() == tmp_path / "checkout" / "models"
