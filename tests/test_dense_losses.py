"""DenseDiscountedDPO losses against values derived by hand from docs/methods.md §2.

Hand derivations:
  discount_weights(4, 0.5): gamma^k = 1, 1/2, 1/4, 1/8, sum 15/8  -> [8, 4, 2, 1] / 15
  discount_weights(3, 0.9): 1, 0.9, 0.81, sum 2.71 -> [0.36900369003690037, 0.33210332103321033, 0.2988929889298893]
  gamma = 1, N = 5 -> 0.2 each;  gamma = 0, N = 4 -> [1, 0, 0, 0]   (0^0 = 1)

  trajectory_scores, beta = 10, clip = 1e-3, step indices [0, 2, 2] (index 2 drawn twice), columns 1 and 3
  carry huge log-ratios that must be ignored:
    row 0: ratios at (0, 2, 2) = (+5e-4, -2e-3, -2e-3) -> clamped (+5e-4, -1e-3, -1e-3), mean -5e-4  -> s = -5e-3
    row 1: ratios at (0, 2, 2) = (+3e-3, +2e-4, +2e-4) -> clamped (+1e-3, +2e-4, +2e-4), mean 1.4e-3/3 -> s = 0.014/3
    gradients of s w.r.t. logp_theta: row 0 col 0: beta/3 = 10/3, col 2: 0 (clamped);
                                      row 1 col 0: 0 (clamped),   col 2: 2 * beta/3 = 20/3 (drawn twice)
  (without the clamp row 0 would be 10 * (5e-4 - 4e-3)/3 = -0.011666..., row 1 10 * 3.4e-3/3)

  dense_dpo_loss, s_w = [1, 0.5, 0], s_l = [0, 1.5, 0]: inside = [1, -1, 0]
    -logsigmoid(x) = log(1 + e^-x): 0.31326168751822286, 1.3132616875182228, ln 2 = 0.6931471805599453
    mean = 0.7732235185321303;  implicit_acc = (1 + 0 + 0.5) / 3 = 0.5;  margin = mean(inside) = 0

  listmle_loss, N = 3 (best first):
    [2, 1, 0]: -(2 - log(e^2 + e + 1)) - (1 - log(e + 1)) - 0 = 0.7208676519626029
    [0, 0, 0]: log 3 + log 2 = log 6 = 1.791759469228055
    mean = 1.2563135605953288;  pairs (i<j): diffs (1, 2, 1) and (0, 0, 0) -> acc = (3 + 3 * 0.5)/6 = 0.75,
    margin = 4/6.   Worst first, [0, 1, 2]: log(1 + e + e^2) + log(e + e^2) - 1 = 3.720867651962603
    N = 2: -(s1 - log(e^s1 + e^s2)) = log(1 + e^(s2 - s1)) = -logsigmoid(s1 - s2), the DPO loss.
"""

from __future__ import annotations

import math

import pytest
import torch

from lit_pref.losses import (
    DENSE_DPO_DEFAULTS,
    dense_dpo_loss,
    discount_weights,
    listmle_loss,
    sample_step_indices,
    trajectory_scores,
)


def f64(*rows):
    return torch.tensor(rows, dtype=torch.float64)


# ------------------------------------------------------------------ discount weights
def test_discount_weights_by_hand():
    torch.testing.assert_close(discount_weights(4, 0.5, dtype=torch.float64), f64(8, 4, 2, 1) / 15, rtol=0, atol=1e-15)
    torch.testing.assert_close(
        discount_weights(3, 0.9, dtype=torch.float64),
        f64(0.36900369003690037, 0.33210332103321033, 0.2988929889298893), rtol=0, atol=1e-15,
    )
    assert discount_weights(3).dtype == torch.float32


def test_discount_weights_sum_to_one_and_decrease_strictly():
    for gamma in (0.1, 0.5, 0.9, 0.99):
        w = discount_weights(50, gamma, dtype=torch.float64)
        assert w.sum().item() == pytest.approx(1.0, abs=1e-12)
        assert (w[1:] < w[:-1]).all()
        assert w[0].item() == pytest.approx((1 - gamma) / (1 - gamma**50), rel=1e-12)  # geometric series


def test_discount_weights_limits():
    uniform = torch.full((5,), 0.2, dtype=torch.float64)
    torch.testing.assert_close(discount_weights(5, 1.0, dtype=torch.float64), uniform)
    assert discount_weights(4, 0.0).tolist() == [1.0, 0.0, 0.0, 0.0]
    assert discount_weights(4, 1e-9)[0].item() == pytest.approx(1.0, abs=1e-8)
    assert discount_weights(1, 0.9).tolist() == [1.0]


@pytest.mark.parametrize("num_steps, gamma", [(4, -0.1), (4, 1.1), (0, 0.9), (2.5, 0.9), (4, float("nan"))])
def test_discount_weights_validates(num_steps, gamma):
    with pytest.raises(ValueError):
        discount_weights(num_steps, gamma)


# ------------------------------------------------------------------ step sampling
def test_sample_step_indices_frequencies_match_weights():
    """Pearson chi-square with 3 degrees of freedom; its 99.9% quantile is 16.27 (fixed seed, so deterministic).
    Uniform draws would give chi2 ~ 2e4, draws from the reversed weights ~ 1e5."""
    w = discount_weights(4, 0.5)
    n = 30_000
    idx = sample_step_indices(w, n, generator=torch.Generator().manual_seed(0))
    assert idx.dtype == torch.int64 and idx.shape == (n,)
    counts = torch.bincount(idx, minlength=4).double()
    expected = n * w.double()
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    assert chi2 < 16.27, (counts, expected)
    again = sample_step_indices(w, n, generator=torch.Generator().manual_seed(0))
    assert torch.equal(idx, again)


def test_sample_step_indices_never_draws_zero_weights():
    idx = sample_step_indices(discount_weights(6, 0.0), 200, generator=torch.Generator().manual_seed(1))
    assert (idx == 0).all()
    idx = sample_step_indices(torch.tensor([0.0, 3.0, 0.0, 1.0]), 500, generator=torch.Generator().manual_seed(2))
    assert set(idx.tolist()) == {1, 3}  # unnormalised weights are fine


def test_sample_step_indices_validates():
    with pytest.raises(ValueError):
        sample_step_indices(torch.tensor([0.5, -0.1, 0.6]), 3)
    with pytest.raises(ValueError):
        sample_step_indices(torch.zeros(3), 3)
    with pytest.raises(ValueError):
        sample_step_indices(torch.ones(2, 2), 3)
    with pytest.raises(ValueError):
        sample_step_indices(torch.ones(3), 0)


# ------------------------------------------------------------------ trajectory scores
def score_inputs():
    base = f64([-1.2, -0.7, -0.4, -0.1], [-1.3, -0.9, -0.5, 0.2])
    ratios = f64([5e-4, 5.0, -2e-3, -5.0], [3e-3, -5.0, 2e-4, 5.0])
    logp_theta = (base + ratios).requires_grad_(True)
    return logp_theta, base


def test_trajectory_scores_by_hand_with_clamping_on_both_sides():
    logp_theta, logp_init = score_inputs()
    scores = trajectory_scores(logp_theta, logp_init, torch.tensor([0, 2, 2]), beta=10.0, clip=1e-3)
    assert scores.shape == (2,)
    assert scores[0].item() == pytest.approx(-5e-3, abs=1e-12)
    assert scores[1].item() == pytest.approx(0.014 / 3, abs=1e-12)
    scores.sum().backward()
    expected_grad = f64([10 / 3, 0, 0, 0], [0, 0, 20 / 3, 0])
    torch.testing.assert_close(logp_theta.grad, expected_grad, rtol=0, atol=1e-12)


def test_trajectory_scores_without_effective_clip_is_plain_mean():
    logp_theta, logp_init = score_inputs()
    scores = trajectory_scores(logp_theta, logp_init, torch.tensor([0, 2, 2]), beta=10, clip=float("inf"))
    assert scores[0].item() == pytest.approx(10 * (5e-4 - 4e-3) / 3, abs=1e-12)
    assert scores[1].item() == pytest.approx(10 * 3.4e-3 / 3, abs=1e-12)


def test_trajectory_scores_validates():
    logp_theta, logp_init = score_inputs()
    with pytest.raises(ValueError):
        trajectory_scores(logp_theta, logp_init[:, :3], torch.tensor([0]), beta=10.0, clip=1e-4)
    with pytest.raises(ValueError):
        trajectory_scores(logp_theta, logp_init, torch.tensor([0.0]), beta=10.0, clip=1e-4)
    with pytest.raises(ValueError):
        trajectory_scores(logp_theta, logp_init, torch.tensor([0]), beta=10.0, clip=0.0)


# ------------------------------------------------------------------ pair and list losses
def test_dense_dpo_loss_by_hand():
    loss, stats = dense_dpo_loss(f64(1.0, 0.5, 0.0), f64(0.0, 1.5, 0.0))
    assert loss.item() == pytest.approx(0.7732235185321303, abs=1e-12)
    assert stats["implicit_acc"].item() == pytest.approx(0.5)
    assert stats["margin"].item() == pytest.approx(0.0, abs=1e-12)


def test_dense_dpo_loss_is_ln2_when_policy_equals_initial_model():
    logp = torch.randn(4, 10)
    scores = trajectory_scores(logp, logp, torch.tensor([0, 3, 7]), beta=10.0, clip=1e-4)
    loss, stats = dense_dpo_loss(scores[:2], scores[2:])
    assert loss.item() == pytest.approx(math.log(2), abs=1e-7)
    assert stats["implicit_acc"].item() == 0.5


def test_dense_dpo_loss_validates():
    with pytest.raises(ValueError):
        dense_dpo_loss(torch.zeros(3), torch.zeros(2))
    with pytest.raises(ValueError):
        dense_dpo_loss(torch.zeros(3, 1), torch.zeros(3, 1))


def test_listmle_by_hand_three_trajectories():
    loss, stats = listmle_loss(f64([2.0, 1.0, 0.0], [0.0, 0.0, 0.0]))
    assert loss.item() == pytest.approx(1.2563135605953288, abs=1e-12)
    assert stats["implicit_acc"].item() == pytest.approx(0.75)
    assert stats["margin"].item() == pytest.approx(4 / 6, abs=1e-12)
    worst_first, _ = listmle_loss(f64([0.0, 1.0, 2.0]))
    assert worst_first.item() == pytest.approx(3.720867651962603, abs=1e-12)


def test_listmle_with_two_trajectories_equals_dense_dpo_loss():
    scores = torch.randn(6, 2, dtype=torch.float64)
    scores[0, 1] = scores[0, 0]  # a tie
    loss, stats = listmle_loss(scores)
    ref_loss, ref_stats = dense_dpo_loss(scores[:, 0], scores[:, 1])
    assert loss.item() == pytest.approx(ref_loss.item(), abs=1e-12)
    for key in ("implicit_acc", "margin"):
        assert stats[key].item() == pytest.approx(ref_stats[key].item(), abs=1e-12)


def test_listmle_validates():
    with pytest.raises(ValueError):
        listmle_loss(torch.zeros(3, 1))
    with pytest.raises(ValueError):
        listmle_loss(torch.zeros(3))


def test_paper_defaults():
    assert DENSE_DPO_DEFAULTS["single_prompt"] == {"beta": 10.0, "num_sampled_steps": 3, "clip": 1e-4, "gamma": 0.9}
    assert DENSE_DPO_DEFAULTS["multi_prompt"] == {"beta": 12.5, "num_sampled_steps": 1, "clip": 5e-4, "gamma": 0.9}
