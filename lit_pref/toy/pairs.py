"""Preference pairs of the toy world: two base-model samples of one prompt, labelled by the hidden human.

The toy world also ships one such data set, as Pick-a-Pic-layout files under ``lit_pref/assets/toy/pairs/best_of_8``
(:data:`SHIPPED_PAIRS`), made once by ``python -m lit_pref make-toy-pairs`` (:func:`make_shipped_pairs`), so that a run
reads pairs like any fixed preference data set instead of sampling them first.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import torch
from PIL import Image
from tqdm.auto import tqdm

from lit_pref.backbone import DiffusionBackbone
from lit_pref.backbone.backbone import TOY_PIPELINE
from lit_pref.commands import call, function_parser
from lit_pref.datamodules.generated import GeneratedPairsDataModule
from lit_pref.formats.pairs import PAIR_SCHEMA, write_pairs_parquet
from lit_pref.toy.human import BradleyTerryLabeller, ToyGroundTruthReward
from lit_pref.toy.world import prompts

GENERATOR_VERSION = 1
SHIPPED_PAIRS = TOY_PIPELINE.parent / "pairs" / "best_of_8"  # train.parquet, val.parquet (see its README.md)


def _png(image: torch.Tensor) -> bytes:
    array = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _model_fingerprint(model: str) -> str:
    """``model`` plus the sizes and modification times of its weight files, so a retrained model rebuilds pairs."""
    folder = TOY_PIPELINE if model == "toy" else Path(model)
    if not folder.is_dir():
        return model
    files = sorted(folder.rglob("*.safetensors"))
    return model + "|" + ";".join(f"{f.relative_to(folder)}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)


@torch.no_grad()
def sample_labelled_pairs(
    backbone: DiffusionBackbone,
    prompt_list: list[str],
    num_pairs: int,
    labeller: BradleyTerryLabeller,
    num_inference_steps: int,
    guidance_scale: float,
    seed: int,
    batch_size: int = 64,
    candidates_per_pair: int = 2,
    desc: str | None = None,
) -> pa.Table:
    """Sample ``candidates_per_pair`` images per pair (prompts cycled in a seeded order, every image its own noise
    seed), keep the one the hidden reward ranks highest and the one it ranks lowest (in the order they were
    sampled; with 2 candidates, both), and label them; the table has the Pick-a-Pic columns plus the hidden rewards
    ``reward_0`` and ``reward_1``. With ``desc``, a progress bar so named counts the sampled images."""
    if candidates_per_pair < 2:
        raise ValueError(f"candidates_per_pair must be at least 2, got {candidates_per_pair}")
    n = candidates_per_pair
    rng = np.random.default_rng(seed)
    order = rng.permutation(num_pairs) % len(prompt_list)
    pair_prompts = [prompt_list[i] for i in order]
    texts = [p for p in pair_prompts for _ in range(n)]  # pair i: images n*i .. n*i + n - 1
    images = []
    bar = tqdm(total=len(texts), desc=desc, unit="img", disable=desc is None)
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        generators = [torch.Generator(backbone.device).manual_seed(seed * 1_000_003 + start + j) for j in range(len(chunk))]
        images.append(backbone.sample(chunk, num_inference_steps=num_inference_steps,
                                      guidance_scale=guidance_scale, generator=generators).cpu())
        bar.update(len(chunk))
    bar.close()
    images = torch.cat(images)
    rewards = labeller.reward.score(images, texts).view(num_pairs, n).cpu()
    ranked = rewards.argsort(dim=1, stable=True)  # lowest first; ties keep the sampling order
    chosen = torch.stack([ranked[:, 0], ranked[:, -1]], dim=1).sort(dim=1).values + torch.arange(num_pairs)[:, None] * n
    images_0, images_1 = images[chosen[:, 0]], images[chosen[:, 1]]
    rewards_0, rewards_1 = rewards.flatten()[chosen[:, 0]], rewards.flatten()[chosen[:, 1]]
    labels = labeller.label_from_rewards(rewards_0, rewards_1)
    columns = {
        "caption": pair_prompts,
        "jpg_0": [_png(x) for x in images_0],
        "jpg_1": [_png(x) for x in images_1],
        "label_0": labels.double().tolist(),
    }
    schema = PAIR_SCHEMA.append(pa.field("reward_0", pa.float64())).append(pa.field("reward_1", pa.float64()))
    return pa.table({**columns, "reward_0": rewards_0.double().tolist(), "reward_1": rewards_1.double().tolist()},
                    schema=schema)


class ToyPreferenceDataModule(GeneratedPairsDataModule):
    """Pick-a-Pic-style pairs from the toy base model, labelled by the toy world's hidden human.

    Training pairs use the pre-training prompts, validation pairs the held-out prompts (colour-shape combinations
    the base model never saw). Each pair is two samples of one prompt with different noise; the noisy
    Bradley-Terry labeller over :class:`~lit_pref.toy.ToyGroundTruthReward` picks the winner. Files are
    generated on first use under ``data_dir`` and rebuilt when a parameter or the model's weights change.

    Args:
        data_dir: Directory for the generated files.
        num_pairs: Number of training pairs.
        num_val_pairs: Number of validation pairs (0 for no validation set).
        model: The base model that samples the pairs (``"toy"`` or a diffusers folder).
        num_inference_steps: DDIM steps of the base model's samples.
        guidance_scale: Classifier-free guidance of the base model's samples.
        temperature: Bradley-Terry temperature of the hidden human (0 = always the higher reward).
        tie_margin: Reward differences at most this large are labelled ties (0.5).
        candidates_per_pair: Samples drawn per training pair; the pair is the best and the worst of them under
            the hidden reward (2: two plain samples). Validation pairs are always two plain samples.
        seed: Seed of the sampling noise, the labeller and the per-item flips.
        batch_size: Training batch size.
        val_batch_size: Validation batch size; None uses ``batch_size``.
        num_workers: DataLoader worker processes.
        random_flip: Flip training pairs horizontally with probability 0.5.
        on_bad_row: ``"raise"`` or ``"skip"`` (see ``PreferencePairDataModule``).
    """

    def __init__(
        self,
        data_dir: str = "data/toy_pairs",
        num_pairs: int = 256,
        num_val_pairs: int = 32,
        model: str = "toy",
        num_inference_steps: int = 10,
        guidance_scale: float = 4.0,
        temperature: float = 0.1,
        tie_margin: float = 0.0,
        candidates_per_pair: int = 2,
        seed: int = 0,
        batch_size: int = 8,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        random_flip: bool = False,
        on_bad_row: Literal["raise", "skip"] = "raise",
    ) -> None:
        super().__init__(data_dir, num_pairs, num_val_pairs, seed, 32, batch_size, val_batch_size, num_workers,
                         random_flip, on_bad_row)
        self.model = model
        self.num_inference_steps = num_inference_steps
        self.guidance_scale = guidance_scale
        self.temperature = temperature
        self.tie_margin = tie_margin
        if candidates_per_pair < 2:
            raise ValueError(f"candidates_per_pair must be at least 2, got {candidates_per_pair}")
        self.candidates_per_pair = candidates_per_pair

    def generation_params(self) -> dict:
        return {
            "generator_version": GENERATOR_VERSION,
            "model": _model_fingerprint(self.model),
            "num_pairs": self.num_pairs,
            "num_val_pairs": self.num_val_pairs,
            "num_inference_steps": self.num_inference_steps,
            "guidance_scale": self.guidance_scale,
            "temperature": self.temperature,
            "tie_margin": self.tie_margin,
            **({"candidates_per_pair": self.candidates_per_pair} if self.candidates_per_pair != 2 else {}),
            "seed": self.seed,
        }

    def write_pairs(self, path: Path, num_pairs: int, seed: int, split: Literal["train", "val"]) -> None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        backbone = DiffusionBackbone(model=self.model).eval().to(device)
        labeller = BradleyTerryLabeller(ToyGroundTruthReward(), self.temperature, self.tie_margin, seed)
        prompt_list = prompts("train" if split == "train" else "heldout")
        table = sample_labelled_pairs(backbone, prompt_list, num_pairs, labeller, self.num_inference_steps,
                                      self.guidance_scale, seed, desc=f"toy {split} pairs",
                                      candidates_per_pair=self.candidates_per_pair if split == "train" else 2)
        write_pairs_parquet(table, path)


def make_shipped_pairs(out_dir: str = str(SHIPPED_PAIRS)) -> None:
    """Write the toy world's shipped preference pairs: ``train.parquet``, 256 pairs on the training prompts, each the
    best and the worst of 8 base samples (10 DDIM steps, guidance 4) under the hidden human's reward, labelled
    without noise (temperature 0); ``val.parquet``, 32 pairs of two plain samples of the held-out prompts. Seed 0
    (validation: seed 1 000 000), as :class:`ToyPreferenceDataModule` with these parameters generates them.

    Args:
        out_dir: Folder the two files are written to (created if missing).
    """
    data = ToyPreferenceDataModule(data_dir=out_dir, num_pairs=256, num_val_pairs=32, num_inference_steps=10,
                                   guidance_scale=4.0, temperature=0.0, candidates_per_pair=8, seed=0)
    data.data_dir.mkdir(parents=True, exist_ok=True)
    data.write_pairs(data.data_dir / "train.parquet", data.num_pairs, data.seed, "train")
    data.write_pairs(data.data_dir / "val.parquet", data.num_val_pairs, data.seed + data.VAL_SEED_OFFSET, "val")


def main(argv: list[str]) -> None:
    """``python -m lit_pref make-toy-pairs [--out_dir DIR]``: :func:`make_shipped_pairs` (default: the shipped
    folder), then where the files are."""
    parser = function_parser(make_shipped_pairs, "make-toy-pairs", "Write the toy world's shipped best-of-8 "
                             "preference pairs (train.parquet, val.parquet) from the shipped base model.")
    config = parser.parse_args(argv)
    call(make_shipped_pairs, parser, config)
    print(f"train.parquet and val.parquet written to {config.out_dir}")
