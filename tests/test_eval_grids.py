"""Image grids of the evaluated samples with their scores (RewardMetrics, WinRate), read back from TensorBoard."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image

from lit_pref.callbacks import RewardMetrics, WinRate
from lit_pref.callbacks.sample_grid import captioned_grid
from conftest import read_events
from lit_pref.datamodules import SyntheticPreferenceDataModule
from lit_pref.backbone import DiffusionBackbone
from lit_pref.losses import DiffusionDPOLoss
from lit_pref.modules import TrajectoryDPO
from lit_pref.rewards import Scorer

PROMPTS = ["a red circle on a white background", "a blue square on a black background"]


class Brightness(Scorer):
    """Mean pixel value."""

    def score(self, images, prompts):
        return images.mean(dim=(1, 2, 3))


def test_captioned_grid_enlarges_small_images_and_keeps_captions_inside_their_tile():
    colours = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    images = colours[:, :, None, None].expand(3, 3, 32, 32)
    short = captioned_grid(images, ["one", "two", "three"], nrow=3)
    captions = ["one", "a large magenta square on a white background", "first line\nsecond line"]
    grid = captioned_grid(images, captions, nrow=3)
    side = 128  # 32 px enlarged 4x to reach min_side
    assert grid.shape[2] == short.shape[2] == 2 + 3 * (side + 2)
    assert grid.shape[1] > short.shape[1] > side + 4  # a caption strip under the images; the long one wraps
    for k, colour in enumerate(colours):
        pixels = grid[:, 2:2 + side, 2 + k * (side + 2):2 + k * (side + 2) + side]
        assert torch.equal(pixels, colour[:, None, None].expand_as(pixels))  # enlarged exactly, nearest pixel
        strip = grid[:, 2 + side:-2, 2 + k * (side + 2):2 + k * (side + 2) + side]
        assert strip.min() < 0.3 and strip.max() == 1.0  # dark text on white
    for k in range(4):  # the padding columns between tiles: no caption ran over its tile
        assert torch.all(grid[:, :, k * (side + 2):k * (side + 2) + 2] == 0.5)
    with pytest.raises(ValueError, match="3 images but 2 captions"):
        captioned_grid(images, captions[:2], nrow=3)


def png(event) -> torch.Tensor:
    """A TensorBoard image event as a (3, H, W) tensor in [0, 1]."""
    array = np.array(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB"))
    return torch.from_numpy(array).permute(2, 0, 1).float() / 255


def test_evaluation_callbacks_log_grids_of_their_samples_with_scores_at_their_own_steps(tmp_path):
    kwargs = dict(num_images_per_prompt=2, num_inference_steps=2, every_n_steps=2, grid_images=3)
    metrics = RewardMetrics({"brightness": Brightness()}, PROMPTS, **kwargs)
    wins = WinRate({"brightness": Brightness()}, PROMPTS, **kwargs)
    model = TrajectoryDPO(DiffusionBackbone.tiny(), loss=DiffusionDPOLoss(),
                          optimizer=lambda params: torch.optim.SGD(params, lr=1.0))
    data = SyntheticPreferenceDataModule(data_dir=str(tmp_path / "data"), num_pairs=8, num_val_pairs=0, batch_size=2)
    trainer = Trainer(max_steps=4, accelerator="cpu", logger=TensorBoardLogger(tmp_path, name="", version=""),
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      callbacks=[metrics, wins], log_every_n_steps=3)
    trainer.fit(model, data)
    events = read_events(tmp_path)

    # Evaluated after optimizer steps 2 and 4, each written once at Lightning's step for that batch (1 and 3),
    # although log_every_n_steps=3 would have written self.log-ged values at step 2 only.
    assert [e.step for e in events.Scalars("eval/brightness")] == [1, 3]
    assert [e.step for e in events.Scalars("eval/win_rate_vs_base/brightness")] == [1, 3]
    # and the latest values are where a ModelCheckpoint monitoring eval/* looks
    for tag in ("eval/brightness", "eval/win_rate_vs_base/brightness"):
        assert trainer.callback_metrics[tag].item() == pytest.approx(events.Scalars(tag)[-1].value)

    # one sample of each prompt first: prompt 0 repeat 0, prompt 1 repeat 0, prompt 0 repeat 1
    assert metrics.grid_indices == wins.grid_indices == [0, 2, 1]
    def sample():  # the final model's evaluation samples (fixed seeds), recomputed in one batch
        return model.backbone.sample(metrics.texts, num_inference_steps=2, guidance_scale=5.0,
                                     generator=[torch.Generator().manual_seed(i) for i in range(len(metrics.texts))])

    policy = sample()
    with model.backbone.reference_forward():
        base = sample()
    assert torch.isfinite(policy).all() and (policy - base).abs().max() > 0.05  # the grids can tell them apart
    side = policy.shape[-1] * -(-128 // policy.shape[-1])  # enlarged by a whole factor to at least 128 px

    def tile(grid, k, count):
        """Tile k of a grid of ``count`` tiles four to a row, each (side + caption) high, 2 px padding before."""
        rows = -(-count // 4)
        top, left = 2 + (k // 4) * (grid.shape[1] - 2) // rows, 2 + (k % 4) * (side + 2)
        return grid[:, top:top + side, left:left + side]

    def enlarged(image):
        return image.repeat_interleave(side // image.shape[-1], -2).repeat_interleave(side // image.shape[-1], -1)

    (_, last) = events.Images("eval/samples")
    assert last.step == 4
    grid = png(last)
    for k, i in enumerate([0, 2, 1]):
        assert (tile(grid, k, 3) - enlarged(policy[i])).abs().max() <= 1 / 255 + 1e-6

    (_, last) = events.Images("eval/win_rate_vs_base/samples")
    assert last.step == 4
    grid = png(last)
    for k, i in enumerate([0, 0, 2, 2, 1, 1]):  # policy | base of each sample
        expected = (policy if k % 2 == 0 else base)[i]
        assert (tile(grid, k, 6) - enlarged(expected)).abs().max() <= 1 / 255 + 1e-6

    scores = {"brightness": Brightness().score(policy, metrics.texts)}
    assert metrics.caption(2, scores, "policy: ") == f"policy: {PROMPTS[1]}\nbrightness {scores['brightness'][2]:.3f}"
