"""What each RPO editor contributes on the toy world, and synthesis throughput per editor on tiny models.

    python bench/rpo_editors.py table                    # every editor: synthesise, train, judge (toy world)
    python bench/rpo_editors.py table --editors toy inpaint --pairs 64 --steps 600
    python bench/rpo_editors.py throughput               # pairs/s per editor on the tiny SD and SDXL presets

``table``: for each editor, synthesise pairs from the toy base on the 60 pre-training prompts x ``--samples`` seeds,
item i being prompt i mod 60 with seed i, the same items for every editor (ToyCritic with its regions and kinds,
relabelled by the hidden human's reward, margin 0.05, as configs/toy/synthesize_rich_pairs.yaml), stopping at
``--pairs`` kept pairs. Every editor that reaches ``--pairs`` trains on exactly that many (equal pair count) with the
training settings of configs/toy/rich_preference_dpo_early_steps.yaml (Diffusion-DPO loss, beta 5000, t drawn from
the noisiest 40% of the training timesteps, LoRA rank 8, AdamW lr 1e-3, batch 8, 600 steps, seed 0) and is judged as
bench/alignment.py does (12 held-out prompts x ``--seeds``, 20 DDIM steps, win rate against the base with a
bootstrap 95% interval over prompts). Prints one markdown row per editor: items sampled, proposed edits, kept
(fraction of proposed), mean hidden gain of all proposed edits and of the kept ones, pairs trained, win rate, and the
CPU seconds of synthesis and of training + judging.

Editors (all but ``toy`` are the toy base's own diffusers pipelines, adapters off, 10 steps, guidance 4, prompt =
the caption: the toy text encoder knows nothing else):

- ``toy``: ToyEditor, the programmatic redraw;
- ``sdedit``: Img2ImgEditor, strength 0.6, the whole image;
- ``inpaint``: InpaintEditor on the critic's regions (dilation 0.05);
- ``inpaint_whole``: the same inpainting with the regions withheld (the whole image is repainted);
- ``controlnet``: ControlNetEditor with canny edges and a toy ControlNet built from the toy base UNet
  (``ControlNetModel.from_unet``: untrained, its zero convolutions add nothing) or the folder given by
  ``--controlnet``;
- ``chain``: EditorChain, local -> inpaint, everything else -> ToyEditor.

``throughput``: ``--items`` items through PairSynthesizer per editor with a fixed critic (one local instruction with a
box) and a pixel-rule scorer that keeps every pair, on DiffusionBackbone("tiny") and ("tiny-sdxl") at 32 px, 10 DDIM
steps; prints pairs/s and the time over sampling the same items alone (median of ``--repeats``).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from diffusers import ControlNetModel
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from alignment import evaluate  # noqa: E402  (bench/alignment.py)
from rpo_vs_dpo import train  # noqa: E402  (bench/rpo_vs_dpo.py)

from lit_pref.backbone import DiffusionBackbone  # noqa: E402
from lit_pref.backbone.tiny import build_tiny_components  # noqa: E402
from lit_pref.rpo import (  # noqa: E402
    Critic,
    Critique,
    ControlNetEditor,
    EditorChain,
    Img2ImgEditor,
    InpaintEditor,
    PairSynthesizer,
    resolve_prompts,
)
from lit_pref.toy import ToyCritic, ToyEditor, ToyGroundTruthReward  # noqa: E402

ROOT = Path("runs/bench_rpo_editors")
TOY_PIPELINE = "lit_pref/assets/toy/pipeline"
EDITORS = ("toy", "sdedit", "inpaint", "inpaint_whole", "controlnet", "chain")
DIFFUSERS = dict(num_inference_steps=10, guidance_scale=4.0, prompt_template="{prompt}")


class WithoutRegions(ToyCritic):
    """ToyCritic with its regions withheld: region-aware editors fall back to the whole image."""

    def critique(self, image, prompt):
        critique = super().critique(image, prompt)
        return Critique(critique.text, critique.issues, critique.instructions, kinds=critique.kinds)


def untrained_controlnet(kind: str, folder: Path) -> Path:
    """A ControlNet copied from a UNet (toy, or a tiny preset), saved in diffusers' layout."""
    if kind == "toy":
        from diffusers import AutoencoderKL, UNet2DConditionModel

        unet = UNet2DConditionModel.from_pretrained(TOY_PIPELINE, subfolder="unet")
        vae = AutoencoderKL.from_pretrained(TOY_PIPELINE, subfolder="vae")
    else:
        parts = build_tiny_components(kind)
        unet, vae = parts["unet"], parts["vae"]
    downsamples = len(vae.config.block_out_channels) - 1
    ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=tuple(
        8 * 2 ** i for i in range(downsamples + 1))).save_pretrained(folder)
    return folder


def toy_editor(name: str, controlnet: str | None) -> tuple[Critic, object]:
    inpaint = InpaintEditor(dilation=0.05, strength=1.0, **DIFFUSERS)
    if name == "toy":
        return ToyCritic(), ToyEditor()
    if name == "sdedit":
        return ToyCritic(), Img2ImgEditor(strength=0.6, **DIFFUSERS)
    if name == "inpaint":
        return ToyCritic(), inpaint
    if name == "inpaint_whole":
        return WithoutRegions(), inpaint
    if name == "controlnet":
        folder = controlnet or str(untrained_controlnet("toy", ROOT / "untrained_toy_controlnet"))
        return ToyCritic(), ControlNetEditor(folder, **DIFFUSERS)
    return ToyCritic(), EditorChain({"local": inpaint}, default=ToyEditor())


def table(args: Namespace) -> None:
    prompts = resolve_prompts("toy:train")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    hidden = ToyGroundTruthReward()
    print("| editor | items | proposed | kept (fraction) | mean hidden gain, proposed | mean hidden gain, kept "
          "| pairs trained | win rate vs base (95% CI) | CPU s: synthesis, training + judging |")
    print("|---|---|---|---|---|---|---|---|---|", flush=True)
    for name in args.editors:
        critic, editor = toy_editor(name, args.controlnet)
        synthesizer = PairSynthesizer(critic, editor, hidden, margin=0.05, num_inference_steps=10,
                                      guidance_scale=4.0, batch_size=32)
        folder = ROOT / f"pairs_{name}_{args.samples}_{args.pairs}"
        cpu = time.process_time()
        stats = synthesizer.run(DiffusionBackbone(model="toy"), prompts, folder, samples_per_prompt=args.samples,
                                max_pairs=args.pairs, progress=False)
        synthesis_cpu, cpu = time.process_time() - cpu, time.process_time()
        if stats.kept < args.pairs or args.steps == 0:
            win, trained = "-" if args.steps == 0 else f"- (fewer than {args.pairs} pairs)", 0
        else:
            backbone, _ = train("configs/toy/rich_preference_dpo.yaml", args.steps,
                                [f"--data.init_args.train_path={folder}", "--model.init_args.timestep_range=[0.6,1.0]"])
            wr = evaluate(backbone.eval().to(device), args.seeds, 20)["win_rate"]
            win, trained = f"{wr.rate:.1%} ({wr.low:.1%}-{wr.high:.1%})", stats.kept
        fraction = stats.kept / max(stats.proposed, 1)
        print(f"| {name} | {stats.sampled} | {stats.proposed} | {stats.kept} ({fraction:.1%}) "
              f"| {stats.mean_gain_proposed:+.3f} | {stats.mean_gain:+.3f} | {trained} | {win} "
              f"| {synthesis_cpu:.0f}, {time.process_time() - cpu:.0f} |", flush=True)


class BoxCritic(Critic):
    """One local instruction on the image's centre quarter: every item is edited, the same way."""

    def critique(self, image, prompt):
        return Critique("fixed", instructions=["fix the centre"], regions=[[(0.25, 0.25, 0.75, 0.75)]],
                        kinds=["local"])


def throughput(args: Namespace) -> None:
    prompts = [f"a photo of object {i}" for i in range(args.items)]
    print("| model | editor | pairs/s | synthesis / sampling time |\n|---|---|---|---|")
    for preset, kind in (("tiny", "sd"), ("tiny-sdxl", "sdxl")):
        backbone = DiffusionBackbone(model=preset).eval()
        with tempfile.TemporaryDirectory() as tmp:
            controlnet = str(untrained_controlnet(kind, Path(tmp) / "controlnet"))
            editors = {"img2img (strength 0.6)": Img2ImgEditor(strength=0.6, num_inference_steps=10),
                       "inpaint (a region)": InpaintEditor(num_inference_steps=10),
                       "controlnet (canny)": ControlNetEditor(controlnet, num_inference_steps=10)}
            sample_s = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                with torch.no_grad():
                    for begin in range(0, args.items, 8):
                        items = range(begin, min(begin + 8, args.items))
                        backbone.sample([prompts[i] for i in items], num_inference_steps=10,
                                        generator=[torch.Generator().manual_seed(i) for i in items])
                sample_s.append(time.perf_counter() - start)
            sampled = statistics.median(sample_s)
            print(f"| {preset} | (sampling alone) | {args.items / sampled:.2f} | 1.00 |", flush=True)
            for name, editor in editors.items():
                synth_s, kept = [], 0
                for repeat in range(args.repeats):
                    synthesizer = PairSynthesizer(BoxCritic(), editor, ToyGroundTruthReward(), margin=-1e9,
                                                  num_inference_steps=10, batch_size=8)
                    stats = synthesizer.run(backbone, prompts, Path(tmp) / f"{name}_{repeat}", progress=False)
                    synth_s.append(stats.seconds)
                    kept = stats.kept
                median = statistics.median(synth_s)
                print(f"| {preset} | {name} | {kept / median:.2f} | {median / sampled:.2f} |", flush=True)
    print(f"\n{torch.get_num_threads()} threads, {args.items} items, 10 DDIM steps, 32 px, median of {args.repeats}")


def main() -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML file with any of the options below")
    t = ArgumentParser(description="the toy-world editor table")
    t.add_argument("--editors", nargs="+", choices=EDITORS, default=list(EDITORS))
    t.add_argument("--samples", type=int, default=4, help="items per pre-training prompt (60 prompts): the budget")
    t.add_argument("--pairs", type=int, default=64, help="pairs each editor trains on (synthesis stops there)")
    t.add_argument("--steps", type=int, default=600, help="optimizer steps (batch 8); 0: synthesis only")
    t.add_argument("--seeds", type=int, default=16, help="evaluation samples per held-out prompt (12 prompts)")
    t.add_argument("--controlnet", default=None, help="a toy ControlNet folder (default: one built from the UNet)")
    p = ArgumentParser(description="synthesis pairs/s per editor on tiny models")
    p.add_argument("--items", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    sub = parser.add_subcommands(dest="command", required=True)
    sub.add_subcommand("table", t, help="the toy-world editor table")
    sub.add_subcommand("throughput", p, help="synthesis items/s per editor on tiny models")
    args = parser.parse_args()
    torch.set_num_threads(int(__import__("os").environ.get("OMP_NUM_THREADS", "1")))
    table(args.table) if args.command == "table" else throughput(args.throughput)


if __name__ == "__main__":
    main()
