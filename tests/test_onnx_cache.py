"""The ONNX Runtime export cache behind `--backend auto` on CPU: hit, invalidation, fallback.

The exporter is replaced by a writer of a tiny ONNX graph (tests/_tiny_onnx.py) so that no test
traces a model; the real export and its parity check are covered by tests/test_export.py.
"""

from __future__ import annotations

import shutil

import pytest
from _tiny_onnx import write_tiny_onnx

import landslide_cli
from landslide_cli import onnx_cache as C
from landslide_cli.errors import LandslideError
from landslide_cli.export_parity import ParityResult
from landslide_cli.safety import sha256_file


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(C.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(C.CPU_BACKEND_ENV, raising=False)
    monkeypatch.setenv("LANDSLIDE_CPU_FLAGS", "avx2")  # no bf16: auto -> ONNX Runtime
    return tmp_path / "cache"


@pytest.fixture
def exports(monkeypatch):
    """Replace ``export_onnx`` by a tiny-graph writer; the list of (checkpoint, out) calls."""
    import landslide_cli.export as export

    calls = []

    class Report:
        def __init__(self, tile):
            self.parity = ParityResult(tolerance=1e-4, random_max_diff=2e-6,
                                       real_max_diff=3e-6, real_sources=["a", "b", "c"])

    def fake(model_ref, out, *, tile, parity_data=None, **kw):
        calls.append((str(model_ref), out))
        assert parity_data is not None and any(parity_data.iterdir())  # the shipped tiles
        write_tiny_onnx(out, tile=tile)
        return Report(tile)

    monkeypatch.setattr(export, "export_onnx", fake)
    return calls


def test_cache_folder_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv(C.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert C.cache_root() == tmp_path / "xdg" / "landslide"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert C.cache_root() == tmp_path / "home" / ".cache" / "landslide"
    monkeypatch.setenv(C.CACHE_ENV, str(tmp_path / "mine"))
    assert C.onnx_cache_dir() == tmp_path / "mine" / "onnx"


def test_auto_on_cpu_exports_once_then_hits(cache, exports, tiny_checkpoint):
    first = C.open_auto_backend(tiny_checkpoint, device="cpu", tile=64)
    assert first.name == "onnx" and first.cache["hit"] is False and len(exports) == 1
    assert first.model_sha256 == sha256_file(tiny_checkpoint)  # the weights named, not the file
    assert first.precision == "fp32" and first.precision_check.passed
    assert first.fixed_tile == 64 and first.precision_note == ""
    second = C.open_auto_backend(tiny_checkpoint, device="cpu", tile=64)
    assert second.cache == {"path": first.cache["path"], "hit": True}
    assert len(exports) == 1  # no second export
    assert second.precision_check.max_prob_diff == pytest.approx(3e-6)  # from the sidecar
    C.open_auto_backend(tiny_checkpoint, device="cpu", tile=96)  # another tile: another file
    assert len(exports) == 2
    # torch stays where asked for, and for --backend torch
    assert C.open_auto_backend(tiny_checkpoint, backend="torch", device="cpu").name == "torch"


def test_version_change_rebuilds_and_removes_the_old_file(cache, exports, tiny_checkpoint,
                                                          monkeypatch):
    old = C.cached_export(tiny_checkpoint, tile=64)
    assert old.path.is_file() and f"-v{landslide_cli.__version__}" in old.path.name
    monkeypatch.setattr(landslide_cli, "__version__", "99.0.0")
    new = C.cached_export(tiny_checkpoint, tile=64)
    assert new.hit is False and len(exports) == 2 and new.path != old.path
    assert "-v99.0.0" in new.path.name
    assert not old.path.exists() and not old.key.sidecar().exists()  # stale files removed
    assert C.cached_export(tiny_checkpoint, tile=64).hit is True


def test_a_different_checkpoint_is_a_different_entry(cache, exports, tiny_checkpoint, tmp_path):
    other = tmp_path / "other.safetensors"
    shutil.copyfile(tiny_checkpoint, other)
    with other.open("ab") as fh:
        fh.write(b" ")  # other bytes, other sha256
    a, b = C.cached_export(tiny_checkpoint, tile=64), C.cached_export(other, tile=64)
    assert a.key.sha256 != b.key.sha256 and a.path != b.path and len(exports) == 2
    assert a.path.is_file() and b.path.is_file()  # the first one is kept


def test_failed_export_parity_falls_back_to_torch_with_a_warning(cache, tiny_checkpoint,
                                                                 monkeypatch):
    import landslide_cli.export as export

    def failing(model_ref, out, **kw):
        raise LandslideError(f"parity check failed: max |p_onnx - p_torch| = 0.3 on real input "
                             f"exceeds 0.0001; {out} was not written")

    monkeypatch.setattr(export, "export_onnx", failing)
    be = C.open_auto_backend(tiny_checkpoint, device="cpu", tile=64)
    assert be.name == "torch" and be.precision == "fp32"
    assert "parity check failed" in be.precision_note
    assert be.precision_note.endswith("running PyTorch fp32")
    assert not list(C.onnx_cache_dir().glob("*.onnx"))


def test_int8_request_without_a_usable_quantization_runs_fp32_onnx(cache, exports,
                                                                   tiny_checkpoint, monkeypatch):
    import landslide_cli.quantize as quantize

    calls = []

    def failing(source, out, **kw):
        calls.append(out)
        raise LandslideError("int8 check failed (made up)")

    monkeypatch.setattr(quantize, "quantize_int8", failing)
    be = C.open_auto_backend(tiny_checkpoint, device="cpu", tile=64, precision="int8")
    assert be.name == "onnx" and be.precision == "fp32"
    assert "int8 unavailable (int8 check failed (made up))" in be.precision_note
    again = C.open_auto_backend(tiny_checkpoint, device="cpu", tile=64, precision="int8")
    assert len(calls) == 1 and "int8 unavailable" in again.precision_note  # remembered
