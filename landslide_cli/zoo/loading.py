"""Resolve a model reference (checkpoint path, shipped model name, default) to a ready model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from landslide_cli.checkpoint import CheckpointMeta, file_sha256, load_checkpoint
from landslide_cli.errors import CheckpointError, LandslideError
from landslide_cli.zoo.segmenter import Segmenter, build_segmenter

#: Name of the embedded default model (``models/<name>.safetensors``).
DEFAULT_MODEL = "landslide-pvtb0-dcf-v3"


def models_dir() -> Path:
    """Folder of shipped models: ``landslide_cli/_models`` inside the wheel, or ``models/`` of
    the source checkout the package is imported from (an editable install or ``PYTHONPATH``).

    An installed package never looks outside itself: the checkout's folder is used only when
    the package's parent folder is a source tree (it has the project's ``pyproject.toml``).
    """
    package = Path(__file__).resolve().parents[1]
    bundled = package / "_models"
    if bundled.is_dir():
        return bundled
    checkout = package.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "models").is_dir():
        return checkout / "models"
    return bundled  # absent: no shipped models in this installation


def shipped_models() -> dict[str, Path]:
    folder = models_dir()
    if not folder.is_dir():
        return {}
    return {p.name.removesuffix(".safetensors"): p for p in sorted(folder.glob("*.safetensors"))}


def resolve_model_path(ref: str | Path | None) -> Path:
    """A checkpoint path for ``ref``: an existing file, a shipped model name, or the default."""
    if ref is None or str(ref) == "" or str(ref) == "default":
        shipped = shipped_models()
        if DEFAULT_MODEL in shipped:
            return shipped[DEFAULT_MODEL]
        raise LandslideError(
            "no default model is bundled with this installation; pass --model PATH "
            "(a checkpoint from `landslide train segment`)"
        )
    path = Path(ref).expanduser()
    if path.exists():
        return path
    shipped = shipped_models()
    if str(ref) in shipped:
        return shipped[str(ref)]
    known = ", ".join(shipped) or "none bundled"
    raise LandslideError(f"model not found: {ref} (not a file; shipped models: {known})")


@dataclass
class LoadedModel:
    model: Segmenter
    meta: CheckpointMeta
    path: Path
    sha256: str

    @property
    def name(self) -> str:
        return self.meta.name or self.path.stem


def segmenter_from_checkpoint(meta: CheckpointMeta, state: dict[str, torch.Tensor],
                              source: str = "checkpoint", *, native: bool = True) -> Segmenter:
    """The checkpoint's segmenter with its weights, in eval mode.

    ``native`` (the default, for inference) builds the backbone's torch-only twin where it has
    one (PVTv2: no timm/torchvision import, same keys and outputs); ``False`` builds the
    training modules (timm).
    """
    if meta.kind != "segmenter":
        raise CheckpointError(
            f"{source}: is a {meta.kind} checkpoint, not a segmentation model "
            "(use it with `landslide train segment --init`)"
        )
    try:
        model = build_segmenter(meta.arch, native=native)
    except LandslideError as exc:
        raise CheckpointError(f"{source}: {exc}") from None
    except (TypeError, ValueError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise CheckpointError(f"{source}: invalid architecture {meta.architecture} ({first})"
                              ) from None
    arch, spec = model.arch, meta.input_spec
    if arch.input_channels != spec.model_channels:
        raise CheckpointError(
            f"{source}: the architecture takes {arch.input_channels} input channel(s) but the "
            f"input spec gives {spec.model_channels} ({', '.join(spec.bands + spec.derived)})")
    if arch.fusion and (arch.fusion["channel"] - spec.num_bands >= len(spec.derived) or
                        spec.derived[arch.fusion["channel"] - spec.num_bands]
                        != arch.fusion["index"]):
        raise CheckpointError(f"{source}: fusion channel {arch.fusion['channel']} is not the "
                              f"input spec's derived {arch.fusion['index']!r} channel")
    expected = model.state_dict()
    for key, tensor in state.items():
        if key in expected and tuple(expected[key].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"{source}: weights do not match {meta.arch.spec}: {key} has shape "
                f"{tuple(tensor.shape)}, expected {tuple(expected[key].shape)}"
            )
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise CheckpointError(f"{source}: weights do not match {meta.arch.spec} ({first})"
                              ) from None
    if missing or unexpected:
        what = (f"{len(missing)} missing (e.g. {missing[0]})" if missing
                else f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        raise CheckpointError(f"{source}: weights do not match {meta.arch.spec}: {what} tensors")
    return model.eval()


def load_model(ref: str | Path | None = None, *, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a segmentation checkpoint (``None``: the embedded default model) for inference."""
    path = resolve_model_path(ref)
    meta, state = load_checkpoint(path)
    model = segmenter_from_checkpoint(meta, state, source=str(path)).to(device)
    return LoadedModel(model=model, meta=meta, path=path, sha256=file_sha256(path))
