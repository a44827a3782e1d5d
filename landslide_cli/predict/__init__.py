"""``landslide predict``: sliding-window inference over GeoTIFF scenes into a GeoPackage.

Public API: :func:`predict_scenes`, its :class:`PredictOptions` and its :class:`PredictSummary`;
the building blocks (:mod:`.windows`, :mod:`.raster`, :mod:`.vectors`) are importable for reuse
and tests.
"""

from landslide_cli.predict.pipeline import (
    PredictOptions,
    PredictSummary,
    SceneSummary,
    predict_scenes,
)

__all__ = ["PredictOptions", "PredictSummary", "SceneSummary", "predict_scenes"]
