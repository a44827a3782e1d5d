"""Loss functions of both training phases (equations in docs/training.md).

Phase 1 (distillation):

* :func:`kd_kl_loss` -- ``tau^2 * mean_{n,h,w} KL(softmax(O_T/tau) || softmax(O_S/tau))`` over the
  channel axis at every location.
* :func:`discriminator_loss` -- least-squares GAN loss for the discriminator,
  ``1/2 [mean (D(O_T) - 1)^2 + mean D(O_S)^2]``.
* :func:`adversarial_loss` -- the student's adversarial term ``mean (D(O_S) - 1)^2``.
* :func:`paper_discriminator_loss` / :func:`paper_adversarial_loss` -- the paper's Eq. 2 / 3
  (``--adv-loss paper``): D maximises ``MSE(D(O_T), D(O_S))``, the student minimises it.
* :class:`FixedWeighting` / :class:`UncertaintyWeighting` -- combine named loss terms.

Phase 2 (segmentation):

* :func:`focal_loss` and :class:`SegmentationLoss` -- ``L_M = 0.4 CE + 0.6 Focal(gamma=2)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def kd_kl_loss(student: torch.Tensor, teacher: torch.Tensor, tau: float = 5.0, *,
               scale_by_tau2: bool = True) -> torch.Tensor:
    """KL divergence between channel distributions of two ``(N, C, H, W)`` feature maps.

    At every location ``(n, h, w)``: ``p = softmax(teacher / tau)``, ``q = softmax(student / tau)``
    over ``C``, ``KL(p || q) = sum_c p_c (log p_c - log q_c)``; the result is the mean over all
    ``N * H * W`` locations, multiplied by ``tau**2`` when ``scale_by_tau2`` (Hinton et al.: the
    gradient of the softened KL scales as ``1/tau^2``, the factor keeps its magnitude independent
    of ``tau``). Computed in float32. ``teacher`` is treated as a constant target.
    """
    if student.shape != teacher.shape:
        raise ValueError(f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} "
                         "feature maps differ in shape")
    log_q = F.log_softmax(student.float() / tau, dim=1)
    log_p = F.log_softmax(teacher.detach().float() / tau, dim=1)
    kl = (log_p.exp() * (log_p - log_q)).sum(dim=1)  # (N, H, W)
    loss = kl.mean()
    return loss * (tau * tau) if scale_by_tau2 else loss


def discriminator_loss(d_teacher: torch.Tensor, d_student: torch.Tensor) -> torch.Tensor:
    """LSGAN discriminator loss ``1/2 [mean (D(O_T) - 1)^2 + mean (D(O_S) - 0)^2]``.

    ``d_teacher``/``d_student`` are the raw scores (any shape); the student map must already be
    detached by the caller so that this loss only trains the discriminator.
    """
    real = F.mse_loss(d_teacher.float(), torch.ones_like(d_teacher, dtype=torch.float32))
    fake = F.mse_loss(d_student.float(), torch.zeros_like(d_student, dtype=torch.float32))
    return 0.5 * (real + fake)


def adversarial_loss(d_student: torch.Tensor) -> torch.Tensor:
    """The student's adversarial term ``mean (D(O_S) - 1)^2``: be scored like the teacher."""
    return F.mse_loss(d_student.float(), torch.ones_like(d_student, dtype=torch.float32))


def paper_discriminator_loss(d_teacher: torch.Tensor, d_student: torch.Tensor) -> torch.Tensor:
    """Eq. 2 of the paper as a loss to minimise: ``-mean (D(O_T) - D(O_S))^2``.

    The discriminator *maximises* the squared distance between its scores of the teacher and
    the (detached, by the caller) student map. Bounded (by -1) only when the scores are in
    [0, 1], i.e. for a discriminator with a sigmoid output.
    """
    return -F.mse_loss(d_teacher.float(), d_student.float())


def paper_adversarial_loss(d_teacher: torch.Tensor, d_student: torch.Tensor) -> torch.Tensor:
    """Eq. 3's adversarial term ``mean (D(O_T) - D(O_S))^2``: the student closes the distance.

    ``D(O_T)`` is a constant target (detached here); gradients flow through ``D(O_S)``.
    """
    return F.mse_loss(d_student.float(), d_teacher.detach().float())


class FixedWeighting(nn.Module):
    """``L = sum_i w_i L_i`` with constant weights (no parameters)."""

    def __init__(self, weights: Mapping[str, float]) -> None:
        super().__init__()
        self.weights = dict(weights)

    def forward(self, terms: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return sum((self.weights[k] * v for k, v in terms.items()),
                   start=torch.zeros((), device=_device(terms)))

    def current(self) -> dict[str, float]:
        return dict(self.weights)


class UncertaintyWeighting(nn.Module):
    """Learned homoscedastic-uncertainty weighting (Kendall et al., 2018).

    ``L = sum_i exp(-s_i) L_i + s_i`` with one trainable log-variance ``s_i`` per term. ``s_i`` is
    initialised to ``-log(w_i)`` so training starts from the fixed weights ``w_i`` (``s_i = 0``,
    i.e. weight 1, when no initial weight is given).
    """

    def __init__(self, names: Sequence[str], init: Mapping[str, float] | None = None) -> None:
        super().__init__()
        self.names = list(names)
        init = dict(init or {})
        start = [-math.log(init[n]) if n in init else 0.0 for n in self.names]
        self.log_vars = nn.Parameter(torch.tensor(start, dtype=torch.float32))

    def forward(self, terms: Mapping[str, torch.Tensor]) -> torch.Tensor:
        total = torch.zeros((), device=self.log_vars.device)
        for i, name in enumerate(self.names):
            s = self.log_vars[i]
            total = total + torch.exp(-s) * terms[name].float() + s
        return total

    def current(self) -> dict[str, float]:
        """The effective weights ``exp(-s_i)``."""
        w = torch.exp(-self.log_vars.detach()).cpu().tolist()
        return dict(zip(self.names, w, strict=True))


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, *,
               weight: torch.Tensor | None = None, ignore_index: int = -100) -> torch.Tensor:
    """Multi-class focal loss ``mean_i alpha_{y_i} (1 - p_i)^gamma (-log p_i)``.

    ``p_i`` is the softmax probability of the true class ``y_i`` at pixel ``i``; ``alpha`` is the
    optional per-class ``weight`` (1 otherwise). The mean is over non-ignored pixels, normalised
    by the summed weights when class weights are given (as ``F.cross_entropy`` does).
    """
    logp = F.log_softmax(logits.float(), dim=1)
    valid = target != ignore_index
    tgt = torch.where(valid, target, torch.zeros_like(target))
    logp_t = logp.gather(1, tgt.unsqueeze(1)).squeeze(1)
    p_t = logp_t.exp()
    loss = -((1.0 - p_t).clamp_min(0.0) ** gamma) * logp_t
    alpha = weight.to(loss.device, torch.float32)[tgt] if weight is not None \
        else torch.ones_like(loss)
    alpha = alpha * valid
    return (loss * alpha).sum() / alpha.sum().clamp_min(1e-12)


class SegmentationLoss(nn.Module):
    """``L_M = ce_weight * CE + focal_weight * Focal(gamma)`` (paper: 0.4, 0.6, gamma 2)."""

    def __init__(self, ce_weight: float = 0.4, focal_weight: float = 0.6, gamma: float = 2.0,
                 class_weights: Sequence[float] | None = None, ignore_index: int = -100) -> None:
        super().__init__()
        self.ce_weight = ce_weight
        self.focal_weight = focal_weight
        self.gamma = gamma
        self.ignore_index = ignore_index
        cw = torch.tensor(list(class_weights), dtype=torch.float32) if class_weights else None
        self.register_buffer("class_weights", cw, persistent=False)

    def terms(self, logits: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        ce = F.cross_entropy(logits.float(), target, weight=self.class_weights,
                             ignore_index=self.ignore_index)
        fl = focal_loss(logits, target, self.gamma, weight=self.class_weights,
                        ignore_index=self.ignore_index)
        return {"ce": ce, "focal": fl}

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        t = self.terms(logits, target)
        return self.ce_weight * t["ce"] + self.focal_weight * t["focal"]


def _device(terms: Mapping[str, torch.Tensor]) -> torch.device:
    for v in terms.values():
        return v.device
    return torch.device("cpu")
