"""Critics: a detailed critique of a generated image and the edit instructions that would fix it (RPO, step 1).

A :class:`Critic` looks at one image and its prompt and returns a :class:`Critique`: the critique text, the
problems it names (``issues``) and actionable edit instructions (``instructions``) for an :class:`~lit_pref.rpo.
Editor`. :class:`VLMCritic` asks a transformers vision-language model twice, with the prompt templates kept in
``lit_pref/rpo/templates/``: once for the critique (image + prompt), once to turn the critique into instructions
(text only). The toy world's offline critic is :class:`lit_pref.rpo.ToyCritic`.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor

TEMPLATES = Path(__file__).resolve().parent / "templates"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_BULLET = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s+(.*\S)\s*$")
_NOTHING = {"none", "none.", "nothing", "nothing.", "n/a", "no problems", "no problems."}


@dataclass
class Critique:
    """What a critic says about one image.

    Attributes:
        text: The critique in words.
        issues: The problems it names, one per entry (empty when the image is fine).
        instructions: Actionable edit instructions, one per entry, in the order to apply them (empty: nothing to
            edit, so no preference pair is proposed).
    """

    text: str
    issues: list[str] = field(default_factory=list)
    instructions: list[str] = field(default_factory=list)


class Critic(ABC):
    """Critiques a generated image against its prompt."""

    @abstractmethod
    def critique(self, image: Tensor, prompt: str) -> Critique:
        """Critique one image.

        Args:
            image: ``[3, H, W]`` float in ``[0, 1]``.
            prompt: The prompt the image was generated for.
        """


def bullet_lines(text: str) -> list[str]:
    """The items of the bulleted or numbered lines of ``text`` (``- a``, ``* b``, ``1. c``, ``2) d``), in order;
    items that say there is nothing (``none``, ``nothing``, ``n/a``, ``no problems``) are dropped."""
    items = []
    for line in text.splitlines():
        match = _BULLET.match(line)
        if match and match.group(1).strip().lower() not in _NOTHING:
            items.append(match.group(1).strip())
    return items


def load_template(path: str | None, default: str, placeholder: str) -> str:
    """The text of a prompt template file (``None``: the shipped ``templates/<default>``), which must contain
    ``placeholder`` (e.g. ``{prompt}``)."""
    file = TEMPLATES / default if path is None else Path(path)
    text = file.read_text(encoding="utf-8")
    if placeholder not in text:
        raise ValueError(f"prompt template {file} has no {placeholder} placeholder")
    return text


def to_pil(image: Tensor) -> Image.Image:
    """``[3, H, W]`` in ``[0, 1]`` -> an RGB PIL image."""
    array = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(np.ascontiguousarray(array))


class VLMCritic(Critic):
    """A critic on a transformers vision-language model (``AutoProcessor`` + ``AutoModelForImageTextToText``).

    Two greedy generations per image, both through the processor's chat template:

    1. critique: the image and ``critique_template`` with ``{prompt}`` replaced by the prompt;
    2. instructions: ``instructions_template`` (text only) with ``{prompt}`` and ``{critique}`` replaced.

    ``issues`` and ``instructions`` are the bulleted lines of the two answers (see :func:`bullet_lines`). The
    templates ask for one ``- `` line per item, which instruction-tuned VLMs follow (LLaVA, Idefics, Qwen2-VL).

    Args:
        model: A hub id (e.g. ``Qwen/Qwen2.5-VL-7B-Instruct``, ``llava-hf/llava-1.5-7b-hf``) or a local folder with
            the model and its processor (which must have a chat template).
        critique_template: Path of the critique prompt template (must contain ``{prompt}``); ``None``: the shipped
            ``lit_pref/rpo/templates/critique.txt``.
        instructions_template: Path of the instruction-extraction template (must contain ``{critique}``; may
            contain ``{prompt}``); ``None``: the shipped ``templates/instructions.txt``.
        max_new_tokens: Generation length limit of each answer.
        device: Device of the model; ``None``: CUDA when available, else CPU.
        dtype: Storage dtype of the model.
        revision: Hub revision of ``model``.
    """

    def __init__(
        self,
        model: str,
        critique_template: str | None = None,
        instructions_template: str | None = None,
        max_new_tokens: int = 384,
        device: str | None = None,
        dtype: Literal["float32", "bfloat16", "float16"] = "float32",
        revision: str | None = None,
    ) -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.model_name = model
        self.critique_template = load_template(critique_template, "critique.txt", "{prompt}")
        self.instructions_template = load_template(instructions_template, "instructions.txt", "{critique}")
        self.max_new_tokens = max_new_tokens
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.processor = AutoProcessor.from_pretrained(model, revision=revision)
        if getattr(self.processor, "chat_template", None) is None:
            raise ValueError(f"{model}: the processor has no chat template; VLMCritic needs an instruction-tuned "
                             "model whose processor defines one")
        self.model = AutoModelForImageTextToText.from_pretrained(model, revision=revision, dtype=DTYPES[dtype])
        self.model.to(self.device).eval().requires_grad_(False)

    @torch.no_grad()
    def ask(self, text: str, image: Image.Image | None = None) -> str:
        """One greedy answer of the model to a user turn (``text``, after ``image`` if given)."""
        content = ([{"type": "image"}] if image is not None else []) + [{"type": "text", "text": text}]
        chat = self.processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
        kwargs = {"images": [image]} if image is not None else {}
        inputs = self.processor(text=[chat], return_tensors="pt", **kwargs).to(self.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        output = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        answer = output[:, inputs["input_ids"].shape[1]:]
        return self.processor.batch_decode(answer, skip_special_tokens=True)[0].strip()

    def critique(self, image: Tensor, prompt: str) -> Critique:
        text = self.ask(self.critique_template.replace("{prompt}", prompt), to_pil(image))
        request = self.instructions_template.replace("{prompt}", prompt).replace("{critique}", text)
        instructions = bullet_lines(self.ask(request))
        return Critique(text=text, issues=bullet_lines(text), instructions=instructions)
