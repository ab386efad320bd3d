"""The VCA-style reward terms and their round schedule, by hand on small embeddings (docs/methods.md §4)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lit_pref.toy import ToyGroundTruthReward, render, sample_scene
from lit_pref.rewards import RoundWeightSchedule, VCAReward, consistency_reward, diversity_reward, mutual_information_reward, total_reward


def test_diversity_is_one_minus_the_mean_cosine_to_the_other_images():
    # Cosines: c(0,1) = 0, c(0,2) = 1, c(1,2) = 0 (the third is the first, scaled: norms do not matter).
    emb = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [3.0, 0.0]]])
    div = diversity_reward(emb)
    assert torch.allclose(div, torch.tensor([[1 - (0 + 1) / 2, 1 - (0 + 0) / 2, 1 - (1 + 0) / 2]]))
    # Its mean over the group is 1 - the mean pairwise cosine (1/3).
    assert div.mean().item() == pytest.approx(1 - 1 / 3)
    identical = torch.randn(2, 1, 8).expand(2, 4, 8)  # 4 copies of one image per group
    assert torch.allclose(diversity_reward(identical), torch.zeros(2, 4), atol=1e-6)
    assert torch.equal(diversity_reward(torch.randn(3, 1, 8)), torch.zeros(3, 1))


def test_consistency_is_the_cosine_to_the_previous_choice_and_one_at_round_one():
    emb = torch.tensor([[[2.0, 0.0], [0.0, 1.0], [3.0, 4.0]]])
    assert torch.equal(consistency_reward(emb, None), torch.ones(1, 3))
    cons = consistency_reward(emb, torch.tensor([[5.0, 0.0]]))
    assert torch.allclose(cons, torch.tensor([[1.0, 0.0, 0.6]]))
    with pytest.raises(ValueError, match="previous"):
        consistency_reward(emb, torch.zeros(2, 2))


def test_mutual_information_is_the_infonce_bound():
    text = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    images = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    own = torch.tensor([0, 1])
    mi = mutual_information_reward(images, text, own, logit_scale=10.0)
    expected_0 = 10.0 - math.log(math.exp(10.0) + math.exp(0.0)) + math.log(2)
    expected_1 = 8.0 - math.log(math.exp(6.0) + math.exp(8.0)) + math.log(2)
    assert mi.tolist() == pytest.approx([expected_0, expected_1], rel=1e-6)
    # An image equally similar to every prompt carries no information; one prompt never does.
    assert mutual_information_reward(torch.tensor([[1.0, 1.0]]), text, torch.tensor([1]), 5.0).item() == \
        pytest.approx(0.0, abs=1e-6)
    assert mutual_information_reward(images, text[:1], torch.zeros(2, dtype=torch.long), 5.0).tolist() == \
        pytest.approx([0.0, 0.0], abs=1e-6)


def test_default_schedule_decays_diversity_and_grows_consistency_normalised():
    schedule = RoundWeightSchedule(num_rounds=5)
    w1, w3, w5, w9 = (schedule.weights(t) for t in (1, 3, 5, 9))
    # Round 1: (div, cons, mi, pref) = (1, 0, 1, 1) / 3; round 3 halfway: (0.5, 0.5, 1, 1) / 3; round 5 on: (0, 1, 1, 1) / 3.
    assert w1 == pytest.approx({"diversity": 1 / 3, "consistency": 0.0, "mutual_information": 1 / 3, "preference": 1 / 3})
    assert w3 == pytest.approx({"diversity": 1 / 6, "consistency": 1 / 6, "mutual_information": 1 / 3, "preference": 1 / 3})
    assert w5 == w9 == pytest.approx({"diversity": 0.0, "consistency": 1 / 3, "mutual_information": 1 / 3,
                                      "preference": 1 / 3})
    for w in (w1, w3, w5):
        assert sum(w.values()) == pytest.approx(1.0)
    custom = RoundWeightSchedule(num_rounds=3, diversity=(2.0, 2.0), consistency=(0.0, 2.0), mutual_information=(0, 0),
                                 preference=(0, 0))
    assert custom.weights(2) == pytest.approx({"diversity": 2 / 3, "consistency": 1 / 3, "mutual_information": 0.0,
                                               "preference": 0.0})
    with pytest.raises(ValueError, match="zero"):
        RoundWeightSchedule(diversity=(0, 0), consistency=(0, 0), mutual_information=(0, 0), preference=(0, 0))


def test_total_is_the_weighted_sum():
    terms = {"diversity": torch.tensor([1.0, 2.0]), "consistency": torch.tensor([0.5, 0.0]),
             "mutual_information": torch.tensor([0.0, 1.0]), "preference": torch.tensor([4.0, 4.0])}
    weights = {"diversity": 0.5, "consistency": 0.25, "mutual_information": 0.25, "preference": 0.0}
    assert total_reward(terms, weights).tolist() == pytest.approx([0.5 + 0.125, 1.0 + 0.25])


def test_vca_reward_on_the_toy_clip_matches_the_pure_functions():
    rng = np.random.default_rng(0)
    scenes = [sample_scene(rng) for _ in range(4)]
    images = torch.stack([torch.from_numpy(render(s)).permute(2, 0, 1).float() / 255 for s in scenes]).view(2, 2, 3, 32, 32)
    prompts = [scenes[0].caption, scenes[2].caption]
    preference = ToyGroundTruthReward()
    reward = VCAReward(preference, RoundWeightSchedule(num_rounds=3), clip_model="toy")
    total, terms, weights = reward(images, prompts, round=1)
    emb = reward.embed_images(images.flatten(0, 1))
    assert torch.allclose(terms["diversity"], diversity_reward(emb.view(2, 2, -1)), atol=1e-6)
    assert torch.equal(terms["consistency"], torch.ones(2, 2))
    texts = reward.embed_texts(prompts)
    mi = mutual_information_reward(emb, texts, torch.tensor([0, 0, 1, 1]), reward.logit_scale)
    assert torch.allclose(terms["mutual_information"].flatten(), mi, atol=1e-6)
    assert reward.logit_scale == pytest.approx(reward.clip.logit_scale.exp().item())
    pref = preference.score(images.flatten(0, 1), [prompts[0]] * 2 + [prompts[1]] * 2)
    assert torch.allclose(terms["preference"].flatten(), pref)
    assert torch.allclose(total, total_reward(terms, weights))
    # Round 2 with the first image of each prompt as the previous choice: its own consistency is 1.
    _, terms2, weights2 = reward(images, prompts, round=2, previous=emb[[0, 2]])
    assert terms2["consistency"][:, 0].tolist() == pytest.approx([1.0, 1.0], abs=1e-5)
    assert weights2["diversity"] < weights["diversity"] and weights2["consistency"] > weights["consistency"]
    same = images[:, :1].expand(2, 3, 3, 32, 32)
    assert torch.allclose(reward(same, prompts, round=1)[1]["diversity"], torch.zeros(2, 3), atol=1e-5)
