"""Any image PIL opens, as 8-bit RGB without silent clipping: high-bit-depth pixels scaled by their real range,
transparency composited on white, and pixels that have no RGB value refused; and the resize, crop and tensor
conversion of the preference-pair data sets."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

BACKGROUND = (255, 255, 255)  # what transparent pixels become
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as an 8-bit RGB image.

    * 16-bit grayscale (``I;16*``, and ``I`` as PIL opens 16-bit PNGs) is scaled from 0..65535 to 0..255 (PIL's
      own conversion clips at 255: a 16-bit image came out almost white);
    * 32-bit float grayscale (``F``) must be finite and in [0, 1], scaled to 0..255;
    * images with transparency (``RGBA``, ``LA``, ``PA``, palette images with a transparent colour) are
      composited on white (``BACKGROUND``);
    * every other mode goes through PIL's conversion (8-bit modes, CMYK, YCbCr, ...).

    Raises:
        ValueError: non-finite float pixels, or float or 32-bit integer pixels outside the ranges above (the
            caller turns it into a bad row naming the file and row).
    """
    if image.mode == "RGB":
        return image
    if image.mode in (*_SIXTEEN_BIT, "I", "F"):
        return Image.fromarray(_grey_to_uint8(image)).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _grey_to_uint8(image: Image.Image) -> np.ndarray:
    pixels = np.asarray(image)
    if image.mode == "F":
        if not np.isfinite(pixels).all():
            raise ValueError(f"float image has {int((~np.isfinite(pixels)).sum())} non-finite pixel(s) (NaN or inf)")
        low, high = 0.0, 1.0
    else:
        low, high = 0.0, 65535.0
    if pixels.size and (pixels.min() < low or pixels.max() > high):
        raise ValueError(f"{image.mode} image's pixels span [{pixels.min()}, {pixels.max()}], outside the mode's "
                         f"range [{low:g}, {high:g}]")
    return np.round(pixels.astype(np.float64) * (255.0 / high)).astype(np.uint8)


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB image -> FloatTensor[3, H, W] in [-1, 1]."""
    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(127.5).sub_(1.0)


def resize_shorter(image: Image.Image, resolution: int) -> Image.Image:
    """Resizes so that the shorter side equals ``resolution`` (bilinear, antialiased)."""
    w, h = image.size
    if min(w, h) == resolution:
        return image
    scale = resolution / min(w, h)
    new_w = max(resolution, int(round(w * scale)))
    new_h = max(resolution, int(round(h * scale)))
    # Pillow's convolution-based resize antialiases when it downsamples.
    return image.resize((new_w, new_h), Image.BILINEAR)


def crop_offset(extent: int, resolution: int, u: float) -> int:
    """Offset of a ``resolution`` window in ``extent`` pixels at relative position u in [0, 1]."""
    room = extent - resolution
    return min(int(u * (room + 1)), room)
