"""Model inspection: registered names, parameter counts and FLOPs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from landslide_cli.errors import LandslideError


def list_models() -> dict[str, list[dict[str, Any]]]:
    """Registered backbones, decoders, teachers and discriminators, shipped checkpoints and
    the weight-free baselines (``baseline:<name>``)."""
    import landslide_cli.zoo  # noqa: F401 - registration
    from landslide_cli.baselines import list_baselines
    from landslide_cli.zoo.discriminator import DISCRIMINATORS
    from landslide_cli.zoo.loading import shipped_models
    from landslide_cli.zoo.registries import BACKBONES, DECODERS, TEACHERS

    def rows(registry: Any) -> list[dict[str, Any]]:
        return [{"name": e.name, **{k: v for k, v in e.info.items()}} for e in registry]

    return {
        "backbones": rows(BACKBONES),
        "decoders": rows(DECODERS),
        "teachers": rows(TEACHERS),
        "discriminators": rows(DISCRIMINATORS),
        "shipped": [{"name": n, "path": str(p)} for n, p in shipped_models().items()],
        "baselines": list_baselines(),
    }


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def gflops(model: nn.Module, size: int = 512, in_chans: int = 3) -> float:
    """Forward GFLOPs (multiply-add = 2 FLOPs) at ``size x size`` for batch 1.

    Counted on a copy of the model on PyTorch's ``meta`` device (shapes only, no arithmetic), so
    it is fast and needs no memory for activations; falls back to a real CPU forward pass if an
    operator has no meta implementation.
    """
    import copy

    from torch.utils.flop_counter import FlopCounterMode

    try:
        probe = copy.deepcopy(model).to("meta").eval()
        x = torch.zeros(1, in_chans, size, size, device="meta")
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            probe(x)
        return counter.get_total_flops() / 1e9
    except (NotImplementedError, RuntimeError):
        pass
    x = torch.zeros(1, in_chans, size, size)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 1e9


def model_info(ref: str, *, size: int = 512) -> dict[str, Any]:
    """Card, parameter counts and GFLOPs for a checkpoint path, shipped name or spec."""
    from landslide_cli.baselines import PREFIX, baseline_name, is_baseline

    if is_baseline(ref):
        raise LandslideError(f"{PREFIX}{baseline_name(ref)} is a weight-free colour index (no "
                             "parameters or FLOPs to count); `landslide models` shows its "
                             "formula and threshold")
    from landslide_cli.zoo.loading import load_model, shipped_models
    from landslide_cli.zoo.segmenter import build_segmenter
    from landslide_cli.zoo.spec import parse_spec

    card: dict[str, Any] = {}
    if Path(ref).exists() or ref in shipped_models() or ref == "default":
        loaded = load_model(None if ref == "default" else ref)
        model = loaded.model
        card = loaded.meta.to_dict()
        card["path"] = str(loaded.path)
        card["sha256"] = loaded.sha256
    elif "+" in ref or not ref.endswith((".safetensors", ".onnx")):
        model = build_segmenter(parse_spec(ref))
        card = {"architecture": model.arch.to_dict(), "weights": "random init"}
    else:
        raise LandslideError(f"model not found: {ref}")
    backbone = count_params(model.backbone)
    decoder = count_params(model.decoder)
    return {
        "model": ref,
        "architecture": model.arch.to_dict(),
        "params": {"backbone": backbone, "decoder": decoder, "total": backbone + decoder},
        "gflops_512": round(gflops(model, 512, model.arch.input_channels), 3),
        **({"gflops": round(gflops(model, size, model.arch.input_channels), 3), "size": size}
           if size != 512 else {}),
        "card": card,
    }
