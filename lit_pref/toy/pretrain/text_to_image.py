"""Pre-train a small latent text-to-image model from scratch: UNet and CLIP text encoder, jointly."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from transformers import CLIPTextConfig, CLIPTextModel

from lit_pref.backbone.tiny import sd_noise_scheduler
from lit_pref.backbone.tokenizer import offline_clip_tokenizer, reduced_clip_tokenizer, write_bpe_files
from lit_pref.io import atomic_dir


class TextToImagePretrain(LightningModule):
    """Train a ``UNet2DConditionModel`` and a ``CLIPTextModel`` from scratch on a frozen, pre-trained VAE.

    Batches: ``{"pixel_values": [-1, 1], "captions": list[str]}``. Epsilon (or v) prediction on SD's
    scaled-linear schedule; a fraction of captions is replaced by "" so classifier-free guidance works; an
    exponential moving average of the weights is kept, and at the end of fit the EMA weights are saved to
    ``output_dir`` as a standard ``StableDiffusionPipeline`` folder.
    """

    def __init__(
        self,
        vae: str,
        output_dir: str,
        vocabulary: list[str] | None = None,
        block_out_channels: list[int] = [32, 64],
        layers_per_block: int = 1,
        down_block_types: list[str] = ["DownBlock2D", "CrossAttnDownBlock2D"],
        up_block_types: list[str] = ["CrossAttnUpBlock2D", "UpBlock2D"],
        attention_head_dim: int = 4,
        norm_num_groups: int = 8,
        text_width: int = 64,
        text_layers: int = 2,
        text_heads: int = 4,
        caption_dropout: float = 0.1,
        ema_decay: float = 0.999,
        prediction_type: str = "epsilon",
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        """
        Args:
            vae: Folder of a trained ``AutoencoderKL`` (e.g. written by ``VAEPretrain``); kept frozen.
            output_dir: Folder the pipeline is saved to at the end of fit.
            vocabulary: Words the tokenizer keeps whole (a reduced CLIP BPE vocabulary, ~600 tokens instead of
                49,408, which keeps the text encoder small); ``None`` = the full CLIP vocabulary.
            block_out_channels: UNet channels per resolution level.
            layers_per_block: UNet ResNet layers per block.
            down_block_types: UNet down blocks (leave attention out of the highest resolution on CPU).
            up_block_types: UNet up blocks, mirroring ``down_block_types``.
            attention_head_dim: diffusers' ``attention_head_dim`` of the UNet (used as the number of heads).
            norm_num_groups: GroupNorm groups of the UNet.
            text_width: Text encoder width, also the UNet's cross-attention dimension.
            text_layers: Text encoder depth.
            text_heads: Text encoder heads.
            caption_dropout: Probability of training on the empty caption.
            ema_decay: Decay of the exponential moving average saved at the end (0 = save the raw weights).
            prediction_type: ``"epsilon"`` or ``"v_prediction"``.
            optimizer: Optimizer factory (UNet and text encoder parameters).
            scheduler: Learning-rate scheduler factory, stepped every optimizer step.
        """
        super().__init__()
        self.output_dir = output_dir
        self.caption_dropout = caption_dropout
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.vae = AutoencoderKL.from_pretrained(vae).requires_grad_(False).eval()
        self.tokenizer = reduced_clip_tokenizer(vocabulary) if vocabulary else offline_clip_tokenizer()
        self.text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(self.tokenizer),
                hidden_size=text_width,
                intermediate_size=4 * text_width,
                num_hidden_layers=text_layers,
                num_attention_heads=text_heads,
                max_position_embeddings=self.tokenizer.model_max_length,
                projection_dim=text_width,
                bos_token_id=self.tokenizer.bos_token_id,
                eos_token_id=self.tokenizer.eos_token_id,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        )
        latent_side = self.vae.config.sample_size // 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.unet = UNet2DConditionModel(
            sample_size=latent_side,
            in_channels=self.vae.config.latent_channels,
            out_channels=self.vae.config.latent_channels,
            block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block,
            down_block_types=tuple(down_block_types),
            up_block_types=tuple(up_block_types),
            cross_attention_dim=text_width,
            attention_head_dim=attention_head_dim,
            norm_num_groups=norm_num_groups,
        )
        self.scheduler_config = dict(sd_noise_scheduler(prediction_type).config)
        self.noise_scheduler = DDPMScheduler.from_config(self.scheduler_config)
        models = nn.ModuleDict({"unet": self.unet, "text_encoder": self.text_encoder})
        self.ema = AveragedModel(models, multi_avg_fn=get_ema_multi_avg_fn(ema_decay)) if ema_decay > 0 else None

    def configure_optimizers(self) -> Any:
        params = list(self.unet.parameters()) + list(self.text_encoder.parameters())
        optimizer = self.optimizer(params)
        if self.scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler(optimizer), "interval": "step"}}

    def _loss(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> torch.Tensor:
        images = batch["pixel_values"]
        with torch.no_grad():
            latents = self.vae.encode(images).latent_dist.sample(generator) * self.vae.config.scaling_factor
        noise = torch.randn(latents.shape, device=self.device, generator=generator)
        num_train = self.noise_scheduler.config.num_train_timesteps
        timesteps = torch.randint(0, num_train, (latents.shape[0],), device=self.device, generator=generator)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        ids = self.tokenizer(batch["captions"], padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids.to(self.device)
        hidden = self.text_encoder(ids)[0]
        return F.mse_loss(self.unet(noisy, timesteps, hidden).sample, target)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        drop = torch.rand(len(batch["captions"])) < self.caption_dropout
        batch = {**batch, "captions": ["" if d else c for c, d in zip(batch["captions"], drop.tolist())]}
        loss = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"])
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.ema is not None:
            self.ema.update_parameters(nn.ModuleDict({"unet": self.unet, "text_encoder": self.text_encoder}))

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        generator = torch.Generator(self.device).manual_seed(batch_idx)
        self.log("val/loss", self._loss(batch, generator), sync_dist=True)

    def pipeline(self) -> StableDiffusionPipeline:
        """The model as a ``StableDiffusionPipeline`` (EMA weights when kept) with a DDIM scheduler."""
        models = self.ema.module if self.ema is not None else {"unet": self.unet, "text_encoder": self.text_encoder}
        return StableDiffusionPipeline(
            vae=self.vae,
            text_encoder=models["text_encoder"],
            tokenizer=self.tokenizer,
            unet=models["unet"],
            scheduler=DDIMScheduler.from_config(self.scheduler_config),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )

    def on_fit_end(self) -> None:
        if not self.trainer.is_global_zero:
            return
        with atomic_dir(self.output_dir) as tmp:
            self.pipeline().save_pretrained(tmp)
            write_bpe_files(tmp / "tokenizer")
