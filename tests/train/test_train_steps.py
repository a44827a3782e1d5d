"""Optimisation steps on a fixed batch: the losses go down (library level, no CLI)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import default_collate

from landslide_cli.train.config import DistillConfig, SegmentConfig, resolve_config
from landslide_cli.train.distributed import DistContext


def _batch(dataset, n: int = 2) -> dict:
    dataset.set_epoch(0)
    return default_collate([dataset[i] for i in range(n)])


@pytest.mark.parametrize("method", ["kd", "kda"])
def test_distill_loss_goes_down_on_a_fixed_batch(tiny_tiles: Path, method: str):
    from landslide_cli.train.distill import build_distill_task

    cfg = resolve_config(DistillConfig, {
        "data": str(tiny_tiles), "train_split": "all", "size": 64, "teacher":
        "vit_small_patch14_dinov2", "teacher_init": "random", "teacher_args": {"depth": 2},
        "method": method, "lr": 2e-3, "lr_final": 2e-3, "d_lr": 1e-3, "d_lr_final": 1e-3,
        "d_head_width": 16, "d_levels": 2, "epochs": 1, "quiet": True})
    task = build_distill_task(cfg, DistContext())
    task.setup(steps_per_epoch=10)
    task.set_train(True)
    batch = _batch(task.train_dataset)
    hist = [task.train_step(batch) for _ in range(8)]
    kl = [h["kl"].item() for h in hist]
    assert kl[-1] < 0.7 * kl[0], kl
    if method == "kda":
        assert {"adv", "d", "loss"} <= set(hist[0])
        d = [h["d"].item() for h in hist]
        assert min(d[-3:]) < d[0], d  # the discriminator learns to separate
        # the frozen teacher did not move, the discriminator's ViT is the teacher's
        assert task.disc_module.backbone is task.teacher
        assert all(not p.requires_grad for p in task.teacher.parameters())


def test_segment_loss_goes_down_on_a_fixed_batch(tiny_tiles: Path):
    from landslide_cli.train.segment import build_segment_task

    cfg = resolve_config(SegmentConfig, {
        "data": str(tiny_tiles), "train_split": "all", "val_split": "none", "size": 64,
        "decoder_width": 32, "lr_backbone": 1e-3, "lr_backbone_final": 1e-3,
        "lr_decoder": 1e-2, "lr_decoder_final": 1e-2, "epochs": 1, "quiet": True})
    task = build_segment_task(cfg, DistContext())
    task.setup(steps_per_epoch=10)
    task.set_train(True)
    batch = _batch(task.train_dataset)
    losses = [task.train_step(batch)["loss"].item() for _ in range(8)]
    assert losses[-1] < 0.7 * losses[0], losses
    assert task.lrs() == {"backbone": pytest.approx(1e-3), "decoder": pytest.approx(1e-2)}
    assert torch.isfinite(torch.tensor(losses)).all()
