"""What the interactive page shows besides the images: the progress of a generation and what the model and the
refiner understand."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from torch import nn

from lit_pref.backbone.backbone import TOY_PIPELINE
from lit_pref.vca.refiner import PromptRefiner

TOY_VOCABULARY = TOY_PIPELINE.parent / "vocabulary.json"  # the shipped toy model's caption words


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
    """``{"model", "vocabulary", "feedback"}`` for the page: the model's caption words (``None`` for models whose
    vocabulary is open) and the feedback phrases the refiner turns into prompt edits
    (:meth:`~lit_pref.vca.refiner.PromptRefiner.feedback_phrases`; ``None`` when it takes free text).

    The vocabulary is the ``vocabulary.json`` of the model's folder when there is one; for ``"toy"`` (the shipped
    toy model, which the backbone resolves to ``lit_pref/assets/toy/pipeline``) it is the shipped
    ``lit_pref/assets/toy/vocabulary.json``.
    """
    path = TOY_VOCABULARY if model_name == "toy" else Path(model_name) / "vocabulary.json"
    vocabulary = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    return {"model": model_name, "vocabulary": vocabulary, "feedback": refiner.feedback_phrases()}
