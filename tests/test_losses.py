"""Diffusion-DPO loss against values derived by hand from docs/methods.md §1.

Hand derivation for the fixed batch below (beta = 100, so beta' = beta / 2 = 50):
  logits = (r_w - r_l) - (e_w - e_l)
    pair 0: (0.11 - 0.11) - (0.10 - 0.12) = +0.02  -> inside = 50 * 0.02 = +1.0
    pair 1: (0.20 - 0.18) - (0.20 - 0.15) = -0.03  -> inside = 50 * -0.03 = -1.5
  sigmoid: -logsigmoid(x) = log(1 + exp(-x)):  log(1 + e^-1) = 0.31326168751822286,
           log(1 + e^1.5) = 1.7014132779827524;  mean = 1.0073374827504876
  (the wrong "loss of the batch mean" would be log(1 + e^0.25) = 0.8259394198788436)
  hinge:   relu(1 - inside) = [0, 2.5];  mean = 1.25
  ipo:     (logits - 1/(2 beta'))^2 = (0.02 - 0.01)^2, (-0.03 - 0.01)^2 = 1e-4, 1.6e-3;  mean = 8.5e-4
  implicit_acc = mean([1, 0]) = 0.5;  margin = mean(inside) = -0.25
  model_mse = mean(0.10, 0.20, 0.12, 0.15) = 0.1425;  ref_mse = mean(0.11, 0.20, 0.11, 0.18) = 0.15
  d loss / d e_w[0] (sigmoid) = beta' * sigmoid(-inside_0) / B = 25 / (1 + e) = 6.723535534249878
"""

from __future__ import annotations

import math

import pytest
import torch

from lit_pref.losses import DiffusionDPOLoss, PairLoss, diffusion_dpo_loss


def batch(requires_grad: bool = False):
    t = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    e_w, e_l = t(0.10, 0.20), t(0.12, 0.15)
    e_w.requires_grad_(requires_grad)
    return e_w, e_l, t(0.11, 0.20), t(0.11, 0.18)


def test_sigmoid_loss_is_mean_of_per_pair_losses():
    loss, stats = diffusion_dpo_loss(*batch(), beta=100.0, loss_type="sigmoid")
    assert loss.item() == pytest.approx(1.0073374827504876, abs=1e-12)
    assert loss.item() != pytest.approx(0.8259394198788436, abs=1e-3)  # logsigmoid of the batch mean
    assert stats["implicit_acc"].item() == pytest.approx(0.5)
    assert stats["margin"].item() == pytest.approx(-0.25, abs=1e-12)
    assert stats["model_mse"].item() == pytest.approx(0.1425, abs=1e-12)
    assert stats["ref_mse"].item() == pytest.approx(0.15, abs=1e-12)


def test_hinge_and_ipo_losses():
    hinge, _ = diffusion_dpo_loss(*batch(), beta=100.0, loss_type="hinge")
    ipo, _ = diffusion_dpo_loss(*batch(), beta=100.0, loss_type="ipo")
    assert hinge.item() == pytest.approx(1.25, abs=1e-12)
    assert ipo.item() == pytest.approx(8.5e-4, abs=1e-12)


def test_gradient_flows_through_model_errors_by_hand():
    e_w, e_l, r_w, r_l = batch(requires_grad=True)
    loss, _ = diffusion_dpo_loss(e_w, e_l, r_w, r_l, beta=100.0)
    loss.backward()
    assert e_w.grad[0].item() == pytest.approx(25 / (1 + math.e), rel=1e-12)


def test_equal_policy_and_reference_gives_ln2_and_half_accuracy():
    e = torch.rand(5)
    loss, stats = diffusion_dpo_loss(e, e.flip(0), e, e.flip(0), beta=5000.0)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-7)
    assert stats["implicit_acc"].item() == pytest.approx(0.5)  # inside == 0 counts 0.5


def test_beta_accepts_integer_and_float_the_same():
    assert diffusion_dpo_loss(*batch(), beta=100)[0].item() == diffusion_dpo_loss(*batch(), beta=100.0)[0].item()


def test_bad_inputs_raise():
    e_w, e_l, r_w, r_l = batch()
    with pytest.raises(ValueError, match="loss_type"):
        diffusion_dpo_loss(e_w, e_l, r_w, r_l, loss_type="kto")
    with pytest.raises(ValueError, match="1-D"):
        diffusion_dpo_loss(e_w[None], e_l[None], r_w[None], r_l[None])


def test_loss_component_wraps_the_function():
    loss_fn = DiffusionDPOLoss(beta=100.0, loss_type="hinge")
    assert isinstance(loss_fn, PairLoss)
    assert loss_fn(*batch())[0].item() == pytest.approx(1.25, abs=1e-12)
