"""Rich Preference Optimization on the toy world: critic, editor, pair synthesis (resumable), CLI, iterative training."""

from __future__ import annotations

import io
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image

from conftest import REPO, read_events
from lit_pref.datamodules import PreferencePairDataModule, RichPreferenceDataModule
from lit_pref.toy.world import Scene, render
from lit_pref.backbone import DiffusionBackbone
from lit_pref.losses import DiffusionDPOLoss
from lit_pref.modules import RichPreferenceDPO
from lit_pref.rewards import CLIPScore
from lit_pref.toy import ToyCritic, ToyEditor, ToyGroundTruthReward, ToyJudge
from lit_pref.rpo import PairSynthesizer, read_stats
from lit_pref.rpo.cli import build_parser

PROMPTS = ["a large red circle on a white background", "a small blue square on a black background",
           "a large green triangle on a white background", "a small yellow circle on a black background"]


@pytest.fixture(scope="module")
def toy() -> DiffusionBackbone:
    return DiffusionBackbone(model="toy")


def image_of(scene: Scene) -> torch.Tensor:
    return torch.from_numpy(render(scene)).permute(2, 0, 1).float() / 255


def decode(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def synthesizer(editor=None, scorer=None, margin: float = 0.0, steps: int = 2, batch_size: int = 2) -> PairSynthesizer:
    return PairSynthesizer(ToyCritic(), editor or ToyEditor(), scorer or ToyGroundTruthReward(), margin=margin,
                           num_inference_steps=steps, guidance_scale=4.0, batch_size=batch_size)


# ---------------------------------------------------------------------- critic and editor
def test_toy_critic_names_each_departure_from_the_prompt_and_its_fix():
    critic = ToyCritic(centre_tolerance=0.1)
    wrong = image_of(Scene("blue", "circle", "large", "white", side=16, center=(8.0, 9.0)))
    critique = critic.critique(wrong, "a large red triangle on a black background")
    assert critique.instructions == ["make the shape red", "change the circle into a triangle",
                                     "make the background black", "move the shape to the centre"]
    assert critique.issues == ["the shape is blue but the prompt asks for red",
                               "the shape is a circle but the prompt asks for a triangle",
                               "the background is white but the prompt asks for black",
                               "the shape sits off-centre, towards the upper left"]
    assert critique.text.startswith("The image shows a large blue circle on a white background, towards the upper left.")

    right = image_of(Scene("red", "triangle", "small", "black", side=9, center=(16.0 - 1.5, 16.0)))  # centroid centred
    assert critic.critique(right, "a small red triangle on a black background").instructions == []
    assert critic.critique(right, "a large red triangle on a black background").instructions == ["make the shape large"]
    assert ToyCritic(centre_tolerance=None).critique(wrong, "a large blue circle on a white background").instructions == []

    blank = torch.zeros(3, 32, 32)
    assert critic.critique(blank, "a small red circle on a white background").instructions == [
        "draw a small red circle in the centre", "make the background white"]
    outside = critic.critique(wrong, "a photo of a cat")
    assert outside.instructions == [] and "outside the toy world" in outside.text


def test_toy_editor_carries_out_the_critics_instructions():
    judge, reward, editor = ToyJudge(), ToyGroundTruthReward(), ToyEditor()
    prompt = "a large red triangle on a black background"
    wrong = image_of(Scene("blue", "circle", "small", "white", side=8, center=(6.0, 25.0)))
    instructions = ToyCritic().critique(wrong, prompt).instructions
    edited = editor.edit(wrong, instructions, prompt)
    (reading,) = judge.read(edited[None])
    assert (reading.colour, reading.shape, reading.size, reading.background) == ("red", "triangle", "large", "black")
    assert math.dist(reading.center, (16.0, 16.0)) < 1.0  # the centroid, not the bounding box, is centred
    before, after = reward.score(torch.stack([wrong, edited]), [prompt] * 2).tolist()
    assert before < 1.0 and after > 3.95  # 4 matches (weights 1, 1, .5, .5) + centredness 1 at most

    moved = editor.edit(wrong, ["move the shape to the centre"], prompt)
    (reading,) = judge.read(moved[None])
    assert (reading.colour, reading.shape, reading.size) == ("blue", "circle", "small")  # only the position changed
    assert math.dist(reading.center, (16.0, 16.0)) < 1.0
    white = torch.ones(3, 1, 1)
    assert (moved != white).any(0).sum() == (wrong != white).any(0).sum()  # the image's own pixels, shifted
    assert torch.equal(editor.edit(wrong, ["paint a moustache on it"], prompt), wrong)  # not understood: unchanged



def test_taste_blind_critic_never_asks_for_the_centre_and_its_missing_shape_lands_anywhere():
    blind, editor, judge = ToyCritic(centre_tolerance=None), ToyEditor(), ToyJudge()
    prompt = "a small red circle on a white background"
    critique = blind.critique(torch.zeros(3, 32, 32), prompt)
    assert critique.instructions == ["draw a small red circle", "make the background white"]
    assert critique.regions[0] == [(0.0, 0.0, 1.0, 1.0)]  # the shape may go anywhere
    drawn = [editor.edit(torch.zeros(3, 32, 32), critique.instructions, prompt, seed=s) for s in range(8)]
    readings = [judge.read(image[None])[0] for image in drawn]
    assert all((r.colour, r.shape, r.size, r.background) == ("red", "circle", "small", "white") for r in readings)
    offsets = [math.dist(r.center, (16.0, 16.0)) for r in readings]
    assert max(offsets) > 4.0 and len({tuple(r.center) for r in readings}) == 8  # not all centred: placed by seed
    assert torch.equal(editor.edit(torch.zeros(3, 32, 32), critique.instructions, prompt, seed=3), drawn[3])

# ---------------------------------------------------------------------- the synthesizer and its parquet
def test_synthesized_parquet_reads_back_through_the_datamodule_intact(tmp_path, toy):
    out = tmp_path / "pairs"
    stats = synthesizer(margin=-100.0).run(toy, PROMPTS, out, samples_per_prompt=2, seed=7, progress=False)
    table = pq.read_table(out).to_pylist()  # pyarrow reads the folder (the _*.json files are ignored)
    assert stats.sampled == 8 and stats.kept == stats.proposed == len(table) > 0
    assert read_stats(out).kept == stats.kept
    assert sorted(r["item"] for r in table) == [r["item"] for r in table]

    # The originals are the toy base's samples of each item's prompt and seed (PNG: 8-bit exact).
    items = [r["item"] for r in table]
    texts = [PROMPTS[i % 4] for i in items]
    generators = [torch.Generator().manual_seed(7 + i) for i in items]
    originals = toy.sample(texts, num_inference_steps=2, guidance_scale=4.0, generator=generators)
    originals = (originals * 255).round().permute(0, 2, 3, 1).numpy()
    for row, text, original in zip(table, texts, originals):
        assert row["caption"] == text and row["label_0"] == 1.0 and row["seed"] == 7 + row["item"]
        assert np.abs(decode(row["jpg_1"]).astype(float) - original).max() <= 1
        assert row["instructions"] and isinstance(row["instructions"], list) and row["critique"].startswith("The image")
        assert row["reward_0"] - row["reward_1"] > -100.0

    data = PreferencePairDataModule(train_path=str(out), resolution=32, batch_size=len(table))
    data.setup("fit")
    assert data.train_dataset.captions == [r["caption"] for r in table]
    for i, row in enumerate(table):
        item = data.train_dataset[i]
        for key, column in (("image_0", "jpg_0"), ("image_1", "jpg_1")):
            pixels = ((item[key] + 1) * 127.5).round().permute(1, 2, 0).numpy()
            assert np.array_equal(pixels, decode(row[column]))
    batch = next(iter(data.train_dataloader()))
    assert batch["images_0"].shape == (len(table), 3, 32, 32) and batch["label_0"].eq(1.0).all()


class CrashingEditor(ToyEditor):
    """The toy editor, raising at its ``fail_at``-th call (private attributes: not part of the recorded parameters)."""

    def __init__(self, fail_at: int | None = None) -> None:
        super().__init__()
        self._fail_at, self._calls = fail_at, 0

    def edit(self, image, instructions, prompt, seed=None):
        self._calls += 1
        if self._calls == self._fail_at:
            raise RuntimeError("editor crashed")
        return super().edit(image, instructions, prompt, seed)


def test_a_crash_and_a_restart_lose_no_finished_pair_and_duplicate_none(tmp_path, toy):
    run = dict(backbone=toy, prompts=PROMPTS, samples_per_prompt=2, progress=False)
    synthesizer(CrashingEditor()).run(output_dir=tmp_path / "whole", **run)
    whole = pq.read_table(tmp_path / "whole").to_pylist()

    crashed = tmp_path / "crashed"
    with pytest.raises(RuntimeError, match="editor crashed"):
        synthesizer(CrashingEditor(fail_at=5)).run(output_dir=crashed, **run)
    finished = {p.name: p.read_bytes() for p in crashed.glob("part-*.parquet")}
    assert finished and read_stats(crashed) is None  # some batches were committed; the run is not complete
    synthesizer(CrashingEditor()).run(output_dir=crashed, **run)
    assert all((crashed / name).read_bytes() == data for name, data in finished.items())  # not redone
    resumed = pq.read_table(crashed).to_pylist()
    assert [r["item"] for r in resumed] == [r["item"] for r in whole]  # every pair once, none twice
    assert resumed == whole  # the same pairs as a run without a crash, bytes of the images included
    assert read_stats(crashed) == read_stats(tmp_path / "whole")

    with pytest.raises(ValueError, match="margin"):
        synthesizer(CrashingEditor(), margin=0.5).run(output_dir=crashed, **run)


class ConfiguredReward(ToyGroundTruthReward):
    """A scorer with nested tuples in its settings (as open_clip's preprocessing config has), which JSON turns into
    lists: a restart must still recognise its parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.preprocess = {"size": (32, 32), "mean": (0.5, 0.5, 0.5)}


def test_max_pairs_writes_exactly_that_many_and_a_larger_one_continues(tmp_path, toy):
    out = tmp_path / "pairs"
    run = dict(backbone=toy, prompts=PROMPTS, output_dir=out, samples_per_prompt=4, progress=False)
    assert synthesizer(scorer=ConfiguredReward(), margin=-100.0, batch_size=4).run(max_pairs=3, **run).kept == 3
    assert pq.read_table(out).num_rows == 3 and read_stats(out).kept == 3
    assert synthesizer(scorer=ConfiguredReward(), margin=-100.0, batch_size=4).run(max_pairs=6, **run).kept == 6
    items = pq.read_table(out).column("item").to_pylist()
    assert len(items) == len(set(items)) == 6 and read_stats(out).kept == 6


def test_rich_pairs_raise_the_hidden_reward_beyond_chance(tmp_path, toy):
    """Relabelled by a *visible* reward model (the toy CLIP, which never saw the hidden reward), the kept pairs' gain
    under the hidden human's reward is positive: mean minus 3 standard errors above zero (one-sided p < 0.002), which
    a critic or editor that did not know what to fix (gains around zero) cannot pass."""
    clip = CLIPScore("local-dir:" + str(REPO / "lit_pref/assets/toy/clip"), pretrained=None)
    out = tmp_path / "pairs"
    stats = synthesizer(scorer=clip, steps=4, batch_size=24).run(toy, PROMPTS, out, samples_per_prompt=6, progress=False)
    table = pq.read_table(out).to_pylist()
    assert stats.kept == len(table) >= 5
    to_tensor = lambda png: torch.from_numpy(decode(png).copy()).permute(2, 0, 1).float() / 255  # noqa: E731
    hidden = ToyGroundTruthReward()
    captions = [r["caption"] for r in table]
    edits = hidden.score(torch.stack([to_tensor(r["jpg_0"]) for r in table]), captions)
    originals = hidden.score(torch.stack([to_tensor(r["jpg_1"]) for r in table]), captions)
    gain = (edits - originals).double()
    standard_error = gain.std() / math.sqrt(len(gain))
    assert gain.mean() - 3 * standard_error > 0, (gain.mean().item(), standard_error.item())


# ---------------------------------------------------------------------- command line and configs
def test_synthesize_pairs_subcommand_writes_pairs_config_and_stats(tmp_path, capsys):
    from lit_pref.__main__ import main

    out = tmp_path / "pairs"
    main(["synthesize-pairs", "--config", str(REPO / "configs/toy/synthesize_rich_pairs.yaml"), "--output_dir", str(out),
          "--max_pairs", "2", "--samples_per_prompt", "1", "--progress", "false",
          "--synthesizer.init_args.margin=-100", "--synthesizer.init_args.num_inference_steps=2",
          "--synthesizer.init_args.batch_size=4"])
    assert pq.read_table(out).num_rows == 2 and read_stats(out).kept == 2
    assert "2 kept" in capsys.readouterr().out
    config = (out / "_config.yaml").read_text()
    assert "class_path: lit_pref.toy.ToyCritic" in config and "margin: -100.0" in config


SYNTHESIS_CONFIGS = sorted(REPO.glob("configs/**/synthesize*.yaml"))


@pytest.mark.parametrize("config", SYNTHESIS_CONFIGS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_synthesis_config_parses(config):
    import lit_pref.rewards

    if "lit_pref.rewards.ImageReward" in config.read_text() and not hasattr(lit_pref.rewards, "ImageReward"):
        pytest.skip("lit_pref.rewards.ImageReward is not on this branch yet")
    parsed = build_parser().parse_args(["--config", str(config)])  # validates every class path and type
    assert parsed.synthesizer.class_path == "lit_pref.rpo.PairSynthesizer"


# ---------------------------------------------------------------------- iterative training
def test_iterative_mode_resynthesizes_from_the_policy_and_logs_pair_statistics(tmp_path):
    torch.manual_seed(0)
    pairs_dir = tmp_path / "rounds"
    model = RichPreferenceDPO(
        DiffusionBackbone(model="toy", lora_rank=4), loss=DiffusionDPOLoss(beta=5000.0),
        optimizer=lambda params: torch.optim.AdamW(params, lr=3e-2),
        resynthesize_every=1, synthesizer=synthesizer(margin=-100.0, batch_size=4),
        prompts=PROMPTS[:2], samples_per_prompt=2, max_pairs=2, pairs_dir=str(pairs_dir))
    data = RichPreferenceDataModule(str(pairs_dir), resolution=32, batch_size=2)
    logger = TensorBoardLogger(tmp_path, name="", version="")
    Trainer(max_epochs=2, reload_dataloaders_every_n_epochs=1, accelerator="cpu", logger=logger, log_every_n_steps=1,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            default_root_dir=tmp_path).fit(model, data)

    rounds = sorted(p.name for p in pairs_dir.iterdir())
    assert rounds == ["round-0000", "round-0001"]  # none after the last epoch: nothing would train on it
    assert [p.name for p in data.train_rounds] == ["round-0001"]  # the second epoch read the new round
    both = RichPreferenceDataModule(str(pairs_dir), rounds=2, resolution=32, batch_size=4)
    batch = next(iter(both.train_dataloader()))
    assert [p.name for p in both.train_rounds] == ["round-0000", "round-0001"]
    assert sorted(batch["indices"].tolist()) == [0, 1, 2, 3]  # unique across rounds: they seed the pairs' draws
    second = pq.read_table(pairs_dir / "round-0001").to_pylist()
    assert len(second) == 2 and {r["seed"] for r in second} == {1_000_003 + r["item"] for r in second}

    # Round 1 was sampled from the policy after one epoch, not from the base.
    backbone = model.backbone.eval()
    texts = [PROMPTS[r["item"] % 2] for r in second]
    generators = [torch.Generator().manual_seed(r["seed"]) for r in second]
    with backbone.reference_forward():
        base = backbone.sample(texts, num_inference_steps=2, guidance_scale=4.0, generator=generators)
    originals = np.stack([decode(r["jpg_1"]) for r in second]).astype(float)
    assert np.abs(originals - (base * 255).round().permute(0, 2, 3, 1).numpy()).max() > 8

    events = read_events(tmp_path)
    for name in ("rpo/kept", "rpo/proposed", "rpo/sampled", "rpo/mean_gain", "rpo/kept_fraction", "rpo/round",
                 "rpo/kept_edit_wins", "rpo/kept_original_wins"):
        assert len(events.Scalars(name)) == 2, name
    assert [e.value for e in events.Scalars("rpo/round")] == [0.0, 1.0]
    assert [e.value for e in events.Scalars("rpo/kept")] == [2.0, 2.0]
    assert [e.value for e in events.Scalars("rpo/kept_edit_wins")] == [2.0, 2.0]  # one-sided: only edits win
    assert [e.value for e in events.Scalars("rpo/kept_original_wins")] == [0.0, 0.0]


def test_iterative_mode_refuses_a_trainer_that_never_reloads_the_pairs(tmp_path):
    model = RichPreferenceDPO(DiffusionBackbone(model="toy"), resynthesize_every=1, synthesizer=synthesizer(),
                              prompts=PROMPTS, pairs_dir=str(tmp_path / "rounds"))
    trainer = Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, default_root_dir=tmp_path)
    with pytest.raises(ValueError, match="reload_dataloaders_every_n_epochs"):
        trainer.fit(model, RichPreferenceDataModule(str(tmp_path / "rounds"), resolution=32))
    with pytest.raises(ValueError, match="needs synthesizer, prompts, pairs_dir"):
        RichPreferenceDPO(DiffusionBackbone(model="toy"), resynthesize_every=1)
    with pytest.raises(FileNotFoundError, match="no complete synthesis round"):
        RichPreferenceDataModule(str(tmp_path / "empty"), resolution=32).train_dataloader()

