"""RewardMetrics and WinRate: metrics logged to real TensorBoard files, checked against independent recomputation."""

from __future__ import annotations

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import TensorBoardLogger

from lit_pref.callbacks import RewardMetrics, WinRate
from conftest import read_events
from lit_pref.datamodules import SyntheticPreferenceDataModule
from lit_pref.backbone import DiffusionBackbone
from lit_pref.losses import DiffusionDPOLoss
from lit_pref.modules import TrajectoryDPO
from lit_pref.rewards import Scorer, win_rate

PROMPTS = ["a red circle on a white background", "a blue square on a black background"]


class Brightness(Scorer):
    """Mean pixel value: a scorer whose value is easy to recompute."""

    def score(self, images, prompts):
        return images.mean(dim=(1, 2, 3))


def fit(tmp_path, lr: float, callbacks) -> TrajectoryDPO:
    model = TrajectoryDPO(DiffusionBackbone.tiny(), loss=DiffusionDPOLoss(),
                          optimizer=lambda params: torch.optim.SGD(params, lr=lr))
    data = SyntheticPreferenceDataModule(data_dir=str(tmp_path / "data"), num_pairs=8, num_val_pairs=0, batch_size=4)
    Trainer(max_steps=2, accelerator="cpu", logger=TensorBoardLogger(tmp_path, name="", version=""),
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            callbacks=callbacks, log_every_n_steps=1).fit(model, data)
    return model


def test_reward_metrics_log_the_mean_score_of_fixed_seed_samples(tmp_path):
    callback = RewardMetrics({"brightness": Brightness()}, PROMPTS, num_images_per_prompt=2, num_inference_steps=3,
                             every_n_steps=1)
    model = fit(tmp_path, lr=10.0, callbacks=[callback])
    logged = read_events(tmp_path).Scalars("eval/brightness")
    assert len(logged) == 2  # evaluated after optimizer steps 1 and 2
    texts = [p for p in PROMPTS for _ in range(2)]
    images = model.backbone.sample(texts, num_inference_steps=3, guidance_scale=5.0,
                                   generator=[torch.Generator().manual_seed(i) for i in range(4)])
    assert abs(logged[-1].value - images.mean().item()) < 1e-5  # the final model's samples, same seeds


def test_win_rate_is_one_half_when_the_policy_equals_the_base_and_matches_recomputation(tmp_path):
    unchanged = WinRate({"brightness": Brightness()}, PROMPTS, num_images_per_prompt=2, num_inference_steps=3,
                        every_n_steps=2)
    fit(tmp_path / "a", lr=0.0, callbacks=[unchanged])  # LoRA B stays 0: policy == base, every pair a tie
    events = read_events(tmp_path / "a")
    assert [e.value for e in events.Scalars("eval/win_rate_vs_base/brightness")] == [0.5]
    assert [e.value for e in events.Scalars("eval/win_rate_vs_base/brightness_low")] == [0.5]

    changed = WinRate({"brightness": Brightness()}, PROMPTS, num_images_per_prompt=2, num_inference_steps=3,
                      every_n_steps=2)
    model = fit(tmp_path / "b", lr=10.0, callbacks=[changed])
    logged = read_events(tmp_path / "b").Scalars("eval/win_rate_vs_base/brightness")[-1].value
    def sample():  # the final model's evaluation samples (fixed seeds), recomputed in one batch
        return model.backbone.sample(changed.texts, num_inference_steps=3, guidance_scale=5.0,
                                     generator=[torch.Generator().manual_seed(i) for i in range(len(changed.texts))])

    policy = sample()
    with model.backbone.reference_forward():
        base = sample()
    expected = win_rate(policy.mean(dim=(1, 2, 3)), base.mean(dim=(1, 2, 3)), groups=changed.texts).rate
    assert abs(logged - expected) < 1e-6 and expected != 0.5


def test_evaluation_samples_do_not_depend_on_the_batch_size():
    model = TrajectoryDPO(DiffusionBackbone.tiny(), loss=DiffusionDPOLoss(),
                          optimizer=lambda params: torch.optim.SGD(params, lr=0.0))
    one, three = (RewardMetrics({"brightness": Brightness()}, PROMPTS, num_images_per_prompt=2, num_inference_steps=2,
                                batch_size=size) for size in (1, 3))
    (scores_1, grid_1), (scores_3, grid_3) = one.sample_and_score(model), three.sample_and_score(model)
    torch.testing.assert_close(grid_1, grid_3, atol=1e-5, rtol=0)  # the grid holds every sample here
    torch.testing.assert_close(scores_1["brightness"], scores_3["brightness"], atol=1e-5, rtol=0)
