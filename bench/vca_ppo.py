"""VCA-PPO throughput: samples/s of a round's collection (chains with log-probs) against plain sampling, the reward
terms' cost, and the time of a whole training round (collection, rewards, PPO update, user, refiner).

    python bench/vca_ppo.py [--models toy tiny] [--dialogues 4] [--num_images 4] [--steps 10] [--repeats 3]

Medians over ``--repeats`` timed calls after one warm-up. Collection is ``VCAPPO.collect`` (G dialogues x K images,
DDIM eta 1 with guidance, every latent and log-prob kept); the baseline is ``DiffusionBackbone.sample`` of the same
batch without the trajectory, in the same run. A training round is timed through a real ``Trainer.fit`` on one batch
of toy dialogues (one round per fit, ``step_fraction`` of the steps trained on).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from jsonargparse import ActionConfigFile, ArgumentParser
import torch
from lightning.pytorch import Trainer

from lit_pref.datamodules import DialogueDataModule
from lit_pref.backbone import DiffusionBackbone
from lit_pref.modules import VCAPPO, PPOSettings
from lit_pref.rewards import RoundWeightSchedule, VCAReward
from lit_pref.toy import ToyDialogueUsers, ToyGroundTruthReward, ToyRefiner, make_toy_dialogues


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main() -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML file with any of the options below")
    parser.add_argument("--models", nargs="+", default=["toy", "tiny"], help="backbone presets, hub ids or folders")
    parser.add_argument("--dialogues", type=int, default=4, help="G, dialogues per batch")
    parser.add_argument("--num_images", type=int, default=4, help="K, images per prompt and round")
    parser.add_argument("--steps", type=int, default=10, help="DDIM steps")
    parser.add_argument("--guidance", type=float, default=4.0, help="classifier-free guidance scale")
    parser.add_argument("--step_fraction", type=float, default=0.5, help="share of the steps trained on per minibatch")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls, after one warm-up")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "dialogues.jsonl"
        dialogues = make_toy_dialogues(path, args.dialogues, seed=0)
        prompts = [d.initial_prompt for d in dialogues]
        n = args.dialogues * args.num_images
        print(f"G={args.dialogues} dialogues x K={args.num_images} images, {args.steps} DDIM steps, guidance "
              f"{args.guidance}, device {device}, {torch.get_num_threads()} threads\n")
        print("| model | collection samples/s | plain sampling samples/s | collection / plain | rewards ms/sample | "
              "training round s |")
        print("|---|---|---|---|---|---|")
        for name in args.models:
            reward = VCAReward(ToyGroundTruthReward(), RoundWeightSchedule(), clip_model="toy", device=device)
            model = VCAPPO(DiffusionBackbone(model=name, lora_rank=4), reward, ToyDialogueUsers(),
                           refiner=ToyRefiner(), num_rounds=1,
                           num_inference_steps=args.steps, guidance_scale=args.guidance,
                           ppo=PPOSettings(num_images=args.num_images, minibatch_size=8,
                                           step_fraction=args.step_fraction, min_count=args.num_images))
            model.to(device)
            texts = [p for p in prompts for _ in range(args.num_images)]
            collect = median_time(lambda: model.collect(prompts), args.repeats)
            plain = median_time(lambda: model.backbone.sample(texts, num_inference_steps=args.steps,
                                                              guidance_scale=args.guidance, eta=1.0), args.repeats)
            traj = model.collect(prompts)
            images = traj.images.view(args.dialogues, args.num_images, *traj.images.shape[1:])
            rewards = median_time(lambda: reward(images, prompts, 1), args.repeats)

            def round_() -> None:
                trainer = Trainer(max_epochs=1, accelerator=device, logger=False, enable_checkpointing=False,
                                  enable_progress_bar=False, enable_model_summary=False)
                trainer.fit(model, DialogueDataModule(str(path), batch_size=args.dialogues, shuffle=False))

            train_round = median_time(round_, args.repeats)
            print(f"| {name} | {n / collect:.1f} | {n / plain:.1f} | {plain / collect:.2f} | "
                  f"{1000 * rewards / n:.1f} | {train_round:.1f} |")


if __name__ == "__main__":
    main()
