"""Chunked sampling and scoring: many fixed-seed samples go through the UNet, the VAE and the scorers a batch at a
time, so 100 samples of a prompt or thousands of benchmark prompts never decode in one VAE batch. Shared by the
``evaluate`` subcommand and the evaluation callbacks."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

import torch
from torch import Tensor

from lit_pref.backbone import DiffusionBackbone
from lit_pref.rewards import Scorer


@torch.no_grad()
def sample_and_score(
    backbone: DiffusionBackbone,
    texts: Sequence[str],
    seeds: Sequence[int],
    scorers: dict[str, Scorer],
    batch_size: int,
    num_inference_steps: int,
    guidance_scale: float,
    keep: Collection[int] = (),
    on_batch: Callable[[int], None] | None = None,
) -> tuple[dict[str, Tensor], dict[int, Tensor]]:
    """Sample image i of ``texts[i]`` from the noise of ``seeds[i]`` (its own generator, so the batch size changes
    no draw), ``batch_size`` images at a time, and score each batch with every scorer.

    Args:
        backbone: The model, as it is (wrap the call in ``backbone.reference_forward()`` for the base model).
        texts: N prompts, one per sample.
        seeds: N seeds, one per sample.
        scorers: Name -> scorer.
        batch_size: Samples per UNet/VAE/scorer batch.
        num_inference_steps: DDIM steps.
        guidance_scale: Classifier-free guidance scale.
        keep: Sample indices whose images are returned (for grids); the others are dropped after scoring.
        on_batch: Called with the number of samples after each batch (a progress bar's ``update``).

    Returns:
        ``(scores, images)``: name -> (N,) float32 CPU scores; index -> (3, H, W) CPU image in [0, 1] for ``keep``.
    """
    if len(texts) != len(seeds):
        raise ValueError(f"{len(texts)} prompts but {len(seeds)} seeds")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    scores: dict[str, list[Tensor]] = {name: [] for name in scorers}
    kept: dict[int, Tensor] = {}
    for start in range(0, len(texts), batch_size):
        batch = list(texts[start:start + batch_size])
        generators = [torch.Generator(backbone.device).manual_seed(int(s)) for s in seeds[start:start + batch_size]]
        images = backbone.sample(batch, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                                 generator=generators)
        for name, scorer in scorers.items():
            scores[name].append(scorer.score(images, batch).detach().float().cpu())
        for offset in range(len(batch)):
            if start + offset in keep:
                kept[start + offset] = images[offset].float().cpu()
        if on_batch is not None:
            on_batch(len(batch))
    return {name: torch.cat(parts) if parts else torch.zeros(0) for name, parts in scores.items()}, kept
