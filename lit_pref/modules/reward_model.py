"""RewardModel: VCA's "DPO-trained reward model", a head on frozen open_clip features trained on preference pairs
with the Bradley-Terry loss or any injected ``RewardLoss`` (docs/methods.md §4)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from lit_pref.losses import BradleyTerryLoss, RewardLoss
from lit_pref.modules.empty_batches import EmptyBatchGuard
from lit_pref.rewards.clip_score import clip_preprocess, load_open_clip
from lit_pref.rewards.reward_model import (RewardHead, clip_image_features, clip_tokenizer, patch_width, resolve_clip,
                                           save_reward_model)


class RewardModel(EmptyBatchGuard, LightningModule):
    """Trains a :class:`~lit_pref.rewards.reward_model.RewardHead` on frozen open_clip image and text embeddings
    (and, with ``patch_grid`` > 0, the image's patch tokens pooled to a grid).

    Batches are those of ``lit_pref.datamodules.PreferencePairDataModule`` / ``ToyPreferenceDataModule``: ``images_0``,
    ``images_1`` in [-1, 1], ``label_0`` (1: image 0 preferred, 0: image 1, 0.5: tie) and ``captions``. Per pair
    the loss is the injected ``loss`` of the head's scores (by default ``-logsigmoid(beta * (s_w - s_l))``, averaged
    over the batch); logged as ``train/loss``,
    ``train/accuracy`` (s_w > s_l), ``train/margin``, ``train/ties_dropped`` and ``val/*`` alike.

    Satisfaction as an extra target: batches of ``DialogueDataModule(pairs=True)`` carry ``satisfaction`` ``[B]``, the
    satisfaction in ``[0, 1]`` a person recorded for the round's chosen image (NaN: none recorded). With
    ``satisfaction_weight`` w > 0 the loss adds ``w * mean((sigmoid(s_w) - satisfaction)^2)`` over the kept pairs that
    recorded one (the chosen image is the winner), so the score's level, not only its differences, follows what
    people said; logged as ``train/satisfaction_mse``. Batches without the key, or without recorded values, add 0.

    At the end of fit the head and the name of its CLIP are saved to ``export_dir`` (default
    ``<log_dir>/reward_model``), the folder ``lit_pref.rewards.RewardModelScorer`` loads. Lightning checkpoints
    hold the head only (CLIP is frozen and named by the config).
    """

    def __init__(
        self,
        clip_model: str = "ViT-L-14",
        clip_pretrained: str | None = "openai",
        hidden_dim: int = 256,
        loss: RewardLoss | None = None,
        ties: Literal["drop", "keep_first", "raise"] = "drop",
        optimizer: OptimizerCallable = torch.optim.AdamW,
        export_dir: str | None = None,
        satisfaction_weight: float = 0.0,
        patch_grid: int = 0,
    ) -> None:
        """
        Args:
            clip_model: The frozen open_clip model: a name (``"ViT-L-14"``), ``"toy"`` (the shipped toy CLIP), a
                ``local-dir:`` folder or an ``hf-hub:`` id.
            clip_pretrained: Pretrained tag or checkpoint of ``clip_model`` (``None`` for folders and ``"toy"``).
            hidden_dim: Width of the head's hidden layer; 0 for a linear head.
            loss: The loss on the head's scores of winners and losers; any ``lit_pref.losses.RewardLoss``
                (``None``: ``BradleyTerryLoss()``).
            ties: Pairs with ``label_0 == 0.5``: ``drop`` (counted as ``train/ties_dropped``), ``keep_first``
                (image 0 as winner), or ``raise``.
            optimizer: Optimizer factory, called with the head's parameters.
            export_dir: Folder the trained reward model is saved to at the end of fit; ``None`` =
                ``<trainer.log_dir>/reward_model``.
            satisfaction_weight: Weight w of the satisfaction term (see the class docstring); 0 turns it off.
            patch_grid: Image features the head reads besides the pooled CLIP embedding: 0 (default) none; g > 0 the
                vision transformer's patch tokens average-pooled to a g x g grid (W * g * g more inputs), which
                keep the layout (where a shape sits) that the pooled embedding largely loses. The toy CLIP's pooled
                embedding cannot tell a centred shape from an off-centre one; ``patch_grid: 4`` can.
        """
        super().__init__()
        if hidden_dim < 0:
            raise ValueError(f"hidden_dim must be >= 0, got {hidden_dim}")
        if ties not in ("drop", "keep_first", "raise"):
            raise ValueError(f"ties must be 'drop', 'keep_first' or 'raise', got {ties!r}")
        if patch_grid < 0:
            raise ValueError(f"patch_grid must be >= 0, got {patch_grid}")
        self.clip_model = clip_model
        self.clip_pretrained = clip_pretrained
        model, pretrained = resolve_clip(clip_model, clip_pretrained)
        self.clip, self.preprocess_cfg = load_open_clip(model, pretrained, "cpu")
        self.tokenizer = clip_tokenizer(model)
        embed_dim = int(self.clip.encode_text(self.tokenizer([""])).shape[-1])
        self.patch_grid = patch_grid
        grid_dim = patch_width(self.clip) * patch_grid**2 if patch_grid else 0
        self.head = RewardHead(embed_dim, hidden_dim, grid_dim)
        self.loss = loss if loss is not None else BradleyTerryLoss()
        self.ties = ties
        self.optimizer = optimizer
        self.export_dir = export_dir
        self.satisfaction_weight = satisfaction_weight
        self.strict_loading = False  # checkpoints hold the head only

    def train(self, mode: bool = True) -> RewardModel:
        """The frozen CLIP stays in eval mode."""
        super().train(mode)
        self.clip.eval()
        return self

    def configure_optimizers(self) -> Any:
        return self.optimizer(list(self.head.parameters()))

    # ------------------------------------------------------------------ scoring
    @torch.no_grad()
    def embed(self, images: Tensor, captions: list[str]) -> tuple[Tensor, Tensor, Tensor | None]:
        """L2-normalised CLIP embeddings of images in [0, 1] (B, 3, H, W) and their captions, and the images'
        pooled patch grid (``None`` with ``patch_grid`` 0; see ``clip_image_features``)."""
        pixels = clip_preprocess(images.to(self.device), self.preprocess_cfg)
        e_i, grid = clip_image_features(self.clip, pixels, self.patch_grid)
        e_t = self.clip.encode_text(self.tokenizer(captions).to(self.device), normalize=True)
        return e_i, e_t.float(), grid

    def forward(self, images: Tensor, captions: list[str]) -> Tensor:
        """(B,) scores of images in [0, 1] and their captions (gradients reach the head only)."""
        return self.head(*self.embed(images, captions))

    def winners_and_losers(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor, list[str], int]:
        """``(images_w, images_l, captions, ties_dropped)`` in [0, 1], ordered by ``label_0`` per the ties policy."""
        label = batch["label_0"].to(self.device)
        tie = label == 0.5
        if self.ties == "raise" and bool(tie.any()):
            raise ValueError(f"batch has {int(tie.sum())} tie(s) (label_0 == 0.5) and ties='raise'")
        keep = ~tie if self.ties == "drop" else torch.ones_like(tie)
        first = (label >= 0.5).view(-1, 1, 1, 1)
        images_0, images_1 = (batch[k].to(self.device) / 2 + 0.5 for k in ("images_0", "images_1"))
        captions = [c for c, k in zip(batch["captions"], keep.tolist()) if k]
        return (torch.where(first, images_0, images_1)[keep], torch.where(first, images_1, images_0)[keep],
                captions, int((~keep).sum()))

    def _step(self, batch: dict[str, Any], stage: str) -> Tensor | None:
        images_w, images_l, captions, dropped = self.winners_and_losers(batch)
        if stage == "train":
            self.log("train/ties_dropped", float(dropped), on_step=False, on_epoch=True, reduce_fx="sum")
        n = len(captions)
        if n == 0:  # nothing to learn from: a zero loss that still runs backward, and the step is skipped
            return self.empty_batch_loss(self.head.parameters()) if stage == "train" else None
        scores = self(torch.cat([images_w, images_l]), captions * 2)
        loss, stats = self.loss(scores[:n], scores[n:])
        if self.satisfaction_weight > 0 and "satisfaction" in batch:
            label = batch["label_0"].to(self.device)
            keep = label != 0.5 if self.ties == "drop" else torch.ones_like(label, dtype=torch.bool)
            target = batch["satisfaction"].to(self.device)[keep]
            recorded = ~torch.isnan(target)
            if bool(recorded.any()):
                mse = (torch.sigmoid(scores[:n][recorded]) - target[recorded]).pow(2).mean()
                loss = loss + self.satisfaction_weight * mse
                stats["satisfaction_mse"] = mse.detach()
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=n, sync_dist=stage != "train")
        self.log_dict({f"{stage}/{k}": v for k, v in stats.items()}, batch_size=n, sync_dist=stage != "train")
        return loss

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._step(batch, "test")

    # ------------------------------------------------------------------ saving
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write the folder ``lit_pref.rewards.RewardModelScorer`` loads (``config.json``, ``head.safetensors``)."""
        return save_reward_model(directory, self.head, self.clip_model, self.clip_pretrained, self.patch_grid)

    def on_fit_end(self) -> None:
        if self.export_dir is not None:
            directory = Path(self.export_dir)
        else:
            directory = Path(self.trainer.log_dir or self.trainer.default_root_dir) / "reward_model"
        if self.trainer.is_global_zero:
            self.save_pretrained(directory)
            rank_zero_info(f"reward model saved to {directory}")
        self.trainer.strategy.barrier("reward_model_export")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k.startswith("head.")}
