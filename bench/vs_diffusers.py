"""lit_pref's TrajectoryDPO against diffusers' Diffusion-DPO script on the same model folder, data and settings.

    python bench/vs_diffusers.py --script PATH/train_diffusion_dpo.py --script-python /tmp/dpo-venv/bin/python \\
        --model toy                                   # the shipped toy model at 32 px
    ... --model small --resolution 256 --steps 1 3    # the SD-like benchmark preset

The script is diffusers' ``examples/research_projects/diffusion_dpo/train_diffusion_dpo.py`` (huggingface/diffusers
on GitHub; download that one file, it is not part of lit_pref). Besides what lit_pref needs (torch, diffusers,
transformers, peft) it imports ``datasets``, ``accelerate`` and ``wandb``: give ``--script-python`` an interpreter
that has them, e.g. a venv that sees lit_pref's packages::

    python -m venv /tmp/dpo-venv
    python -c "import site; print(site.getsitepackages()[0])" > /tmp/dpo-venv/lib/python3.11/site-packages/base.pth
    /tmp/dpo-venv/bin/pip install datasets accelerate wandb

Everything runs offline (``HF_*_OFFLINE=1``, ``WANDB_MODE=disabled``). The benchmark writes the model folder
(``DiffusionBackbone(model).save_pretrained``: the same weights for both programs) and a Pick-a-Pic parquet
(``train-00000.parquet``: ``caption``, ``jpg_0``, ``jpg_1``, ``label_0``; random JPEGs), then runs, each as a child
process with one thread (``OMP_NUM_THREADS=1``):

* ``diffusers``: the script with LoRA rank 4, ``--train_batch_size PAIRS``, fp32 (``--mixed_precision no``),
  centre crop and random flip (its defaults), no warm-up, lr 1e-5;
* ``lit_pref``: ``python -m lit_pref fit`` with the same: TrajectoryDPO, LoRA rank 4 on the same projections, the
  same beta (its ``beta_dpo`` 2500 is our 5000), AdamW lr 1e-5, gradient clipping 1.0, no logger, no checkpoint;
* ``cache, cold``: lit_pref with ``EncodingCache`` on a fresh folder (filled during the first epoch);
* ``cache, warm``: lit_pref with ``EncodingCache`` on a folder a previous run filled.

Each program runs ``--steps SHORT LONG`` optimizer steps; its per-step time is ``(T_long - T_short) / (LONG -
SHORT)`` and its start-up (command to first step: imports, model build, LoRA injection, data scanning) is ``T_short -
SHORT x per-step``, for the wall clock and for the child's CPU time (user + system, from ``wait4``: it holds on a
shared machine whose load moves the wall clock). Rounds alternate the programs' order. Peak RSS is the child's
``ru_maxrss`` (the long run's). Printed: one table of medians over rounds with their ranges, and the ratios to
diffusers.
"""

from __future__ import annotations

import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace
import pyarrow.parquet as pq
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lit_pref.backbone import DiffusionBackbone  # noqa: E402

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled",
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
VARIANTS = ("diffusers", "lit_pref", "cache, cold", "cache, warm")
LORA_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]  # the script's LoRA target modules


def write_data(folder: Path, pairs: int, resolution: int) -> Path:
    """A Pick-a-Pic-style parquet of ``pairs`` rows of random JPEGs (smooth noise) at ``resolution``."""
    rng = np.random.default_rng(0)

    def jpeg() -> bytes:
        small = rng.integers(0, 256, (max(resolution // 8, 2),) * 2 + (3,), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(small).resize((resolution, resolution), Image.BILINEAR).save(buffer, format="JPEG")
        return buffer.getvalue()

    table = pa.table({
        "caption": [f"a photo of thing number {i}" for i in range(pairs)],
        "jpg_0": [jpeg() for _ in range(pairs)],
        "jpg_1": [jpeg() for _ in range(pairs)],
        "label_0": [float(i % 2) for i in range(pairs)],
    })
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / "train-00000.parquet", row_group_size=64)
    return folder


def lit_pref_config(path: Path, model: Path, data: Path, resolution: int, pairs: int, steps: int,
                    cache_dir: Path | None) -> Path:
    """The lit_pref run matching the script's settings (JSON is YAML)."""
    callbacks = ([{"class_path": "lit_pref.callbacks.EncodingCache", "init_args": {"cache_dir": str(cache_dir)}}]
                 if cache_dir is not None else [])
    config = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": steps, "logger": False,
                    "enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False,
                    "num_sanity_val_steps": 0, "gradient_clip_val": 1.0, "log_every_n_steps": 50,
                    "callbacks": callbacks},
        "model": {"class_path": "lit_pref.modules.TrajectoryDPO", "init_args": {
            "backbone": {"class_path": "lit_pref.backbone.DiffusionBackbone", "init_args": {
                "model": str(model), "lora_rank": 4, "lora_target_modules": LORA_TARGETS, "lora_init": "gaussian"}},
            "loss": {"class_path": "lit_pref.losses.DiffusionDPOLoss", "init_args": {"beta": 5000.0}},
            "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 1e-5, "weight_decay": 0.01}},
        }},
        "data": {"class_path": "lit_pref.datamodules.PreferencePairDataModule", "init_args": {
            "train_path": str(data), "resolution": resolution, "center_crop": True, "random_flip": True,
            "batch_size": pairs}},
    }
    path.write_text(json.dumps(config, indent=1))
    return path


def run(command: list[str], log: Path) -> tuple[float, float, float]:
    """Run ``command`` to the end: its wall seconds, CPU seconds (user + system) and peak RSS in bytes."""
    env = {**os.environ, **OFFLINE}
    start = time.perf_counter()
    with open(log, "w") as out:  # the children write their files (config.yaml, outputs) in the work folder
        child = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=log.parent)
        _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(command)} failed; its output is in {log}:\n{log.read_text()[-3000:]}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024


def commands(args: Namespace, work: Path, model: Path, data: Path) -> dict:
    """For each variant, a function of (steps, run id) giving its command line."""
    def diffusers(steps: int, tag: str) -> list[str]:
        return [args.script_python, str(Path(args.script).resolve()), "--pretrained_model_name_or_path", str(model),
                "--dataset_name", str(data), "--dataset_split_name", "train", "--resolution", str(args.resolution),
                "--train_batch_size", str(args.pairs), "--rank", "4", "--mixed_precision", "no",
                "--dataloader_num_workers", "0", "--report_to", "tensorboard", "--learning_rate", "1e-5",
                "--lr_warmup_steps", "0", "--checkpointing_steps", "1000000", "--seed", "0",
                "--max_train_steps", str(steps), "--output_dir", str(work / f"out-{tag}"),
                "--cache_dir", str(work / "hf-cache")]

    def lit_pref(cache: str | None):
        def command(steps: int, tag: str) -> list[str]:
            cache_dir = None if cache is None else work / ("cache-warm" if cache == "warm" else f"cache-{tag}")
            config = lit_pref_config(work / f"{tag}.yaml", model, data, args.resolution, args.pairs, steps, cache_dir)
            return [sys.executable, "-m", "lit_pref", "fit", "--config", str(config)]
        return command

    return {"diffusers": diffusers, "lit_pref": lit_pref(None), "cache, cold": lit_pref("cold"),
            "cache, warm": lit_pref("warm")}


def spread(values: list[float], fmt: str) -> str:
    """Median, and the range when there is more than one value."""
    median = statistics.median(values)
    return fmt.format(median) + (f" ({fmt.format(min(values))}-{fmt.format(max(values))})" if len(values) > 1 else "")


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML file with any of the options below")
    parser.add_argument("--script", required=True, help="path of diffusers' train_diffusion_dpo.py")
    parser.add_argument("--script-python", default=sys.executable,
                        help="interpreter for the script (needs datasets, accelerate, wandb)")
    parser.add_argument("--model", default="toy", help="lit_pref backbone preset or folder: toy, small, sd15, ...")
    parser.add_argument("--resolution", type=int, default=None, help="pixels (default: the model's)")
    parser.add_argument("--pairs", type=int, default=2, help="preference pairs per step")
    parser.add_argument("--data-pairs", type=int, default=8, help="rows of the parquet (an epoch is rows / pairs steps)")
    parser.add_argument("--steps", type=int, nargs=2, default=[2, 42], metavar=("SHORT", "LONG"),
                        help="optimizer steps of the short and the long run")
    parser.add_argument("--rounds", type=int, default=2, help="rounds (the programs alternate their order)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    args = parser.parse_args(argv)
    short, long_ = args.steps
    if not 0 <= short < long_:
        raise SystemExit(f"--steps: SHORT must be below LONG, got {short} {long_}")

    with tempfile.TemporaryDirectory(prefix="vs_diffusers-") as tmp:
        work = Path(tmp)
        backbone = DiffusionBackbone(model=args.model)
        args.resolution = args.resolution or backbone.default_resolution
        model = backbone.save_pretrained(work / "model")
        del backbone
        data = write_data(work / "data", args.data_pairs, args.resolution)
        build = commands(args, work, model, data)
        if "cache, warm" in args.variants:  # fill the warm cache: one epoch
            run(build["cache, warm"](-(-args.data_pairs // args.pairs), "fill"), work / "fill.log")
        results = {v: {"wall": [], "cpu": [], "wall_start": [], "cpu_start": [], "rss": []} for v in args.variants}
        for round_ in range(args.rounds):
            for variant in args.variants if round_ % 2 == 0 else args.variants[::-1]:
                tag = f"{variant.replace(', ', '-')}-{round_}"
                wall_s, cpu_s, _ = run(build[variant](short, tag + "-s"), work / f"{tag}-s.log")
                wall_l, cpu_l, rss = run(build[variant](long_, tag + "-l"), work / f"{tag}-l.log")
                r = results[variant]
                r["wall"].append((wall_l - wall_s) / (long_ - short))
                r["cpu"].append((cpu_l - cpu_s) / (long_ - short))
                r["wall_start"].append(wall_s - short * r["wall"][-1])
                r["cpu_start"].append(cpu_s - short * r["cpu"][-1])
                r["rss"].append(rss / 2**20)
                print(f"round {round_} {variant}: {r['cpu'][-1]:.3f} s CPU a step, {r['cpu_start'][-1]:.1f} s CPU "
                      f"to the first step", flush=True)

    print(f"\n{args.model} at {args.resolution} px, {args.pairs} pairs a step, LoRA rank 4, fp32, 1 thread; "
          f"{args.rounds} rounds of {short} and {long_} steps; {args.data_pairs} pairs in the data "
          f"(medians, ranges in brackets)\n")
    print("| program | CPU s / step | wall s / step | CPU s to first step | wall s to first step | peak RSS MiB |")
    print("|---|---|---|---|---|---|")
    for variant, r in results.items():
        print(f"| {variant} | {spread(r['cpu'], '{:.3f}')} | {spread(r['wall'], '{:.3f}')} | "
              f"{spread(r['cpu_start'], '{:.1f}')} | {spread(r['wall_start'], '{:.1f}')} | {spread(r['rss'], '{:.0f}')} |")
    if "diffusers" in results:
        base = statistics.median(results["diffusers"]["cpu"])
        base_start = statistics.median(results["diffusers"]["cpu_start"])
        for variant, r in results.items():
            if variant != "diffusers":
                print(f"{variant} / diffusers: {statistics.median(r['cpu']) / base:.2f}x CPU per step, "
                      f"{statistics.median(r['cpu_start']) / base_start:.2f}x CPU to the first step")


if __name__ == "__main__":
    main()
