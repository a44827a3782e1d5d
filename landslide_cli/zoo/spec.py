"""Architecture description of a segmentation model ("pvt_v2_b0+dcf")."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from landslide_cli.errors import LandslideError


@dataclass
class Architecture:
    """Enough to rebuild a segmentation model from scratch (weights come separately)."""

    backbone: str = "pvt_v2_b0"
    decoder: str = "dcf"
    decoder_width: int = 128
    num_classes: int = 2
    in_chans: int = 3

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Architecture:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    @property
    def spec(self) -> str:
        return f"{self.backbone}+{self.decoder}"


def parse_spec(text: str, **overrides: Any) -> Architecture:
    """Parse ``BACKBONE+DECODER`` (e.g. ``pvt_v2_b0+dcf``); a bare backbone gets the DCF decoder."""
    from landslide_cli.zoo.registries import BACKBONES, DECODERS

    parts = [p for p in text.strip().split("+") if p]
    if not parts or len(parts) > 2:
        raise LandslideError(f"cannot parse architecture {text!r}; expected BACKBONE+DECODER")
    backbone = BACKBONES.resolve(parts[0])
    decoder = DECODERS.resolve(parts[1]) if len(parts) == 2 else "dcf"
    return Architecture(backbone=backbone, decoder=decoder, **overrides)
