"""Quality of the shipped toy world: the base model judged on held-out prompts, and toy-CLIP retrieval.

    python bench/toy_quality.py [--seeds 8] [--steps 25] [--guidance 4.0]

Held-out prompts are the 12 colour-shape combinations never seen in pre-training (lit_pref.toy.world).
"""

from __future__ import annotations


import open_clip
from jsonargparse import ActionConfigFile, ArgumentParser
import torch

from lit_pref.toy.world import parse_caption, prompts
from lit_pref.toy.images import ToyImageDataset
from lit_pref.backbone import DiffusionBackbone
from lit_pref.backbone.backbone import TOY_PIPELINE
from lit_pref.toy import ToyJudge
from lit_pref.toy.pretrain.clip import OPENAI_MEAN, OPENAI_STD

TOY_CLIP = TOY_PIPELINE.parent / "clip"


def judge_accuracy(backbone: DiffusionBackbone, split: str, seeds: int, steps: int, guidance: float) -> dict:
    """Fraction of samples whose colour / shape / size / background the judge reads as the caption says."""
    texts = [p for p in prompts(split) for _ in range(seeds)]
    generators = [torch.Generator().manual_seed(i) for i in range(len(texts))]
    images = torch.cat([
        backbone.sample(texts[i:i + 64], num_inference_steps=steps, guidance_scale=guidance,
                        generator=generators[i:i + 64])
        for i in range(0, len(texts), 64)
    ])
    readings = ToyJudge().read(images)
    hits = {k: 0 for k in ("colour", "shape", "size", "background")}
    for text, reading in zip(texts, readings):
        want = parse_caption(text)
        for key in hits:
            hits[key] += getattr(reading, key) == getattr(want, key)
    return {k: v / len(texts) for k, v in hits.items()} | {"n": len(texts)}


@torch.no_grad()
def clip_retrieval(num_images: int = 240) -> float:
    """Text-to-image retrieval top-1 over held-out images: each caption must rank its own image first."""
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{TOY_CLIP}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{TOY_CLIP}")
    data = ToyImageDataset(num_images, split="heldout", seed=123)
    items = [data[i] for i in range(num_images)]
    mean, std = torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1), torch.tensor(OPENAI_STD).view(1, 3, 1, 1)
    images = ((torch.stack([it["pixel_values"] for it in items]) + 1) / 2 - mean) / std
    captions = [it["caption"] for it in items]
    img = model.encode_image(images, normalize=True)
    txt = model.encode_text(tokenizer(captions), normalize=True)
    best = (txt @ img.T).argmax(dim=1)
    # Images with the same caption are equally right answers.
    return sum(captions[j] == captions[i] for i, j in enumerate(best.tolist())) / num_images


def main() -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML file with any of the options below")
    parser.add_argument("--seeds", type=int, default=8, help="samples per prompt")
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps")
    parser.add_argument("--guidance", type=float, default=4.0, help="classifier-free guidance scale")
    args = parser.parse_args()
    backbone = DiffusionBackbone(model="toy").eval()
    for split in ("heldout", "train"):
        acc = judge_accuracy(backbone, split, args.seeds, args.steps, args.guidance)
        print(f"base model, {split} prompts, {acc['n']} samples: colour {acc['colour']:.1%}  shape {acc['shape']:.1%}  "
              f"size {acc['size']:.1%}  background {acc['background']:.1%}")
    n_captions = len(prompts("heldout"))
    print(f"toy CLIP text->image retrieval top-1 on held-out images: {clip_retrieval():.1%} "
          f"(chance about {1 / n_captions:.1%} by caption)")


if __name__ == "__main__":
    main()
