"""PickScore crops the centre where transformers' CLIP image processor does: at floor((H - h) / 2), one pixel
before torchvision's round((H - h) / 2) when H - h is odd (a wrong offset moved real PickScores by up to 0.12)."""

from __future__ import annotations

import numpy as np
import torch
from transformers import AutoProcessor

from lit_pref.rewards import PickScore
from lit_pref.rewards.clip_score import clip_preprocess
from lit_pref.rewards.tiny import save_tiny_pickscore


def test_pickscore_preprocessing_equals_the_processor_at_an_odd_margin(tmp_path):
    pick = save_tiny_pickscore(tmp_path)
    scorer = PickScore(**pick)
    processor = AutoProcessor.from_pretrained(pick["processor"]).image_processor
    side = processor.crop_size["height"]
    pixels = np.random.default_rng(0).integers(0, 256, (2, side, side + 3, 3), dtype=np.uint8)  # margin 3: 1.5
    official = processor(images=list(pixels), return_tensors="pt")["pixel_values"]
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255  # the shorter side fits: no resize
    torch.testing.assert_close(clip_preprocess(images, scorer.preprocess_cfg), official, rtol=0, atol=1e-5)
    rounded = clip_preprocess(images, {**scorer.preprocess_cfg, "crop_offset": "round"})  # torchvision's offset
    assert torch.equal(rounded[..., :-1], clip_preprocess(images, scorer.preprocess_cfg)[..., 1:])
