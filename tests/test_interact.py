"""The interactive co-adaptation tool: the web server driven by HTTP requests, the terminal mode, configs, --lora."""

from __future__ import annotations

import base64
import io
import json
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO
from lit_pref.datamodules import DialogueDataModule, read_dialogues
from lit_pref.backbone import DiffusionBackbone
from lit_pref.vca import TemplateRefiner
from lit_pref.vca.interact import main, parse_args, studio_from_args
from lit_pref.vca.server import make_server

RED = "a small red circle on a white background"
GREEN = "a small green circle on a white background"
FAST = ["--backbone.init_args.model", "toy", "--num_inference_steps", "2", "--device", "cpu"]


@pytest.fixture
def server(tmp_path):
    cfg = parse_args([*FAST, "--output", str(tmp_path / "out" / "d.jsonl"), "--port", "0", "--num_images", "3",
                      "--category", "test", "--refiner", "lit_pref.toy.ToyRefiner"])
    studio = studio_from_args(cfg)
    srv = make_server(studio, cfg.host, cfg.port)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv, studio
    srv.shutdown()
    srv.server_close()
    thread.join()


def _request(srv, path, payload=None, headers=None):
    """(status, parsed JSON or text) of a GET (payload None) or a JSON POST."""
    url = f"http://127.0.0.1:{srv.server_address[1]}{path}"
    data = None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            status, body, kind = r.status, r.read(), r.headers["Content-Type"]
    except urllib.error.HTTPError as e:
        status, body, kind = e.code, e.read(), e.headers["Content-Type"]
    return status, (json.loads(body) if kind == "application/json" else body.decode())


def _decode(uri: str) -> np.ndarray:
    assert uri.startswith("data:image/png;base64,")
    return np.array(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))


def test_web_session_is_saved_as_a_dialogue_the_datamodule_reads(server, tmp_path):
    srv, studio = server
    status, page = _request(srv, "/")
    assert status == 200 and "Image co-adaptation" in page and "/api/start" in page and "/api/finish" in page

    status, r1 = _request(srv, "/api/start", {"prompt": RED})
    assert status == 200 and r1["round"] == 1 and r1["prompt"] == RED and len(r1["images"]) == 3
    assert _decode(r1["images"][0]).shape == (32, 32, 3)
    sid = r1["session_id"]

    status, chose = _request(srv, "/api/choose", {"session_id": sid, "chosen": 1, "feedback": "make it green",
                                                  "satisfaction": 0.5})
    assert status == 200 and chose == {"round": 1, "next_prompt": GREEN}
    status, again = _request(srv, "/api/choose", {"session_id": sid, "chosen": 0, "feedback": "x"})
    assert status == 400 and "generate the next round first" in again["error"]

    status, r2 = _request(srv, "/api/next", {"session_id": sid, "prompt": chose["next_prompt"]})
    assert status == 200 and r2["round"] == 2 and r2["prompt"] == GREEN
    status, done = _request(srv, "/api/finish", {"session_id": sid, "chosen": 2, "feedback": "perfect"})
    assert status == 200 and done["rounds"] == 2 and done["dialogue_id"] == sid

    path = tmp_path / "out" / "d.jsonl"
    dm = DialogueDataModule(str(path), batch_size=4)
    (batch,) = list(dm.train_dataloader())
    (d,) = batch
    assert (d.dialogue_id, d.initial_prompt, d.category) == (sid, RED, "test")
    t1, t2 = d.turns
    assert (t1.round, t1.prompt, t1.chosen, t1.user_feedback, t1.satisfaction) == (1, RED, 1, "make it green", 0.5)
    assert (t2.round, t2.prompt, t2.chosen, t2.user_feedback, t2.satisfaction) == (2, GREEN, 2, "perfect", None)
    # the file stores paths relative to its folder; the data module resolves them against it
    assert t1.images == [str(path.parent / f"d_images/{sid}/r1_{k}.png") for k in range(3)]
    for k in range(3):  # the saved PNG files are the images the page showed
        assert np.array_equal(np.array(Image.open(t2.images[k])), _decode(r2["images"][k]))
    status, gone = _request(srv, "/api/next", {"session_id": sid, "prompt": GREEN})
    assert status == 400 and "unknown session" in gone["error"]


def test_bad_requests_are_refused_with_a_reason(server):
    srv, studio = server
    assert _request(srv, "/", headers={"Host": "evil.example:80"})[0] == 403  # DNS rebinding
    assert _request(srv, "/api/start", {"prompt": RED}, headers={"Host": "evil.example"})[0] == 403
    assert _request(srv, "/api/start", {"prompt": RED}, headers={"Content-Type": "text/plain"})[0] == 415
    assert _request(srv, "/api/nope", {})[0] == 404
    assert _request(srv, "/nope")[0] == 404
    status, r = _request(srv, "/api/start", {"prompt": "  "})
    assert status == 400 and "empty" in r["error"]
    status, r = _request(srv, "/api/start", {"prompt": 3})
    assert status == 400 and "'prompt'" in r["error"]
    status, r = _request(srv, "/api/start", {"prompt": RED})
    sid = r["session_id"]
    for payload, reason in [
        ({"session_id": sid, "chosen": 3, "feedback": ""}, "0..2"),
        ({"session_id": sid, "chosen": True, "feedback": ""}, "'chosen'"),
        ({"session_id": sid, "chosen": 0}, "missing field 'feedback'"),
        ({"session_id": sid, "chosen": 0, "feedback": "", "satisfaction": 2}, "[0, 1]"),
        ({"session_id": "nobody", "chosen": 0, "feedback": ""}, "unknown session"),
    ]:
        status, r = _request(srv, "/api/choose", payload)
        assert status == 400 and reason in r["error"], (payload, r)
    status, r = _request(srv, "/api/next", {"session_id": sid, "prompt": GREEN})
    assert status == 400 and "choose an image" in r["error"]
    # finishing without a choice keeps the round's images, with no choice recorded
    status, r = _request(srv, "/api/finish", {"session_id": sid})
    assert status == 200 and r["rounds"] == 1
    (d,) = read_dialogues(studio.output)
    assert d.turns[0].chosen is None and len(d.turns[0].images) == 3 and d.turns[0].user_feedback == ""


def test_terminal_mode_reads_stdin_and_writes_the_same_format(tmp_path, monkeypatch, capsys):
    answers = [RED, "7", "2", "make it green", "lots", "0.75", "", "1", "perfect", "", "finish",  # session 1
               GREEN, "1", "", ""]  # session 2 ends with the input, after choosing image 1
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(answers) + "\n"))
    out = tmp_path / "t.jsonl"
    main([*FAST, "--output", str(out), "--terminal", "true", "--num_images", "2", "--refiner", "lit_pref.toy.ToyRefiner"])
    printed = capsys.readouterr().out
    assert "please type a number from 1 to 2" in printed and "please type a number from 0 to 1" in printed
    assert f"next prompt: {GREEN}" in printed
    first, second = read_dialogues(out)  # checks the image files exist
    assert [(t.prompt, t.chosen, t.user_feedback, t.satisfaction) for t in first.turns] == [
        (RED, 1, "make it green", 0.75), (GREEN, 0, "perfect", None)]
    assert [(t.prompt, t.chosen, t.user_feedback) for t in second.turns] == [(GREEN, 0, "")]
    assert (out.parent / first.turns[0].images[1]).is_file()
    assert f"image 2: {out.parent / first.turns[0].images[1]}" in printed


def test_host_other_than_localhost_is_refused_before_loading_anything(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--host", "0.0.0.0"])
    assert info.value.code != 0 and "localhost only" in capsys.readouterr().err
    with pytest.raises(ValueError, match="localhost only"):
        make_server(object(), "192.168.1.2", 0)


def test_lora_option_loads_the_adapter_with_its_rank(tmp_path):
    trained = DiffusionBackbone(model="toy", lora_rank=2, seed=1)
    with torch.no_grad():
        for p in trained.lora_parameters():
            p.normal_()
    trained.save_lora(tmp_path / "lora")
    cfg = parse_args([*FAST, "--lora", str(tmp_path / "lora"), "--output", str(tmp_path / "d.jsonl")])
    studio = studio_from_args(cfg)
    assert studio.backbone.lora_config.r == 2
    mine, theirs = studio.backbone.lora_state_dict(), trained.lora_state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


@pytest.mark.parametrize("name", ["toy.yaml", "sd15.yaml"])
def test_shipped_interact_configs_parse(name):
    cfg = parse_args(["--config", str(REPO / "configs" / "interact" / name)])
    assert cfg.backbone.class_path == "lit_pref.backbone.DiffusionBackbone" and cfg.host == "127.0.0.1"
    assert cfg.refiner.class_path == {"toy.yaml": "lit_pref.toy.ToyRefiner",
                                      "sd15.yaml": "lit_pref.vca.refiner.CausalLMRefiner"}[name]


def test_default_refiner_is_the_template_refiner(tmp_path):
    studio = studio_from_args(parse_args([*FAST, "--output", str(tmp_path / "d.jsonl")]))
    assert isinstance(studio.refiner, TemplateRefiner) and studio.num_images == 4


def test_info_and_progress_endpoints(server):
    srv, studio = server
    assert _request(srv, "/api/progress") == (200, {"step": 0, "steps": 0})  # idle
    status, info = _request(srv, "/api/info")
    assert status == 200 and info["model"] == "toy" and "triangle" in info["vocabulary"]["shapes"]
    assert "move it to the centre" in info["feedback"]
    seen = []
    studio.backbone.unet.register_forward_hook(lambda *args: seen.append(studio.progress.as_dict()))
    _request(srv, "/api/start", {"prompt": RED})
    # this hook runs before the counter's: each UNet call (one a DDIM step) sees the steps finished before it
    assert seen == [{"step": k, "steps": 2} for k in (0, 1)]
    assert studio.progress.as_dict() == {"step": 0, "steps": 0}


def test_a_port_in_use_is_one_clear_line(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit, match=f"port {port} is in use.*--port"):
            main([*FAST, "--output", str(tmp_path / "d.jsonl"), "--port", str(port)])
