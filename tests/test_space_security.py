"""Attacks on Hugging Face sign-in and on an app with both kinds of login, from outside (issue 27).

``python app.py`` runs as a real process with the environment a Space with ``hf_oauth: true``
gives it (or, for the first attack, a Space's environment copied to another host). Sign-ins use
the session cookie Gradio's ``/login/callback`` stores (huggingface.co is not reachable here);
everything else is raw HTTP, as an attacker sends it.
"""
import http.server
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from app_helpers import SPACE_OAUTH_ENV, free_port, hf_session_cookie, launched, tiny_checkpoint
from skinnet_testkit.raw_http import RawClient, fns

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


USERS = {"dr_a": "pass-a-123"}
pytestmark = pytest.mark.filterwarnings(  # Gradio on a Space starts a reloader that needs the `spaces` package
    "ignore::pytest.PytestUnhandledThreadExceptionWarning")


def launched_space(root: Path, users: dict[str, str]):
    """The app as a Space runs it (a Hugging Face allow-list, and password users if given),
    launched in this process with the environment such a Space sets; yields its URL."""
    import gradio.oauth

    from skinnet.ui import AppSettings

    with pytest.MonkeyPatch.context() as env:
        for name, value in SPACE_OAUTH_ENV.items():
            env.setenv(name, value)
            if hasattr(gradio.oauth, name):  # read by Gradio when it is imported
                env.setattr(gradio.oauth, name, value)
        settings = AppSettings(checkpoint=tiny_checkpoint(root), port=free_port(), log_dir=root / "log",
                               users=users, hf_reviewers=frozenset({"dr-hf"}), admins=frozenset({"dr_a"}))
        with launched(settings):
            yield f"http://127.0.0.1:{settings.port}"


@pytest.fixture(scope="module")
def both_logins(tmp_path_factory):
    yield from launched_space(tmp_path_factory.mktemp("both"), USERS)


@pytest.fixture(scope="module")
def hf_only(tmp_path_factory):
    yield from launched_space(tmp_path_factory.mktemp("hf"), {})


def signed_in_as(client: RawClient) -> str:
    """What the page says about its visitor ("Signed in as ..."), or "" when the page itself
    asks for a password login first."""
    config = client.http.get("/config")
    if config.status_code == 401:
        return ""
    shown = client.call(fns(config.json(), "who_is_signed_in")[0], [])
    assert shown.success, shown.error
    return shown.data[0]


def test_log_out_signs_a_password_reviewer_out_when_both_logins_are_on(both_logins):
    """With --users and --hf-reviewers, Gradio's Hugging Face routes replace its password
    logout: "Log out" left the password login signed in, its cookie valid. After /logout the
    browser's cookie is gone and the old cookie, replayed, signs nobody in."""
    browser = RawClient(both_logins, "dr_a", USERS["dr_a"])
    assert signed_in_as(browser) == "Signed in as **dr_a**"
    kept = dict(browser.http.cookies)  # what an attacker with the cookie would replay
    browser.http.cookies.set("session", hf_session_cookie("dr-hf"))  # signed in with Hugging Face too
    logout = browser.http.get("/logout")
    assert logout.status_code in (302, 303, 307)
    assert "Signed in" not in signed_in_as(RawClient(both_logins, cookies=kept))
    assert "Signed in" not in signed_in_as(browser)
    deleted = " ".join(logout.headers.get_list("set-cookie"))
    assert "access-token" in deleted and "session=" in deleted


def test_an_unlisted_hugging_face_account_cannot_push_a_reviewers_images_out(hf_only, monkeypatch, tmp_path):
    """The store of clean copies keeps a reviewer's images when it is full: a signed-in Hugging Face
    account that is not on the reviewer list counts as a visitor, whose copies go first."""
    import numpy as np
    from PIL import Image

    from skinnet.ui import uploads

    monkeypatch.setattr(uploads, "MAX_GRANTS", 8)
    reviewer = RawClient(hf_only, cookies={"session": hf_session_cookie("dr-hf")})
    stranger = RawClient(hf_only, cookies={"session": hf_session_cookie("stranger")})
    assert signed_in_as(reviewer) == "Signed in as **hf:dr-hf**" and "Not signed in" in signed_in_as(stranger)
    config = reviewer.config()
    upload, labels = fns(config, "upload_dermoscopy")[0], fns(config, "form_labels")[0]
    rng = np.random.default_rng(5)

    def image(name: str) -> Path:
        path = tmp_path / f"{name}.png"
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(path)
        return path

    session = secrets.token_hex(6)
    mine = reviewer.call(upload, [None, {"path": reviewer.upload(image("mine"))}], session)
    assert mine.success, mine.error
    for i in range(20):  # the stranger's invented sessions, each with an image of its own
        pushed = stranger.call(upload, [None, {"path": stranger.upload(image(f"push{i}"))}], secrets.token_hex(6))
        assert pushed.success, pushed.error
    still = reviewer.call(labels, [None, None, mine.data[0], False], session)  # takes clean copies only
    assert still.success, still.error
