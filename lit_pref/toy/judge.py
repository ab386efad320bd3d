"""The toy world's judge: :class:`ToyJudge` reads what a toy image shows (colour, shape, size,
background, position) with plain pixel rules; :mod:`lit_pref.toy.human` turns a reading into the
"hidden human's" reward and preference labels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_pref.datamodules.synthetic import BACKGROUNDS, COLOURS, SIZE_RANGES

__all__ = ["Reading", "ToyJudge"]

COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
BACKGROUND_NAMES: tuple[str, ...] = tuple(BACKGROUNDS)
SHAPE_BY_CODE: tuple[str, ...] = ("triangle", "circle", "square")
# Bounding-box side separating "small" from "large", as a fraction of the
# resolution: midway between the two ranges (12 px at 32 px).
_SIZE_THRESHOLD = (SIZE_RANGES["small"][1] + SIZE_RANGES["large"][0]) / 2


@dataclass(frozen=True)
class Reading:
    """What :class:`ToyJudge` sees in one image.

    Attributes:
        colour: Dominant non-background palette colour; None when nothing is found.
        shape: ``"circle"``, ``"square"`` or ``"triangle"``; None when nothing is found.
        size: ``"small"`` or ``"large"``; None when nothing is found.
        background: ``"white"`` or ``"black"`` (always read).
        center: ``(row, col)`` centroid of the shape in pixels (pixel ``i``
            spans ``[i, i + 1)``); None when nothing is found.
        area_fraction: Fraction of the image covered by the shape (its
            largest connected component); 0 when nothing is found.
    """

    colour: str | None
    shape: str | None
    size: str | None
    background: str
    center: tuple[float, float] | None
    area_fraction: float


def _label_components(mask: Tensor) -> Tensor:
    """4-connected component labels of a boolean ``[B, H, W]`` mask.

    Returns a long tensor ``[B, H, W]``: 0 off the mask; on it, 1 + the
    largest flat pixel index of the pixel's component (a component id unique
    within its image). Label propagation between 4-neighbours, accelerated by
    pointer jumping (each pixel takes the label of the pixel its label points
    to, which lies in the same component and carries a label at least as large).
    """
    b, h, w = mask.shape
    idx = torch.arange(1, h * w + 1, device=mask.device).view(1, h, w).expand(b, h, w)
    labels = torch.where(mask, idx, 0)
    for _ in range(h * w):
        nb = labels.clone()
        nb[:, 1:, :] = torch.maximum(nb[:, 1:, :], labels[:, :-1, :])
        nb[:, :-1, :] = torch.maximum(nb[:, :-1, :], labels[:, 1:, :])
        nb[:, :, 1:] = torch.maximum(nb[:, :, 1:], labels[:, :, :-1])
        nb[:, :, :-1] = torch.maximum(nb[:, :, :-1], labels[:, :, 1:])
        flat = torch.where(mask, nb, 0).view(b, h * w)
        jumped = flat.gather(1, (flat - 1).clamp(min=0))
        new = torch.where(flat > 0, torch.maximum(flat, jumped), 0).view(b, h, w)
        if torch.equal(new, labels):
            break
        labels = new
    return labels


class ToyJudge:
    """Reads toy images with pixel rules (no learning).

    1. Background: the per-channel median of the border pixels, snapped to the
       nearest of white and black.
    2. Foreground: pixels farther than ``foreground_threshold`` (RGB distance
       in ``[0, 1]`` units) from the background and nearer to some palette
       colour than to the background.
    3. Colour: majority vote of the nearest palette colour over the clear
       foreground pixels (within ``clear_threshold`` of a palette colour), or
       over all foreground pixels when fewer than ``min_area_fraction`` of the
       image are clear (blurry or washed-out images).
    4. Shape: from the largest 4-connected component of foreground pixels of
       that colour. Its centroid sits at 2/3 of its bounding box's height for
       an upright triangle and at 1/2 for circles and squares: above
       ``triangle_threshold`` (or a fill ratio of the bounding box at most
       ``circle_threshold``) it is a triangle; otherwise it is a square when it
       covers more than ``square_threshold`` of its bounding box's corners (the
       part outside the box's inscribed ellipse: about 1 for a square, 0 for a
       circle), else a circle. Generated squares have soft edges (fill ratio
       0.81-0.98 seen), so the plain fill ratio misreads them; corners do not.
    5. Size: the side implied by the component's area and the shape's ideal
       fill ratio (1/2, pi/4, 1) above 12/32 of the resolution (midway between
       the small 7-10 px and large 14-20 px ranges at 32 px) is large. (The
       bounding box is less robust: blur erodes a triangle's apex and corners.)
    6. Centre: the component's centroid; area fraction: its pixel count / H W.

    The thresholds were tuned on rendered 32 px images (sides 7-20 px, all
    sub-pixel offsets): pixel-centre sampling makes small circles fill 0.60 to
    0.94 of their box and triangles up to 0.67, so fill ratio alone (square >
    0.89, circle > 0.63) misreads them; the centroid height (circles and
    squares 0.44-0.56, triangles 0.61-0.67) does not.

    Fewer than ``min_area_fraction`` foreground pixels (e.g. a blank image)
    reads as nothing found (``colour``, ``shape``, ``size``, ``center`` None).
    Works batched on any device, without gradients.

    Args:
        foreground_threshold: Minimum RGB distance from the background colour.
        clear_threshold: Maximum RGB distance from a palette colour for a
            pixel to count as clear.
        square_threshold: Corner fill above which a (non-triangle) component is a square (rendered
            circles reach 0.5 at 7 px, generated squares of the toy model 0.5-1).
        circle_threshold: Fill ratio at or below which a component is a triangle.
        triangle_threshold: Centroid height in the bounding box (0 top, 1
            bottom) above which a component is a triangle.
        min_area_fraction: Minimum fraction of the image that must be
            foreground for anything to be read.
    """

    def __init__(
        self,
        foreground_threshold: float = 0.5,
        clear_threshold: float = 0.35,
        square_threshold: float = 0.5,
        circle_threshold: float = 0.55,
        triangle_threshold: float = 0.57,
        min_area_fraction: float = 0.003,
    ) -> None:
        self.foreground_threshold = foreground_threshold
        self.clear_threshold = clear_threshold
        self.square_threshold = square_threshold
        self.circle_threshold = circle_threshold
        self.triangle_threshold = triangle_threshold
        self.min_area_fraction = min_area_fraction
        self._palette = torch.tensor([COLOURS[c] for c in COLOUR_NAMES], dtype=torch.float32) / 255.0
        self._backgrounds = torch.tensor([BACKGROUNDS[b] for b in BACKGROUND_NAMES], dtype=torch.float32) / 255.0

    @torch.no_grad()
    def read_tensors(self, images: Tensor) -> dict[str, Tensor]:
        """Readings as tensors on the images' device (what :meth:`read` wraps).

        Args:
            images: ``[B, 3, H, W]`` float in ``[0, 1]`` (clamped).

        Returns:
            ``found`` bool ``[B]``; ``colour`` (index into the palette order
            red, green, blue, yellow, magenta, cyan), ``shape`` (0 triangle, 1
            circle, 2 square), ``size`` (0 small, 1 large), ``background`` (0
            white, 1 black) long ``[B]``; ``center`` float ``[B, 2]`` (row,
            col); ``area_fraction``, ``fill_ratio``, ``corner_fill``, ``centroid_height`` and
            ``side`` (estimated, pixels) float ``[B]``. Entries
            other than ``background`` are meaningless where ``found`` is False.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [B, 3, H, W], got shape {tuple(images.shape)}")
        x = images.detach().float().clamp(0.0, 1.0)
        b, _, h, w = x.shape
        device = x.device
        palette = self._palette.to(device)
        backgrounds = self._backgrounds.to(device)
        min_pixels = max(1.0, self.min_area_fraction * h * w)

        border = torch.cat([x[:, :, 0, :], x[:, :, -1, :], x[:, :, 1:-1, 0], x[:, :, 1:-1, -1]], dim=2)
        border_colour = border.median(dim=2).values  # [B, 3]
        background = ((border_colour[:, None, :] - backgrounds[None]) ** 2).sum(-1).argmin(1)  # [B]

        pix = x.permute(0, 2, 3, 1)  # [B, H, W, 3]
        d_bg = (pix - backgrounds[background][:, None, None, :]).norm(dim=-1)  # [B, H, W]
        d_pal = ((pix[..., None, :] - palette) ** 2).sum(-1).sqrt()  # [B, H, W, 6]
        d_near, nearest = d_pal.min(-1)
        fg = (d_bg > self.foreground_threshold) & (d_near < d_bg)
        clear = fg & (d_near < self.clear_threshold)

        onehot = F.one_hot(nearest, len(COLOUR_NAMES)).to(torch.float32)  # [B, H, W, 6]
        fg_votes = (onehot * fg[..., None]).sum((1, 2))
        clear_votes = (onehot * clear[..., None]).sum((1, 2))
        use_clear = clear_votes.sum(1) >= min_pixels
        votes = torch.where(use_clear[:, None], clear_votes, fg_votes)
        colour = votes.argmax(1)
        found = fg_votes.sum(1) >= min_pixels

        labels = _label_components(fg & (nearest == colour[:, None, None]))
        flat = labels.view(b, h * w)
        offsets = torch.arange(b, device=device)[:, None] * (h * w + 1)
        counts = torch.bincount((flat + offsets).view(-1), minlength=b * (h * w + 1)).view(b, h * w + 1)
        counts[:, 0] = 0
        best = counts.argmax(1)
        area = counts.gather(1, best[:, None]).squeeze(1).to(torch.float32)
        comp = (labels == best[:, None, None]) & (best > 0)[:, None, None]

        rows, cols = comp.any(2), comp.any(1)  # [B, H], [B, W]
        r0 = rows.to(torch.int8).argmax(1)
        r1 = h - 1 - rows.flip(1).to(torch.int8).argmax(1)
        c0 = cols.to(torch.int8).argmax(1)
        c1 = w - 1 - cols.flip(1).to(torch.int8).argmax(1)
        box_h = (r1 - r0 + 1).clamp(min=1).to(torch.float32)
        box_w = (c1 - c0 + 1).clamp(min=1).to(torch.float32)
        fill = area / (box_h * box_w)

        safe_area = area.clamp(min=1.0)
        ys = torch.arange(h, device=device, dtype=torch.float32) + 0.5
        xs = torch.arange(w, device=device, dtype=torch.float32) + 0.5
        compf = comp.to(torch.float32)
        center = torch.stack(
            [(compf.sum(2) * ys).sum(1) / safe_area, (compf.sum(1) * xs).sum(1) / safe_area], dim=1
        )
        # Height of the centroid within the bounding box, 0 top .. 1 bottom:
        # 1/2 for circles and squares, 2/3 for an upright triangle.
        centroid_height = (center[:, 0] - r0.to(torch.float32)) / box_h

        # Corner fill: the share of the bounding box outside its inscribed ellipse that the component covers
        # (about 1 for a square, 0 for a circle), robust to the soft edges of generated images.
        u = (xs[None, :] - (c0 + c1 + 1).to(torch.float32)[:, None] / 2) / (box_w[:, None] / 2)  # [B, W]
        v = (ys[None, :] - (r0 + r1 + 1).to(torch.float32)[:, None] / 2) / (box_h[:, None] / 2)  # [B, H]
        inside_box = (u.abs() < 1)[:, None, :] & (v.abs() < 1)[:, :, None]
        corner = inside_box & ((u[:, None, :] ** 2 + v[:, :, None] ** 2) > 1)
        corner_fill = (compf * corner).sum((1, 2)) / corner.sum((1, 2)).clamp(min=1)
        is_triangle = (centroid_height > self.triangle_threshold) | (fill <= self.circle_threshold)
        shape = torch.where(is_triangle, 0, torch.where(corner_fill > self.square_threshold, 2, 1))
        # Side implied by the area and the shape's ideal fill ratio (1/2, pi/4, 1).
        ideal_fill = torch.tensor([0.5, math.pi / 4, 1.0], device=device)[shape]
        side = (area / ideal_fill).sqrt()
        size = (side > _SIZE_THRESHOLD * max(h, w)).long()
        return {
            "found": found,
            "colour": colour,
            "shape": shape,
            "size": size,
            "background": background,
            "center": center,
            "area_fraction": torch.where(found, area / (h * w), 0.0),
            "fill_ratio": torch.where(found, fill, 0.0),
            "corner_fill": torch.where(found, corner_fill, 0.0),
            "centroid_height": torch.where(found, centroid_height, 0.0),
            "side": torch.where(found, side, 0.0),
        }

    def read(self, images: Tensor) -> list[Reading]:
        """Reads a batch ``[B, 3, H, W]`` in ``[0, 1]``; one :class:`Reading` per image."""
        t = {k: v.cpu().tolist() for k, v in self.read_tensors(images).items()}
        out = []
        for i, found in enumerate(t["found"]):
            background = BACKGROUND_NAMES[t["background"][i]]
            if not found:
                out.append(Reading(None, None, None, background, None, 0.0))
                continue
            out.append(
                Reading(
                    colour=COLOUR_NAMES[t["colour"][i]],
                    shape=SHAPE_BY_CODE[t["shape"][i]],
                    size=("small", "large")[t["size"][i]],
                    background=background,
                    center=(float(t["center"][i][0]), float(t["center"][i][1])),
                    area_fraction=float(t["area_fraction"][i]),
                )
            )
        return out

    __call__ = read
