"""Log fixed-seed samples of the policy next to the reference (adapters off) to TensorBoard."""

from __future__ import annotations

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from torchvision.utils import make_grid


class SampleGrid(Callback):
    """At the end of every validation (and of fit), sample ``prompts`` with fixed seeds from the policy and
    from the reference model, and log a grid to TensorBoard under ``tag``: one row per prompt, the policy's
    image on the left, the reference's (same initial noise) on the right.
    """

    def __init__(
        self,
        prompts: list[str],
        num_inference_steps: int = 20,
        guidance_scale: float = 5.0,
        seed: int = 0,
        tag: str = "samples/policy_vs_reference",
    ) -> None:
        """
        Args:
            prompts: Prompts to sample, one grid row each.
            num_inference_steps: DDIM steps.
            guidance_scale: Classifier-free guidance scale.
            seed: Seed of the initial noise; the same for every logging, so grids are comparable over time.
            tag: TensorBoard image tag.
        """
        if not prompts:
            raise ValueError("SampleGrid needs at least one prompt")
        self.prompts = list(prompts)
        self.num_inference_steps = num_inference_steps
        self.guidance_scale = guidance_scale
        self.seed = seed
        self.tag = tag

    @torch.no_grad()
    def grid(self, pl_module: LightningModule) -> torch.Tensor:
        """The (3, H, W) grid image in [0, 1]: policy | reference for every prompt."""
        backbone = pl_module.backbone
        kwargs = dict(num_inference_steps=self.num_inference_steps, guidance_scale=self.guidance_scale)
        policy = backbone.sample(self.prompts, generator=torch.Generator(backbone.device).manual_seed(self.seed), **kwargs)
        with backbone.reference():
            reference = backbone.sample(
                self.prompts, generator=torch.Generator(backbone.device).manual_seed(self.seed), **kwargs
            )
        pairs = torch.stack([policy, reference], dim=1).flatten(0, 1)  # p0, r0, p1, r1, ...
        return make_grid(pairs.float().cpu(), nrow=2, padding=2, pad_value=1.0)

    def _log(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Every rank samples (a sharded model needs all ranks in its forward); rank 0 logs.
        image = self.grid(pl_module)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                if isinstance(logger, TensorBoardLogger):
                    logger.experiment.add_image(self.tag, image, global_step=trainer.global_step)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self._log(trainer, pl_module)
