"""``python -m lit_pref interact``: the interactive co-adaptation tool, a local web page or a terminal session.

A person types a prompt and sees K images; picks one and writes feedback; the refiner proposes the next prompt
(editable); and so on until "finish", which appends the session to ``--output`` as one dialogue line
(:mod:`lit_pref.formats.dialogues`), so it becomes training data. Every round's images are written as PNG files to
``<output stem>_images/<dialogue id>/r<round>_<k>.png`` beside the output file when they are generated.

The web server (standard library ``http.server``) listens on localhost only and answers requests whose ``Host``
header names localhost only (DNS rebinding); its POST endpoints take and return JSON (``Content-Type:
application/json`` is required, so another web site cannot post a plain form to them):

- ``GET /``: the page (:mod:`lit_pref.vca.page`).
- ``GET /api/progress`` -> ``{"step", "steps"}``: the denoising step of the generation in progress (0 of 0 when
  idle); ``GET /api/info`` -> ``{"model", "vocabulary", "feedback"}``: what the model and the refiner understand
  (:func:`lit_pref.vca.info.model_info`).
- ``POST /api/start`` ``{"prompt", "category"?}`` -> ``{"session_id", "round": 1, "prompt", "images", "adapt"}``
  (``images``: K PNG data URIs; ``adapt``: whether the tool adapts the model after each choice).
- ``POST /api/choose`` ``{"session_id", "chosen", "feedback", "satisfaction"?}`` -> ``{"round", "next_prompt"}``:
  records the round and refines the prompt; with ``--adapt`` first adapts the LoRA to the choice and adds
  ``"adapted": {"updates", "total_updates", "seconds"}``.
- ``POST /api/next`` ``{"session_id", "prompt"}`` -> ``{"session_id", "round", "prompt", "images"}``.
- ``POST /api/finish`` ``{"session_id", "chosen"?, "feedback"?, "satisfaction"?}`` -> ``{"dialogue_id", "rounds",
  "path"}``: records a round not yet chosen from (with ``chosen`` when given, else with its images and no choice),
  appends the dialogue and closes the session; with ``--adapt`` also saves the session's LoRA (diffusers format) to
  ``<output stem>_images/<dialogue id>/lora`` and adds ``"lora"``.

Co-adaptation (``--adapt``): after each choice, :class:`~lit_pref.vca.adapt.LiveAdapter` makes ``--adapt_updates``
Diffusion-DPO steps of the LoRA on the round's pairs (chosen ≻ each unchosen image), so the next round is drawn from
the adapted model; a new session starts from the LoRA the tool was started with. An adapting tool serves one person
at a time (sessions share the model).

Every request gets a JSON reply: errors answer ``{"error": message}`` with status 400 (bad request: a missing or
negative ``Content-Length``, invalid JSON or UTF-8, JSON nested too deeply, a field of the wrong type, text that
is not valid Unicode), 403 (foreign host), 404, 413 (a body over 1 MiB), 415, or 500 (a fault of the tool).

Sessions survive a crash: each session's recorded rounds and its pending round are written (atomically) to
``<output stem>_sessions/<dialogue id>.json`` as they happen; a tool started on the same ``--output`` saves such
leftovers as dialogues (the pending round with its images and no choice, as ``finish`` does) and logs it. A
session idle for ``--session_timeout`` seconds expires: it is saved the same way and closed.
"""

from __future__ import annotations

import base64
import io
import errno
import json
import logging
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TextIO

import torch
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace
from PIL import Image
from torch import Tensor

from lit_pref.formats.dialogues import Dialogue, Turn, append_dialogue
from lit_pref.backbone import DiffusionBackbone
from lit_pref.backbone.backbone import lora_config
from lit_pref.io import atomic_file
from lit_pref.vca.adapt import AdaptStats, LiveAdapter
from lit_pref.vca.info import Progress, model_info
from lit_pref.vca.page import PAGE
from lit_pref.vca.refiner import PromptRefiner

__all__ = ["LOCAL_HOSTS", "RequestError", "Session", "Studio", "main", "make_server", "parse_args", "run_terminal",
           "studio_from_args"]

LOCAL_HOSTS = ("127.0.0.1", "localhost")
_MAX_BODY = 1 << 20

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
        adapter: LiveAdapter | None = None,
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
                self.adapter.reset()  # every person starts from the tool's LoRA
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


def _get(payload: dict, key: str, kind: type | tuple[type, ...], required: bool = True, default: Any = None) -> Any:
    value = payload.get(key)
    if value is None:
        if required:
            raise RequestError(f"missing field '{key}'")
        return default
    if isinstance(value, bool) or not isinstance(value, kind):
        raise RequestError(f"field '{key}' has the wrong type ({type(value).__name__})")
    if isinstance(value, str) and not _is_unicode(value):
        raise RequestError(f"field '{key}' is not valid Unicode (a lone surrogate such as \\ud800)")
    return value


def _is_unicode(text: str) -> bool:
    """Whether ``text`` can be saved as UTF-8 (lone surrogates cannot)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _read_json_body(handler: BaseHTTPRequestHandler) -> dict:
    """The request's JSON object, its size checked against ``Content-Length`` and the 1 MiB cap first."""
    raw = handler.headers.get("Content-Length")
    if raw is None or not (raw.strip().isascii() and raw.strip().isdigit()):
        raise RequestError(f"Content-Length must be a non-negative integer, got {raw!r}")
    length = int(raw)
    if length > _MAX_BODY:
        raise RequestError(f"request too large ({length} bytes; at most {_MAX_BODY})", HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
    body = handler.rfile.read(length)
    try:
        payload = json.loads(body.decode("utf-8") or "null")
    except UnicodeDecodeError as e:
        raise RequestError(f"the body is not valid UTF-8 ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise RequestError(f"invalid JSON ({e})") from None
    except RecursionError:
        raise RequestError("invalid JSON (nested too deeply)") from None
    if not isinstance(payload, dict):
        raise RequestError("expected a JSON object")
    return payload


def _round_reply(session: Session, images: Tensor) -> dict:
    return {"session_id": session.dialogue_id, "round": session.round, "prompt": session.pending[0],
            "images": [data_uri(image) for image in images]}


def _handler(studio: Studio) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "lit_pref-interact"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
            pass  # quiet: the terminal shows the URL and errors only

        def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: HTTPStatus, obj: dict) -> None:
            self._send(status, json.dumps(obj).encode("utf-8"), "application/json")

        def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
            """http.server's own errors (a malformed request line, an unsupported method) as JSON too."""
            self.close_connection = True
            self._json(HTTPStatus(code), {"error": message or HTTPStatus(code).phrase})

        def _local(self) -> bool:
            host = (self.headers.get("Host") or "").split(":")[0]  # the server binds 127.0.0.1: no IPv6 hosts
            if host not in LOCAL_HOSTS:
                self._json(HTTPStatus.FORBIDDEN, {"error": "only localhost may use this tool"})
                return False
            return True

        def do_GET(self) -> None:
            if not self._local():
                return
            path = self.path.split("?", 1)[0]
            if path in ("/api/progress", "/api/info"):  # the generation's step; what the model understands
                self._json(HTTPStatus.OK, studio.progress.as_dict() if path == "/api/progress"
                           else model_info(studio.backbone.model_name, studio.refiner))
                return
            if path != "/":
                self._json(HTTPStatus.NOT_FOUND, {"error": f"no page {self.path}"})
                return
            self._send(HTTPStatus.OK, PAGE.encode("utf-8"), "text/html; charset=utf-8")

        def do_POST(self) -> None:
            if not self._local():
                return
            if self.headers.get("Content-Type", "").split(";")[0].strip() != "application/json":
                self._json(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, {"error": "send JSON (Content-Type: application/json)"})
                return
            routes = {"/api/start": self._start, "/api/choose": self._choose, "/api/next": self._next,
                      "/api/finish": self._finish}
            if self.path not in routes:
                self._json(HTTPStatus.NOT_FOUND, {"error": f"no endpoint {self.path}"})
                return
            try:
                reply = routes[self.path](_read_json_body(self))
            except RequestError as e:
                self.close_connection = True  # the body may be unread
                self._json(e.status, {"error": str(e)})
                return
            except Exception as e:  # noqa: BLE001 - a fault of the tool still gets a JSON reply
                logger.exception("interact: %s failed", self.path)
                self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"the tool failed: {type(e).__name__}: {e}"})
                return
            self._json(HTTPStatus.OK, reply)

        def _start(self, payload: dict) -> dict:
            session, images = studio.start(_get(payload, "prompt", str), _get(payload, "category", str, required=False))
            return {**_round_reply(session, images), "adapt": studio.adapter is not None}

        def _choose(self, payload: dict) -> dict:
            turn, next_prompt = studio.choose(
                _get(payload, "session_id", str), _get(payload, "chosen", int), _get(payload, "feedback", str),
                _get(payload, "satisfaction", (int, float), required=False),
            )
            reply = {"round": turn.round, "next_prompt": next_prompt}
            if studio.adapter is not None and studio.last_adaptation is not None:
                stats = studio.last_adaptation
                reply["adapted"] = {"updates": stats.updates, "total_updates": studio.adapter.total_updates,
                                    "seconds": round(stats.seconds, 3)}
            return reply

        def _next(self, payload: dict) -> dict:
            return _round_reply(*studio.next_round(_get(payload, "session_id", str), _get(payload, "prompt", str)))

        def _finish(self, payload: dict) -> dict:
            dialogue = studio.finish(
                _get(payload, "session_id", str), _get(payload, "chosen", int, required=False),
                _get(payload, "feedback", str, required=False, default=""),
                _get(payload, "satisfaction", (int, float), required=False),
            )
            reply = {"dialogue_id": dialogue.dialogue_id, "rounds": len(dialogue.turns), "path": str(studio.output)}
            if studio.adapter is not None:
                reply["lora"] = str(studio.lora_path(dialogue.dialogue_id))
            return reply

    return Handler


def make_server(studio: Studio, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """A web server for ``studio`` bound to ``host`` (localhost only) and ``port`` (0: a free port).

    Call ``serve_forever()`` on it; its URL is ``f"http://127.0.0.1:{server.server_address[1]}/"``.
    """
    if host not in LOCAL_HOSTS:
        raise ValueError(f"--host {host!r} refused: the tool serves localhost only ({', '.join(LOCAL_HOSTS)})")
    return ThreadingHTTPServer(("127.0.0.1", port), _handler(studio))


def _ask(question: str, stdin: TextIO, stdout: TextIO) -> str | None:
    """Prints ``question`` and reads one line (stripped); None at the end of input. A line that is not valid
    UTF-8 (it would make the dialogue unsavable) is refused and asked again."""
    while True:
        stdout.write(question)
        stdout.flush()
        line = stdin.readline()
        if _is_unicode(line):
            return None if not line else line.strip()
        stdout.write("  that line is not valid UTF-8 text; please type it again\n")


def run_terminal(studio: Studio, stdin: TextIO, stdout: TextIO) -> list[Dialogue]:
    """The tool without a browser: prompts, choices and feedback from ``stdin``; images written as PNG files.

    Per session: a prompt (an empty line or the end of input quits); then per round the image files are listed and
    it asks for the number of the chosen image (1..K; ``finish`` saves without choosing), the feedback, an optional
    satisfaction in ``[0, 1]``, and shows the refined next prompt (Enter accepts it, any text replaces it,
    ``finish`` saves the session). The end of input saves the session in progress. Returns the saved dialogues.
    """
    saved = []
    while True:
        prompt = _ask("\nprompt (empty to quit)> ", stdin, stdout)
        if not prompt:
            return saved
        session, _ = studio.start(prompt)
        finished = False
        while not finished:
            names = session.pending[1]
            stdout.write(f"round {session.round}: {session.pending[0]}\n")
            for k, name in enumerate(names, start=1):
                stdout.write(f"  image {k}: {studio.output.parent / name}\n")
            chosen = None
            while chosen is None:
                answer = _ask(f"choose an image 1..{len(names)} (or 'finish')> ", stdin, stdout)
                if answer is None or answer == "finish":
                    break
                if answer.isdigit() and 1 <= int(answer) <= len(names):
                    chosen = int(answer) - 1
                else:
                    stdout.write(f"  please type a number from 1 to {len(names)}\n")
            if chosen is None:
                saved.append(studio.finish(session.dialogue_id))
                break
            feedback = _ask("feedback> ", stdin, stdout) or ""
            satisfaction = None
            while True:
                answer = _ask("satisfaction 0..1 (Enter to skip)> ", stdin, stdout)
                if not answer:
                    break
                try:
                    satisfaction = float(answer)
                    if 0.0 <= satisfaction <= 1.0:
                        break
                except ValueError:
                    pass
                satisfaction = None
                stdout.write("  please type a number from 0 to 1, or press Enter\n")
            if studio.adapter is not None:
                stdout.write("adapting the model to your choice...\n")
            _, next_prompt = studio.choose(session.dialogue_id, chosen, feedback, satisfaction)
            if studio.adapter is not None and studio.last_adaptation is not None:
                stdout.write(f"adapted: {studio.last_adaptation.updates} updates in {studio.last_adaptation.seconds:.1f} s "
                             f"({studio.adapter.total_updates} this session)\n")
            stdout.write(f"next prompt: {next_prompt}\n")
            answer = _ask("Enter to generate it, type another prompt, or 'finish'> ", stdin, stdout)
            if answer is None or answer == "finish":
                saved.append(studio.finish(session.dialogue_id))
                finished = True
            else:
                studio.next_round(session.dialogue_id, answer or next_prompt)
        stdout.write(f"saved dialogue {saved[-1].dialogue_id} ({len(saved[-1].turns)} rounds) to {studio.output}\n")


def build_parser() -> ArgumentParser:
    """The ``interact`` argument parser (jsonargparse: ``--config file.yaml`` and class paths)."""
    parser = ArgumentParser(prog="python -m lit_pref interact", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", action=ActionConfigFile, help="A YAML file with any of the options below.")
    parser.add_subclass_arguments(
        DiffusionBackbone, "backbone", required=False,
        default={"class_path": "lit_pref.backbone.DiffusionBackbone", "init_args": {"model": "toy"}},
        help="The text-to-image model (default: the toy model).",
    )
    parser.add_subclass_arguments(
        PromptRefiner, "refiner", required=False, default={"class_path": "lit_pref.vca.refiner.TemplateRefiner"},
        help="The prompt refiner (default: TemplateRefiner; CausalLMRefiner for a chat model).",
    )
    parser.add_argument("--lora", type=str | None, default=None,
                        help="A LoRA folder (DiffusionBackbone.save_lora) to load; its rank and targets are used.")
    parser.add_argument("--output", type=str, default="dialogues.jsonl", help="Dialogue JSONL file to append to.")
    parser.add_argument("--category", type=str | None, default=None, help="Label saved with every dialogue.")
    parser.add_argument("--num_images", type=int, default=4, help="Images per round (K).")
    parser.add_argument("--num_inference_steps", type=int, default=20, help="DDIM steps.")
    parser.add_argument("--guidance_scale", type=float, default=4.0, help="Classifier-free guidance scale.")
    parser.add_argument("--eta", type=float, default=0.0, help="DDIM eta.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the first round (later rounds use the next seeds).")
    parser.add_argument("--device", type=str, default="auto", help="'auto' (cuda when available), 'cpu', 'cuda', ...")
    parser.add_argument("--host", type=str, default="127.0.0.1", help="Must be 127.0.0.1 or localhost.")
    parser.add_argument("--port", type=int, default=8765, help="Port (0: any free port; the URL is printed).")
    parser.add_argument("--terminal", type=bool, default=False, help="Run in the terminal instead of a web page.")
    parser.add_argument("--session_timeout", type=float, default=3600.0,
                        help="Seconds a web session may stay idle before it is saved and closed (not in the terminal).")
    parser.add_argument("--adapt", type=bool, default=False,
                        help="Adapt the LoRA after each choice (Diffusion-DPO on the round's pairs); finishing saves it.")
    parser.add_argument("--adapt_updates", type=int, default=4, help="Optimizer steps after each choice (--adapt).")
    parser.add_argument("--adapt_lr", type=float, default=1e-3, help="Learning rate of the adaptation (--adapt).")
    parser.add_argument("--adapt_beta", type=float, default=5000.0, help="Diffusion-DPO beta of the adaptation.")
    return parser


def parse_args(argv: list[str]) -> Namespace:
    """Parses and checks ``interact`` arguments (the host is refused here, before any model is loaded)."""
    parser = build_parser()
    cfg = parser.parse_args(argv)
    if cfg.host not in LOCAL_HOSTS:
        parser.error(f"--host {cfg.host!r} refused: the tool serves localhost only ({', '.join(LOCAL_HOSTS)})")
    if cfg.num_images < 1:
        parser.error(f"--num_images must be at least 1, got {cfg.num_images}")
    return cfg


def studio_from_args(cfg: Namespace) -> Studio:
    """Builds the backbone (with ``--lora``), the refiner and the :class:`Studio` from parsed arguments."""
    parser = build_parser()
    if cfg.lora is not None:
        for key, value in lora_config(cfg.lora).items():  # build the adapters the saved LoRA fits
            cfg[f"backbone.init_args.{key}"] = value
    objects = parser.instantiate(cfg)
    backbone: DiffusionBackbone = objects.backbone
    if cfg.lora is not None:
        backbone.load_lora(cfg.lora)
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    backbone = backbone.to(device)
    adapter = LiveAdapter(backbone, cfg.adapt_updates, cfg.adapt_lr, cfg.adapt_beta, seed=cfg.seed) if cfg.adapt else None
    return Studio(backbone, objects.refiner, cfg.output, cfg.num_images, cfg.num_inference_steps, cfg.guidance_scale,
                  cfg.eta, cfg.seed, cfg.category, session_timeout=cfg.session_timeout, adapter=adapter)


def main(argv: list[str]) -> None:
    """``python -m lit_pref interact [--config interact.yaml] [--terminal true] ...``"""
    cfg = parse_args(argv)
    studio = studio_from_args(cfg)
    if cfg.terminal:
        studio.session_timeout = float("inf")  # one person at the keyboard: a session never idles out
        if hasattr(sys.stdin, "reconfigure"):  # undecodable bytes become lone surrogates, which _ask refuses
            sys.stdin.reconfigure(errors="surrogateescape")
        run_terminal(studio, sys.stdin, sys.stdout)
        return
    try:
        server = make_server(studio, cfg.host, cfg.port)
    except OSError as error:
        if error.errno != errno.EADDRINUSE:
            raise
        raise SystemExit(f"lit_pref interact: port {cfg.port} is in use (another interact?); choose another with "
                         f"--port N, or --port 0 for any free port") from None
    print(f"lit_pref interact: open http://127.0.0.1:{server.server_address[1]}/  (Ctrl+C to stop; "
          f"dialogues go to {studio.output})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
