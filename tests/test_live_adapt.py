"""Live co-adaptation (``interact --adapt``): the DPO updates move the LoRA toward the chosen image, a new session
starts from the tool's LoRA, the page is told how many updates were made, and a finished session's LoRA loads in
stock diffusers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import StableDiffusionPipeline

from lit_pref.datamodules import read_dialogues
from lit_pref.backbone import DiffusionBackbone
from lit_pref.backbone.backbone import TOY_PIPELINE
from lit_pref.vca.adapt import LiveAdapter
from lit_pref.vca.interact import parse_args, studio_from_args
from lit_pref.vca.page import PAGE
from test_interact import FAST, RED, _request


def _errors(backbone, latents, noise, t, cond):
    noisy = backbone.noise_scheduler.add_noise(latents, noise, t)
    return F.mse_loss(backbone.predict(noisy, t, cond), noise, reduction="none").mean(dim=(1, 2, 3))


def test_adaptation_lowers_the_chosen_images_error_against_the_unchosen_and_reset_restores_the_lora():
    torch.manual_seed(0)
    backbone = DiffusionBackbone(model="toy", lora_rank=4)
    with torch.no_grad():
        images = backbone.sample([RED] * 3, num_inference_steps=4, generator=torch.Generator().manual_seed(0))
    start = [p.detach().clone() for p in backbone.lora_parameters()]
    adapter = LiveAdapter(backbone, updates=6, lr=1e-2)
    # The DPO logit on fresh noise and timesteps: (e_w - e_l) of the policy below that of the reference.
    latents = backbone.encode_images(images * 2 - 1, generator=torch.Generator().manual_seed(1))
    noise, t = torch.randn(32, *latents.shape[1:]), torch.randint(0, 1000, (32,))
    cond = backbone.encode_prompts([RED] * 32)
    w, l = latents[1].expand(32, -1, -1, -1), latents[0].expand(32, -1, -1, -1)

    def gap():
        with torch.no_grad():
            return (_errors(backbone, w, noise, t, cond) - _errors(backbone, l, noise, t, cond)).mean().item()

    before = gap()
    stats = adapter.adapt(images, chosen=1, prompt=RED)
    assert stats.updates == 6 and adapter.total_updates == 6 and stats.seconds > 0
    assert gap() < before  # the chosen image became relatively more likely
    adapter.reset()
    assert adapter.total_updates == 0
    assert all(torch.equal(p, s) for p, s in zip(backbone.lora_parameters(), start))


def test_adapting_web_session_reports_updates_and_saves_a_lora_stock_diffusers_loads(tmp_path):
    import threading

    from lit_pref.vca.server import make_server

    cfg = parse_args([*FAST, "--output", str(tmp_path / "d.jsonl"), "--port", "0", "--num_images", "2",
                      "--adapt", "true", "--adapt_updates", "2"])
    studio = studio_from_args(cfg)
    srv = make_server(studio, cfg.host, cfg.port)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        start = [p.detach().clone() for p in studio.backbone.lora_parameters()]
        status, r1 = _request(srv, "/api/start", {"prompt": RED})
        assert status == 200 and r1["adapt"] is True
        status, c1 = _request(srv, "/api/choose", {"session_id": r1["session_id"], "chosen": 1, "feedback": "greener"})
        assert status == 200 and c1["adapted"]["updates"] == 2 and c1["adapted"]["total_updates"] == 2
        assert any(not torch.equal(p, s) for p, s in zip(studio.backbone.lora_parameters(), start))
        status, done = _request(srv, "/api/finish", {"session_id": r1["session_id"]})
        assert status == 200 and done["lora"].endswith("/lora")
        # A new session starts from the tool's LoRA again.
        _request(srv, "/api/start", {"prompt": RED})
        assert all(torch.equal(p, s) for p, s in zip(studio.backbone.lora_parameters(), start))
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join()
    (dialogue,) = read_dialogues(tmp_path / "d.jsonl")
    assert [t.chosen for t in dialogue.turns] == [1]
    # The saved LoRA is the adapted one, and stock diffusers loads it.
    adapted = DiffusionBackbone(model="toy")
    adapted.load_lora(done["lora"])
    pipe = StableDiffusionPipeline.from_pretrained(TOY_PIPELINE, safety_checker=None, requires_safety_checker=False)
    pipe.load_lora_weights(done["lora"])
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([500])
    hidden = adapted.encode_prompts([RED])["encoder_hidden_states"]
    with torch.no_grad():
        ours, theirs = adapted.unet(x, t, hidden).sample, pipe.unet(x, t, hidden).sample
        with adapted.reference_forward():
            base = adapted.unet(x, t, hidden).sample
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)
    assert (ours - base).abs().max() > 0


def test_page_says_when_it_is_adapting_and_how_many_updates():
    assert "Adapting the model to your choice" in PAGE and "j.adapted.updates" in PAGE and "total_updates" in PAGE
