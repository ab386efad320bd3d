"""Live co-adaptation for the interactive tool: after each choice, a few updates of the LoRA, so the next round is
drawn from the adapted model. :class:`SessionAdapter` keeps what every adapter shares (the starting LoRA, the
optimizer, sessions); :class:`LiveAdapter` makes Diffusion-DPO steps on the round's pairs (the chosen image ≻ each
unchosen one, captioned with the round's prompt); :class:`~lit_pref.vca.adapt_ppo.LivePPOAdapter` makes PPO steps
with a reward model's score."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_pref.backbone import DiffusionBackbone
from lit_pref.losses.dpo import diffusion_dpo_loss
from lit_pref.losses.step_weights import check_timestep_range, timestep_bounds

__all__ = ["AdaptStats", "LiveAdapter", "SessionAdapter"]


@dataclass
class AdaptStats:
    """What one adaptation did.

    Attributes:
        updates: Optimizer steps made (this round).
        seconds: Wall time of the round's updates.
        loss: Mean loss over the updates.
    """

    updates: int
    seconds: float
    loss: float


class SessionAdapter(ABC):
    """Adapts a backbone's LoRA to one person, round by round: ``updates`` AdamW steps after each choice
    (:meth:`adapt`; what a step trains on is the subclass's). The LoRA carries over from round to round, and the
    AdamW state with it. :meth:`reset` restores the LoRA weights the adapter started from and clears the optimizer;
    :meth:`new_session` does the same at the start of a dialogue, except that with ``carry_over`` the LoRA keeps what
    the earlier sessions taught it (one person's dialogues in a row, as ``interact --lora <the last session's LoRA>``).

    Args:
        backbone: The model whose LoRA adapts (in place).
        updates: Optimizer steps after each choice.
        lr: AdamW learning rate.
        max_grad_norm: Gradient-norm clip of each step.
        seed: Seed of the adapter's random draws.
        carry_over: A new session (:meth:`new_session`) keeps the adapted LoRA instead of restoring the starting one,
            so the tool goes on learning one person across their dialogues.
    """

    def __init__(self, backbone: DiffusionBackbone, updates: int, lr: float, max_grad_norm: float = 1.0,
                 seed: int = 0, carry_over: bool = False) -> None:
        if updates < 1:
            raise ValueError(f"updates must be at least 1, got {updates}")
        self.backbone = backbone
        self.updates = updates
        self.lr = lr
        self.max_grad_norm = max_grad_norm
        self.carry_over = carry_over
        self.parameters = list(backbone.lora_parameters())
        self.initial = [p.detach().clone() for p in self.parameters]
        self.generator = torch.Generator().manual_seed(seed)
        self._forget_session()

    def reset(self) -> None:
        """Back to the starting LoRA weights, with a fresh optimizer and update count."""
        with torch.no_grad():
            for p, start in zip(self.parameters, self.initial):
                p.copy_(start)
        self._forget_session()

    def new_session(self) -> None:
        """A new dialogue: a fresh optimizer and update count; the starting LoRA unless ``carry_over``."""
        if self.carry_over:
            self._forget_session()
        else:
            self.reset()

    def _forget_session(self) -> None:
        self.optimizer = torch.optim.AdamW(self.parameters, lr=self.lr)
        self.total_updates = 0

    def adapt(self, images: Tensor, chosen: int, prompt: str) -> AdaptStats:
        """``updates`` optimizer steps after one round.

        Args:
            images: The round's images ``[K, 3, H, W]`` in ``[0, 1]`` (K >= 2).
            chosen: Index of the chosen image.
            prompt: The prompt the images were generated from.
        """
        k = images.shape[0]
        if images.ndim != 4 or k < 2 or not 0 <= chosen < k:
            raise ValueError(f"need [K, 3, H, W] images with K >= 2 and chosen in 0..K-1, got {tuple(images.shape)}, "
                             f"{chosen}")
        start = time.perf_counter()
        was_training = self.backbone.training
        self.backbone.train()
        try:
            with torch.enable_grad():  # also when called under no_grad
                losses = self._steps(images, chosen, prompt)
        finally:
            self.optimizer.zero_grad()
            self.backbone.train(was_training)
        self.total_updates += self.updates
        return AdaptStats(self.updates, time.perf_counter() - start, sum(losses) / len(losses))

    def _step(self, loss: Tensor) -> float:
        """One clipped AdamW step on ``loss``; its value."""
        self.optimizer.zero_grad()
        loss.backward()
        self._apply_gradients()
        return float(loss.detach())

    def _apply_gradients(self) -> None:
        """Clip the accumulated gradients to ``max_grad_norm`` and make one AdamW step."""
        torch.nn.utils.clip_grad_norm_(self.parameters, self.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad()

    @abstractmethod
    def _steps(self, images: Tensor, chosen: int, prompt: str) -> list[float]:
        """The round's ``updates`` optimizer steps (the backbone in train mode, grad enabled); their losses."""


class LiveAdapter(SessionAdapter):
    """Adapts a backbone's LoRA to one person, round by round, with Diffusion-DPO (Wallace et al. 2023).

    :meth:`adapt` takes a round's K images and the chosen index and makes ``updates`` AdamW steps, each on the K - 1
    pairs (chosen ≻ unchosen) of the latest ``history`` rounds of the session, with a fresh timestep per pair from
    ``timestep_range`` and one noise shared by winner and loser; the reference is the backbone with its adapters off.
    The LoRA carries over from round to round; the AdamW state too, unless ``fresh_optimizer`` (then every round
    starts with zero moments, so the earlier rounds' direction does not drive this round's steps). :meth:`reset` and
    :meth:`new_session` also forget the session's rounds (see :class:`SessionAdapter`).

    The defaults are the toy world's measured ones: the noisiest 40% of the timesteps (where the layout is decided)
    and lr 3e-3 raise the next rounds' centredness a little without costing fidelity; lr 1e-2, or 8 updates a round,
    break the attributes; over the whole timestep range the samples barely move.

    Args:
        backbone: The model whose LoRA adapts (in place).
        updates: Optimizer steps after each choice.
        lr: AdamW learning rate.
        beta: Diffusion-DPO beta (5000 in the paper).
        max_grad_norm: Gradient-norm clip of each step.
        timestep_range: Fractions ``(low, high)`` of the training timesteps the steps draw from, ``0 <= low < high
            <= 1``.
        history: Rounds of the session (the latest ones) whose pairs every step trains on, or ``None`` for all of
            them; the cost of a step grows with it (``history * (K - 1)`` pairs).
        seed: Seed of the latents drawn from the VAE posterior, the timesteps and the noise.
        fresh_optimizer: Start every round's steps from a fresh AdamW state (the LoRA still carries over).
        carry_over: A new session (:meth:`new_session`) keeps the adapted LoRA instead of restoring the starting one,
            so the tool goes on learning one person across their dialogues.
    """

    def __init__(self, backbone: DiffusionBackbone, updates: int = 4, lr: float = 3e-3, beta: float = 5000.0,
                 max_grad_norm: float = 1.0, timestep_range: tuple[float, float] = (0.6, 1.0),
                 history: int | None = 4, seed: int = 0, fresh_optimizer: bool = False,
                 carry_over: bool = False) -> None:
        self.timestep_range = check_timestep_range(timestep_range)
        if history is not None and history < 1:
            raise ValueError(f"history must be at least 1, got {history}")
        self.history = history
        self.fresh_optimizer = fresh_optimizer
        self.beta = beta
        super().__init__(backbone, updates, lr, max_grad_norm, seed, carry_over)

    def _forget_session(self) -> None:
        super()._forget_session()
        self.rounds: list[tuple[Tensor, Tensor, list[str]]] = []  # the session's (winners, losers, prompts), newest last

    def _errors(self, noisy: Tensor, noise: Tensor, latents: Tensor, timesteps: Tensor, cond: dict) -> Tensor:
        pred = self.backbone.predict(noisy, timesteps, cond).float()
        target = self.backbone.training_target(latents, noise, timesteps).float()
        return F.mse_loss(pred, target, reduction="none").mean(dim=(1, 2, 3))

    def _steps(self, images: Tensor, chosen: int, prompt: str) -> list[float]:
        k = images.shape[0]
        backbone = self.backbone
        device = backbone.device
        latents = backbone.encode_images(images.to(device) * 2 - 1, generator=self.generator).detach()
        losers = torch.tensor([j for j in range(k) if j != chosen], device=device)
        self.rounds = [*self.rounds, (latents[chosen].expand(len(losers), *latents.shape[1:]), latents[losers],
                                      [prompt] * len(losers))][-(self.history or 0):]
        lat_w = torch.cat([w for w, _, _ in self.rounds])
        lat_l = torch.cat([l for _, l, _ in self.rounds])
        with torch.no_grad():
            cond = backbone.encode_prompts([p for _, _, prompts in self.rounds for p in prompts] * 2)
        if self.fresh_optimizer:
            self.optimizer = torch.optim.AdamW(self.parameters, lr=self.lr)
        losses = []
        num_train = backbone.noise_scheduler.config.num_train_timesteps
        low, high = timestep_bounds(self.timestep_range, num_train)
        for _ in range(self.updates):
            t = torch.randint(low, high, (len(lat_w),), generator=self.generator).to(device)
            noise = torch.randn(lat_w.shape, generator=self.generator).to(device, lat_w.dtype)
            both, t2, noise2 = torch.cat([lat_w, lat_l]), torch.cat([t, t]), torch.cat([noise, noise])
            noisy = backbone.noise_scheduler.add_noise(both, noise2, t2)
            model_err = self._errors(noisy, noise2, both, t2, cond)
            with backbone.reference_forward():
                ref_err = self._errors(noisy, noise2, both, t2, cond)
            n = len(lat_w)
            loss, _ = diffusion_dpo_loss(model_err[:n], model_err[n:], ref_err[:n], ref_err[n:], self.beta)
            losses.append(self._step(loss))
        return losses
