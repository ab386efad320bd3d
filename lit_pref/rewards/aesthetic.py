"""LAION improved aesthetic predictor v2: an MLP on the L2-normalised CLIP ViT-L/14 image embedding."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn

from lit_pref.rewards.base import Scorer
from lit_pref.rewards.clip_score import embed_images, load_open_clip

__all__ = ["AestheticMLP", "AestheticScorer"]


class AestheticMLP(nn.Module):
    """The head of ``sac+logos+ava1-l14-linearMSE.pth``: linear layers with dropouts and no activations.

    State-dict keys are exactly ``layers.{0,2,4,6,7}.{weight,bias}``.

    Args:
        input_size: Width of the CLIP embedding (768 for ViT-L/14, the official checkpoint).
    """

    def __init__(self, input_size: int = 768) -> None:
        super().__init__()
        self.input_size = input_size
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024), nn.Dropout(0.2),
            nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)

    @classmethod
    def from_file(cls, path: str | Path, input_size: int = 768) -> "AestheticMLP":
        """Loads a checkpoint strictly (missing or extra keys raise).

        Args:
            path: ``.pth``/``.pt`` (a plain state dict; loaded with ``map_location="cpu"`` because the official
                file was saved on cuda) or ``.safetensors``.
            input_size: Width of the CLIP embedding.
        """
        path = Path(path)
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        mlp = cls(input_size)
        mlp.load_state_dict(state, strict=True)
        return mlp


class AestheticScorer(Scorer):
    """LAION aesthetic score v2: ``mlp(normalize(clip.encode_image(x)))``, raw output (about 1-10 with real weights).

    Real use: ``AestheticScorer("sac+logos+ava1-l14-linearMSE.pth")`` (open_clip ViT-L-14, ``openai`` weights).
    Tests: pass a small open_clip model (a ``local-dir:`` folder or a built module) and ``embed_dim`` equal to its
    embedding width.

    Args:
        mlp_path: The head's checkpoint (``.pth`` or ``.safetensors``); ``None`` gives a randomly initialised head
            (tests only; a warning is emitted).
        clip_model: An open_clip model name, ``"local-dir:/path"``, ``"hf-hub:org/repo"`` or a built open_clip
            ``CLIP`` module.
        clip_pretrained: Pretrained tag or local checkpoint path for ``clip_model``; ``None`` for folders/modules.
        device: Device CLIP and the head run on; scores come back on the images' device.
        embed_dim: Input width of the head; must equal the CLIP embedding width (768 for ViT-L/14).
        batch_size: Images encoded per forward pass.
    """

    def __init__(self, mlp_path: str | None = None, clip_model: str | nn.Module = "ViT-L-14",
                 clip_pretrained: str | None = "openai", device: str = "cpu", *, embed_dim: int = 768,
                 batch_size: int = 32) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.batch_size = batch_size
        if mlp_path is None:
            warnings.warn("AestheticScorer without mlp_path: the head has random weights", stacklevel=2)
            self.mlp = AestheticMLP(embed_dim)
        else:
            self.mlp = AestheticMLP.from_file(mlp_path, embed_dim)
        self.mlp = self.mlp.to(self.device).eval().requires_grad_(False)
        self.clip, self.preprocess_cfg = load_open_clip(clip_model, clip_pretrained, self.device)
        width = getattr(self.clip.visual, "output_dim", None)
        if width is not None and width != embed_dim:
            raise ValueError(f"CLIP embeds to {width} dims but the head expects {embed_dim}")

    @torch.no_grad()
    def embed_images(self, images: Tensor) -> Tensor:
        """L2-normalised CLIP image embeddings ``[B, D]`` (float32, on the scorer's device).

        Args:
            images: ``[B, 3, H, W]`` float in ``[0, 1]``.
        """
        return embed_images(self.clip, self.preprocess_cfg, images, self.device, self.batch_size)

    @torch.no_grad()
    def score(self, images: Tensor, prompts: Sequence[str] | None = None) -> Tensor:
        """Aesthetic scores ``[B]`` on the images' device; prompts are ignored.

        Args:
            images: ``[B, 3, H, W]`` float in ``[0, 1]``.
            prompts: Ignored (the predictor sees only the image); accepted for the :class:`Scorer` interface.
        """
        if images.ndim != 4:
            raise ValueError(f"expected [B,3,H,W] images, got {tuple(images.shape)}")
        return self.mlp(self.embed_images(images)).squeeze(-1).to(images.device)
