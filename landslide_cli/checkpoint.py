"""The project's checkpoint format: one ``.safetensors`` file with JSON metadata in its header.

Layout of the safetensors ``__metadata__`` (string -> string):

* ``format`` = ``"landslide-checkpoint"``, ``format_version`` = ``"1"``
* ``meta`` = JSON object with at least ``kind`` (``"segmenter"`` or ``"backbone"``) and
  ``architecture``; segmenters also carry ``input`` (an
  :class:`~landslide_cli.preprocess.InputSpec`), ``threshold`` and ``classes``. Free-form
  ``training``, ``metrics`` and ``name`` keys describe where the weights came from.

Loading never unpickles anything: safetensors holds raw tensors only, and the metadata is JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from landslide_cli import __version__
from landslide_cli.errors import CheckpointError, LandslideError
from landslide_cli.preprocess import InputSpec
from landslide_cli.safety import atomic_write, first_line
from landslide_cli.safety import sha256_file as file_sha256

__all__ = ["CheckpointMeta", "atomic_write", "file_sha256", "load_checkpoint", "read_metadata",
           "save_checkpoint"]

if TYPE_CHECKING:
    from landslide_cli.zoo.spec import Architecture

FORMAT = "landslide-checkpoint"
FORMAT_VERSION = "1"
KINDS = ("segmenter", "backbone")
CLASSES = ["background", "landslide"]

@dataclass
class CheckpointMeta:
    """Validated checkpoint metadata."""

    kind: str
    architecture: dict[str, Any]
    input: dict[str, Any] = field(default_factory=lambda: InputSpec().to_dict())
    threshold: float = 0.5
    classes: list[str] = field(default_factory=lambda: list(CLASSES))
    name: str = ""
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    version: str = __version__
    created: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def arch(self) -> Architecture:
        from landslide_cli.zoo.spec import Architecture  # the zoo loads only when needed

        return Architecture.from_dict(self.architecture)

    @property
    def input_spec(self) -> InputSpec:
        return InputSpec.from_dict(self.input)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "architecture": self.architecture,
            "input": self.input,
            "threshold": self.threshold,
            "classes": self.classes,
            "training": self.training,
            "metrics": self.metrics,
            "version": self.version,
            "created": self.created,
            "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "checkpoint") -> CheckpointMeta:
        if not isinstance(data, dict):
            raise CheckpointError(f"{source}: metadata is not a JSON object")
        kind = data.get("kind")
        if kind not in KINDS:
            raise CheckpointError(f"{source}: unknown checkpoint kind {kind!r}")
        arch = data.get("architecture")
        if not isinstance(arch, dict) or "backbone" not in arch:
            raise CheckpointError(f"{source}: metadata lacks an architecture with a backbone")
        try:
            meta = cls(
                kind=kind,
                architecture=dict(arch),
                input=dict(data.get("input") or InputSpec().to_dict()),
                threshold=float(data.get("threshold", 0.5)),
                classes=list(data.get("classes") or CLASSES),
                name=str(data.get("name", "")),
                training=dict(data.get("training") or {}),
                metrics=dict(data.get("metrics") or {}),
                version=str(data.get("version", "")),
                created=str(data.get("created", "")),
                extra=dict(data.get("extra") or {}),
            )
            meta.input_spec  # noqa: B018 - validates the input spec
            meta.arch  # noqa: B018
        except (TypeError, ValueError, LandslideError) as exc:
            raise CheckpointError(f"{source}: invalid metadata ({exc})") from None
        if not 0.0 <= meta.threshold <= 1.0:
            raise CheckpointError(f"{source}: threshold {meta.threshold} is outside [0, 1]")
        return meta


def save_checkpoint(
    path: str | Path,
    state_dict: dict[str, torch.Tensor],
    meta: CheckpointMeta | dict[str, Any],
) -> Path:
    """Write ``state_dict`` and ``meta`` atomically to ``path`` (a ``.safetensors`` file)."""
    from safetensors.torch import save_file

    path = Path(path)
    if not path.parent.is_dir():
        raise CheckpointError(f"cannot write {path}: folder {path.parent} does not exist")
    if isinstance(meta, dict):
        meta = CheckpointMeta.from_dict(meta, source=str(path))
    if not meta.created:
        meta.created = datetime.now(UTC).isoformat(timespec="seconds")
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "meta": json.dumps(meta.to_dict(), sort_keys=True),
    }
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=header), suffix=".tmp")
    return path


def read_metadata(path: str | Path) -> CheckpointMeta:
    """Read and validate only the metadata (cheap: the tensors are not loaded)."""
    return _open(Path(path))[0]


def load_checkpoint(path: str | Path) -> tuple[CheckpointMeta, dict[str, torch.Tensor]]:
    """Return ``(meta, state_dict)``; any problem is a one-line :class:`CheckpointError`."""
    path = Path(path)
    meta, handle = _open(path)
    try:
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises several exception types on corrupt data
        raise CheckpointError(f"{path}: corrupt checkpoint ({first_line(exc)})") from None
    return meta, tensors


#: first bytes of a pickle with protocol 2..5 (``torch.save(..., _use_new_zipfile_serialization=
#: False)`` and plain ``pickle.dump``); ``torch.save`` itself writes a zip holding ``data.pkl``
_PICKLE_PROTOCOLS = range(2, 6)
_ZIP_MAGIC = b"PK\x03\x04"


def sniff_format(path: Path) -> str | None:
    """``"pickle"``, ``"onnx"`` or ``None`` (unknown) for a file that is not a safetensors file.

    Only meant for files safetensors already refused: a valid safetensors header can start
    with the same two bytes as a pickle. Nothing is unpickled; ONNX is recognised by the
    ``.onnx`` suffix or the first protobuf field (``ir_version``) and then parsed by ``onnx``.
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError:
        return None
    if head.startswith(_ZIP_MAGIC):
        import zipfile

        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError, ValueError):
            return None
        return "pickle" if any(n.endswith(".pkl") for n in names) else None
    if len(head) >= 2 and head[0] == 0x80 and head[1] in _PICKLE_PROTOCOLS:
        return "pickle"
    if path.suffix.lower() == ".onnx" or head[:1] == b"\x08":
        return "onnx" if _parses_as_onnx(path) else None
    return None


def _parses_as_onnx(path: Path) -> bool:
    try:
        import onnx

        model = onnx.load_model(str(path), load_external_data=False)
    except Exception:  # not protobuf, not ONNX, or onnx missing
        return False
    return model.ir_version > 0 and len(model.graph.node) > 0


def foreign_format_message(path: Path) -> str | None:
    """A one-line explanation for a model file of another format, or ``None``."""
    kind = sniff_format(path)
    if kind == "pickle":
        return (f"{path}: is a pickle file (e.g. a .pt/.pth from torch.save), not a landslide "
                "checkpoint; pickle checkpoints are refused because loading one can run "
                "arbitrary code. Convert it in code you trust: torch.load(it, weights_only=True), "
                "then write the state dict with landslide_cli.checkpoint.save_checkpoint")
    if kind == "onnx":
        auto = " (or --backend auto)" if path.suffix.lower() == ".onnx" else ""
        return (f"{path}: is an ONNX model, not a landslide checkpoint; predict and eval run it "
                f"with --backend onnx{auto}")
    return None


def _open(path: Path) -> tuple[CheckpointMeta, Any]:
    from safetensors import safe_open

    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint is not a file: {path}")
    try:
        handle = safe_open(str(path), framework="pt")
        header = handle.metadata() or {}
    except Exception as exc:
        raise CheckpointError(
            foreign_format_message(path)
            or f"{path}: not a landslide checkpoint (unreadable safetensors: {first_line(exc)})"
        ) from None
    if header.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not a landslide checkpoint (safetensors file without landslide metadata)"
        )
    if header.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {header.get('format_version')!r} is not supported"
        )
    try:
        data = json.loads(header.get("meta", ""))
    except json.JSONDecodeError:
        raise CheckpointError(f"{path}: checkpoint metadata is not valid JSON") from None
    return CheckpointMeta.from_dict(data, source=str(path)), handle
