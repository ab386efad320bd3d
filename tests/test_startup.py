"""Start-up: the methods' default collaborators are built per model, not at import (bench/startup.py times the rest)."""

from __future__ import annotations

import inspect

import pytest

import lit_pref.modules
from lit_pref.backbone import DiffusionBackbone
from lit_pref.losses import BradleyTerryLoss, DiffusionDPOLoss, UniformSteps
from lit_pref.modules import RewardModel, TrajectoryDPO


@pytest.mark.parametrize("name", lit_pref.modules.__all__)
def test_no_default_of_a_method_is_built_at_import(name):
    """jsonargparse's ``lazy_instance`` as a signature default walks the importing stack with ``inspect.stack()``
    (it scans every loaded module per frame): about 0.1 s of CPU per default, ~0.9 s of every start-up for the
    methods' nine defaults. The defaults are ``None``, built in ``__init__``."""
    cls = getattr(lit_pref.modules, name)
    built = [p.name for p in inspect.signature(cls.__init__).parameters.values()
             if type(p.default).__name__.startswith("LazyInstance_")]
    assert built == []


def test_default_losses_are_the_documented_classes_and_each_model_has_its_own():
    backbone = DiffusionBackbone.tiny()
    first, second = TrajectoryDPO(backbone), TrajectoryDPO(backbone)
    assert type(first.loss) is DiffusionDPOLoss and type(first.step_weights) is UniformSteps
    assert first.loss is not second.loss  # a default instance shared by every model would share its state
    assert type(RewardModel(clip_model="toy", clip_pretrained=None).loss) is BradleyTerryLoss
