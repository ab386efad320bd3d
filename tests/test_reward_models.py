"""ImageReward, HPSv2 and PickScore: official checkpoint layouts (keys and shapes written here from the official
code), strict loading, and scores recomputed by hand with independent implementations (timm's ViT and transformers'
BLIP text model for ImageReward, open_clip for HPSv2, transformers' CLIP for PickScore)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import open_clip
import pytest
import torch
import torchvision.transforms.functional as TF
from safetensors.torch import load_file, save_file
from torchvision.transforms import CenterCrop, InterpolationMode, Normalize, Resize

from lit_pref.rewards import HPSv2, ImageReward, ImageRewardConfig, ImageRewardModel, PickScore
from lit_pref.rewards.hpsv2 import build_hps_clip
from lit_pref.rewards.pickscore import CLIP_H_CONFIG, load_clip_strict
from lit_pref.rewards.tiny import (TINY_HPS_CLIP, save_tiny_hpsv2, save_tiny_image_reward, save_tiny_pickscore,
                                   tiny_clip_config)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PROMPTS = ["a small red circle on a white background", "large blue squares", " ".join(["red"] * 50)]


def shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def linear(shapes_: dict, name: str, out: int, inp: int) -> None:
    shapes_[f"{name}.weight"], shapes_[f"{name}.bias"] = (out, inp), (out,)


def norm(shapes_: dict, name: str, width: int) -> None:
    shapes_[f"{name}.weight"], shapes_[f"{name}.bias"] = (width,), (width,)


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(5)
    return torch.rand(3, 3, 40, 56)  # not square, not the model size: resize and crop/pad do something


# ------------------------------------------------------------------------------------------------ ImageReward


def official_image_reward_shapes() -> dict[str, tuple[int, ...]]:
    """ImageReward.py: ``BLIP_Pretrain(image_size=224, vit="large", med_config)`` + ``MLP(768)``. BLIP's
    ``create_vit("large")``: ViT-L/16, width 1024, 24 blocks, 16 heads, mlp_ratio 4, qkv bias; ``med_config.json``:
    BERT-base (768, 12 layers, 3072, 512 positions, vocab 30524) with cross-attention from ``encoder_width`` 1024
    and a persistent ``position_ids`` buffer; ``vision_proj`` / ``text_proj`` to ``embed_dim`` 256."""
    s: dict[str, tuple[int, ...]] = {}
    v = "blip.visual_encoder."
    s[v + "cls_token"], s[v + "pos_embed"] = (1, 1, 1024), (1, 197, 1024)  # 197 = (224 / 16)^2 + 1
    s[v + "patch_embed.proj.weight"], s[v + "patch_embed.proj.bias"] = (1024, 3, 16, 16), (1024,)
    for i in range(24):
        b = f"{v}blocks.{i}."
        norm(s, b + "norm1", 1024)
        linear(s, b + "attn.qkv", 3072, 1024)
        linear(s, b + "attn.proj", 1024, 1024)
        norm(s, b + "norm2", 1024)
        linear(s, b + "mlp.fc1", 4096, 1024)
        linear(s, b + "mlp.fc2", 1024, 4096)
    norm(s, v + "norm", 1024)
    t = "blip.text_encoder."
    s[t + "embeddings.word_embeddings.weight"] = (30524, 768)
    s[t + "embeddings.position_embeddings.weight"] = (512, 768)
    s[t + "embeddings.position_ids"] = (1, 512)
    norm(s, t + "embeddings.LayerNorm", 768)
    for i in range(12):
        layer = f"{t}encoder.layer.{i}."
        for attention, context in [("attention", 768), ("crossattention", 1024)]:
            linear(s, f"{layer}{attention}.self.query", 768, 768)
            linear(s, f"{layer}{attention}.self.key", 768, context)
            linear(s, f"{layer}{attention}.self.value", 768, context)
            linear(s, f"{layer}{attention}.output.dense", 768, 768)
            norm(s, f"{layer}{attention}.output.LayerNorm", 768)
        linear(s, layer + "intermediate.dense", 3072, 768)
        linear(s, layer + "output.dense", 768, 3072)
        norm(s, layer + "output.LayerNorm", 768)
    linear(s, "blip.vision_proj", 256, 1024)
    linear(s, "blip.text_proj", 256, 768)
    for i, (out, inp) in zip([0, 2, 4, 6, 7], [(1024, 768), (128, 1024), (64, 128), (16, 64), (1, 16)]):
        linear(s, f"mlp.layers.{i}", out, inp)
    return s


def test_image_reward_default_architecture_has_the_official_keys_and_shapes():
    with torch.device("meta"):
        model = ImageRewardModel()
    got, expected = shapes(model), official_image_reward_shapes()
    assert got == expected
    assert got["blip.visual_encoder.pos_embed"] == (1, 197, 1024)
    assert got["blip.text_encoder.embeddings.word_embeddings.weight"] == (30524, 768)
    assert got["blip.text_encoder.encoder.layer.5.crossattention.self.key.weight"] == (768, 1024)

    # The same names as two independent implementations of the parts: timm's ViT and transformers' BLIP text model
    # (whose position_ids buffer is not persistent).
    from timm.models.vision_transformer import VisionTransformer
    from transformers.models.blip.modeling_blip_text import BlipTextConfig, BlipTextModel

    with torch.device("meta"):
        vit = VisionTransformer(img_size=224, patch_size=16, embed_dim=1024, depth=24, num_heads=16, num_classes=0)
        text = BlipTextModel(BlipTextConfig(vocab_size=30524, encoder_hidden_size=1024), add_pooling_layer=False)
    assert {f"blip.visual_encoder.{k}": v for k, v in shapes(vit).items()} == {
        k: v for k, v in got.items() if k.startswith("blip.visual_encoder.")}
    assert {f"blip.text_encoder.{k}": v for k, v in shapes(text).items()} == {
        k: v for k, v in got.items() if k.startswith("blip.text_encoder.") and not k.endswith("position_ids")}


@pytest.fixture(scope="module")
def tiny_image_reward(tmp_path_factory):
    return save_tiny_image_reward(tmp_path_factory.mktemp("image_reward"))


def test_image_reward_loads_the_official_file_layout_strictly(tiny_image_reward, tmp_path, monkeypatch):
    path = tiny_image_reward["checkpoint"]
    state = torch.load(path, weights_only=True)  # official layout: a plain state dict, nothing around it
    assert {k.split(".")[0] for k in state} == {"blip", "mlp"}
    assert "blip.text_encoder.embeddings.position_ids" in state and "blip.vision_proj.weight" in state
    save_file(state, tmp_path / "ImageReward.safetensors")

    calls, real_load = [], torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: calls.append(kw) or real_load(*a, **kw))
    kwargs = {k: v for k, v in tiny_image_reward.items() if k != "checkpoint"}
    folder = str(Path(path).parent)  # the folder that holds ImageReward.pt
    for checkpoint in [path, folder, state, str(tmp_path / "ImageReward.safetensors")]:
        scorer = ImageReward(checkpoint, **kwargs)
        for k, v in scorer.model.state_dict().items():
            torch.testing.assert_close(v, state[k], rtol=0, atol=0)
    assert len(calls) == 2 and all(c["weights_only"] is True and c["map_location"] == "cpu" for c in calls)


def test_image_reward_rejects_missing_unexpected_and_misshaped_keys(tiny_image_reward, tmp_path):
    state = torch.load(tiny_image_reward["checkpoint"], weights_only=True)
    kwargs = {k: v for k, v in tiny_image_reward.items() if k != "checkpoint"}
    missing = {k: v for k, v in state.items() if k != "blip.text_encoder.embeddings.position_ids"}
    extra = dict(state, **{"blip.itm_head.weight": torch.zeros(2, 32)})
    misshaped = dict(state, **{"mlp.layers.7.weight": torch.zeros(2, 16)})
    for name, bad, message in [("missing", missing, "missing keys.*blip.text_encoder.embeddings.position_ids"),
                               ("extra", extra, "unexpected keys.*blip.itm_head.weight"),
                               ("misshaped", misshaped,
                                r"shape mismatches.*mlp.layers.7.weight: \(2, 16\) in the checkpoint, \(1, 16\)")]:
        torch.save(bad, tmp_path / f"{name}.pt")
        with pytest.raises(ValueError, match=f"{name}.pt does not fit ImageRewardModel: {message}"):
            ImageReward(str(tmp_path / f"{name}.pt"), **kwargs)
    with pytest.raises(ValueError, match="has 24 tokens"):
        ImageReward(state, tiny_image_reward["tokenizer"], config=ImageRewardConfig(vocab_size=18))
    with pytest.raises(FileNotFoundError, match="no ImageReward.pt"):
        ImageReward(str(tmp_path), **kwargs)


@torch.no_grad()
def test_image_reward_score_equals_the_formula_on_independent_blip_parts(tiny_image_reward, images):
    from timm.models.vision_transformer import VisionTransformer
    from transformers import BertTokenizer
    from transformers.models.blip.modeling_blip_text import BlipTextConfig, BlipTextModel

    cfg = tiny_image_reward["config"]
    state = torch.load(tiny_image_reward["checkpoint"], weights_only=True)
    torch.manual_seed(6)
    for i in [0, 2, 4, 6, 7]:  # a head with visible output spread (the default init's is about 0.01)
        state[f"mlp.layers.{i}.weight"] = torch.randn_like(state[f"mlp.layers.{i}.weight"]) * 0.5
    scorer = ImageReward(state, tiny_image_reward["tokenizer"], config=cfg, batch_size=2)

    # Tokens: BLIP's tokenizer, padded/truncated to 35 as ImageReward.score does; [CLS] stays first.
    tokenizer = BertTokenizer.from_pretrained(tiny_image_reward["tokenizer"])
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    text = tokenizer(PROMPTS, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    assert text.input_ids.shape == (3, 35) and (text.input_ids[:, 0] == tokenizer.cls_token_id).all()
    assert text.attention_mask[2].all() and not text.attention_mask[1].all()  # one truncated, one padded
    # Pixels: torchvision's bicubic resize of the shorter side, centre crop, CLIP normalisation.
    preprocess = [Resize(cfg.image_size, InterpolationMode.BICUBIC, antialias=True), CenterCrop(cfg.image_size),
                  Normalize(CLIP_MEAN, CLIP_STD)]
    pixels = images
    for transform in preprocess:
        pixels = transform(pixels)
    # BLIP's ViT is timm's; its BERT with cross-attention is transformers' BlipTextModel (bidirectional).
    vit = VisionTransformer(img_size=cfg.image_size, patch_size=cfg.patch_size, embed_dim=cfg.vision_width,
                            depth=cfg.vision_layers, num_heads=cfg.vision_heads, num_classes=0).eval()
    vit.load_state_dict({k[20:]: v for k, v in state.items() if k.startswith("blip.visual_encoder.")})
    bert = BlipTextModel(BlipTextConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.text_width, encoder_hidden_size=cfg.vision_width,
        intermediate_size=cfg.text_intermediate, num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.text_heads, max_position_embeddings=cfg.max_text_positions), add_pooling_layer=False)
    bert.eval().load_state_dict({k[18:]: v for k, v in state.items()
                                 if k.startswith("blip.text_encoder.") and not k.endswith("position_ids")})
    image_embeds = vit.forward_features(pixels)
    h = bert(input_ids=text.input_ids, attention_mask=text.attention_mask, encoder_hidden_states=image_embeds,
             encoder_attention_mask=torch.ones(image_embeds.shape[:2], dtype=torch.long)).last_hidden_state[:, 0]
    for i in [0, 2, 4, 6, 7]:  # linear layers, no activations (dropouts are identities in eval)
        h = h @ state[f"mlp.layers.{i}.weight"].T + state[f"mlp.layers.{i}.bias"]
    expected = (h[:, 0] - 0.16717362830052426) / 1.0333394966054072

    got = scorer.score(images, PROMPTS)
    assert got.shape == (3,) and not got.requires_grad
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert expected.std() > 0.05  # the three inputs give different scores: a wrong input order would show
    swapped = scorer.score(images, PROMPTS[1:] + PROMPTS[:1])
    assert not torch.allclose(swapped, got, atol=1e-3)


# ---------------------------------------------------------------------------------------------------- HPSv2


def official_vit_h_14_shapes() -> dict[str, tuple[int, ...]]:
    """open_clip ``ViT-H-14.json``: embed_dim 1024; vision 224 px, patch 14, width 1280, 32 layers (head_width 80);
    text context 77, vocab 49408, width 1024, 16 heads, 24 layers; mlp_ratio 4; ``attn_mask`` not persistent."""
    s: dict[str, tuple[int, ...]] = {}

    def blocks(prefix: str, layers: int, width: int) -> None:
        for i in range(layers):
            b = f"{prefix}transformer.resblocks.{i}."
            norm(s, b + "ln_1", width)
            s[b + "attn.in_proj_weight"], s[b + "attn.in_proj_bias"] = (3 * width, width), (3 * width,)
            linear(s, b + "attn.out_proj", width, width)
            norm(s, b + "ln_2", width)
            linear(s, b + "mlp.c_fc", 4 * width, width)
            linear(s, b + "mlp.c_proj", width, 4 * width)

    s["visual.class_embedding"], s["visual.positional_embedding"] = (1280,), (257, 1280)  # 257 = 16^2 + 1
    s["visual.conv1.weight"], s["visual.proj"] = (1280, 3, 14, 14), (1280, 1024)
    norm(s, "visual.ln_pre", 1280)
    norm(s, "visual.ln_post", 1280)
    blocks("visual.", 32, 1280)
    s["token_embedding.weight"], s["positional_embedding"] = (49408, 1024), (77, 1024)
    s["text_projection"], s["logit_scale"] = (1024, 1024), ()
    norm(s, "ln_final", 1024)
    blocks("", 24, 1024)
    return s


def test_hpsv2_architecture_has_the_official_keys_and_shapes():
    assert shapes(build_hps_clip("ViT-H-14", device="meta")) == official_vit_h_14_shapes()


@pytest.fixture(scope="module")
def tiny_hps(tmp_path_factory):
    return save_tiny_hpsv2(tmp_path_factory.mktemp("hps"))


def test_hpsv2_loads_the_official_file_layout_strictly(tiny_hps, tmp_path):
    folder = tiny_hps["checkpoint"]
    checkpoint = torch.load(f"{folder}/HPS_v2.1_compressed.pt", weights_only=True)
    assert list(checkpoint) == ["state_dict"]  # as HPS_v2*_compressed.pt: {"state_dict": ...}
    state = checkpoint["state_dict"]
    kwargs = {"model": TINY_HPS_CLIP}
    for spec in [folder, f"{folder}/HPS_v2.1_compressed.pt", checkpoint, state]:
        scorer = HPSv2(spec, **kwargs)
        for k, v in scorer.model.state_dict().items():
            torch.testing.assert_close(v, state[k], rtol=0, atol=0)
    with pytest.raises(FileNotFoundError, match="no HPS_v2_compressed.pt"):
        HPSv2(folder, version="v2.0", **kwargs)
    missing = {"state_dict": {k: v for k, v in state.items() if k != "logit_scale"}}
    extra = {"state_dict": dict(state, **{"visual.head.weight": torch.zeros(1)})}
    for name, bad, message in [("missing", missing, r"missing keys \['logit_scale'\]"),
                               ("extra", extra, r"unexpected keys \['visual.head.weight'\]")]:
        torch.save(bad, tmp_path / f"{name}.pt")
        with pytest.raises(ValueError, match=f"{name}.pt does not fit CLIP: {message}"):
            HPSv2(str(tmp_path / f"{name}.pt"), **kwargs)


@torch.no_grad()
def test_hpsv2_score_is_the_raw_cosine_after_hps_preprocessing(tiny_hps, images):
    scorer = HPSv2(**tiny_hps, batch_size=2)
    state = torch.load(f"{tiny_hps['checkpoint']}/HPS_v2.1_compressed.pt", weights_only=True)["state_dict"]
    model = open_clip.CLIP(**TINY_HPS_CLIP).eval()
    model.load_state_dict(state)
    # HPSv2's preprocess_val on a tensor: ResizeMaxSize(32) (longer side to 32, zero padding centred), normalise.
    h, w = images.shape[-2:]
    scale = 32 / max(h, w)
    new = [round(h * scale), round(w * scale)]
    assert new == [23, 32]
    x = TF.resize(images, new, InterpolationMode.BICUBIC, antialias=True)
    pad_h, pad_w = 32 - new[0], 32 - new[1]
    x = TF.pad(x, [pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2], fill=0)
    x = Normalize(CLIP_MEAN, CLIP_STD)(x)
    image = model.encode_image(x)
    text = model.encode_text(open_clip.get_tokenizer("ViT-H-14")(PROMPTS))
    expected = ((image / image.norm(dim=-1, keepdim=True)) * (text / text.norm(dim=-1, keepdim=True))).sum(-1)

    got = scorer.score(images, PROMPTS)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert expected.std() > 0.01 and (got.abs() <= 1).all()


# ------------------------------------------------------------------------------------------------ PickScore


def official_clip_h_shapes() -> dict[str, tuple[int, ...]]:
    """transformers ``CLIPModel`` with PickScore_v1's CLIP-H config: text 1024 wide, 24 layers, 4096 feed-forward,
    77 positions, vocab 49408; vision 1280 wide, 32 layers, 5120 feed-forward, patch 14 at 224 px; projections to
    1024 without bias; position ids are not persistent in current transformers."""
    s: dict[str, tuple[int, ...]] = {}

    def layers(prefix: str, count: int, width: int) -> None:
        for i in range(count):
            b = f"{prefix}encoder.layers.{i}."
            for p in ["q_proj", "k_proj", "v_proj", "out_proj"]:
                linear(s, f"{b}self_attn.{p}", width, width)
            norm(s, b + "layer_norm1", width)
            linear(s, b + "mlp.fc1", 4 * width, width)
            linear(s, b + "mlp.fc2", width, 4 * width)
            norm(s, b + "layer_norm2", width)

    s["text_model.embeddings.token_embedding.weight"] = (49408, 1024)
    s["text_model.embeddings.position_embedding.weight"] = (77, 1024)
    layers("text_model.", 24, 1024)
    norm(s, "text_model.final_layer_norm", 1024)
    s["vision_model.embeddings.class_embedding"] = (1280,)
    s["vision_model.embeddings.patch_embedding.weight"] = (1280, 3, 14, 14)
    s["vision_model.embeddings.position_embedding.weight"] = (257, 1280)
    norm(s, "vision_model.pre_layrnorm", 1280)  # sic, transformers' name
    layers("vision_model.", 32, 1280)
    norm(s, "vision_model.post_layernorm", 1280)
    s["visual_projection.weight"], s["text_projection.weight"], s["logit_scale"] = (1024, 1280), (1024, 1024), ()
    return s


def test_pickscore_default_architecture_has_the_official_keys_and_shapes():
    from transformers import CLIPConfig, CLIPModel

    with torch.device("meta"):
        model = CLIPModel(CLIPConfig(**CLIP_H_CONFIG))
    assert shapes(model) == official_clip_h_shapes()
    assert model.config.text_config.hidden_act == model.config.vision_config.hidden_act == "gelu"


@pytest.fixture(scope="module")
def tiny_pick(tmp_path_factory):
    return save_tiny_pickscore(tmp_path_factory.mktemp("pick"))


def test_pickscore_loads_the_official_folder_layout_strictly(tiny_pick, tmp_path):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_pick["model"], folder)
    assert json.loads((folder / "config.json").read_text())["model_type"] == "clip"
    state = load_file(folder / "model.safetensors")
    reference = load_clip_strict(tiny_pick["model"]).state_dict()
    assert set(reference) == set(state)
    legacy = dict(state, **{"text_model.embeddings.position_ids": torch.arange(77)[None]})  # transformers < 4.31
    for model in [str(folder), str(folder / "model.safetensors"), state, legacy]:
        loaded = load_clip_strict(model, tiny_clip_config()).state_dict()
        for k, v in reference.items():
            torch.testing.assert_close(loaded[k], v, rtol=0, atol=0)
    bad = {k: v for k, v in state.items() if k != "visual_projection.weight"}
    bad["text_model.head.weight"] = torch.zeros(2)
    save_file(bad, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="missing_keys.*visual_projection.weight.*unexpected_keys.*text_model.head"):
        PickScore(str(folder), tiny_pick["processor"])
    with pytest.raises(ValueError, match="the given state dict does not fit CLIPModel: missing keys.*visual_proj"):
        load_clip_strict(bad, tiny_clip_config())


@torch.no_grad()
def test_pickscore_is_logit_scale_exp_times_cosine(tiny_pick, images):
    from transformers import AutoProcessor, CLIPModel

    scorer = PickScore(**tiny_pick, batch_size=2)
    model = CLIPModel.from_pretrained(tiny_pick["model"]).eval()
    tokenizer = AutoProcessor.from_pretrained(tiny_pick["processor"]).tokenizer
    text = tokenizer(PROMPTS, padding=True, truncation=True, max_length=77, return_tensors="pt")
    assert text.input_ids.shape == (3, 52)  # padded to the longest prompt in the batch
    pixels = images
    for transform in [Resize(32, InterpolationMode.BICUBIC, antialias=True), CenterCrop(32),
                      Normalize(CLIP_MEAN, CLIP_STD)]:
        pixels = transform(pixels)
    image = model.vision_model(pixel_values=pixels).pooler_output @ model.visual_projection.weight.T
    txt = model.text_model(input_ids=text.input_ids, attention_mask=text.attention_mask).pooler_output
    txt = txt @ model.text_projection.weight.T
    out = model(input_ids=text.input_ids, attention_mask=text.attention_mask, pixel_values=pixels)
    cos = (image / image.norm(dim=-1, keepdim=True) * txt / txt.norm(dim=-1, keepdim=True)).sum(-1)
    expected = math.exp(model.logit_scale.item()) * cos
    torch.testing.assert_close(expected, out.logits_per_image.diagonal(), rtol=1e-4, atol=1e-4)

    got = scorer.score(images, PROMPTS)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert expected.std() > 0.1


# ------------------------------------------------------------------------------------------------------- all


@pytest.mark.parametrize("kind", ["image_reward", "hps", "pick"])
def test_scores_carry_gradients_to_the_images_only_when_asked(kind, tiny_image_reward, tiny_hps, tiny_pick, images):
    cls, kwargs = {"image_reward": (ImageReward, tiny_image_reward), "hps": (HPSv2, tiny_hps),
                   "pick": (PickScore, tiny_pick)}[kind]
    x = images[:2].clone().requires_grad_(True)
    scorer = cls(**kwargs, differentiable=True)
    scorer.score(x, PROMPTS[:2]).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0 and torch.isfinite(x.grad).all()
    assert not any(p.requires_grad for p in scorer.model.parameters())
    scorer.differentiable = False  # the default
    assert not scorer.score(x, PROMPTS[:2]).requires_grad
    with pytest.raises(ValueError, match="B prompts"):
        scorer.score(x, PROMPTS)
