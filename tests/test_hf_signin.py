"""Reviewers who sign in with Hugging Face on a Space (``hf_oauth: true``), in a real Chromium.

``python app.py`` runs as a process with the environment a Space with OAuth gives it
(``SPACE_ID``, ``OAUTH_CLIENT_ID``/``SECRET``/``SCOPES``, ``OPENID_PROVIDER_URL``), so Gradio
installs its real OAuth routes and session middleware. huggingface.co cannot be reached from
here, so instead of the round trip through its login page the browser carries the session
cookie Gradio's ``/login/callback`` stores after it: ``{"oauth_info": {... "userinfo": ...}}``
signed the way Gradio's middleware signs it. Everything after that is the app's own code.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from app_helpers import SPACE_OAUTH_ENV, free_port, hf_session_cookie, tiny_checkpoint, write_pair
from skinnet.corrections import read_corrections
from test_browser import CHROMIUM, CHROMIUM_ARGS, pytestmark  # noqa: F401  (same skip rule)
from test_entry_point import wait_for

ROOT = Path(__file__).resolve().parents[1]
ALLOWED = "dr-hf"


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    root = tmp_path_factory.mktemp("space")
    port = free_port()
    env = {**os.environ, **SPACE_OAUTH_ENV, "GRADIO_SERVER_NAME": "127.0.0.1",
           "GRADIO_SERVER_PORT": str(port), "SKINNET_LOG_DIR": str(root / "log"),
           "SKINNET_HF_REVIEWERS": f"{ALLOWED},@other-dr"}
    env.pop("SKINNET_USERS", None)
    process = subprocess.Popen([sys.executable, "app.py", "--checkpoint", str(tiny_checkpoint(root))],
                               cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(f"http://127.0.0.1:{port}/", process)
        yield f"http://127.0.0.1:{port}/", root / "log"
    finally:
        process.terminate()
        process.wait(timeout=30)


def review_upload(browser, url, pair, username: str | None, screenshot: Path | None = None) -> str:
    """Sign in as ``username`` (None: not signed in), upload a pair, agree, save: the page's text."""
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 1400, "height": 2000})
    if username:
        context.add_cookies([{"name": "session", "value": hf_session_cookie(username), "url": url}])
    page = context.new_page()
    page.goto(url)
    login = page.locator("#hf-login")
    expect(login).to_contain_text(f"Logout ({username})" if username else "Sign in with Hugging Face",
                                  timeout=30_000)
    header = page.locator("#case-header")
    page.locator("#clinical-input input[type=file]").set_input_files(str(pair[0]))
    expect(header).to_contain_text("case upload:", timeout=60_000)  # the clinical photo's case is in
    alone = header.inner_text()
    page.locator("#dermoscopy-input input[type=file]").set_input_files(str(pair[1]))
    expect(header).not_to_have_text(alone, timeout=60_000)  # and now the pair's
    page.locator("#analyse").click()
    expect(page.locator("#summary")).to_contain_text("Fused head", timeout=60_000)
    page.locator("#verdict input[value=agree]").check()
    page.locator("#save-review").click()
    page.wait_for_function("document.querySelector('.toast-body') || "
                           "document.querySelector('#save-status').innerText.includes('Saved')", timeout=60_000)
    if screenshot:
        page.screenshot(path=str(screenshot), full_page=True)
    text = page.locator("body").inner_text()
    context.close()
    return text


def test_hf_signed_in_reviewer_saves_under_their_account(space, tmp_path):
    from playwright.sync_api import sync_playwright

    url, log_dir = space
    pair = write_pair(tmp_path, seed=5)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        anonymous = review_upload(browser, url, pair, None)
        stranger = review_upload(browser, url, pair, "stranger")
        allowed = review_upload(browser, url, pair, ALLOWED, screenshot=tmp_path / "hf_signed_in.png")
        browser.close()
    assert "Saving needs a signed-in reviewer. Sign in with Hugging Face" in anonymous
    assert "@stranger is not on this app's reviewer list" in stranger
    assert "Saved: agree" in allowed
    rows, problems = read_corrections(log_dir / "corrections.csv")
    assert problems == []
    assert [(r["reviewer"], r["verdict"]) for r in rows] == [(f"hf:{ALLOWED}", "agree")]


def test_hf_reviewers_need_a_space_with_oauth(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OAUTH_") and k not in ("SPACE_ID", "SYSTEM")}
    checkpoint = str(tiny_checkpoint(tmp_path))
    result = subprocess.run([sys.executable, "app.py", "--checkpoint", checkpoint, "--hf-reviewers", "dr-hf"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "hf_oauth: true" in result.stderr
    # OAUTH_CLIENT_ID alone is not a Space: Gradio would sign every visitor in as the host's account
    result = subprocess.run([sys.executable, "app.py", "--checkpoint", checkpoint, "--hf-reviewers", "dr-hf"],
                            cwd=ROOT, env={**env, "OAUTH_CLIENT_ID": "x"}, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode != 0 and ("missing here: SYSTEM=spaces with SPACE_ID, OAUTH_CLIENT_SECRET, OAUTH_SCOPES, "
                                       "OPENID_PROVIDER_URL") in result.stderr


def test_reviewer_identity_rules():
    import gradio as gr

    from skinnet.ui.access import Reviewers

    class Request:  # what Gradio passes: the password login's name, or None
        def __init__(self, username=None):
            self.username = username

    def profile(username):
        return gr.OAuthProfile({"name": username, "preferred_username": username, "profile": "", "picture": ""})

    both = Reviewers(password_logins=True, hf_accounts=frozenset({"dr-hf"}))
    assert both.of(Request("dr_a"), profile("dr-hf")) == "dr_a"
    assert both.of(Request(), profile("dr-hf")) == "hf:dr-hf"
    assert both.of(Request(), profile("stranger")) is None and both.of(Request(), None) is None
    assert Reviewers(hf_accounts=frozenset({"*"})).of(Request(), profile("anyone")) == "hf:anyone"
    demo = Reviewers()
    assert not demo.configured and demo.of(Request("dr_a"), profile("dr-hf")) is None
    with pytest.raises(gr.Error, match="public demo"):
        demo.require(Request(), None, "Saving")
    with pytest.raises(gr.Error, match="Sign in with Hugging Face"):
        Reviewers(hf_accounts=frozenset({"dr-hf"})).require(Request(), None, "Saving")
