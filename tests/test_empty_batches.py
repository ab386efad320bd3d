"""A batch with no usable pair (all ties dropped) changes no weight, no optimizer state, no learning rate."""

from __future__ import annotations

import copy

import torch
from lightning.pytorch import Callback, Trainer
from torch.utils.data import DataLoader

from lit_pref.backbone import DiffusionBackbone
from lit_pref.losses import DiffusionDPOLoss
from lit_pref.modules import TrajectoryDPO


def batch(labels: list[float]) -> dict:
    n = len(labels)
    return {"images_0": torch.rand(n, 3, 16, 16) * 2 - 1, "images_1": torch.rand(n, 3, 16, 16) * 2 - 1,
            "label_0": torch.tensor(labels), "captions": [f"caption {i}" for i in range(n)], "num_skipped": 0}


class Snapshots(Callback):
    """After every training batch: the LoRA weights, the optimizer's state, the scheduler's step count and lr."""

    def __init__(self) -> None:
        self.weights, self.states, self.scheduler_steps, self.lrs, self.empty = [], [], [], [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.weights.append({n: p.detach().clone() for n, p in pl_module.named_parameters() if p.requires_grad})
        self.states.append(copy.deepcopy(trainer.optimizers[0].state_dict()["state"]))
        scheduler = trainer.lr_scheduler_configs[0].scheduler
        self.scheduler_steps.append(scheduler.last_epoch)
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])
        self.empty.append(float(trainer.callback_metrics.get("train/empty_batches", -1)))


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        a[i].keys() == b[i].keys() and all(torch.equal(torch.as_tensor(a[i][k]), torch.as_tensor(b[i][k])) for k in a[i])
        for i in a)


def test_a_batch_of_only_ties_changes_no_weight_no_adam_moment_and_no_lr():
    torch.manual_seed(0)
    model = TrajectoryDPO(
        DiffusionBackbone.tiny(), loss=DiffusionDPOLoss(beta=5000.0),
        optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3, weight_decay=0.1),
        scheduler=lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step)))
    batches = [batch([1.0, 0.0]), batch([0.5, 0.5]), batch([0.0, 1.0])]  # the middle one: every pair a tie
    snaps = Snapshots()
    trainer = Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, callbacks=[snaps])
    trainer.fit(model, DataLoader(batches, batch_size=None))
    (w0, w1, w2), (s0, s1, s2) = snaps.weights, snaps.states
    assert all(torch.equal(w0[k], w1[k]) for k in w0)  # bit-identical LoRA across the empty batch
    assert same_state(s0, s1)  # Adam's moments and step counts too (weight decay did not run either)
    assert snaps.scheduler_steps[1] == snaps.scheduler_steps[0] and snaps.lrs[1] == snaps.lrs[0]
    assert not all(torch.equal(w1[k], w2[k]) for k in w1) and not same_state(s1, s2)  # a real batch steps again
    assert snaps.scheduler_steps[2] == snaps.scheduler_steps[1] + 1
    assert snaps.empty == [0.0, 1.0, 1.0]
