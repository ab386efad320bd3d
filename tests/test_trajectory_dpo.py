"""TrajectoryDPO: the Diffusion-DPO step on the tiny preset (docs/methods.md §1)."""

from __future__ import annotations

import math

import pytest
import torch
from lightning.pytorch import Trainer

from lit_pref.datamodules import SyntheticPreferenceDataModule
from lit_pref.backbone import DiffusionBackbone
from lit_pref.losses import DiffusionDPOLoss
from lit_pref.modules import TrajectoryDPO


def make_batch(n: int = 3, labels=None, sdxl: bool = False):
    batch = {
        "images_0": torch.rand(n, 3, 32, 32) * 2 - 1,
        "images_1": torch.rand(n, 3, 32, 32) * 2 - 1,
        "label_0": torch.tensor(labels if labels is not None else [1.0, 0.0, 1.0][:n]),
        "captions": [f"caption {i}" for i in range(n)],
        "num_skipped": 0,
    }
    if sdxl:
        batch["original_sizes"] = torch.full((n, 2), 32)
        batch["crop_top_left"] = torch.zeros(n, 2, dtype=torch.long)
    return batch


def module(**kwargs) -> TrajectoryDPO:
    backbone_kwargs = kwargs.pop("backbone_kwargs", {})
    return TrajectoryDPO(DiffusionBackbone.tiny(**backbone_kwargs), loss=DiffusionDPOLoss(beta=5000.0), **kwargs)


@pytest.mark.parametrize(
    "backbone_kwargs",
    [{}, {"prediction_type": "v_prediction"}, {"sdxl": True}, {"lora_init": "kaiming", "lora_rank": 8}],
    ids=["epsilon", "v_prediction", "sdxl", "kaiming"],
)
def test_step_zero_loss_is_ln2_for_any_batch(backbone_kwargs):
    model = module(backbone_kwargs=backbone_kwargs)
    for seed in range(3):
        torch.manual_seed(seed)
        pairs, _ = model.winners_and_losers(make_batch(sdxl=model.backbone.is_sdxl))
        loss, stats = model.loss(*model.denoising_errors(pairs))
        assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
        assert stats["implicit_acc"].item() == 0.5 and stats["margin"].item() == 0.0


def test_winner_and_loser_share_timestep_and_noise():
    model = module()
    image = torch.rand(2, 3, 32, 32) * 2 - 1
    batch = make_batch(2)
    batch["images_0"], batch["images_1"] = image, image.clone()
    pairs, _ = model.winners_and_losers(batch)
    with torch.no_grad():
        for p in model.backbone.lora_parameters():
            p.normal_(0, 0.3)
    # The VAE posterior sample differs per image; use its mean so both latents are equal.
    model.backbone.encode_images = lambda x, generator=None: model.backbone.vae.encode(x).latent_dist.mode()
    e_w, e_l, r_w, r_l = model.denoising_errors(pairs)
    assert torch.equal(e_w, e_l) and torch.equal(r_w, r_l)
    assert not torch.equal(e_w, r_w)


def test_timestep_range_draws_only_the_noisiest_training_timesteps():
    """T = 1000 training timesteps: (0.6, 1.0) draws from 600..999 only, (0.5, 0.501) exactly 500; the full range
    draws what torch.randint(0, 1000) draws from the same generator (the paper's draws are unchanged)."""
    assert module().backbone.noise_scheduler.config.num_train_timesteps == 1000
    steps = module(timestep_range=(0.6, 1.0)).sample_timesteps(4000, torch.Generator().manual_seed(0))
    assert int(steps.min()) == 600 and int(steps.max()) == 999
    assert module(timestep_range=(0.5, 0.501)).sample_timesteps(5).tolist() == [500] * 5
    expected = torch.randint(0, 1000, (7,), generator=torch.Generator().manual_seed(3))
    assert torch.equal(module().sample_timesteps(7, torch.Generator().manual_seed(3)), expected)
    for bad in [(0.5, 0.5), (-0.1, 1.0), (0.2, 1.1)]:
        with pytest.raises(ValueError, match="timestep_range"):
            module(timestep_range=bad)
    with pytest.raises(ValueError, match="timestep_range"):
        module(timestep_range=(0.5, 1.0), timestep_grid="inference")
    with pytest.raises(ValueError, match="holds no timestep"):
        module(timestep_range=(0.5, 0.5004)).sample_timesteps(1)


def test_ties_policy_and_winner_ordering():
    batch = make_batch(3, labels=[1.0, 0.5, 0.0])
    pairs, dropped = module(ties="drop").winners_and_losers(batch)
    assert dropped == 1 and pairs["captions"] == ["caption 0", "caption 2"]
    assert torch.equal(pairs["images_w"][0], batch["images_0"][0]) and torch.equal(pairs["images_l"][0], batch["images_1"][0])
    assert torch.equal(pairs["images_w"][1], batch["images_1"][2]) and torch.equal(pairs["images_l"][1], batch["images_0"][2])

    pairs, dropped = module(ties="keep_first").winners_and_losers(batch)
    assert dropped == 0 and len(pairs["captions"]) == 3
    assert torch.equal(pairs["images_w"][1], batch["images_0"][1])

    with pytest.raises(ValueError, match="1 tie"):
        module(ties="raise").winners_and_losers(batch)


def test_all_ties_batch_still_backpropagates_zero():
    model = module(ties="drop")
    loss = model.training_step(make_batch(2, labels=[0.5, 0.5]), 0)
    assert loss.item() == 0.0 and loss.requires_grad  # every DDP rank can still run backward


def test_proportion_empty_prompts():
    captions = [f"c{i}" for i in range(200)]
    assert module(proportion_empty_prompts=1.0)._drop_captions(captions) == [""] * 200
    assert module(proportion_empty_prompts=0.0)._drop_captions(captions) == captions
    dropped = module(proportion_empty_prompts=0.2)._drop_captions(captions).count("")
    assert 20 <= dropped <= 60  # Binomial(200, 0.2): mean 40, sd 5.7
    with pytest.raises(ValueError, match="proportion_empty_prompts"):
        module(proportion_empty_prompts=1.5)


def test_training_changes_lora_and_keeps_frozen_weights_bit_identical(tmp_path):
    model = module(optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3))
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    lora_before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    data = SyntheticPreferenceDataModule(data_dir=str(tmp_path / "data"), num_pairs=16, num_val_pairs=4, batch_size=2)
    trainer = Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(model, data)
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert not torch.equal(param, lora_before[name]) or "lora_A" in name, name
        else:
            assert torch.equal(param, frozen_before[name]), name
    assert any(not torch.equal(p, lora_before[n]) for n, p in model.named_parameters() if "lora_B" in n)


def test_checkpoint_holds_only_lora_and_restores_it(tmp_path):
    model = module()
    with torch.no_grad():
        for p in model.backbone.lora_parameters():
            p.normal_()
    data = SyntheticPreferenceDataModule(data_dir=str(tmp_path / "data"), num_pairs=8, num_val_pairs=2, batch_size=2)
    trainer = Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(model, data)
    trainer.save_checkpoint(tmp_path / "x.ckpt")
    state = torch.load(tmp_path / "x.ckpt", weights_only=True)["state_dict"]
    assert state and all("lora_" in k for k in state)
    fresh = module()
    fresh.on_load_checkpoint({"state_dict": state})
    fresh.load_state_dict(state, strict=False)
    for name, param in model.named_parameters():
        assert torch.equal(param, dict(fresh.named_parameters())[name]), name
    with pytest.raises(KeyError, match="trainable"):
        fresh.on_load_checkpoint({"state_dict": {}})
