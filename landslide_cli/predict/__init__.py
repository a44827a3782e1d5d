"""``landslide predict``: sliding-window inference over GeoTIFF scenes into a GeoPackage.

Public API: :func:`predict_scenes` and its :class:`PredictSummary`; the building blocks
(:mod:`.windows`, :mod:`.raster`, :mod:`.vectors`) are importable for reuse and tests.
"""

from landslide_cli.predict.pipeline import PredictSummary, SceneSummary, predict_scenes

__all__ = ["PredictSummary", "SceneSummary", "predict_scenes"]
