"""The interactive tool's edges: malformed requests all get a JSON reply, sessions survive a crash and expire
when idle, text that cannot be saved as UTF-8 is refused where it is typed."""

from __future__ import annotations

import http.client
import io
import json

import pytest

from lit_pref.datamodules import read_dialogues
from lit_pref.vca.interact import main, parse_args, studio_from_args
from lit_pref.vca.studio import RequestError
from test_interact import FAST, RED, _request, server  # noqa: F401 - the fixture


def _raw(srv, method: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
    """(status, JSON reply) of a request with exactly these headers (no Content-Length unless given)."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.server_address[1], timeout=60)
    conn.putrequest(method, path, skip_accept_encoding=True)
    for key, value in {"Content-Type": "application/json", **headers}.items():
        conn.putheader(key, value)
    conn.endheaders(body)
    response = conn.getresponse()
    assert response.headers["Content-Type"] == "application/json"
    reply = json.loads(response.read())
    conn.close()
    return response.status, reply


def test_malformed_requests_get_a_json_error(server):  # noqa: F811
    srv, studio = server
    status, r = _raw(srv, "POST", "/api/start", b'{"prompt": "x"}', {"Content-Length": "-1"})
    assert status == 400 and "Content-Length" in r["error"]  # -1 used to read the whole stream, past the cap
    status, r = _raw(srv, "POST", "/api/start", b'{"prompt": "x"}', {"Content-Length": "lots"})
    assert status == 400 and "Content-Length" in r["error"]
    status, r = _raw(srv, "POST", "/api/start", b"", {"Content-Length": str(200 << 20)})
    assert status == 413 and "too large" in r["error"]
    deep = b'{"prompt": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    status, r = _raw(srv, "POST", "/api/start", deep, {"Content-Length": str(len(deep))})
    assert status == 400 and "nested too deeply" in r["error"]
    latin1 = b'{"prompt": "caf\xe9"}'
    status, r = _raw(srv, "POST", "/api/start", latin1, {"Content-Length": str(len(latin1))})
    assert status == 400 and "UTF-8" in r["error"]
    status, r = _raw(srv, "PUT", "/", b"", {"Content-Length": "0"})
    assert status == 501 and r["error"]

    status, r = _request(srv, "/api/start", {"prompt": RED})
    sid = r["session_id"]
    surrogate = f'{{"session_id": "{sid}", "chosen": 0, "feedback": "\\ud800"}}'.encode()
    status, r = _raw(srv, "POST", "/api/choose", surrogate, {"Content-Length": str(len(surrogate))})
    assert status == 400 and "'feedback' is not valid Unicode" in r["error"]
    status, r = _request(srv, "/api/finish", {"session_id": sid, "chosen": 0, "feedback": "fine"})
    assert status == 200
    (d,) = read_dialogues(studio.output)
    assert d.turns[0].user_feedback == "fine"


def test_rounds_survive_a_crash_and_idle_sessions_expire(tmp_path):
    out = tmp_path / "d.jsonl"
    cfg = parse_args([*FAST, "--output", str(out), "--num_images", "2", "--session_timeout", "60"])
    studio = studio_from_args(cfg)
    crashed, _ = studio.start(RED)
    studio.choose(crashed.dialogue_id, 1, "make it green")
    studio.next_round(crashed.dialogue_id, "a small green circle")  # round 2 shown, the tool then dies
    assert not out.exists()

    restarted = studio_from_args(cfg)  # a new run on the same output saves what the crashed one had recorded
    (d,) = read_dialogues(out)
    assert d.dialogue_id == crashed.dialogue_id and [(t.round, t.chosen, t.user_feedback) for t in d.turns] == [
        (1, 1, "make it green"), (2, None, "")]
    assert d.turns[1].images == crashed.pending[1] and not list(restarted.journal_dir.iterdir())

    idle, _ = restarted.start(RED)
    idle.last_used -= 61  # an hour of silence, shortened
    other, _ = restarted.start(RED)  # any request expires idle sessions: saved, then closed
    assert idle.dialogue_id not in restarted.sessions and other.dialogue_id in restarted.sessions
    assert [x.dialogue_id for x in read_dialogues(out)] == [crashed.dialogue_id, idle.dialogue_id]
    with pytest.raises(RequestError, match="expired"):
        restarted.choose(idle.dialogue_id, 0, "")


def test_terminal_refuses_a_line_that_is_not_utf8_instead_of_losing_the_dialogue(tmp_path, monkeypatch, capsys):
    # what sys.stdin (errors="surrogateescape") makes of a Latin-1 byte 0xe9
    answers = [RED, "1", "caf\udce9", "café", "", "finish"]
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(answers) + "\n"))
    out = tmp_path / "t.jsonl"
    main([*FAST, "--output", str(out), "--terminal", "true", "--num_images", "2"])
    assert "not valid UTF-8" in capsys.readouterr().out
    (d,) = read_dialogues(out)
    assert d.turns[0].user_feedback == "café"

