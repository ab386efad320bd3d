"""Evaluation on sampled images: reward means per scorer, and the policy's win rate against the reference; each
can log a grid of the evaluated samples with their scores. Samples are drawn and scored ``batch_size`` at a time
(``lit_pref.sampling.sample_and_score``, as ``python -m lit_pref evaluate`` does), so 100 samples never go through
the VAE at once."""

from __future__ import annotations

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor
from tqdm.auto import tqdm

from lit_pref.callbacks.sample_grid import captioned_grid, log_image
from lit_pref.datamodules.prompts import read_prompts
from lit_pref.rewards import Scorer, win_rate
from lit_pref.rewards.win_rate import WinRate as WinRateResult
from lit_pref.sampling import sample_and_score


class _Evaluation(Callback):
    """Shared by the evaluation callbacks: fixed prompts, fixed seeds, evaluated at the end of each validation
    and, with ``every_n_steps``, every that many optimizer steps (for runs without validation data); the first
    ``grid_images`` samples (one of each prompt first) are logged as an image grid with their scores."""

    def __init__(
        self,
        scorers: dict[str, Scorer],
        prompts: list[str] | str,
        num_images_per_prompt: int = 4,
        num_inference_steps: int = 20,
        guidance_scale: float = 5.0,
        seed: int = 0,
        every_n_steps: int | None = None,
        grid_images: int = 8,
        batch_size: int = 32,
    ) -> None:
        """
        Args:
            scorers: Name -> scorer (any ``lit_pref.rewards.Scorer``); the name goes into the metric name.
            prompts: Evaluation prompts (held-out ones, ideally), or a prompt file (``.txt`` one a line, ``.jsonl``,
                ``.parquet``; :func:`lit_pref.datamodules.prompts.read_prompts`) such as the shipped
                ``configs/prompts/toy_heldout.txt``; win-rate intervals resample them.
            num_images_per_prompt: Samples per prompt, each with its own fixed seed (shared by policy and base).
            num_inference_steps: DDIM steps.
            guidance_scale: Classifier-free guidance scale.
            seed: Seed of the first sample's noise; the others follow.
            every_n_steps: Also evaluate every this many optimizer steps (``None``: only after validation).
            grid_images: Evaluated samples (for ``WinRate``: policy / reference pairs) logged to TensorBoard as an
                image grid with their scores written under them, one sample of every prompt first; 0 logs none.
            batch_size: Images sampled at once (the same images for any value: every image has its own noise).
        """
        prompts = read_prompts(prompts) if isinstance(prompts, str) else prompts
        if not scorers or not prompts:
            raise ValueError("need at least one scorer and one prompt")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if grid_images < 0:
            raise ValueError(f"grid_images must be >= 0, got {grid_images}")
        self.batch_size = batch_size
        self.scorers = scorers  # held here, never registered on the LightningModule
        self.texts = [p for p in prompts for _ in range(num_images_per_prompt)]
        self.num_inference_steps = num_inference_steps
        self.guidance_scale = guidance_scale
        self.seed = seed
        self.every_n_steps = every_n_steps
        self.batch_size = batch_size
        # sample i is repeat i % n of prompt i // n: repeat 0 of every prompt first, then repeat 1, ...
        n = num_images_per_prompt
        self.grid_indices = sorted(range(len(self.texts)), key=lambda i: (i % n, i // n))[:grid_images]
        self._last_step: int | None = None

    def sample_and_score(self, pl_module: LightningModule, desc: str = "evaluation") -> tuple[dict[str, Tensor], Tensor]:
        """Scores (name -> (N,) on the CPU) of every (prompt, repeat) and the grid's images in grid order; image i
        always starts from the noise of seed + i. Sampled in eval mode (no LoRA dropout), also during training, and
        ``batch_size`` images at a time. A progress bar (``desc``) counts the images when the Trainer shows one."""
        trainer = pl_module._trainer
        quiet = trainer is None or trainer.progress_bar_callback is None or not trainer.is_global_zero
        modes = {module: module.training for module in pl_module.modules()}
        pl_module.eval()
        try:
            with tqdm(total=len(self.texts), desc=desc, unit="img", leave=False, disable=quiet) as bar:
                scores, kept = sample_and_score(
                    pl_module.backbone, self.texts, [self.seed + i for i in range(len(self.texts))], self.scorers,
                    self.batch_size, self.num_inference_steps, self.guidance_scale, keep=set(self.grid_indices),
                    on_batch=bar.update)
        finally:
            for module, training in modes.items():  # every module's own mode back, as Lightning's loops do
                module.training = training
        grid = torch.stack([kept[i] for i in self.grid_indices]) if self.grid_indices else torch.zeros(0)
        return scores, grid

    def evaluate(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, float]:
        """Sample, score, log the grid; returns the metrics (name -> value)."""
        raise NotImplementedError

    def caption(self, i: int, scores: dict[str, Tensor], label: str = "") -> str:
        """Grid caption of sample ``i``: ``label`` and its prompt, then a line ``<scorer> <score>`` per scorer."""
        return "\n".join([f"{label}{self.texts[i]}", *(f"{name} {s[i].item():.3f}" for name, s in scores.items())])

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:  # with the validation metrics, so a checkpoint can monitor eval/*
            for name, value in self.evaluate(trainer, pl_module).items():
                pl_module.log(name, value, sync_dist=True)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if self.every_n_steps and step % self.every_n_steps == 0 and self._last_step != step:
            self._last_step = step
            metrics = self.evaluate(trainer, pl_module)
            # Straight to the loggers: a value self.log-ged here would be written only at multiples of
            # log_every_n_steps, and again at every later one. The step is the one Lightning gives this batch's
            # train/* and a validation run after it (global_step - 1), so eval/* lines up with val/*.
            if trainer.is_global_zero:
                for logger in trainer.loggers:
                    logger.log_metrics(metrics, step=step - 1)
            # Also where callbacks look (a ModelCheckpoint monitoring eval/*, early stopping), on every process.
            trainer.callback_metrics.update({name: torch.tensor(value) for name, value in metrics.items()})


class RewardMetrics(_Evaluation):
    """Log ``eval/<name>`` (mean) and ``eval/<name>_std`` of every scorer on fixed-seed samples of the policy.

    The same names for every method, so runs overlay in TensorBoard.

    Grid: ``eval/samples``, four samples a row.
    """

    def evaluate(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, float]:
        scores, grid = self.sample_and_score(pl_module, "reward metrics: samples")
        metrics = {}
        for name, s in scores.items():
            metrics[f"eval/{name}"] = s.mean().item()
            metrics[f"eval/{name}_std"] = s.std().item() if len(s) > 1 else 0.0
        if self.grid_indices:
            captions = [self.caption(i, scores) for i in self.grid_indices]
            log_image(trainer, "eval/samples", captioned_grid(grid, captions, nrow=4))
        return metrics


class WinRate(_Evaluation):
    """Log ``eval/win_rate_vs_base/<name>`` and its bootstrap 95% interval (``.../<name>_low``, ``_high``): the policy
    against the reference (adapters off) on the same prompts and initial noise, ties counting 0.5.

    Grid: ``eval/win_rate_vs_base/samples``, two policy | reference pairs a row, both with their scores.

    After an evaluation, ``results`` holds each scorer's :class:`lit_pref.rewards.win_rate.WinRate` (rate, interval,
    counts) and ``results_step`` the step it was taken at (what the end-of-run summary prints).
    """

    results: dict[str, WinRateResult] = {}  # replaced (never changed in place) by each evaluation
    results_step: int | None = None

    def evaluate(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, float]:
        policy_scores, policy = self.sample_and_score(pl_module, "win rate: policy samples")
        with pl_module.backbone.reference_forward():
            base_scores, base = self.sample_and_score(pl_module, "win rate: base samples")
        metrics, results = {}, {}
        for name in self.scorers:
            result = win_rate(policy_scores[name], base_scores[name], groups=self.texts)
            metrics[f"eval/win_rate_vs_base/{name}"] = result.rate
            metrics[f"eval/win_rate_vs_base/{name}_low"] = result.low
            metrics[f"eval/win_rate_vs_base/{name}_high"] = result.high
            results[name] = result
        self.results, self.results_step = results, trainer.global_step
        if self.grid_indices:
            pairs = torch.stack([policy, base], dim=1).flatten(0, 1)
            captions = [c for i in self.grid_indices
                        for c in (self.caption(i, policy_scores, "policy: "), self.caption(i, base_scores, "base: "))]
            log_image(trainer, "eval/win_rate_vs_base/samples", captioned_grid(pairs, captions, nrow=4))
        return metrics
