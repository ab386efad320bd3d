"""VCAPPO: Visual Co-Adaptation (arXiv 2504.18204), multi-round dialogues with PPO on the LoRA weights
(docs/methods.md §4)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from PIL import Image
from torch import Tensor

from lit_pref.formats.dialogues import Dialogue, Turn
from lit_pref.backbone import DiffusionBackbone
from lit_pref.losses import PPOLoss
from lit_pref.modules.ppo import PPOModule, PPOSettings
from lit_pref.rewards import Scorer
from lit_pref.rewards.vca import TERMS, VCAReward
from lit_pref.vca.dialogue_users import DialogueUsers
from lit_pref.vca.refiner import PromptRefiner, TemplateRefiner


class VCAPPO(PPOModule):
    """Multi-round co-adaptation: each batch of dialogues is played for ``num_rounds`` rounds, with a PPO update
    of the LoRA weights after every round.

    Batches are ``list[Dialogue]`` from ``lit_pref.datamodules.DialogueDataModule``. Two ways to use them:

    - **replay** (``users=None``, no simulated user): each recorded dialogue's prompts P_1..P_T (the turns'
      ``prompt`` s, as the refiner produced them for that person; P_1 falls back to ``initial_prompt``, a later
      missing prompt to the one before) are replayed, at most ``num_rounds`` of them; a batch's round t holds the
      dialogues that recorded a turn t. The consistency anchor of round t is the image the person chose in round
      t-1 (its recorded file, resized to the generated size) where the dialogue recorded ``images`` and ``chosen``,
      else the round t-1 image that R_pref ranks highest. Steps 1-3 below, no choosing, feedback or refining;
      logged as below without the user metrics (``satisfied``, ``hidden_reward``, ``rounds_to_target``,
      ``success_rate``), plus ``train/recorded_anchor`` (share of round t >= 2's dialogues anchored on a recorded
      image).
    - **play** (``users`` given): of a dialogue only its initial prompt and its user (made by ``users``, who knows
      what the dialogue's user wanted) are used: the dialogue is played live.

    Round t of a batch of G dialogues:

    1. sample K images of each dialogue's prompt P_t from the policy (DDIM, eta > 0, guidance), keeping every
       latent and the log-prob of every step;
    2. R_total(t) with ``reward`` (diversity, consistency with the image chosen in round t-1, mutual information,
       preference; weights of round t), advantages from a per-prompt stat tracker;
    3. PPO: ``inner_epochs`` passes over the round's samples in minibatches, the clipped loss over the stored
       steps (their log-probs recomputed under the current weights), one optimizer step per minibatch;
    4. each user chooses one of its K images (carried into round t+1's consistency term) and writes feedback,
       which ``refiner`` turns into P_{t+1}.

    Logged once per round (at the current optimizer step): ``train/round``, ``train/reward_total``,
    ``train/reward_<term>``, ``train/weight_<term>``, ``train/loss``, ``train/approx_kl``, ``train/clipfrac``,
    ``train/ratio_mean``, ``train/satisfied`` (share of users satisfied with their chosen image), ``train/lr``,
    ``train/hidden_reward`` (with ``hidden_reward``: its score of the round's images against each user's
    ``target_caption``); once per batch ``train/rounds_to_target`` (the first round whose chosen image satisfied
    the user, ``num_rounds + 1`` when none did) and ``train/success_rate``. Validation dialogues are played the
    same way without updates and logged as ``val/*``. Uses manual optimization; the stat tracker is not
    checkpointed.
    """

    def __init__(
        self,
        backbone: DiffusionBackbone,
        reward: VCAReward,
        users: DialogueUsers | None = None,
        refiner: PromptRefiner | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        num_rounds: int = 5,
        num_inference_steps: int = 50,
        guidance_scale: float = 5.0,
        ppo: PPOSettings = PPOSettings(),
        loss: PPOLoss | None = None,
        hidden_reward: Scorer | None = None,
    ) -> None:
        """
        Args:
            backbone: The diffusion model with LoRA adapters (the policy).
            reward: The VCA-style reward terms and their weight schedule (``lit_pref.rewards.VCAReward``).
            users: Makes each dialogue's simulated user (``lit_pref.toy.dialogue_users.ToyDialogueUsers`` on the
                toy world, ``ScorerDialogueUsers`` for real prompts); ``None`` replays the recorded dialogues.
            refiner: Turns (P_t, feedback, history) into P_{t+1} (play only; ``None``: ``TemplateRefiner()``).
            optimizer: Optimizer factory, called with the LoRA parameters only.
            scheduler: Learning-rate scheduler factory, stepped every optimizer step; ``None`` = constant.
            num_rounds: T, rounds played per dialogue.
            num_inference_steps: DDIM steps of every sampled chain (ddpo: 50).
            guidance_scale: Classifier-free guidance scale of the sampled chains (ddpo: 5.0).
            ppo: Policy-gradient settings.
            loss: The policy-gradient loss on each stored step; any ``lit_pref.losses.PPOLoss`` (``None``:
                ``ClippedPPOLoss()``, DDPO's clipped PPO objective).
            hidden_reward: A ground-truth scorer to log (not trained on), scored against each user's
                ``target_caption`` (``lit_pref.toy.ToyGroundTruthReward`` on the toy world); play only.
        """
        super().__init__(backbone, optimizer, scheduler, num_inference_steps, guidance_scale, ppo, loss)
        if num_rounds < 1:
            raise ValueError(f"num_rounds must be >= 1, got {num_rounds}")
        if users is None and hidden_reward is not None:
            raise ValueError("hidden_reward is scored against simulated users' targets: give users, or no hidden_reward")
        self.reward = reward  # plain attributes, never registered submodules
        self.users = users
        self.refiner = refiner if refiner is not None else TemplateRefiner()
        self.hidden_reward = hidden_reward
        self.num_rounds = num_rounds

    # ------------------------------------------------------------------ dialogues
    def play(self, dialogues: list[Dialogue], update: bool, stage: str = "train") -> dict[str, Any]:
        """Play ``num_rounds`` rounds of each dialogue (with PPO updates when ``update``) and log every round.

        Returns:
            ``{"rounds": [metrics of each round], "rounds_to_target": [per dialogue], "dialogues": [the played
            dialogues as ``Dialogue`` objects, one ``Turn`` per round with prompt, feedback and satisfaction]}``.
        """
        users = [self.users(d) for d in dialogues]
        targets = [getattr(user, "target_caption", None) for user in users]
        if self.hidden_reward is not None and None in targets:
            bad = dialogues[targets.index(None)].dialogue_id
            raise ValueError(f"hidden_reward needs users with a target_caption; dialogue {bad!r}'s user has none")
        prompts = [d.initial_prompt for d in dialogues]
        histories: list[list[Turn]] = [[] for _ in dialogues]
        first_satisfied: list[int | None] = [None] * len(dialogues)
        previous: Tensor | None = None
        records = []
        g, k = len(dialogues), self.ppo.num_images
        for t in range(1, self.num_rounds + 1):
            traj = self.collect(prompts)
            images = traj.images.view(g, k, *traj.images.shape[1:])
            total, terms, weights = self.reward(images, prompts, t, previous)
            metrics = {"round": float(t), "reward_total": total.mean().item()}
            metrics.update({f"reward_{name}": terms[name].mean().item() for name in TERMS})
            metrics.update({f"weight_{name}": weights[name] for name in TERMS})
            if self.hidden_reward is not None:
                texts = [target for target in targets for _ in range(k)]
                metrics["hidden_reward"] = self.hidden_reward.score(traj.images, texts).float().mean().item()
            if update:
                advantages = self.tracker.update(traj.prompts, total.flatten())
                metrics.update(self.ppo_update(traj, advantages))
                if self.trainer.optimizers:
                    metrics["lr"] = self.trainer.optimizers[0].param_groups[0]["lr"]
            chosen = []
            for i, user in enumerate(users):
                choice = user.choose(images[i], prompts[i])
                image = images[i, choice]
                feedback = user.feedback(image, prompts[i])
                if first_satisfied[i] is None and user.satisfied(image):
                    first_satisfied[i] = t
                histories[i].append(Turn(round=t, user_feedback=feedback, prompt=prompts[i],
                                         satisfaction=user.satisfaction(image)))
                chosen.append(image)
                prompts[i] = self.refiner.refine(prompts[i], feedback, histories[i])
            metrics["satisfied"] = sum(s is not None and s <= t for s in first_satisfied) / g
            previous = self.reward.embed_images(torch.stack(chosen))
            self._log_now({f"{stage}/{key}": value for key, value in metrics.items()})
            records.append(metrics)
        rounds_to_target = [s if s is not None else self.num_rounds + 1 for s in first_satisfied]
        self._log_now({f"{stage}/rounds_to_target": sum(rounds_to_target) / g,
                       f"{stage}/success_rate": sum(s is not None for s in first_satisfied) / g})
        played = [Dialogue(d.dialogue_id, d.initial_prompt, h, d.category) for d, h in zip(dialogues, histories)]
        return {"rounds": records, "rounds_to_target": rounds_to_target, "dialogues": played}

    def replay(self, dialogues: list[Dialogue], update: bool, stage: str = "train") -> list[dict[str, float]]:
        """Replay the recorded prompts of each dialogue (with PPO updates when ``update``); see the class docstring.

        Returns:
            The metrics of each round.
        """
        prompts = [replayed_prompts(d)[: self.num_rounds] for d in dialogues]
        anchors: list[Tensor | None] = [None] * len(dialogues)
        from_record = [False] * len(dialogues)
        records = []
        k = self.ppo.num_images
        for t in range(1, max(len(p) for p in prompts) + 1):
            active = [i for i, p in enumerate(prompts) if len(p) >= t]
            round_prompts = [prompts[i][t - 1] for i in active]
            traj = self.collect(round_prompts)
            images = traj.images.view(len(active), k, *traj.images.shape[1:])
            previous = None if t == 1 else torch.stack([anchors[i] for i in active])
            total, terms, weights = self.reward(images, round_prompts, t, previous)
            metrics = {"round": float(t), "reward_total": total.mean().item()}
            metrics.update({f"reward_{name}": terms[name].mean().item() for name in TERMS})
            metrics.update({f"weight_{name}": weights[name] for name in TERMS})
            if update:
                advantages = self.tracker.update(traj.prompts, total.flatten())
                metrics.update(self.ppo_update(traj, advantages))
                if self.trainer.optimizers:
                    metrics["lr"] = self.trainer.optimizers[0].param_groups[0]["lr"]
            if t > 1:
                metrics["recorded_anchor"] = sum(from_record[i] for i in active) / len(active)
            chosen = []
            for j, i in enumerate(active):
                image = recorded_choice(dialogues[i].turns[t - 1], tuple(images.shape[-2:]))
                from_record[i] = image is not None
                chosen.append(image if image is not None else images[j, int(terms["preference"][j].argmax())])
            for i, embedding in zip(active, self.reward.embed_images(torch.stack(chosen).to(images.device))):
                anchors[i] = embedding
            self._log_now({f"{stage}/{key}": value for key, value in metrics.items()})
            records.append(metrics)
        return records

    def _log_now(self, metrics: dict[str, float]) -> None:
        """Write metrics to every logger at the current optimizer step (one point per round, not per batch)."""
        if self._trainer is None:
            return
        for logger in self.loggers:
            logger.log_metrics(metrics, step=self.global_step)

    # ------------------------------------------------------------------ Lightning hooks
    def training_step(self, batch: list[Dialogue], batch_idx: int) -> None:
        if self.users is None:
            self.replay(batch, update=True, stage="train")
        else:
            self.play(batch, update=True, stage="train")

    def validation_step(self, batch: list[Dialogue], batch_idx: int) -> None:
        if self.users is None:
            self.replay(batch, update=False, stage="val")
        else:
            self.play(batch, update=False, stage="val")


def replayed_prompts(dialogue: Dialogue) -> list[str]:
    """P_1..P_T of a recorded dialogue: each turn's ``prompt``; P_1 defaults to ``initial_prompt``, a later missing
    prompt to the one before."""
    prompts: list[str] = []
    for turn in dialogue.turns:
        prompts.append(turn.prompt if turn.prompt is not None else (prompts[-1] if prompts else dialogue.initial_prompt))
    return prompts


def recorded_choice(turn: Turn, size: tuple[int, int]) -> Tensor | None:
    """The image a person chose in ``turn`` as ``[3, H, W]`` in ``[0, 1]`` resized to ``size`` (bilinear), or None
    when the turn recorded no ``images`` or no ``chosen`` (paths as ``DialogueDataModule`` resolves them)."""
    if turn.images is None or turn.chosen is None:
        return None
    with Image.open(turn.images[turn.chosen]) as image:
        pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy())
    image = pixels.permute(2, 0, 1).float().div(255.0)[None]
    return F.interpolate(image, size=size, mode="bilinear", antialias=True, align_corners=False)[0].clamp(0, 1)
