"""The session logic of ``python -m lit_pref interact`` (:mod:`lit_pref.vca.interact`): rounds, choices, feedback,
refined prompts and saved dialogues, whatever the front end (:mod:`lit_pref.vca.server`,
:mod:`lit_pref.vca.terminal`).

Sessions survive a crash: each session's recorded rounds and its pending round are written (atomically) to
``<output stem>_sessions/<dialogue id>.json`` as they happen; a tool started on the same ``--output`` saves such
leftovers as dialogues (the pending round with its images and no choice, as ``finish`` does) and logs it. A
session idle for ``--session_timeout`` seconds expires: it is saved the same way and closed.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from lit_pref.backbone import DiffusionBackbone
from lit_pref.formats.dialogues import Dialogue, Turn, append_dialogue
from lit_pref.io import atomic_file
from lit_pref.vca.adapt import AdaptStats, SessionAdapter
from lit_pref.vca.info import Progress
from lit_pref.vca.refiner import PromptRefiner

__all__ = ["RequestError", "Session", "Studio", "data_uri", "is_unicode", "to_pil"]

logger = logging.getLogger(__name__)


class RequestError(ValueError):
    """A request the tool cannot carry out; the message is shown to the person (status 400, or ``status``)."""

    def __init__(self, message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Session:
    """One dialogue in progress.

    Attributes:
        dialogue_id: Id of the dialogue it becomes.
        initial_prompt: The first prompt.
        category: Optional label saved with the dialogue.
        turns: The rounds recorded so far.
        pending: The round shown but not yet chosen from: ``(prompt, image paths, images [K, 3, H, W])``.
        last_used: ``time.monotonic()`` of its last request (idle sessions expire).
    """

    dialogue_id: str
    initial_prompt: str
    category: str | None = None
    turns: list[Turn] = field(default_factory=list)
    pending: tuple[str, list[str], Tensor] | None = None
    last_used: float = field(default_factory=time.monotonic)

    def to_json(self) -> dict:
        """What a crash must not lose: the dialogue so far and the pending round's prompt and image files."""
        pending = None if self.pending is None else {"prompt": self.pending[0], "images": self.pending[1]}
        return {"dialogue_id": self.dialogue_id, "initial_prompt": self.initial_prompt, "category": self.category,
                "turns": [turn.to_json() for turn in self.turns], "pending": pending}

    def dialogue(self) -> Dialogue:
        """The dialogue to save now: the recorded rounds, and the pending round with its images and no choice."""
        turns = list(self.turns)
        if self.pending is not None:
            turns.append(Turn(round=len(turns) + 1, user_feedback="", prompt=self.pending[0],
                              images=list(self.pending[1])))
        return Dialogue(self.dialogue_id, self.initial_prompt, turns, self.category)

    @property
    def round(self) -> int:
        """The number of the round being shown (pending) or generated next."""
        return len(self.turns) + 1


class Studio:
    """Generates rounds, records choices and feedback, refines prompts and saves dialogues (thread-safe).

    Args:
        backbone: The text-to-image model (with its LoRA, if any).
        refiner: Turns a prompt and the feedback on it into the next prompt.
        output: The dialogue JSONL file sessions are appended to.
        num_images: Images per round (K).
        num_inference_steps: DDIM steps.
        guidance_scale: Classifier-free guidance scale.
        eta: DDIM eta (0: deterministic given the seed).
        seed: Seed of the first round; every later generation uses the next seed.
        category: Label saved with dialogues whose start request gives none.
        session_timeout: Seconds a session may stay idle; then it is saved (as by :meth:`finish` without a choice)
            and closed. Checked at every request.
        adapter: Adapts the LoRA after each choice (``--adapt``); None: the model stays fixed.
    """

    def __init__(
        self,
        backbone: DiffusionBackbone,
        refiner: PromptRefiner,
        output: str | Path,
        num_images: int = 4,
        num_inference_steps: int = 20,
        guidance_scale: float = 4.0,
        eta: float = 0.0,
        seed: int = 0,
        category: str | None = None,
        session_timeout: float = 3600.0,
        adapter: SessionAdapter | None = None,
    ) -> None:
        if num_images < 1:
            raise ValueError(f"num_images must be at least 1, got {num_images}")
        if not session_timeout > 0:
            raise ValueError(f"session_timeout must be > 0 seconds, got {session_timeout}")
        self.backbone = backbone.eval()
        self.refiner = refiner
        self.output = Path(output)
        self.image_root = self.output.parent / f"{self.output.stem}_images"
        self.num_images = num_images
        self.num_inference_steps = num_inference_steps
        self.guidance_scale = guidance_scale
        self.eta = eta
        self.next_seed = seed
        self.category = category
        self.session_timeout = session_timeout
        self.journal_dir = self.output.parent / f"{self.output.stem}_sessions"
        self.adapter = adapter
        self.last_adaptation: AdaptStats | None = None  # the latest choice's adaptation
        self.sessions: dict[str, Session] = {}
        self.lock = threading.Lock()
        self.progress = Progress()  # read without the lock, while a generation holds it
        self.recover()

    # ------------------------------------------------------------------ persistence and expiry
    def _journal(self, session: Session) -> Path:
        return self.journal_dir / f"{session.dialogue_id}.json"

    def _persist(self, session: Session) -> None:
        """Write the session's rounds so far (replacing the last write atomically)."""
        with atomic_file(self._journal(session)) as tmp:
            tmp.write_text(json.dumps(session.to_json(), ensure_ascii=False), encoding="utf-8")

    def _save_and_close(self, session: Session) -> Dialogue:
        """Append the session's dialogue to the output, then forget it (the journal last: never lost between)."""
        dialogue = session.dialogue()
        append_dialogue(self.output, dialogue)
        self.sessions.pop(session.dialogue_id, None)
        self._journal(session).unlink(missing_ok=True)
        return dialogue

    def recover(self) -> list[Dialogue]:
        """Save the sessions an earlier run left unfinished (a crash) as dialogues; returns them."""
        saved = []
        for path in sorted(self.journal_dir.glob("*.json")):
            try:
                obj = json.loads(path.read_text(encoding="utf-8"))
                turns = [Turn.from_json(t, str(path), prefix=f"turns[{i}].") for i, t in enumerate(obj["turns"])]
                session = Session(obj["dialogue_id"], obj["initial_prompt"], obj["category"], turns)
                if obj["pending"] is not None:
                    session.pending = (obj["pending"]["prompt"], list(obj["pending"]["images"]), torch.empty(0))
                saved.append(self._save_and_close(session))  # validates the dialogue before appending it
            except (OSError, ValueError, KeyError, TypeError) as e:
                logger.warning("interact: cannot recover the unfinished session %s (%s); left as it is", path, e)
                continue
            logger.warning("interact: saved the unfinished session %s (%d rounds) of an earlier run to %s",
                           session.dialogue_id, len(saved[-1].turns), self.output)
        return saved

    def expire_idle(self) -> list[Dialogue]:
        """Save and close the sessions idle longer than ``session_timeout`` (call with the lock held)."""
        now = time.monotonic()
        idle = [s for s in self.sessions.values() if now - s.last_used > self.session_timeout]
        return [self._save_and_close(session) for session in idle]

    def _session(self, session_id: Any) -> Session:
        self.expire_idle()
        if session_id not in self.sessions:
            raise RequestError(f"unknown session {session_id!r} (finished, expired after {self.session_timeout:g} s "
                               "idle, or started before a restart?)")
        session = self.sessions[session_id]
        session.last_used = time.monotonic()
        return session

    def _generate(self, session: Session, prompt: str) -> Tensor:
        """Samples K images of ``prompt``, writes them as PNG files and makes them the pending round."""
        generator = torch.Generator(self.backbone.device).manual_seed(self.next_seed)
        self.next_seed += 1
        with self.progress.counting(self.backbone.unet, self.num_inference_steps):
            images = self.backbone.sample(
                [prompt] * self.num_images,
                num_inference_steps=self.num_inference_steps,
                guidance_scale=self.guidance_scale,
                eta=self.eta,
                generator=generator,
            ).float().cpu()
        t = session.round
        names = [f"{self.image_root.name}/{session.dialogue_id}/r{t}_{k}.png" for k in range(len(images))]
        for name, image in zip(names, images):
            with atomic_file(self.output.parent / name) as tmp:
                to_pil(image).save(tmp, format="PNG")
        session.pending = (prompt, names, images)
        self._persist(session)
        return images

    def start(self, prompt: str, category: str | None = None) -> tuple[Session, Tensor]:
        """Opens a session and generates its first round; returns it and the images ``[K, 3, H, W]`` in ``[0, 1]``."""
        if not prompt.strip():
            raise RequestError("the prompt is empty")
        with self.lock:
            self.expire_idle()
            dialogue_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
            session = Session(dialogue_id, prompt.strip(), category if category is not None else self.category)
            if self.adapter is not None:
                self.adapter.new_session()  # from the tool's LoRA, or the earlier sessions' (carry_over)
            images = self._generate(session, session.initial_prompt)
            self.sessions[session.dialogue_id] = session
            return session, images

    def _record(self, session: Session, chosen: int | None, feedback: str, satisfaction: float | None) -> Turn:
        prompt, names, _ = session.pending
        if chosen is not None and not 0 <= chosen < len(names):
            raise RequestError(f"chosen must be an image index 0..{len(names) - 1}, got {chosen}")
        if satisfaction is not None and not 0.0 <= satisfaction <= 1.0:
            raise RequestError(f"satisfaction must be in [0, 1], got {satisfaction}")
        turn = Turn(round=len(session.turns) + 1, user_feedback=feedback, prompt=prompt, images=names,
                    chosen=chosen, satisfaction=satisfaction)
        session.turns.append(turn)
        session.pending = None
        self._persist(session)
        return turn

    def choose(self, session_id: str, chosen: int, feedback: str, satisfaction: float | None = None) -> tuple[Turn, str]:
        """Records the pending round's choice and feedback; returns the turn and the refined next prompt."""
        with self.lock:
            session = self._session(session_id)
            if session.pending is None:
                raise RequestError("no images to choose from: generate the next round first")
            images = session.pending[2]
            turn = self._record(session, chosen, feedback, satisfaction)
            if self.adapter is not None and len(images) >= 2:
                self.last_adaptation = self.adapter.adapt(images, chosen, turn.prompt)
            return turn, self.refiner.refine(turn.prompt, feedback, list(session.turns))

    def next_round(self, session_id: str, prompt: str) -> tuple[Session, Tensor]:
        """Generates the next round from ``prompt`` (the refined prompt, possibly edited)."""
        if not prompt.strip():
            raise RequestError("the prompt is empty")
        with self.lock:
            session = self._session(session_id)
            if session.pending is not None:
                raise RequestError("choose an image of this round first (or finish)")
            return session, self._generate(session, prompt.strip())

    def finish(
        self, session_id: str, chosen: int | None = None, feedback: str = "", satisfaction: float | None = None
    ) -> Dialogue:
        """Records a pending round (with ``chosen`` when given), appends the dialogue to the output and closes it."""
        with self.lock:
            session = self._session(session_id)
            if session.pending is not None:
                self._record(session, chosen, feedback, satisfaction)
            dialogue = self._save_and_close(session)
            if self.adapter is not None:
                self.backbone.save_lora(self.lora_path(dialogue.dialogue_id))
            return dialogue


    def lora_path(self, dialogue_id: str) -> Path:
        """Where ``--adapt`` saves a finished session's LoRA: ``<output stem>_images/<dialogue id>/lora``."""
        return self.image_root / dialogue_id / "lora"


def to_pil(image: Tensor) -> Image.Image:
    """``[3, H, W]`` in ``[0, 1]`` -> an RGB PIL image."""
    array = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(array)


def data_uri(image: Tensor) -> str:
    """A ``data:image/png;base64,...`` URI of ``[3, H, W]`` in ``[0, 1]``."""
    buffer = io.BytesIO()
    to_pil(image).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def is_unicode(text: str) -> bool:
    """Whether ``text`` can be saved as UTF-8 (lone surrogates cannot)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
