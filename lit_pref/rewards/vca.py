"""VCA-style rewards of Visual Co-Adaptation (arXiv 2504.18204): diversity, consistency, mutual information,
preference, and the round-dependent weighting of their total (docs/methods.md §4).

The paper names the three terms and a dynamic weighting but its exact formulas were not available; these are
the framework's documented "VCA-style" definitions. Every term is computed per image, on L2-normalised open_clip
embeddings, for a round of G prompts with K images each:

- ``R_div(i)  = 1 - mean_{j != i} cos(e_i, e_j)`` over the K images of i's prompt; its mean over the K images is
  ``1 - mean pairwise cosine`` (0 when the images are identical);
- ``R_cons(i) = cos(e_i, e_chosen)``, the image the user chose in the previous round (1 at round 1);
- ``R_MI(i)   = log softmax_j(s * cos(e_i, p_j))[own prompt] + log G`` over the G prompts p_j of the round (the
  InfoNCE lower bound on the mutual information of image and prompt; ``s`` the CLIP logit scale);
- ``R_pref(i)`` the score of a preference scorer (the DPO-trained reward model);
- ``R_total(t) = sum_k w_k(t) R_k`` with the weights of :class:`RoundWeightSchedule` at round t.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_pref.rewards.base import Scorer
from lit_pref.rewards.clip_score import embed_images, load_open_clip
from lit_pref.rewards.reward_model import clip_tokenizer, resolve_clip

TERMS = ("diversity", "consistency", "mutual_information", "preference")


def diversity_reward(embeddings: Tensor) -> Tensor:
    """VCA-style diversity: ``1 - mean_{j != i} cos(e_i, e_j)`` within each group of K images.

    Args:
        embeddings: (G, K, D) image embeddings, K images per prompt (normalised here).

    Returns:
        (G, K); its mean over K is ``1 - mean pairwise cosine`` of the group. A group of one image has 0.
    """
    if embeddings.ndim != 3:
        raise ValueError(f"expected (G, K, D) embeddings, got shape {tuple(embeddings.shape)}")
    k = embeddings.shape[1]
    if k == 1:
        return torch.zeros(embeddings.shape[:2], device=embeddings.device)
    e = F.normalize(embeddings.float(), dim=-1)
    cos = e @ e.transpose(1, 2)  # (G, K, K)
    off_diagonal = cos.sum(-1) - cos.diagonal(dim1=1, dim2=2)
    return 1.0 - off_diagonal / (k - 1)


def consistency_reward(embeddings: Tensor, previous: Tensor | None) -> Tensor:
    """VCA-style consistency: cosine similarity of each image with the image chosen in the previous round.

    Args:
        embeddings: (G, K, D) image embeddings of this round (normalised here).
        previous: (G, D) embedding of the image each dialogue's user chose in the previous round; ``None`` at
            round 1, where the reward is 1 (nothing to be consistent with).

    Returns:
        (G, K).
    """
    if embeddings.ndim != 3:
        raise ValueError(f"expected (G, K, D) embeddings, got shape {tuple(embeddings.shape)}")
    if previous is None:
        return torch.ones(embeddings.shape[:2], device=embeddings.device)
    if previous.shape != (embeddings.shape[0], embeddings.shape[2]):
        raise ValueError(f"previous must be (G, D) = {(embeddings.shape[0], embeddings.shape[2])}, "
                         f"got {tuple(previous.shape)}")
    e = F.normalize(embeddings.float(), dim=-1)
    p = F.normalize(previous.float(), dim=-1)
    return torch.einsum("gkd,gd->gk", e, p)


def mutual_information_reward(image_embeddings: Tensor, text_embeddings: Tensor, prompt_index: Tensor,
                              logit_scale: float) -> Tensor:
    """VCA-style mutual information, the InfoNCE bound: ``log softmax_j(s * cos(img_i, P_j))[own(i)] + log B``.

    Args:
        image_embeddings: (N, D) image embeddings (normalised here).
        text_embeddings: (B, D) embeddings of the B prompts of the batch (normalised here).
        prompt_index: (N,) long: the index in ``0 .. B-1`` of each image's own prompt.
        logit_scale: s, the similarity scale (CLIP's ``logit_scale.exp()``, about 100 for OpenAI CLIP).

    Returns:
        (N,) in ``[-inf, log B]``; 0 when the image is as similar to every prompt (and always 0 when B = 1).
    """
    if image_embeddings.ndim != 2 or text_embeddings.ndim != 2:
        raise ValueError(f"expected (N, D) and (B, D) embeddings, got {tuple(image_embeddings.shape)} and "
                         f"{tuple(text_embeddings.shape)}")
    if prompt_index.shape != image_embeddings.shape[:1]:
        raise ValueError(f"prompt_index must be (N,) = ({image_embeddings.shape[0]},), got {tuple(prompt_index.shape)}")
    b = text_embeddings.shape[0]
    sims = logit_scale * F.normalize(image_embeddings.float(), dim=-1) @ F.normalize(text_embeddings.float(), dim=-1).T
    log_probs = sims.log_softmax(dim=-1)
    return log_probs.gather(1, prompt_index.long().view(-1, 1).to(sims.device)).squeeze(1) + math.log(b)


class RoundWeightSchedule:
    """Weights of the reward terms at round t: each moves linearly from its round-1 value to its value at round
    ``num_rounds`` (and stays there after), then all are normalised to sum 1 (VCA-style dynamic weighting).

    The default: diversity decays (explore first), consistency grows (keep what the user chose), mutual
    information and preference stay constant.
    """

    def __init__(
        self,
        num_rounds: int = 5,
        diversity: tuple[float, float] = (1.0, 0.0),
        consistency: tuple[float, float] = (0.0, 1.0),
        mutual_information: tuple[float, float] = (1.0, 1.0),
        preference: tuple[float, float] = (1.0, 1.0),
    ) -> None:
        """
        Args:
            num_rounds: The round at which every weight reaches its final value.
            diversity: Unnormalised weight of R_div at round 1 and at round ``num_rounds``.
            consistency: The same for R_cons.
            mutual_information: The same for R_MI.
            preference: The same for R_pref.
        """
        if num_rounds < 1:
            raise ValueError(f"num_rounds must be >= 1, got {num_rounds}")
        self.num_rounds = num_rounds
        self.ends = {"diversity": tuple(diversity), "consistency": tuple(consistency),
                     "mutual_information": tuple(mutual_information), "preference": tuple(preference)}
        for name, pair in self.ends.items():
            if len(pair) != 2 or min(pair) < 0:
                raise ValueError(f"{name} must be two non-negative weights (round 1, round {num_rounds}), got {pair}")
        if sum(max(pair) for pair in self.ends.values()) == 0:
            raise ValueError("every weight is zero")
        for t in range(1, num_rounds + 1):
            self.weights(t)  # no round with all weights zero

    def weights(self, round: int) -> dict[str, float]:
        """The normalised weights (keys :data:`TERMS`) at round ``round`` (1-based)."""
        if round < 1:
            raise ValueError(f"rounds count from 1, got {round}")
        frac = 1.0 if self.num_rounds == 1 else min(round - 1, self.num_rounds - 1) / (self.num_rounds - 1)
        raw = {name: a + (b - a) * frac for name, (a, b) in self.ends.items()}
        total = sum(raw.values())
        if total <= 0:
            raise ValueError(f"every weight is zero at round {round}")
        return {name: value / total for name, value in raw.items()}


def total_reward(terms: dict[str, Tensor], weights: dict[str, float]) -> Tensor:
    """``sum_k w_k R_k`` over the terms named in ``weights`` (each term a tensor of one shape)."""
    missing = set(weights) - set(terms)
    if missing:
        raise KeyError(f"no reward term(s) {sorted(missing)}; have {sorted(terms)}")
    return sum(weights[name] * terms[name] for name in weights)


class VCAReward:
    """Computes the four VCA-style terms and R_total(t) for one round, on one open_clip model's embeddings.

    Held by :class:`~lit_pref.modules.VCAPPO` as a plain attribute (never a registered submodule), like any
    scorer.
    """

    def __init__(
        self,
        preference: Scorer,
        schedule: RoundWeightSchedule | None = None,
        clip_model: str | nn.Module = "ViT-L-14",
        clip_pretrained: str | None = "openai",
        logit_scale: float | None = None,
        device: str = "cpu",
        batch_size: int = 64,
    ) -> None:
        """
        Args:
            preference: The R_pref scorer (the DPO-trained reward model,
                ``lit_pref.rewards.RewardModelScorer``, or any ``lit_pref.rewards.Scorer``).
            schedule: Weights per round; ``None`` = the default :class:`RoundWeightSchedule`.
            clip_model: The open_clip model whose embeddings R_div, R_cons and R_MI use: a name, ``"toy"`` (the
                shipped toy CLIP), a ``local-dir:`` folder, an ``hf-hub:`` id or a built module.
            clip_pretrained: Pretrained tag or checkpoint for ``clip_model``; ``None`` for folders and modules.
            logit_scale: Similarity scale of R_MI; ``None`` = the CLIP model's own ``logit_scale.exp()``.
            device: Device of the CLIP model.
            batch_size: Images encoded per forward pass.
        """
        self.preference = preference
        self.schedule = schedule or RoundWeightSchedule()
        self.device = torch.device(device)
        self.batch_size = batch_size
        clip_model, clip_pretrained = resolve_clip(clip_model, clip_pretrained)
        self.clip, self.preprocess_cfg = load_open_clip(clip_model, clip_pretrained, self.device)
        self.tokenizer = clip_tokenizer(clip_model)
        self.logit_scale = float(self.clip.logit_scale.exp()) if logit_scale is None else float(logit_scale)

    @torch.no_grad()
    def embed_images(self, images: Tensor) -> Tensor:
        """(N, D) L2-normalised image embeddings of images (N, 3, H, W) in [0, 1]."""
        return embed_images(self.clip, self.preprocess_cfg, images, self.device, self.batch_size)

    @torch.no_grad()
    def embed_texts(self, prompts: Sequence[str]) -> Tensor:
        """(B, D) L2-normalised text embeddings."""
        return self.clip.encode_text(self.tokenizer(list(prompts)).to(self.device), normalize=True).float()

    @torch.no_grad()
    def __call__(self, images: Tensor, prompts: Sequence[str], round: int,
                 previous: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor], dict[str, float]]:
        """Rewards of one round.

        Args:
            images: (G, K, 3, H, W) in [0, 1]: K images for each of the round's G prompts.
            prompts: The G prompts.
            round: The round t (1-based) that selects the weights.
            previous: (G, D) embeddings of the images chosen in round t - 1 (:meth:`embed_images`); ``None`` at
                round 1.

        Returns:
            ``(total, terms, weights)``: R_total (G, K) on the CPU, each term (G, K) (keys :data:`TERMS`),
            and the weights of round t.
        """
        if images.ndim != 5 or images.shape[0] != len(prompts):
            raise ValueError(f"expected (G, K, 3, H, W) images for G prompts, got {tuple(images.shape)} and "
                             f"{len(prompts)} prompts")
        g, k = images.shape[:2]
        flat = images.flatten(0, 1)
        emb = self.embed_images(flat)
        grouped = emb.view(g, k, -1)
        own = torch.arange(g).repeat_interleave(k)
        texts = [p for p in prompts for _ in range(k)]
        terms = {
            "diversity": diversity_reward(grouped),
            "consistency": consistency_reward(grouped, None if previous is None else previous.to(emb.device)),
            "mutual_information": mutual_information_reward(emb, self.embed_texts(prompts), own,
                                                            self.logit_scale).view(g, k),
            "preference": self.preference.score(flat, texts).float().to(emb.device).view(g, k),
        }
        terms = {name: value.cpu() for name, value in terms.items()}
        weights = self.schedule.weights(round)
        return total_reward(terms, weights), terms, weights
