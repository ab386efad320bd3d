"""Editors: carry out a critic's edit instructions on an image (RPO, step 2).

An :class:`Editor` takes one image, the instructions and the prompt, and returns the edited image. The real
editors run diffusers pipelines:

- :class:`InstructPix2PixEditor`: instruction editing (``timbrooks/instruct-pix2pix``), the instructions are the
  edit text;
- :class:`Img2ImgEditor`: SDEdit, noise the image part-way and denoise it toward a corrected prompt;
- :class:`InpaintEditor`: regenerate the regions the critique points to toward a corrected prompt, keep the rest;
- :class:`~lit_pref.rpo.ControlNetEditor`: regenerate the image toward a corrected prompt under a structure
  condition (edges, depth) taken from the original.

The synthesizer calls :meth:`Editor.apply` with the whole :class:`~lit_pref.rpo.Critique` (instructions, their regions
and kinds) and gets back an :class:`Edit`: the image and, for editors that change only part of it, the mask of what
they repainted. :class:`~lit_pref.rpo.EditorChain` routes instructions to editors by their kind.

Img2Img and inpainting with ``model=None`` reuse the components of the backbone that sampled the image (the same
model, with its LoRA adapters disabled, so the editor stays the base model while the policy trains): no second
copy in memory. The toy world's offline editor is :class:`lit_pref.toy.ToyEditor`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_pref.rpo.critic import Box, Critique, check_box

if TYPE_CHECKING:
    from lit_pref.backbone import DiffusionBackbone

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Edit:
    """An editor's result.

    Attributes:
        image: The edited image, ``[3, H, W]`` float in ``[0, 1]``.
        mask: ``[1, H, W]`` float, 1 where the editor repainted and 0 where the image is the original's exactly;
            ``None`` when any pixel may have changed.
    """

    image: Tensor
    mask: Tensor | None = None


class Editor(ABC):
    """Edits a generated image following edit instructions.

    Subclasses implement :meth:`edit` (instructions in words); editors that use the critique's regions or kinds
    override :meth:`apply`, which the synthesizer calls.
    """

    def apply(self, image: Tensor, critique: Critique, prompt: str, seed: int | None = None) -> Edit:
        """Carry out a critique's instructions (non-empty); the default edits with :meth:`edit` and reports no mask.

        Args:
            image: ``[3, H, W]`` float in ``[0, 1]``.
            critique: The critique; its ``instructions`` (and, for editors that use them, ``regions`` and ``kinds``).
            prompt: The prompt the image was generated for.
            seed: Seed of the edit's randomness (see :meth:`edit`).
        """
        return Edit(self.edit(image, critique.instructions, prompt, seed))

    def attach(self, backbone: DiffusionBackbone) -> None:
        """Called by the pair synthesizer with the backbone that samples the originals, before any edit; editors
        that reuse its components (same model) take them here. The default does nothing."""

    @abstractmethod
    def edit(self, image: Tensor, instructions: list[str], prompt: str, seed: int | None = None) -> Tensor:
        """Edit one image.

        Args:
            image: ``[3, H, W]`` float in ``[0, 1]``.
            instructions: Edit instructions in words, in order (non-empty).
            prompt: The prompt the image was generated for.
            seed: Seed of the edit's randomness; the synthesizer passes the item's seed, so that a resumed run edits
                exactly as an uninterrupted one would.

        Returns:
            The edited image, ``[3, H, W]`` float in ``[0, 1]`` (same size as ``image``).
        """


def _resolve_device(device: str | None) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def _same_size(edited: Tensor, image: Tensor) -> Tensor:
    """``edited`` ``[3, h, w]`` resized (bicubic) to ``image``'s size when a pipeline rounded it, in ``[0, 1]``."""
    if edited.shape[-2:] == image.shape[-2:]:
        return edited
    return F.interpolate(edited[None], size=image.shape[-2:], mode="bicubic", align_corners=False)[0].clamp(0, 1)


def region_mask(boxes: Sequence[Box], height: int, width: int, dilation: float = 0.0) -> Tensor:
    """``[1, H, W]`` float: 1 on the union of ``boxes`` (each grown by ``dilation`` times the image's height on top
    and bottom and its width on either side, then rounded outwards to whole pixels), 0 elsewhere."""
    mask = torch.zeros(1, height, width)
    for box in boxes:
        top, left, bottom, right = check_box(box)
        rows = (max(math.floor((top - dilation) * height), 0), min(math.ceil((bottom + dilation) * height), height))
        cols = (max(math.floor((left - dilation) * width), 0), min(math.ceil((right + dilation) * width), width))
        mask[:, rows[0]:rows[1], cols[0]:cols[1]] = 1.0
    return mask


class _PipelineEditor(Editor):
    """Shared by the diffusers editors: a pipeline loaded from ``model`` or built from the attached backbone."""

    def __init__(self, model: str | None, device: str | None, dtype: str, revision: str | None,
                 variant: str | None) -> None:
        self.model = model
        self.device = _resolve_device(device)
        self.dtype = dtype
        self.revision = revision
        self.variant = variant
        self._pipeline: Any = None
        self._backbone: DiffusionBackbone | None = None

    def load(self) -> Any:
        """Load the pipeline of ``model`` (only called when ``model`` is set)."""
        raise NotImplementedError

    def from_backbone(self, backbone: DiffusionBackbone) -> Any:
        """Build the pipeline from the backbone's own components."""
        raise NotImplementedError(f"{type(self).__name__} needs a model id or folder")

    def attach(self, backbone: DiffusionBackbone) -> None:
        if self.model is None:
            self._backbone = backbone
            self._pipeline = self.from_backbone(backbone)
            self._pipeline.set_progress_bar_config(disable=True)

    @property
    def pipeline(self) -> Any:
        """The diffusers pipeline (loaded on first use when ``model`` is set)."""
        if self._pipeline is None:
            if self.model is None:
                raise RuntimeError(f"{type(self).__name__}(model=None) reuses the sampling backbone: call "
                                   "attach(backbone) first (PairSynthesizer does)")
            self._pipeline = self.load().to(self.device)
            self._pipeline.set_progress_bar_config(disable=True)
        return self._pipeline

    def _load_kwargs(self) -> dict[str, Any]:
        return dict(torch_dtype=DTYPES[self.dtype], revision=self.revision, variant=self.variant)

    def _generator(self, seed: int | None) -> torch.Generator | None:
        device = self._backbone.device if self._backbone is not None else self.device
        return None if seed is None else torch.Generator(device).manual_seed(seed)

    def _run(self, **kwargs: Any) -> Tensor:
        """Call the pipeline (the backbone's base weights when reused) and return ``[3, H, W]`` in ``[0, 1]``."""
        if self._backbone is None:
            images = self.pipeline(output_type="pt", **kwargs).images
        else:
            with self._backbone.reference_forward():
                images = self.pipeline(output_type="pt", **kwargs).images
        return images[0].float().clamp(0, 1).cpu()


def _backbone_parts(backbone: DiffusionBackbone) -> dict[str, Any]:
    from diffusers import DDIMScheduler

    parts = dict(vae=backbone.vae, text_encoder=backbone.text_encoder, tokenizer=backbone.tokenizer,
                 unet=backbone.unet, scheduler=DDIMScheduler.from_config(backbone.scheduler_config))
    if backbone.is_sdxl:
        parts.update(text_encoder_2=backbone.text_encoder_2, tokenizer_2=backbone.tokenizer_2)
    else:
        parts.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    return parts


def corrected_prompt(template: str, prompt: str, instructions: list[str]) -> str:
    """``template`` with ``{prompt}`` and ``{instructions}`` (joined by ``"; "``) replaced."""
    return template.replace("{prompt}", prompt).replace("{instructions}", "; ".join(instructions))


class InstructPix2PixEditor(_PipelineEditor):
    """Instruction editing with InstructPix2Pix (Brooks et al. 2023): ``StableDiffusionInstructPix2PixPipeline``, or
    ``StableDiffusionXLInstructPix2PixPipeline`` for an SDXL checkpoint (e.g. ``diffusers/sdxl-instructpix2pix-768``).

    The instructions, joined by ``"; "``, are the edit text; the prompt is not used (InstructPix2Pix conditions on
    the edit, not on a description).

    Args:
        model: Hub id or local folder of an InstructPix2Pix pipeline (a UNet with 8 input channels; SD or SDXL, as
            its ``model_index.json`` says).
        num_inference_steps: Denoising steps (the pipeline's default: 100).
        guidance_scale: Text guidance (the pipeline's default: 7.5).
        image_guidance_scale: Image guidance, how closely the edit keeps the input (the pipeline's default: 1.5).
        device: Device of the pipeline; ``None``: CUDA when available.
        dtype: Storage dtype of the pipeline.
        revision: Hub revision.
        variant: Weight variant (e.g. ``"fp16"``).
    """

    def __init__(
        self,
        model: str = "timbrooks/instruct-pix2pix",
        num_inference_steps: int = 100,
        guidance_scale: float = 7.5,
        image_guidance_scale: float = 1.5,
        device: str | None = None,
        dtype: Literal["float32", "bfloat16", "float16"] = "float32",
        revision: str | None = None,
        variant: str | None = None,
    ) -> None:
        super().__init__(model, device, dtype, revision, variant)
        self.num_inference_steps = num_inference_steps
        self.guidance_scale = guidance_scale
        self.image_guidance_scale = image_guidance_scale

    def load(self) -> Any:
        from diffusers import DiffusionPipeline

        # The folder's model_index.json names the class: StableDiffusion(XL)InstructPix2PixPipeline.
        pipeline = DiffusionPipeline.from_pretrained(self.model, safety_checker=None, **self._load_kwargs())
        if "InstructPix2Pix" not in type(pipeline).__name__:
            raise ValueError(f"{self.model} is a {type(pipeline).__name__}, not an InstructPix2Pix pipeline")
        return pipeline

    def edit(self, image: Tensor, instructions: list[str], prompt: str, seed: int | None = None) -> Tensor:
        edited = self._run(prompt="; ".join(instructions), image=image[None].float(),
                           num_inference_steps=self.num_inference_steps, guidance_scale=self.guidance_scale,
                           image_guidance_scale=self.image_guidance_scale, generator=self._generator(seed))
        return _same_size(edited, image)


class Img2ImgEditor(_PipelineEditor):
    """SDEdit (Meng et al. 2022): noise the image to ``strength`` of the schedule, denoise toward a corrected prompt.

    Args:
        model: Hub id or local folder of an SD / SDXL pipeline (``AutoPipelineForImage2Image``); ``None``: reuse the
            sampling backbone's components with its LoRA adapters disabled (the base model).
        strength: Fraction of the schedule that is re-noised (0 keeps the image, 1 regenerates it).
        num_inference_steps: Steps of the full schedule (``strength`` of them run).
        guidance_scale: Classifier-free guidance.
        prompt_template: The corrected prompt; ``{prompt}`` and ``{instructions}`` (joined by ``"; "``) are replaced.
        device: Device of a loaded pipeline; ``None``: CUDA when available.
        dtype: Storage dtype of a loaded pipeline.
        revision: Hub revision.
        variant: Weight variant.
    """

    def __init__(
        self,
        model: str | None = None,
        strength: float = 0.6,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        prompt_template: str = "{prompt}; {instructions}",
        device: str | None = None,
        dtype: Literal["float32", "bfloat16", "float16"] = "float32",
        revision: str | None = None,
        variant: str | None = None,
    ) -> None:
        if not 0.0 < strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {strength}")
        super().__init__(model, device, dtype, revision, variant)
        self.strength = strength
        self.num_inference_steps = num_inference_steps
        self.guidance_scale = guidance_scale
        self.prompt_template = prompt_template

    def load(self) -> Any:
        from diffusers import AutoPipelineForImage2Image

        return AutoPipelineForImage2Image.from_pretrained(self.model, **self._load_kwargs())

    def from_backbone(self, backbone: DiffusionBackbone) -> Any:
        from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionXLImg2ImgPipeline

        cls = StableDiffusionXLImg2ImgPipeline if backbone.is_sdxl else StableDiffusionImg2ImgPipeline
        return cls(**_backbone_parts(backbone))

    def edit(self, image: Tensor, instructions: list[str], prompt: str, seed: int | None = None) -> Tensor:
        edited = self._run(prompt=corrected_prompt(self.prompt_template, prompt, instructions), image=image[None].float(),
                           strength=self.strength, num_inference_steps=self.num_inference_steps,
                           guidance_scale=self.guidance_scale, generator=self._generator(seed))
        return _same_size(edited, image)


class InpaintEditor(_PipelineEditor):
    """Inpainting where the critique points: regenerate the union of the instructions' regions toward a corrected
    prompt and keep every pixel outside it.

    The mask is the union of the boxes of every instruction (:attr:`Critique.regions`), each grown by ``dilation``;
    when any instruction has no region (or the critique gives none), ``box`` is repainted, or the whole image when
    ``box`` is ``None``. Outside the mask the result is the input image exactly (the pipeline's output is pasted into
    the mask only, as the diffusers documentation recommends for models whose VAE round trip alters the unmasked
    area), and :meth:`apply` reports the mask.

    Args:
        box: The region to repaint when the critique gives none, as fractions of the image, ``(top, left, bottom,
            right)`` in ``[0, 1]``; ``None``: the whole image.
        dilation: Margin added around each region, as a fraction of the image's height (top, bottom) and width
            (left, right): an inpainting model needs context around an object, and a VLM's box is loose.
        model: Hub id or local folder of an inpainting pipeline (``AutoPipelineForInpainting``; 9-channel inpainting
            UNets such as ``stable-diffusion-v1-5/stable-diffusion-inpainting``, or a plain model); ``None``: reuse
            the sampling backbone's components (adapters disabled), which diffusers inpaints by latent blending.
        strength: Fraction of the schedule re-noised inside the mask (1: repaint from noise).
        num_inference_steps: Steps of the full schedule.
        guidance_scale: Classifier-free guidance.
        prompt_template: The corrected prompt; ``{prompt}`` and ``{instructions}`` (joined by ``"; "``) are replaced.
        device: Device of a loaded pipeline; ``None``: CUDA when available.
        dtype: Storage dtype of a loaded pipeline.
        revision: Hub revision.
        variant: Weight variant.
    """

    def __init__(
        self,
        box: tuple[float, float, float, float] | None = None,
        dilation: float = 0.05,
        model: str | None = None,
        strength: float = 1.0,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        prompt_template: str = "{prompt}; {instructions}",
        device: str | None = None,
        dtype: Literal["float32", "bfloat16", "float16"] = "float32",
        revision: str | None = None,
        variant: str | None = None,
    ) -> None:
        if dilation < 0:
            raise ValueError(f"dilation must be >= 0, got {dilation}")
        super().__init__(model, device, dtype, revision, variant)
        self.box = None if box is None else check_box(box)
        self.dilation = dilation
        self.strength = strength
        self.num_inference_steps = num_inference_steps
        self.guidance_scale = guidance_scale
        self.prompt_template = prompt_template

    def load(self) -> Any:
        from diffusers import AutoPipelineForInpainting

        return AutoPipelineForInpainting.from_pretrained(self.model, **self._load_kwargs())

    def from_backbone(self, backbone: DiffusionBackbone) -> Any:
        from diffusers import StableDiffusionInpaintPipeline, StableDiffusionXLInpaintPipeline

        cls = StableDiffusionXLInpaintPipeline if backbone.is_sdxl else StableDiffusionInpaintPipeline
        return cls(**_backbone_parts(backbone))

    def mask(self, height: int, width: int, critique: Critique | None = None) -> Tensor:
        """``[1, H, W]`` float: 1 where the edit repaints, 0 where it keeps the image (see the class)."""
        regions = [critique.region(k) for k in range(len(critique.instructions))] if critique is not None else []
        if regions and all(regions):
            return region_mask([box for boxes in regions for box in boxes], height, width, self.dilation)
        if self.box is not None:
            return region_mask([self.box], height, width)
        return torch.ones(1, height, width)

    def inpaint(self, image: Tensor, instructions: list[str], prompt: str, mask: Tensor, seed: int | None) -> Tensor:
        """Repaint ``mask`` (``[1, H, W]``) of ``image`` toward the corrected prompt; outside it, ``image`` exactly."""
        height, width = image.shape[-2:]
        edited = self._run(prompt=corrected_prompt(self.prompt_template, prompt, instructions),
                           image=image[None].float(), mask_image=mask[None], height=height, width=width,
                           strength=self.strength, num_inference_steps=self.num_inference_steps,
                           guidance_scale=self.guidance_scale, generator=self._generator(seed))
        edited = _same_size(edited, image)
        return mask * edited + (1 - mask) * image.float().cpu()

    def apply(self, image: Tensor, critique: Critique, prompt: str, seed: int | None = None) -> Edit:
        mask = self.mask(*image.shape[-2:], critique)
        return Edit(self.inpaint(image, critique.instructions, prompt, mask, seed), mask)

    def edit(self, image: Tensor, instructions: list[str], prompt: str, seed: int | None = None) -> Tensor:
        return self.inpaint(image, instructions, prompt, self.mask(*image.shape[-2:]), seed)
