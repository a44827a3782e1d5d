"""Pretrained-weight resolution for timm models: hub (online), local file (always), offline errors.

* ``weights=PATH``: load from a local file through timm's ``pretrained_cfg_overlay=dict(file=...)``.
* ``pretrained=True`` without a file: timm downloads from the Hugging Face hub, unless
  ``HF_HUB_OFFLINE=1`` (or ``LANDSLIDE_OFFLINE=1``) is set and the file is not already in the
  local cache, in which case a one-line :class:`WeightsUnavailable` names the file to supply.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from landslide_cli.errors import WeightsUnavailable


def is_offline() -> bool:
    truthy = {"1", "true", "yes", "on"}
    return any(
        os.environ.get(v, "").strip().lower() in truthy
        for v in ("HF_HUB_OFFLINE", "LANDSLIDE_OFFLINE")
    )


def hub_source(model_name: str) -> str:
    """Where timm would fetch ``model_name``'s default weights from (for error messages)."""
    try:
        import timm

        cfg = timm.models.get_pretrained_cfg(model_name)
    except Exception:
        cfg = None
    if cfg is not None and getattr(cfg, "hf_hub_id", None):
        fname = getattr(cfg, "hf_hub_filename", None) or "model.safetensors"
        return f"hf-hub:{cfg.hf_hub_id} ({fname})"
    return f"timm weights for {model_name}"


def _in_hf_cache(model_name: str) -> bool:
    try:
        import timm
        from huggingface_hub import try_to_load_from_cache

        cfg = timm.models.get_pretrained_cfg(model_name)
        if cfg is None or not cfg.hf_hub_id:
            return False
        for fname in ("model.safetensors", "open_clip_pytorch_model.bin", "pytorch_model.bin"):
            hit = try_to_load_from_cache(cfg.hf_hub_id, fname)
            if isinstance(hit, str):
                return True
    except Exception:
        return False
    return False


def timm_weight_kwargs(
    model_name: str, *, pretrained: bool = False, weights: str | Path | None = None
) -> dict[str, Any]:
    """Keyword arguments for ``timm.create_model`` that implement the policy above."""
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise WeightsUnavailable(f"weights file not found: {path}")
        return {"pretrained": True, "pretrained_cfg_overlay": {"file": str(path)}}
    if not pretrained:
        return {"pretrained": False}
    if is_offline() and not _in_hf_cache(model_name):
        raise WeightsUnavailable(
            f"pretrained weights for {model_name} are not available offline; download "
            f"{hub_source(model_name)} and pass it with --weights PATH"
        )
    return {"pretrained": True}


def create_timm(model_name: str, *, pretrained: bool = False, weights: str | Path | None = None,
                **kwargs: Any) -> Any:
    """``timm.create_model`` with the weight policy, turning download failures into one line."""
    import timm

    wkw = timm_weight_kwargs(model_name, pretrained=pretrained, weights=weights)
    try:
        return timm.create_model(model_name, **wkw, **kwargs)
    except WeightsUnavailable:
        raise
    except Exception as exc:  # safetensors/pickle/IO errors have no common base class
        # TypeError/AssertionError: bad model options, not a weights problem
        if not wkw.get("pretrained") or isinstance(exc, (TypeError, AssertionError)):
            raise
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        where = weights if weights is not None else hub_source(model_name)
        raise WeightsUnavailable(
            f"could not load pretrained weights for {model_name} from {where}: {first}"
        ) from None
