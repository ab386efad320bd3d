"""Speed features: the encoding cache, the reference in inference mode, SDPA attention, gradient checkpointing,
the non-finite guard, the benchmark presets and the benchmark script."""

from __future__ import annotations

import json
import multiprocessing
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0
from lightning.pytorch import Callback, Trainer, seed_everything
from PIL import Image
from torch.utils.data import DataLoader

from lit_pref.callbacks import EncodingCache
from lit_pref.datamodules import PreferencePairDataModule, PreferencePairDataset
from lit_pref.datamodules.encoding_cache import fill, open_or_build, open_or_create
from lit_pref.backbone import DiffusionBackbone
from lit_pref.losses import DiffusionDPOLoss, PairLoss
from lit_pref.modules import TrajectoryDPO
from lit_pref.modules.base import NonFiniteLossError

REPO = Path(__file__).resolve().parents[1]
TIGHT = dict(rtol=1e-5, atol=1e-6)  # batch composition may change the last bits of a convolution
BATCHED = dict(rtol=1e-4, atol=1e-5)  # encoded in other batches (of 1 to 16 images): a few more bits


def write_pairs(folder: Path, n: int = 5, size: tuple[int, int] = (40, 48)) -> Path:
    """``n`` pairs of random images larger than 32 px (so crops and flips matter); the last two share a caption."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        for which in (0, 1):
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / f"{i}_{which}.png")
        lines.append({"caption": f"caption {min(i, n - 2)}", "image_0": f"{i}_0.png", "image_1": f"{i}_1.png",
                      "label_0": [1.0, 0.0][i % 2]})
    path = folder / "pairs.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def entries(cache_dir: Path) -> list[str]:
    return sorted(p.name for p in cache_dir.iterdir() if not p.name.startswith("."))


def make_batch(n: int = 2, nan: bool = False) -> dict:
    images = torch.rand(2, n, 3, 32, 32) * 2 - 1
    if nan:
        images[0, 0, :, 5, 5] = float("nan")  # one bad pixel in the winner of the first pair
    return {"images_0": images[0], "images_1": images[1], "label_0": torch.ones(n),
            "captions": [f"caption {i}" for i in range(n)]}


def lora(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


# --------------------------------------------------------------------------- encoding cache
def test_cached_items_equal_a_fresh_encoding_and_decode_no_image(tmp_path):
    data = write_pairs(tmp_path / "data")
    dataset = PreferencePairDataset(data, resolution=32, center_crop=False, random_flip=True, seed=3)
    fresh = [dataset[i] for i in range(len(dataset))]  # random crops and flips, decoded before caching
    backbone = DiffusionBackbone.tiny()
    store = open_or_build(tmp_path / "cache", dataset, backbone, batch_size=2)
    assert store.manifest["num_items"] == 5 and store.manifest["num_captions"] == 4  # one caption per distinct text
    dataset.use_encodings(store)
    for path in (tmp_path / "data").glob("*.png"):
        path.unlink()  # cached items must not need their images
    for i, item in enumerate(fresh):
        cached = dataset[i]
        assert "image_0" not in cached
        for which in (0, 1):
            image = item[f"image_{which}"][None]
            torch.testing.assert_close(cached[f"latent_dist_{which}"][None], backbone.encode_latent_dist(image), **TIGHT)
            # a training step draws the same latent from the cached posterior as from a fresh encoding
            from_cache = backbone.sample_latents(cached[f"latent_dist_{which}"][None], torch.Generator().manual_seed(i))
            torch.testing.assert_close(from_cache, backbone.encode_images(image, torch.Generator().manual_seed(i)), **TIGHT)
        torch.testing.assert_close(cached["text"]["hidden"], backbone.encode_text([item["caption"]])["hidden"][0], **TIGHT)
        assert torch.equal(cached["original_size"], item["original_size"])
        assert torch.equal(cached["crop_top_left"], item["crop_top_left"])
        assert cached["caption"] == item["caption"] and torch.equal(cached["label_0"], item["label_0"])


def test_cache_entries_follow_the_model_and_the_data(tmp_path):
    data = write_pairs(tmp_path / "data", n=2)
    cache = tmp_path / "cache"
    backbone = DiffusionBackbone.tiny()
    key = backbone.encoder_fingerprint()
    backbone.encode_text(["a"])  # sets the fast tokenizer's padding and truncation, which change no output
    assert backbone.encoder_fingerprint() == key
    first = open_or_build(cache, PreferencePairDataset(data, resolution=32), backbone)
    # other adapters and another seed with a centre crop and no flip change nothing that is cached: reused
    assert open_or_build(cache, PreferencePairDataset(data, resolution=32, seed=7),
                         DiffusionBackbone.tiny(lora_rank=8)).path == first.path
    assert len(entries(cache)) == 1

    changed = DiffusionBackbone.tiny()
    with torch.no_grad():
        changed.vae.encoder.conv_in.weight.add_(0.01)
    dataset = PreferencePairDataset(data, resolution=32)
    second = open_or_build(cache, dataset, changed)
    assert second.path != first.path and len(entries(cache)) == 2
    image = dataset[0]["image_0"][None]
    torch.testing.assert_close(second.item(0)["latent_dist_0"][None], changed.encode_latent_dist(image), **TIGHT)
    assert not torch.allclose(first.item(0)["latent_dist_0"], second.item(0)["latent_dist_0"])

    Image.fromarray(np.zeros((40, 48, 3), dtype=np.uint8)).save(data.parent / "0_0.png")  # the data change
    dataset = PreferencePairDataset(data, resolution=32)
    third = open_or_build(cache, dataset, backbone)
    assert third.path not in (first.path, second.path)
    torch.testing.assert_close(third.item(0)["latent_dist_0"][None],
                               backbone.encode_latent_dist(dataset[0]["image_0"][None]), **TIGHT)

    flipped = open_or_build(cache, PreferencePairDataset(data, resolution=32, random_flip=True), backbone)
    assert flipped.path not in (first.path, second.path, third.path) and len(entries(cache)) == 4


class Record(Callback):
    """Per training batch: the loss, whether the batch carried images, the LoRA weights, the optimizer's step
    count, whether gradients were dropped, and the skip counter."""

    def __init__(self) -> None:
        self.losses, self.had_images, self.weights, self.opt_steps, self.no_grads, self.skipped = [], [], [], [], [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))
        self.had_images.append("images_0" in batch)
        self.weights.append(lora(pl_module))
        states = trainer.optimizers[0].state.values()
        self.opt_steps.append(max((int(s["step"]) for s in states), default=0))
        self.no_grads.append(all(p.grad is None for p in pl_module.trainable_parameters()))
        self.skipped.append(float(trainer.callback_metrics["train/skipped_nonfinite"]))


def quiet_trainer(**kwargs) -> Trainer:
    return Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, num_sanity_val_steps=0, **kwargs)


def fit_pairs(data: Path, callbacks: list, batch_size: int = 2, max_steps: int = 4) -> tuple[Record, float, dict, int]:
    """TrajectoryDPO on ``data`` (3 training pairs, 1 validation pair): per-step records, the last validation loss,
    the LoRA weights, and how many images the VAE encoded."""
    seed_everything(0)
    # beta 100, not 5000: beta multiplies the rounding differences of the VAE on other batch compositions;
    # SGD, not Adam: Adam turns a near-zero gradient's rounding into a full-size step
    model = TrajectoryDPO(DiffusionBackbone.tiny(), loss=DiffusionDPOLoss(beta=100.0),
                          optimizer=lambda params: torch.optim.SGD(params, lr=30.0))
    encoded = []
    model.backbone.vae.encoder.register_forward_hook(lambda module, args, out: encoded.append(len(args[0])))
    datamodule = PreferencePairDataModule(str(data), resolution=32, center_crop=False, random_flip=True,
                                          batch_size=batch_size, val_fraction=0.25)
    record = Record()
    trainer = quiet_trainer(max_steps=max_steps, callbacks=[record, *callbacks])
    trainer.fit(model, datamodule)
    return record, float(trainer.callback_metrics.get("val/loss", float("nan"))), lora(model), sum(encoded)


def assert_same_training(cached: tuple, plain: tuple, initial_lora: dict) -> None:
    assert cached[0].losses == pytest.approx(plain[0].losses, rel=1e-4)
    assert cached[1] == pytest.approx(plain[1], rel=1e-4)
    for name, value in plain[2].items():  # equal up to a thousandth of the largest update
        update = float((value - initial_lora[name]).abs().max())
        torch.testing.assert_close(cached[2][name], value, rtol=0, atol=1e-3 * update + 1e-7)


def assert_complete(cache: Path, data: Path) -> None:
    """Every entry is fully encoded, with what a one-pass fill of the same data writes."""
    module = PreferencePairDataModule(str(data), resolution=32, center_crop=False, random_flip=True, val_fraction=0.25)
    module.setup()
    backbone = DiffusionBackbone.tiny()
    for dataset in (module.train_dataset, module.val_dataset):
        store = open_or_create(cache, dataset, backbone)
        assert len(store.missing()) == 0
        fresh = open_or_build(cache.parent / "one_pass", dataset, backbone)
        for i in range(len(dataset)):
            for key in ("latent_dist_0", "latent_dist_1", "original_size", "crop_top_left"):
                torch.testing.assert_close(store.item(i)[key], fresh.item(i)[key], **BATCHED)
            torch.testing.assert_close(store.item(i)["text"], fresh.item(i)["text"], **BATCHED)


def test_the_cache_fills_during_the_first_epoch_and_trains_as_without_it(tmp_path):
    data = write_pairs(tmp_path / "data", n=4)
    initial_lora = lora(TrajectoryDPO(DiffusionBackbone.tiny()))
    plain = fit_pairs(data, [])
    cached = fit_pairs(data, [EncodingCache(str(tmp_path / "cache"))])
    assert plain[0].had_images == [True] * 4 and cached[0].had_images == [False] * 4  # the step gets encodings
    assert plain[0].losses[1] != pytest.approx(plain[0].losses[0])  # the second step sees the first update
    assert_same_training(cached, plain, initial_lora)
    # 2 entries probed with one image each; epoch 1 encodes its 3 training and 1 validation pairs; epoch 2 none
    assert cached[3] == 2 + 2 * (3 + 1)
    assert plain[3] == 2 * (3 + 3 + 1 + 1)  # without the cache every step and validation encodes its pairs
    assert len(entries(tmp_path / "cache")) == 2  # the training view (random crop, flip) and the validation view
    assert_complete(tmp_path / "cache", data)


def test_an_interrupted_fill_resumes_with_batches_of_cached_and_new_pairs(tmp_path):
    data = write_pairs(tmp_path / "data", n=4)
    initial_lora = lora(TrajectoryDPO(DiffusionBackbone.tiny()))
    cache = tmp_path / "cache"
    fit_pairs(data, [EncodingCache(str(cache))], batch_size=1, max_steps=1)  # stops after caching one pair
    module = PreferencePairDataModule(str(data), resolution=32, center_crop=False, random_flip=True, val_fraction=0.25)
    module.setup()
    assert len(open_or_create(cache, module.train_dataset, DiffusionBackbone.tiny()).missing()) == 2
    mixed = []
    spy = Callback()
    spy.on_train_batch_start = lambda trainer, module, batch, i: mixed.append("cached" in batch)
    resumed = fit_pairs(data, [spy, EncodingCache(str(cache))])  # spy first: it sees the batch as collated
    assert mixed == [True, False, False, False]  # the first batch: the pair cached before and a new one
    assert_same_training(resumed, fit_pairs(data, []), initial_lora)
    assert resumed[3] == 2 * (2 + 1)  # the 2 training pairs not cached before and the validation pair
    assert_complete(cache, data)


def test_processes_fill_disjoint_shares_of_one_entry(tmp_path):
    data = write_pairs(tmp_path / "data", n=5)
    dataset = PreferencePairDataset(data, resolution=32)
    backbone = DiffusionBackbone.tiny()
    store = open_or_create(tmp_path / "cache", dataset, backbone)
    context = multiprocessing.get_context("spawn")  # fork after the parent's OpenMP pool started can hang the children
    workers = [context.Process(target=fill, args=(store, dataset, backbone, rank, 2)) for rank in (0, 1)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert [w.exitcode for w in workers] == [0, 0] and len(store.missing()) == 0
    fresh = open_or_build(tmp_path / "one_pass", dataset, backbone)
    for i in range(len(dataset)):
        torch.testing.assert_close(store.item(i)["latent_dist_1"], fresh.item(i)["latent_dist_1"], **BATCHED)
        torch.testing.assert_close(store.item(i)["text"], fresh.item(i)["text"], **BATCHED)


@pytest.mark.parametrize("sdxl", [False, True], ids=["sd", "sdxl"])
def test_a_cached_batch_gives_the_loss_of_its_images_with_captions_dropped(sdxl):
    model = TrajectoryDPO(DiffusionBackbone.tiny(sdxl=sdxl), loss=DiffusionDPOLoss(beta=100.0),
                          proportion_empty_prompts=0.5)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)  # a policy unlike the reference, so the loss is not ln 2
    batch = make_batch(4)
    batch["original_sizes"] = torch.tensor([[40, 48], [32, 32], [64, 32], [32, 40]])
    batch["crop_top_left"] = torch.tensor([[4, 8], [0, 0], [16, 0], [0, 4]])
    backbone = model.backbone
    cached = {k: v for k, v in batch.items() if not k.startswith("images")}
    cached.update(latent_dists_0=backbone.encode_latent_dist(batch["images_0"]),
                  latent_dists_1=backbone.encode_latent_dist(batch["images_1"]),
                  text=backbone.encode_text(batch["captions"]))
    torch.manual_seed(0)
    dropped = (torch.rand(4) < 0.5).tolist()
    assert any(dropped) and not all(dropped)  # the draw below drops some captions and keeps others
    torch.manual_seed(0)
    fresh = model.training_step(batch, 0)
    torch.manual_seed(0)
    assert model.training_step(cached, 0).item() == pytest.approx(fresh.item(), rel=1e-5)
    assert fresh.item() != pytest.approx(0.6931, abs=1e-3)


def test_cache_needs_a_datamodule_with_cacheable_data():
    trainer = quiet_trainer(max_steps=1, callbacks=[EncodingCache("unused")])
    with pytest.raises(ValueError, match="needs a datamodule"):
        trainer.fit(TrajectoryDPO(DiffusionBackbone.tiny()), train_dataloaders=DataLoader([make_batch()], batch_size=None))


# --------------------------------------------------------------------------- the step
class RefTimesPolicy(PairLoss):
    """A loss that keeps the reference errors for its backward (products save both operands)."""

    def __call__(self, model_err_w, model_err_l, ref_err_w, ref_err_l):
        return (model_err_w * ref_err_w - model_err_l * ref_err_l).mean(), {}


def test_reference_runs_in_inference_mode_and_any_loss_can_use_it():
    model = TrajectoryDPO(DiffusionBackbone.tiny(), loss=RefTimesPolicy())
    modes = []
    model.backbone.unet.register_forward_hook(lambda *_: modes.append(torch.is_inference_mode_enabled()))
    pairs, _ = model.winners_and_losers(make_batch())
    e_w, e_l, r_w, r_l = model.denoising_errors(pairs)
    assert modes == [False, True]  # one policy forward (winners and losers together), one reference forward
    assert e_w.requires_grad and not r_w.requires_grad and not r_w.is_inference()
    loss, _ = model.loss(e_w, e_l, r_w, r_l)
    loss.backward()
    assert any(float(p.grad.abs().sum()) > 0 for n, p in model.named_parameters() if "lora_B" in n)


def test_attention_is_pytorch_sdpa(monkeypatch):
    backbone = DiffusionBackbone.tiny()
    with torch.device("meta"):
        sd15 = DiffusionBackbone(model="sd15")
    for model in (backbone.unet, backbone.vae, sd15.unet, sd15.vae):
        processors = list(model.attn_processors.values())
        assert processors and all(isinstance(p, AttnProcessor2_0) for p in processors)
    cond = backbone.encode_prompts(["a"])
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    with torch.no_grad():
        backbone.predict(torch.randn(1, 4, 16, 16), torch.tensor([10]), cond)
    assert len(calls) == len(backbone.unet.attn_processors)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    results = []
    for checkpointing in (False, True):
        model = TrajectoryDPO(DiffusionBackbone.tiny(gradient_checkpointing=checkpointing),
                              loss=DiffusionDPOLoss(beta=5000.0))
        torch.manual_seed(1)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.1)
        calls = []
        # a block after the first LoRA layer: only activations that lead to a trainable weight are recomputed
        # (a pre-hook: the recomputation stops early, once it has what backward needs, so a forward hook never fires)
        model.backbone.unet.up_blocks[1].resnets[0].register_forward_pre_hook(lambda *_: calls.append(1))
        torch.manual_seed(0)
        pairs, _ = model.winners_and_losers(make_batch())
        loss, _ = model.loss(*model.denoising_errors(pairs))
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        results.append((loss.detach(), grads, len(calls)))
    (loss, grads, calls), (loss_ckpt, grads_ckpt, calls_ckpt) = results
    assert (calls, calls_ckpt) == (2, 3)  # policy + reference; checkpointing recomputes the policy's in backward
    torch.testing.assert_close(loss_ckpt, loss, rtol=1e-5, atol=1e-7)
    for name, grad in grads.items():
        torch.testing.assert_close(grads_ckpt[name], grad, rtol=1e-4, atol=1e-7)


def test_nonfinite_losses_skip_the_step_count_and_stop_past_the_limit():
    batches = [make_batch(), make_batch(nan=True), make_batch(), make_batch(nan=True), make_batch()]
    model = TrajectoryDPO(DiffusionBackbone.tiny(), loss=DiffusionDPOLoss(beta=5000.0), max_nonfinite_steps=1,
                          optimizer=lambda params: torch.optim.AdamW(params, lr=1e-2))
    record = Record()
    trainer = quiet_trainer(max_steps=5, callbacks=[record])
    with pytest.raises(NonFiniteLossError, match=r"2 optimizer steps had a NaN/inf loss .*max_nonfinite_steps=1"):
        trainer.fit(model, train_dataloaders=DataLoader(batches, batch_size=None))
    assert len(record.losses) == 3 and np.isnan(record.losses[1])  # the second NaN step raised before its end
    assert record.skipped == [0.0, 1.0, 1.0]
    assert record.opt_steps == [1, 1, 2]  # the optimizer did not step on the NaN batch
    assert record.no_grads == [False, True, False]  # its gradients were dropped
    for name, value in record.weights[1].items():
        assert torch.equal(value, record.weights[0][name]) and bool(torch.isfinite(value).all()), name
    assert any(not torch.equal(v, record.weights[1][n]) for n, v in record.weights[2].items())


# --------------------------------------------------------------------------- presets and the benchmark
def test_benchmark_presets_build_on_the_meta_device_with_their_parameter_counts():
    def count(module) -> int:
        return sum(p.numel() for n, p in module.named_parameters() if "lora_" not in n)

    with torch.device("meta"):
        sd15 = DiffusionBackbone(model="sd15")
        small = DiffusionBackbone(model="small")
    assert all(p.is_meta for p in [*sd15.parameters(), *small.parameters()])  # nothing allocated
    # The parameter counts of runwayml/stable-diffusion-v1-5's unet, vae and text_encoder.
    assert (count(sd15.unet), count(sd15.vae), count(sd15.text_encoder)) == (859_520_964, 83_653_863, 123_060_480)
    assert tuple(sd15.unet.config.block_out_channels) == (320, 640, 1280, 1280)
    assert sd15.unet.config.cross_attention_dim == 768 and sd15.default_resolution == 512
    assert 50e6 <= count(small.unet) <= 100e6 and small.vae_scale_factor == 8  # SD-like: 8x VAE downsampling


def test_compile_flag_compiles_the_unet_in_place():
    compiled = DiffusionBackbone.tiny(compile_unet=True)
    assert compiled.unet._compiled_call_impl is not None
    assert not any("_orig_mod" in key for key in compiled.state_dict())  # parameter names (checkpoints) unchanged


def test_perf_benchmark_runs(capsys):
    sys.path.insert(0, str(REPO))  # bench/ is a folder of scripts; import the script in this process (no re-import)
    from bench import perf

    perf.main(["--preset", "tiny", "--steps", "2", "--warmup", "0", "--pairs", "1", "--sample-batch", "1",
               "--sample-steps", "1", "--sample-repeats", "1", "--matmul-size", "256"])
    out = capsys.readouterr().out
    ratios = re.search(r"lit_pref / naive: ([\d.]+)x steps/s, ([\d.]+)x peak memory", out)
    assert ratios and float(ratios[1]) > 0 and float(ratios[2]) > 0, out
    assert out.count("of the matmul bound") == 2 and "trajectories/s with log-probs" in out
