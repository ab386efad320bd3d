"""``python -m lit_pref <subcommand> ...`` (also installed as ``lit-pref``).

Every subcommand is a row of ``SUBCOMMANDS``: the function that runs it (``module:function``, called with the words
after the subcommand) and its line of the top-level ``--help``. The modules are imported only when their subcommand
runs (``importlib``), so ``--help`` and a light subcommand do not load Lightning and diffusers. Every subcommand is
parsed by jsonargparse from typed signatures (:mod:`lit_pref.commands`; ``fit``, ``validate``, ``test`` and
``predict`` by LightningCLI) and takes ``--config`` and ``--help``. ``--threads N`` (anywhere on the line) sets
PyTorch's CPU threads; the default is ``OMP_NUM_THREADS`` when set, else the cores not busy with other work
(:func:`lit_pref.threads.free_cores`).
"""

from __future__ import annotations

import importlib
import sys
from typing import NamedTuple

from lit_pref.commands import PROG
from lit_pref.threads import set_threads


class Subcommand(NamedTuple):
    """A subcommand: ``target`` (``"module:function"``, the function taking the words after the subcommand) and the
    one-line ``summary`` of the top-level ``--help``."""

    target: str
    summary: str


SUBCOMMANDS: dict[str, Subcommand] = {
    "fit": Subcommand("lit_pref.cli:fit", "train a model: fit --config configs/demo.yaml (any method, data module "
                      "and callbacks by class name)"),
    "validate": Subcommand("lit_pref.cli:validate", "run the validation set on a model or checkpoint (--ckpt_path)"),
    "test": Subcommand("lit_pref.cli:test", "score held-out pairs with a checkpoint (test/loss, test/implicit_acc)"),
    "predict": Subcommand("lit_pref.cli:predict", "generate images for a prompt file with a checkpoint "
                          "(lit_pref.callbacks.ImageWriter writes them)"),
    "evaluate": Subcommand("lit_pref.evaluate:main", "score a model (and its LoRA) on a benchmark prompt suite: "
                           "tables, scores and a grid"),
    "compare": Subcommand("lit_pref.compare:main", "the evaluation metrics of runs side by side: a Markdown table "
                          "and a PNG of the curves"),
    "synthesize-pairs": Subcommand("lit_pref.rpo.cli:main", "RichPreferenceDPO's pairs: sample, critique, edit "
                                   "and relabel (resumable)"),
    "interact": Subcommand("lit_pref.vca.interact:main", "a local web page to pick images and give feedback to a "
                           "model, turn by turn (VCA)"),
    "dialogues-to-pairs": Subcommand("lit_pref.datamodules.dialogue_pairs:main", "a dialogue file's choices as "
                                     "preference pairs (a Pick-a-Pic parquet shard)"),
    "make-toy-dialogues": Subcommand("lit_pref.toy.user:main", "toy dialogues played between a simulated user and "
                                     "the refiner, as a dialogue JSONL file"),
    "make-toy-pairs": Subcommand("lit_pref.toy.pairs:main", "the toy world's shipped preference pairs, best and "
                                 "worst of 8 base samples (lit_pref/assets/toy/pairs/best_of_8)"),
}


def usage() -> str:
    """The top-level help: every subcommand with one line."""
    width = max(map(len, SUBCOMMANDS)) + 2
    lines = [f"usage: {PROG} [--threads N] SUBCOMMAND [options]", "", "subcommands:"]
    lines += [f"  {name:<{width}}{subcommand.summary}" for name, subcommand in SUBCOMMANDS.items()]
    lines += ["", "options:", f"  {'--threads N':<{width}}PyTorch CPU threads (default: OMP_NUM_THREADS if set, "
              "else the cores not busy with other work)", "", f"Run `{PROG} SUBCOMMAND --help` for a subcommand's "
              "options; every subcommand takes --config FILE.yaml."]
    return "\n".join(lines)


def pop_threads(words: list[str]) -> int | None:
    """Remove ``--threads N`` / ``--threads=N`` from ``words`` and return N (``None`` when absent)."""
    for i, word in enumerate(words):
        if word == "--threads" or word.startswith("--threads="):
            value = word.partition("=")[2] if "=" in word else (words[i + 1] if i + 1 < len(words) else "")
            del words[i : i + (1 if "=" in word else 2)]
            if not value.isdigit() or int(value) < 1:
                raise SystemExit(f"{PROG}: error: --threads takes a positive integer, got {value!r}")
            return int(value)
    return None


def main(argv: list[str] | None = None) -> None:
    """Entry point: runs the subcommand named by the first word (``sys.argv[1:]`` when ``argv`` is None)."""
    words = sys.argv[1:] if argv is None else list(argv)
    threads = pop_threads(words)
    if not words or words[0] in ("-h", "--help"):
        print(usage())
        raise SystemExit(0 if words else 2)
    if words[0] not in SUBCOMMANDS:
        raise SystemExit(f"{PROG}: error: unknown subcommand {words[0]!r}; `{PROG} --help` lists them")
    set_threads(threads)
    if argv is None:
        sys.argv[1:] = words  # without --threads: LightningCLI and the processes it launches read sys.argv
    module, _, function = SUBCOMMANDS[words[0]].target.partition(":")
    getattr(importlib.import_module(module), function)(words[1:])


if __name__ == "__main__":
    main()
