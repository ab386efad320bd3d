"""The toy wing: its public names come from one place, and what production code knows of the toy world (the name
``"toy"``, ``toy:<split>`` prompt lists, the caption vocabulary) is shipped files that agree with the toy package."""

from __future__ import annotations

import json

import pytest

import lit_pref.datamodules
import lit_pref.rewards
import lit_pref.rpo
import lit_pref.toy
import lit_pref.vca
from conftest import REPO
from lit_pref.datamodules.synthetic import BACKGROUNDS, COLOURS, SHAPES
from lit_pref.rpo import resolve_prompts
from lit_pref.toy import SIZES, ToyRefiner, caption, prompts
from lit_pref.vca import CausalLMRefiner, TemplateRefiner
from lit_pref.vca.info import model_info

TOY_ASSETS = REPO / "lit_pref" / "assets" / "toy"


def test_the_toy_world_is_exported_from_one_place_only():
    for name in lit_pref.toy.__all__:
        assert getattr(lit_pref.toy, name) is not None
    for package in (lit_pref.datamodules, lit_pref.rewards, lit_pref.rpo, lit_pref.vca):
        toy_names = [n for n in dir(package) if "toy" in n.lower() and not n.startswith("_")]
        assert toy_names == [], f"{package.__name__} still exports {toy_names}"


@pytest.mark.parametrize("split,count", [("train", 60), ("heldout", 12), ("all", 72)])
def test_shipped_caption_lists_are_the_toy_worlds(split, count):
    assert resolve_prompts(f"toy:{split}") == prompts(split) and len(prompts(split)) == count
    assert (TOY_ASSETS / "prompts" / f"{split}.txt").read_text().splitlines() == prompts(split)


def test_an_unknown_toy_prompt_list_is_named_in_the_error():
    with pytest.raises(ValueError, match="toy:valid.*toy:train, toy:heldout, toy:all"):
        resolve_prompts("toy:valid")


def test_shipped_vocabulary_is_the_toy_worlds():
    vocabulary = json.loads((TOY_ASSETS / "vocabulary.json").read_text())
    assert vocabulary == {"caption": "a {size} {colour} {shape} on a {background} background",
                          "shapes": list(SHAPES), "colours": list(COLOURS), "sizes": list(SIZES),
                          "backgrounds": list(BACKGROUNDS)}
    words = dict(size="large", colour="cyan", shape="square", background="black")
    assert vocabulary["caption"].format(**words) == caption("cyan", "square", "large", "black")


def test_model_info_reads_the_model_folders_vocabulary_and_the_refiners_phrases(tmp_path):
    toy = model_info("toy", ToyRefiner())
    assert toy["vocabulary"]["shapes"] == list(SHAPES) and "move it to the centre" in toy["feedback"]
    assert model_info("toy", TemplateRefiner())["feedback"] is None  # the generic default takes free text
    (tmp_path / "vocabulary.json").write_text(json.dumps({"subjects": ["cat"]}))
    assert model_info(str(tmp_path), TemplateRefiner())["vocabulary"] == {"subjects": ["cat"]}
    assert model_info(str(tmp_path / "missing"), TemplateRefiner())["vocabulary"] is None
    assert CausalLMRefiner.feedback_phrases is TemplateRefiner.feedback_phrases  # chat models: free text
