"""The clipped PPO loss and the per-prompt stat tracker, against values worked out by hand from docs/methods.md §4."""

from __future__ import annotations

import math

import pytest
import torch

from lit_pref.losses import ppo_clip_loss
from lit_pref.rewards import PerPromptStatTracker


def test_ppo_loss_by_hand_ratio_and_both_clips():
    # Four samples, clip range 0.2:
    #  0: A = +1, ratio 1.5  -> max(-1.5, -1.2) = -1.2   (upper clip binds for a positive advantage)
    #  1: A = -1, ratio 0.5  -> max(0.5, 0.8)   =  0.8   (lower clip binds for a negative advantage)
    #  2: A = +2, ratio 0.5  -> max(-1.0, -1.6) = -1.0   (unclipped: a pessimistic bound keeps the low ratio)
    #  3: A = -2, ratio 1.1  -> max(2.2, 2.2)   =  2.2   (inside the range)
    ratio = torch.tensor([1.5, 0.5, 0.5, 1.1])
    logp_old = torch.tensor([-1.0, -2.0, 0.5, 3.0])
    logp_new = (logp_old + ratio.log()).requires_grad_(True)
    adv = torch.tensor([1.0, -1.0, 2.0, -2.0])
    loss, stats = ppo_clip_loss(logp_new, logp_old, adv, clip_range=0.2, adv_clip=5.0)
    assert loss.item() == pytest.approx((-1.2 + 0.8 - 1.0 + 2.2) / 4, abs=1e-6)
    dlogp = ratio.log()
    assert stats["approx_kl"].item() == pytest.approx(0.5 * (dlogp**2).mean().item(), rel=1e-6)
    assert stats["clipfrac"].item() == pytest.approx(3 / 4)  # |ratio - 1| > 0.2 for samples 0, 1, 2
    assert stats["ratio_mean"].item() == pytest.approx(ratio.mean().item(), rel=1e-6)
    loss.backward()
    # Clipped terms carry no gradient; unclipped ones: d/dlogp (-A ratio) / N = -A ratio / 4.
    expected = torch.tensor([0.0, 0.0, -2.0 * 0.5 / 4, 2.0 * 1.1 / 4])
    assert torch.allclose(logp_new.grad, expected, atol=1e-6)


def test_advantages_are_clamped_before_the_ratio():
    logp = torch.zeros(2)
    loss, stats = ppo_clip_loss(logp, logp, torch.tensor([12.0, -7.0]), clip_range=1e-4, adv_clip=5.0)
    # ratio 1: loss = mean(-clamp(A)) = mean(-5, 5) = 0; advantage_mean after the clamp is 0 too.
    assert loss.item() == pytest.approx(0.0) and stats["advantage_mean"].item() == pytest.approx(0.0)
    loss, _ = ppo_clip_loss(logp, logp, torch.tensor([12.0, 3.0]), clip_range=1e-4, adv_clip=5.0)
    assert loss.item() == pytest.approx(-(5.0 + 3.0) / 2)


def test_per_step_log_probs_share_one_advantage_per_sample_and_ratio_one_gives_minus_mean_advantage():
    logp = torch.randn(3, 5)
    adv = torch.tensor([1.0, -0.5, 2.0])
    loss, stats = ppo_clip_loss(logp, logp.clone(), adv)
    assert loss.item() == pytest.approx(-adv.mean().item(), abs=1e-6)
    assert stats["clipfrac"].item() == 0.0 and stats["approx_kl"].item() == 0.0 and stats["ratio_mean"].item() == 1.0


def test_kl_penalty_is_half_the_squared_log_ratio_to_the_reference():
    logp_new = torch.tensor([0.0, 1.0])
    logp_ref = torch.tensor([0.5, -1.0])
    adv = torch.zeros(2)
    loss, stats = ppo_clip_loss(logp_new, logp_new, adv, logp_ref=logp_ref, kl_coef=0.1)
    kl = (0.5 * 0.25 + 0.5 * 4.0) / 2
    assert stats["kl_ref"].item() == pytest.approx(kl)
    assert loss.item() == pytest.approx(0.1 * kl)
    with pytest.raises(ValueError, match="logp_ref"):
        ppo_clip_loss(logp_new, logp_new, adv, kl_coef=0.1)


def test_stat_tracker_uses_the_batch_until_a_prompt_has_min_count_rewards():
    tracker = PerPromptStatTracker(buffer_size=4, min_count=3)
    # Batch 1: "a" has 2 rewards (< 3) and "b" has 1: both use the batch's mean 2 and population std sqrt(2/3).
    adv = tracker.update(["a", "a", "b"], torch.tensor([1.0, 2.0, 3.0]))
    std = math.sqrt(((1 - 2) ** 2 + 0 + (3 - 2) ** 2) / 3) + 1e-6
    assert torch.allclose(adv, torch.tensor([-1.0, 0.0, 1.0]) / std, atol=1e-6)
    # Batch 2: "a" now holds [1, 2, 5] (3 >= min_count): its own mean 8/3 and population std.
    adv = tracker.update(["a", "b"], torch.tensor([5.0, 0.0]))
    held = torch.tensor([1.0, 2.0, 5.0], dtype=torch.float64)
    mean_a, std_a = held.mean().item(), math.sqrt(((held - held.mean()) ** 2).mean().item()) + 1e-6
    # "b" holds [3, 0] (< 3): the batch [5, 0] has mean 2.5 and std 2.5.
    assert adv[0].item() == pytest.approx((5.0 - mean_a) / std_a, rel=1e-5)
    assert adv[1].item() == pytest.approx((0.0 - 2.5) / (2.5 + 1e-6), rel=1e-5)
    # Batch 3: "a"'s FIFO buffer (size 4) drops its oldest reward: [2, 5, 7, 9].
    adv = tracker.update(["a", "a"], torch.tensor([7.0, 9.0]))
    held = torch.tensor([2.0, 5.0, 7.0, 9.0], dtype=torch.float64)
    mean_a, std_a = held.mean().item(), math.sqrt(((held - held.mean()) ** 2).mean().item()) + 1e-6
    assert torch.allclose(adv, (torch.tensor([7.0, 9.0], dtype=torch.float64) - mean_a).float() / std_a, atol=1e-5)
    assert tracker.stats()["a"] == {"mean": pytest.approx(mean_a), "std": pytest.approx(std_a - 1e-6), "count": 4}


def test_ppo_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="differ in shape"):
        ppo_clip_loss(torch.zeros(3), torch.zeros(4), torch.zeros(3))
    with pytest.raises(ValueError, match="advantages"):
        ppo_clip_loss(torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(2))
