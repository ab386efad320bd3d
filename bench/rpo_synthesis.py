"""Rich-pair synthesis throughput on the toy world, against plain sampling of the same items in the same run.

    python bench/rpo_synthesis.py                  # 64 items (toy base, 10 DDIM steps), 3 repeats
    python bench/rpo_synthesis.py --items 256 --repeats 5

Each repeat synthesises the items into a fresh temporary folder (ToyCritic, ToyEditor, the hidden reward relabelling,
margin 0.05, as configs/toy/synthesize_rich_pairs.yaml) and, as the baseline, samples the same items with the same
seeds and batch size. Prints medians: kept pairs/s, items/s, and the time of synthesis over the time of sampling alone
(what critique, edit, relabelling and the parquet writes add).
"""

from __future__ import annotations

import statistics
import tempfile
import time

from jsonargparse import ActionConfigFile, ArgumentParser
import torch

from lit_pref.backbone import DiffusionBackbone
from lit_pref.toy import ToyCritic, ToyEditor, ToyGroundTruthReward
from lit_pref.rpo import PairSynthesizer, resolve_prompts


def main() -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML file with any of the options below")
    parser.add_argument("--items", type=int, default=64, help="items (prompt, seed) per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10, help="DDIM steps of the samples")
    args = parser.parse_args()

    backbone = DiffusionBackbone(model="toy").eval()
    captions = resolve_prompts("toy:train")
    prompts = [captions[i % len(captions)] for i in range(args.items)]  # item i: prompts[i], seed i
    synthesizer = PairSynthesizer(ToyCritic(), ToyEditor(), ToyGroundTruthReward(), margin=0.05,
                                  num_inference_steps=args.steps, guidance_scale=4.0, batch_size=args.batch_size)
    sample_s, synth_s, kept = [], [], []
    for repeat in range(args.repeats):
        start = time.perf_counter()
        with torch.no_grad():
            for begin in range(0, args.items, args.batch_size):
                items = range(begin, min(begin + args.batch_size, args.items))
                backbone.sample([prompts[i] for i in items], num_inference_steps=args.steps, guidance_scale=4.0,
                                generator=[torch.Generator().manual_seed(i) for i in items])
        sample_s.append(time.perf_counter() - start)
        with tempfile.TemporaryDirectory() as folder:
            stats = synthesizer.run(backbone, prompts, folder, progress=False)
        synth_s.append(stats.seconds)
        kept.append(stats.kept)
        print(f"repeat {repeat}: sampling {sample_s[-1]:.1f} s, synthesis {synth_s[-1]:.1f} s "
              f"({stats.sampled} items, {stats.proposed} proposed, {stats.kept} kept, mean gain {stats.mean_gain:.3f})")
    sampled, synthesised = statistics.median(sample_s), statistics.median(synth_s)
    print(f"\nmedian of {args.repeats}: synthesis {args.items / synthesised:.2f} items/s = "
          f"{statistics.median(kept) / synthesised:.2f} kept pairs/s; sampling alone {args.items / sampled:.2f} items/s; "
          f"synthesis / sampling time {synthesised / sampled:.2f}x ({torch.get_num_threads()} threads, {args.steps} DDIM "
          f"steps, batch {args.batch_size})")

if __name__ == "__main__":
    main()
