"""The interactive page in a real headless Chromium: what the model understands, progress while generating, the
choice message, and a stopped server. Screenshots of each state go to ``$PAGE_SCREENSHOTS`` when it is set."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from browser import CHROMIUM, Browser
from lit_pref.vca.interact import parse_args, studio_from_args
from lit_pref.vca.server import make_server

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (apt-get install -y chromium)")


def test_page_shows_vocabulary_progress_choice_and_a_stopped_server(tmp_path):
    shots = Path(os.environ.get("PAGE_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    cfg = parse_args(["--backbone.init_args.model", "toy", "--num_inference_steps", "40", "--device", "cpu",
                      "--output", str(tmp_path / "d.jsonl"), "--port", "0", "--num_images", "3",
                      "--refiner", "lit_pref.toy.ToyRefiner"])
    server = make_server(studio_from_args(cfg), cfg.host, cfg.port)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    browser = Browser()
    try:
        browser.goto(f"http://127.0.0.1:{server.server_address[1]}/")
        info = browser.wait_for("!document.getElementById('info').hidden && document.getElementById('info').innerText")
        assert "triangle" in info and "magenta" in info and "make it <colour>" in info and "move it to the centre" in info
        browser.js("document.getElementById('prompt').value = 'a small red circle on a white background'")
        browser.screenshot(shots / "1_start.png")

        browser.js("document.getElementById('generate').click()")
        status = browser.wait_for("!document.getElementById('progress').hidden && "
                                  "document.getElementById('status').textContent")
        browser.screenshot(shots / "2_generating.png")
        assert "denoising step" in status and "of 40" in status

        browser.wait_for("!document.getElementById('round').hidden")
        browser.js("document.getElementById('send').click()")
        assert browser.js("document.getElementById('status').textContent") == "Click an image first."
        browser.js("document.querySelectorAll('.pick')[1].click()")
        assert browser.js("document.getElementById('status').className") != "error"
        assert "Image 2 chosen" in browser.js("document.getElementById('status').textContent")
        browser.js("document.getElementById('feedback').value = 'make it green'")
        browser.screenshot(shots / "3_chosen.png")

        server.shutdown()
        server.server_close()
        browser.js("document.getElementById('send').click()")
        status = browser.wait_for("document.getElementById('status').className === 'error' && "
                                  "document.getElementById('status').textContent")
        browser.screenshot(shots / "4_server_stopped.png")
        assert "does not answer" in status and "Failed to fetch" not in status
    finally:
        browser.close()
        server.shutdown()
        server.server_close()
        thread.join()
