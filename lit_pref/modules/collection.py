"""The online trajectory module's collection and update at the paper's scale, as the authors' code does it
(Shentao-YANG/Dense_Reward_T2I: ``parse_args.py``, ``train_t2i.py``, ``preference_based_policy_learner.py``,
``replay_buffer.py``).

- Collection: ``prompts_per_collection`` prompt groups (the reference's ``g_batch_size``: 1000 single prompt,
  2000 multi prompt) drawn from the whole prompt set in shuffled passes (its shuffled prompt loader; a one-prompt
  set gives that prompt every time), ``rollouts_per_prompt`` chains each, sampled ``sample_batch_size`` chains at a
  time with a progress bar. Chain j of collection round r draws its noise from its own generator seeded with
  ``(seed, r, process rank, j)``, so the chunking changes no draw. Chains go to the CPU as they are sampled, and a
  group is ranked and cut to its ``kept_per_prompt`` chains as soon as its last chain is in, so no more than a
  chunk and a group of unkept chains are ever held.
- Update: ``pairs_per_step`` comparisons, each ``num_compared`` trajectories of one replay-buffer group (the
  injected trajectory loss over them; 2 = the DPO pair, the reference's ``pl_loss_num_traj``) with its own K step
  indices (the reference draws them per micro-step of one comparison). The comparisons go through the UNet
  ``micro_batch_size`` at a time, each micro-batch's share of the loss back-propagated at once (gradient
  accumulation inside the update), so an update's memory does not grow with ``pairs_per_step``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from lit_pref.modules.replay import ReplayBuffer, TrajectoryGroup, spread_ranks
from lit_pref.rewards import Scorer

if TYPE_CHECKING:
    from lit_pref.backbone import DiffusionBackbone
    from lit_pref.modules.online_trajectory_dpo import OnlineTrajectoryDPO

Comparison = tuple[TrajectoryGroup, list[int]]  # a group and indices of its trajectories, best reward first


def _seed_state(*words: int) -> int:
    return int(np.random.SeedSequence([int(w) for w in words]).generate_state(1)[0])


def cycled_prompts(prompts: list[str], seed: int, start: int, count: int) -> list[str]:
    """Prompts ``start .. start + count - 1`` of an endless sequence of shuffled passes over ``prompts`` (pass e
    shuffled with ``(seed, e)``): every prompt once per pass, as a shuffled loader serves them."""
    if not prompts:
        raise ValueError("the prompt set is empty")
    out, orders = [], {}
    for i in range(start, start + count):
        epoch, position = divmod(i, len(prompts))
        if epoch not in orders:
            orders[epoch] = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(_seed_state(seed, epoch)))
        out.append(prompts[int(orders[epoch][position])])
    return out


@torch.no_grad()
def collect_groups(
    backbone: DiffusionBackbone,
    scorer: Scorer,
    prompts: list[str],
    rollouts_per_prompt: int,
    kept_per_prompt: int,
    sample_batch_size: int,
    generators: list[torch.Generator],
    num_inference_steps: int,
    guidance_scale: float,
    eta: float,
    step: int = 0,
    progress: bool = False,
) -> tuple[list[TrajectoryGroup], Tensor]:
    """Sample ``rollouts_per_prompt`` chains of every prompt in chunks of ``sample_batch_size`` chains, score them,
    and keep ``kept_per_prompt`` of each prompt's chains spread over its reward ranks (best first).

    Args:
        backbone: The policy.
        scorer: Ranks the final images.
        prompts: P prompts (a prompt may repeat: each is its own group).
        rollouts_per_prompt: Chains per prompt.
        kept_per_prompt: Chains kept per prompt.
        sample_batch_size: Chains sampled (and decoded and scored) at a time.
        generators: One generator per chain (P * rollouts_per_prompt, prompt-major), on the backbone's device.
        num_inference_steps: DDIM steps of a chain.
        guidance_scale: Classifier-free guidance.
        eta: DDIM eta (> 0).
        step: The global step, stored with the groups.
        progress: Show a progress bar over the chains.

    Returns:
        The P groups (CPU tensors) and the (P * rollouts_per_prompt,) rewards of every sampled chain.
    """
    texts = [p for p in prompts for _ in range(rollouts_per_prompt)]
    if len(generators) != len(texts):
        raise ValueError(f"{len(generators)} generators for {len(texts)} chains")
    if sample_batch_size < 1:
        raise ValueError(f"sample_batch_size must be at least 1, got {sample_batch_size}")
    keep = spread_ranks(rollouts_per_prompt, kept_per_prompt)
    groups, all_rewards = [], []
    pending: dict[str, list[Tensor]] = {"latents": [], "log_probs": [], "rewards": []}
    bar = tqdm(total=len(texts), desc="collect", unit="chain", leave=False, disable=not progress)
    for start in range(0, len(texts), sample_batch_size):
        chunk = texts[start:start + sample_batch_size]
        traj = backbone.sample(chunk, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, eta=eta,
                               generator=generators[start:start + sample_batch_size], return_trajectory=True)
        rewards = scorer.score(traj.images, chunk).float().cpu()
        all_rewards.append(rewards)
        pending["latents"] += list(traj.latents.cpu())
        pending["log_probs"] += list(traj.log_probs.cpu())
        pending["rewards"] += list(rewards)
        timesteps = traj.timesteps.cpu()
        del traj
        while len(pending["rewards"]) >= rollouts_per_prompt:  # a group is complete: rank it, drop the unkept
            group = {k: torch.stack(v[:rollouts_per_prompt]) for k, v in pending.items()}
            pending = {k: v[rollouts_per_prompt:] for k, v in pending.items()}
            order = group["rewards"].argsort(descending=True)[keep]
            groups.append(TrajectoryGroup(prompt=prompts[len(groups)], latents=group["latents"][order],
                                          log_probs=group["log_probs"][order], rewards=group["rewards"][order],
                                          timesteps=timesteps, step=step))
        bar.update(len(chunk))
    bar.close()
    return groups, torch.cat(all_rewards)


def draw_comparisons(buffer: ReplayBuffer, count: int, num_compared: int,
                     generator: torch.Generator | None = None) -> list[Comparison]:
    """``count`` comparisons: a uniform group among those with at least ``num_compared`` different rewards, then
    ``num_compared`` of its trajectories at random (drawn again while two rewards tie), best reward first. For
    ``num_compared = 2`` the draws are those of ``ReplayBuffer.sample_pairs``. Fewer (maybe none) when no group
    qualifies."""
    if num_compared < 2:
        raise ValueError(f"num_compared must be at least 2, got {num_compared}")
    usable = [g for g in buffer.groups if len(set(g.rewards.tolist())) >= num_compared]
    out: list[Comparison] = []
    while usable and len(out) < count:
        group = usable[int(torch.randint(len(usable), (1,), generator=generator))]
        picked = torch.randperm(len(group.rewards), generator=generator)[:num_compared].tolist()
        if len(set(group.rewards[picked].tolist())) < num_compared:
            continue
        out.append((group, sorted(picked, key=lambda i: -float(group.rewards[i]))))
    return out


def chain_log_probs(backbone: DiffusionBackbone, latents: Tensor, prompts: list[str], timesteps: Tensor,
                    steps: Tensor, guidance_scale: float, eta: float) -> tuple[Tensor, Tensor]:
    """Log-probs of stored chain steps under the policy (with grad) and the initial model (adapters off).

    Args:
        latents: (R, N + 1, C, h, w) chains.
        prompts: R prompts.
        timesteps: (N,) the chains' DDIM timesteps.
        steps: (R, K) the step indices of each row.
        guidance_scale: The chains' guidance.
        eta: The chains' DDIM eta.

    Returns:
        ``(logp_theta, logp_init)``, each (R, K): column i is row r's step ``steps[r, i]``.
    """
    device = backbone.device
    latents = latents.to(device)
    rows = torch.arange(latents.shape[0], device=device)
    steps = steps.to(device)
    size = (latents.shape[-2] * backbone.vae_scale_factor, latents.shape[-1] * backbone.vae_scale_factor)
    cond = backbone.encode_prompts(prompts, target_size=size)
    negative = backbone.encode_prompts([""] * len(prompts), target_size=size)
    args = dict(cond=cond, guidance_scale=guidance_scale, eta=eta, num_inference_steps=timesteps.numel(),
                negative_cond=negative)
    theta, init = [], []
    for i in range(steps.shape[1]):
        k = steps[:, i]
        step = (latents[rows, k], timesteps.to(device)[k], latents[rows, k + 1])
        theta.append(backbone.step_log_prob(*step, **args))
        with backbone.reference_forward():
            logp_init = backbone.step_log_prob(*step, **args)
        init.append(logp_init.clone())  # a normal tensor (one made in inference mode cannot be saved for backward)
    return torch.stack(theta, dim=1), torch.stack(init, dim=1)


def prompt_set(module: OnlineTrajectoryDPO, batch_prompts: list[str]) -> list[str]:
    """The training prompt set: the datamodule's ``prompts`` when it has them, else the batch's prompts."""
    trainer = module._trainer
    prompts = getattr(getattr(trainer, "datamodule", None), "prompts", None) if trainer is not None else None
    return list(prompts) if prompts else list(batch_prompts)


def collect(module: OnlineTrajectoryDPO, batch_prompts: list[str]) -> dict[str, float]:
    """One collection into ``module.buffer``: ``prompts_per_collection`` prompts from the prompt set (the batch's
    prompts when it is ``None``); returns the rewards' mean and standard deviation. The prompts and the chains'
    seeds depend only on the seed, the process rank and the global step (the collection round
    ``global_step // collect_every``), so a resumed run collects what an uninterrupted one would."""
    settings = module.trajectory
    seed, rank, round_ = run_seed(module), module.global_rank, module.global_step // settings.collect_every
    if settings.prompts_per_collection is None:
        prompts = list(batch_prompts)
    else:
        prompts = cycled_prompts(prompt_set(module, batch_prompts), _seed_state(seed, rank),
                                 round_ * settings.prompts_per_collection, settings.prompts_per_collection)
    count = len(prompts) * settings.rollouts_per_prompt
    chain_seed = _seed_state(seed, rank, module.global_step)
    generators = [torch.Generator(module.device).manual_seed(_seed_state(chain_seed, j)) for j in range(count)]
    trainer = module._trainer
    groups, rewards = collect_groups(
        module.backbone, module.scorer, prompts, settings.rollouts_per_prompt, settings.kept_per_prompt,
        settings.sample_batch_size or count, generators, module.num_inference_steps, module.guidance_scale,
        settings.eta, step=module.global_step,
        progress=trainer is not None and trainer.is_global_zero and trainer.progress_bar_callback is not None)
    for group in groups:
        module.buffer.add(group)
    return {"reward_mean": rewards.mean().item(), "reward_std": rewards.std().item() if len(rewards) > 1 else 0.0}


def update(module: OnlineTrajectoryDPO) -> tuple[Tensor, dict[str, Any]]:
    """One update's loss: ``pairs_per_step`` comparisons drawn from the buffer, K step indices each from
    ``module.step_weights``, ``module.loss`` on their log-probs, in micro-batches of ``micro_batch_size``
    comparisons. Every micro-batch but the last is back-propagated here (scaled by its share of the comparisons);
    the returned loss is the last one's share, for Lightning's backward, so the gradients sum to those of the
    whole-batch mean. Returns that tensor and the statistics
    (``loss``: the whole update's loss, detached; ``count``: the comparisons)."""
    settings = module.trajectory
    comparisons = draw_comparisons(module.buffer, settings.pairs_per_step, settings.num_compared)
    if not comparisons:  # every group had tied rewards: nothing to prefer
        return sum(p.sum() for p in module.trainable_parameters()) * 0.0, {"count": 0}
    timesteps = comparisons[0][0].timesteps
    weights = module.step_weights(timesteps.numel()).double()
    steps = torch.multinomial(weights.expand(len(comparisons), -1), settings.num_sampled_steps, replacement=True)
    size = settings.micro_batch_size or len(comparisons)
    total, stats, last = 0.0, [], None
    for start in range(0, len(comparisons), size):
        part = comparisons[start:start + size]
        n = settings.num_compared
        # rows: position i of every comparison of the micro-batch, then position i + 1, ... (best first)
        latents = torch.stack([g.latents[idx[i]] for i in range(n) for g, idx in part])
        prompts = [g.prompt for _ in range(n) for g, _ in part]
        part_steps = steps[start:start + size].repeat(n, 1)
        logp_theta, logp_init = chain_log_probs(module.backbone, latents, prompts, timesteps, part_steps,
                                                module.guidance_scale, settings.eta)
        # (n * C, K) rows, position-major -> (C, n, K): comparison, its chains best first, the drawn steps
        k = settings.num_sampled_steps
        loss, part_stats = module.loss(logp_theta.view(n, len(part), k).transpose(0, 1),
                                       logp_init.view(n, len(part), k).transpose(0, 1))
        share = loss * (len(part) / len(comparisons))
        total += share.detach()
        stats.append({key: v * (len(part) / len(comparisons)) for key, v in part_stats.items()})
        if start + size < len(comparisons):
            _backward(module, share)
        else:
            last = share
    merged = {key: sum(s[key] for s in stats) for key in stats[0]}
    return last, {"loss": total, "count": len(comparisons), **merged}


def _backward(module: OnlineTrajectoryDPO, loss: Tensor) -> None:
    """Back-propagate a micro-batch's loss inside an update as Lightning back-propagates the returned one: divided
    by the trainer's ``accumulate_grad_batches``, through its gradient scaler when it has one (fp16), with the
    module's non-finite check. Under DDP this only accumulates local gradients (the reducer waits for the forward's
    end), which the update's final backward all-reduces."""
    module.on_before_backward(loss)
    trainer = module._trainer
    if trainer is not None:
        loss = loss / trainer.accumulate_grad_batches
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if scaler is not None:
            loss = scaler.scale(loss)
    loss.backward()


def check_strategy(module: OnlineTrajectoryDPO) -> None:
    """Micro-batched updates back-propagate inside ``training_step``, which DeepSpeed's engine does not allow."""
    trainer = module._trainer
    settings = module.trajectory
    micro = settings.micro_batch_size is not None and settings.micro_batch_size < settings.pairs_per_step
    if micro and trainer is not None and "deepspeed" in type(trainer.strategy).__name__.lower():
        raise ValueError("trajectory.micro_batch_size < pairs_per_step needs a non-DeepSpeed strategy; use "
                         "micro_batch_size: null and the trainer's accumulate_grad_batches instead")


def run_seed(module: OnlineTrajectoryDPO) -> int:
    """The module's ``seed``, else the run's ``seed_everything`` seed (``PL_GLOBAL_SEED``), 0 without one."""
    return module.seed if module.seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))
