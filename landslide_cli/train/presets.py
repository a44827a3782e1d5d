"""Named option sets for ``landslide train segment --preset NAME`` (data only, no torch).

A preset is a layer of configuration values between the dataclass defaults and a ``--config``
file: **flags > --config file > --preset > defaults**. It may also name fields that are taken
from the ``--init`` model's recorded training recipe (its checkpoint's ``training`` metadata)
unless a config file or a flag gives them, so that fine-tuning keeps the augmentations the model
was trained with.

``few-shot``: fine-tune a trained segmentation model (``--init`` a checkpoint or a shipped model
name) on a handful of labelled tiles of new imagery. Every parameter (backbone and decoder)
trains, at a learning rate two orders of magnitude below a from-scratch run (1e-4 -> 1e-6,
cosine, 20 warm-up steps), for 300 optimizer steps of 4 crops; the architecture, the InputSpec
and the augmentations come from the init model; validation (and so the best-F1 threshold) every
25 epochs and after the last one. With validation tiles the threshold is re-picked on them,
with ``--val-split none`` the init model's threshold is kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from landslide_cli.errors import LandslideError
from landslide_cli.registry import canonical

#: training-recipe fields a preset may inherit from the init model, and where a segmentation
#: checkpoint's ``training`` metadata records each (see ``SegmentTask.meta``)
INHERITABLE: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "size": ("size",),
    "rot90": ("augment", "rot90"),
    "flips": ("augment", "flips"),
    "color_jitter": ("augment", "color_jitter"),
    "scale_jitter": ("augment", "scale_jitter"),
    "scale_range": ("augment", "scale_range"),
    "photometric": ("augment", "photometric"),
    "fg_crop": ("augment", "fg_crop"),
    "density_jitter": ("augment", "density_jitter"),
    "sampling": ("sampling",),
})


@dataclass(frozen=True)
class Preset:
    """A named set of configuration values of one training phase."""

    name: str
    phase: str
    description: str
    values: Mapping[str, Any]
    #: fields taken from the ``--init`` model's training metadata unless given (see
    #: :data:`INHERITABLE`)
    inherit: tuple[str, ...] = ()
    #: the preset is meaningless without ``--init`` a segmentation model
    requires_init: bool = False


FEW_SHOT = Preset(
    name="few-shot",
    phase="segment",
    description="fine-tune a trained segmentation model (--init) on a few labelled tiles: "
                "whole model, LR 1e-4 -> 1e-6, 300 steps of batch 4",
    values=MappingProxyType({
        "steps": 300,
        "batch_size": 4,
        "lr_backbone": 1e-4,
        "lr_backbone_final": 1e-6,
        "lr_decoder": 1e-4,
        "lr_decoder_final": 1e-6,
        "schedule": "cosine",
        "warmup_steps": 20,
        "weight_decay": 0.01,
        "grad_clip": 5.0,
        # a few tiles make epochs of 1-2 steps: validate (and write last/best) every 25
        # epochs and after the last one; the resume state is still saved every epoch
        "val_every": 25,
    }),
    inherit=tuple(INHERITABLE),
    requires_init=True,
)

#: canonical name -> preset
PRESETS: Mapping[str, Preset] = MappingProxyType({canonical(p.name): p for p in (FEW_SHOT,)})


def preset_names(phase: str | None = None) -> list[str]:
    return [p.name for p in PRESETS.values() if phase is None or p.phase == phase]


def get_preset(name: str, phase: str) -> Preset:
    """The preset ``name`` of ``phase`` (any case, ``-`` or ``_``), or raise one line."""
    preset = PRESETS.get(canonical(str(name)))
    if preset is None or preset.phase != phase:
        names = ", ".join(preset_names(phase)) or "none"
        raise LandslideError(f"--preset {name!r}: unknown preset for train {phase}; choose "
                             f"one of: {names}")
    return preset


def inherited_value(training: Mapping[str, Any], name: str) -> Any:
    """The value of field ``name`` recorded in a checkpoint's ``training`` metadata, or None."""
    value: Any = training
    for part in INHERITABLE[name]:
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value
