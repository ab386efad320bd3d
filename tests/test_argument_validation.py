"""Out-of-range settings of every loss and method are refused when built, with a message naming the argument.

beta = 0 trains nothing, and divides by zero in IPO at the first step; beta < 0 trains toward the losers while
implicit_acc reads as if the winners were learnt. Each case below used to be accepted.
"""

from __future__ import annotations

import pytest
import torch

from lit_pref.backbone import DiffusionBackbone
from lit_pref.losses import (
    BradleyTerryLoss,
    ClippedPPOLoss,
    DenseDPOLoss,
    DiffusionDPOLoss,
    DiscountedSteps,
    diffusion_dpo_loss,
    trajectory_scores,
)
from lit_pref.modules import DenseDiscountedDPO, PPOSettings, TrajectoryDPO, TrajectorySettings
from lit_pref.modules.reward_model import RewardModel

NAN = float("nan")


@pytest.mark.parametrize("kwargs, name", [
    ({"beta": 0.0}, "beta"), ({"beta": -5000.0}, "beta"), ({"beta": NAN}, "beta"), ({"beta": float("inf")}, "beta"),
    ({"loss_type": "sigmoidd"}, "loss_type"),
])
def test_diffusion_dpo_loss_settings(kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name} must"):
        DiffusionDPOLoss(**kwargs)
    errors = [torch.rand(2) for _ in range(4)]
    with pytest.raises(ValueError, match=rf"^{name} must"):
        diffusion_dpo_loss(*errors, **kwargs)


def test_trajectory_scores_beta():
    logp = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="^beta must"):
        trajectory_scores(logp, logp, torch.tensor([0]), beta=0.0, clip=1e-4)


@pytest.mark.parametrize("kwargs, name", [
    ({"beta": 0.0}, "beta"), ({"beta": -10.0}, "beta"), ({"clip": 0.0}, "clip"), ({"clip": NAN}, "clip"),
])
def test_dense_dpo_loss_settings(kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name} must"):
        DenseDPOLoss(**kwargs)


@pytest.mark.parametrize("kwargs, name", [
    ({"eta": 0.0}, "trajectory.eta"), ({"num_sampled_steps": 0}, "trajectory.num_sampled_steps"),
    ({"pairs_per_step": 0}, "trajectory.pairs_per_step"), ({"collect_every": 0}, "trajectory.collect_every"),
])
def test_trajectory_settings(kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name} must"):
        TrajectorySettings(**kwargs)


@pytest.mark.parametrize("kwargs, name", [
    ({"clip_range": 0.0}, "clip_range"), ({"clip_range": -1e-4}, "clip_range"), ({"adv_clip": 0.0}, "adv_clip"),
    ({"kl_coef": -0.1}, "kl_coef"), ({"kl_coef": NAN}, "kl_coef"),
])
def test_clipped_ppo_loss_settings(kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name} must"):
        ClippedPPOLoss(**kwargs)


@pytest.mark.parametrize("kwargs, name", [
    ({"eta": 0.0}, "ppo.eta"),
    ({"step_fraction": 0.0}, "ppo.step_fraction"), ({"step_fraction": 1.5}, "ppo.step_fraction"),
    ({"max_grad_norm": 0.0}, "ppo.max_grad_norm"), ({"num_images": 1}, "ppo.num_images"),
    ({"minibatch_size": 0}, "ppo.minibatch_size"), ({"buffer_size": 0}, "ppo.buffer_size"),
])
def test_ppo_settings(kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name} must"):
        PPOSettings(**kwargs)


@pytest.fixture(scope="module")
def tiny() -> DiffusionBackbone:
    return DiffusionBackbone.tiny()


@pytest.mark.parametrize("gamma", [0.0, -0.5, 1.5, NAN])
def test_dense_discounted_gamma_in_0_1(tiny, gamma):
    with pytest.raises(ValueError, match=r"^gamma must be in \(0, 1\]"):
        DiscountedSteps(gamma)
    with pytest.raises(ValueError, match=r"^gamma must be in \(0, 1\]"):
        DenseDiscountedDPO(tiny, gamma=gamma)


@pytest.mark.parametrize("kwargs, name", [
    ({"ties": "dorp"}, "ties"), ({"timestep_grid": "both"}, "timestep_grid"),
    ({"num_inference_steps": 0}, "num_inference_steps"),
])
def test_trajectory_dpo_settings(tiny, kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name} must"):
        TrajectoryDPO(tiny, **kwargs)


def test_trajectory_dpo_step_weights_need_the_inference_grid(tiny):
    with pytest.raises(ValueError, match=r"^step_weights .* applies to timestep_grid='inference' only"):
        TrajectoryDPO(tiny, step_weights=DiscountedSteps(0.9))


@pytest.mark.parametrize("beta", [0.0, -1.0])
def test_bradley_terry_loss_settings(beta):
    with pytest.raises(ValueError, match="^beta must"):
        BradleyTerryLoss(beta)


@pytest.mark.parametrize("kwargs, name", [({"hidden_dim": -1}, "hidden_dim"), ({"ties": "none"}, "ties")])
def test_reward_model_settings(kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name} must"):
        RewardModel(clip_model="toy", clip_pretrained=None, **kwargs)
