"""Training: KDA distillation (phase 1) and segmentation (phase 2)."""
