"""Throughput of trajectory collection (chains/s) and of ``python -m lit_pref evaluate``'s chunked sampling and
scoring (prompts/s), on the tiny preset, in wall-clock and in CPU seconds of this process (the latter holds on a
shared machine whose load changes the wall clock).

    python bench/throughput.py --steps 10 --chains 40 --prompts 40
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from jsonargparse import ActionConfigFile, ArgumentParser
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lit_pref.backbone import DiffusionBackbone  # noqa: E402
from lit_pref.evaluate import run  # noqa: E402
from lit_pref.modules import DenseDiscountedDPO, TrajectorySettings  # noqa: E402
from lit_pref.suites import PromptSuite  # noqa: E402


class Brightness:
    """Mean pixel value (a scorer that costs nothing, so the model's cost is measured)."""

    def score(self, images, prompts):
        return images.mean(dim=(1, 2, 3))


def timed(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML file with any of the options below")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--steps", type=int, default=10, help="DDIM steps of a chain / a sample")
    parser.add_argument("--chains", type=int, default=40, help="chains per collection (rollouts 5 per prompt)")
    parser.add_argument("--prompts", type=int, default=40)
    parser.add_argument("--batch", type=int, default=10, help="sample_batch_size / evaluate batch_size")
    args = parser.parse_args()
    torch.manual_seed(0)
    module = DenseDiscountedDPO(
        DiffusionBackbone(model=args.model), scorer=Brightness(), num_inference_steps=args.steps,
        guidance_scale=4.0, trajectory=TrajectorySettings(rollouts_per_prompt=5, kept_per_prompt=5,
                                                         buffer_capacity=10_000, sample_batch_size=args.batch,
                                                         prompts_per_collection=args.chains // 5))
    wall, cpu = timed(lambda: module.collect(["a photo of a cat", "a red car", "a tree"]))
    print(f"collection ({args.model}, {args.steps} steps, guidance, {args.chains} chains in chunks of {args.batch}): "
          f"{args.chains / wall:.2f} chains/s wall, {args.chains / cpu:.2f} chains per CPU-second")
    with tempfile.TemporaryDirectory() as folder:
        prompts = Path(folder) / "prompts.txt"
        prompts.write_text("".join(f"prompt number {i}\n" for i in range(args.prompts)))
        backbone = DiffusionBackbone(model=args.model)
        wall, cpu = timed(lambda: run(backbone, {"brightness": Brightness()}, PromptSuite("file", str(prompts)),
                                      output_dir=f"{folder}/out", num_inference_steps=args.steps, guidance_scale=4.0,
                                      chunk_size=8, batch_size=args.batch, grid_images=8, device="cpu", progress=False))
    print(f"evaluate ({args.model}, {args.steps} steps, 1 image a prompt, no base): {args.prompts / wall:.2f} prompts/s "
          f"wall, {args.prompts / cpu:.2f} prompts per CPU-second")


if __name__ == "__main__":
    main()
