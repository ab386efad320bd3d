"""Alignment on the toy world: train a method from the toy base, then judge it on held-out prompts.

    python bench/alignment.py                                  # train configs/toy/trajectory_dpo.yaml, evaluate
    python bench/alignment.py --config configs/demo.yaml       # another recipe (any method config on the toy base)
    python bench/alignment.py --lora runs/demo/version_0/lora  # evaluate an exported LoRA, no training
    python bench/alignment.py -- --trainer.max_steps=100       # training overrides go after --

Reports the hidden human's reward (and each of its terms) for the base model and the trained policy on the
held-out prompts, same prompts and same initial noise for both, and the policy's win rate against the base
(ties count 0.5) with a bootstrap 95% interval over prompts.
"""

from __future__ import annotations

import time

from jsonargparse import ArgumentParser
import torch

from lit_pref.toy.world import prompts
from lit_pref.backbone import DiffusionBackbone, lora_config
from lit_pref.rewards import win_rate
from lit_pref.toy import ToyGroundTruthReward


@torch.no_grad()
def evaluate(backbone: DiffusionBackbone, seeds: int = 16, steps: int = 20, guidance: float = 4.0) -> dict:
    """Hidden-reward terms of policy and base on every held-out prompt x ``seeds``, and the policy's win rate."""
    texts = [p for p in prompts("heldout") for _ in range(seeds)]
    reward = ToyGroundTruthReward()

    def sample() -> torch.Tensor:
        out = []
        for i in range(0, len(texts), 64):
            generators = [torch.Generator(backbone.device).manual_seed(10_000 + j) for j in range(i, min(i + 64, len(texts)))]
            out.append(backbone.sample(texts[i:i + 64], num_inference_steps=steps, guidance_scale=guidance,
                                       generator=generators).cpu())
        return torch.cat(out)

    policy_images = sample()
    with backbone.reference_forward():
        base_images = sample()
    policy, base = reward.score(policy_images, texts), reward.score(base_images, texts)
    terms = {name: (base_v.mean().item(), pol_v.mean().item())
             for (name, base_v), pol_v in zip(reward.components(base_images, texts).items(),
                                              reward.components(policy_images, texts).values())}
    return {"reward": (base.mean().item(), policy.mean().item()), "terms": terms,
            "win_rate": win_rate(policy, base, groups=texts), "n": len(texts),
            "policy_scores": policy.tolist(), "base_scores": base.tolist(), "texts": texts}


def report(result: dict, title: str) -> str:
    lines = [f"### {title}", "", "| held-out prompts | base | policy | change |", "|---|---|---|---|"]
    rows = {"hidden reward": result["reward"], **result["terms"]}
    lines += [f"| {name} | {b:.3f} | {p:.3f} | {p - b:+.3f} |" for name, (b, p) in rows.items()]
    wr = result["win_rate"]
    lines += ["", f"win rate vs base: {wr.rate:.1%} (95% CI {wr.low:.1%}-{wr.high:.1%}; "
              f"{wr.wins} wins, {wr.ties} ties, {wr.losses} losses over {wr.n} samples)"]
    return "\n".join(lines)


def main() -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/toy/trajectory_dpo.yaml", help="method config to train")
    parser.add_argument("--lora", default=None, help="evaluate this exported LoRA folder instead of training")
    parser.add_argument("--seeds", type=int, default=16, help="samples per held-out prompt")
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps when evaluating")
    parser.add_argument("cli_args", nargs="*", help="extra CLI overrides for training after --, e.g. -- "
                        "--trainer.max_steps=100")
    args = parser.parse_args()

    if args.lora:
        backbone = DiffusionBackbone(model="toy", **lora_config(args.lora))
        backbone.load_lora(args.lora)
        title = f"LoRA {args.lora}"
    else:
        from lit_pref.cli import LitPrefCLI

        start = time.perf_counter()
        cli = LitPrefCLI(args=["fit", "--config", args.config, "--trainer.enable_progress_bar=false",
                               "--trainer.default_root_dir=runs/bench_alignment", *args.cli_args])
        backbone = cli.model.backbone
        title = f"{args.config} ({cli.trainer.global_step} steps, {time.perf_counter() - start:.0f} s incl. data)"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(report(evaluate(backbone.eval().to(device), args.seeds, args.steps), title))


if __name__ == "__main__":
    main()
