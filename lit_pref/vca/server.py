"""The web front end of ``python -m lit_pref interact`` (:mod:`lit_pref.vca.interact`) on a
:class:`~lit_pref.vca.studio.Studio`.

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

Every request gets a JSON reply: errors answer ``{"error": message}`` with status 400 (bad request: a missing or
negative ``Content-Length``, invalid JSON or UTF-8, JSON nested too deeply, a field of the wrong type, text that
is not valid Unicode), 403 (foreign host), 404, 413 (a body over 1 MiB), 415, or 500 (a fault of the tool).
"""

from __future__ import annotations

import json
import logging
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from torch import Tensor

from lit_pref.vca.info import model_info
from lit_pref.vca.page import PAGE
from lit_pref.vca.studio import RequestError, Session, Studio, data_uri, is_unicode

__all__ = ["LOCAL_HOSTS", "make_server"]

LOCAL_HOSTS = ("127.0.0.1", "localhost")
_MAX_BODY = 1 << 20

logger = logging.getLogger(__name__)


def _get(payload: dict, key: str, kind: type | tuple[type, ...], required: bool = True, default: Any = None) -> Any:
    value = payload.get(key)
    if value is None:
        if required:
            raise RequestError(f"missing field '{key}'")
        return default
    if isinstance(value, bool) or not isinstance(value, kind):
        raise RequestError(f"field '{key}' has the wrong type ({type(value).__name__})")
    if isinstance(value, str) and not is_unicode(value):
        raise RequestError(f"field '{key}' is not valid Unicode (a lone surrogate such as \\ud800)")
    return value



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
