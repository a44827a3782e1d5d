"""Late fusion of a segmentation model with a colour index (``landslide fuse``).

A network trained on a few sources ranks pixels of a new sensor well but its probabilities
there are often shifted (docs/benchmarks.md, "Generalization"), while a colour index such as
``baseline:rg`` measures a physical property (bare soil is redder than vegetation) that
transfers across sensors. :func:`fuse_checkpoint` writes a checkpoint whose landslide
probability is ``(1 - w) * p_model + w * index``: the same weights, the index appended to the
input by the InputSpec's ``derived`` channels (computed from the raw bands, so per-tile
normalization cannot remove the absolute colour it needs) and mixed in by the
:class:`~landslide_cli.zoo.segmenter.Segmenter` (Architecture ``fusion``). Torch, ONNX export,
eval and predict all run it unchanged; ``w`` and the threshold come from the caller
(``benchmarks/generalization.py --joint`` fits them leave-one-source-out).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from landslide_cli.checkpoint import CheckpointMeta, file_sha256, load_checkpoint, save_checkpoint
from landslide_cli.errors import LandslideError


def fused_meta(meta: CheckpointMeta, *, index: str, weight: float, threshold: float,
               name: str | None = None, base_sha256: str = "", note: str = "") -> CheckpointMeta:
    """Metadata of ``meta``'s model fused with colour index ``index`` at weight ``weight``."""
    from landslide_cli.baselines import BASELINES, baseline_name
    from landslide_cli.preprocess import InputSpec
    from landslide_cli.zoo.spec import Architecture

    if meta.kind != "segmenter":
        raise LandslideError(f"{meta.name}: is a {meta.kind} checkpoint, not a "
                             "segmentation model")
    arch = Architecture.from_dict(meta.architecture)
    if arch.fusion:
        raise LandslideError(f"{meta.name}: is already fused with "
                             f"baseline:{arch.fusion['index']}")
    if not 0.0 <= weight <= 1.0:
        raise LandslideError(f"fusion weight {weight}: must be in [0, 1]")
    if not 0.0 <= threshold <= 1.0:
        raise LandslideError(f"threshold {threshold}: must be in [0, 1]")
    index = baseline_name(index)
    spec_dict = dict(meta.input)
    derived = list(spec_dict.get("derived") or [])
    if index not in derived:
        derived.append(index)
    spec_dict["derived"] = derived
    spec = InputSpec.from_dict(spec_dict)  # validates: needs red, green and blue
    channel = spec.num_bands + derived.index(index)
    arch.fusion = {"index": index, "channel": channel, "weight": float(weight)}
    arch = Architecture.from_dict(arch.to_dict())  # validates the fusion entry
    training = dict(meta.training)
    training["fusion"] = {"index": index, "weight": float(weight),
                          "formula": BASELINES.entry(index).info["formula"],
                          "base_model": meta.name, "base_threshold": meta.threshold,
                          **({"base_sha256": base_sha256} if base_sha256 else {}),
                          **({"note": note} if note else {})}
    training["threshold_source"] = note or "chosen when fusing (landslide fuse)"
    return CheckpointMeta(kind=meta.kind, architecture=arch.to_dict(), input=spec.to_dict(),
                          threshold=float(threshold), classes=list(meta.classes),
                          name=name or f"{meta.name}+{index}", training=training,
                          metrics={}, extra=dict(meta.extra))


def fuse_checkpoint(model: str | Path | None, out: str | Path, *, index: str = "rg",
                    weight: float, threshold: float, name: str | None = None,
                    note: str = "", overwrite: bool = False) -> dict[str, Any]:
    """Write ``out`` (``.safetensors``): ``model`` (path or shipped name) fused with ``index``.

    The weights are copied unchanged; returns ``{"out", "name", "sha256", "fusion"}``.
    """
    from landslide_cli.safety import check_target
    from landslide_cli.zoo.loading import resolve_model_path, segmenter_from_checkpoint

    src = resolve_model_path(model)
    out = check_target(out, overwrite=overwrite, what="fused model",
                       suffixes=(".safetensors",), inputs=[src])
    meta, state = load_checkpoint(src)
    new = fused_meta(meta, index=index, weight=weight, threshold=threshold, name=name,
                     base_sha256=file_sha256(src), note=note)
    segmenter_from_checkpoint(new, state, source=str(out))  # the fused model must load
    save_checkpoint(out, state, new)
    arch = new.architecture
    return {"out": str(out), "name": new.name, "sha256": file_sha256(out),
            "fusion": arch["fusion"], "threshold": new.threshold}
