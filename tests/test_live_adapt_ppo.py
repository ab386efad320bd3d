"""Live co-adaptation with PPO (``LivePPOAdapter``): the first step's loss is the clipped objective of the
normalised rewards, the steps move the samples toward what the scorer rewards (and away when it is negated), and a
new session restores the starting LoRA unless it carries over."""

from __future__ import annotations

import pytest
import torch

from lit_pref.backbone import DiffusionBackbone
from lit_pref.rewards import Scorer
from lit_pref.vca.adapt_ppo import LivePPOAdapter
from test_interact import RED

FAST = {"num_images": 8, "num_inference_steps": 4, "early_steps": None}


class Brightness(Scorer):
    """Mean pixel value times ``sign``; remembers the rewards it gave."""

    def __init__(self, sign: float = 1.0) -> None:
        self.sign = sign
        self.given: list[torch.Tensor] = []

    def score(self, images, prompts):
        rewards = self.sign * images.mean(dim=(1, 2, 3))
        self.given.append(rewards.clone())
        return rewards


def _brightness(backbone: DiffusionBackbone) -> float:
    with torch.no_grad():
        images = backbone.sample([RED] * 8, num_inference_steps=4, guidance_scale=4.0,
                                 generator=torch.Generator().manual_seed(123))
    return images.mean().item()


def test_first_step_loss_is_minus_the_mean_clipped_normalised_advantage():
    """Before the first step the policy is the sampler, so every ratio is 1 and the clipped objective of each
    transition is ``-mean(clamp(A, -c, c))`` with ``A = (r - mean r) / (std r + 1e-6)`` (population std)."""
    backbone = DiffusionBackbone(model="toy", lora_rank=4)
    scorer = Brightness()
    adapter = LivePPOAdapter(backbone, scorer, updates=1, adv_clip=0.5, **FAST)
    images = torch.rand(2, 3, 32, 32)
    stats = adapter.adapt(images, chosen=0, prompt=RED)
    (r,) = scorer.given
    advantages = (r - r.mean()) / (r.std(unbiased=False) + 1e-6)
    expected = -advantages.clamp(-0.5, 0.5).mean().item()
    assert stats.updates == 1 and adapter.total_updates == 1
    assert stats.loss == pytest.approx(expected, abs=1e-5)
    assert abs(expected) > 1e-3  # the clamp makes it non-zero: the check is not 0 == 0


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_updates_move_fresh_samples_toward_what_the_scorer_rewards(sign):
    torch.manual_seed(0)
    backbone = DiffusionBackbone(model="toy", lora_rank=8)
    before = _brightness(backbone)
    adapter = LivePPOAdapter(backbone, Brightness(sign), updates=6, lr=1e-2, clip_range=0.2, **FAST)
    adapter.adapt(torch.rand(2, 3, 32, 32), chosen=1, prompt=RED)
    moved = _brightness(backbone) - before
    assert sign * moved > 0.005, moved


def test_new_session_restores_the_starting_lora_unless_it_carries_over():
    backbone = DiffusionBackbone(model="toy", lora_rank=4)
    start = [p.detach().clone() for p in backbone.lora_parameters()]
    for carry_over in (False, True):
        adapter = LivePPOAdapter(backbone, Brightness(), updates=1, lr=1e-2, carry_over=carry_over, **FAST)
        adapter.adapt(torch.rand(2, 3, 32, 32), chosen=0, prompt=RED)
        adapted = [p.detach().clone() for p in backbone.lora_parameters()]
        assert any(not torch.equal(a, s) for a, s in zip(adapted, start))
        adapter.new_session()
        expected = adapted if carry_over else start
        assert all(torch.equal(p, e) for p, e in zip(backbone.lora_parameters(), expected))
        assert adapter.total_updates == 0
        adapter.reset()


@pytest.mark.parametrize("kwargs, message", [({"num_images": 1}, "num_images"), ({"eta": 0.0}, "eta"),
                                             ({"early_steps": 0}, "early_steps"), ({"updates": 0}, "updates")])
def test_bad_ppo_adapter_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LivePPOAdapter(DiffusionBackbone(model="toy", lora_rank=4), Brightness(), **kwargs)
