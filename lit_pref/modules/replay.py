"""A FIFO replay buffer of sampled reverse chains, grouped by prompt, for off-policy trajectory-level DPO."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from torch import Tensor


@dataclass
class TrajectoryGroup:
    """The kept trajectories of one prompt from one collection round (tensors on the CPU).

    Attributes:
        prompt: The prompt.
        latents: (n, K + 1, C, h, w) every latent of each chain, x_T first.
        log_probs: (n, K) log-probs of each step at collection time.
        rewards: (n,) the scorer's rewards of the final images.
        timesteps: (K,) the DDIM timesteps, k = 0 the noisiest.
        step: The global step at which the group was collected.
    """

    prompt: str
    latents: Tensor
    log_probs: Tensor
    rewards: Tensor
    timesteps: Tensor
    step: int


class ReplayBuffer:
    """First in, first out: holds at most ``capacity`` prompt groups; adding to a full buffer drops the oldest."""

    def __init__(self, capacity: int) -> None:
        """
        Args:
            capacity: Maximum number of prompt groups held.
        """
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.groups: deque[TrajectoryGroup] = deque(maxlen=capacity)

    def __len__(self) -> int:
        return len(self.groups)

    def add(self, group: TrajectoryGroup) -> None:
        self.groups.append(group)


def spread_ranks(num_rollouts: int, num_kept: int) -> list[int]:
    """Indices, into rollouts sorted by reward, of ``num_kept`` trajectories spread evenly over the ranks
    (the best and the worst always among them)."""
    if not 1 <= num_kept <= num_rollouts:
        raise ValueError(f"need 1 <= kept ({num_kept}) <= rollouts ({num_rollouts})")
    if num_kept == 1:
        return [0]
    return sorted({round(i * (num_rollouts - 1) / (num_kept - 1)) for i in range(num_kept)})
