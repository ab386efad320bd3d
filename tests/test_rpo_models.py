"""The real critic and editors of RPO run their code paths on tiny models built from config and saved by the tests.

The outputs are meaningless (random weights); what is checked is the plumbing: loading from a folder, the prompt
templates reaching the model, the answers parsed into issues and instructions, image shapes and ranges, the reuse of
the sampling backbone's components, and inpainting keeping the pixels outside its box.
"""

from __future__ import annotations

import string

import pytest
import torch
from peft.tuners.tuners_utils import BaseTunerLayer

from lit_pref.backbone import DiffusionBackbone
from lit_pref.rpo import Critique, Img2ImgEditor, InpaintEditor, InstructPix2PixEditor, VLMCritic
from lit_pref.rpo.critic import bullet_lines

CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {% for c in m['content'] %}{% if c['type'] == 'image' %}<image>"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}\n{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
)


def save_tiny_llava(folder) -> None:
    """A LLaVA-architecture VLM (CLIP vision tower, Llama language model) with a character-level tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor, PreTrainedTokenizerFast)

    vocab = {token: i for i, token in enumerate(["<pad>", "<s>", "</s>", "<unk>", "<image>"])}
    for char in string.printable:
        vocab.setdefault(char, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                        unk_token="<unk>", extra_special_tokens={"image_token": "<image>"})
    vision = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                              image_size=32, patch_size=8, projection_dim=16)
    text = LlamaConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=2048,
                       bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(LlavaConfig(vision_config=vision, text_config=text,
                                                      image_token_index=vocab["<image>"],
                                                      vision_feature_select_strategy="default"))
    processor = LlavaProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                                  crop_size={"height": 32, "width": 32}),
                               tokenizer=tokenizer, patch_size=8, vision_feature_select_strategy="default",
                               num_additional_image_tokens=1, chat_template=CHAT_TEMPLATE)
    processor.save_pretrained(folder)
    model.save_pretrained(folder)


def test_bullet_lines_are_the_items_of_a_list_answer():
    answer = "The image shows a cat.\n- the cat has five legs\n* the sky is green \n2) text is garbled\n- none\nfin"
    assert bullet_lines(answer) == ["the cat has five legs", "the sky is green", "text is garbled"]
    assert bullet_lines("1. make the sky blue\n  - None\n") == ["make the sky blue"]


def test_vlm_critic_runs_a_tiny_llava_from_a_folder(tmp_path, monkeypatch):
    save_tiny_llava(tmp_path / "vlm")
    (tmp_path / "critique.txt").write_text("Critique the image made for {prompt}.")
    critic = VLMCritic(str(tmp_path / "vlm"), critique_template=str(tmp_path / "critique.txt"), max_new_tokens=12,
                       device="cpu")
    asked = []
    ask = critic.ask
    monkeypatch.setattr(critic, "ask", lambda text, image=None: asked.append((text, image)) or ask(text, image))
    critique = critic.critique(torch.rand(3, 32, 32), "a red cube")
    assert isinstance(critique, Critique) and isinstance(critique.text, str) and critique.text
    assert isinstance(critique.issues, list) and isinstance(critique.instructions, list)
    (first, image), (second, no_image) = asked
    assert first == "Critique the image made for a red cube." and image.size == (32, 32)
    assert '"a red cube"' in second and critique.text in second and no_image is None  # the shipped template

    grounded = VLMCritic(str(tmp_path / "vlm"), max_new_tokens=4, device="cpu", grounding=True)
    real, asked = grounded.ask, []
    canned = iter([None, "- make the hat red\n- brighten the sky",
                   'Sure:\n```json\n[{"instruction": 1, "kind": "local", "bbox_2d": [0, 0, 16, 8]}]\n```'])

    def fake_ask(text, image=None, special_tokens=False):
        asked.append((text, image, special_tokens))
        answer = next(canned)
        return real(text, image) if answer is None else answer  # the real first call records the seen image size

    monkeypatch.setattr(grounded, "ask", fake_ask)
    critique = grounded.critique(torch.rand(3, 32, 32), "a man in a hat")
    assert critique.instructions == ["make the hat red", "brighten the sky"]
    # bbox_2d (x1, y1, x2, y2) in pixels of the 32 x 32 image the model saw -> (top, left, bottom, right) fractions
    assert critique.regions == [[(0.0, 0.0, 0.25, 0.5)], []] and critique.kinds == ["local", "global"]
    text, image, special_tokens = asked[2]
    assert "1. make the hat red\n2. brighten the sky" in text and '"a man in a hat"' in text
    assert image.size == (32, 32) and special_tokens  # Qwen2-VL writes its boxes with special tokens

    (tmp_path / "bad.txt").write_text("no placeholder here")
    with pytest.raises(ValueError, match="no \\{prompt\\} placeholder"):
        VLMCritic(str(tmp_path / "vlm"), critique_template=str(tmp_path / "bad.txt"))


def save_tiny_instruct_pix2pix(folder) -> None:
    """An InstructPix2Pix pipeline folder: a tiny VAE, a CLIP text encoder with a byte-level CLIP tokenizer (no merges:
    quick to save and load) and a UNet with 8 input channels (noisy latents + image latents)."""
    from diffusers import (AutoencoderKL, EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from lit_pref.backbone.tiny import sd_noise_scheduler
    from lit_pref.backbone.tokenizer import _bytes_to_unicode

    chars = list(_bytes_to_unicode().values())
    vocab = {token: i for i, token in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77, pad_token="<|endoftext|>")
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                                                num_hidden_layers=1, num_attention_heads=4, max_position_embeddings=77,
                                                bos_token_id=len(vocab) - 2, eos_token_id=len(vocab) - 1,
                                                pad_token_id=len(vocab) - 1))
    vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), block_out_channels=(16, 32),
                        layers_per_block=1, latent_channels=4, norm_num_groups=8, sample_size=32)
    unet = UNet2DConditionModel(sample_size=16, in_channels=8, out_channels=4, block_out_channels=(32, 64),
                                layers_per_block=1, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=8, norm_num_groups=8)
    StableDiffusionInstructPix2PixPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=EulerAncestralDiscreteScheduler.from_config(sd_noise_scheduler().config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False).save_pretrained(folder)


def test_instruct_pix2pix_editor_runs_a_tiny_pipeline_from_a_folder(tmp_path):
    save_tiny_instruct_pix2pix(tmp_path / "ip2p")
    editor = InstructPix2PixEditor(str(tmp_path / "ip2p"), num_inference_steps=2, device="cpu")
    image = torch.rand(3, 32, 32)
    edited = editor.edit(image, ["make the sky blue", "remove the hat"], "a man in a hat", seed=3)
    assert editor.pipeline.unet.config.in_channels == 8
    assert edited.shape == (3, 32, 32) and 0 <= edited.min() and edited.max() <= 1
    assert torch.equal(edited, editor.edit(image, ["make the sky blue", "remove the hat"], "a man in a hat", seed=3))


def test_img2img_and_inpaint_editors_reuse_the_backbone_and_edit_with_its_base_weights(tmp_path):
    backbone = DiffusionBackbone(model="tiny")
    with torch.no_grad():
        for name, param in backbone.unet.named_parameters():
            if "lora_B" in name:
                param.normal_()  # a trained policy: the editors must not use it
    image = torch.rand(3, 32, 32)
    img2img = Img2ImgEditor(strength=0.5, num_inference_steps=4, guidance_scale=2.0)
    img2img.attach(backbone)
    pipeline = img2img.pipeline
    assert pipeline.unet is backbone.unet and pipeline.vae is backbone.vae and pipeline.text_encoder is backbone.text_encoder
    edited = img2img.edit(image, ["make it red"], "a cube", seed=1)
    assert edited.shape == (3, 32, 32) and 0 <= edited.min() and edited.max() <= 1
    lora_layers = [m for m in backbone.unet.modules() if isinstance(m, BaseTunerLayer)]
    calls = []
    hook = backbone.unet.register_forward_pre_hook(
        lambda module, args: calls.append(all(m.disable_adapters for m in lora_layers)))
    img2img.edit(image, ["make it red"], "a cube", seed=1)
    hook.remove()
    assert calls and all(calls)  # every UNet call ran with the adapters disabled (the base model)...
    assert not any(m.disable_adapters for m in lora_layers)  # ...and they are back on for training

    inpaint = InpaintEditor(box=(0.25, 0.25, 0.75, 0.5), num_inference_steps=2, guidance_scale=2.0)
    inpaint.attach(backbone)
    edited = inpaint.edit(image, ["add a hat"], "a cube", seed=1)
    inside = inpaint.mask(32, 32).bool().expand(3, -1, -1)
    assert inside.sum() == 3 * 16 * 8
    assert torch.equal(edited[~inside], image[~inside])  # outside the box: the input, exactly
    assert not torch.allclose(edited[inside], image[inside])
    with pytest.raises(ValueError, match="box"):
        InpaintEditor(box=(0.5, 0.0, 0.4, 1.0))
