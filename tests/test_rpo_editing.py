"""Critique-localised editing: grounding answers parsed into regions, region masks, inpainting where the critique
points, ControlNet under a torch Canny condition (SD and SDXL, tiny ControlNets saved in diffusers' layout), the
editor chain, two-sided relabelling and the edit_mask column."""

from __future__ import annotations

import io
import json
from dataclasses import asdict

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from lit_pref.toy.world import Scene, render
from lit_pref.backbone import DiffusionBackbone
from lit_pref.toy import ToyCritic, ToyEditor, ToyGroundTruthReward
from lit_pref.rpo import (
    CannyEdges,
    ControlNetEditor,
    Critique,
    Edit,
    Editor,
    EditorChain,
    InpaintEditor,
    PairSynthesizer,
    parse_grounding,
    read_stats,
)
from lit_pref.rpo.controlnet import canny
from lit_pref.rpo.editor import region_mask


def image_of(scene: Scene) -> torch.Tensor:
    return torch.from_numpy(render(scene)).permute(2, 0, 1).float() / 255


# ---------------------------------------------------------------------- grounding answers
def test_parse_grounding_reads_qwen25_json_in_prose_fences_and_truncated():
    answer = """Here are the regions:
```json
[
  {"instruction": 2, "kind": "local", "bbox_2d": [100, 50, 300, 250], "label": "the hat"},
  {"instruction": 1, "kind": "global", "bbox_2d": null},
  {'instruction': 2, 'bbox_2d': [[0, 0], [40, 50]]},
  {"instruction": 7, "kind": "local", "bbox_2d": [0, 0, 10, 10]},
  {"instruction": 3, "kind": "composition", "bbox_2d": [10, 20, 3"""
    regions, kinds = parse_grounding(answer, count=3, width=400, height=500)
    # pixels of a 400 x 500 image: x / 400, y / 500; (x1, y1, x2, y2) -> (top, left, bottom, right)
    assert regions == [[], [(0.1, 0.25, 0.5, 0.75), (0.0, 0.0, 0.1, 0.1)], []]
    assert kinds == ["global", "local", "composition"]  # the truncated entry keeps its kind, loses its box


def test_parse_grounding_other_shapes():
    # Qwen2-VL's special tokens, in thousandths, the label numbering the instruction
    qwen2 = "<|object_ref_start|>2<|object_ref_end|><|box_start|>(100,200),(500,700)<|box_end|><|im_end|>"
    assert parse_grounding(qwen2, 2, 999, 999) == ([[], [(0.2, 0.1, 0.7, 0.5)]], ["global", "global"])
    # no numbering, one entry per instruction: taken in order; a box outside the image is clipped; "kind" aliases
    answer = '[{"bbox": [-10, 0, 10, 20], "type": "LOCAL"}, {"box": [30, 30, 10, 10]}]'
    assert parse_grounding(answer, 2, 20, 40) == ([[(0.0, 0.0, 0.5, 0.5)], [(0.25, 0.5, 0.75, 1.0)]],
                                                  ["local", "global"])
    assert parse_grounding(answer, 3, 20, 40) == ([[], [], []], ["global"] * 3)  # count differs: nothing to pair
    assert parse_grounding('[{"instruction": 1, "bbox_2d": [5, 5, 5, 9]}]', 1, 10, 10)[0] == [[]]  # no area
    assert parse_grounding("I cannot see any problem.", 1, 10, 10) == ([[]], ["global"])
    assert parse_grounding('{"instruction": 1, "bbox_2d": [0.5, 0, 1, 0.25]}', 1, 1, 1,
                           units="fractions")[0] == [[(0.0, 0.5, 0.25, 1.0)]]


def test_critique_checks_regions_and_kinds():
    with pytest.raises(ValueError, match="regions has 1 entries for 2 instructions"):
        Critique("t", instructions=["a", "b"], regions=[[]])
    with pytest.raises(ValueError, match="unknown kind"):
        Critique("t", instructions=["a"], kinds=["everywhere"])
    with pytest.raises(ValueError, match="box"):
        Critique("t", instructions=["a"], regions=[[(0.5, 0.0, 0.4, 1.0)]])
    critique = Critique("t", instructions=["a", "b"], regions=[[(0, 0, 0.5, 0.5)], []], kinds=["local", "global"])
    part = critique.subset([1])
    assert (part.instructions, part.regions, part.kinds) == (["b"], [[]], ["global"])
    assert Critique("t", instructions=["a"]).kind(0) == "global" and Critique("t", instructions=["a"]).region(0) == []


def test_region_mask_is_the_dilated_union_in_whole_pixels():
    # box rows [0.25, 0.5) of 32 = 8..16, grown by 1/32 of 32 = 1 px each side -> rows 7..16 inclusive (7:17)
    mask = region_mask([(0.25, 0.25, 0.5, 0.5), (0.0, 0.9, 0.1, 1.0)], 32, 32, dilation=1 / 32)
    expected = torch.zeros(1, 32, 32)
    expected[:, 7:17, 7:17] = 1
    expected[:, 0:5, 27:32] = 1  # rows floor(-1) -> 0 .. ceil(3.2 + 1) = 5; cols floor(28.8 - 1) = 27 .. 32
    assert torch.equal(mask, expected)


def test_toy_critic_gives_each_instruction_its_region_and_kind():
    wrong = image_of(Scene("blue", "circle", "small", "white", side=8, center=(6.0, 25.0)))
    critique = ToyCritic().critique(wrong, "a small red circle on a black background")
    assert critique.instructions == ["make the shape red", "make the background black", "move the shape to the centre"]
    assert critique.kinds == ["local", "global", "composition"]
    (box,) = critique.regions[0]
    inside = region_mask([box], 32, 32).bool()[0]
    shape = (wrong != 1).any(0)  # the circle's pixels on white
    assert shape.sum() > 0 and not (shape & ~inside).any()  # the box covers the whole shape...
    assert inside.sum() <= 2 * 8 * 8  # ...and little else (10 x 10 px here: the side estimate, rounded outwards)
    assert critique.regions[1] == []
    assert len(critique.regions[2]) == 2  # where it is, and the centre where it goes
    centre = region_mask(critique.regions[2][1:], 32, 32)[0]
    assert centre[16, 16] == 1 and centre[6, 25] == 0


# ---------------------------------------------------------------------- inpainting where the critique points
@pytest.fixture(scope="module")
def tiny() -> DiffusionBackbone:
    return DiffusionBackbone(model="tiny")


def test_inpaint_editor_repaints_the_dilated_regions_or_the_whole_image(tiny):
    editor = InpaintEditor(dilation=0.0625, num_inference_steps=2, guidance_scale=2.0)
    editor.attach(tiny)
    image = torch.rand(3, 32, 32)
    local = Critique("t", instructions=["add a hat", "make it red"],
                     regions=[[(0.25, 0.25, 0.5, 0.5)], [(0.75, 0.75, 1.0, 1.0)]], kinds=["local", "local"])
    edit = editor.apply(image, local, "a cube", seed=1)
    expected = torch.zeros(1, 32, 32)
    expected[:, 6:18, 6:18] = 1  # 8..16 grown by 2 px
    expected[:, 22:32, 22:32] = 1
    assert torch.equal(edit.mask, expected)
    outside = ~expected.bool().expand(3, -1, -1)
    assert torch.equal(edit.image[outside], image[outside])
    assert not torch.allclose(edit.image[~outside], image[~outside])

    unlocalised = Critique("t", instructions=["add a hat", "brighten it"], regions=[[(0.25, 0.25, 0.5, 0.5)], []])
    assert editor.apply(image, unlocalised, "a cube", seed=1).mask.eq(1).all()  # one instruction has no region
    assert editor.apply(image, Critique("t", instructions=["x"]), "a cube", seed=1).mask.eq(1).all()
    boxed = InpaintEditor(box=(0.0, 0.0, 0.5, 1.0), num_inference_steps=2)  # the fallback box, no dilation
    assert boxed.mask(32, 32).sum() == 16 * 32


# ---------------------------------------------------------------------- Canny
def test_canny_marks_a_step_edge_once_as_opencv_does():
    """A vertical step 0 | 255 between columns 15 and 16: Sobel gx = 4 * 255 = 1020 at both columns 15 and 16 (0
    elsewhere, borders replicated); non-maximum suppression keeps column 15 (larger than its left neighbour, at
    least its right one) and drops column 16 (not larger than column 15)."""
    step = torch.zeros(3, 32, 32)
    step[:, :, 16:] = 255
    edges = canny(step, 100, 200)
    expected = torch.zeros(32, 32, dtype=torch.bool)
    expected[:, 15] = True
    assert torch.equal(edges, expected)
    assert not canny(step, 1100, 1200).any()  # 1020 is below both thresholds
    # a colour image: the channel with the largest gradient decides (only green steps here)
    green = torch.zeros(3, 32, 32)
    green[1, :, 16:] = 255
    assert torch.equal(canny(green, 100, 200), expected)
    condition = CannyEdges()(step / 255)
    assert condition.shape == (3, 32, 32) and torch.equal(condition[0].bool(), expected)


def test_canny_hysteresis_keeps_weak_edges_connected_to_strong_ones():
    """Two horizontal steps of height 40 (gy = 160) and 80 (gy = 320), with thresholds 100 and 200: the weak
    step survives only where it connects to the strong one."""
    image = torch.zeros(1, 32, 32)
    image[:, 8:, :] = 40        # weak step between rows 7 and 8 (row 7 kept by suppression), all columns
    image[:, 20:, 16:] = 120    # strong step between rows 19 and 20, right half
    edges = canny(image, 100, 200)
    assert edges[19, 17:31].all() and not edges[7].any()  # the weak edge touches no strong one: dropped
    image[:, 8:20, 16] = 120    # a vertical bridge joins them
    joined = canny(image, 100, 200)
    assert joined[7, 0:10].all()  # now the weak edge hangs on the strong one through the bridge


def test_depth_map_runs_a_tiny_dpt_from_a_folder(tmp_path):
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    from lit_pref.rpo import DepthMap

    torch.manual_seed(0)
    config = DPTConfig(hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32,
                       image_size=32, patch_size=8, backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[8, 8, 8, 8],
                       fusion_hidden_size=8, reassemble_factors=[4, 2, 1, 0.5], head_hidden_size=8)
    DPTForDepthEstimation(config).save_pretrained(tmp_path / "dpt")
    DPTImageProcessor(size={"height": 32, "width": 32}, keep_aspect_ratio=False).save_pretrained(tmp_path / "dpt")
    depth = DepthMap(str(tmp_path / "dpt"), device="cpu")(torch.rand(3, 24, 40))
    assert depth.shape == (3, 24, 40) and torch.equal(depth[0], depth[2])  # the image's size, three equal channels
    assert depth.min() == 0 and depth.max() == 1  # scaled per image


# ---------------------------------------------------------------------- ControlNet
def save_tiny_controlnet(kind: str, folder, seed: int = 0) -> None:
    """A ControlNet copied from the tiny preset's UNet (diffusers' ControlNetModel.from_unet; its condition encoder
    downsamples as much as the VAE) with its zero-initialised output convolutions randomised, so the condition
    changes the result, saved in diffusers' layout."""
    from diffusers import ControlNetModel

    from lit_pref.backbone.tiny import build_tiny_components

    parts = build_tiny_components(kind)
    downsamples = len(parts["vae"].config.block_out_channels) - 1
    channels = tuple(8 * 2 ** i for i in range(downsamples + 1))
    controlnet = ControlNetModel.from_unet(parts["unet"], conditioning_embedding_out_channels=channels)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in controlnet.named_parameters():
            if "zero_conv" in name or "controlnet_mid_block" in name or "conv_out" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    controlnet.save_pretrained(folder)


@pytest.mark.parametrize("preset", ["tiny", "tiny-sdxl"])
def test_controlnet_editor_regenerates_under_the_originals_edges(tmp_path, preset):
    from diffusers import StableDiffusionControlNetPipeline, StableDiffusionXLControlNetPipeline

    backbone = DiffusionBackbone(model=preset)
    save_tiny_controlnet("sdxl" if backbone.is_sdxl else "sd", tmp_path / "controlnet")
    assert (tmp_path / "controlnet" / "config.json").is_file()
    editor = ControlNetEditor(str(tmp_path / "controlnet"), num_inference_steps=2, guidance_scale=2.0)
    editor.attach(backbone)
    pipeline = editor.pipeline
    expected = StableDiffusionXLControlNetPipeline if backbone.is_sdxl else StableDiffusionControlNetPipeline
    assert isinstance(pipeline, expected) and pipeline.unet is backbone.unet
    image = torch.zeros(3, 32, 32)
    image[:, 8:24, 8:24] = 1.0
    critique = Critique("t", instructions=["make it red"])
    edit = editor.apply(image, critique, "a cube", seed=3)
    assert isinstance(edit, Edit) and edit.mask is None and edit.image.shape == (3, 32, 32)
    assert torch.equal(edit.image, editor.apply(image, critique, "a cube", seed=3).image)
    other = torch.zeros(3, 32, 32)
    other[:, 4:12, 20:30] = 1.0  # other edges, same prompt and seed: another edit
    assert not torch.allclose(editor.apply(other, critique, "a cube", seed=3).image, edit.image)
    unconditioned = ControlNetEditor(str(tmp_path / "controlnet"), conditioning_scale=0.0, num_inference_steps=2,
                                     guidance_scale=2.0)
    unconditioned.attach(backbone)
    assert torch.allclose(unconditioned.edit(other, ["make it red"], "a cube", seed=3),
                          unconditioned.edit(image, ["make it red"], "a cube", seed=3), atol=1e-5)
    with pytest.raises(ValueError, match="one condition extractor per ControlNet"):
        ControlNetEditor([str(tmp_path / "controlnet")] * 2, condition=CannyEdges())


# ---------------------------------------------------------------------- the chain
class Recorder(Editor):
    """Records what it was asked; paints a constant; reports a mask (or none)."""

    def __init__(self, value: float, masked: bool = True) -> None:
        self._value, self._masked, self.calls = value, masked, []

    def apply(self, image, critique, prompt, seed=None):
        self.calls.append(list(critique.instructions))
        mask = torch.zeros(1, *image.shape[-2:])
        mask[:, :4] = 1
        return Edit(torch.full_like(image, self._value), mask if self._masked else None)

    def edit(self, image, instructions, prompt, seed=None):
        return self.apply(image, Critique("", instructions=instructions), prompt, seed).image


def test_editor_chain_routes_instructions_by_kind_and_composes_the_masks():
    local, composition, default = Recorder(0.25), Recorder(0.5), Recorder(0.75, masked=False)
    chain = EditorChain({"local": local, "composition": composition}, default=default)
    critique = Critique("t", instructions=["a", "b", "c", "d"], kinds=["global", "local", "composition", "local"])
    edit = chain.apply(torch.zeros(3, 8, 8), critique, "p")
    assert (local.calls, composition.calls, default.calls) == ([["b", "d"]], [["c"]], [["a"]])
    assert edit.image.eq(0.75).all() and edit.mask is None  # the default ran last and may change any pixel
    only_local = chain.apply(torch.zeros(3, 8, 8), Critique("t", instructions=["x"], kinds=["local"]), "p")
    assert only_local.mask.sum() == 4 * 8 and only_local.image.eq(0.25).all()
    untagged = EditorChain({"local": Recorder(0.1)})  # no default: global instructions are not carried out
    skipped = untagged.apply(torch.zeros(3, 8, 8), Critique("t", instructions=["x"]), "p")
    assert skipped.image.eq(0).all() and skipped.mask.eq(0).all()
    with pytest.raises(ValueError, match="unknown kind"):
        EditorChain({"background": ToyEditor()})


# ---------------------------------------------------------------------- two-sided relabelling and edit_mask
class NegatedReward(ToyGroundTruthReward):
    """The hidden reward turned upside down: every good toy edit looks worse."""

    def score(self, images, prompts):
        return -super().score(images, prompts)


PROMPTS = ["a large red circle on a white background", "a small blue square on a black background"]


def test_two_sided_relabelling_keeps_losing_edits_with_the_original_as_winner(tmp_path):
    toy = DiffusionBackbone(model="toy")
    run = dict(backbone=toy, prompts=PROMPTS, samples_per_prompt=4, progress=False)
    one = PairSynthesizer(ToyCritic(), ToyEditor(), NegatedReward(), margin=0.05, num_inference_steps=2,
                          guidance_scale=4.0, batch_size=8).run(output_dir=tmp_path / "one", **run)
    two = PairSynthesizer(ToyCritic(), ToyEditor(), NegatedReward(), margin=0.05, relabel="two_sided",
                          num_inference_steps=2, guidance_scale=4.0, batch_size=8)
    two = two.run(output_dir=tmp_path / "two", **run)
    assert one.kept == one.kept_edit_wins == 0 and two.proposed == one.proposed > 0
    rows = pq.read_table(tmp_path / "two").to_pylist()
    assert two.kept == two.kept_original_wins == len(rows) > 0 and two.kept_edit_wins == 0
    assert read_stats(tmp_path / "two").kept_original_wins == len(rows)
    for row in rows:
        assert row["label_0"] == 0.0 and row["reward_1"] - row["reward_0"] > 0.05  # the original won
        assert row["edit_mask"] is None  # ToyEditor may redraw anything
    assert two.mean_gain == pytest.approx(np.mean([r["reward_1"] - r["reward_0"] for r in rows]))


def test_pairs_record_the_inpainted_mask_as_png(tmp_path, tiny):
    class BoxCritic(ToyCritic):
        def critique(self, image, prompt):
            return Critique("t", instructions=["fix it"], regions=[[(0.5, 0.0, 1.0, 0.5)]], kinds=["local"])

    synthesizer = PairSynthesizer(BoxCritic(), InpaintEditor(dilation=0.0, num_inference_steps=2),
                                  ToyGroundTruthReward(), margin=-100.0, num_inference_steps=2, batch_size=2)
    synthesizer.run(tiny, ["a cube"], tmp_path / "pairs", samples_per_prompt=2, progress=False)
    rows = pq.read_table(tmp_path / "pairs").to_pylist()
    assert len(rows) == 2
    for row in rows:
        mask = np.asarray(Image.open(io.BytesIO(row["edit_mask"])))
        assert mask.shape == (32, 32) and set(np.unique(mask)) == {0, 255}
        assert (mask[16:, :16] == 255).all() and mask.sum() == 255 * 16 * 16
        edit, original = (np.asarray(Image.open(io.BytesIO(row[k])).convert("RGB")) for k in ("jpg_0", "jpg_1"))
        assert np.array_equal(edit[mask == 0], original[mask == 0])  # outside the mask: the original's pixels


# ---------------------------------------------------------------------- the SDXL recipe on tiny SDXL components
def save_tiny_sdxl_pipelines(folder) -> dict[str, str]:
    """Tiny SDXL inpainting and InstructPix2Pix pipelines (the tiny-sdxl preset's components; the InstructPix2Pix
    UNet takes 8 input channels) and a tiny SDXL ControlNet, in diffusers' layout."""
    from diffusers import (StableDiffusionXLInpaintPipeline, StableDiffusionXLInstructPix2PixPipeline,
                           UNet2DConditionModel)

    from lit_pref.backbone.tiny import build_tiny_components

    parts = build_tiny_components("sdxl")
    parts = {k: parts[k] for k in ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "unet",
                                   "scheduler")}
    StableDiffusionXLInpaintPipeline(**parts).save_pretrained(folder / "inpaint")
    torch.manual_seed(0)
    unet8 = UNet2DConditionModel.from_config({**parts["unet"].config, "in_channels": 8})
    StableDiffusionXLInstructPix2PixPipeline(**{**parts, "unet": unet8}).save_pretrained(folder / "ip2p")
    save_tiny_controlnet("sdxl", folder / "controlnet")
    return {name: str(folder / name) for name in ("inpaint", "ip2p", "controlnet")}


def test_sdxl_recipe_runs_end_to_end_on_tiny_sdxl_components(tmp_path, capsys):
    """configs/rich_preference_dpo/synthesize_sdxl.yaml with every hub id swapped for a tiny local stand-in (and the
    VLM critic for the toy critic, which always finds something to fix on random images): SDXL sampling, the chain's
    three SDXL editors, ImageReward relabelling, the pairs written."""
    import yaml

    from lit_pref.__main__ import main
    from lit_pref.rewards.tiny import save_tiny_image_reward

    from conftest import REPO

    recipe = yaml.safe_load((REPO / "configs/rich_preference_dpo/synthesize_sdxl.yaml").read_text())
    synth = recipe["synthesizer"]["init_args"]
    chain = synth["editor"]["init_args"]
    assert recipe["policy"]["init_args"]["model"] == "stabilityai/stable-diffusion-xl-base-1.0"
    assert synth["critic"]["init_args"]["grounding"] is True
    assert chain["editors"]["local"]["init_args"]["model"] == "diffusers/stable-diffusion-xl-1.0-inpainting-0.1"
    assert chain["editors"]["global"]["init_args"]["controlnet"] == "diffusers/controlnet-canny-sdxl-1.0"
    assert chain["default"]["init_args"]["model"] == "diffusers/sdxl-instructpix2pix-768"
    assert synth["scorer"]["class_path"] == "lit_pref.rewards.ImageReward"

    tiny = save_tiny_sdxl_pipelines(tmp_path)
    reward = save_tiny_image_reward(tmp_path / "image_reward")
    recipe["policy"]["init_args"].update(model="tiny-sdxl", dtype="float32")
    synth["critic"] = {"class_path": "lit_pref.toy.ToyCritic"}
    for editor, model in ((chain["editors"]["local"], tiny["inpaint"]), (chain["default"], tiny["ip2p"])):
        editor["init_args"].update(model=model, dtype="float32", num_inference_steps=2, device="cpu")
    chain["editors"]["global"]["init_args"].update(controlnet=tiny["controlnet"], num_inference_steps=2)
    synth["scorer"]["init_args"] = {"checkpoint": reward["checkpoint"], "tokenizer": reward["tokenizer"],
                                    "device": "cpu", "config": json.loads(json.dumps(asdict(reward["config"])))}
    synth.update(margin=-100.0, num_inference_steps=2, height=32, width=32, batch_size=2)
    recipe.update(prompts=["a large red circle on a white background", "a small blue square on a black background"],
                  output_dir=str(tmp_path / "pairs"), progress=False)
    config = tmp_path / "synthesize_sdxl_tiny.yaml"
    config.write_text(yaml.safe_dump(recipe))
    main(["synthesize-pairs", "--config", str(config)])
    rows = pq.read_table(tmp_path / "pairs").to_pylist()
    assert len(rows) == 2 and "2 kept" in capsys.readouterr().out
    for row in rows:
        assert np.asarray(Image.open(io.BytesIO(row["jpg_0"]))).shape == (32, 32, 3)
        assert row["instructions"] and row["label_0"] == 1.0
