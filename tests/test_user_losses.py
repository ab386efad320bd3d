"""Every loss family plugs in by config: a user's loss of each family, defined here (outside the package) and named
by ``class_path``, trains a tiny model with the real Trainer; it is called, its statistics are logged, and its
gradient reaches the LoRA (or the reward head)."""

from __future__ import annotations

from typing import Any

import torch
from jsonargparse import ArgumentParser
from lightning.pytorch import Callback, LightningModule, Trainer
from torch.utils.data import DataLoader

from lit_pref.datamodules import PromptDataModule
from lit_pref.losses import PairLoss, PPOLoss, RewardLoss, TrajectoryLoss
from lit_pref.rewards import Scorer

TINY = {"class_path": "lit_pref.backbone.DiffusionBackbone", "init_args": {"model": "tiny"}}
PROMPTS = ["a photo of a cat", "a red car"]


class Brightness(Scorer):
    """A user's reward: the mean pixel value."""

    def score(self, images, prompts):
        return images.mean(dim=(1, 2, 3))


class GapPairLoss(PairLoss):
    """A pair loss: push the winner's denoising error below the loser's."""

    calls = 0

    def __call__(self, model_err_w, model_err_l, ref_err_w, ref_err_l):
        GapPairLoss.calls += 1
        gap = (model_err_w - model_err_l).mean()
        return gap, {"user_gap": gap.detach()}


class MarginTrajectoryLoss(TrajectoryLoss):
    """A trajectory loss: raise the best chain's log-probs over the worst's, by ``scale``."""

    calls = 0

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = scale

    def __call__(self, logp_theta, logp_init):
        MarginTrajectoryLoss.calls += 1
        assert logp_theta.ndim == 3 and logp_theta.shape == logp_init.shape  # (comparisons, chains, steps)
        margin = (logp_theta[:, 0] - logp_theta[:, -1]).mean()
        return -self.scale * margin, {"user_margin": margin.detach()}


class ReinforceLoss(PPOLoss):
    """A PPO-family loss: plain REINFORCE on the stored steps, no ratio and no clip."""

    calls = 0

    def __call__(self, logp_new, logp_old, advantages, logp_ref=None):
        ReinforceLoss.calls += 1
        assert logp_ref is None  # needs_reference() is False: the reference is not run
        loss = -(advantages.to(logp_new.dtype) * logp_new).mean()
        return loss, {"user_reinforce": loss.detach()}


class HingeRewardLoss(RewardLoss):
    """A reward-model loss: a margin hinge on the score difference."""

    calls = 0

    def __call__(self, scores_w, scores_l):
        HingeRewardLoss.calls += 1
        loss = torch.relu(1.0 - (scores_w - scores_l)).mean()
        return loss, {"user_hinge": loss.detach()}


class GradientProbe(Callback):
    """Records, before every optimizer step, the gradient norm of the trainable parameters named ``part``."""

    def __init__(self, part: str) -> None:
        self.part = part
        self.norms: list[float] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        grads = [p.grad for n, p in pl_module.named_parameters() if self.part in n and p.grad is not None]
        self.norms.append(float(torch.stack([g.norm() for g in grads]).norm()) if grads else 0.0)


def build(model: dict[str, Any]) -> LightningModule:
    """The module a config's ``model:`` block names, built as LightningCLI builds it."""
    parser = ArgumentParser()
    parser.add_subclass_arguments(LightningModule, "model")
    return parser.instantiate(parser.parse_object({"model": model})).model


def fit(model: LightningModule, data, part: str = "lora_", steps: int = 2) -> tuple[Trainer, GradientProbe]:
    probe = GradientProbe(part)
    trainer = Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, callbacks=[probe])
    if isinstance(data, list):
        trainer.fit(model, train_dataloaders=DataLoader(data, batch_size=None))
    else:
        trainer.fit(model, data)
    return trainer, probe


def pair_batches(n: int = 2, size: int = 32) -> list[dict[str, Any]]:
    gen = torch.Generator().manual_seed(0)
    return [{"images_0": torch.rand(2, 3, size, size, generator=gen) * 2 - 1,
             "images_1": torch.rand(2, 3, size, size, generator=gen) * 2 - 1,
             "label_0": torch.tensor([1.0, 0.0]), "captions": ["a cat", "a dog"]} for _ in range(n)]


def check(trainer: Trainer, probe: GradientProbe, loss_cls: type, stat: str, steps: int = 2) -> None:
    assert loss_cls.calls >= steps  # the user's loss was called (at least once an update)
    assert f"train/{stat}" in trainer.callback_metrics  # and its statistics were logged
    assert len(probe.norms) == steps and all(norm > 0 for norm in probe.norms)  # its gradient reached the weights


def test_user_pair_loss_trains_the_lora_of_trajectory_dpo():
    torch.manual_seed(0)
    model = build({"class_path": "lit_pref.modules.TrajectoryDPO",
                   "init_args": {"backbone": TINY, "loss": {"class_path": "test_user_losses.GapPairLoss"}}})
    assert isinstance(model.loss, GapPairLoss)
    trainer, probe = fit(model, pair_batches())
    check(trainer, probe, GapPairLoss, "user_gap")


def test_user_trajectory_loss_trains_the_lora_of_the_online_module():
    torch.manual_seed(0)
    model = build({"class_path": "lit_pref.modules.DenseDiscountedDPO", "init_args": {
        "backbone": TINY, "scorer": {"class_path": "test_user_losses.Brightness"},
        "loss": {"class_path": "test_user_losses.MarginTrajectoryLoss", "init_args": {"scale": 2.0}},
        "num_inference_steps": 3, "guidance_scale": 2.0,
        "trajectory": {"collect_every": 5, "rollouts_per_prompt": 3, "kept_per_prompt": 3, "pairs_per_step": 2,
                       "num_sampled_steps": 2, "num_compared": 3}}})
    assert isinstance(model.loss, MarginTrajectoryLoss) and model.loss.scale == 2.0
    trainer, probe = fit(model, PromptDataModule(prompts=PROMPTS, batch_size=2))
    check(trainer, probe, MarginTrajectoryLoss, "user_margin")


def test_user_ppo_loss_trains_the_lora_of_ddpo():
    torch.manual_seed(0)
    model = build({"class_path": "lit_pref.modules.DDPO", "init_args": {
        "backbone": TINY, "scorer": {"class_path": "test_user_losses.Brightness"},
        "loss": {"class_path": "test_user_losses.ReinforceLoss"}, "num_inference_steps": 3, "guidance_scale": 2.0,
        "ppo": {"num_images": 2, "minibatch_size": 4, "min_count": 2}}})
    assert isinstance(model.loss, ReinforceLoss)
    trainer, probe = fit(model, PromptDataModule(prompts=PROMPTS, batch_size=2))
    check(trainer, probe, ReinforceLoss, "user_reinforce")


def test_user_reward_loss_trains_the_reward_head():
    torch.manual_seed(0)
    model = build({"class_path": "lit_pref.modules.RewardModel", "init_args": {
        "clip_model": "toy", "clip_pretrained": None, "hidden_dim": 8,
        "loss": {"class_path": "test_user_losses.HingeRewardLoss"}}})
    assert isinstance(model.loss, HingeRewardLoss)
    model.on_fit_end = lambda: None  # no export: the loss is the point
    trainer, probe = fit(model, pair_batches(size=64), part="head.")
    check(trainer, probe, HingeRewardLoss, "user_hinge")
