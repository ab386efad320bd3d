"""What the interactive page shows besides the images: the progress of a generation and what the model and the
refiner understand."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from lit_pref.datamodules.synthetic import BACKGROUNDS, COLOURS, SHAPES
from lit_pref.datamodules.toy import SIZES
from lit_pref.vca.refiner import PromptRefiner, TemplateRefiner


class Progress:
    """The denoising step of the generation in progress (``step`` of ``steps``; ``steps`` 0 when idle), read by
    the page's ``GET /api/progress`` while another thread generates."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.step, self.steps = 0, 0

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            return {"step": self.step, "steps": self.steps}

    @contextmanager
    def counting(self, unet: nn.Module, steps: int) -> Iterator[None]:
        """Count the calls of ``unet`` (one a DDIM step: guidance batches both branches into one call) as steps."""

        def hook(module: nn.Module, args: tuple, output: object) -> None:
            with self._lock:
                self.step = min(self.step + 1, self.steps)

        with self._lock:
            self.step, self.steps = 0, steps
        handle = unet.register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()
            with self._lock:
                self.step, self.steps = 0, 0


def model_info(model_name: str, refiner: PromptRefiner) -> dict:
    """``{"model", "vocabulary", "feedback"}`` for the page: the toy model's caption words (``None`` for other
    models, whose vocabulary is open) and the feedback phrases the refiner turns into prompt edits (``None`` when
    it takes free text, as a chat-model refiner does)."""
    vocabulary = None
    if model_name == "toy":
        vocabulary = {
            "caption": "a {size} {colour} {shape} on a {background} background",
            "shapes": list(SHAPES), "colours": list(COLOURS), "sizes": list(SIZES), "backgrounds": list(BACKGROUNDS),
        }
    feedback = None
    if isinstance(refiner, TemplateRefiner):
        feedback = [
            f"make it <colour> ({', '.join(COLOURS)})", f"make it <size> ({', '.join(SIZES)})",
            f"make the shape a <shape> ({', '.join(SHAPES)})",
            f"use a <background> background ({', '.join(BACKGROUNDS)})",
            "move it to the centre", "perfect",
            "joined by commas or 'and'; other text is appended to the prompt as it is",
        ]
    return {"model": model_name, "vocabulary": vocabulary, "feedback": feedback}
