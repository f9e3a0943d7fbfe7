"""Attacks on Hugging Face sign-in and on an app with both kinds of login, from outside (issue 27).

``python app.py`` runs as a real process with the environment a Space with ``hf_oauth: true``
gives it (or, for the first attack, a Space's environment copied to another host). Sign-ins use
the session cookie Gradio's ``/login/callback`` stores (huggingface.co is not reachable here);
everything else is raw HTTP, as an attacker sends it.
"""
import http.server
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from app_helpers import SPACE_OAUTH_ENV, free_port, tiny_checkpoint
from raw_http import RawClient, fns

ROOT = Path(__file__).resolve().parents[1]


class FakeHub(http.server.BaseHTTPRequestHandler):
    """huggingface.co's ``whoami`` as the host's token answers it: the host's own account."""

    def do_GET(self):
        body = json.dumps({"type": "user", "name": "host-owner", "fullname": "Host Owner",
                           "avatarUrl": "https://huggingface.co/a.png"}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def start_or_refuse(env: dict, timeout: float = 120) -> tuple[subprocess.Popen, str | None]:
    """Start ``python app.py``; (the process, its URL once it serves, or None if it exited)."""
    process = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{env['GRADIO_SERVER_PORT']}"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            return process, None
        try:
            if httpx.get(url + "/config", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.3)
    process.kill()
    raise AssertionError("app neither served nor exited")


def test_off_a_space_no_visitor_is_signed_in_as_the_hosts_account(tmp_path):
    """A Space's four OAuth variables (and OAUTH_SCOPES) copied to another host that holds a
    Hugging Face token: Gradio still installs its mock sign-in there (it asks ``SYSTEM ==
    "spaces"``), so ``/login/huggingface`` would make every visitor the host's account, a
    listed reviewer and admin. The app must refuse to start."""
    hub = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    threading.Thread(target=hub.serve_forever, daemon=True).start()
    env = {k: v for k, v in os.environ.items() if k not in ("SYSTEM", "SKINNET_USERS")}
    env.update({**SPACE_OAUTH_ENV, "SYSTEM": "", "HF_TOKEN": "hf_hosttoken",
                "HF_ENDPOINT": f"http://127.0.0.1:{hub.server_port}", "GRADIO_SERVER_PORT": str(free_port()),
                "SKINNET_CHECKPOINT": str(tiny_checkpoint(tmp_path)), "SKINNET_LOG_DIR": str(tmp_path / "log"),
                "SKINNET_HF_REVIEWERS": "host-owner", "SKINNET_ADMINS": "hf:host-owner"})
    process, url = start_or_refuse(env)
    try:
        if url is not None:  # the attack: a visitor clicks "Sign in with Hugging Face"
            visitor = httpx.Client(base_url=url)
            hop = visitor.get("/login/huggingface")
            while hop.status_code in (302, 303, 307) and "session" not in hop.cookies:
                hop = visitor.get(hop.headers["location"])
            raw = RawClient(url, cookies={"session": hop.cookies.get("session", "")})
            shown = raw.call(fns(raw.config(), "who_is_signed_in")[0], [])
            pytest.fail(f"the app started off a Space; a visitor's sign-in shows: {shown.data}")
        _, stderr = process.communicate(timeout=30)
        assert process.returncode != 0 and "SYSTEM=spaces" in stderr and "Traceback" not in stderr
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=30)
        hub.shutdown()

