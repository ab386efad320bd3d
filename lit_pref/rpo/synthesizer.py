"""PairSynthesizer: rich preference pairs from critique and edit (RPO, docs/methods.md §3).

For each item (a prompt and a seed): sample an image from the policy or the base, critique it, edit it following
the critique's instructions, score original and edit with a scorer, and keep the pair (winner = edit, loser =
original) when the edit gains more than ``margin``; with ``relabel="two_sided"`` an edit that loses more than
``margin`` is kept too, with the original as the winner. Kept pairs are written as Pick-a-Pic-style parquet shards that
``lit_pref.datamodules.PreferencePairDataModule`` reads as they are.

Output folder::

    _synthesis.json      the parameters the pairs depend on; a restart with other parameters is refused
    part-0000000.parquet one shard per batch of items, written atomically; its schema metadata lists every item of
    part-0000008.parquet the batch (kept or not), so a restart skips exactly the finished items
    _stats.json          written when the run is complete (every item done, or ``max_pairs`` reached)

Columns: ``caption``, ``jpg_0`` (the edit, PNG bytes), ``jpg_1`` (the original), ``label_0`` (1.0: the edit is
preferred, 0.0: the original is), ``critique``, ``issues`` and ``instructions`` (lists of strings), ``item``,
``seed``, ``reward_0`` and ``reward_1`` (the scorer's scores of edit and original), ``edit_mask`` (PNG bytes of a
greyscale image, 255 where the editor repainted and 0 where the edit is the original exactly; null when the editor
may have changed any pixel).

Item ``i`` uses prompt ``prompts[i % len(prompts)]`` (so any prefix of the items covers the prompts evenly) and the
sampling noise of seed ``seed + i``; its edit gets the same seed. A crash loses at most the batch in progress.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from lit_pref.backbone.backbone import TOY_PIPELINE
from lit_pref.datamodules.prompts import read_prompts
from lit_pref.formats.rich_pairs import (
    FORMAT_VERSION,
    METADATA_KEY,
    RICH_PAIR_SCHEMA,
    SHARD_GLOB,
    STATS_FILE,
    SynthesisStats,
    mask_png_bytes,
    png_bytes,
    read_items,
    summarise,
)
from lit_pref.io import atomic_file
from lit_pref.rewards.base import Scorer
from lit_pref.rpo.critic import Critic
from lit_pref.rpo.editor import Edit, Editor

if TYPE_CHECKING:
    from lit_pref.backbone import DiffusionBackbone

TOY_PROMPTS = TOY_PIPELINE.parent / "prompts"  # the toy world's caption lists, shipped: train.txt, heldout.txt, all.txt
TOY_SPLITS = ("train", "heldout", "all")


def describe(obj: Any) -> dict[str, Any]:
    """The class and public plain-valued attributes of a collaborator, for the parameter record."""
    plain = (bool, int, float, str, type(None))

    def is_plain(value: Any) -> bool:
        if isinstance(value, (list, tuple)):
            return all(is_plain(v) for v in value)
        if isinstance(value, dict):
            return all(isinstance(k, str) and is_plain(v) for k, v in value.items())
        return isinstance(value, plain)

    attributes = {k: v for k, v in sorted(vars(obj).items()) if not k.startswith("_") and is_plain(v)}
    return {"class": f"{type(obj).__module__}.{type(obj).__qualname__}", **attributes}


class PairSynthesizer:
    """Curates rich preference pairs: sample, critique, edit, relabel with a scorer, keep the improvements.

    Args:
        critic: Writes the critique and the edit instructions (``VLMCritic``, ``ToyCritic``...).
        editor: Carries out the instructions (``InstructPix2PixEditor``, ``Img2ImgEditor``, ``InpaintEditor``,
            ``ControlNetEditor``, ``EditorChain``, ``ToyEditor``...).
        scorer: Relabels original and edit (any ``lit_pref.rewards.Scorer``, e.g. ImageReward); the pair is kept when
            ``score(edit) - score(original) > margin``.
        margin: Smallest gain that keeps a pair (in the scorer's units).
        relabel: ``one_sided``: keep only edits that gain more than ``margin`` (winner = edit);
            ``two_sided``: also keep edits that lose more than ``margin``, with the original as the winner
            (``label_0 = 0``), so a failed edit still teaches what is worse.
        sample_from: Sample the originals from the ``"policy"`` (LoRA adapters on) or the ``"base"`` (adapters off).
        num_inference_steps: DDIM steps of the samples.
        guidance_scale: Classifier-free guidance of the samples.
        height: Sample height in pixels; ``None``: the model's resolution.
        width: Sample width in pixels; ``None``: the model's resolution.
        batch_size: Items sampled together; each batch is one shard (the most a crash can lose).
    """

    def __init__(
        self,
        critic: Critic,
        editor: Editor,
        scorer: Scorer,
        margin: float = 0.0,
        relabel: Literal["one_sided", "two_sided"] = "one_sided",
        sample_from: Literal["policy", "base"] = "policy",
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        height: int | None = None,
        width: int | None = None,
        batch_size: int = 8,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.critic = critic
        self.editor = editor
        self.scorer = scorer
        if relabel not in ("one_sided", "two_sided"):
            raise ValueError(f"relabel must be 'one_sided' or 'two_sided', got {relabel!r}")
        self.margin = margin
        self.relabel = relabel
        self.sample_from = sample_from
        self.num_inference_steps = num_inference_steps
        self.guidance_scale = guidance_scale
        self.height = height
        self.width = width
        self.batch_size = batch_size

    # ------------------------------------------------------------------ parameters of a run
    def parameters(self, prompts: Sequence[str], samples_per_prompt: int, seed: int) -> dict[str, Any]:
        """Everything the pairs depend on (recorded in ``_synthesis.json``, compared on a restart; a change in a
        critic's or editor's code is not detected: write to a new folder then)."""
        parameters = {
            "format_version": FORMAT_VERSION,
            "prompts_sha256": hashlib.sha256("\n".join(prompts).encode()).hexdigest(),
            "num_prompts": len(prompts),
            "samples_per_prompt": samples_per_prompt,
            "seed": seed,
            "margin": self.margin,
            "relabel": self.relabel,
            "sample_from": self.sample_from,
            "num_inference_steps": self.num_inference_steps,
            "guidance_scale": self.guidance_scale,
            "height": self.height,
            "width": self.width,
            "critic": describe(self.critic),
            "editor": describe(self.editor),
            "scorer": describe(self.scorer),
        }
        return json.loads(json.dumps(parameters))  # as read back from JSON: tuples become lists at any depth

    @staticmethod
    def _check_parameters(output_dir: Path, parameters: dict[str, Any]) -> None:
        path = output_dir / "_synthesis.json"
        if path.is_file():
            recorded = json.loads(path.read_text())
            if recorded != parameters:
                changed = sorted(k for k in set(recorded) | set(parameters) if recorded.get(k) != parameters.get(k))
                raise ValueError(f"{output_dir} holds pairs synthesised with other parameters (differing: "
                                 f"{', '.join(changed)}; see {path}); use another output folder or delete it")
            return
        if any(output_dir.glob(SHARD_GLOB)):
            raise ValueError(f"{output_dir} holds shards but no _synthesis.json; use another output folder")
        with atomic_file(path) as tmp:
            tmp.write_text(json.dumps(parameters, indent=2, sort_keys=True))

    # ------------------------------------------------------------------ one batch
    @torch.no_grad()
    def _process(self, backbone: DiffusionBackbone, items: list[int], prompts: Sequence[str],
                 seed: int) -> tuple[list[dict[str, Any]], dict[str, list]]:
        """Sample, critique, edit and score a batch of items; returns their records and the kept rows."""
        texts = [prompts[i % len(prompts)] for i in items]
        seeds = [seed + i for i in items]
        generators = [torch.Generator(backbone.device).manual_seed(s) for s in seeds]
        with backbone.reference_forward() if self.sample_from == "base" else nullcontext():
            images = backbone.sample(texts, num_inference_steps=self.num_inference_steps,
                                     guidance_scale=self.guidance_scale, generator=generators,
                                     height=self.height, width=self.width).float().cpu()
        critiques = [self.critic.critique(image, text) for image, text in zip(images, texts)]
        edited = [k for k, c in enumerate(critiques) if c.instructions]
        gains: dict[int, tuple[float, float]] = {}
        edits: dict[int, Edit] = {}
        if edited:
            for k in edited:
                edits[k] = self.editor.apply(images[k], critiques[k], texts[k], seed=seeds[k])
            chosen = [texts[k] for k in edited]
            after = self.scorer.score(torch.stack([edits[k].image.float().cpu() for k in edited]), chosen)
            after = after.float().cpu().tolist()
            before = self.scorer.score(images[edited], chosen).float().cpu().tolist()
            gains = {k: (a, b) for k, a, b in zip(edited, after, before)}
        records, rows = [], {name: [] for name in RICH_PAIR_SCHEMA.names}
        for k, item in enumerate(items):
            after, before = gains.get(k, (None, None))
            gain = None if after is None else after - before
            edit_wins = gain is not None and gain > self.margin
            original_wins = gain is not None and self.relabel == "two_sided" and gain < -self.margin
            kept = edit_wins or original_wins
            winner = "edit" if edit_wins else "original" if original_wins else None
            records.append({"item": item, "prompt": texts[k], "seed": seeds[k], "kept": kept, "winner": winner,
                            "gain": gain, "reward_edit": after, "reward_original": before})
            if kept:
                mask = edits[k].mask
                row = {"caption": texts[k], "jpg_0": png_bytes(edits[k].image), "jpg_1": png_bytes(images[k]),
                       "label_0": 1.0 if edit_wins else 0.0, "critique": critiques[k].text,
                       "issues": list(critiques[k].issues), "instructions": list(critiques[k].instructions),
                       "item": item, "seed": seeds[k], "reward_0": after, "reward_1": before,
                       "edit_mask": None if mask is None else mask_png_bytes(mask)}
                for name in rows:
                    rows[name].append(row[name])
        return records, rows

    @staticmethod
    def _write_shard(path: Path, records: list[dict[str, Any]], rows: dict[str, list]) -> None:
        table = pa.table(rows, schema=RICH_PAIR_SCHEMA)
        table = table.replace_schema_metadata({METADATA_KEY: json.dumps(records).encode()})
        with atomic_file(path) as tmp:
            pq.write_table(table, tmp, row_group_size=256)

    # ------------------------------------------------------------------ the run
    def run(
        self,
        backbone: DiffusionBackbone,
        prompts: Sequence[str],
        output_dir: str | Path,
        samples_per_prompt: int = 1,
        max_pairs: int | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        progress: bool = True,
    ) -> SynthesisStats:
        """Synthesise pairs into ``output_dir``, resuming a run that was interrupted there.

        Args:
            backbone: The model that samples the originals (policy, or its base with ``sample_from="base"``); also
                attached to the editor, which may reuse its components.
            prompts: The prompts; item ``i`` uses ``prompts[i % len(prompts)]``.
            output_dir: Folder of the shards (created; an earlier run with the same parameters is resumed).
            samples_per_prompt: Items per prompt: ``len(prompts) * samples_per_prompt`` items in all.
            max_pairs: Stop once this many pairs are kept (exactly this many are written); ``None``: every item.
            seed: Item ``i`` samples with seed ``seed + i``.
            rank: This process's rank when several processes share the items (item ``i`` belongs to rank
                ``i % world_size``); they write into the same folder.
            world_size: Number of processes sharing the items; ``max_pairs`` then counts this rank's pairs.
            progress: Show a progress bar.

        Returns:
            This rank's statistics over all its finished items (earlier runs included), ``seconds`` being this
            call's wall time. With ``world_size == 1`` a complete run also writes ``_stats.json`` (see
            :meth:`finish`).
        """
        if not prompts:
            raise ValueError("no prompts to synthesise pairs for")
        if samples_per_prompt < 1:
            raise ValueError(f"samples_per_prompt must be at least 1, got {samples_per_prompt}")
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        self._check_parameters(output_dir, self.parameters(prompts, samples_per_prompt, seed))
        start = time.perf_counter()
        mine = list(range(rank, len(prompts) * samples_per_prompt, world_size))
        done = {i: r for i, r in read_items(output_dir).items() if i % world_size == rank}
        todo = [i for i in mine if i not in done]
        kept = sum(r["kept"] for r in done.values())
        self.editor.attach(backbone)
        was_training = backbone.training
        backbone.eval()
        bar = tqdm(total=len(mine), initial=len(done), desc="synthesize pairs", disable=not progress, unit="item")
        try:
            for begin in range(0, len(todo), self.batch_size):
                if max_pairs is not None and kept >= max_pairs:
                    break
                items = todo[begin:begin + self.batch_size]
                records, rows = self._process(backbone, items, prompts, seed)
                if max_pairs is not None and kept + len(rows["item"]) > max_pairs:
                    # Commit the items up to the one that reaches max_pairs; the rest stay to do.
                    last = rows["item"][max_pairs - kept - 1]
                    records = [r for r in records if r["item"] <= last]
                    rows = {name: values[:max_pairs - kept] for name, values in rows.items()}
                self._write_shard(output_dir / f"part-{items[0]:07d}.parquet", records, rows)
                for record in records:
                    done[record["item"]] = record
                kept += len(rows["item"])
                bar.update(len(records))
                stats = summarise(list(done.values()))
                bar.set_postfix(kept=stats.kept, proposed=stats.proposed, mean_gain=f"{stats.mean_gain:.3g}")
        finally:
            bar.close()
            backbone.train(was_training)
        stats = summarise(list(done.values()), seconds=time.perf_counter() - start)
        complete = len(done) == len(mine) or (max_pairs is not None and kept >= max_pairs)
        if complete and world_size == 1:
            self.finish(output_dir)
        return stats

    @staticmethod
    def finish(output_dir: str | Path) -> SynthesisStats:
        """Mark a run complete: write the statistics of every shard of ``output_dir`` to ``_stats.json`` (after all
        ranks finished their :meth:`run`), and return them."""
        stats = summarise(list(read_items(output_dir).values()))
        record = {k: v for k, v in asdict(stats).items() if k != "seconds"}
        with atomic_file(Path(output_dir) / STATS_FILE) as tmp:
            tmp.write_text(json.dumps(record, indent=2))
        return stats


def resolve_prompts(prompts: Sequence[str] | str) -> list[str]:
    """A prompt list as given, or read from a prompt file (``.txt``, ``.jsonl``, ``.parquet`` with a ``caption``
    column; see ``lit_pref.datamodules.prompts.read_prompts``), or ``"toy:train"`` / ``"toy:heldout"`` / ``"toy:all"`` for
    the toy world's caption lists (shipped as ``lit_pref/assets/toy/prompts/<split>.txt``, as the ``"toy"`` model
    is shipped as a folder)."""
    if not isinstance(prompts, str):
        return list(prompts)
    if prompts.startswith("toy:"):
        split = prompts.removeprefix("toy:")
        if split not in TOY_SPLITS:
            raise ValueError(f"unknown toy prompt list {prompts!r}; expected one of "
                             f"{', '.join('toy:' + s for s in TOY_SPLITS)}")
        return read_prompts(TOY_PROMPTS / f"{split}.txt")
    return read_prompts(prompts)
