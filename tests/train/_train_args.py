"""CLI arguments shared by the training tests (tiny, CPU, single process)."""

#: options shared by every tiny distillation run (random depth-2 DINOv2 teacher)
TINY_DISTILL = ["--teacher", "vit_small_patch14_dinov2", "--teacher-random",
                "--teacher-arg", "depth=2", "--d-head-width", "16", "--d-levels", "2",
                "--size", "64", "-b", "2", "--num-workers", "0", "--device", "cpu",
                "--train-split", "all"]
TINY_SEGMENT = ["--decoder-width", "32", "--size", "64", "-b", "2", "--num-workers", "0",
                "--device", "cpu", "--train-split", "all", "--val-split", "all"]
