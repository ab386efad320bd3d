"""Live co-adaptation (``interact --adapt``): the DPO updates move the LoRA toward the chosen image, a new session
starts from the tool's LoRA (or, carrying over, from the one the earlier sessions adapted), the page is told how
many updates were made, and a finished session's LoRA loads in stock diffusers."""

from __future__ import annotations

import pytest
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


def _pair_gap(backbone, images, chosen, loser, prompt, t_low, t_high, n=32):
    """Mean (policy - reference) of (e_w - e_l) on fixed noise and timesteps in [t_low, t_high): the DPO logit's
    sign-flipped numerator; negative when the chosen image became relatively more likely than under the base."""
    latents = backbone.encode_images(images * 2 - 1, generator=torch.Generator().manual_seed(1))
    generator = torch.Generator().manual_seed(2)
    noise, t = torch.randn(n, *latents.shape[1:], generator=generator), torch.randint(t_low, t_high, (n,), generator=generator)
    cond = backbone.encode_prompts([prompt] * n)
    w, l = latents[chosen].expand(n, -1, -1, -1), latents[loser].expand(n, -1, -1, -1)
    with torch.no_grad():
        policy = _errors(backbone, w, noise, t, cond) - _errors(backbone, l, noise, t, cond)
        with backbone.reference_forward():
            reference = _errors(backbone, w, noise, t, cond) - _errors(backbone, l, noise, t, cond)
    return (policy - reference).mean().item()


@pytest.fixture(scope="module")
def toy_round():
    backbone = DiffusionBackbone(model="toy")
    with torch.no_grad():
        images = backbone.sample([RED] * 3, num_inference_steps=4, generator=torch.Generator().manual_seed(0))
    return backbone, images


def test_adaptation_trains_on_its_timestep_range(toy_round):
    """The noisiest timesteps (where the layout is decided) move only when the adapter draws from them."""
    backbone, images = toy_round
    gaps = {}
    for low, high in ((0.6, 1.0), (0.0, 0.05)):
        adapter = LiveAdapter(backbone, updates=6, lr=3e-3, timestep_range=(low, high))
        adapter.adapt(images, chosen=1, prompt=RED)
        gaps[low] = _pair_gap(backbone, images, 1, 0, RED, 600, 1000)
        adapter.reset()
    assert gaps[0.6] < 0 and gaps[0.6] < gaps[0.0]


def test_history_keeps_training_on_the_sessions_earlier_rounds(toy_round):
    """The same images chosen the other way in round 2: with ``history`` 2 the steps also keep training round 1's
    pairs (1 ≻ 0 among them), so image 1 stays more likely against image 0 than with ``history`` 1."""
    backbone, images = toy_round
    gaps = {}
    for history in (1, 2):
        adapter = LiveAdapter(backbone, updates=4, lr=3e-3, timestep_range=(0.0, 1.0), history=history)
        adapter.adapt(images, chosen=1, prompt=RED)
        adapter.adapt(images, chosen=0, prompt=RED)
        assert len(adapter.rounds) == history
        gaps[history] = _pair_gap(backbone, images, 1, 0, RED, 0, 1000)
        adapter.reset()
        assert adapter.rounds == []
    assert gaps[2] < gaps[1]


def test_fresh_optimizer_lets_a_reversed_choice_move_the_other_way(toy_round):
    """Round 2 chooses image 0 over image 1 after round 1 chose 1 over 0 (history 1: round 2 trains only 0 ≻ 1).
    With the AdamW moments carried over, round 2's steps keep some of round 1's direction; with a fresh optimizer
    they follow round 2's pairs alone, so image 1 ends less favoured against image 0."""
    backbone, images = toy_round
    gaps = {}
    for fresh in (False, True):
        adapter = LiveAdapter(backbone, updates=4, lr=3e-3, timestep_range=(0.0, 1.0), history=1,
                              fresh_optimizer=fresh)
        adapter.adapt(images, chosen=1, prompt=RED)
        adapter.adapt(images, chosen=0, prompt=RED)
        gaps[fresh] = _pair_gap(backbone, images, 1, 0, RED, 0, 1000)
        adapter.reset()
    assert gaps[True] > gaps[False]


def test_interact_passes_the_history_fresh_optimizer_and_carry_over_options_to_the_adapter(tmp_path):
    cfg = parse_args([*FAST, "--output", str(tmp_path / "d.jsonl"), "--adapt", "true", "--adapt_history", "null",
                      "--adapt_fresh_optimizer", "true", "--adapt_carry_over", "true"])
    adapter = studio_from_args(cfg).adapter
    assert adapter.history is None and adapter.fresh_optimizer is True and adapter.carry_over is True


def test_interact_adapts_by_dpo_by_default_and_by_ppo_on_a_reward_model_folder(tmp_path):
    from lit_pref.modules import RewardModel
    from lit_pref.rewards import RewardModelScorer
    from lit_pref.vca.adapt_ppo import LivePPOAdapter

    out = ["--output", str(tmp_path / "d.jsonl"), "--adapt", "true"]
    dpo = studio_from_args(parse_args([*FAST, *out])).adapter
    assert type(dpo) is LiveAdapter and (dpo.updates, dpo.lr) == (4, 3e-3)
    RewardModel(clip_model="toy", hidden_dim=8).save_pretrained(tmp_path / "rm")  # an untrained head: plumbing only
    ppo = studio_from_args(parse_args([*FAST, *out, "--adapt_reward", str(tmp_path / "rm"),
                                       "--adapt_reward_images", "6", "--guidance_scale", "3.0"])).adapter
    assert isinstance(ppo, LivePPOAdapter) and isinstance(ppo.scorer, RewardModelScorer)
    assert (ppo.updates, ppo.lr, ppo.num_images) == (2, 5e-4, 6)
    assert (ppo.num_inference_steps, ppo.guidance_scale) == (2, 3.0)  # the chains are sampled as the tool samples
    with pytest.raises(ValueError, match="adapt=true"):
        studio_from_args(parse_args([*FAST, "--output", str(tmp_path / "d.jsonl"), "--adapt_reward",
                                     str(tmp_path / "rm")]))


def test_new_session_restores_the_starting_lora_unless_it_carries_over(toy_round):
    """One person's next dialogue: with ``carry_over`` it starts from the LoRA their earlier one adapted, without it
    from the starting LoRA; either way with no rounds and no updates counted."""
    backbone, images = toy_round
    start = [p.detach().clone() for p in backbone.lora_parameters()]
    for carry_over in (False, True):
        adapter = LiveAdapter(backbone, updates=2, carry_over=carry_over)
        adapter.adapt(images, chosen=1, prompt=RED)
        adapted = [p.detach().clone() for p in backbone.lora_parameters()]
        assert any(not torch.equal(a, s) for a, s in zip(adapted, start))
        adapter.new_session()
        expected = adapted if carry_over else start
        assert all(torch.equal(p, e) for p, e in zip(backbone.lora_parameters(), expected))
        assert adapter.rounds == [] and adapter.total_updates == 0
        adapter.reset()
        assert all(torch.equal(p, s) for p, s in zip(backbone.lora_parameters(), start))


def test_history_none_trains_on_every_round_of_the_session(toy_round):
    backbone, images = toy_round
    adapter = LiveAdapter(backbone, updates=1, history=None)
    for chosen in (0, 1, 2):
        adapter.adapt(images, chosen=chosen, prompt=RED)
    assert len(adapter.rounds) == 3
    adapter.reset()


@pytest.mark.parametrize("kwargs, message", [({"updates": 0}, "updates"), ({"history": 0}, "history"),
                                             ({"timestep_range": (0.6, 0.6)}, "timestep_range")])
def test_bad_adapter_settings_are_refused(toy_round, kwargs, message):
    with pytest.raises(ValueError, match=message):
        LiveAdapter(toy_round[0], **kwargs)


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
