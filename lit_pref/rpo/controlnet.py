"""ControlNet editing: regenerate an image toward a corrected prompt under a structure condition taken from it.

:class:`ControlNetEditor` runs diffusers' ControlNet pipelines (``StableDiffusionControlNetPipeline`` for SD1.x/2.x,
``StableDiffusionXLControlNetPipeline`` for SDXL) with one or several ControlNets. Each ControlNet gets its condition
from a pluggable :class:`ConditionExtractor` applied to the original image:

- :class:`CannyEdges`: OpenCV's Canny edge detector re-implemented in torch (no download, no OpenCV), the condition
  of ``lllyasviel/sd-controlnet-canny`` and ``diffusers/controlnet-canny-sdxl-1.0``;
- :class:`DepthMap`: a transformers depth estimator (DPT / MiDaS), the condition of depth ControlNets.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_pref.rpo.editor import DTYPES, _backbone_parts, _PipelineEditor, _resolve_device, _same_size, corrected_prompt

if TYPE_CHECKING:
    from lit_pref.backbone import DiffusionBackbone

_TAN_22_5 = 0.4142135623730951
_TAN_67_5 = 2.414213562373095
_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


class ConditionExtractor(ABC):
    """Turns an image into a ControlNet condition image."""

    @abstractmethod
    def __call__(self, image: Tensor) -> Tensor:
        """``[3, H, W]`` float in ``[0, 1]`` -> the condition, ``[3, H, W]`` float in ``[0, 1]``."""


def canny(image: Tensor, low_threshold: float, high_threshold: float) -> Tensor:
    """Canny edges as ``cv2.Canny(image, low_threshold, high_threshold)`` computes them (aperture 3, L1 gradient).

    1. 3x3 Sobel derivatives of every channel, borders replicated; per pixel the channel with the largest
       magnitude ``|gx| + |gy|`` gives gradient and magnitude (OpenCV's rule for colour images).
    2. Non-maximum suppression along the gradient direction, quantised to 0, 45, 90 or 135 degrees (tan 22.5 and
       tan 67.5 bounds); against the neighbour before it the magnitude must be strictly larger, against the one
       after it at least as large (strictly larger for diagonals), outside the image the magnitude is 0.
    3. Hysteresis: maxima above ``high_threshold`` are edges; maxima above ``low_threshold`` are edges when they
       connect (8-neighbourhood) to an edge through such maxima.

    Args:
        image: ``[C, H, W]`` float on OpenCV's 8-bit scale (0 to 255).
        low_threshold: Lower hysteresis threshold (OpenCV's units: an L1 Sobel magnitude).
        high_threshold: Upper hysteresis threshold.

    Returns:
        ``[H, W]`` bool edge map.
    """
    if image.ndim != 3:
        raise ValueError(f"expected an image [C, H, W], got shape {tuple(image.shape)}")
    low, high = sorted((float(low_threshold), float(high_threshold)))  # OpenCV swaps them too
    x = F.pad(image.float()[:, None], (1, 1, 1, 1), mode="replicate")
    kernel = _SOBEL_X.to(x.device)
    gx = F.conv2d(x, kernel[None, None])[:, 0]
    gy = F.conv2d(x, kernel.T.contiguous()[None, None])[:, 0]
    magnitudes = gx.abs() + gy.abs()
    best = magnitudes.argmax(0, keepdim=True)
    gx, gy, mag = gx.gather(0, best)[0], gy.gather(0, best)[0], magnitudes.gather(0, best)[0]

    padded = F.pad(mag, (1, 1, 1, 1))  # zero magnitude outside the image
    height, width = mag.shape

    def at(dy: int, dx: int) -> Tensor:
        return padded[1 + dy:1 + dy + height, 1 + dx:1 + dx + width]

    ax, ay = gx.abs(), gy.abs()
    horizontal = ay <= ax * _TAN_22_5
    vertical = ay > ax * _TAN_67_5
    same_sign = (gx >= 0) == (gy >= 0)
    keep_h = (mag > at(0, -1)) & (mag >= at(0, 1))
    keep_v = (mag > at(-1, 0)) & (mag >= at(1, 0))
    keep_d = torch.where(same_sign, (mag > at(-1, -1)) & (mag > at(1, 1)), (mag > at(-1, 1)) & (mag > at(1, -1)))
    maxima = torch.where(horizontal, keep_h, torch.where(vertical, keep_v, keep_d)) & (mag > low)

    edges = maxima & (mag > high)
    while True:
        grown = F.max_pool2d(edges[None, None].float(), 3, stride=1, padding=1)[0, 0].bool() & maxima
        if torch.equal(grown, edges):
            return edges
        edges = grown


class CannyEdges(ConditionExtractor):
    """Canny edges of the image (:func:`canny`), white on black in three channels, as the canny ControlNets of
    diffusers' documentation are conditioned (``cv2.Canny(image, 100, 200)`` stacked three times).

    Args:
        low_threshold: Lower hysteresis threshold, on OpenCV's scale (diffusers' ControlNet examples: 100).
        high_threshold: Upper hysteresis threshold (diffusers' ControlNet examples: 200).
    """

    def __init__(self, low_threshold: float = 100.0, high_threshold: float = 200.0) -> None:
        self.low_threshold = low_threshold
        self.high_threshold = high_threshold

    def __call__(self, image: Tensor) -> Tensor:
        pixels = (image.detach().float().clamp(0, 1) * 255).round()  # the 8-bit image OpenCV would read
        return canny(pixels, self.low_threshold, self.high_threshold).float()[None].expand(3, -1, -1).clone()


class DepthMap(ConditionExtractor):
    """A depth map from a transformers depth estimator (``AutoModelForDepthEstimation``), resized to the image,
    scaled to ``[0, 1]`` per image (near = bright, as MiDaS and DPT predict inverse depth) and stacked three times,
    as diffusers' depth ControlNet examples prepare it.

    Args:
        model: Hub id or local folder of a depth estimator with its image processor (e.g. ``Intel/dpt-hybrid-midas``,
            the estimator of ``lllyasviel/sd-controlnet-depth``).
        device: Device of the estimator; ``None``: CUDA when available.
        revision: Hub revision.
    """

    def __init__(self, model: str = "Intel/dpt-hybrid-midas", device: str | None = None,
                 revision: str | None = None) -> None:
        self.model = model
        self.device = _resolve_device(device)
        self.revision = revision
        self._estimator: Any = None
        self._processor: Any = None

    @torch.no_grad()
    def __call__(self, image: Tensor) -> Tensor:
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation

        if self._estimator is None:
            self._processor = AutoImageProcessor.from_pretrained(self.model, revision=self.revision)
            self._estimator = AutoModelForDepthEstimation.from_pretrained(self.model, revision=self.revision)
            self._estimator.to(self.device).eval()
        inputs = self._processor(images=image.detach().float().clamp(0, 1).cpu(), do_rescale=False,
                                 return_tensors="pt").to(self.device)
        depth = self._estimator(**inputs).predicted_depth  # [1, h, w]
        depth = F.interpolate(depth[:, None].float(), size=image.shape[-2:], mode="bicubic", align_corners=False)[0, 0]
        low, high = depth.min(), depth.max()
        depth = (depth - low) / (high - low) if high > low else torch.zeros_like(depth)
        return depth.clamp(0, 1)[None].expand(3, -1, -1).cpu().clone()


class ControlNetEditor(_PipelineEditor):
    """Regenerate the image from a corrected prompt, with its structure (edges, depth) held by ControlNet(s).

    The conditions are computed from the original image, so the edit keeps its layout and changes what the
    prompt changes: what instruction editors do badly (style, lighting, textures, attributes of many objects) and
    what inpainting cannot (the whole image).

    Args:
        controlnet: Hub id or local folder of a ``ControlNetModel`` (diffusers layout), or a list of them (a
            Multi-ControlNet), e.g. ``lllyasviel/sd-controlnet-canny`` (SD1.5), ``diffusers/controlnet-canny-sdxl-1.0``
            (SDXL).
        condition: The condition extractor of each ControlNet, in the same order (one, or a list as long as
            ``controlnet``).
        model: Hub id or local folder of the base pipeline the ControlNets were trained on (loaded with
            ``AutoPipelineForText2Image`` and the ControlNets: the SD or SDXL ControlNet pipeline); ``None``: reuse the
            sampling backbone's components with its LoRA adapters disabled (the base model).
        conditioning_scale: ``controlnet_conditioning_scale``: the weight of each ControlNet's residuals (one, or one
            per ControlNet).
        control_guidance_end: Fraction of the steps after which the ControlNets stop guiding.
        num_inference_steps: Denoising steps.
        guidance_scale: Classifier-free guidance.
        prompt_template: The corrected prompt; ``{prompt}`` and ``{instructions}`` (joined by ``"; "``) are replaced.
        device: Device of the pipeline and ControlNets; ``None``: CUDA when available (with ``model=None``: the
            backbone's).
        dtype: Storage dtype of a loaded pipeline and of the ControlNets (with ``model=None``: the UNet's).
        revision: Hub revision of ``model``.
        variant: Weight variant of ``model``.
    """

    def __init__(
        self,
        controlnet: str | list[str],
        condition: ConditionExtractor | list[ConditionExtractor] | None = None,
        model: str | None = None,
        conditioning_scale: float | list[float] = 1.0,
        control_guidance_end: float = 1.0,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        prompt_template: str = "{prompt}; {instructions}",
        device: str | None = None,
        dtype: Literal["float32", "bfloat16", "float16"] = "float32",
        revision: str | None = None,
        variant: str | None = None,
    ) -> None:
        super().__init__(model, device, dtype, revision, variant)
        self.controlnet = controlnet
        names = [controlnet] if isinstance(controlnet, str) else list(controlnet)
        conditions = CannyEdges() if condition is None else condition
        self._conditions = list(conditions) if isinstance(conditions, (list, tuple)) else [conditions]
        if not names or len(self._conditions) != len(names):
            raise ValueError(f"ControlNetEditor needs one condition extractor per ControlNet: {len(names)} "
                             f"ControlNet(s), {len(self._conditions)} condition(s)")
        scales = conditioning_scale if isinstance(conditioning_scale, (list, tuple)) else [conditioning_scale]
        if len(scales) not in (1, len(names)):
            raise ValueError(f"conditioning_scale: give one value or one per ControlNet ({len(names)}), got {scales}")
        self._names = names
        self._scale = scales[0] if len(names) == 1 else list(scales) * (len(names) // len(scales))
        plain = (bool, int, float, str, type(None))
        self.conditions = [{"class": type(c).__name__, **{k: v for k, v in sorted(vars(c).items())
                                                          if not k.startswith("_") and isinstance(v, plain)}}
                           for c in self._conditions]  # recorded in the synthesis parameters
        self.conditioning_scale = conditioning_scale
        self.control_guidance_end = control_guidance_end
        self.num_inference_steps = num_inference_steps
        self.guidance_scale = guidance_scale
        self.prompt_template = prompt_template

    def _controlnets(self, dtype: torch.dtype, device: torch.device) -> Any:
        from diffusers import ControlNetModel

        models = [ControlNetModel.from_pretrained(name, torch_dtype=dtype).to(device) for name in self._names]
        return models[0] if len(models) == 1 else models

    def load(self) -> Any:
        from diffusers import AutoPipelineForText2Image

        controlnet = self._controlnets(DTYPES[self.dtype], torch.device("cpu"))
        return AutoPipelineForText2Image.from_pretrained(self.model, controlnet=controlnet, **self._load_kwargs())

    def from_backbone(self, backbone: DiffusionBackbone) -> Any:
        from diffusers import StableDiffusionControlNetPipeline, StableDiffusionXLControlNetPipeline

        controlnet = self._controlnets(backbone.unet.dtype, backbone.device)
        cls = StableDiffusionXLControlNetPipeline if backbone.is_sdxl else StableDiffusionControlNetPipeline
        parts = _backbone_parts(backbone)
        if backbone.is_sdxl:
            parts.update(add_watermarker=False)
        return cls(**parts, controlnet=controlnet)

    def condition_images(self, image: Tensor) -> list[Tensor]:
        """The condition of each ControlNet for ``image`` (``[3, H, W]`` each, in ``[0, 1]``)."""
        return [extract(image) for extract in self._conditions]

    def edit(self, image: Tensor, instructions: list[str], prompt: str, seed: int | None = None) -> Tensor:
        height, width = image.shape[-2:]
        conditions = [c[None].float() for c in self.condition_images(image)]
        edited = self._run(prompt=corrected_prompt(self.prompt_template, prompt, instructions),
                           image=conditions[0] if len(conditions) == 1 else conditions, height=height, width=width,
                           controlnet_conditioning_scale=self._scale,
                           control_guidance_end=self.control_guidance_end,
                           num_inference_steps=self.num_inference_steps, guidance_scale=self.guidance_scale,
                           generator=self._generator(seed))
        return _same_size(edited, image)
