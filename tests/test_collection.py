"""OnlineTrajectoryDPO at the reference's scale: chunked collection from the whole prompt set, per-comparison step
indices, micro-batched updates and ListMLE comparisons (lit_pref.modules.collection)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lit_pref.backbone import DiffusionBackbone
from lit_pref.losses import DenseDPOLoss
from lit_pref.modules import DenseDiscountedDPO, OnlineTrajectoryDPO, TrajectorySettings
from lit_pref.modules import collection
from lit_pref.modules.collection import cycled_prompts, draw_comparisons
from lit_pref.modules.replay import ReplayBuffer, TrajectoryGroup

PROMPTS = ["a small red circle on a white background", "a large blue square on a black background",
           "a large green triangle on a white background"]
SETTINGS = TrajectorySettings(collect_every=3, rollouts_per_prompt=4, kept_per_prompt=3, buffer_capacity=16,
                              pairs_per_step=4, num_sampled_steps=2, prompts_per_collection=4)


class Brightness:
    """Mean pixel value: continuous rewards, so groups rarely tie."""

    def score(self, images, prompts):
        return images.mean(dim=(1, 2, 3))


def model(cls=DenseDiscountedDPO, gamma: float = 0.9, **settings):
    torch.manual_seed(0)
    backbone = DiffusionBackbone(model="toy")
    with torch.no_grad():
        for name, p in backbone.unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    extra = {"gamma": gamma} if cls is DenseDiscountedDPO else {}
    return cls(backbone, scorer=Brightness(), loss=DenseDPOLoss(beta=10.0, clip=1e-2), num_inference_steps=5,
               guidance_scale=4.0,
               trajectory=dataclasses.replace(SETTINGS, **settings), seed=3, **extra)


def test_chunked_collection_equals_one_big_collection_draw_for_draw():
    big, chunked = model(sample_batch_size=None), model(sample_batch_size=3)
    sizes = []
    sample = chunked.backbone.sample
    chunked.backbone.sample = lambda texts, **kw: sizes.append(len(texts)) or sample(texts, **kw)
    stats_big, stats_chunked = big.collect(PROMPTS), chunked.collect(PROMPTS)
    assert sizes == [3, 3, 3, 3, 3, 1]  # 4 prompts x 4 rollouts, 3 chains at a time
    assert len(big.buffer) == len(chunked.buffer) == 4  # prompts_per_collection groups from the 3-prompt set
    assert stats_big["reward_mean"] == pytest.approx(stats_chunked["reward_mean"], abs=1e-6)
    for a, b in zip(big.buffer.groups, chunked.buffer.groups):
        assert a.prompt == b.prompt and a.latents.device.type == "cpu"
        # the same draws; batch composition changes only float rounding (measured: at most 1.1e-5)
        torch.testing.assert_close(a.latents, b.latents, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(a.log_probs, b.log_probs, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(a.rewards, b.rewards, atol=1e-5, rtol=0)
        assert (a.rewards[:-1] >= a.rewards[1:]).all()  # kept chains best first
    # the groups' prompts: the first 4 of the shuffled passes over the whole set (seed 3, rank 0)
    assert [g.prompt for g in chunked.buffer.groups] == cycled_prompts(PROMPTS, collection._seed_state(3, 0), 0, 4)


def test_cycled_prompts_are_shuffled_passes_over_the_whole_set():
    drawn = cycled_prompts(PROMPTS, 7, 0, 9)
    assert [sorted(drawn[i:i + 3]) for i in (0, 3, 6)] == [sorted(PROMPTS)] * 3  # each pass serves every prompt once
    assert cycled_prompts(PROMPTS, 7, 0, 4) + cycled_prompts(PROMPTS, 7, 4, 5) == drawn  # resumable by position
    assert cycled_prompts(["one"], 7, 10, 3) == ["one"] * 3  # single prompt: the same prompt every time


@pytest.mark.parametrize("num_compared", [2, 3])
def test_micro_batched_update_equals_the_whole_batch_update(num_compared):
    whole, micro = model(num_compared=num_compared), model(num_compared=num_compared, micro_batch_size=1)
    whole.collect(PROMPTS)
    micro.buffer = whole.buffer  # the same chains for both

    def grads(m):
        torch.manual_seed(11)  # the same comparisons and step indices
        loss, stats = collection.update(m)
        loss.backward()
        return stats, [p.grad.clone() for p in m.trainable_parameters()]

    (s1, g1), (s2, g2) = grads(whole), grads(micro)
    assert s1["count"] == s2["count"] == 4
    assert float(s1["loss"]) != pytest.approx(0.6931, abs=1e-4)  # a perturbed LoRA: not the trivial loss
    assert float(s1["loss"]) == pytest.approx(float(s2["loss"]), rel=1e-5)
    assert float(s1["implicit_acc"]) == pytest.approx(float(s2["implicit_acc"]))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-4)
    assert any(g.abs().sum() > 0 for g in g1)


def test_each_comparison_draws_its_own_step_indices(monkeypatch):
    m = model(num_sampled_steps=1, pairs_per_step=16, micro_batch_size=None)
    m.collect(PROMPTS)
    seen = []
    real = collection.chain_log_probs
    monkeypatch.setattr(collection, "chain_log_probs", lambda *a: seen.append(a[4].clone()) or real(*a))
    torch.manual_seed(0)
    collection.update(m)
    (steps,) = seen
    assert steps.shape == (32, 1)  # 16 winners, then their 16 losers, one step each
    assert torch.equal(steps[:16], steps[16:])  # a comparison's trajectories share its steps
    assert len(steps[:16].unique()) > 1  # but comparisons draw their own


def test_comparisons_rank_distinct_rewards_best_first():
    buffer = ReplayBuffer(4)
    buffer.add(TrajectoryGroup("tied", torch.zeros(3, 2, 1), torch.zeros(3, 1), torch.tensor([1.0, 1.0, 0.0]),
                               torch.tensor([1]), 0))
    buffer.add(TrajectoryGroup("ok", torch.zeros(4, 2, 1), torch.zeros(4, 1), torch.tensor([0.2, 0.9, 0.5, 0.9]),
                               torch.tensor([1]), 0))
    triples = draw_comparisons(buffer, 30, 3, torch.Generator().manual_seed(0))
    assert len(triples) == 30 and all(g.prompt == "ok" for g, _ in triples)  # "tied" has only 2 distinct rewards
    for g, idx in triples:
        assert len(set(idx)) == 3 and g.rewards[idx].tolist() == sorted(g.rewards[idx].tolist(), reverse=True)
        assert len(set(g.rewards[idx].tolist())) == 3  # no tie inside a comparison
    assert draw_comparisons(buffer, 5, 4) == []  # no group has 4 distinct rewards
    with pytest.raises(ValueError, match="num_compared"):
        model(num_compared=4)  # more than kept_per_prompt


def test_gamma_one_still_equals_uniform_steps_with_chunks_micro_batches_and_listmle():
    settings = dict(sample_batch_size=5, micro_batch_size=3, num_compared=3)

    def loss_and_grads(m):
        torch.manual_seed(123)
        loss = m.training_step({"prompts": PROMPTS}, 0)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in m.trainable_parameters()]

    (l1, g1) = loss_and_grads(model(DenseDiscountedDPO, gamma=1.0, **settings))
    (l2, g2) = loss_and_grads(model(OnlineTrajectoryDPO, **settings))
    assert torch.equal(l1, l2) and all(torch.equal(a, b) for a, b in zip(g1, g2))
    assert any(g.abs().sum() > 0 for g in g1)
