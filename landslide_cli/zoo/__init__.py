"""Model zoo: backbones, decoders, teachers and the discriminator, registered by name."""

from landslide_cli.zoo import (  # noqa: F401 - registration
    backbones,
    dcf,
    dcf_paper,
    heads,
    paper_heads,
    pvt_v1,
    segnext,
    teachers,
)
from landslide_cli.zoo.discriminator import build_discriminator
from landslide_cli.zoo.registries import BACKBONES, DECODERS, DISCRIMINATORS, TEACHERS
from landslide_cli.zoo.segmenter import Segmenter, build_segmenter
from landslide_cli.zoo.spec import Architecture, parse_spec

__all__ = [
    "BACKBONES",
    "DECODERS",
    "DISCRIMINATORS",
    "TEACHERS",
    "Architecture",
    "Segmenter",
    "build_discriminator",
    "build_segmenter",
    "parse_spec",
]
