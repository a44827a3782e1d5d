"""landslide: map landslides in remote-sensing imagery (KDA, Wang et al., IEEE GRSL 2025)."""

__version__ = "0.1.0"

__all__ = ["__version__"]
