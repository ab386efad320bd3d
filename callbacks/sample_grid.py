"""Image grids for TensorBoard: fixed-seed samples of the policy next to the reference (adapters off), and the
helpers that the evaluation callbacks share (a grid with a caption under every image; logging to TensorBoard)."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image, ImageDraw, ImageFont
from torchvision.utils import make_grid

from lit_pref.datamodules.prompts import read_prompts

CAPTION_FONT_SIZE = 11
CAPTION_LINE = 13  # pixels a caption line takes


def _wrap(line: str, font: ImageFont.FreeTypeFont, width: int) -> list[str]:
    """``line`` broken at spaces into pieces of at most ``width`` pixels (a longer word stays whole)."""
    out = [""]
    for word in line.split(" "):
        joined = f"{out[-1]} {word}" if out[-1] else word
        if out[-1] and font.getlength(joined) > width:
            out.append(word)
        else:
            out[-1] = joined
    return out


def captioned_grid(images: torch.Tensor, captions: Sequence[str], nrow: int, min_side: int = 128) -> torch.Tensor:
    """A (3, H, W) grid in [0, 1] of ``images`` with each one's caption written under it, black on white.

    Images narrower than ``min_side`` are enlarged by a whole factor (nearest pixel, so a 32 px toy image stays
    sharp) until they are at least that wide; caption lines (split at ``\\n``) wrap at spaces to the image width.

    Args:
        images: ``[N, 3, H, W]`` in [0, 1].
        captions: N captions, one per image.
        nrow: Images per grid row (``torchvision.utils.make_grid``).
        min_side: Smallest width an image is shown at, in pixels.
    """
    if len(captions) != len(images):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    scale = max(1, math.ceil(min_side / images.shape[-1]))
    images = images.detach().float().cpu().clamp(0, 1).repeat_interleave(scale, -2).repeat_interleave(scale, -1)
    height, width = images.shape[-2:]
    font = ImageFont.load_default(size=CAPTION_FONT_SIZE)
    lines = [[piece for line in caption.split("\n") for piece in _wrap(line, font, width - 4)] for caption in captions]
    text_height = 4 + CAPTION_LINE * max(len(c) for c in lines)
    tiles = []
    for image, caption in zip(images, lines):
        tile = Image.new("RGB", (width, height + text_height), "white")
        tile.paste(Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)))
        draw = ImageDraw.Draw(tile)
        for k, line in enumerate(caption):
            draw.text((2, height + 2 + k * CAPTION_LINE), line, fill="black", font=font)
        tiles.append(torch.from_numpy(np.array(tile)).permute(2, 0, 1).float() / 255)
    return make_grid(torch.stack(tiles), nrow=nrow, padding=2, pad_value=0.5)


def log_image(trainer: Trainer, tag: str, image: torch.Tensor) -> None:
    """Log a (3, H, W) image in [0, 1] under ``tag`` to every TensorBoard logger of ``trainer`` (rank 0 only)."""
    if trainer.is_global_zero:
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(tag, image, global_step=trainer.global_step)


class SampleGrid(Callback):
    """At the end of every validation, sample ``prompts`` with fixed seeds from the policy and from the reference
    model, and log a grid to TensorBoard under ``tag``: one row per prompt, the policy's image on the left, the
    reference's (same initial noise) on the right, each captioned "policy" / "base" and its prompt, and shown at
    least ``min_side`` pixels wide.
    """

    def __init__(
        self,
        prompts: list[str] | str,
        num_inference_steps: int = 20,
        guidance_scale: float = 5.0,
        seed: int = 0,
        tag: str = "samples/policy_vs_reference",
        min_side: int = 128,
    ) -> None:
        """
        Args:
            prompts: Prompts to sample, one grid row each, or a prompt file (``.txt`` one a line, ``.jsonl``,
                ``.parquet``; :func:`lit_pref.datamodules.prompts.read_prompts`) such as the shipped
                ``configs/prompts/toy_heldout_grid.txt``.
            num_inference_steps: DDIM steps.
            guidance_scale: Classifier-free guidance scale.
            seed: Seed of the initial noise; the same for every logging, so grids are comparable over time.
            tag: TensorBoard image tag.
            min_side: Smallest width an image is shown at (small images are enlarged by a whole factor).
        """
        prompts = read_prompts(prompts) if isinstance(prompts, str) else prompts
        if not prompts:
            raise ValueError("SampleGrid needs at least one prompt")
        self.prompts = list(prompts)
        self.num_inference_steps = num_inference_steps
        self.guidance_scale = guidance_scale
        self.seed = seed
        self.tag = tag
        self.min_side = min_side

    @torch.no_grad()
    def grid(self, pl_module: LightningModule) -> torch.Tensor:
        """The (3, H, W) grid image in [0, 1]: policy | reference for every prompt, captioned."""
        backbone = pl_module.backbone
        kwargs = dict(num_inference_steps=self.num_inference_steps, guidance_scale=self.guidance_scale)
        policy = backbone.sample(self.prompts, generator=torch.Generator(backbone.device).manual_seed(self.seed), **kwargs)
        with backbone.reference_forward():
            reference = backbone.sample(
                self.prompts, generator=torch.Generator(backbone.device).manual_seed(self.seed), **kwargs
            )
        pairs = torch.stack([policy, reference], dim=1).flatten(0, 1)  # p0, r0, p1, r1, ...
        captions = [f"{label}\n{prompt}" for prompt in self.prompts for label in ("policy", "base")]
        return captioned_grid(pairs, captions, nrow=2, min_side=self.min_side)

    def _log(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Every rank samples (a sharded model needs all ranks in its forward); rank 0 logs.
        log_image(trainer, self.tag, self.grid(pl_module))

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self._log(trainer, pl_module)
