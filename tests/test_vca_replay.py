"""VCA-PPO on recorded dialogues without a simulated user: the recorded prompts are replayed, R_cons anchors on the
recorded chosen image; ScorerUser for real prompts; configs/vca_ppo/sd15.yaml trains on a real dialogue file."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from lit_pref.datamodules import Dialogue, DialogueDataModule, Turn
from lit_pref.__main__ import main
from lit_pref.backbone import DiffusionBackbone
from lit_pref.losses import ClippedPPOLoss
from lit_pref.modules import VCAPPO, PPOSettings
from lit_pref.modules.reward_model import RewardModel
from lit_pref.modules.vca_ppo import recorded_choice, replayed_prompts
from lit_pref.rewards import RoundWeightSchedule, Scorer
from lit_pref.vca.dialogue_users import ScorerDialogueUsers, ScorerUser
from test_vca_ppo import RecordingReward

FOX = "a watercolour fox in the snow"


class Brightness(Scorer):
    """Scores an image by its mean brightness (any prompt)."""

    def score(self, images, prompts):
        return images.mean(dim=(1, 2, 3))


def _real_dialogues(tmp_path):
    """Two recorded dialogues with real prompts: one with images and choices, one with text only."""
    for k, value in enumerate((20, 240)):
        Image.fromarray(np.full((48, 48, 3), value, dtype=np.uint8)).save(tmp_path / f"r1_{k}.png")
    lines = [
        {"dialogue_id": "fox", "initial_prompt": FOX, "turns": [
            {"round": 1, "prompt": FOX, "images": ["r1_0.png", "r1_1.png"], "chosen": 1, "user_feedback": "brighter",
             "satisfaction": 0.4},
            {"round": 2, "prompt": f"{FOX}, bright morning light", "user_feedback": "perfect"}]},
        {"dialogue_id": "boat", "initial_prompt": "a red boat on a lake", "turns": [
            {"round": 1, "user_feedback": "at sunset"},
            {"round": 2, "prompt": "a red boat on a lake at sunset", "user_feedback": "more clouds"},
            {"round": 3, "user_feedback": "perfect"}]},
    ]
    path = tmp_path / "dialogues.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_replayed_prompts_fall_back_to_the_initial_and_the_previous_prompt():
    dialogue = Dialogue("d", "p0", [Turn(1, ""), Turn(2, "", prompt="p2"), Turn(3, "")])
    assert replayed_prompts(dialogue) == ["p0", "p2", "p2"]


def test_replay_plays_the_recorded_prompts_and_anchors_on_the_recorded_choice(tmp_path):
    data = DialogueDataModule(str(_real_dialogues(tmp_path)), batch_size=2, shuffle=False)
    (batch,) = list(data.train_dataloader())
    reward = RecordingReward(Brightness(), RoundWeightSchedule(num_rounds=3), clip_model="toy")
    model = VCAPPO(DiffusionBackbone(model="tiny", lora_rank=2), reward, users=None, num_rounds=3,
                   num_inference_steps=2, ppo=PPOSettings(num_images=2))
    records = model.replay(batch, update=False)
    prompts = [call["prompts"] for call in reward.calls]
    assert prompts == [[FOX, "a red boat on a lake"], [f"{FOX}, bright morning light", "a red boat on a lake at sunset"],
                       ["a red boat on a lake at sunset"]]  # the fox dialogue recorded two rounds
    first, second, third = reward.calls
    size = tuple(first["images"].shape[-2:])
    recorded = recorded_choice(batch[0].turns[0], size)
    assert recorded.mean().item() == pytest.approx(240 / 255, abs=1e-3)  # r1_1.png, the chosen one
    assert torch.allclose(second["previous"][0], reward.embed_images(recorded[None])[0], atol=1e-6)
    # The boat dialogue recorded no images: its anchor is round 1's image that R_pref (brightness) ranks highest.
    brightest = first["images"][1, first["images"][1].mean(dim=(1, 2, 3)).argmax()]
    assert torch.allclose(second["previous"][1], reward.embed_images(brightest[None])[0], atol=1e-6)
    assert torch.allclose(third["previous"][0], reward.embed_images(second["images"][1, second["images"][1].mean(
        dim=(1, 2, 3)).argmax()][None])[0], atol=1e-6)
    assert [r.get("recorded_anchor") for r in records] == [None, 0.5, 0.0]


def test_scorer_user_chooses_by_its_scorer_replays_feedback_and_is_satisfied_at_the_threshold():
    dialogue = Dialogue("d", FOX, [Turn(1, "brighter", prompt=FOX), Turn(2, "perfect", prompt=f"{FOX}, bright")])
    user = ScorerDialogueUsers(Brightness(), threshold=0.5)(dialogue)
    assert isinstance(user, ScorerUser) and user.goal == f"{FOX}, bright"
    images = torch.stack([torch.full((3, 4, 4), v) for v in (0.2, 0.7, 0.4)])
    assert user.choose(images, FOX) == 1
    assert [user.feedback(images[1], FOX), user.feedback(images[1], FOX), user.feedback(images[1], FOX)] == \
        ["brighter", "perfect", ""]
    assert user.satisfied(images[1]) and not user.satisfied(images[2])
    assert not ScorerUser(Brightness(), FOX).satisfied(images[1])  # no threshold: never


def test_scorer_user_asks_a_chat_model_for_feedback(tmp_path):
    from lit_pref.vca import CausalLMRefiner
    from test_dialogues import _tiny_chat_model

    user = ScorerUser(Brightness(), FOX, feedback_model=CausalLMRefiner(_tiny_chat_model(tmp_path, "green"),
                                                                        max_new_tokens=2))
    assert user.feedback(torch.zeros(3, 4, 4), "a fox") == "green green"


def test_sd15_config_trains_on_a_real_dialogue_file_with_a_tiny_model(tmp_path):
    path = _real_dialogues(tmp_path)
    RewardModel(clip_model="toy", hidden_dim=8).save_pretrained(tmp_path / "rm")
    reward = "--model.init_args.reward.init_args"
    main(["fit", "--config", "configs/vca_ppo/sd15.yaml",
          "--trainer.accelerator", "cpu", "--trainer.max_epochs", "1", "--trainer.logger", "false",
          "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.enable_progress_bar", "false",
          "--model.init_args.backbone.init_args.model", "tiny", "--model.init_args.backbone.init_args.dtype", "float32",
          f"{reward}.clip_model", "toy", f"{reward}.clip_pretrained", "null", f"{reward}.device", "cpu",
          f"{reward}.preference.init_args.path", str(tmp_path / "rm"), f"{reward}.preference.init_args.device", "cpu",
          "--model.init_args.num_inference_steps", "2", "--model.init_args.ppo.num_images", "2",
          "--data.init_args.train_path", str(path), "--data.init_args.batch_size", "2"])
    lora = tmp_path / "run" / "lora" / "pytorch_lora_weights.safetensors"
    assert lora.is_file()


def test_trained_policy_beats_the_untrained_one_on_r_pref_with_fixed_prompts_and_noise(tmp_path):
    """Replay training with R_pref alone (the other weights 0) raises R_pref of images sampled from fixed prompts and
    fixed noise above what the untrained policy (adapters off) gets from the same prompts and noise; an update that
    does nothing (or a sign error) fails it. R_pref here is the images' brightness, which the toy model can change."""
    torch.manual_seed(0)
    dialogues = [Dialogue(f"d{i}", p, [Turn(1, "", prompt=p), Turn(2, "", prompt=p), Turn(3, "", prompt=p)])
                 for i, p in enumerate(["a small red circle on a black background",
                                        "a large blue square on a black background"])]
    zero = [0.0, 0.0]
    schedule = RoundWeightSchedule(num_rounds=3, diversity=zero, consistency=zero, mutual_information=zero,
                                   preference=[1.0, 1.0])
    reward = RecordingReward(Brightness(), schedule, clip_model="toy")
    model = VCAPPO(DiffusionBackbone(model="toy", lora_rank=4), reward, users=None, num_rounds=3,
                   num_inference_steps=4, guidance_scale=4.0,
                   ppo=PPOSettings(num_images=4, minibatch_size=4, inner_epochs=2, min_count=4),
                   loss=ClippedPPOLoss(clip_range=0.2),
                   optimizer=lambda params: torch.optim.AdamW(params, lr=1e-2))
    trainer = __import__("lightning.pytorch", fromlist=["Trainer"]).Trainer(
        max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False)
    trainer.fit(model, train_dataloaders=torch.utils.data.DataLoader([dialogues], batch_size=None,
                                                                     collate_fn=lambda d: d))
    prompts = [d.initial_prompt for d in dialogues for _ in range(8)]

    def brightness() -> float:
        with torch.no_grad():
            images = model.backbone.sample(prompts, num_inference_steps=4, guidance_scale=4.0, eta=1.0,
                                           generator=torch.Generator().manual_seed(123))
        return Brightness().score(images, prompts).mean().item()

    trained = brightness()
    with model.backbone.reference_forward():
        untrained = brightness()
    assert trained > untrained + 0.005, (trained, untrained)  # measured: 0.064 vs 0.054
