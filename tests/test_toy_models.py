"""The shipped toy world (pipeline, toy CLIP) and the modules that pre-train it."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline
from lightning.pytorch import Trainer

from lit_pref.toy import ToyImageDataModule, ToyImageDataset, ToyJudge, parse_caption, prompts as toy_prompts
from lit_pref.backbone import DiffusionBackbone
from lit_pref.backbone.backbone import TOY_PIPELINE
from lit_pref.backbone.tokenizer import offline_clip_tokenizer, reduced_clip_tokenizer
from lit_pref.toy.pretrain import CLIPPretrain, TextToImagePretrain, VAEPretrain
from lit_pref.toy.pretrain.clip import OPENAI_MEAN, OPENAI_STD

TOY_CLIP = TOY_PIPELINE.parent / "clip"


def folder_bytes(path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def test_shipped_pipeline_loads_in_stock_diffusers_and_matches_backbone():
    assert folder_bytes(TOY_PIPELINE) <= 25 * 2**20
    pipe = StableDiffusionPipeline.from_pretrained(TOY_PIPELINE)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    prompt = ["a large green triangle on a white background"]
    theirs = pipe(prompt, negative_prompt=[""], num_inference_steps=5, guidance_scale=4.0,
                  generator=torch.Generator().manual_seed(0), output_type="pt").images
    backbone = DiffusionBackbone(model="toy")
    ours = backbone.sample(prompt, num_inference_steps=5, guidance_scale=4.0, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    assert len(backbone.tokenizer) < 1000  # the reduced vocabulary travelled with the folder


def test_base_model_draws_held_out_colours():
    """Held-out colour-shape combinations (never seen in pre-training), 24 samples at 10 DDIM steps."""
    backbone = DiffusionBackbone(model="toy")
    texts = [p for p in toy_prompts("heldout") for _ in range(2)]
    images = backbone.sample(texts, num_inference_steps=10, guidance_scale=4.0,
                             generator=[torch.Generator().manual_seed(i) for i in range(len(texts))])
    readings = ToyJudge().read(images)
    colour = sum(r.colour == parse_caption(t).colour for r, t in zip(readings, texts)) / len(texts)
    shape = sum(r.shape == parse_caption(t).shape for r, t in zip(readings, texts)) / len(texts)
    assert colour >= 0.9 and shape >= 0.7, (colour, shape)  # chance: 1/6 and 1/3


@torch.no_grad()
def test_toy_clip_loads_with_open_clip_and_retrieves_held_out_captions():
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{TOY_CLIP}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{TOY_CLIP}")
    data = ToyImageDataset(48, split="heldout", seed=7)
    items = [data[i] for i in range(48)]
    mean, std = torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1), torch.tensor(OPENAI_STD).view(1, 3, 1, 1)
    images = ((torch.stack([it["pixel_values"] for it in items]) + 1) / 2 - mean) / std
    captions = [it["caption"] for it in items]
    sims = model.encode_text(tokenizer(captions), normalize=True) @ model.encode_image(images, normalize=True).T
    top1 = sum(captions[j] == captions[i] for i, j in enumerate(sims.argmax(1).tolist())) / len(items)
    assert top1 >= 0.8  # chance is about 1/12 (12 held-out captions)


def test_reduced_tokenizer_splits_known_words_like_clip():
    words = "a small large red green blue circle square triangle on white black background".split()
    reduced, full = reduced_clip_tokenizer(words), offline_clip_tokenizer()
    assert len(reduced) < 1000
    for text in ["a small red circle on a black background", "a cat", ""]:
        pieces = reduced.convert_ids_to_tokens(reduced(text).input_ids)
        if all(w in words for w in text.split()):
            assert pieces == full.convert_ids_to_tokens(full(text).input_ids)
        assert "".join(p for p in pieces[1:-1]).replace("</w>", " ").split() == text.split()  # lossless


def _fit(module, tmp_path, steps: int = 2):
    data = ToyImageDataModule(num_train=64, num_val=8, resolution=32, batch_size=8)
    Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, limit_val_batches=0, default_root_dir=tmp_path).fit(module, data)


def test_pretraining_stages_write_loadable_models(tmp_path):
    vae_module = VAEPretrain(output_dir=str(tmp_path / "vae"))
    _fit(vae_module, tmp_path)
    vae = AutoencoderKL.from_pretrained(tmp_path / "vae")
    images = next(iter(ToyImageDataModule(num_train=64, num_val=8, batch_size=8).train_dataloader()))["pixel_values"]
    with torch.no_grad():
        std = vae.encode(images).latent_dist.mode().std().item()
    assert vae.config.scaling_factor == pytest.approx(1 / std, rel=1e-4)  # latents scaled to unit variance

    t2i = TextToImagePretrain(vae=str(tmp_path / "vae"), output_dir=str(tmp_path / "pipe"),
                              vocabulary=["a", "red", "circle"], ema_decay=0.5)
    _fit(t2i, tmp_path, steps=3)
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "pipe")
    saved = pipe.unet.state_dict()
    ema = t2i.ema.module["unet"].state_dict()
    raw = t2i.unet.state_dict()
    assert all(torch.equal(saved[k], ema[k]) for k in saved)  # the EMA weights were saved ...
    assert any(not torch.equal(saved[k], raw[k]) for k in saved)  # ... not the raw ones
    assert (tmp_path / "pipe" / "tokenizer" / "vocab.json").is_file()
    assert len(json.loads((tmp_path / "pipe" / "tokenizer" / "vocab.json").read_text())) == len(t2i.tokenizer)

    clip = CLIPPretrain(output_dir=str(tmp_path / "clip"), vision_layers=1, text_layers=1)
    _fit(clip, tmp_path)
    loaded, _, _ = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'clip'}")
    mine = clip.model.state_dict()
    assert all(torch.equal(v, mine[k]) for k, v in loaded.state_dict().items())
