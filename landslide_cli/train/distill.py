"""Phase 1: knowledge distillation with an adversarial discriminator (KDA).

A frozen teacher (DINOv2 by default) and a trainable PVTv2 student see the same augmented batch
(each normalised its own way). The student's deepest stage goes through a 1x1 "neck" to the
teacher's width and is resized (bilinear) to the teacher's token grid; the maps ``O_S`` and
``O_T`` are aligned with a temperature-softened KL divergence over channels. With
``method="kda"`` a discriminator (frozen ViT + trainable head) learns to tell ``O_T`` from
``O_S`` (least-squares GAN, or the paper's Eq. 2/3 with ``adv_loss="paper"``) and the student
is also trained to be scored teacher-like.
Multi-teacher distillation (``extra_teachers``): every further frozen teacher gets its own 1x1
neck from the student's deepest stage and its own KL term ``kl_<teacher>``; the discriminator
stays on the first teacher; ``loss_weighting`` (fixed, or the learnt uncertainty weights)
combines all terms.
Equations and the exact step order: docs/training.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from landslide_cli.checkpoint import CheckpointMeta, save_checkpoint
from landslide_cli.errors import LandslideError
from landslide_cli.preprocess import InputSpec
from landslide_cli.reporting import Reporter
from landslide_cli.train import common
from landslide_cli.train.config import DistillConfig
from landslide_cli.train.distributed import DistContext
from landslide_cli.train.engine import (
    LRSchedule,
    TrainTask,
    amp_dtype,
    autocast,
    load_trainable_state,
    make_scaler,
    phase_reporter,
    planned_steps,
    run_phase,
    seed_everything,
    trainable_state,
)
from landslide_cli.train.losses import (
    FixedWeighting,
    UncertaintyWeighting,
    adversarial_loss,
    discriminator_loss,
    kd_kl_loss,
    paper_adversarial_loss,
    paper_discriminator_loss,
)
from landslide_cli.train.result import TrainResult

_RGB_NAMES = (("red", "r", "b4", "b04"), ("green", "g", "b3", "b03"), ("blue", "b", "b2", "b02"))


class DistillStudent(nn.Module):
    """Student backbone plus 1x1 necks projecting stages to the teachers' widths.

    ``forward(x, grids)`` returns the neck outputs resized (bilinear) to ``grids``, in the order
    ``[mid, last, *extra]``: stage ``mid_stage`` when intermediate alignment is on, the deepest
    stage through ``neck`` (the first teacher), then the deepest stage through each of
    ``extra_necks`` (one per further teacher, width ``extra_dims[i]``).
    """

    def __init__(self, backbone: nn.Module, teacher_dim: int, *, mid_stage: int | None = None,
                 mid_dim: int | None = None, extra_dims: Sequence[int] = ()) -> None:
        super().__init__()
        self.backbone = backbone
        widths = list(backbone.widths)
        self.neck = nn.Conv2d(widths[-1], teacher_dim, 1)
        self.mid_stage = mid_stage
        self.mid_neck = (nn.Conv2d(widths[mid_stage], int(mid_dim or teacher_dim), 1)
                         if mid_stage is not None else None)
        # no parameters (and no state-dict keys) with a single teacher
        self.extra_necks = nn.ModuleList(nn.Conv2d(widths[-1], int(d), 1) for d in extra_dims)

    def forward(self, x: torch.Tensor, grids: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        feats = self.backbone(x)
        outs = []
        first = 0
        if self.mid_neck is not None:
            outs.append(_resize(self.mid_neck(feats[self.mid_stage]), grids[0]))
            first = 1
        outs.append(_resize(self.neck(feats[-1]), grids[first]))
        for neck, grid in zip(self.extra_necks, grids[first + 1:], strict=True):
            outs.append(_resize(neck(feats[-1]), grid))
        return outs


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    size = (int(size[0]), int(size[1]))
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class TeacherInput(nn.Module):
    """Re-normalise a student batch for the teacher.

    The student sees ``x_s = (raw/scale - mean_s) / std_s`` (its InputSpec); the teacher wants
    ``x_t = (raw/scale - mean_t) / std_t`` on RGB. Hence ``x_t = x_s[rgb] * std_s/std_t +
    (mean_s - mean_t)/std_t``, an exact per-band affine map. The RGB bands are found by name
    (red/green/blue, B4/B3/B2), else the first three bands; a single band is repeated.
    Optionally the batch is resized (bilinear) to ``size`` or, by default, up to the next
    multiple of the teacher's patch size.
    """

    def __init__(self, spec: InputSpec, mean: Sequence[float], std: Sequence[float],
                 patch: int, size: int | None = None) -> None:
        super().__init__()
        idx = rgb_indices(spec.bands)
        s_mean = torch.tensor([spec.mean[i] for i in idx], dtype=torch.float32)
        s_std = torch.tensor([spec.std[i] for i in idx], dtype=torch.float32)
        t_mean = torch.tensor(list(mean)[:3], dtype=torch.float32)
        t_std = torch.tensor(list(std)[:3], dtype=torch.float32)
        self.idx = idx
        self.register_buffer("a", (s_std / t_std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("b", ((s_mean - t_mean) / t_std).view(1, 3, 1, 1),
                             persistent=False)
        self.patch = int(patch)
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, self.idx] * self.a + self.b
        h, w = x.shape[-2:]
        if self.size:
            target = (self.size, self.size)
        else:
            target = (-(-h // self.patch) * self.patch, -(-w // self.patch) * self.patch)
        return _resize(x, target)


def rgb_indices(bands: Sequence[str]) -> list[int]:
    names = [b.strip().lower() for b in bands]
    found = []
    for aliases in _RGB_NAMES:
        hit = next((i for i, n in enumerate(names) if n in aliases), None)
        found.append(hit)
    if all(i is not None for i in found):
        return [int(i) for i in found]  # type: ignore[arg-type]
    if len(names) >= 3:
        return [0, 1, 2]
    return [0, 0, 0]


def extra_term(teacher: str) -> str:
    """The loss term (and ``metrics.csv`` column stem) of a further teacher."""
    return f"kl_{teacher}"


class DistillTask(TrainTask):
    """KD / KDA step logic for :func:`~landslide_cli.train.engine.fit`.

    ``extra_teachers``: ``(name, teacher)`` pairs of multi-teacher distillation, in the order of
    ``student.extra_necks``; each is read at its last level only.
    """

    def __init__(self, cfg: DistillConfig, ctx: DistContext, *, dataset: Dataset,
                 spec: InputSpec, tiles: Any, teacher: nn.Module, student: DistillStudent,
                 disc: nn.Module | None, levels: list[int],
                 extra_teachers: Sequence[tuple[str, nn.Module]] = ()) -> None:
        super().__init__(cfg, ctx)
        self.cfg: DistillConfig = cfg
        dev = ctx.device
        self._dataset = dataset
        self.spec = spec
        self.tiles = tiles
        self.teacher = teacher.to(dev).eval()
        self.teacher_name = str(getattr(teacher, "name", cfg.teacher))
        self.levels = levels
        self.adapter = TeacherInput(spec, teacher.mean, teacher.std, teacher.patch_size,
                                    cfg.teacher_size).to(dev)
        if len(extra_teachers) != len(student.extra_necks):
            raise ValueError(f"{len(extra_teachers)} further teachers, "
                             f"{len(student.extra_necks)} extra necks")
        self.extra_teachers = [(name, t.to(dev).eval()) for name, t in extra_teachers]
        self.extra_adapters = [TeacherInput(spec, t.mean, t.std, t.patch_size,
                                            cfg.teacher_size).to(dev)
                               for _, t in self.extra_teachers]
        self.student_module = student.to(dev)
        self.student = common.wrap_ddp(self.student_module, ctx)
        self.kda = cfg.method == "kda"
        self.disc_module = disc.to(dev) if disc is not None else None
        self.disc = common.wrap_ddp(self.disc_module, ctx) if self.disc_module is not None \
            else None
        extra = [extra_term(name) for name, _ in self.extra_teachers]
        names = ["kl"] + (["kl_mid"] if student.mid_neck is not None else []) + extra \
            + (["adv"] if self.kda else [])
        init = {"kl": cfg.kl_weight, "kl_mid": cfg.kl_weight, "adv": cfg.adv_weight,
                **{n: cfg.kl_weight for n in extra}}
        self.weighting: nn.Module
        if cfg.loss_weighting == "adaptive":
            self.weighting = UncertaintyWeighting(names, init).to(dev)
        else:
            self.weighting = FixedWeighting({n: init[n] for n in names})
        self.term_names = names
        self.loss_names = (*names, "loss", *(("d",) if self.kda else ()))
        self.dtype = amp_dtype(cfg, dev)
        self.scaler = make_scaler(dev, self.dtype)
        self.history_losses: dict[str, float] = {}

    @property
    def train_dataset(self) -> Dataset:
        return self._dataset

    def setup(self, steps_per_epoch: int) -> None:
        cfg = self.cfg
        total = self.total_steps or planned_steps(cfg, steps_per_epoch)
        groups: list[dict[str, Any]] = [{
            "params": [p for p in self.student_module.parameters() if p.requires_grad],
            "initial_lr": cfg.lr, "final_lr": cfg.lr_final, "name": "student"}]
        if isinstance(self.weighting, UncertaintyWeighting):
            ratio = cfg.lr_final / cfg.lr if cfg.lr else 1.0
            groups.append({"params": list(self.weighting.parameters()), "weight_decay": 0.0,
                           "initial_lr": cfg.weighting_lr,
                           "final_lr": cfg.weighting_lr * ratio, "name": "weighting"})
        self.opt_s = common.adamw(groups, cfg)
        self.sched_s = LRSchedule(self.opt_s, total, kind=cfg.schedule, power=cfg.poly_power,
                                  warmup=cfg.warmup_steps)
        self.opt_d = self.sched_d = None
        if self.disc_module is not None:
            params = [p for p in self.disc_module.parameters() if p.requires_grad]
            self.opt_d = common.adamw([{"params": params, "initial_lr": cfg.d_lr,
                                        "final_lr": cfg.d_lr_final, "name": "disc"}], cfg)
            self.sched_d = LRSchedule(self.opt_d, total, kind=cfg.schedule,
                                      power=cfg.poly_power, warmup=cfg.warmup_steps)

    def set_train(self, mode: bool) -> None:
        self.student.train(mode)
        if self.disc is not None:
            self.disc.train(mode)
        self.teacher.eval()

    def teacher_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``[mid, last]`` of the first teacher (its ``levels``), then each further teacher's
        last map."""
        with torch.no_grad(), autocast(self.ctx.device, self.dtype):
            maps = list(self.teacher.forward_levels(self.adapter(x), self.levels))
            for (_, t), adapter in zip(self.extra_teachers, self.extra_adapters, strict=True):
                maps += t.forward_levels(adapter(x), [t.num_levels - 1])
        return [m.float() for m in maps]

    def train_step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        cfg, dev = self.cfg, self.ctx.device
        x = batch["image"].to(dev, non_blocking=True)
        t_maps = self.teacher_maps(x)
        with autocast(dev, self.dtype):
            s_maps = self.student(x, [m.shape[-2:] for m in t_maps])
        s_maps = [m.float() for m in s_maps]
        n = len(self.levels)  # the first teacher's maps; the further teachers' follow
        t_last, s_last = t_maps[n - 1], s_maps[n - 1]
        out: dict[str, torch.Tensor] = {}

        paper = cfg.adv_loss == "paper"
        if self.kda:  # 1) discriminator step: lsgan: teacher -> 1, (detached) student -> 0;
            # paper (Eq. 2): maximise MSE(D(O_T), D(sg(O_S)))
            assert self.disc is not None and self.opt_d is not None
            self.opt_d.zero_grad(set_to_none=True)
            with autocast(dev, self.dtype):
                scores = self.disc(torch.cat([t_last, s_last.detach()], dim=0))
            d_t, d_s = scores.float().split([x.shape[0], x.shape[0]], dim=0)
            loss_d = (paper_discriminator_loss if paper else discriminator_loss)(d_t, d_s)
            self.scaler.scale(loss_d).backward()
            self._clip(self.opt_d)
            self.scaler.step(self.opt_d)
            out["d"] = loss_d.detach()

        # 2) student step: KL (+ intermediate KL) (+ one KL per further teacher)
        # (+ adversarial, D(O_S) -> 1)
        self.opt_s.zero_grad(set_to_none=True)
        terms = {"kl": kd_kl_loss(s_last, t_last, cfg.tau)}
        if n > 1:
            terms["kl_mid"] = kd_kl_loss(s_maps[0], t_maps[0], cfg.tau)
        for i, (name, _) in enumerate(self.extra_teachers):
            terms[extra_term(name)] = kd_kl_loss(s_maps[n + i], t_maps[n + i], cfg.tau)
        if self.kda:
            joint = paper or bool(getattr(self.disc_module, "joint_batch", False))
            with autocast(dev, self.dtype):
                # the just-updated D; one batch with the teacher map when D has batch
                # statistics (kda_authors) or needs D(O_T) (Eq. 3), a constant there
                scores = self.disc(  # type: ignore[misc]
                    torch.cat([t_last, s_last], dim=0) if joint else s_last)
            if joint:
                score_t, score_s = scores.float().split([x.shape[0], x.shape[0]], dim=0)
            else:
                score_t, score_s = None, scores.float()
            if paper:  # Eq. 3's term MSE(D(O_T), D(O_S))
                terms["adv"] = paper_adversarial_loss(score_t.detach(), score_s)  # type: ignore[union-attr]
            else:
                terms["adv"] = adversarial_loss(score_s)
        loss = self.weighting(terms)
        self.scaler.scale(loss).backward()
        if self.ctx.distributed and isinstance(self.weighting, UncertaintyWeighting):
            for p in self.weighting.parameters():
                if p.grad is not None:
                    p.grad.copy_(self.ctx.all_reduce_mean(p.grad))
        self._clip(self.opt_s)
        self.scaler.step(self.opt_s)
        self.scaler.update()
        self.sched_s.step()
        if self.sched_d is not None:
            self.sched_d.step()
        out.update({k: v.detach() for k, v in terms.items()})
        out["loss"] = loss.detach()
        return out

    def _clip(self, opt: torch.optim.Optimizer) -> None:
        if self.cfg.grad_clip:
            self.scaler.unscale_(opt)
            params = [p for g in opt.param_groups for p in g["params"]]
            common.clip(params, self.cfg.grad_clip)

    def lrs(self) -> dict[str, float]:
        out = {"student": self.opt_s.param_groups[0]["lr"]}
        if self.opt_d is not None:
            out["disc"] = self.opt_d.param_groups[0]["lr"]
        return out

    def epoch_extras(self) -> dict[str, float]:
        if isinstance(self.weighting, UncertaintyWeighting):
            return {f"weight_{k}": v for k, v in self.weighting.current().items()}
        return {}

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "student": self.student_module.state_dict(),
            "weighting": self.weighting.state_dict(),
            "opt_s": self.opt_s.state_dict(), "sched_s": self.sched_s.state_dict(),
            "scaler": self.scaler.state_dict(),
        }
        if self.disc_module is not None:
            state["disc"] = trainable_state(self.disc_module)
            state["opt_d"] = self.opt_d.state_dict()  # type: ignore[union-attr]
            state["sched_d"] = self.sched_d.state_dict()  # type: ignore[union-attr]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.student_module.load_state_dict(state["student"])
        self.weighting.load_state_dict(state["weighting"])
        self.opt_s.load_state_dict(state["opt_s"])
        self.sched_s.load_state_dict(state["sched_s"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.disc_module is not None:
            load_trainable_state(self.disc_module, state["disc"], "discriminator")
            self.opt_d.load_state_dict(state["opt_d"])  # type: ignore[union-attr]
            self.sched_d.load_state_dict(state["sched_d"])  # type: ignore[union-attr]

    def save_outputs(self, run_dir: Path, epoch: int, val: dict[str, float], is_best: bool,
                     history: list[dict[str, Any]]) -> dict[str, Path]:
        cfg = self.cfg
        last = history[-1] if history else {}
        losses = {k[len("train_"):]: float(v) for k, v in last.items()
                  if k.startswith("train_")}
        backbone = self.student_module.backbone
        meta = CheckpointMeta(
            kind="backbone",
            name=Path(run_dir).name,
            architecture={"backbone": cfg.backbone, "in_chans": self.spec.num_bands},
            input=self.spec.to_dict(),
            training={
                "phase": "distill",
                "teacher": cfg.teacher,
                "teachers": [self.teacher_name, *(name for name, _ in self.extra_teachers)],
                **({"extra_teacher_weights": {
                    name: Path(cfg.extra_teacher_weights[raw]).name
                    if raw in cfg.extra_teacher_weights else None
                    for raw, (name, _) in zip(cfg.extra_teachers, self.extra_teachers,
                                              strict=True)}} if self.extra_teachers else {}),
                "teacher_init": cfg.teacher_init,
                "teacher_weights": Path(cfg.teacher_weights).name if cfg.teacher_weights
                else None,
                "method": cfg.method,
                "adv_loss": cfg.adv_loss if cfg.method == "kda" else None,
                "discriminator": cfg.discriminator if cfg.method == "kda" else None,
                "loss_weighting": cfg.loss_weighting,
                "loss_weights": {k: float(v) for k, v in self.weighting.current().items()},
                "align": cfg.align,
                "tau": cfg.tau,
                "epochs": cfg.epochs,
                "epochs_done": epoch,
                "batch_size": cfg.batch_size,
                "size": cfg.size,
                "lr": [cfg.lr, cfg.lr_final],
                "d_lr": [cfg.d_lr, cfg.d_lr_final],
                "schedule": cfg.schedule,
                "seed": cfg.seed,
                "losses": losses,
                "dataset": self.tiles.info(),
                "environment": common.environment(self.ctx),
            },
            metrics={"train": losses},
        )
        path = save_checkpoint(run_dir / "last.safetensors", backbone.state_dict(), meta)
        return {"last": path}


def teacher_levels(teacher: nn.Module, cfg: DistillConfig) -> list[int]:
    """Teacher levels to read: ``[mid, last]`` for intermediate alignment, else ``[last]``."""
    last = int(teacher.num_levels) - 1
    if cfg.align != "intermediate":
        return [last]
    mid = cfg.mid_level if cfg.mid_level is not None else max(0, teacher.num_levels // 2 - 1)
    if mid < 0:
        mid += teacher.num_levels
    if not 0 <= mid < last:
        raise LandslideError(f"--mid-level {cfg.mid_level}: the teacher has levels 0..{last}; "
                             "choose one before the last")
    return [mid, last]


def build_distill_task(cfg: DistillConfig, ctx: DistContext, *,
                       reporter: Reporter | None = None) -> DistillTask:
    """Validate the data and build the teacher(s), discriminator and student (no files
    written); warnings go to ``reporter`` (rank 0 only)."""
    import landslide_cli.zoo  # noqa: F401 - registration
    from landslide_cli.zoo.registries import BACKBONES, TEACHERS

    teacher_name = TEACHERS.resolve(cfg.teacher)
    extra_names = [TEACHERS.resolve(name) for name in cfg.extra_teachers]
    names = [teacher_name, *extra_names]
    twice = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if twice is not None:
        raise LandslideError(f"--teacher {twice} is given twice: name each teacher once")
    backbone_name = BACKBONES.resolve(cfg.backbone)
    if cfg.teacher_init == "random":
        if cfg.teacher_weights or cfg.extra_teacher_weights:
            raise LandslideError("--teacher-random cannot be combined with --teacher-weights")
        which = (f"{teacher_name} teacher" if not extra_names
                 else f"teachers {', '.join(names)}")
        phase_reporter(cfg, ctx, reporter).warn(
            f"distilling from a RANDOMLY initialised {which} "
            "(--teacher-random): only meaningful for tests and ablations")
    tiles = common.open_split(cfg, cfg.train_split, what="distillation")
    spec = common.input_spec_for(tiles, cfg)
    dataset = common.train_dataset(tiles, spec, cfg)

    seed_everything(cfg.seed)
    pretrained = cfg.teacher_init == "pretrained"
    teacher = TEACHERS.build(teacher_name, pretrained=pretrained, weights=cfg.teacher_weights,
                             img_size=cfg.teacher_size, **cfg.teacher_args)
    levels = teacher_levels(teacher, cfg)
    dims = teacher.level_dims(levels)
    extras = [(name, TEACHERS.build(name, pretrained=pretrained,
                                    weights=cfg.extra_teacher_weights.get(raw),
                                    img_size=cfg.teacher_size,
                                    **cfg.extra_teacher_args.get(raw, {})))
              for raw, name in zip(cfg.extra_teachers, extra_names, strict=True)]
    disc = build_disc(cfg, teacher, teacher_name) if cfg.method == "kda" else None
    backbone = BACKBONES.build(backbone_name, in_chans=spec.num_bands,
                               pretrained=cfg.student_pretrained, weights=cfg.student_weights)
    mid = cfg.mid_stage if cfg.align == "intermediate" else None
    student = DistillStudent(backbone, dims[-1], mid_stage=mid,
                             mid_dim=dims[0] if mid is not None else None,
                             extra_dims=[t.level_dims([-1])[0] for _, t in extras])
    return DistillTask(cfg, ctx, dataset=dataset, spec=spec, tiles=tiles, teacher=teacher,
                       student=student, disc=disc, levels=levels, extra_teachers=extras)


def build_disc(cfg: DistillConfig, teacher: nn.Module, teacher_name: str) -> nn.Module:
    """The KDA discriminator; shares the frozen teacher ViT when it is the same network.

    ``--discriminator kda_authors`` builds the authors' design (on the teacher's ViT, or on
    ``--discriminator-vit``); ``--adv-loss paper`` requires a discriminator with a sigmoid
    output (one-line error otherwise, before anything is built).
    """
    from landslide_cli.zoo.discriminator import AUTHORS, Discriminator, build_discriminator
    from landslide_cli.zoo.registries import DISCRIMINATORS, TEACHERS
    from landslide_cli.zoo.teachers import ViTTeacher

    chosen = DISCRIMINATORS.resolve(cfg.discriminator) if cfg.discriminator else None
    if cfg.adv_loss == "paper" and not (
            chosen and DISCRIMINATORS.entry(chosen).info.get("sigmoid")):
        raise LandslideError(
            f"--adv-loss paper needs a discriminator with a sigmoid output (Eq. 2 maximises an "
            f"MSE, bounded only for scores in [0, 1]); "
            f"{chosen or 'the default PatchGAN discriminator'} outputs raw scores: "
            f"use --discriminator {AUTHORS} or --adv-loss lsgan")
    if chosen == AUTHORS:
        return _authors_disc(cfg, teacher, teacher_name)
    if cfg.discriminator_vit:
        raise LandslideError(f"--discriminator-vit applies to --discriminator {AUTHORS} only")
    name = TEACHERS.resolve(cfg.discriminator) if cfg.discriminator else teacher_name
    same = name == teacher_name and not cfg.discriminator_weights
    if same and isinstance(teacher, ViTTeacher):
        return Discriminator(teacher, teacher.embed_dim, levels=cfg.d_levels,
                             head_width=cfg.d_head_width)
    if not cfg.discriminator and TEACHERS.entry(name).info.get("family") != "dinov2":
        raise LandslideError(f"--method kda with teacher {name} needs --discriminator "
                             "(a DINOv2 name, e.g. vit_small_patch14_dinov2)")
    args = dict(cfg.teacher_args) if name == teacher_name else {}
    return build_discriminator(name, teacher.embed_dim,
                               pretrained=cfg.teacher_init == "pretrained",
                               weights=cfg.discriminator_weights, levels=cfg.d_levels,
                               head_width=cfg.d_head_width, **args)


def _authors_disc(cfg: DistillConfig, teacher: nn.Module, teacher_name: str) -> nn.Module:
    """``kda_authors`` on the teacher's frozen ViT (shared) or on ``--discriminator-vit``; its
    grid is the teacher's (``ceil(teacher input / patch)``: 16 for a 224 input)."""
    from landslide_cli.zoo.discriminator import AUTHORS, build_authors_discriminator
    from landslide_cli.zoo.registries import TEACHERS
    from landslide_cli.zoo.teachers import ViTTeacher

    side = cfg.teacher_size or cfg.size
    grid = -(-int(side) // int(teacher.patch_size))
    vit_name = TEACHERS.resolve(cfg.discriminator_vit) if cfg.discriminator_vit \
        else teacher_name
    if vit_name == teacher_name and not cfg.discriminator_weights:
        if not isinstance(teacher, ViTTeacher):
            raise LandslideError(
                f"--discriminator {AUTHORS} runs a frozen DINOv2, and teacher {teacher_name} is "
                "not one: name it with --discriminator-vit (e.g. vit_large_patch14_dinov2)")
        return build_authors_discriminator(teacher.embed_dim, vit=teacher, grid=grid)
    args = dict(cfg.teacher_args) if vit_name == teacher_name else {}
    return build_authors_discriminator(teacher.embed_dim, vit_name=vit_name, grid=grid,
                                       pretrained=cfg.teacher_init == "pretrained",
                                       weights=cfg.discriminator_weights, **args)


def train_distill(cfg: DistillConfig, *, reporter: Reporter | None = None) -> TrainResult:
    """Run (or resume) phase 1 as configured; returns where the outputs are.

    Everything that can fail on user input (data root, empty split, teacher weights, run
    folder) is checked before the run folder is created. Notes, warnings and progress go to
    ``reporter`` (``None``: nothing is printed).
    """
    return run_phase(cfg, build_distill_task, reporter=reporter)
