"""Dialogue JSONL format, prompt refiners, the toy simulated user and the toy dialogue generator."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from PIL import Image

from lit_pref.datamodules import Dialogue, DialogueDataModule, DialogueFormatError, Turn, append_dialogue, read_dialogues
from lit_pref.toy.world import Scene, render
from lit_pref.toy import ToyRefiner, ToySimulatedUser, make_toy_dialogues, toy_edits
from lit_pref.vca import CausalLMRefiner, TemplateRefiner

RED = "a small red circle on a white background"


def _good(dialogue_id: str = "d1") -> dict:
    return {
        "dialogue_id": dialogue_id,
        "initial_prompt": RED,
        "category": "toy",
        "turns": [
            {"round": 1, "user_feedback": "make it green", "prompt": RED, "images": ["a.png", "b.png"],
             "chosen": 1, "satisfaction": 0.25},
            {"round": 2, "user_feedback": "perfect"},
        ],
    }


def _write_lines(path, objs) -> None:
    path.write_text("".join(json.dumps(o) + "\n" for o in objs), encoding="utf-8")


@pytest.fixture
def images_dir(tmp_path):
    for name in ("a.png", "b.png"):
        Image.new("RGB", (4, 4)).save(tmp_path / name)
    return tmp_path


# ---------------------------------------------------------------------------------------------------- format


def test_round_trip_through_append_and_read(images_dir):
    path = images_dir / "d.jsonl"
    first = Dialogue.from_json(_good("d1"), "test")
    second = Dialogue("d2", "a cat", [Turn(1, "")])
    append_dialogue(path, first)
    append_dialogue(path, second)
    assert read_dialogues(path) == [first, second]
    lines = path.read_text().splitlines()
    assert json.loads(lines[0]) == _good("d1")
    assert json.loads(lines[1]) == {"dialogue_id": "d2", "initial_prompt": "a cat",
                                    "turns": [{"round": 1, "user_feedback": ""}]}  # None fields left out
    assert first.turns[0] == Turn(1, "make it green", RED, ["a.png", "b.png"], 1, 0.25)


def _mutations():
    """(name, how to break line 2, the field the error must name)."""

    def set_turn(i, key, value):
        def f(o):
            o["turns"][i][key] = value
        return f

    def pop(key):
        return lambda o: o.pop(key)

    return [
        ("missing id", pop("dialogue_id"), "dialogue_id"),
        ("empty id", lambda o: o.update(dialogue_id=""), "dialogue_id"),
        ("prompt not a string", lambda o: o.update(initial_prompt=3), "initial_prompt"),
        ("category not a string", lambda o: o.update(category=["x"]), "category"),
        ("unknown top-level key", lambda o: o.update(target="x"), "target"),
        ("missing turns", pop("turns"), "turns"),
        ("empty turns", lambda o: o.update(turns=[]), "turns"),
        ("turn not an object", lambda o: o["turns"].__setitem__(1, "perfect"), "turns[1]"),
        ("round skipped", set_turn(1, "round", 3), "turns[1].round"),
        ("round a bool", set_turn(0, "round", True), "turns[0].round"),
        ("round missing", lambda o: o["turns"][0].pop("round"), "turns[0].round"),
        ("feedback missing", lambda o: o["turns"][1].pop("user_feedback"), "turns[1].user_feedback"),
        ("feedback not a string", set_turn(0, "user_feedback", 5), "turns[0].user_feedback"),
        ("misspelt key", set_turn(0, "choosen", 1), "turns[0].choosen"),
        ("images not a list", set_turn(0, "images", "a.png"), "turns[0].images"),
        ("image not a string", set_turn(0, "images", ["a.png", 7]), "turns[0].images[1]"),
        ("chosen out of range", set_turn(0, "chosen", 2), "turns[0].chosen"),
        ("chosen negative", set_turn(0, "chosen", -1), "turns[0].chosen"),
        ("chosen a float", set_turn(0, "chosen", 1.0), "turns[0].chosen"),
        ("chosen without images", set_turn(1, "chosen", 0), "turns[1].chosen"),
        ("satisfaction above 1", set_turn(0, "satisfaction", 1.5), "turns[0].satisfaction"),
        ("satisfaction a string", set_turn(0, "satisfaction", "high"), "turns[0].satisfaction"),
        ("missing image file", set_turn(0, "images", ["a.png", "gone.png"]), "turns[0].images[1]"),
    ]


@pytest.mark.parametrize("name,mutate,field", _mutations(), ids=[m[0] for m in _mutations()])
def test_each_validation_error_names_file_line_and_field(images_dir, name, mutate, field):
    bad = copy.deepcopy(_good("d2"))
    mutate(bad)
    path = images_dir / "bad.jsonl"
    _write_lines(path, [_good("d1"), bad])
    with pytest.raises(DialogueFormatError) as info:
        read_dialogues(path)
    message = str(info.value)
    assert "bad.jsonl line 2" in message and f"'{field}'" in message, message


def test_duplicate_ids_invalid_json_and_non_objects_name_the_line(images_dir):
    path = images_dir / "dup.jsonl"
    _write_lines(path, [_good("d1"), _good("d2"), _good("d1")])
    with pytest.raises(DialogueFormatError, match=r"dup.jsonl line 3: field 'dialogue_id'.*already used on line 1"):
        read_dialogues(path)
    path.write_text(json.dumps(_good("d1")) + "\n\n{not json}\n")
    with pytest.raises(DialogueFormatError, match=r"dup.jsonl line 3: invalid JSON"):
        read_dialogues(path)
    path.write_text("[1, 2]\n")
    with pytest.raises(DialogueFormatError, match=r"dup.jsonl line 1: expected a JSON object"):
        read_dialogues(path)


def test_images_are_not_checked_when_asked_not_to(tmp_path):
    path = tmp_path / "d.jsonl"
    _write_lines(path, [_good("d1")])  # a.png and b.png do not exist here
    with pytest.raises(DialogueFormatError, match="turns\\[0\\].images\\[0\\]"):
        read_dialogues(path)
    assert read_dialogues(path, check_images=False)[0].turns[0].chosen == 1


def test_a_truncated_last_line_is_reported_never_dropped_and_append_refuses_to_glue(images_dir):
    path = images_dir / "d.jsonl"
    append_dialogue(path, Dialogue.from_json(_good("d1"), "test"))
    append_dialogue(path, Dialogue.from_json(_good("d2"), "test"))
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) - 20])  # a crash in the middle of writing line 2
    with pytest.raises(DialogueFormatError, match=r"d.jsonl line 2: invalid JSON \(truncated last line\?\)"):
        read_dialogues(path)
    before = path.read_bytes()
    with pytest.raises(DialogueFormatError, match=r"d.jsonl line 2: truncated last line"):
        append_dialogue(path, Dialogue("d3", "a cat", [Turn(1, "")]))
    assert path.read_bytes() == before


def test_append_validates_before_writing(tmp_path):
    path = tmp_path / "sub" / "d.jsonl"
    with pytest.raises(DialogueFormatError, match="turns\\[0\\].chosen"):
        append_dialogue(path, Dialogue("d1", "a cat", [Turn(1, "", images=["x.png"], chosen=3)]))
    assert not path.exists()
    with pytest.raises(DialogueFormatError, match="turns\\[1\\].round"):
        append_dialogue(path, Dialogue("d1", "a cat", [Turn(1, ""), Turn(1, "")]))
    assert not path.exists()


def test_datamodule_yields_lists_of_dialogues_each_once_per_epoch(tmp_path):
    train, val = tmp_path / "train.jsonl", tmp_path / "val.jsonl"
    _write_lines(train, [dict(_good(f"t{i}"), turns=[{"round": 1, "user_feedback": ""}]) for i in range(7)])
    _write_lines(val, [dict(_good("v0"), turns=[{"round": 1, "user_feedback": ""}])])
    dm = DialogueDataModule(str(train), str(val), batch_size=3, seed=1)
    batches = list(dm.train_dataloader())
    assert [len(b) for b in batches] == [3, 3, 1]
    assert all(isinstance(d, Dialogue) for b in batches for d in b)
    ids = [d.dialogue_id for b in batches for d in b]
    assert sorted(ids) == [f"t{i}" for i in range(7)] and ids != sorted(ids)  # shuffled
    again = [d.dialogue_id for b in DialogueDataModule(str(train), batch_size=3, seed=1).train_dataloader() for d in b]
    assert again == ids  # the seed fixes the order
    assert [[d.dialogue_id for d in b] for b in dm.val_dataloader()] == [["v0"]]
    unshuffled = DialogueDataModule(str(train), batch_size=7, shuffle=False).train_dataloader()
    assert [d.dialogue_id for d in next(iter(unshuffled))] == [f"t{i}" for i in range(7)]


# ---------------------------------------------------------------------------------------------------- refiners


@pytest.mark.parametrize(
    "feedback,expected",
    [
        ("make it green", "a small green circle on a white background"),
        ("make it large", "a large red circle on a white background"),
        ("make the shape a triangle", "a small red triangle on a white background"),
        ("make the shape a square", "a small red square on a white background"),
        ("use a black background", "a small red circle on a black background"),
        ("move it to the centre", RED),  # the toy captions have no position words
        ("perfect", RED),
        ("Make it CYAN, and use a black background.", "a small cyan circle on a black background"),
        ("make it blue then make it yellow", "a small yellow circle on a white background"),  # the later one wins
    ],
)
def test_toy_refiner_rewrites_toy_captions(feedback, expected):
    assert ToyRefiner().refine(RED, feedback, []) == expected


@pytest.mark.parametrize(
    "prompt,feedback,expected",
    [
        ("a photo of a cat", "Make it fluffier.", "a photo of a cat, Make it fluffier"),
        ("a photo of a cat", "make it green", "a photo of a cat, make it green"),  # not a toy caption
        (RED, "make it green please", RED + ", make it green please"),  # not only toy phrases
        (RED, "make it reddish", RED + ", make it reddish"),
        ("a photo of a cat", "  ", "a photo of a cat"),
        ("a photo of a cat", "perfect", "a photo of a cat"),
    ],
)
def test_toy_refiner_appends_other_feedback_as_a_clause(prompt, feedback, expected):
    assert ToyRefiner().refine(prompt, feedback, []) == expected


@pytest.mark.parametrize(
    "prompt,feedback,expected",
    [
        ("a photo of a cat", "Make it fluffier.", "a photo of a cat, Make it fluffier"),
        (RED, "make it green", RED + ", make it green"),  # the default knows no toy phrases
        (RED, "perfect", RED + ", perfect"),
        ("a photo of a cat", "  ", "a photo of a cat"),
    ],
)
def test_template_refiner_is_generic_and_appends_feedback_as_a_clause(prompt, feedback, expected):
    assert TemplateRefiner().refine(prompt, feedback, []) == expected
    assert TemplateRefiner().feedback_phrases() is None  # free text


def test_toy_edits():
    assert toy_edits("make it green and use a black background") == {"colour": "green", "background": "black"}
    assert toy_edits("move it to the center") == {"position": "center"}
    assert toy_edits("") == {}
    assert toy_edits("make it greener") is None


def _tiny_chat_model(path, forced_word: str):
    """A 1-layer GPT-2 whose every next token is ``forced_word`` (a constant logit row), with a chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    words = ["<unk>", "<eos>", "green", "big", "prompt", "feedback", ":"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>", pad_token="<eos>")
    fast.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(words), n_embd=8, n_layer=1, n_head=2, n_positions=256,
                                       tie_word_embeddings=False, eos_token_id=1, bos_token_id=1))
    with torch.no_grad():  # final hidden state = e_0 whatever the input; logits = lm_head[:, 0]
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.zero_()
        model.transformer.ln_f.bias[0] = 1.0
        model.lm_head.weight.zero_()
        model.lm_head.weight[words.index(forced_word), 0] = 10.0
    fast.save_pretrained(path)
    model.save_pretrained(path)
    return str(path)


def test_causal_lm_refiner_decodes_greedily_and_falls_back_on_an_empty_reply(tmp_path):
    refiner = CausalLMRefiner(_tiny_chat_model(tmp_path / "big", "big"), max_new_tokens=3)
    assert refiner.refine("a cat", "bigger", []) == "big big big"
    history = [Turn(1, "make it green", prompt=RED), Turn(2, "make it large", prompt="p2")]
    user = refiner.messages("p2", "make it large", history)[1]["content"]
    assert user == f"Earlier rounds:\nRound 1 prompt: {RED}\nRound 1 feedback: make it green\n\n" \
                   "Current prompt: p2\nFeedback: make it large\nNew prompt:"
    silent = CausalLMRefiner(_tiny_chat_model(tmp_path / "eos", "<eos>"))
    assert silent.refine(RED, "make it green", []) == RED + ", make it green"  # the generic TemplateRefiner


def test_causal_lm_refiner_cleans_replies():
    assert CausalLMRefiner.clean('\n  Prompt: "a red fox"\nsecond line') == "a red fox"
    assert CausalLMRefiner.clean("New prompt: a blue fox") == "a blue fox"
    assert CausalLMRefiner.clean(" \n ") == ""


# ---------------------------------------------------------------------------------------------------- toy user


def _image(colour, shape, size, background, center=(16.0, 16.0)):
    side = 16.0 if size == "large" else 8.0
    pixels = render(Scene(colour, shape, size, background, side, center))
    return torch.from_numpy(pixels).permute(2, 0, 1).float() / 255.0


def test_toy_user_chooses_the_closest_image_and_asks_for_one_attribute_at_a_time():
    user = ToySimulatedUser("a large green triangle on a black background")
    wrong = _image("red", "circle", "small", "white", (6.0, 6.0))
    off_centre = _image("green", "triangle", "large", "black", (8.0, 8.0))  # centredness 1 - 11.3 / 22.6 = 0.5
    right = _image("green", "triangle", "large", "black")
    assert user.choose(torch.stack([wrong, off_centre, right]), "anything") == 2
    assert user.choose(torch.stack([wrong, off_centre]), "anything") == 1
    assert user.feedback(wrong, "") == "make it green"
    assert user.feedback(_image("green", "circle", "small", "white"), "") == "make the shape a triangle"
    assert user.feedback(_image("green", "triangle", "small", "white"), "") == "make it large"
    assert user.feedback(_image("green", "triangle", "large", "white"), "") == "use a black background"
    assert user.feedback(off_centre, "") == "move it to the centre"
    assert user.feedback(right, "") == "perfect"
    assert user.feedback(torch.zeros(3, 32, 32), "") == "make it green"  # nothing found: colour first
    assert user.satisfied(right) and not user.satisfied(off_centre)
    assert user.satisfaction(right) == 1.0 and user.satisfaction(off_centre) == 0.8 and user.satisfaction(wrong) == 0.0
    with pytest.raises(ValueError, match="not a toy caption"):
        ToySimulatedUser("a cat")


def test_toy_dialogues_parse_back_and_replay(tmp_path):
    path = tmp_path / "toy.jsonl"
    dialogues = make_toy_dialogues(path, n=6, rounds=5, seed=3, save_images=True)
    assert read_dialogues(path) == dialogues and len(dialogues) == 6
    assert len({d.dialogue_id for d in dialogues}) == 6
    refiner = ToyRefiner()
    finished = 0
    for d in dialogues:
        assert d.category == "toy" and d.turns[0].prompt == d.initial_prompt and 1 <= len(d.turns) <= 5
        for before, after in zip(d.turns, d.turns[1:]):
            assert after.prompt == refiner.refine(before.prompt, before.user_feedback, [])
            assert before.user_feedback != "perfect"
        if d.turns[-1].user_feedback != "perfect":
            assert len(d.turns) == 5
            continue
        finished += 1
        assert d.turns[-1].satisfaction == 1.0 and d.initial_prompt != d.turns[-1].prompt
        user = ToySimulatedUser(d.turns[-1].prompt)  # the target, reached
        for turn in d.turns:  # the recorded choice and feedback follow from the saved images
            pngs = torch.stack([torch.from_numpy(np.array(Image.open(tmp_path / p))).permute(2, 0, 1).float() / 255
                                for p in turn.images])
            assert user.choose(pngs) == turn.chosen
            assert user.feedback(pngs[turn.chosen]) == turn.user_feedback
    assert finished >= 3
    again = tmp_path / "again.jsonl"
    make_toy_dialogues(again, n=6, rounds=5, seed=3)
    assert [[t.user_feedback for t in d.turns] for d in read_dialogues(again)] == \
           [[t.user_feedback for t in d.turns] for d in dialogues]  # deterministic in the seed


def test_toy_start_changes_one_to_max_changes_attributes():
    from lit_pref.toy.world import parse_caption
    from lit_pref.toy import toy_start

    rng = np.random.default_rng(0)
    counts = set()
    for _ in range(200):
        target, initial = toy_start(rng, max_changes=2)
        t, i = parse_caption(target), parse_caption(initial)
        counts.add(sum(getattr(t, a) != getattr(i, a) for a in ("colour", "shape", "size", "background")))
    assert counts == {1, 2}
