"""Win rate with ties and a prompt-level bootstrap interval (docs/methods.md §5)."""

from __future__ import annotations

import pytest
import torch

from lit_pref.rewards import win_rate


def test_hand_computed_case_with_a_tie():
    # outcomes: 1 > 0 win, 2 == 2 tie, 3 < 5 loss, 4 > 1 win  ->  (2 + 0.5) / 4 = 0.625
    result = win_rate(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([0.0, 2.0, 5.0, 1.0]))
    assert result.rate == 0.625
    assert (result.wins, result.ties, result.losses, result.n) == (2, 1, 1, 4)
    assert result.low <= 0.625 <= result.high


def test_all_ties_is_one_half_with_a_degenerate_interval():
    result = win_rate(torch.ones(10), torch.ones(10))
    assert result.rate == result.low == result.high == 0.5


def test_interval_resamples_prompts_not_samples():
    # Two prompts: A always wins on one, always loses on the other. Sample-level resampling of 200 samples
    # would give a narrow interval around 0.5; resampling 2 prompts gives [0, 1].
    a = torch.cat([torch.ones(100), torch.zeros(100)])
    groups = ["p"] * 100 + ["q"] * 100
    result = win_rate(a, 1 - a, groups=groups)
    assert result.rate == 0.5 and result.low == 0.0 and result.high == 1.0
    narrow = win_rate(a, 1 - a)
    assert narrow.high - narrow.low < 0.2


def test_interval_covers_the_true_rate_in_simulation():
    generator = torch.Generator().manual_seed(0)
    p, sims, covered = 0.6, 300, 0
    for s in range(sims):
        outcome = (torch.rand(120, generator=generator) < p).float()  # 1 = A wins, 0 = A loses
        groups = [str(i // 4) for i in range(120)]  # 30 prompts x 4 samples
        result = win_rate(outcome, 1 - outcome, groups=groups, num_bootstrap=500, seed=s)
        covered += result.low <= p <= result.high
    assert 0.90 <= covered / sims <= 0.99  # nominal 95%; 300 simulations: sd about 1.3 points


def test_bad_input():
    with pytest.raises(ValueError, match="one length"):
        win_rate(torch.ones(3), torch.ones(4))
    with pytest.raises(ValueError, match="group labels"):
        win_rate(torch.ones(3), torch.ones(3), groups=["a"])
