"""``python -m lit_pref synthesize-pairs --config ...``: write rich preference pairs (RPO) for offline training.

The config names the synthesizer (critic, editor, relabelling scorer) and the sampling model by class path, like
every other config of the project::

    policy:      {class_path: lit_pref.backbone.DiffusionBackbone, init_args: {model: toy}}
    synthesizer: {class_path: lit_pref.rpo.PairSynthesizer, init_args: {critic: ..., editor: ..., scorer: ...}}
    prompts: toy:train
    output_dir: data/toy_rich_pairs

Re-running the same command resumes an interrupted run (finished pairs are kept, none is duplicated). The resolved
configuration of the latest run is saved as ``<output_dir>/_config.yaml``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from lit_pref.backbone import DiffusionBackbone
from lit_pref.commands import SubcommandParser, call, function_parser
from lit_pref.formats.rich_pairs import SynthesisStats
from lit_pref.io import atomic_file
from lit_pref.rpo.synthesizer import PairSynthesizer, resolve_prompts


def synthesize_pairs(
    synthesizer: PairSynthesizer,
    policy: DiffusionBackbone,
    prompts: list[str] | str,
    output_dir: str,
    samples_per_prompt: int = 1,
    max_pairs: int | None = None,
    seed: int = 0,
    lora: str | None = None,
    device: str | None = None,
    progress: bool = True,
) -> SynthesisStats:
    """Synthesise rich preference pairs into a folder of Pick-a-Pic-style parquet shards.

    Args:
        synthesizer: Critic, editor and relabelling scorer, and the sampling settings.
        policy: The model whose samples are critiqued and edited (LoRA adapters on, unless the synthesizer samples
            from the base).
        prompts: A list of prompts, a prompt file (``.txt``, ``.jsonl``, ``.parquet`` with a ``caption`` column) or
            ``toy:train`` / ``toy:heldout`` / ``toy:all``.
        output_dir: Output folder (an interrupted run there is resumed).
        samples_per_prompt: Images sampled per prompt.
        max_pairs: Stop once this many pairs are kept; ``None``: every item.
        seed: Item ``i`` samples with seed ``seed + i``.
        lora: A LoRA folder (``save_lora`` / diffusers format) loaded into the policy before sampling; build the
            policy with the same ``lora_rank``.
        device: Device of the policy; ``None``: CUDA when available, else CPU.
        progress: Show a progress bar.
    """
    if lora is not None:
        policy.load_lora(lora)
    policy.to(torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")))
    return synthesizer.run(policy, resolve_prompts(prompts), output_dir, samples_per_prompt=samples_per_prompt,
                           max_pairs=max_pairs, seed=seed, progress=progress)


def build_parser() -> SubcommandParser:
    """The ``synthesize-pairs`` parser: the arguments of :func:`synthesize_pairs` and ``--config``."""
    return function_parser(synthesize_pairs, "synthesize-pairs", __doc__.splitlines()[0])


def main(argv: list[str]) -> None:
    """Parse ``argv`` (a config and overrides), synthesise, and print the statistics."""
    parser = build_parser()
    config = parser.parse_args(argv)
    stats = call(synthesize_pairs, parser, config)
    output_dir = Path(config.output_dir)
    with atomic_file(output_dir / "_config.yaml") as tmp:  # the configuration of the latest run that wrote here
        tmp.write_text(parser.dump(config, skip_none=False))
    kept_fraction = stats.kept / stats.proposed if stats.proposed else 0.0
    print(f"{output_dir}: {stats.sampled} sampled, {stats.proposed} proposed, {stats.kept} kept "
          f"({kept_fraction:.0%} of proposed), mean gain of kept pairs {stats.mean_gain:.4g}; "
          f"this run {stats.seconds:.1f} s, {stats.kept_per_second:.3g} kept pairs/s")
