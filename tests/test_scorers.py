"""LAION aesthetic v2 and open_clip CLIP score: checkpoint layout, formulas computed by hand, toy-CLIP behaviour."""

from __future__ import annotations

import json
from types import SimpleNamespace

import open_clip
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from lit_pref.toy import ToyImageDataset
from lit_pref.rewards import AestheticScorer, CLIPScore
from lit_pref.rewards.aesthetic import AestheticMLP
from lit_pref.rewards.clip_score import clip_preprocess

TOY_CLIP = "local-dir:lit_pref/assets/toy/clip"
OFFICIAL_SHAPES = {
    "layers.0.weight": (1024, 768), "layers.0.bias": (1024,),
    "layers.2.weight": (128, 1024), "layers.2.bias": (128,),
    "layers.4.weight": (64, 128), "layers.4.bias": (64,),
    "layers.6.weight": (16, 64), "layers.6.bias": (16,),
    "layers.7.weight": (1, 16), "layers.7.bias": (1,),
}


def official_head() -> nn.Module:
    """The documented architecture of ``sac+logos+ava1-l14-linearMSE.pth``, built independently of our code."""
    torch.manual_seed(0)
    m = nn.Module()
    m.layers = nn.Sequential(nn.Linear(768, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
                             nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))
    return m


@pytest.fixture(scope="module")
def tiny_clip_768(tmp_path_factory):
    """A tiny random open_clip CLIP whose embedding is 768 wide, saved in the open_clip local-dir layout."""
    path = tmp_path_factory.mktemp("clip768")
    cfg = {"embed_dim": 768,
           "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    torch.manual_seed(1)
    model = open_clip.CLIP(**cfg)
    pre = {"size": 32, "mean": list(open_clip.OPENAI_DATASET_MEAN), "std": list(open_clip.OPENAI_DATASET_STD),
           "interpolation": "bicubic", "resize_mode": "shortest"}
    (path / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": pre}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path / "open_clip_model.safetensors")
    return path


def test_aesthetic_head_loads_official_layout_strictly_with_map_location(tmp_path, monkeypatch):
    head = official_head()
    assert {k: tuple(v.shape) for k, v in head.state_dict().items()} == OFFICIAL_SHAPES
    assert {k: tuple(v.shape) for k, v in AestheticMLP().state_dict().items()} == OFFICIAL_SHAPES
    torch.save(head.state_dict(), tmp_path / "head.pth")
    save_file(head.state_dict(), tmp_path / "head.safetensors")

    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    for name in ["head.pth", "head.safetensors"]:
        mlp = AestheticMLP.from_file(tmp_path / name)
        for k, v in head.state_dict().items():
            torch.testing.assert_close(mlp.state_dict()[k], v, rtol=0, atol=0)
    assert len(calls) == 1 and calls[0]["map_location"] == "cpu" and calls[0]["weights_only"] is True


def test_aesthetic_head_rejects_extra_or_missing_keys(tmp_path):
    state = official_head().state_dict()
    extra = dict(state, **{"layers.8.weight": torch.zeros(1)})
    missing = {k: v for k, v in state.items() if k != "layers.7.bias"}
    renamed = {f"mlp.{k}": v for k, v in state.items()}  # ImageReward's prefix is not this checkpoint
    for i, bad in enumerate([extra, missing, renamed]):
        torch.save(bad, tmp_path / f"bad{i}.pth")
        with pytest.raises(RuntimeError, match="Missing key|Unexpected key"):
            AestheticMLP.from_file(tmp_path / f"bad{i}.pth")


@torch.no_grad()
def test_aesthetic_score_equals_hand_formula(tmp_path, tiny_clip_768):
    head = official_head()
    torch.save(head.state_dict(), tmp_path / "head.pth")
    scorer = AestheticScorer(str(tmp_path / "head.pth"), clip_model=f"local-dir:{tiny_clip_768}",
                             clip_pretrained=None, batch_size=2)
    torch.manual_seed(2)
    images = torch.rand(3, 3, 40, 56)  # not square, not 32: exercises resize of the shorter side + centre crop

    # By hand: open_clip's own (torchvision) eval transform per image, encode, normalise, linear layers, no activation.
    clip, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{tiny_clip_768}")
    clip.eval()
    x = torch.stack([preprocess(im) for im in images])
    assert x.shape == (3, 3, 32, 32)
    e = clip.encode_image(x)
    h = e / e.norm(dim=-1, keepdim=True)
    for i in [0, 2, 4, 6, 7]:
        h = h @ head.layers[i].weight.T + head.layers[i].bias
    expected = h[:, 0]

    got = scorer.score(images, ["ignored"] * 3)
    assert got.shape == (3,)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(expected, expected[0].expand(3))  # the images matter


def test_aesthetic_rejects_head_width_mismatch():
    with pytest.warns(UserWarning, match="random weights"), pytest.raises(ValueError, match="768"):
        AestheticScorer(None, clip_model=TOY_CLIP, clip_pretrained=None)  # the toy CLIP embeds to 64


@pytest.fixture(scope="module")
def toy_batch():
    data = ToyImageDataset(8, split="heldout")
    items = [data[i] for i in range(8)]
    images = (torch.stack([it["pixel_values"] for it in items]) + 1) / 2
    return images, [it["caption"] for it in items]


@pytest.fixture(scope="module")
def toy_scorer():
    return CLIPScore(TOY_CLIP, pretrained=None, batch_size=3)


@torch.no_grad()
def test_clip_score_equals_hand_formula_on_toy_clip(toy_scorer, toy_batch):
    images, captions = toy_batch
    model, _, _ = open_clip.create_model_and_transforms(TOY_CLIP)
    model.eval()
    tokenizer = open_clip.get_tokenizer(TOY_CLIP)
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    img = model.encode_image((images - mean) / std)  # 32 px toy images: resize and crop are the identity
    txt = model.encode_text(tokenizer(captions))
    cos = torch.nn.functional.cosine_similarity(img, txt, dim=-1)
    expected = 100 * torch.maximum(cos, torch.zeros_like(cos))
    torch.testing.assert_close(toy_scorer.score(images, captions), expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(toy_scorer.embed_images(images).norm(dim=-1), torch.ones(8))
    torch.testing.assert_close(toy_scorer.embed_texts(captions).norm(dim=-1), torch.ones(8))


def test_clip_score_prefers_matching_captions(toy_scorer, toy_batch):
    images, captions = toy_batch
    wrong = captions[1:] + captions[:1]
    assert all(w != c for w, c in zip(wrong, captions))
    match, mismatch = toy_scorer.score(images, captions), toy_scorer.score(images, wrong)
    assert (match > mismatch).float().mean() >= 0.75, (match, mismatch)
    assert match.mean() > mismatch.mean() + 5


def test_clip_score_clamps_negative_cosine_per_sample(toy_scorer, toy_batch, monkeypatch):
    images, captions = toy_batch
    u = torch.nn.functional.normalize(torch.randn(2, 64), dim=-1)
    monkeypatch.setattr(toy_scorer, "embed_images", lambda _: u)
    monkeypatch.setattr(toy_scorer, "embed_texts", lambda _: torch.stack([u[0], -u[1]]))  # cos = 1 and -1
    torch.testing.assert_close(toy_scorer.score(images[:2], captions[:2]), torch.tensor([100.0, 0.0]))


def test_clip_preprocess_matches_open_clip_transform_on_non_square_tensors():
    _, _, preprocess = open_clip.create_model_and_transforms(TOY_CLIP)
    cfg = {"size": 32, "mean": open_clip.OPENAI_DATASET_MEAN, "std": open_clip.OPENAI_DATASET_STD,
           "interpolation": "bicubic", "resize_mode": "shortest"}
    torch.manual_seed(3)
    for shape in [(3, 64, 48), (3, 37, 90), (3, 32, 32)]:
        im = torch.rand(shape)
        torch.testing.assert_close(clip_preprocess(im[None], cfg)[0], preprocess(im), rtol=1e-4, atol=1e-4)


class _OpenCLIPAsTransformers(nn.Module):
    """Duck-types the transformers CLIPModel methods that torchmetrics calls, over an open_clip model."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config = model, SimpleNamespace()

    def get_image_features(self, pixel_values):
        return self.model.encode_image(pixel_values)

    def get_text_features(self, input_ids, attention_mask):
        return self.model.encode_text(input_ids)


@torch.no_grad()
def test_relation_to_torchmetrics_clip_score(toy_scorer, toy_batch):
    """``torchmetrics.multimodal.CLIPScore`` computes the same ``100 * cos`` per pair, but:

    * it loads transformers ``CLIPModel`` checkpoints (``openai/clip-vit-large-patch14``), not open_clip ones, so
      the same weights cannot be loaded without conversion; its public API accepts a callable returning
      ``(model, processor)``, which is used here to plug the toy open_clip model in through a duck-typed adapter;
    * it clamps at 0 *after* averaging over the batch (``max(mean(100 cos), 0)``), whereas ours clamps each sample
      (``100 * max(cos, 0)``, the definition of Hessel et al. 2021). The two agree per pair and for batch means
      whenever no cosine is negative.
    """
    from torchmetrics.functional.multimodal import clip_score

    images, captions = toy_batch
    model, _, _ = open_clip.create_model_and_transforms(TOY_CLIP)
    tokenizer = open_clip.get_tokenizer(TOY_CLIP)
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(3, 1, 1)

    def processor(images=None, text=None, **_):
        if images is not None:
            return {"pixel_values": torch.stack([(im - mean) / std for im in images])}
        ids = tokenizer(text)
        return {"input_ids": ids, "attention_mask": (ids != 0).long()}

    def factory():
        return _OpenCLIPAsTransformers(model.eval()), processor

    ours = toy_scorer.score(images, captions)
    assert (ours > 0).all()  # toy CLIP, matching captions: no clamping involved
    for i in range(len(captions)):
        theirs = clip_score(images[i], captions[i], model_name_or_path=factory)
        torch.testing.assert_close(theirs, ours[i], rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(clip_score(images, captions, model_name_or_path=factory), ours.mean(),
                               rtol=1e-4, atol=1e-3)
