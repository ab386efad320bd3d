"""The efficacy ladder on the toy world: what each way of using the hidden human buys, from the shipped base.

    python bench/ladder.py                                   # capacity, best-of-N, reward-weighted, DDPO; seeds 0 1 2
    python bench/ladder.py --rungs capacity best_of_n --seeds 0
    python bench/ladder.py --rungs ddpo --method dpo=configs/toy/trajectory_dpo.yaml --method vca=configs/toy/vca_ppo.yaml

Rungs (each judged as ``bench/alignment.py`` judges: its ``evaluate``, the 12 held-out prompts x ``--samples`` seeds,
the same initial noise for base and tuned):

- ``capacity``: supervised LoRA fine-tuning (the diffusion loss) on ideal images -- the renderer's own faithful,
  centred images of the training captions -- at the demo's rank and at ``--big_rank``. If this cannot centre the
  shapes on held-out prompts, the LoRA or the model is the limit.
- ``best_of_n``: the best of N base samples by the hidden reward (N = 2, 4, 8), the first of them drawn from the
  judged noise: what selection alone buys.
- ``reward_weighted``: the same fine-tuning on the top ``--top_k`` of ``--pool`` base samples per training caption
  (rejection sampling).
- ``ddpo``: ``--ddpo_config`` (PPO on the hidden reward) trained through the CLI.
- ``--method NAME=CONFIG``: any method recipe, trained through the CLI.

Prints one table, ``alignment.table`` (the leaderboard's): rung, seeds, win rate mean and range over training seeds,
the 95% bootstrap interval of the pooled pairs (prompts resampled), the change of each hidden-reward term, and the
minutes of training, wall and CPU (data generation included).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

from jsonargparse import ActionConfigFile, ArgumentParser
import numpy as np
import torch
from lightning.pytorch import seed_everything

from alignment import evaluate, table, train_recipe
from lit_pref.datamodules.synthetic import SIZE_RANGES
from lit_pref.toy.world import Scene, parse_caption, prompts, render
from lit_pref.backbone import DiffusionBackbone
from lit_pref.toy import ToyGroundTruthReward

DEMO_RANK = 8  # configs/demo.yaml
ROOT = "runs/bench_ladder"


def ideal_images(captions: list[str], per_caption: int, seed: int) -> torch.Tensor:
    """The renderer's faithful images of ``captions``, centred, sizes drawn from each size class; (N, 3, 32, 32)
    in [0, 1], ``per_caption`` per caption, in caption order."""
    rng = np.random.default_rng(seed)
    out = []
    for text in captions:
        cap = parse_caption(text)
        lo, hi = SIZE_RANGES[cap.size]
        for _ in range(per_caption):
            side = float(rng.integers(round(lo * 32), round(hi * 32) + 1))
            scene = Scene(cap.colour, cap.shape, cap.size, cap.background, side, (16.0, 16.0))
            out.append(torch.from_numpy(render(scene)).permute(2, 0, 1).float() / 255)
    return torch.stack(out)


def fine_tune(backbone: DiffusionBackbone, images: torch.Tensor, captions: list[str], steps: int, lr: float,
              batch_size: int = 16) -> None:
    """Supervised LoRA fine-tuning with the diffusion (noise-prediction) loss on (images in [0, 1], captions)."""
    optimizer = torch.optim.AdamW(list(backbone.lora_parameters()), lr=lr, weight_decay=1e-4)
    backbone.train()
    for _ in range(steps):
        rows = torch.randint(len(images), (batch_size,))
        with torch.no_grad():
            latents = backbone.encode_images(images[rows] * 2 - 1)
            cond = backbone.encode_prompts([captions[i] for i in rows.tolist()], target_size=(32, 32))
        noise = torch.randn_like(latents)
        t = torch.randint(backbone.noise_scheduler.config.num_train_timesteps, (batch_size,))
        noisy = backbone.noise_scheduler.add_noise(latents, noise, t)
        target = backbone.training_target(latents, noise, t)
        loss = torch.nn.functional.mse_loss(backbone.predict(noisy, t, cond), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    backbone.eval()


class BestOfN:
    """A stand-in policy for ``evaluate``: each sample is the best of N base samples by the hidden reward, the first
    drawn from the judged generator, the others from seeds derived from it and ``seed``. Inside :meth:`reference_forward`
    it samples as the base. Candidates are cached in ``pool`` (shared by the N of one seed), so best-of-2, -4 and -8
    are prefixes of one set of 8 draws."""

    def __init__(self, backbone: DiffusionBackbone, n: int, seed: int, pool: dict | None = None) -> None:
        self.backbone, self.n, self.seed = backbone, n, seed
        self.reward = ToyGroundTruthReward()
        self.pool = {} if pool is None else pool
        self._plain = False

    @property
    def device(self) -> torch.device:
        return self.backbone.device

    @contextlib.contextmanager
    def reference_forward(self) -> Iterator[None]:
        self._plain = True
        try:
            with self.backbone.reference_forward():
                yield
        finally:
            self._plain = False

    def sample(self, texts: list[str], generator: list[torch.Generator], **kwargs) -> torch.Tensor:
        if self._plain:
            return self.backbone.sample(texts, generator=generator, **kwargs)
        seeds = [g.initial_seed() for g in generator]
        images, scores = [], []
        for c in range(self.n):
            key = (self.seed, c, tuple(seeds))
            if key not in self.pool:
                draws = [torch.Generator(self.device).manual_seed(s + 1_000_003 * (c + 8 * self.seed) if c else s)
                         for s in seeds]
                candidate = self.backbone.sample(texts, generator=draws, **kwargs)
                self.pool[key] = (candidate, self.reward.score(candidate, texts))
            images.append(self.pool[key][0])
            scores.append(self.pool[key][1])
        best = torch.stack(scores).argmax(0)
        return torch.stack(images)[best, torch.arange(len(texts))]


def top_k_base_samples(backbone: DiffusionBackbone, pool: int, top_k: int, seed: int) -> tuple[torch.Tensor, list[str]]:
    """The ``top_k`` of ``pool`` base samples (20 DDIM steps, guidance 4) of every training caption by the hidden
    reward."""
    reward = ToyGroundTruthReward()
    images, captions = [], []
    for i, text in enumerate(prompts("train")):
        generators = [torch.Generator().manual_seed(seed * 100_003 + i * pool + k) for k in range(pool)]
        samples = backbone.sample([text] * pool, num_inference_steps=20, guidance_scale=4.0, generator=generators)
        best = reward.score(samples, [text] * pool).argsort(descending=True)[:top_k]
        images.append(samples[best])
        captions += [text] * top_k
    return torch.cat(images), captions


def recipe(config: str) -> Callable[[int], DiffusionBackbone]:
    """A rung that trains the method recipe ``config`` from the toy base through the CLI."""
    return lambda seed: train_recipe(config, seed, [], ROOT)[0].model.backbone


def run_rung(label: str, make_policy: Callable[[int], object], seed: int, samples: int) -> dict:
    """Make (train) the policy of one seed, timed, and judge it with ``evaluate``; one record for ``table``."""
    seed_everything(seed)
    start, cpu_start = time.perf_counter(), time.process_time()
    policy = make_policy(seed)
    train_s, train_cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
    result = evaluate(policy, seeds=samples)
    print(f"  seed {seed}: win rate {result['win_rate'].rate:.1%} ({result['win_rate'].low:.1%}-"
          f"{result['win_rate'].high:.1%}), trained in {train_s:.0f} s ({train_cpu_s:.0f} CPU-s)", flush=True)
    return {"label": label, "seed": seed, "train_s": train_s, "train_cpu_s": train_cpu_s, "terms": result["terms"],
            "policy": result["policy_scores"], "base": result["base_scores"], "texts": result["texts"]}


def main() -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML file with any of the options below")
    parser.add_argument("--rungs", nargs="+", default=["capacity", "best_of_n", "reward_weighted", "ddpo"],
                        choices=["capacity", "best_of_n", "reward_weighted", "ddpo"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="training seeds per rung")
    parser.add_argument("--samples", type=int, default=16, help="judged seeds per held-out prompt (x 12 prompts)")
    parser.add_argument("--big_rank", type=int, default=32, help="the larger LoRA rank of the capacity rung")
    parser.add_argument("--sft_steps", type=int, default=300, help="fine-tuning steps (batch 16)")
    parser.add_argument("--sft_lr", type=float, default=1e-3, help="fine-tuning learning rate")
    parser.add_argument("--pool", type=int, default=8, help="base samples per training caption (reward-weighted)")
    parser.add_argument("--top_k", type=int, default=2, help="kept per caption (reward-weighted)")
    parser.add_argument("--ddpo_config", default="configs/toy/ddpo.yaml")
    parser.add_argument("--method", action="append", default=[], metavar="NAME=CONFIG",
                        help="a method recipe to train and judge (repeatable)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    def lora(rank: int) -> DiffusionBackbone:
        return DiffusionBackbone(model="toy", lora_rank=rank).eval()

    def capacity(rank: int) -> Callable[[int], DiffusionBackbone]:
        def make(seed: int) -> DiffusionBackbone:
            backbone, captions = lora(rank), [p for p in prompts("train") for _ in range(4)]
            fine_tune(backbone, ideal_images(prompts("train"), 4, seed), captions, args.sft_steps, args.sft_lr)
            return backbone
        return make

    def reward_weighted(seed: int) -> DiffusionBackbone:
        backbone = lora(DEMO_RANK)
        with torch.no_grad():
            images, captions = top_k_base_samples(backbone, args.pool, args.top_k, seed)
        fine_tune(backbone, images, captions, args.sft_steps, args.sft_lr)
        return backbone

    rungs: list[tuple[str, Callable[[int], object]]] = []
    if "capacity" in args.rungs:
        rungs += [(f"capacity, SFT on ideal images, rank {r}", capacity(r)) for r in (DEMO_RANK, args.big_rank)]
    if "best_of_n" in args.rungs:
        pool: dict = {}
        rungs += [(f"best-of-{n} base samples", lambda seed, n=n: BestOfN(lora(DEMO_RANK), n, seed, pool))
                  for n in (2, 4, 8)]
    if "reward_weighted" in args.rungs:
        rungs.append((f"reward-weighted SFT, top {args.top_k} of {args.pool}", reward_weighted))
    if "ddpo" in args.rungs:
        rungs.append((f"DDPO {args.ddpo_config}", recipe(args.ddpo_config)))
    for spec in args.method:
        name, _, config = spec.partition("=")
        rungs.append((f"{name} {config}", recipe(config)))

    records = []
    for name, make in rungs:
        records += [run_rung(name, make, seed, args.samples) for seed in args.seeds]
        print(table(records), flush=True)
    print(f"\n{len(prompts('heldout'))} held-out prompts x {args.samples} samples per seed; seeds {args.seeds}\n")
    print(table(records))

if __name__ == "__main__":
    main()
