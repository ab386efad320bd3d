"""bench/vca_rounds.py: the paired per-dialogue comparison (mean difference and its bootstrap interval) and the
per-dialogue results file that lets a later run pair against the base without playing it again."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # bench/ is a folder of scripts; import the script in this process
from bench import vca_rounds  # noqa: E402


def test_paired_difference_mean_counts_and_bootstrap_interval_by_hand():
    # Differences 0, 0, 0, 3: mean 0.75. A resample of the 4 has mean 0.75 * (number of 3s drawn), which is 0 with
    # probability (3/4)^4 = 0.316 > 2.5%, so the 2.5th percentile is 0; P(mean <= 1.5) = 0.949 < 97.5% and
    # P(mean <= 2.25) = 0.996, so the 97.5th percentile is 2.25.
    d = vca_rounds.paired_difference([4, 5, 9, 9], [4, 5, 9, 6])
    assert d == {"n": 4, "mean": 0.75, "low": 0.0, "high": 2.25, "fewer": 0, "more": 1, "equal": 3}
    d = vca_rounds.paired_difference([3, 3, 3], [5, 4, 6])  # every difference negative: the interval is the values'
    assert d["mean"] == pytest.approx(-2.0) and -3.0 <= d["low"] < d["mean"] < d["high"] <= -1.0
    assert (d["fewer"], d["more"], d["equal"]) == (3, 0, 0)
    with pytest.raises(ValueError, match="same dialogues"):
        vca_rounds.paired_difference([1, 2], [1])


def test_the_saved_base_is_read_back_only_for_the_same_settings_and_seeds(tmp_path, monkeypatch, capsys):
    save = tmp_path / "base.json"
    common = ["--dialogues", "2", "--rounds", "2", "--num_images", "2", "--steps", "2", "--seeds", "3"]
    monkeypatch.setattr(sys, "argv", ["vca_rounds.py", *common, "--save", str(save)])
    vca_rounds.main()
    saved = json.loads(save.read_text())
    rounds = saved["results"]["base"]["3"]["rounds"]
    assert len(rounds) == 2 and all(1 <= r <= 3 for r in rounds)  # per dialogue, unreached = max+1
    assert saved["settings"] == {"dialogues": 2, "rounds": 2, "num_images": 2, "steps": 2, "guidance": 4.0}
    settings = saved["settings"]
    assert vca_rounds.load_baseline(str(save), settings, [3]) == {3: rounds}
    with pytest.raises(ValueError, match=r"base\.json: played with other settings .*'steps': \(10, 2\)"):
        vca_rounds.load_baseline(str(save), {**settings, "steps": 10}, [3])
    with pytest.raises(ValueError, match=r"base\.json: no 'base' results for seeds \[4\]"):
        vca_rounds.load_baseline(str(save), settings, [3, 4])
    # The live-adapting base paired against the saved base, which is not played again.
    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", ["vca_rounds.py", *common, "--baseline", str(save), "--adapt",
                                      "--adapt_updates", "1"])
    vca_rounds.main()
    out = capsys.readouterr().out
    assert "| 3 | base |" not in out and "| 3 | base + live adaptation |" in out
    assert "- base + live adaptation: " in out and "over 2 dialogues" in out


def test_adapt_ppo_plays_the_base_adapting_with_ppo_on_a_reward_model(tmp_path, monkeypatch, capsys):
    from lit_pref.modules import RewardModel

    RewardModel(clip_model="toy", hidden_dim=8).save_pretrained(tmp_path / "rm")  # an untrained head: plumbing only
    made = []

    class Recorded(vca_rounds.LivePPOAdapter):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(vca_rounds, "LivePPOAdapter", Recorded)
    monkeypatch.setattr(sys, "argv", ["vca_rounds.py", "--dialogues", "1", "--rounds", "2", "--num_images", "2",
                                      "--steps", "2", "--seeds", "3", "--no_base", "--adapt",
                                      "--adapt_ppo", str(tmp_path / "rm"), "--adapt_ppo_images", "2",
                                      "--save", str(tmp_path / "ppo.json")])
    vca_rounds.main()
    assert "| 3 | base + live adaptation |" in capsys.readouterr().out
    saved = json.loads((tmp_path / "ppo.json").read_text())
    assert saved["adaptation"]["adapt_ppo"] == str(tmp_path / "rm")
    (adapter,) = made
    assert isinstance(adapter.scorer, vca_rounds.RewardModelScorer) and adapter.num_images == 2
    assert adapter.num_inference_steps == 2
    assert (adapter.updates, adapter.lr) == (2, 5e-4)  # PPO's own defaults, not the DPO adapter's 4 / 3e-3
    assert (saved["adaptation"]["adapt_updates"], saved["adaptation"]["adapt_lr"]) == (2, 5e-4)  # what ran
