"""``--backend auto`` on CPU: a checkpoint runs on ONNX Runtime through a cached export.

The first run exports the checkpoint once with :func:`landslide_cli.export.export_onnx` (parity
checked against PyTorch on random tiles and on the parity tiles shipped in the package) into the
user cache folder; later runs open the cached file directly. The cache key is the checkpoint's
sha256, the tile, the opset, the precision and the project version, so a new release (or a new
checkpoint, tile or precision) builds a new file, and the files a release leaves behind for the
same checkpoint are removed. Files are written atomically; a sidecar ``.json`` keeps the export's
parity result (and records a failed int8 check, so it is not retried on every run).

Cache folder: ``$LANDSLIDE_CACHE``, else ``$XDG_CACHE_HOME/landslide``, else
``~/.cache/landslide``; the exports live in its ``onnx/`` sub-folder.

What ``auto`` picks on a CPU (:func:`open_auto_backend`): torch under bf16 autocast where the
CPU has native bfloat16 and the precision check passes (about 5x fp32 on AMX CPUs, far ahead of
ONNX Runtime fp32), else ONNX Runtime (1.2-2x PyTorch eager in fp32, docs/benchmarks.md), and
PyTorch when the export cannot be made (with a one-line warning). CUDA stays on PyTorch.
``LANDSLIDE_CPU_BACKEND=torch`` makes ``auto`` keep PyTorch on CPUs too.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from landslide_cli.backends import AUTO, Backend, check_backend, open_backend
from landslide_cli.errors import LandslideError
from landslide_cli.precision import (
    BF16,
    FP32,
    INT8,
    PrecisionCheck,
    check_precision,
    cpu_has_bf16,
    parity_folder,
)
from landslide_cli.reporting import Reporter, as_reporter
from landslide_cli.safety import atomic_write, first_line, sha256_file

CACHE_ENV = "LANDSLIDE_CACHE"
#: ``onnx`` (default) or ``torch``: what ``--backend auto`` runs a checkpoint with on a CPU
CPU_BACKEND_ENV = "LANDSLIDE_CPU_BACKEND"
OPSET = 17


def cache_root() -> Path:
    """``$LANDSLIDE_CACHE``, else ``$XDG_CACHE_HOME/landslide``, else ``~/.cache/landslide``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "landslide"


def onnx_cache_dir() -> Path:
    return cache_root() / "onnx"


def _version() -> str:
    import landslide_cli

    return str(landslide_cli.__version__)


@dataclass(frozen=True)
class CacheKey:
    """What a cached export depends on."""

    sha256: str  #: of the source (checkpoint, or the fp32 ``.onnx`` file being quantized)
    tile: int
    opset: int
    precision: str
    version: str

    @property
    def stem(self) -> str:
        return f"{self.sha256[:24]}-t{self.tile}-op{self.opset}-{self.precision}-v{self.version}"

    def path(self) -> Path:
        return onnx_cache_dir() / f"{self.stem}.onnx"

    def sidecar(self) -> Path:
        return onnx_cache_dir() / f"{self.stem}.json"


@dataclass
class CachedExport:
    """A cached file and how it came to be: ``hit`` (found, nothing exported) and the check
    (:class:`~landslide_cli.precision.PrecisionCheck`) recorded when it was made."""

    path: Path
    key: CacheKey
    hit: bool
    check: PrecisionCheck | None


def _read_sidecar(key: CacheKey) -> dict[str, Any]:
    try:
        data = json.loads(key.sidecar().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_sidecar(key: CacheKey, doc: dict[str, Any]) -> None:
    text = json.dumps(doc, indent=2, sort_keys=True) + "\n"
    atomic_write(key.sidecar(), lambda tmp: tmp.write_text(text, encoding="utf-8"),
                 suffix=".json.tmp")


def _check_of(doc: dict[str, Any]) -> PrecisionCheck | None:
    data = doc.get("check")
    if not isinstance(data, dict):
        return None
    try:
        return PrecisionCheck(**data)
    except TypeError:
        return None


def remove_stale(key: CacheKey) -> list[Path]:
    """Remove the cached files of ``key``'s source made by another project version."""
    removed = []
    prefix = key.stem.rsplit("-v", 1)[0] + "-v"
    folder = onnx_cache_dir()
    for path in folder.glob(f"{prefix}*"):
        if path.name.startswith(key.stem + "."):
            continue
        try:
            path.unlink()
            removed.append(path)
        except OSError:
            pass
    return removed


def _mkdir() -> None:
    try:
        onnx_cache_dir().mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LandslideError(f"cannot create the cache folder {onnx_cache_dir()}: "
                             f"{exc.strerror or first_line(exc)} (set {CACHE_ENV})") from None


def cached_export(checkpoint: str | os.PathLike[str], *, sha256: str | None = None,
                  tile: int, opset: int = OPSET, reporter: Reporter | None = None
                  ) -> CachedExport:
    """The fp32 ONNX export of ``checkpoint`` at ``tile`` from the cache, made (and parity
    checked) on a miss; raises :class:`LandslideError` when the export or its check fails."""
    from landslide_cli.safety import remove_stale_temps

    checkpoint = Path(checkpoint)
    key = CacheKey(sha256 or sha256_file(checkpoint), int(tile), int(opset), FP32, _version())
    path = key.path()
    if path.is_file():
        return CachedExport(path, key, True, _check_of(_read_sidecar(key)))
    _mkdir()
    remove_stale_temps(path)
    from landslide_cli.export import export_onnx

    as_reporter(reporter).info(f"exporting {checkpoint.name} to ONNX once (cached in "
                               f"{onnx_cache_dir()})")
    report = export_onnx(checkpoint, path, opset=opset, tile=tile, overwrite=True,
                         device="cpu", parity_data=parity_folder())
    parity = report.parity
    check = None
    if parity is not None:
        worst, _ = parity.worst()
        check = PrecisionCheck("onnx-fp32", parity.passed, max_prob_diff=worst,
                               tiles=len(parity.real_sources), tolerance=parity.tolerance,
                               note="ONNX Runtime vs PyTorch fp32 at export (random and "
                                    "shipped tiles)")
    _write_sidecar(key, {"source": str(checkpoint), "sha256": key.sha256,
                         "check": check.to_dict() if check else None})
    remove_stale(key)
    return CachedExport(path, key, False, check)


def cached_int8(fp32_onnx: str | os.PathLike[str], *, sha256: str | None = None,
                tile: int, opset: int = OPSET, reporter: Reporter | None = None
                ) -> CachedExport:
    """The int8 static quantization of the fp32 file ``fp32_onnx`` from the cache, made and
    checked (mask IoU vs fp32 on the parity tiles) on a miss. A failed check is remembered
    (sidecar) and raised again without re-quantizing."""
    from landslide_cli.quantize import quantize_int8

    source = Path(fp32_onnx)
    key = CacheKey(sha256 or sha256_file(source), int(tile), int(opset), INT8, _version())
    path = key.path()
    doc = _read_sidecar(key)
    if doc.get("failed"):
        raise LandslideError(str(doc["failed"]))
    if path.is_file():
        return CachedExport(path, key, True, _check_of(doc))
    _mkdir()
    as_reporter(reporter).info(f"quantizing {source.name} to int8 once (cached in "
                               f"{onnx_cache_dir()})")
    try:
        report = quantize_int8(source, path, overwrite=True)
    except LandslideError as exc:
        _write_sidecar(key, {"source": str(source), "sha256": key.sha256,
                             "failed": first_line(exc)})
        raise
    _write_sidecar(key, {"source": str(source), "sha256": key.sha256,
                         "check": report.check.to_dict()})
    remove_stale(key)
    return CachedExport(path, key, False, report.check)


# ------------------------------------------------------------------------------ backends


def _device_is_cpu(device: str) -> bool:
    name = (device or "auto").strip().lower()
    if name == "cpu":
        return True
    if name != "auto":
        return False
    import torch

    return not torch.cuda.is_available()


def _open_onnx(path: Path, *, threads: int | None = None) -> Any:
    from landslide_cli.onnx_backend import OnnxBackend

    return OnnxBackend(path, device="cpu", threads=threads)


def _torch(model_ref: Any, device: str, precision: str, note: str = "") -> Backend:
    be = open_backend(model_ref, backend="torch", device=device, precision=precision)
    if note:
        previous = getattr(be, "precision_note", "")
        be.precision_note = "; ".join(n for n in (note, previous) if n)  # type: ignore[attr-defined]
    return be


def open_auto_backend(model_ref: Any = None, *, backend: str = "auto", device: str = "auto",
                      precision: str = "auto", tile: int | None = None,
                      reporter: Reporter | None = None) -> Backend:
    """Open ``model_ref`` for ``predict``: like :func:`~landslide_cli.backends.open_backend`,
    except that ``auto`` on a CPU runs a checkpoint on ONNX Runtime through the cache (at
    ``tile``, default the checkpoint's), or on torch bf16 where the CPU has it (see the module
    docstring). A warning for the caller is left in the backend's ``precision_note``."""
    precision = check_precision(precision)
    backend = check_backend(backend)
    text = str(model_ref or "").strip().lower() if not hasattr(model_ref, "predict") else ""
    if (backend != AUTO or text.endswith(".onnx") or text.startswith("baseline:")
            or not _device_is_cpu(device)):
        return open_backend(model_ref, backend=backend, device=device, precision=precision)
    wants_torch = os.environ.get(CPU_BACKEND_ENV, "onnx").strip().lower() == "torch"
    if precision != INT8 and (wants_torch or precision == BF16):
        return open_backend(model_ref, backend="torch", device=device, precision=precision)
    if precision == AUTO and cpu_has_bf16():
        be = open_backend(model_ref, backend="torch", device=device, precision=precision)
        if getattr(be, "precision", FP32) == BF16:
            return be
        # bf16 failed its check: ONNX Runtime fp32 beats PyTorch fp32 on CPUs
        note = getattr(be, "precision_note", "")
        del be
        return _cached_backend(model_ref, device, FP32, tile, reporter, note)
    return _cached_backend(model_ref, device, precision, tile, reporter, "")


def _cached_backend(model_ref: Any, device: str, precision: str, tile: int | None,
                    reporter: Reporter | None, note: str) -> Backend:
    """ONNX Runtime on the cached export of the checkpoint ``model_ref`` (int8: its cached
    quantization, fp32 ONNX Runtime when that fails); PyTorch fp32 when no export can be made."""
    from landslide_cli.checkpoint import read_metadata
    from landslide_cli.zoo.loading import resolve_model_path

    try:
        path = resolve_model_path(model_ref)
        meta = read_metadata(path)
    except LandslideError:
        return _torch(model_ref, device, FP32)  # the torch backend reports it properly
    if meta.kind != "segmenter":
        return _torch(model_ref, device, FP32)
    sha = sha256_file(path)
    size = int(tile or meta.input_spec.tile)
    notes = [note] if note else []
    try:
        fp32 = cached_export(path, sha256=sha, tile=size, reporter=reporter)
        chosen = fp32
        if precision == INT8:
            try:
                chosen = cached_int8(fp32.path, tile=size, reporter=reporter)
            except LandslideError as exc:
                notes.append(f"int8 unavailable ({first_line(exc)}); running ONNX Runtime "
                             "fp32")
        be = _open_onnx(chosen.path)
    except LandslideError as exc:
        notes.append(f"ONNX Runtime export of {path.name} unavailable ({first_line(exc)}); "
                     "running PyTorch fp32")
        return _torch(path, device, FP32, "; ".join(notes))
    be.model_sha256 = sha  # the weights the user named, as on the torch backend
    be.source_path = path
    be.cache = {"path": str(chosen.path), "hit": chosen.hit}
    be.precision_check = chosen.check
    be.precision_note = "; ".join(notes)
    return be


def open_onnx_file(model_ref: Any, *, device: str = "auto", precision: str = "auto",
                   **options: Any) -> Backend:
    """An ``.onnx`` file on ONNX Runtime in ``precision``: ``auto``/``fp32`` as stored, ``int8``
    its cached quantization (fp32 with a warning when quantization fails); ``bf16`` is refused
    (ONNX Runtime's CPU provider has no bfloat16 path)."""
    from landslide_cli.onnx_backend import OnnxBackend

    precision = check_precision(precision)
    if precision == BF16:
        raise LandslideError("--precision bf16 runs on the torch backend (ONNX Runtime's CPU "
                             "provider has no bfloat16 path): use the .safetensors checkpoint "
                             "with --backend torch or auto")
    base = OnnxBackend(model_ref, device=device, **options)
    if precision != INT8 or base.precision == INT8:
        return base
    if not str(base.device).startswith("CPU"):
        raise LandslideError("--precision int8 runs on ONNX Runtime's CPU provider; use "
                             "--device cpu")
    try:
        cached = cached_int8(base.model_path, sha256=base.model_sha256, tile=base.fixed_tile)
    except LandslideError as exc:
        base.precision_note = (f"int8 unavailable ({first_line(exc)}); running "  # type: ignore[attr-defined]
                               f"{base.precision}")
        return base
    be = OnnxBackend(cached.path, device=device, **options)
    be.model_sha256 = base.model_sha256
    be.precision_check = cached.check
    be.cache = {"path": str(cached.path), "hit": cached.hit}  # type: ignore[attr-defined]
    return be
