"""The DPO-trained reward model's head on frozen open_clip features, its saved folder, and its scorer.

A saved reward model is a folder with ``config.json`` (which CLIP, the head's sizes and its image features) and
``head.safetensors``
(the head's weights), written by :meth:`lit_pref.modules.RewardModel.save_pretrained` and read by
:class:`RewardModelScorer`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from lit_pref.backbone.backbone import TOY_PIPELINE
from lit_pref.io import atomic_dir
from lit_pref.rewards.base import Scorer
from lit_pref.rewards.clip_score import clip_preprocess, load_open_clip

TOY_CLIP = TOY_PIPELINE.parent / "clip"
CONFIG_FILE = "config.json"
HEAD_FILE = "head.safetensors"


def resolve_clip(model: str | nn.Module, pretrained: str | None) -> tuple[str | nn.Module, str | None]:
    """``("toy", any)`` -> ``("local-dir:<lit_pref>/assets/toy/clip", None)`` (the shipped toy CLIP, which carries
    its weights); anything else unchanged."""
    return (f"local-dir:{TOY_CLIP}", None) if model == "toy" else (model, pretrained)


def clip_tokenizer(model: str | nn.Module):
    """open_clip's tokenizer for a model name or folder (the standard CLIP BPE for a built module)."""
    return open_clip.get_tokenizer(model if isinstance(model, str) else "ViT-B-32")


def clip_image_features(clip: nn.Module, pixels: Tensor, patch_grid: int = 0) -> tuple[Tensor, Tensor | None]:
    """The image features a reward head reads, from CLIP-preprocessed pixels ``[B, 3, S, S]``.

    Args:
        clip: An open_clip ``CLIP`` (frozen).
        pixels: Preprocessed images (:func:`~lit_pref.rewards.clip_score.clip_preprocess`).
        patch_grid: 0: the pooled embedding only. g > 0: also the vision transformer's patch tokens (after its final
            LayerNorm; ``[B, n*n, W]`` for an n x n patch grid) average-pooled to a g x g grid and flattened to
            ``[B, W * g * g]``, features that keep where things are in the image, which the pooled embedding
            largely loses.

    Returns:
        ``(e_i, grid)``: the L2-normalised pooled embedding ``[B, D]`` (as ``clip.encode_image(normalize=True)``)
        and the pooled patch grid (``None`` when ``patch_grid`` is 0), both float32.
    """
    if patch_grid == 0:
        return clip.encode_image(pixels, normalize=True).float(), None
    visual = clip.visual
    if not hasattr(visual, "output_tokens"):
        raise ValueError(f"patch_grid > 0 needs a vision transformer with patch tokens; "
                         f"{type(visual).__name__} has none")
    visual.output_tokens = True
    try:
        pooled, tokens = visual(pixels)
    finally:
        visual.output_tokens = False
    n = math.isqrt(tokens.shape[1])
    if n * n != tokens.shape[1]:
        raise ValueError(f"expected a square grid of patch tokens, got {tokens.shape[1]}")
    grid = tokens.float().transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], n, n)
    grid = F.adaptive_avg_pool2d(grid, patch_grid).flatten(1)
    return F.normalize(pooled.float(), dim=-1), grid


def patch_width(clip: nn.Module) -> int:
    """Width W of a vision transformer's patch tokens (its ``ln_post`` width)."""
    return int(clip.visual.ln_post.normalized_shape[0])


class RewardHead(nn.Module):
    """Scores an (image, prompt) pair from its L2-normalised CLIP embeddings ``e_i`` and ``e_t`` and, optionally,
    the image's pooled patch grid ``g`` (:func:`clip_image_features`): ``mlp([e_i, e_t, e_i * e_t, g])`` (one hidden
    GELU layer; a linear map with ``hidden_dim = 0``)."""

    def __init__(self, embed_dim: int, hidden_dim: int = 256, grid_dim: int = 0) -> None:
        """
        Args:
            embed_dim: Width D of the CLIP embeddings.
            hidden_dim: Width of the hidden layer; 0 for a linear head.
            grid_dim: Length of the patch-grid features (``W * g * g``); 0: the head reads the embeddings only.
        """
        super().__init__()
        self.embed_dim = embed_dim
        self.hidden_dim = hidden_dim
        self.grid_dim = grid_dim
        width = 3 * embed_dim + grid_dim
        if hidden_dim > 0:
            self.mlp = nn.Sequential(nn.Linear(width, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, 1))
        else:
            self.mlp = nn.Sequential(nn.Linear(width, 1))

    def forward(self, image_embeddings: Tensor, text_embeddings: Tensor, grid: Tensor | None = None) -> Tensor:
        """(B,) scores from (B, D) image and (B, D) text embeddings (normalised here) and, when the head has
        ``grid_dim > 0``, the (B, grid_dim) patch-grid features."""
        e_i = F.normalize(image_embeddings.float(), dim=-1)
        e_t = F.normalize(text_embeddings.float(), dim=-1)
        parts = [e_i, e_t, e_i * e_t]
        if (grid is None) != (self.grid_dim == 0):
            raise ValueError(f"the head reads {self.grid_dim} patch-grid features; got "
                             f"{'none' if grid is None else tuple(grid.shape)}")
        if grid is not None:
            parts.append(grid.float())
        return self.mlp(torch.cat(parts, dim=-1)).squeeze(-1)


def save_reward_model(directory: str | Path, head: RewardHead, clip_model: str, clip_pretrained: str | None,
                      patch_grid: int = 0) -> Path:
    """Write ``config.json`` and ``head.safetensors`` into ``directory``, atomically (``patch_grid``: see
    :func:`clip_image_features`)."""
    if not isinstance(clip_model, str):
        raise TypeError("a saved reward model names its CLIP: pass clip_model as a name, local-dir: or hf-hub: id")
    config = {"clip_model": clip_model, "clip_pretrained": clip_pretrained, "embed_dim": head.embed_dim,
              "hidden_dim": head.hidden_dim, "grid_dim": head.grid_dim, "patch_grid": patch_grid}
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in head.state_dict().items()}
    with atomic_dir(directory) as tmp:
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        save_file(state, str(tmp / HEAD_FILE))
    return Path(directory)


def load_reward_head(directory: str | Path) -> tuple[RewardHead, dict]:
    """The head (eval mode, no grad) and the config of a folder written by :func:`save_reward_model`. Folders
    saved before patch grids existed have no ``grid_dim``/``patch_grid``: they read the pooled embedding only (0)."""
    folder = Path(directory)
    for name in (CONFIG_FILE, HEAD_FILE):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder} is not a saved reward model: it has no {name}")
    config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    missing = [k for k in ("clip_model", "clip_pretrained", "embed_dim", "hidden_dim") if k not in config]
    if missing:
        raise KeyError(f"{folder / CONFIG_FILE}: missing key(s) {missing}")
    config.setdefault("grid_dim", 0)
    config.setdefault("patch_grid", 0)
    head = RewardHead(int(config["embed_dim"]), int(config["hidden_dim"]), int(config["grid_dim"]))
    head.load_state_dict(load_file(str(folder / HEAD_FILE)), strict=True)
    return head.eval().requires_grad_(False), config


class RewardModelScorer(Scorer):
    """The DPO-trained reward model as a scorer: its head on the frozen open_clip features it was trained on (the
    pooled embedding, and the pooled patch grid where the saved config has ``patch_grid`` > 0).

    Args:
        path: A folder written by ``lit_pref.modules.RewardModel`` (``config.json`` + ``head.safetensors``).
        device: Device of CLIP and the head; scores come back on the images' device.
        batch_size: Images (and prompts) encoded per forward pass.
    """

    def __init__(self, path: str, device: str = "cpu", batch_size: int = 64) -> None:
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.head, self.config = load_reward_head(path)
        self.head.to(self.device)
        clip_model, pretrained = resolve_clip(self.config["clip_model"], self.config["clip_pretrained"])
        self.clip, self.preprocess_cfg = load_open_clip(clip_model, pretrained, self.device)
        self.tokenizer = clip_tokenizer(clip_model)

    @torch.no_grad()
    def score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        """Scores ``[B]`` (on the images' device) of images ``[B, 3, H, W]`` in ``[0, 1]`` and their prompts."""
        if images.ndim != 4 or len(prompts) != images.shape[0]:
            raise ValueError(f"expected [B,3,H,W] images and B prompts, got {tuple(images.shape)} and {len(prompts)}")
        patch_grid = int(self.config["patch_grid"])
        features = [clip_image_features(self.clip, clip_preprocess(chunk.to(self.device), self.preprocess_cfg),
                                        patch_grid) for chunk in images.split(self.batch_size)]
        e_i = torch.cat([f[0] for f in features])
        grid = torch.cat([f[1] for f in features]) if patch_grid else None
        e_t = torch.cat([self.clip.encode_text(self.tokenizer(list(chunk)).to(self.device), normalize=True).float()
                         for chunk in _chunks(list(prompts), self.batch_size)])
        return self.head(e_i, e_t, grid).to(images.device)


def _chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]
