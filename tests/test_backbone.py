"""DiffusionBackbone: tiny presets, LoRA, the reference forward, encoders, export that stock diffusers loads."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

from lit_pref.backbone import DiffusionBackbone

PROMPTS = ["a red circle on a white background", "a blue square"]


def perturb_lora(backbone: DiffusionBackbone, std: float = 0.5) -> None:
    """Give the adapters non-zero B so that policy and reference differ."""
    with torch.no_grad():
        for name, param in backbone.unet.named_parameters():
            if "lora_B" in name:
                param.normal_(0, std)


def test_tiny_preset_is_deterministic_in_seed():
    a, b, c = DiffusionBackbone.tiny(seed=0), DiffusionBackbone.tiny(seed=0), DiffusionBackbone.tiny(seed=1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["unet.conv_in.weight"], sc["unet.conv_in.weight"])


def test_only_lora_is_trainable_fp32_and_starts_at_zero():
    backbone = DiffusionBackbone.tiny(dtype="bfloat16", lora_rank=8)
    trainable = {n for n, p in backbone.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert all(p.dtype == torch.float32 for p in backbone.lora_parameters())
    assert backbone.unet.conv_in.weight.dtype == torch.bfloat16 and backbone.vae.dtype == torch.float32
    b_params = [p for n, p in backbone.unet.named_parameters() if "lora_B" in n]
    assert b_params and all(torch.count_nonzero(p) == 0 for p in b_params)
    a_params = [p for n, p in backbone.unet.named_parameters() if "lora_A" in n]
    assert all(p.shape[0] == 8 for p in a_params)


def test_reference_disables_adapters_and_restores_them():
    backbone = DiffusionBackbone.tiny()
    x, t = torch.randn(2, 4, 16, 16), torch.tensor([10, 500])
    cond = backbone.encode_prompts(PROMPTS)
    base = backbone.predict(x, t, cond)
    perturb_lora(backbone)
    policy = backbone.predict(x, t, cond)
    with backbone.reference_forward():
        reference = backbone.predict(x, t, cond)
    assert not torch.allclose(policy, base, atol=1e-4)
    assert torch.equal(reference, base)
    assert torch.equal(backbone.predict(x, t, cond), policy)


def lora_on(backbone: DiffusionBackbone) -> list[bool]:
    """Per LoRA layer: whether its adapter is on, and its parameters trainable."""
    layers = [m for m in backbone.unet.modules() if hasattr(m, "lora_A")]
    return [not m.disable_adapters and m.lora_A["default"].weight.requires_grad for m in layers]


def test_reference_forward_builds_no_graph_and_restores_the_adapters_after_an_exception():
    backbone = DiffusionBackbone.tiny()
    x, t = torch.randn(2, 4, 16, 16), torch.tensor([10, 500])
    cond = backbone.encode_prompts(PROMPTS)
    base = backbone.predict(x, t, cond)
    perturb_lora(backbone)
    with pytest.raises(RuntimeError, match="inside"):
        with backbone.reference_forward():
            assert not any(lora_on(backbone))
            reference = backbone.predict(x, t, cond)
            raise RuntimeError("inside")
    assert torch.equal(reference, base)
    assert not reference.requires_grad and reference.grad_fn is None and reference.is_inference()
    assert lora_on(backbone) and all(lora_on(backbone))
    policy = backbone.predict(x, t, cond)
    assert policy.requires_grad and not torch.allclose(policy, base, atol=1e-4)


def test_reference_forward_nested_leaves_the_adapters_off_until_the_outer_exit():
    backbone = DiffusionBackbone.tiny()
    with backbone.reference_forward():
        with backbone.reference_forward():
            pass
        assert not any(lora_on(backbone))
    assert all(lora_on(backbone))


def test_reference_forward_is_no_grad_where_deepspeed_zero3_partitions_the_unet():
    backbone = DiffusionBackbone.tiny()
    next(backbone.unet.parameters()).ds_id = 0  # what ZeRO-3 marks its partitioned parameters with
    with backbone.reference_forward():
        assert not torch.is_inference_mode_enabled() and not torch.is_grad_enabled()
        assert not any(lora_on(backbone))
    assert torch.is_grad_enabled() and all(lora_on(backbone))


def test_save_lora_writes_the_same_bytes_every_time(tmp_path):
    backbone = DiffusionBackbone.tiny()
    perturb_lora(backbone)
    files = [(backbone.save_lora(tmp_path / str(i)) / "pytorch_lora_weights.safetensors").read_bytes() for i in range(6)]
    assert all(f == files[0] for f in files)  # safetensors alone orders the metadata keys at random: 1 in 32 to pass
    header = json.loads(files[0][8:8 + int.from_bytes(files[0][:8], "little")])
    assert list(header["__metadata__"]) == ["format", "lora_adapter_metadata"]
    adapter = json.loads(header["__metadata__"]["lora_adapter_metadata"])
    assert adapter["unet.target_modules"] == ["to_k", "to_out.0", "to_q", "to_v"]


def test_training_target_v_prediction_by_hand():
    backbone = DiffusionBackbone.tiny(prediction_type="v_prediction")
    assert backbone.prediction_type == "v_prediction"
    x0, eps, t = torch.randn(2, 4, 16, 16), torch.randn(2, 4, 16, 16), torch.tensor([0, 999])
    a = backbone.noise_scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(backbone.training_target(x0, eps, t), a.sqrt() * eps - (1 - a).sqrt() * x0)
    assert torch.equal(DiffusionBackbone.tiny().training_target(x0, eps, t), eps)


def test_sdxl_conditioning_has_pooled_embeds_and_time_ids():
    backbone = DiffusionBackbone.tiny(sdxl=True)
    assert backbone.is_sdxl
    cond = backbone.encode_prompts(PROMPTS, original_sizes=torch.tensor([[40, 50], [64, 32]]),
                                   crop_top_left=torch.tensor([[1, 2], [3, 4]]), target_size=(32, 32))
    assert cond["encoder_hidden_states"].shape == (2, 77, 64)  # both encoders' hidden states concatenated
    assert cond["added_cond_kwargs"]["text_embeds"].shape == (2, 32)
    expected = torch.tensor([[40, 50, 1, 2, 32, 32], [64, 32, 3, 4, 32, 32]], dtype=torch.float32)
    assert torch.equal(cond["added_cond_kwargs"]["time_ids"], expected)


@pytest.mark.parametrize("sdxl", [False, True], ids=["sd", "sdxl"])
def test_exported_lora_in_stock_diffusers_matches_own_samples(tmp_path, sdxl):
    """Tolerance: 1e-5 absolute on [0, 1] images (the same float32 ops in the same order; measured 0.0)."""
    backbone = DiffusionBackbone.tiny(sdxl=sdxl, lora_rank=4, lora_alpha=8)  # alpha != rank: scale must travel
    perturb_lora(backbone)
    backbone.save_pretrained(tmp_path / "base")
    backbone.save_lora(tmp_path / "lora")
    kwargs = dict(num_inference_steps=4, guidance_scale=3.0)
    ours = backbone.sample(PROMPTS, generator=torch.Generator().manual_seed(7), **kwargs)
    with backbone.reference_forward():
        ours_base = backbone.sample(PROMPTS, generator=torch.Generator().manual_seed(7), **kwargs)

    pipeline_cls = StableDiffusionXLPipeline if sdxl else StableDiffusionPipeline
    pipe = pipeline_cls.from_pretrained(tmp_path / "base")
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)

    def run():
        return pipe(PROMPTS, negative_prompt=[""] * 2, generator=torch.Generator().manual_seed(7),
                    output_type="pt", **kwargs).images

    torch.testing.assert_close(run(), ours_base, atol=1e-5, rtol=0)
    pipe.load_lora_weights(tmp_path / "lora")
    theirs = run()
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)
    assert (theirs - ours_base).abs().max() > 1e-2  # the LoRA really changed the images


def test_saved_base_has_official_layout_and_round_trips(tmp_path):
    backbone = DiffusionBackbone.tiny(sdxl=True)
    perturb_lora(backbone)
    backbone.save_pretrained(tmp_path / "model")
    root = tmp_path / "model"
    index = json.loads((root / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline"
    for sub in ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"):
        assert (root / sub).is_dir(), sub
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        assert (root / "tokenizer" / name).is_file()
    assert not any(root.parent.glob(".tmp-*"))  # atomic write left nothing behind
    loaded = DiffusionBackbone.from_pretrained(str(root))
    assert loaded.is_sdxl
    ref = backbone.base_unet().state_dict()
    got = loaded.base_unet().state_dict()
    assert all(torch.equal(ref[k], got[k]) for k in ref)  # the base was saved without the adapters


def test_loading_a_folder_without_model_index_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        DiffusionBackbone.from_pretrained(str(tmp_path))


def test_save_lora_is_atomic(tmp_path, monkeypatch):
    backbone = DiffusionBackbone.tiny()
    backbone.save_lora(tmp_path / "lora")
    before = (tmp_path / "lora" / "pytorch_lora_weights.safetensors").read_bytes()

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(StableDiffusionPipeline, "save_lora_weights", crash)
    perturb_lora(backbone)
    with pytest.raises(RuntimeError, match="disk full"):
        backbone.save_lora(tmp_path / "lora")
    assert (tmp_path / "lora" / "pytorch_lora_weights.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lora"]


def test_load_lora_round_trips_and_names_a_rank_mismatch(tmp_path):
    from lit_pref.backbone import lora_config

    trained = DiffusionBackbone.tiny(lora_rank=4, lora_alpha=8)
    perturb_lora(trained)
    trained.save_lora(tmp_path / "lora")
    assert lora_config(tmp_path / "lora") == {"lora_rank": 4, "lora_alpha": 8,
                                              "lora_target_modules": lora_config(tmp_path / "lora")["lora_target_modules"]}
    assert sorted(lora_config(tmp_path / "lora")["lora_target_modules"]) == ["to_k", "to_out.0", "to_q", "to_v"]
    fresh = DiffusionBackbone.tiny(**lora_config(tmp_path / "lora"))
    fresh.load_lora(tmp_path / "lora")
    ours, theirs = dict(trained.unet.named_parameters()), dict(fresh.unet.named_parameters())
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    with pytest.raises(ValueError, match="lora_rank"):
        DiffusionBackbone.tiny(lora_rank=8).load_lora(tmp_path / "lora")
