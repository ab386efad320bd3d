"""RichPreferenceDPO: Diffusion-DPO on pairs curated from critiques and edits (RPO, docs/methods.md §3).

RPO changes the data, not the loss: training is TrajectoryDPO's offline Diffusion-DPO on the pairs that
``lit_pref.rpo.PairSynthesizer`` writes. Offline, the pairs come from ``python -m lit_pref synthesize-pairs`` and any
``PreferencePairDataModule``. Iteratively, this module re-synthesises them from the current policy.
"""

from __future__ import annotations

import math
from typing import Any


from lit_pref.backbone import DiffusionBackbone
from lit_pref.formats.rich_pairs import read_stats, round_dir
from lit_pref.modules.trajectory_dpo import TrajectoryDPO
from lit_pref.rpo import PairSynthesizer, resolve_prompts

ROUND_SEED_STRIDE = 1_000_003  # round r samples its items with seeds synthesis_seed + r * stride + i


class RichPreferenceDPO(TrajectoryDPO):
    """Diffusion-DPO (offline, as :class:`TrajectoryDPO`) on rich preference pairs, optionally re-synthesised.

    Offline (``resynthesize_every = 0``): train on pairs synthesised beforehand, read by any
    ``PreferencePairDataModule``; the synthesis arguments below are unused.

    Iterative (``resynthesize_every = N > 0``): the module writes synthesis rounds under ``pairs_dir`` and
    ``lit_pref.datamodules.RichPreferenceDataModule`` (same ``pairs_dir``) reads the newest complete round(s) each time the
    Trainer reloads the training data (``trainer.reload_dataloaders_every_n_epochs`` must divide N). Round 0 is made
    at the start of fit (from the policy as it starts, i.e. the base), round r at the end of epoch ``r * N - 1``
    from the policy as it is then; an interrupted round resumes, a finished one is reused. The data flow one way:
    module -> files -> datamodule. With several processes each synthesises its share of the items.

    Logged at the start of each epoch, for the round it trains on: ``rpo/sampled``, ``rpo/proposed``, ``rpo/kept``,
    ``rpo/kept_edit_wins`` and ``rpo/kept_original_wins`` (which image won the kept pairs; originals win only with
    the synthesizer's two-sided relabelling), ``rpo/kept_fraction`` (kept / proposed), ``rpo/mean_gain`` (the
    scorer's mean gain of the kept pairs' winners over their losers) and ``rpo/round``.
    """

    def __init__(
        self,
        backbone: DiffusionBackbone,
        resynthesize_every: int = 0,
        synthesizer: PairSynthesizer | None = None,
        prompts: list[str] | str | None = None,
        samples_per_prompt: int = 1,
        max_pairs: int | None = None,
        pairs_dir: str | None = None,
        synthesis_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            backbone: The diffusion model with LoRA adapters (policy; adapters off = reference).
            resynthesize_every: Iterative mode: synthesise a new round of pairs from the current policy every this
                many epochs; 0: offline (the pairs come from the datamodule as they are).
            synthesizer: Iterative mode: critic, editor and relabelling scorer (``lit_pref.rpo.PairSynthesizer``).
                Held as a plain attribute, never a registered submodule.
            prompts: Iterative mode: the prompts of every round, a list or a prompt file (``.txt``, ``.jsonl``,
                ``.parquet``) or ``toy:train``.
            samples_per_prompt: Iterative mode: items per prompt in each round.
            max_pairs: Iterative mode: pairs kept per round (``None``: as many as the items give).
            pairs_dir: Iterative mode: folder of the rounds (``round-0000/``...), the datamodule's ``pairs_dir``.
            synthesis_seed: Iterative mode: round r samples item i with seed ``synthesis_seed + r * 1000003 + i``.
            kwargs: The training arguments of :class:`TrajectoryDPO` (``loss``, ``optimizer``, ``ties``,
                ``timestep_grid``, ``timestep_range``, ``seed``, ...): the per-pair draws, timesteps and loss are
                TrajectoryDPO's.
        """
        super().__init__(backbone, **kwargs)
        if resynthesize_every < 0:
            raise ValueError(f"resynthesize_every must be >= 0, got {resynthesize_every}")
        if resynthesize_every > 0:
            missing = [name for name, value in (("synthesizer", synthesizer), ("prompts", prompts),
                                                ("pairs_dir", pairs_dir)) if value is None]
            if missing:
                raise ValueError(f"resynthesize_every={resynthesize_every} needs {', '.join(missing)}")
        self.resynthesize_every = resynthesize_every
        self.synthesizer = synthesizer
        self.prompts = resolve_prompts(prompts) if prompts is not None else None
        self.samples_per_prompt = samples_per_prompt
        self.max_pairs = max_pairs
        self.pairs_dir = pairs_dir
        self.synthesis_seed = synthesis_seed

    @property
    def iterative(self) -> bool:
        return self.resynthesize_every > 0

    def synthesize_round(self, index: int) -> None:
        """Synthesise (or finish, or reuse) round ``index`` from the current policy, on every rank."""
        folder = round_dir(self.pairs_dir, index)
        if read_stats(folder) is not None:
            return
        trainer = self.trainer
        world = trainer.world_size
        max_pairs = None if self.max_pairs is None else math.ceil(self.max_pairs / world)
        self.synthesizer.run(self.backbone, self.prompts, folder, samples_per_prompt=self.samples_per_prompt,
                             max_pairs=max_pairs, seed=self.synthesis_seed + index * ROUND_SEED_STRIDE,
                             rank=trainer.global_rank, world_size=world, progress=trainer.is_global_zero)
        trainer.strategy.barrier("rpo_synthesis")
        if world > 1 and trainer.is_global_zero:
            self.synthesizer.finish(folder)
        trainer.strategy.barrier("rpo_synthesis_finished")

    # ------------------------------------------------------------------ Lightning hooks
    def on_fit_start(self) -> None:
        if not self.iterative:
            return
        reload = self.trainer.reload_dataloaders_every_n_epochs
        if reload < 1 or self.resynthesize_every % reload:
            raise ValueError(f"resynthesize_every={self.resynthesize_every} needs the Trainer to reload the training "
                             f"data in step with it: set trainer.reload_dataloaders_every_n_epochs to 1 (or a divisor "
                             f"of {self.resynthesize_every}); it is {reload}")
        self.synthesize_round(0)  # reused when it exists (a resumed run: later rounds are made at epoch ends)

    def on_train_epoch_start(self) -> None:
        if not self.iterative:
            return
        index = self.current_epoch // self.resynthesize_every
        stats = read_stats(round_dir(self.pairs_dir, index))
        if stats is None:
            return
        kept_fraction = stats.kept / stats.proposed if stats.proposed else 0.0
        values = {"sampled": stats.sampled, "proposed": stats.proposed, "kept": stats.kept,
                  "kept_edit_wins": stats.kept_edit_wins, "kept_original_wins": stats.kept_original_wins,
                  "kept_fraction": kept_fraction, "mean_gain": stats.mean_gain, "round": index}
        self.log_dict({f"rpo/{k}": float(v) for k, v in values.items()}, on_step=False, on_epoch=True)

    def on_train_epoch_end(self) -> None:
        if not self.iterative:
            return
        trainer = self.trainer
        next_epoch = self.current_epoch + 1
        if next_epoch % self.resynthesize_every:
            return
        last_epoch = trainer.max_epochs is not None and 0 < trainer.max_epochs <= next_epoch
        last_step = trainer.max_steps is not None and 0 < trainer.max_steps <= self.global_step
        if not (last_epoch or last_step):  # no round that nothing would train on
            self.synthesize_round(next_epoch // self.resynthesize_every)
