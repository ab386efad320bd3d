"""Pre-train a small AutoencoderKL from scratch (the first stage of a toy latent diffusion model)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import OptimizerCallable

from lit_pref.io import atomic_dir


class VAEPretrain(LightningModule):
    """Train an ``AutoencoderKL`` on batches ``{"pixel_values": [-1, 1]}``: MSE reconstruction + KL.

    At the end of fit, sets ``scaling_factor`` to 1 / (std of the latents of one training batch), as SD did,
    and saves the VAE (``save_pretrained``) to ``output_dir``, atomically.
    """

    def __init__(
        self,
        output_dir: str,
        block_out_channels: list[int] = [16, 32],
        layers_per_block: int = 1,
        latent_channels: int = 4,
        norm_num_groups: int = 8,
        resolution: int = 32,
        kl_weight: float = 1e-6,
        optimizer: OptimizerCallable = torch.optim.AdamW,
    ) -> None:
        """
        Args:
            output_dir: Folder the trained VAE is saved to (diffusers layout: config.json + weights).
            block_out_channels: Channels per encoder/decoder block; each block after the first halves the side.
            layers_per_block: ResNet layers per block.
            latent_channels: Channels of the latent.
            norm_num_groups: GroupNorm groups.
            resolution: Image side in pixels (written to the config as ``sample_size``).
            kl_weight: Weight of the KL term (small: the latent only needs to be roughly Gaussian).
            optimizer: Optimizer factory.
        """
        super().__init__()
        self.output_dir = output_dir
        self.kl_weight = kl_weight
        self.optimizer = optimizer
        n = len(block_out_channels)
        self.vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * n,
            up_block_types=("UpDecoderBlock2D",) * n,
            block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block,
            latent_channels=latent_channels,
            norm_num_groups=norm_num_groups,
            sample_size=resolution,
        )

    def configure_optimizers(self) -> Any:
        return self.optimizer(self.parameters())

    def _losses(self, images: torch.Tensor, sample: bool) -> tuple[torch.Tensor, torch.Tensor]:
        posterior = self.vae.encode(images).latent_dist
        latents = posterior.sample() if sample else posterior.mode()
        reconstruction = self.vae.decode(latents).sample
        return F.mse_loss(reconstruction, images), posterior.kl().mean()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        mse, kl = self._losses(batch["pixel_values"], sample=True)
        loss = mse + self.kl_weight * kl
        self.log_dict({"train/loss": loss, "train/recon_mse": mse, "train/kl": kl}, prog_bar=True)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        mse, kl = self._losses(batch["pixel_values"], sample=False)
        self.log_dict({"val/recon_mse": mse, "val/kl": kl}, sync_dist=True)

    @torch.no_grad()
    def on_fit_end(self) -> None:
        if not self.trainer.is_global_zero:
            return
        images = next(iter(self.trainer.datamodule.train_dataloader()))["pixel_values"].to(self.device)
        std = self.vae.encode(images).latent_dist.mode().std().item()
        self.vae.register_to_config(scaling_factor=1.0 / std)
        with atomic_dir(self.output_dir) as tmp:
            self.vae.save_pretrained(tmp)
