"""Training data order that survives a restart: a seeded per-epoch sampler and a loader Lightning checkpoints.

A run resumed mid-epoch continues with the very batches the uninterrupted run would have seen next, and it
gets there by skipping indices, not by loading and throwing away the consumed part of the epoch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from torch.utils.data import DataLoader, Dataset, DistributedSampler

if TYPE_CHECKING:
    from lightning.pytorch import Trainer


class EpochSampler(DistributedSampler):
    """``DistributedSampler``'s order (a permutation seeded by ``seed + epoch``, padded to a multiple of the
    number of processes and dealt out round-robin), able to start in the middle of an epoch.

    Being a ``DistributedSampler``, Lightning leaves it in place under DDP and DeepSpeed instead of wrapping it;
    with one process (``num_replicas=1``) it is a seeded shuffle. :meth:`resume` makes the next iteration of
    that epoch skip its first ``start`` indices of this process; nothing is read for them.

    Args:
        dataset: The data set (only its length is used).
        num_replicas: Number of processes sharing the epoch.
        rank: This process's rank.
        shuffle: Permute the indices each epoch (else ``0, 1, 2, ...``).
        seed: Seed of the permutations; epoch ``e`` uses ``seed + e`` on every process.
    """

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, shuffle: bool = True,
                 seed: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self._start: tuple[int, int] | None = None  # (epoch, indices to skip), used once

    def resume(self, epoch: int, start: int) -> None:
        """Set the epoch and skip the first ``start`` indices of this process's share of it, once."""
        self.set_epoch(epoch)
        self._start = (epoch, start) if start else None

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        if self._start is not None and self._start[0] == self.epoch:
            indices = indices[self._start[1]:]
            self._start = None
        return iter(indices)


class ResumableLoader(DataLoader):
    """A training ``DataLoader`` over an :class:`EpochSampler` that Lightning saves in checkpoints.

    Lightning's fit loop stores ``state_dict()`` in every checkpoint (as it does for any loader with
    ``state_dict``/``load_state_dict``) and calls ``load_state_dict()`` before it iterates the resumed epoch.
    The state is the epoch and how many of its batches the trainer has trained on, read from the trainer's
    progress rather than counted here: the loader runs ahead of training (Lightning prefetches a batch, workers
    prefetch more). A checkpoint written at the end of an epoch resumes at the start of the next one.

    Args:
        dataset: The training data set.
        sampler: Its :class:`EpochSampler`.
        trainer: The trainer that consumes the batches (``None``: a loader outside ``fit``; it then saves the
            start of its epoch).
        **kwargs: Any other ``DataLoader`` argument (``batch_size``, ``collate_fn``, ``num_workers``, ...).
    """

    def __init__(self, dataset: Dataset, sampler: EpochSampler, trainer: Trainer | None = None, **kwargs: Any) -> None:
        super().__init__(dataset, sampler=sampler, **kwargs)
        self.trainer = trainer

    def state_dict(self) -> dict[str, int]:
        epoch, batches = self.sampler.epoch, 0
        if self.trainer is not None:
            progress = self.trainer.fit_loop.epoch_loop.batch_progress
            if progress.is_last_batch:
                epoch += 1
            else:
                batches = progress.current.processed
        sampler = self.sampler
        return {"epoch": epoch, "start": batches * self.batch_size, "num_replicas": sampler.num_replicas,
                "seed": sampler.seed, "dataset_size": len(sampler.dataset)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        sampler = self.sampler
        if state["start"]:
            saved = (state["num_replicas"], state["seed"], state["dataset_size"])
            mine = (sampler.num_replicas, sampler.seed, len(sampler.dataset))
            if saved != mine:
                raise ValueError(
                    f"the checkpoint stopped mid-epoch in a data order of {saved[2]} training rows dealt to "
                    f"{saved[0]} process(es) with seed {saved[1]}; this run has {mine[2]} rows, {mine[0]} "
                    f"process(es), seed {mine[1]}, so the consumed part of the epoch cannot be skipped. Resume "
                    "with the same data, seed and number of processes, or from an end-of-epoch checkpoint."
                )
        sampler.resume(state["epoch"], state["start"])
