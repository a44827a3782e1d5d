"""Training: KDA distillation (phase 1) and segmentation (phase 2). See docs/training.md.

```python
from landslide_cli.train import DistillConfig, resolve_config, train_distill
result = train_distill(resolve_config(DistillConfig, {"data": "/data/CAS", "out": "runs/kda"}))
```
"""

from landslide_cli.train.config import DistillConfig, SegmentConfig, TrainConfig, resolve_config
from landslide_cli.train.distill import train_distill
from landslide_cli.train.result import TrainResult
from landslide_cli.train.segment import train_segment

__all__ = [
    "DistillConfig",
    "SegmentConfig",
    "TrainConfig",
    "TrainResult",
    "resolve_config",
    "train_distill",
    "train_segment",
]
