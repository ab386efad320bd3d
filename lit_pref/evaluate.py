"""``python -m lit_pref evaluate --config eval.yaml``: score a model over a benchmark prompt suite.

The model is a base model (``backbone``), optionally with a LoRA folder (``lora``, written by ``save_lora`` /
``lit_pref.callbacks.LoRAExport``) or the LoRA weights of a Lightning checkpoint (``checkpoint``). Every prompt of the suite
(``lit_pref.suites``) is sampled ``num_images_per_prompt`` times, sample i of the run from the noise of
``seed + i``, and scored by every scorer; with ``vs_base`` the base model (adapters off) is sampled from the same
noise and the win rate against it is reported with its bootstrap interval over prompts.

Work goes in chunks of ``chunk_size`` prompts, sampled ``batch_size`` images at a time, with a progress bar. A
finished chunk is written atomically to ``output_dir/chunks/NNNNN.json``; a run started again on the same
``output_dir`` with the same settings skips the chunks on disk, so a killed run resumes where it stopped and no
sample is scored twice (different settings are refused: start a new ``output_dir``).

Outputs in ``output_dir``: ``scores.csv`` and ``scores.json`` (one row a sample: prompt, category, repeat, seed and
each score, ``base/<scorer>`` too with ``vs_base``), ``summary.json`` and ``summary.md`` (mean and std per scorer,
win rates with intervals, a per-category table, and for the HPSv2 suite the per-style report of the HPSv2
benchmark for each ``lit_pref.rewards.HPSv2`` scorer), and ``grid.png`` (the first ``grid_images`` samples, one of
every prompt first, captioned with their scores; policy | base pairs with ``vs_base``).
"""

from __future__ import annotations

import csv
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jsonargparse import Namespace
from PIL import Image
from torchvision.utils import save_image
from tqdm import tqdm

from lit_pref.callbacks.sample_grid import captioned_grid
from lit_pref.backbone import DiffusionBackbone, lora_config
from lit_pref.checkpointing import trainable_state_dict
from lit_pref.commands import SubcommandParser, function_parser
from lit_pref.io import atomic_file
from lit_pref.rewards import HPSv2, Scorer, win_rate
from lit_pref.sampling import sample_and_score
from lit_pref.suites import PromptSuite, SuitePrompt, hpsv2_style_report

SETTINGS_FILE = "evaluate.json"


def run(
    backbone: DiffusionBackbone,
    scorers: dict[str, Scorer],
    suite: PromptSuite,
    output_dir: str = "evaluation",
    lora: str | None = None,
    checkpoint: str | None = None,
    vs_base: bool = True,
    num_images_per_prompt: int = 1,
    num_inference_steps: int = 50,
    guidance_scale: float = 7.5,
    seed: int = 0,
    chunk_size: int = 32,
    batch_size: int = 8,
    grid_images: int = 16,
    device: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate; returns the summary (also written to ``output_dir/summary.json``).

    Args:
        backbone: The base model (its LoRA rank and targets are taken from ``lora`` when given).
        scorers: Name -> scorer (any ``lit_pref.rewards.Scorer``).
        suite: The prompt suite.
        output_dir: Folder of the chunks and the results; a run on a folder with finished chunks resumes.
        lora: A LoRA folder to load into the adapters.
        checkpoint: A Lightning ``.ckpt`` (or DeepSpeed checkpoint folder) whose LoRA weights are loaded; build
            ``backbone`` with the training run's ``lora_rank`` and targets.
        vs_base: Also sample the base model (adapters off) from the same noise and report win rates against it;
            ignored (no base to beat) without ``lora`` or ``checkpoint``.
        num_images_per_prompt: Samples per prompt.
        num_inference_steps: DDIM steps.
        guidance_scale: Classifier-free guidance scale.
        seed: Seed of sample 0; sample i (prompt i // n, repeat i % n) uses seed + i.
        chunk_size: Prompts per chunk (the unit written to disk and skipped on resume).
        batch_size: Samples drawn, decoded and scored at a time.
        grid_images: Samples shown in ``grid.png`` (0: no grid).
        device: ``"auto"`` (cuda when available), ``"cpu"``, ``"cuda"``, ...
        progress: Show a progress bar (on stderr).
    """
    if lora is not None and checkpoint is not None:
        raise ValueError("give lora or checkpoint, not both")
    if num_images_per_prompt < 1 or chunk_size < 1 or batch_size < 1 or grid_images < 0:
        raise ValueError("num_images_per_prompt, chunk_size and batch_size must be >= 1, grid_images >= 0")
    prompts = suite.read()
    vs_base = vs_base and (lora is not None or checkpoint is not None)
    out = Path(output_dir)
    settings = {
        "suite": {"kind": suite.kind, "path": str(suite.path), "categories": suite.categories,
                  "max_prompts": suite.max_prompts},
        "prompts_sha256": hashlib.sha256(json.dumps([p.prompt for p in prompts]).encode()).hexdigest(),
        "num_prompts": len(prompts), "model": backbone.model_name, "lora": lora, "checkpoint": checkpoint,
        "vs_base": vs_base, "scorers": sorted(scorers), "num_images_per_prompt": num_images_per_prompt,
        "num_inference_steps": num_inference_steps, "guidance_scale": guidance_scale, "seed": seed,
        "chunk_size": chunk_size,
    }
    _check_settings(out, settings)
    _load_weights(backbone, lora, checkpoint)
    if not (out / SETTINGS_FILE).is_file():  # written once the weights loaded: a failed start leaves nothing
        with atomic_file(out / SETTINGS_FILE) as tmp:
            tmp.write_text(json.dumps(settings, indent=2))
    device = device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    backbone = backbone.to(device).eval()

    n = num_images_per_prompt
    total = len(prompts) * n
    grid = sorted(range(total), key=lambda i: (i % n, i // n))[:grid_images]  # one sample of every prompt first
    num_chunks = -(-len(prompts) // chunk_size)
    done = {c for c in range(num_chunks) if _chunk_path(out, c).is_file()}
    passes = 2 if vs_base else 1  # policy, then base
    finished = sum(min((c + 1) * chunk_size, len(prompts)) - c * chunk_size for c in done) * n
    bar = tqdm(total=total * passes, initial=finished * passes, desc="evaluate", unit="img", disable=not progress,
               file=sys.stderr)
    for c in range(num_chunks):
        if c in done:
            continue
        first, last = c * chunk_size * n, min((c + 1) * chunk_size, len(prompts)) * n
        texts = [prompts[i // n].prompt for i in range(first, last)]
        seeds = [seed + i for i in range(first, last)]
        keep = {i - first for i in grid if first <= i < last}
        scores, images = sample_and_score(backbone, texts, seeds, scorers, batch_size, num_inference_steps,
                                          guidance_scale, keep=keep, on_batch=bar.update)
        base_scores, base_images = {}, {}
        if vs_base:
            with backbone.reference_forward():
                base_scores, base_images = sample_and_score(backbone, texts, seeds, scorers, batch_size,
                                                            num_inference_steps, guidance_scale, keep=keep,
                                                            on_batch=bar.update)
        for k, image in images.items():  # grid images before the chunk: a chunk on disk has its images
            _save_png(image, out / "images" / f"{first + k:06d}.png")
            if vs_base:
                _save_png(base_images[k], out / "images" / f"{first + k:06d}_base.png")
        rows = [_row(prompts, first + k, n, seed, {m: v[k].item() for m, v in scores.items()},
                     {m: v[k].item() for m, v in base_scores.items()}) for k in range(last - first)]
        with atomic_file(_chunk_path(out, c)) as tmp:
            tmp.write_text(json.dumps({"chunk": c, "rows": rows}))
    bar.close()

    rows = [row for c in range(num_chunks) for row in json.loads(_chunk_path(out, c).read_text())["rows"]]
    summary = summarize(rows, scorers, suite.kind, vs_base)
    _write_results(out, rows, summary, scorers, vs_base)
    if grid:
        _write_grid(out, rows, grid, scorers, vs_base)
    return summary


def _check_settings(out: Path, settings: dict[str, Any]) -> None:
    """Refuse an ``output_dir`` that holds an evaluation with other settings (its chunks would not fit)."""
    path = out / SETTINGS_FILE
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved != settings:
            changed = sorted(k for k in settings.keys() | saved.keys() if settings.get(k) != saved.get(k))
            raise ValueError(f"{out} holds an evaluation with other settings ({', '.join(changed)} differ); "
                             f"use another output_dir or delete this one")


def _load_weights(backbone: DiffusionBackbone, lora: str | None, checkpoint: str | None) -> None:
    if lora is not None:
        backbone.load_lora(lora)
    if checkpoint is not None:
        state = {k.removeprefix("backbone."): v for k, v in trainable_state_dict(checkpoint).items()
                 if "lora_" in k}
        mine = {k for k in backbone.state_dict() if "lora_" in k}
        if set(state) != mine:
            raise KeyError(f"{checkpoint}: its LoRA keys do not match the backbone's adapters (e.g. missing "
                           f"{sorted(mine - set(state))[:2]}, unexpected {sorted(set(state) - mine)[:2]}); build the "
                           f"backbone with the training run's lora_rank and lora_target_modules")
        backbone.load_state_dict(state, strict=False)


def _chunk_path(out: Path, chunk: int) -> Path:
    return out / "chunks" / f"{chunk:05d}.json"


def _row(prompts: list[SuitePrompt], index: int, n: int, seed: int, scores: dict[str, float],
         base: dict[str, float]) -> dict[str, Any]:
    item = prompts[index // n]
    return {"index": index, "prompt_index": index // n, "repeat": index % n, "seed": seed + index,
            "prompt": item.prompt, "category": item.category, "challenge": item.challenge,
            "scores": scores, "base_scores": base}


def summarize(rows: list[dict[str, Any]], scorers: dict[str, Scorer], kind: str, vs_base: bool) -> dict[str, Any]:
    """Mean/std per scorer, win rates against the base with intervals (prompts resampled), per-category tables,
    and the HPSv2 benchmark's per-style report (prompt means of each HPSv2 scorer)."""
    def stats(values: list[float]) -> dict[str, float]:
        t = torch.tensor(values, dtype=torch.float64)
        return {"mean": t.mean().item(), "std": t.std().item() if len(t) > 1 else 0.0, "n": len(t)}

    def table(subset: list[dict[str, Any]]) -> dict[str, Any]:
        entry: dict[str, Any] = {}
        for name in scorers:
            entry[name] = stats([r["scores"][name] for r in subset])
            if vs_base:
                entry[f"base/{name}"] = stats([r["base_scores"][name] for r in subset])
                result = win_rate(torch.tensor([r["scores"][name] for r in subset]),
                                  torch.tensor([r["base_scores"][name] for r in subset]),
                                  groups=[str(r["prompt_index"]) for r in subset])
                entry[f"win_rate_vs_base/{name}"] = {"rate": result.rate, "low": result.low, "high": result.high,
                                                     "wins": result.wins, "ties": result.ties, "losses": result.losses}
        return entry

    summary: dict[str, Any] = {"num_samples": len(rows), "num_prompts": len({r["prompt_index"] for r in rows}),
                               "vs_base": vs_base, "all": table(rows)}
    categories = list(dict.fromkeys(r["category"] for r in rows if r["category"]))
    summary["categories"] = {c: table([r for r in rows if r["category"] == c]) for c in categories}
    if kind == "hpsv2":
        prompt_rows: dict[int, list[dict[str, Any]]] = {}
        for r in rows:
            prompt_rows.setdefault(r["prompt_index"], []).append(r)
        styles = [group[0]["category"] for group in prompt_rows.values()]
        report = {}
        for name, scorer in scorers.items():
            if isinstance(scorer, HPSv2):
                for key, field in ((name, "scores"), (f"base/{name}", "base_scores")):
                    if field == "base_scores" and not vs_base:
                        continue
                    means = [sum(r[field][name] for r in g) / len(g) for g in prompt_rows.values()]
                    report[key] = {s: {"mean": m, "std": sd} for s, (m, sd) in hpsv2_style_report(means, styles).items()}
        summary["hpsv2_benchmark"] = report
    return summary


def markdown(summary: dict[str, Any], scorers: dict[str, Scorer], vs_base: bool) -> str:
    """The summary as Markdown tables: one row for all prompts, then one a category."""
    head = ["group", "n"] + [f"{name} mean ± std" for name in scorers]
    if vs_base:
        head += [f"base {name}" for name in scorers] + [f"win rate {name} [95% CI]" for name in scorers]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for group, entry in [("all", summary["all"]), *summary["categories"].items()]:
        cells = [group, str(next(iter(entry.values()))["n"])]
        cells += [f"{entry[n]['mean']:.4f} ± {entry[n]['std']:.4f}" for n in scorers]
        if vs_base:
            cells += [f"{entry[f'base/{n}']['mean']:.4f}" for n in scorers]
            cells += [f"{w['rate']:.3f} [{w['low']:.3f}, {w['high']:.3f}]"
                      for w in (entry[f"win_rate_vs_base/{n}"] for n in scorers)]
        lines.append("| " + " | ".join(cells) + " |")
    for key, styles in summary.get("hpsv2_benchmark", {}).items():
        lines += ["", f"HPSv2 benchmark ({key}, x100, mean ± std over blocks of 80 prompts):"]
        lines += [f"  {style:<15} {v['mean']:.2f}  {v['std']:.4f}" for style, v in styles.items()]
    return "\n".join(lines)


def _write_results(out: Path, rows: list[dict[str, Any]], summary: dict[str, Any], scorers: dict[str, Scorer],
                   vs_base: bool) -> None:
    columns = ["index", "prompt_index", "repeat", "seed", "prompt", "category", "challenge", *scorers]
    columns += [f"base/{name}" for name in scorers] if vs_base else []
    with atomic_file(out / "scores.csv") as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for r in rows:
            writer.writerow([r[c] for c in columns[:7]] + [r["scores"][n] for n in scorers]
                            + ([r["base_scores"][n] for n in scorers] if vs_base else []))
    for name, obj in (("scores.json", rows), ("summary.json", summary)):
        with atomic_file(out / name) as tmp:
            tmp.write_text(json.dumps(obj, indent=1))
    with atomic_file(out / "summary.md") as tmp:
        tmp.write_text(markdown(summary, scorers, vs_base) + "\n")


def _save_png(image: torch.Tensor, path: Path) -> None:
    with atomic_file(path) as tmp:
        save_image(image, str(tmp), format="png")


def _write_grid(out: Path, rows: list[dict[str, Any]], grid: list[int], scorers: dict[str, Scorer],
                vs_base: bool) -> None:
    def load(name: str) -> torch.Tensor:
        with Image.open(out / "images" / name) as image:
            return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).float() / 255

    def caption(row: dict[str, Any], field: str, label: str) -> str:
        return "\n".join([f"{label}{row['prompt']}", *(f"{n} {row[field][n]:.3f}" for n in scorers)])

    images, captions = [], []
    for i in grid:
        images.append(load(f"{i:06d}.png"))
        captions.append(caption(rows[i], "scores", "policy: " if vs_base else ""))
        if vs_base:
            images.append(load(f"{i:06d}_base.png"))
            captions.append(caption(rows[i], "base_scores", "base: "))
    _save_png(captioned_grid(torch.stack(images), captions, nrow=4), out / "grid.png")


def build_parser() -> SubcommandParser:
    """The ``evaluate`` parser: the arguments of :func:`run` (jsonargparse, from its signature) and ``--config``."""
    return function_parser(run, "evaluate", __doc__.split("\n\n")[0])


def parse(argv: list[str]) -> tuple[SubcommandParser, Namespace]:
    """Parsed arguments, with the backbone's adapters set to the LoRA folder's rank and targets when one is given."""
    parser = build_parser()
    cfg = parser.parse_args(argv)
    if cfg.lora is not None:
        for key, value in lora_config(cfg.lora).items():
            cfg[f"backbone.init_args.{key}"] = value
    return parser, cfg


def main(argv: list[str]) -> None:
    """``python -m lit_pref evaluate --config eval.yaml [--output_dir ...]``; prints the summary tables."""
    parser, cfg = parse(argv)
    objects = parser.instantiate(cfg)
    kwargs = {k: v for k, v in vars(objects).items() if k != "config"}
    summary = run(**kwargs)
    print(markdown(summary, objects.scorers, summary["vs_base"]))
    print(f"wrote {Path(cfg.output_dir) / 'summary.json'}, scores.csv, scores.json and grid.png", file=sys.stderr)
