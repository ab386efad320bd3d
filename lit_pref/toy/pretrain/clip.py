"""Pre-train a small open_clip CLIP contrastively (a toy CLIP for CLIP scores and embedding rewards)."""

from __future__ import annotations

import json
from typing import Any

import open_clip
import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import OptimizerCallable
from safetensors.torch import save_file

from lit_pref.io import atomic_dir

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class CLIPPretrain(LightningModule):
    """Train an open_clip ``CLIP`` (ViT image tower, transformer text tower) with the symmetric InfoNCE loss.

    Batches: ``{"pixel_values": [-1, 1], "captions": list[str]}``. At the end of fit the model is saved to
    ``output_dir`` as ``open_clip_config.json`` + ``open_clip_model.safetensors``, the layout that
    ``open_clip.create_model_and_transforms("local-dir:<output_dir>")`` loads.
    """

    def __init__(
        self,
        output_dir: str,
        embed_dim: int = 64,
        image_size: int = 32,
        patch_size: int = 4,
        vision_width: int = 64,
        vision_layers: int = 2,
        vision_heads: int = 4,
        text_width: int = 64,
        text_layers: int = 2,
        text_heads: int = 4,
        context_length: int = 77,
        optimizer: OptimizerCallable = torch.optim.AdamW,
    ) -> None:
        """
        Args:
            output_dir: Folder the trained model is saved to (open_clip local-dir layout).
            embed_dim: Dimension of the joint embedding space.
            image_size: Input side in pixels.
            patch_size: ViT patch side in pixels.
            vision_width: ViT width.
            vision_layers: ViT depth.
            vision_heads: ViT heads (width / heads = head dim).
            text_width: Text transformer width.
            text_layers: Text transformer depth.
            text_heads: Text transformer heads.
            context_length: Text tokens (open_clip's CLIP BPE tokenizer, which it ships).
            optimizer: Optimizer factory.
        """
        super().__init__()
        self.output_dir = output_dir
        self.optimizer = optimizer
        self.model_cfg = {
            "embed_dim": embed_dim,
            "vision_cfg": {"image_size": image_size, "patch_size": patch_size, "width": vision_width,
                           "layers": vision_layers, "head_width": vision_width // vision_heads},
            "text_cfg": {"context_length": context_length, "vocab_size": 49408, "width": text_width,
                         "heads": text_heads, "layers": text_layers},
        }
        self.model = open_clip.CLIP(**self.model_cfg)
        self.tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=context_length)
        self.loss = open_clip.ClipLoss()
        self.register_buffer("mean", torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(OPENAI_STD).view(1, 3, 1, 1), persistent=False)

    def configure_optimizers(self) -> Any:
        return self.optimizer(self.parameters())

    def _features(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        images = ((batch["pixel_values"] + 1) / 2 - self.mean) / self.std
        tokens = self.tokenizer(batch["captions"]).to(self.device)
        return self.model.encode_image(images, normalize=True), self.model.encode_text(tokens, normalize=True)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        image_features, text_features = self._features(batch)
        loss = self.loss(image_features, text_features, self.model.logit_scale.exp())
        self.log_dict({"train/loss": loss, "train/logit_scale": self.model.logit_scale.exp()}, prog_bar=True)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        image_features, text_features = self._features(batch)
        loss = self.loss(image_features, text_features, self.model.logit_scale.exp())
        self.log("val/loss", loss, sync_dist=True)

    def on_fit_end(self) -> None:
        if not self.trainer.is_global_zero:
            return
        config = {
            "model_cfg": self.model_cfg,
            "preprocess_cfg": {"size": self.model_cfg["vision_cfg"]["image_size"], "mean": list(OPENAI_MEAN),
                               "std": list(OPENAI_STD), "interpolation": "bicubic", "resize_mode": "shortest"},
        }
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        with atomic_dir(self.output_dir) as tmp:
            (tmp / "open_clip_config.json").write_text(json.dumps(config, indent=2))
            save_file(state, tmp / "open_clip_model.safetensors")
