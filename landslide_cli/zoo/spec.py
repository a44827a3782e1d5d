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
    #: late fusion with a colour index (``None``: none): ``{"index": NAME, "channel": C,
    #: "weight": W}`` makes the model's landslide probability ``(1 - W) * p + W * x[:, C]``,
    #: ``p`` the network's own, ``x[:, C]`` the index channel that the InputSpec's ``derived``
    #: appends after the bands (see :class:`~landslide_cli.zoo.segmenter.Segmenter`)
    fusion: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.fusion is not None:
            f = self.fusion
            try:
                weight, channel = float(f["weight"]), int(f["channel"])
                index = str(f["index"])
            except (KeyError, TypeError, ValueError):
                raise LandslideError(f"architecture fusion {f!r}: expected index, channel and "
                                     "weight") from None
            if not 0.0 <= weight <= 1.0:
                raise LandslideError(f"architecture fusion weight {weight}: must be in [0, 1]")
            if channel < self.in_chans:
                raise LandslideError(f"architecture fusion channel {channel} is one of the "
                                     f"network's {self.in_chans} input bands")
            self.fusion = {"index": index, "channel": channel, "weight": weight}

    @property
    def input_channels(self) -> int:
        """Channels of the model's input: the network's ``in_chans`` plus a fused index."""
        return max(self.in_chans, int(self.fusion["channel"]) + 1) if self.fusion else self.in_chans

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
