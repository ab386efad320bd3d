"""Critics: a detailed critique of a generated image and the edit instructions that would fix it (RPO, step 1).

A :class:`Critic` looks at one image and its prompt and returns a :class:`Critique`: the critique text, the
problems it names (``issues``) and actionable edit instructions (``instructions``) for an :class:`~lit_pref.rpo.
Editor`. :class:`VLMCritic` asks a transformers vision-language model twice, with the prompt templates kept in
``lit_pref/rpo/templates/``: once for the critique (image + prompt), once to turn the critique into instructions
(text only) and, with ``grounding=True``, once more (image + instructions) for the region and kind of each instruction
(read by :func:`lit_pref.rpo.grounding.parse_grounding`). The toy world's offline critic is
:class:`lit_pref.toy.ToyCritic`.
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

from lit_pref.rpo.grounding import ISSUE_KINDS, Box, parse_grounding

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
        regions: Where each instruction acts: one list of boxes (:data:`Box`) per instruction, empty for an
            instruction without a region; an empty ``regions`` means no instruction has one.
        kinds: What each instruction changes, one of :data:`ISSUE_KINDS` per instruction; an empty ``kinds`` means
            every instruction is ``global``.
    """

    text: str
    issues: list[str] = field(default_factory=list)
    instructions: list[str] = field(default_factory=list)
    regions: list[list[Box]] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name in ("regions", "kinds"):
            values = getattr(self, name)
            if values and len(values) != len(self.instructions):
                raise ValueError(f"Critique.{name} has {len(values)} entries for {len(self.instructions)} "
                                 f"instructions; give one per instruction or none")
        unknown = sorted(set(self.kinds) - set(ISSUE_KINDS))
        if unknown:
            raise ValueError(f"Critique.kinds: unknown kind(s) {unknown}; expected one of {ISSUE_KINDS}")
        for boxes in self.regions:
            for box in boxes:
                check_box(box)

    def region(self, index: int) -> list[Box]:
        """The boxes of instruction ``index`` (empty: no region)."""
        return list(self.regions[index]) if self.regions else []

    def kind(self, index: int) -> str:
        """The kind of instruction ``index`` (``global`` when the critic gave none)."""
        return self.kinds[index] if self.kinds else "global"

    def subset(self, indices: list[int]) -> Critique:
        """The same critique restricted to the instructions ``indices`` (with their regions and kinds)."""
        return Critique(text=self.text, issues=list(self.issues),
                        instructions=[self.instructions[i] for i in indices],
                        regions=[self.region(i) for i in indices] if self.regions else [],
                        kinds=[self.kind(i) for i in indices] if self.kinds else [])


def check_box(box: Box) -> Box:
    """``box`` as floats, after checking ``0 <= top < bottom <= 1`` and ``0 <= left < right <= 1``."""
    top, left, bottom, right = (float(v) for v in box)
    if not (0.0 <= top < bottom <= 1.0 and 0.0 <= left < right <= 1.0):
        raise ValueError(f"a box is (top, left, bottom, right) with 0 <= top < bottom <= 1 and 0 <= left < right "
                         f"<= 1, got {tuple(box)}")
    return top, left, bottom, right


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

    With ``grounding=True`` a third generation (the image and ``grounding_template`` with ``{prompt}`` and the
    numbered ``{instructions}``) asks for a JSON list giving each instruction's box and kind (``local``,
    ``composition``, ``global``); the answer fills :attr:`Critique.regions` and :attr:`Critique.kinds` (see
    :func:`~lit_pref.rpo.grounding.parse_grounding`; an unreadable answer leaves every instruction ``global``
    without a region, so an inpainting editor repaints the whole image).

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
        grounding: Ask for each instruction's region and kind (a third generation per image with instructions).
        grounding_template: Path of the grounding template (must contain ``{instructions}``; may contain
            ``{prompt}``); ``None``: the shipped ``templates/grounding.txt``, which asks for Qwen2.5-VL's
            ``bbox_2d`` JSON.
        box_units: Units of the boxes the model answers with: ``pixels`` of the image it was fed (Qwen2.5-VL;
            the processor's resized size is used when it reports ``image_grid_thw``, else the image's size),
            ``thousandths`` of the image (Qwen2-VL) or ``fractions``.
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
        grounding: bool = False,
        grounding_template: str | None = None,
        box_units: Literal["pixels", "thousandths", "fractions"] = "pixels",
    ) -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.model_name = model
        self.critique_template = load_template(critique_template, "critique.txt", "{prompt}")
        self.instructions_template = load_template(instructions_template, "instructions.txt", "{critique}")
        self.grounding = grounding
        self.grounding_template = load_template(grounding_template, "grounding.txt", "{instructions}")
        self.box_units = box_units
        self.max_new_tokens = max_new_tokens
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.processor = AutoProcessor.from_pretrained(model, revision=revision)
        if getattr(self.processor, "chat_template", None) is None:
            raise ValueError(f"{model}: the processor has no chat template; VLMCritic needs an instruction-tuned "
                             "model whose processor defines one")
        self.model = AutoModelForImageTextToText.from_pretrained(model, revision=revision, dtype=DTYPES[dtype])
        self.model.to(self.device).eval().requires_grad_(False)

    @torch.no_grad()
    def ask(self, text: str, image: Image.Image | None = None, special_tokens: bool = False) -> str:
        """One greedy answer of the model to a user turn (``text``, after ``image`` if given); ``special_tokens``
        keeps special tokens in the answer (Qwen2-VL writes boxes with them). The size of the image as the model saw
        it is kept in ``self._seen_size`` (width, height)."""
        content = ([{"type": "image"}] if image is not None else []) + [{"type": "text", "text": text}]
        chat = self.processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
        kwargs = {"images": [image]} if image is not None else {}
        inputs = self.processor(text=[chat], return_tensors="pt", **kwargs).to(self.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        if image is not None:
            self._seen_size = image.size
            patch = getattr(getattr(self.processor, "image_processor", None), "patch_size", None)
            if "image_grid_thw" in inputs and isinstance(patch, int):  # Qwen2(.5)-VL: the resized input's size
                _, rows, cols = inputs["image_grid_thw"][0].tolist()
                self._seen_size = (cols * patch, rows * patch)
        output = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        answer = output[:, inputs["input_ids"].shape[1]:]
        return self.processor.batch_decode(answer, skip_special_tokens=not special_tokens)[0].strip()

    def critique(self, image: Tensor, prompt: str) -> Critique:
        text = self.ask(self.critique_template.replace("{prompt}", prompt), to_pil(image))
        request = self.instructions_template.replace("{prompt}", prompt).replace("{critique}", text)
        instructions = bullet_lines(self.ask(request))
        regions: list[list[Box]] = []
        kinds: list[str] = []
        if self.grounding and instructions:
            numbered = "\n".join(f"{k + 1}. {instruction}" for k, instruction in enumerate(instructions))
            answer = self.ask(self.grounding_template.replace("{prompt}", prompt).replace("{instructions}", numbered),
                              to_pil(image), special_tokens=True)
            regions, kinds = parse_grounding(answer, len(instructions), *self._seen_size, units=self.box_units)
        return Critique(text=text, issues=bullet_lines(text), instructions=instructions, regions=regions, kinds=kinds)
