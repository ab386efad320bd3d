"""``python -m lit_pref <subcommand> ...`` (also installed as ``lit-pref``).

``fit``, ``validate``, ``test`` and ``predict`` go to LightningCLI; the other subcommands are listed in
``SUBCOMMANDS``, each the ``main(argv)`` of its own module. ``--threads N`` (anywhere on the line) sets PyTorch's
CPU threads; the default is ``OMP_NUM_THREADS`` when set, else the cores not busy with other work
(:func:`lit_pref.threads.free_cores`).
"""

from __future__ import annotations

import importlib
import sys

PROG = "python -m lit_pref"

# subcommand -> module whose ``main(argv: list[str]) -> None`` runs it
SUBCOMMANDS: dict[str, str] = {
    "compare": "lit_pref.compare",
    "evaluate": "lit_pref.evaluate",
    "synthesize-pairs": "lit_pref.rpo.cli",
    "interact": "lit_pref.vca.interact",
    "dialogues-to-pairs": "lit_pref.datamodules.dialogue_pairs",
}

# One line per subcommand for ``--help`` (a subcommand missing here shows its module docstring's first line).
SUMMARIES: dict[str, str] = {
    "fit": "train a model: fit --config configs/demo.yaml (any method, data module and callbacks by class name)",
    "validate": "run the validation set on a model or checkpoint (--ckpt_path)",
    "test": "score held-out pairs with a checkpoint (test/loss, test/implicit_acc)",
    "predict": "generate images for a prompt file with a checkpoint (lit_pref.callbacks.ImageWriter writes them)",
    "compare": "the evaluation metrics of runs side by side: a Markdown table and a PNG of the curves",
    "synthesize-pairs": "RichPreferenceDPO's pairs: sample, critique, edit and relabel (resumable)",
    "interact": "a local web page to pick images and give feedback to a model, turn by turn (VCA)",
}


def usage() -> str:
    """The top-level help: every subcommand with one line."""
    names = ["fit", "validate", "test", "predict", *SUBCOMMANDS]
    width = max(map(len, names)) + 2
    lines = [f"usage: {PROG} [--threads N] SUBCOMMAND [options]", "", "subcommands:"]
    for name in names:
        summary = SUMMARIES.get(name)
        if summary is None:
            summary = (importlib.import_module(SUBCOMMANDS[name]).__doc__ or "").strip().splitlines()[0]
        lines.append(f"  {name:<{width}}{summary}")
    lines += ["", "options:", f"  {'--threads N':<{width}}PyTorch CPU threads (default: OMP_NUM_THREADS if set, else the "
              "cores not busy with other work)", "", f"Run `{PROG} SUBCOMMAND --help` for a subcommand's options."]
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
    """Entry point: an extra subcommand of ``SUBCOMMANDS``, else LightningCLI."""
    words = sys.argv[1:] if argv is None else list(argv)
    threads = pop_threads(words)
    if not words or words[0] in ("-h", "--help"):
        print(usage())
        raise SystemExit(0 if words else 2)
    from lit_pref.threads import set_threads

    set_threads(threads)
    if words[0] in SUBCOMMANDS:
        importlib.import_module(SUBCOMMANDS[words[0]]).main(words[1:])
        return
    from lit_pref.cli import LitPrefCLI

    if argv is None:
        sys.argv[1:] = words  # without --threads; LightningCLI reads sys.argv itself
    LitPrefCLI(args=None if argv is None else words)


if __name__ == "__main__":
    main()
