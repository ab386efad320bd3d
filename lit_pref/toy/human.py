"""The toy world's hidden human: :class:`ToyGroundTruthReward` turns a :class:`~lit_pref.toy.judge.ToyJudge`
reading into a reward (fidelity to the prompt plus a taste for centred shapes); :class:`BradleyTerryLabeller`
turns two rewards into a noisy preference label, as a human annotator would.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from lit_pref.rewards.base import Scorer
from lit_pref.toy.judge import BACKGROUND_NAMES, COLOUR_NAMES, SHAPE_BY_CODE, ToyJudge
from lit_pref.toy.world import parse_caption

__all__ = ["BradleyTerryLabeller", "ToyGroundTruthReward"]


class ToyGroundTruthReward(Scorer):
    """The toy world's hidden human: fidelity to the prompt plus a taste for centred shapes.

    ``score = colour_weight * colour_match + shape_weight * shape_match +
    size_weight * size_match + background_weight * background_match +
    taste_weight * centredness``, where the matches (0 or 1) compare the
    :class:`ToyJudge` reading with :func:`~lit_pref.toy.world.parse_caption` of
    the prompt (an unparsable prompt matches nothing), and ``centredness = 1 -
    |centroid - image centre| / half-diagonal`` in ``[0, 1]`` (0 when no shape
    is found). Positions are uniform in the pre-training data, so the taste
    is what preference training can add. No gradients.

    Args:
        colour_weight: Weight of the colour match.
        shape_weight: Weight of the shape match.
        size_weight: Weight of the size match.
        background_weight: Weight of the background match.
        taste_weight: Weight of the centredness.
        judge: The judge reading the images; None uses ``ToyJudge()``.
    """

    TERMS = ("colour_match", "shape_match", "size_match", "background_match", "centredness")

    def __init__(
        self,
        colour_weight: float = 1.0,
        shape_weight: float = 1.0,
        size_weight: float = 0.5,
        background_weight: float = 0.5,
        taste_weight: float = 1.0,
        judge: ToyJudge | None = None,
    ) -> None:
        self.weights = {
            "colour_match": float(colour_weight),
            "shape_match": float(shape_weight),
            "size_match": float(size_weight),
            "background_match": float(background_weight),
            "centredness": float(taste_weight),
        }
        self.judge = judge if judge is not None else ToyJudge()

    @torch.no_grad()
    def components(self, images: Tensor, prompts: Sequence[str]) -> dict[str, Tensor]:
        """Each unweighted term, float ``[B]`` on the images' device (keys :attr:`TERMS`)."""
        if len(prompts) != images.shape[0]:
            raise ValueError(f"got {images.shape[0]} images but {len(prompts)} prompts")
        r = self.judge.read_tensors(images)
        device = images.device
        parsed = [parse_caption(p) for p in prompts]
        missing = -1  # never equals a read index
        want = {
            "colour": [COLOUR_NAMES.index(p.colour) if p else missing for p in parsed],
            "shape": [SHAPE_BY_CODE.index(p.shape) if p else missing for p in parsed],
            "size": [("small", "large").index(p.size) if p else missing for p in parsed],
            "background": [BACKGROUND_NAMES.index(p.background) if p else missing for p in parsed],
        }
        found = r["found"]
        out = {}
        for key in ("colour", "shape", "size", "background"):
            target = torch.tensor(want[key], device=device)
            match = r[key] == target
            if key != "background":
                match = match & found
            out[f"{key}_match"] = match.to(torch.float32)
        h, w = images.shape[-2:]
        mid = torch.tensor([h / 2.0, w / 2.0], device=device)
        half_diagonal = (h**2 + w**2) ** 0.5 / 2.0
        dist = (r["center"] - mid).norm(dim=1)
        out["centredness"] = torch.where(found, (1.0 - dist / half_diagonal).clamp(0.0, 1.0), 0.0)
        return out

    def score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        """Weighted sum of :meth:`components`, float ``[B]`` on the images' device."""
        comps = self.components(images, prompts)
        return sum(self.weights[k] * comps[k] for k in self.TERMS)


class BradleyTerryLabeller:
    """The noisy Bradley-Terry "hidden human" who labels preference pairs.

    For each pair the reward gives ``r0`` and ``r1``. When ``|r0 - r1| <=
    tie_margin`` the label is a tie (``label_0 = 0.5``); otherwise image 0 wins
    (``label_0 = 1``) with probability ``sigmoid((r0 - r1) / temperature)``
    and loses (``label_0 = 0``) otherwise. ``temperature = 0`` is a noiseless
    annotator: the higher reward always wins. The coin flips come from the
    labeller's own ``torch.Generator`` (one uniform draw per pair, ties
    included), so the label sequence is a deterministic function of ``seed``
    and the inputs, untouched by the global RNG.

    Args:
        reward: The hidden reward (e.g. :class:`ToyGroundTruthReward`).
        temperature: Noise of the choices (>= 0); larger is noisier.
        tie_margin: Reward differences up to this are ties.
        seed: Seed of the labeller's generator.
    """

    def __init__(self, reward: Scorer, temperature: float = 0.25, tie_margin: float = 0.0, seed: int = 0) -> None:
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if tie_margin < 0:
            raise ValueError(f"tie_margin must be >= 0, got {tie_margin}")
        self.reward = reward
        self.temperature = float(temperature)
        self.tie_margin = float(tie_margin)
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)

    def reset(self, seed: int | None = None) -> None:
        """Restarts the coin flips from ``seed`` (default: the constructor's)."""
        if seed is not None:
            self.seed = seed
        self.generator.manual_seed(self.seed)

    def label_from_rewards(self, r0: Tensor, r1: Tensor) -> Tensor:
        """``label_0`` float ``[B]`` in {0, 0.5, 1} from the two rewards."""
        delta = (r0 - r1).detach().float()
        u = torch.rand(delta.shape, generator=self.generator).to(delta.device)
        if self.temperature == 0:
            win = delta > 0
        else:
            win = u < torch.sigmoid(delta / self.temperature)
        label = win.to(torch.float32)
        return torch.where(delta.abs() <= self.tie_margin, torch.full_like(label, 0.5), label)

    @torch.no_grad()
    def label(self, images_0: Tensor, images_1: Tensor, prompts: Sequence[str]) -> Tensor:
        """Labels pairs: ``label_0`` float ``[B]`` in {0, 0.5, 1} on the images' device.

        Args:
            images_0: ``[B, 3, H, W]`` in ``[0, 1]``.
            images_1: ``[B, 3, H, W]`` in ``[0, 1]``.
            prompts: ``B`` prompts.
        """
        return self.label_from_rewards(self.reward(images_0, prompts), self.reward(images_1, prompts))
