"""Loss terms against independent numpy computations on fixed small tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from landslide_cli.train.losses import (
    FixedWeighting,
    SegmentationLoss,
    UncertaintyWeighting,
    adversarial_loss,
    discriminator_loss,
    focal_loss,
    kd_kl_loss,
)


def _np_softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def test_kl_matches_hand_computed_two_locations():
    # one image, 3 channels, 1x2 locations; written out by hand
    s = np.array([[[[1.0, 0.0]], [[2.0, 0.5]], [[0.0, -1.0]]]])  # (1, 3, 1, 2)
    t = np.array([[[[0.5, 2.0]], [[0.5, 0.0]], [[3.0, 1.0]]]])
    tau = 5.0
    total = 0.0
    for loc in range(2):
        p = [math.exp(t[0, c, 0, loc] / tau) for c in range(3)]
        q = [math.exp(s[0, c, 0, loc] / tau) for c in range(3)]
        p = [v / sum(p) for v in p]
        q = [v / sum(q) for v in q]
        total += sum(pc * math.log(pc / qc) for pc, qc in zip(p, q, strict=True))
    expected = total / 2 * tau**2
    got = kd_kl_loss(torch.tensor(s, dtype=torch.float32), torch.tensor(t, dtype=torch.float32),
                     tau)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    unscaled = kd_kl_loss(torch.tensor(s).float(), torch.tensor(t).float(), tau,
                          scale_by_tau2=False)
    assert unscaled.item() == pytest.approx(total / 2, rel=1e-5)


def test_kl_random_maps_numpy_reference_and_properties():
    rng = np.random.default_rng(0)
    s = rng.normal(size=(2, 6, 3, 4)).astype(np.float32) * 3
    t = rng.normal(size=(2, 6, 3, 4)).astype(np.float32) * 3
    tau = 5.0
    p = _np_softmax(t / tau, axis=1)
    q = _np_softmax(s / tau, axis=1)
    expected = (p * (np.log(p) - np.log(q))).sum(axis=1).mean() * tau**2
    got = kd_kl_loss(torch.from_numpy(s), torch.from_numpy(t), tau)
    assert got.item() == pytest.approx(float(expected), rel=1e-4)
    # zero iff equal; gradient flows to the student only
    assert kd_kl_loss(torch.from_numpy(t), torch.from_numpy(t), tau).item() == pytest.approx(
        0.0, abs=1e-6)
    st = torch.from_numpy(s).requires_grad_()
    tt = torch.from_numpy(t).requires_grad_()
    kd_kl_loss(st, tt, tau).backward()
    assert st.grad is not None and st.grad.abs().sum() > 0
    assert tt.grad is None
    with pytest.raises(ValueError):
        kd_kl_loss(torch.zeros(1, 2, 3, 3), torch.zeros(1, 3, 3, 3))


def test_adversarial_terms_match_hand_computed():
    d_t = torch.tensor([[[[0.5, 1.5], [1.0, 0.0]]]])  # (1, 1, 2, 2)
    d_s = torch.tensor([[[[0.2, -0.4], [0.0, 1.0]]]])
    # L_D = 1/2 [ mean (d_t - 1)^2 + mean d_s^2 ]
    real = ((0.5 - 1) ** 2 + (1.5 - 1) ** 2 + 0 + (0 - 1) ** 2) / 4  # 0.375
    fake = (0.2**2 + 0.4**2 + 0 + 1.0) / 4  # 0.3
    assert discriminator_loss(d_t, d_s).item() == pytest.approx(0.5 * (real + fake))
    # student: mean (d_s - 1)^2
    adv = ((0.2 - 1) ** 2 + (-0.4 - 1) ** 2 + 1 + 0) / 4  # 0.9
    assert adversarial_loss(d_s).item() == pytest.approx(adv)
    assert adversarial_loss(d_s).item() == pytest.approx(0.9)


def test_fixed_and_uncertainty_weighting():
    terms = {"kl": torch.tensor(2.0), "adv": torch.tensor(0.5)}
    fixed = FixedWeighting({"kl": 0.6, "adv": 0.4})
    assert fixed(terms).item() == pytest.approx(0.6 * 2.0 + 0.4 * 0.5)
    unc = UncertaintyWeighting(["kl", "adv"], init={"kl": 0.6, "adv": 0.4})
    s = [-math.log(0.6), -math.log(0.4)]
    expected = 0.6 * 2.0 + s[0] + 0.4 * 0.5 + s[1]
    assert unc(terms).item() == pytest.approx(expected, rel=1e-6)
    assert unc.current() == pytest.approx({"kl": 0.6, "adv": 0.4})
    # dL/ds_i = -exp(-s_i) L_i + 1
    unc(terms).backward()
    grad = unc.log_vars.grad.tolist()
    assert grad == pytest.approx([-0.6 * 2.0 + 1, -0.4 * 0.5 + 1], rel=1e-5)


def _np_seg_terms(logits: np.ndarray, target: np.ndarray, gamma: float,
                  w: np.ndarray | None = None) -> tuple[float, float]:
    p = _np_softmax(logits, axis=1)  # (N, C, H, W)
    n, _, h, wd = logits.shape
    ce_num = fl_num = den = 0.0
    for i in range(n):
        for y in range(h):
            for x in range(wd):
                c = target[i, y, x]
                pt = p[i, c, y, x]
                a = 1.0 if w is None else w[c]
                ce_num += -a * math.log(pt)
                fl_num += -a * (1 - pt) ** gamma * math.log(pt)
                den += a
    return ce_num / den, fl_num / den


def test_focal_and_ce_combo_match_numpy():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 2, 3, 3)).astype(np.float32) * 2
    target = rng.integers(0, 2, size=(2, 3, 3))
    ce, fl = _np_seg_terms(logits, target, 2.0)
    lt, tt = torch.from_numpy(logits), torch.from_numpy(target)
    assert focal_loss(lt, tt, 2.0).item() == pytest.approx(fl, rel=1e-5)
    loss = SegmentationLoss(0.4, 0.6, 2.0)
    assert loss(lt, tt).item() == pytest.approx(0.4 * ce + 0.6 * fl, rel=1e-5)
    # gamma = 0 reduces focal to CE
    assert focal_loss(lt, tt, 0.0).item() == pytest.approx(ce, rel=1e-5)
    # class weights, normalised like F.cross_entropy
    w = np.array([0.3, 1.7])
    ce_w, fl_w = _np_seg_terms(logits, target, 2.0, w)
    weighted = SegmentationLoss(0.4, 0.6, 2.0, class_weights=[0.3, 1.7])
    assert weighted(lt, tt).item() == pytest.approx(0.4 * ce_w + 0.6 * fl_w, rel=1e-5)


def test_focal_single_pixel_by_hand():
    # logits (0, ln 3): p(landslide) = 3/4; true class 1 -> (1/4)^2 * -ln(3/4)
    logits = torch.tensor([0.0, math.log(3.0)]).view(1, 2, 1, 1)
    target = torch.tensor([[[1]]])
    expected = (0.25**2) * -math.log(0.75)
    assert focal_loss(logits, target, 2.0).item() == pytest.approx(expected, rel=1e-6)
