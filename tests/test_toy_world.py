"""The toy world: generator, captions, judge, hidden-human reward and Bradley-Terry labeller."""

from __future__ import annotations

import math
from collections import deque

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lit_pref.datamodules.synthetic import COLOURS, SHAPES, draw_shape
from lit_pref.rewards import Scorer
from lit_pref.toy import BradleyTerryLabeller, ToyGroundTruthReward, ToyJudge
from lit_pref.toy.images import ToyImageDataModule, ToyImageDataset
from lit_pref.toy.judge import _label_components
from lit_pref.toy.world import HELDOUT_COMBOS, caption, parse_caption, prompts, render, sample_scene

R = 32


def to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    """uint8 [H, W, 3] images -> float [B, 3, H, W] in [0, 1]."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    k = torch.arange(-2, 3, dtype=torch.float32)
    g = torch.exp(-(k**2) / (2 * sigma**2))
    g = g / g.sum()
    x = F.pad(x, (2, 2, 2, 2), mode="replicate")
    x = F.conv2d(x, g.view(1, 1, 1, 5).repeat(3, 1, 1, 1), groups=3)
    return F.conv2d(x, g.view(1, 1, 5, 1).repeat(3, 1, 1, 1), groups=3)


@pytest.fixture(scope="module")
def scenes_and_images():
    rng = np.random.default_rng(2024)
    scenes = [sample_scene(rng, "train", R) for _ in range(150)] + [sample_scene(rng, "heldout", R) for _ in range(150)]
    return scenes, to_tensor([render(s, R) for s in scenes])


def accuracies(readings, scenes) -> dict[str, float]:
    return {
        k: float(np.mean([getattr(r, k) == getattr(s, k) for r, s in zip(readings, scenes)]))
        for k in ("colour", "shape", "size", "background")
    }


# ----------------------------------------------------------------------------- generator and captions


def test_dataset_is_deterministic_in_seed_and_matches_its_scene():
    a, b, c = ToyImageDataset(40, seed=0), ToyImageDataset(40, seed=0), ToyImageDataset(40, seed=1)
    items_a, items_b, items_c = [a[i] for i in range(40)], [b[i] for i in range(40)], [c[i] for i in range(40)]
    for x, y in zip(items_a, items_b):
        assert torch.equal(x["pixel_values"], y["pixel_values"]) and x["caption"] == y["caption"]
    assert [x["caption"] for x in items_a] != [x["caption"] for x in items_c]
    pixels_a = torch.stack([x["pixel_values"] for x in items_a])
    assert not torch.equal(pixels_a, torch.stack([x["pixel_values"] for x in items_c]))
    # random access gives the same item as sequential access
    assert torch.equal(a[17]["pixel_values"], items_a[17]["pixel_values"])
    item = a[5]
    assert item["pixel_values"].shape == (3, R, R) and item["pixel_values"].dtype == torch.float32
    assert item["pixel_values"].min() == -1.0 and item["pixel_values"].max() == 1.0
    scene = a.scene(5)
    expected = torch.from_numpy(render(scene, R)).permute(2, 0, 1).float() / 127.5 - 1.0
    assert torch.equal(item["pixel_values"], expected)
    assert item["caption"] == caption(scene.colour, scene.shape, scene.size, scene.background)


def test_splits_respect_heldout_combinations():
    rng = np.random.default_rng(0)
    train = {(s.colour, s.shape) for s in (sample_scene(rng, "train", R) for _ in range(3000))}
    heldout = {(s.colour, s.shape) for s in (sample_scene(rng, "heldout", R) for _ in range(300))}
    assert train.isdisjoint(HELDOUT_COMBOS)
    assert len(train) == len(COLOURS) * len(SHAPES) - 3  # every other combination does appear
    assert heldout == set(HELDOUT_COMBOS)
    assert HELDOUT_COMBOS == {("green", "triangle"), ("blue", "circle"), ("magenta", "square")}
    # the data module's splits: train items never show held-out combinations, val items only them
    dm = ToyImageDataModule(num_train=64, num_val=16, batch_size=16)
    dm.setup("fit")
    train_batch = next(iter(dm.train_dataloader()))
    val_batch = next(iter(dm.val_dataloader()))
    assert train_batch["pixel_values"].shape == (16, 3, R, R) and len(train_batch["captions"]) == 16
    parsed_train = [parse_caption(c) for c in train_batch["captions"]]
    parsed_val = [parse_caption(c) for c in val_batch["captions"]]
    assert all((p.colour, p.shape) not in HELDOUT_COMBOS for p in parsed_train)
    assert all((p.colour, p.shape) in HELDOUT_COMBOS for p in parsed_val)


def test_prompts_and_caption_round_trip():
    assert caption("red", "circle", "small", "white") == "a small red circle on a white background"
    held, train, every = prompts("heldout"), prompts("train"), prompts("all")
    assert len(held) == 12 and len(train) == 60 and len(every) == 72
    assert held == sorted(held) and train == sorted(train) and every == sorted(every)
    assert set(held).isdisjoint(train) and set(held) | set(train) == set(every)
    assert prompts("heldout") == held  # deterministic
    for text in every:
        p = parse_caption(text)
        assert p is not None and caption(p.colour, p.shape, p.size, p.background) == text
        assert ((p.colour, p.shape) in HELDOUT_COMBOS) == (text in held)
    assert parse_caption("a large blue circle on a black background").size == "large"
    for junk in ["", "a cat", "a small red circle", "a medium red circle on a white background",
                 "a small purple circle on a white background", "a small red circle on a white background please",
                 "small red circle on a white background", "a small red circle on a grey background"]:
        assert parse_caption(junk) is None, junk
    with pytest.raises(ValueError):
        prompts("test")


@pytest.mark.parametrize("resolution", [32, 64])
def test_sizes_scale_and_shapes_stay_inside(resolution):
    rng = np.random.default_rng(1)
    scale = resolution / 32
    seen = set()
    for _ in range(400):
        s = sample_scene(rng, "all", resolution)
        lo, hi = (7, 10) if s.size == "small" else (14, 20)
        assert lo * scale <= s.side <= hi * scale
        half = s.side / 2
        assert half <= s.center[0] <= resolution - half and half <= s.center[1] <= resolution - half
        seen.add((s.size, s.background, s.shape))
    assert len(seen) == 2 * 2 * 3


# ----------------------------------------------------------------------------- judge


def test_label_components_matches_bfs():
    gen = torch.Generator().manual_seed(0)
    masks = torch.rand(12, 14, 15, generator=gen) < 0.55
    labels = _label_components(masks)
    for mask, lab in zip(masks.numpy(), labels.numpy()):
        # reference: BFS with 4-connectivity
        ref = np.zeros(mask.shape, dtype=int)
        n = 0
        for start in zip(*np.nonzero(mask)):
            if ref[start]:
                continue
            n += 1
            ref[start] = n
            queue = deque([start])
            while queue:
                r, c = queue.popleft()
                for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                    rr, cc = r + dr, c + dc
                    if 0 <= rr < mask.shape[0] and 0 <= cc < mask.shape[1] and mask[rr, cc] and not ref[rr, cc]:
                        ref[rr, cc] = n
                        queue.append((rr, cc))
        assert ((lab > 0) == mask).all()
        # same partition: a bijection between label values
        pairs = set(zip(ref[mask].tolist(), lab[mask].tolist()))
        assert len(pairs) == n == len(set(lab[mask].tolist()))


def test_judge_reads_rendered_images(scenes_and_images):
    scenes, images = scenes_and_images
    readings = ToyJudge().read(images)
    acc = accuracies(readings, scenes)
    assert all(v >= 0.99 for v in acc.values()), acc
    for r, s in zip(readings, scenes):
        if s.shape == "square":  # a square's centroid is its centre
            assert abs(r.center[0] - s.center[0]) <= 0.5 and abs(r.center[1] - s.center[1]) <= 0.5
            assert abs(r.area_fraction - s.side**2 / R**2) <= (2 * s.side + 1) / R**2


def test_judge_reads_the_smallest_shapes_at_every_subpixel_offset():
    # pixel-centre sampling makes 7-8 px circles nearly fill their box (up to 0.94) and
    # small triangles up to 0.67: a plain fill-ratio rule misreads these
    cases, images = [], []
    for shape in SHAPES:
        for side in (7.0, 8.0, 10.0):
            for dy in np.arange(0, 1, 0.25):
                for dx in np.arange(0, 1, 0.25):
                    cases.append(shape)
                    images.append(draw_shape(shape, "magenta", side, (12.0 + dy, 15.0 + dx), "white", R))
    readings = ToyJudge().read(to_tensor(images))
    wrong = [(c, r.shape) for c, r in zip(cases, readings) if r.shape != c]
    assert not wrong, wrong
    assert all(r.size == "small" and r.colour == "magenta" for r in readings)


@pytest.mark.parametrize("degradation", ["blur", "noise"])
def test_judge_survives_mild_degradation(scenes_and_images, degradation):
    scenes, images = scenes_and_images
    if degradation == "blur":
        degraded = gaussian_blur(images, 0.7)
    else:
        degraded = (images + 0.05 * torch.randn(images.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    acc = accuracies(ToyJudge().read(degraded), scenes)
    assert acc["colour"] >= 0.95 and acc["shape"] >= 0.85 and acc["background"] >= 0.95, acc


def test_judge_blank_and_largest_component():
    blank = torch.stack([torch.ones(3, R, R), torch.zeros(3, R, R)])
    for r, bg in zip(ToyJudge().read(blank), ["white", "black"]):
        assert r.colour is None and r.shape is None and r.size is None and r.center is None
        assert r.background == bg and r.area_fraction == 0.0
    # a large cyan square and a small cyan circle: the square is read
    image = draw_shape("square", "cyan", 14, (9.0, 9.0), "black", R)
    image[draw_shape("circle", "cyan", 8, (25.0, 25.0), "black", R).any(-1)] = COLOURS["cyan"]
    (r,) = ToyJudge().read(to_tensor([image]))
    assert (r.colour, r.shape, r.size, r.background) == ("cyan", "square", "large", "black")
    assert r.center == pytest.approx((9.0, 9.0)) and r.area_fraction == pytest.approx(14 * 14 / R**2)


# ----------------------------------------------------------------------------- reward


def test_reward_prefers_the_matching_image_and_centred_shapes():
    reward = ToyGroundTruthReward()
    prompt = "a large green circle on a white background"
    c = (14.0, 19.0)
    images = to_tensor([
        draw_shape("circle", "green", 16, c, "white", R),
        draw_shape("circle", "red", 16, c, "white", R),  # wrong colour
        draw_shape("square", "green", 16, c, "white", R),  # wrong shape
        draw_shape("circle", "green", 8, c, "white", R),  # wrong size
        draw_shape("circle", "green", 16, c, "black", R),  # wrong background
    ])
    s = reward(images, [prompt] * 5)
    assert s.shape == (5,) and s.dtype == torch.float32
    assert (s[0] > s[1:]).all(), s
    centred = to_tensor([
        # a triangle's centroid lies 1/6 of its height below its box centre
        draw_shape("triangle", "blue", 14, (16.0 - 14 / 6, 16.0), "black", R),
        draw_shape("triangle", "blue", 14, (7.0, 7.0), "black", R),  # same shape in a corner
    ])
    s = reward(centred, ["a large blue triangle on a black background"] * 2)
    assert s[0] > s[1]
    comps = reward.components(centred, ["a large blue triangle on a black background"] * 2)
    assert comps["colour_match"].tolist() == [1.0, 1.0] and comps["shape_match"].tolist() == [1.0, 1.0]
    assert comps["centredness"][0] > 0.95 and comps["centredness"][1] < 0.6


def test_reward_components_sum_to_score_and_hand_values():
    weights = dict(colour_weight=1.5, shape_weight=0.7, size_weight=0.3, background_weight=0.2, taste_weight=2.0)
    reward = ToyGroundTruthReward(**weights)
    rng = np.random.default_rng(5)
    scenes = [sample_scene(rng, "all", R) for _ in range(16)]
    images = to_tensor([render(s, R) for s in scenes])
    prompts_ = [prompts("all")[i] for i in rng.integers(72, size=16)]
    comps = reward.components(images, prompts_)
    assert set(comps) == {"colour_match", "shape_match", "size_match", "background_match", "centredness"}
    total = (1.5 * comps["colour_match"] + 0.7 * comps["shape_match"] + 0.3 * comps["size_match"]
             + 0.2 * comps["background_match"] + 2.0 * comps["centredness"])
    torch.testing.assert_close(reward.score(images, prompts_), total)

    # by hand, default weights (1, 1, 0.5, 0.5, 1):
    default = ToyGroundTruthReward()
    image = np.full((R, R, 3), 255, dtype=np.uint8)
    image[8:24, 8:24] = COLOURS["red"]  # large red square, centroid (16, 16): centredness 1
    corner = np.full((R, R, 3), 255, dtype=np.uint8)
    corner[0:8, 0:8] = COLOURS["red"]  # small red square, centroid (4, 4): centredness 1 - 12 sqrt2 / (16 sqrt2) = 0.25
    blank = np.full((R, R, 3), 255, dtype=np.uint8)
    batch = to_tensor([image, image, image, corner, blank])
    texts = ["a large red square on a white background",  # 1 + 1 + 0.5 + 0.5 + 1
             "a small blue square on a black background",  # shape only: 1 + 1
             "a cat",  # no fidelity: centredness only
             "a small red square on a white background",  # 1 + 1 + 0.5 + 0.5 + 0.25
             "a small red square on a white background"]  # background only: 0.5
    torch.testing.assert_close(default(batch, texts), torch.tensor([4.0, 2.0, 1.0, 3.25, 0.5]))
    assert issubclass(ToyGroundTruthReward, Scorer)


# ----------------------------------------------------------------------------- labeller


class ValueScorer(Scorer):
    """Reward = the image's first pixel (so tests can set rewards exactly)."""

    def score(self, images, prompts):
        return images[:, 0, 0, 0].float()


def as_images(values: torch.Tensor) -> torch.Tensor:
    return values.float().view(-1, 1, 1, 1).expand(-1, 3, 2, 2).contiguous()


def test_labeller_temperature_zero_and_ties():
    gen = torch.Generator().manual_seed(1)
    r0, r1 = torch.rand(500, generator=gen), torch.rand(500, generator=gen)
    lab = BradleyTerryLabeller(ValueScorer(), temperature=0.0)
    prompts_ = [""] * 500
    assert torch.equal(lab.label(as_images(r0), as_images(r1), prompts_), (r0 > r1).float())
    assert torch.equal(lab.label(as_images(r1), as_images(r0), prompts_), (r1 > r0).float())

    # ties exactly when |delta| <= margin (0.25 and 0.5 are exact in float32)
    r0 = torch.tensor([0.5, 0.5, 0.5, 0.5, 0.5, 0.9, 0.1])
    r1 = torch.tensor([0.25, 0.75, 0.5, 0.2, 0.8, 0.5, 0.5])
    for temperature in (0.0, 0.25):
        labels = BradleyTerryLabeller(ValueScorer(), temperature=temperature, tie_margin=0.25).label(
            as_images(r0), as_images(r1), [""] * 7)
        assert (labels[:3] == 0.5).all(), labels
        assert ((labels[3:] == 0.0) | (labels[3:] == 1.0)).all(), labels
    # with the real reward: the matching image always wins a noiseless annotator
    real = BradleyTerryLabeller(ToyGroundTruthReward(), temperature=0.0)
    good = to_tensor([draw_shape("square", "yellow", 16, (16.0, 16.0), "black", R)])
    bad = to_tensor([draw_shape("square", "cyan", 16, (16.0, 16.0), "black", R)])
    p = ["a large yellow square on a black background"]
    assert real.label(good, bad, p).tolist() == [1.0] and real.label(bad, good, p).tolist() == [0.0]


@pytest.mark.parametrize("delta", [0.3, -0.1])
def test_labeller_win_frequency_is_bradley_terry(delta):
    n, temperature = 20_000, 0.25
    lab = BradleyTerryLabeller(ValueScorer(), temperature=temperature, seed=3)
    r0 = torch.full((n,), 0.5 + delta)
    labels = lab.label(as_images(r0), as_images(torch.full((n,), 0.5)), [""] * n)
    p = 1 / (1 + math.exp(-delta / temperature))
    assert set(labels.unique().tolist()) <= {0.0, 1.0}
    assert abs(labels.mean().item() - p) <= 4 * math.sqrt(p * (1 - p) / n), (labels.mean().item(), p)


def test_labeller_is_deterministic_in_seed():
    gen = torch.Generator().manual_seed(2)
    a, b = as_images(torch.rand(200, generator=gen)), as_images(torch.rand(200, generator=gen))
    p = [""] * 200

    def run(seed):
        lab = BradleyTerryLabeller(ValueScorer(), temperature=0.5, seed=seed)
        torch.manual_seed(seed + 100)  # the global RNG must not matter
        return torch.cat([lab.label(a, b, p), lab.label(a, b, p)])

    first = run(0)
    assert torch.equal(first, run(0))
    assert not torch.equal(first, run(1))
    assert not torch.equal(first[:200], first[200:])  # the generator advances between calls
    lab = BradleyTerryLabeller(ValueScorer(), temperature=0.5, seed=0)
    lab.label(a, b, p)
    lab.reset()
    assert torch.equal(lab.label(a, b, p), first[:200])


def test_judge_reads_soft_cornered_squares_as_squares():
    """Generated squares have soft corners (fill ratio 0.81-0.98 measured on toy-model samples): the corner
    rule reads them as squares, where a fill-ratio rule (square above 0.95) read circles."""
    import torchvision.transforms.functional as TF

    image = torch.ones(1, 3, 32, 32)
    image[:, :, 8:16, 8:16] = torch.tensor([1.0, 0.0, 1.0]).view(1, 3, 1, 1)  # an 8 px magenta square on white
    blurred = TF.gaussian_blur(image, 5, 1.0)  # the blur eats the corners: fill ratio 0.94
    assert ToyJudge().read_tensors(blurred)["fill_ratio"].item() < 0.95
    assert ToyJudge().read(blurred)[0].shape == "square"
