"""Every shipped config parses, composed as its header documents; the shared fragments (the held-out prompt files,
the default logger) resolve to what the configs pasted before."""

from __future__ import annotations

import contextlib
import io

import pytest
import yaml

from conftest import REPO
from lit_pref.__main__ import main
from lit_pref.datamodules.prompts import read_prompts
from lit_pref.toy.world import HELDOUT_COMBOS, prompts

# Training configs, each run alone (`fit --config X.yaml`). Parsed elsewhere: configs/strategy/*.yaml compose after
# a method config (tests/test_distributed.py); the synthesize-pairs configs (configs/**/synthesize*.yaml) in
# tests/test_rpo.py; configs/interact/ in tests/test_interact.py; configs/evaluate/ in tests/test_evaluate.py.
CONFIGS = sorted(p.relative_to(REPO) for p in (REPO / "configs").rglob("*.yaml")
                 if not {"strategy", "interact", "evaluate"} & set(p.parts) and not p.name.startswith("synthesize"))


def print_config(*args: str) -> dict:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        main(["fit", *args, "--print_config"])
    assert exit_info.value.code in (0, None)
    return yaml.safe_load(out.getvalue())


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_every_shipped_config_parses(config):
    parsed = print_config("--config", str(REPO / config))
    assert parsed["model"]["class_path"].startswith(("lit_pref.modules.", "lit_pref.toy.pretrain."))
    logger = parsed["trainer"]["logger"]  # the default logger, named by the config: runs/<name>/version_N
    assert logger["class_path"] == "lightning.pytorch.loggers.TensorBoardLogger"
    assert logger["init_args"]["save_dir"] == "runs" and logger["init_args"]["name"] not in ("", "lightning_logs")


def test_held_out_prompt_files_hold_the_toy_worlds_held_out_prompts():
    """configs/prompts/toy_heldout.txt: every held-out colour-shape combination in both sizes on both backgrounds
    (3 x 2 x 2 = 12), which is the toy world's "heldout" split; toy_heldout_grid.txt: 3 of them."""
    heldout = read_prompts(REPO / "configs/prompts/toy_heldout.txt")
    assert len(heldout) == len(HELDOUT_COMBOS) * 2 * 2 == 12 and sorted(heldout) == sorted(set(prompts("heldout")))
    grid = read_prompts(REPO / "configs/prompts/toy_heldout_grid.txt")
    assert len(grid) == 3 and set(grid) <= set(heldout)


def test_prompt_files_named_by_configs_exist():
    named = {line.split("prompts:")[1].split("#")[0].strip() for config in CONFIGS
             for line in (REPO / config).read_text().splitlines() if "prompts: configs/" in line}
    assert named == {"configs/prompts/toy_heldout.txt", "configs/prompts/toy_heldout_grid.txt"}
    assert all((REPO / path).is_file() for path in named)
