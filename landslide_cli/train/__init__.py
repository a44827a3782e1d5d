"""Training: KDA distillation (phase 1) and segmentation (phase 2). See docs/training.md.

```python
from landslide_cli.train import DistillConfig, resolve_config, train_distill
result = train_distill(resolve_config(DistillConfig, {"data": "/data/CAS", "out": "runs/kda"}))
```
"""

from landslide_cli.train.config import DistillConfig, SegmentConfig, TrainConfig, resolve_config

__all__ = [
    "DistillConfig",
    "SegmentConfig",
    "TrainConfig",
    "TrainResult",
    "resolve_config",
    "train_distill",
    "train_segment",
]

#: the training loops, imported on first use (so that ``landslide_cli.train.config``, which the
#: CLI imports for its options, loads without torch)
_LAZY = {"train_distill": "distill", "TrainResult": "result", "train_segment": "segment"}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"landslide_cli.train.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
