"""RichPreferenceDPO next to TrajectoryDPO on the toy world: as many pairs, as many steps, win rate against the base.

    python bench/rpo_vs_dpo.py                          # 128 pairs and 100 steps each
    python bench/rpo_vs_dpo.py --pairs 256 --steps 200
    python bench/rpo_vs_dpo.py --scorer clip            # relabel the rich pairs with the toy CLIP, not the hidden human
    python bench/rpo_vs_dpo.py --editor sdedit          # SDEdit with the toy base instead of the programmatic editor
    python bench/rpo_vs_dpo.py --method dpo             # one of the two only

1. Synthesise ``--pairs`` rich pairs from the toy base on the pre-training prompts (ToyCritic, an editor, a relabelling
   scorer; configs/toy/synthesize_rich_pairs.yaml) and time it.
2. Train configs/toy/rich_preference_dpo.yaml on them, and configs/toy/trajectory_dpo.yaml on ``--pairs`` pairs of
   two base samples labelled by the hidden human (ToyPreferenceDataModule), same steps, batch, lr and seed.
3. Judge both as bench/alignment.py does: the hidden reward on the held-out prompts (never in any pair), policy vs
   base with the same initial noise, win rate with a bootstrap 95% interval over prompts.

Runs and data go under runs/bench_rpo_vs_dpo/; synthesised pairs are reused when their parameters match.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

from jsonargparse import ActionConfigFile, ArgumentParser
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from alignment import evaluate  # noqa: E402  (bench/alignment.py)

from lit_pref.backbone import DiffusionBackbone  # noqa: E402
from lit_pref.cli import LitPrefCLI  # noqa: E402
from lit_pref.rewards import CLIPScore  # noqa: E402
from lit_pref.toy import ToyCritic, ToyEditor, ToyGroundTruthReward  # noqa: E402
from lit_pref.rpo import Img2ImgEditor, PairSynthesizer, resolve_prompts  # noqa: E402

ROOT = Path("runs/bench_rpo_vs_dpo")
TOY_CLIP = "local-dir:lit_pref/assets/toy/clip"


def synthesize(pairs: int, scorer_name: str, editor_name: str, margin: float) -> tuple[Path, dict]:
    """Synthesise (or reuse) the rich pairs; returns their folder and the run's numbers."""
    scorer = ToyGroundTruthReward() if scorer_name == "hidden" else CLIPScore(TOY_CLIP, pretrained=None)
    editor = ToyEditor() if editor_name == "toy" else Img2ImgEditor(
        model=None, strength=0.6, num_inference_steps=10, guidance_scale=4.0, prompt_template="{prompt}")
    synthesizer = PairSynthesizer(ToyCritic(centre_tolerance=0.1), editor, scorer, margin=margin,
                                  num_inference_steps=10, guidance_scale=4.0, batch_size=32)
    prompts = resolve_prompts("toy:train")
    folder = ROOT / f"rich_pairs_{editor_name}_{scorer_name}_m{margin:g}_{pairs}"
    start = time.perf_counter()
    stats = synthesizer.run(DiffusionBackbone(model="toy"), prompts, folder, max_pairs=pairs, progress=False,
                            samples_per_prompt=math.ceil(8 * pairs / len(prompts)))
    seconds = time.perf_counter() - start
    if stats.kept < pairs:
        raise RuntimeError(f"only {stats.kept} of {pairs} pairs kept in {folder}; raise samples_per_prompt")
    return folder, {"stats": stats, "seconds": seconds}


def train(config: str, steps: int, extra: list[str]) -> tuple[DiffusionBackbone, float]:
    start = time.perf_counter()
    cli = LitPrefCLI(args=["fit", "--config", config, f"--trainer.max_steps={steps}", "--trainer.logger=false",
                           "--trainer.callbacks=[]", "--trainer.enable_checkpointing=false",
                           "--trainer.enable_progress_bar=false", "--trainer.limit_val_batches=0",
                           f"--trainer.default_root_dir={ROOT}", *extra])
    return cli.model.backbone, time.perf_counter() - start


def main() -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML file with any of the options below")
    parser.add_argument("--pairs", type=int, default=128, help="training pairs of each method")
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps of each method (batch 8)")
    parser.add_argument("--scorer", choices=("hidden", "clip"), default="hidden", help="relabelling scorer")
    parser.add_argument("--editor", choices=("toy", "sdedit"), default="toy", help="editor of the rich pairs")
    parser.add_argument("--margin", type=float, default=0.05, help="smallest relabelling gain kept")
    parser.add_argument("--seeds", type=int, default=16, help="evaluation samples per held-out prompt")
    parser.add_argument("--method", choices=("both", "rpo", "dpo"), default="both", help="which method(s) to run")
    args = parser.parse_args()

    print(f"## RichPreferenceDPO vs TrajectoryDPO on the toy world ({args.pairs} pairs, {args.steps} steps of batch 8, "
          f"{args.seeds} samples x 12 held-out prompts, 20 DDIM steps)\n", flush=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    if args.method in ("both", "rpo"):
        folder, synthesis = synthesize(args.pairs, args.scorer, args.editor, args.margin)
        stats = synthesis["stats"]
        print(f"Rich pairs ({args.editor} editor, {args.scorer} relabelling, margin {args.margin:g}): {stats.sampled} "
              f"sampled, {stats.proposed} proposed, {stats.kept} kept, mean gain {stats.mean_gain:.3f} (of all proposed: "
              f"{stats.mean_gain_proposed:.3f}); this call {synthesis['seconds']:.1f} s incl. model load (0 if reused)\n",
              flush=True)
        backbone, seconds = train("configs/toy/rich_preference_dpo.yaml", args.steps,
                                  [f"--data.init_args.train_path={folder}"])
        rows.append(("RichPreferenceDPO", evaluate(backbone.eval().to(device), args.seeds, 20), seconds))
        print(row(*rows[-1], args.pairs), flush=True)
    if args.method in ("both", "dpo"):
        backbone, seconds = train("configs/toy/trajectory_dpo.yaml", args.steps,
                                  [f"--data.init_args.num_pairs={args.pairs}", "--data.init_args.num_val_pairs=0",
                                   f"--data.init_args.data_dir={ROOT / f'toy_pairs_{args.pairs}'}"])
        rows.append(("TrajectoryDPO", evaluate(backbone.eval().to(device), args.seeds, 20), seconds))
        print(row(*rows[-1], args.pairs), flush=True)

    print("\n| method | pairs | hidden reward base | policy | change | win rate vs base (95% CI) | train s |")
    print("|---|---|---|---|---|---|---|")
    for name, result, seconds in rows:
        print(row(name, result, seconds, args.pairs))
    for name, result, _ in rows:
        terms = ", ".join(f"{k} {p - b:+.3f}" for k, (b, p) in result["terms"].items())
        print(f"\n{name} per-term change: {terms}")


def row(name: str, result: dict, seconds: float, pairs: int) -> str:
    base, policy = result["reward"]
    wr = result["win_rate"]
    return (f"| {name} | {pairs} | {base:.3f} | {policy:.3f} | {policy - base:+.3f} | "
            f"{wr.rate:.1%} ({wr.low:.1%}-{wr.high:.1%}) | {seconds:.0f} |")

if __name__ == "__main__":
    main()
