"""`python app.py`, the README's first command, as a real process."""
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from app_helpers import free_port, tiny_checkpoint

from skinnet.checkpoint import DEFAULT_CHECKPOINT as SHIPPED

ROOT = Path(__file__).resolve().parents[1]


def wait_for(url: str, process: subprocess.Popen, seconds: float = 120) -> float:
    start = time.time()
    while time.time() - start < seconds:
        if process.poll() is not None:
            raise AssertionError(f"app exited early: {process.stdout.read()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return time.time() - start
        except OSError:
            time.sleep(0.3)
    raise AssertionError("app did not answer in time")


@pytest.mark.parametrize("which", ["shipped", "tiny"])
def test_app_starts_and_serves(which, tmp_path):
    if which == "shipped":
        if not SHIPPED.is_file():
            pytest.skip("no shipped checkpoint yet")
        checkpoint = SHIPPED
    else:
        checkpoint = tiny_checkpoint(tmp_path)
    port = free_port()
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "SKINNET_LOG_DIR": str(tmp_path / "log")}
    process = subprocess.Popen([sys.executable, "app.py", "--checkpoint", str(checkpoint)], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        seconds = wait_for(f"http://127.0.0.1:{port}/", process)
        print(f"cold start to ready: {seconds:.1f} s")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
            assert "skinnet" in response.read().decode()
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_bad_checkpoint_and_users_file_give_clear_messages(tmp_path):
    result = subprocess.run([sys.executable, "app.py", "--checkpoint", str(tmp_path / "none.safetensors")],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "cannot load the model" in result.stderr and "not found" in result.stderr
    from app_helpers import tiny_checkpoint
    truncated = tiny_checkpoint(tmp_path)
    truncated.write_bytes(truncated.read_bytes()[:5000])
    result = subprocess.run([sys.executable, "app.py", "--checkpoint", str(truncated)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "cannot load the model" in result.stderr
    assert "not a readable safetensors file" in result.stderr and "Traceback" not in result.stderr
    users = tmp_path / "users.txt"
    users.write_text("# reviewers\ndr_a:pw\nbroken-line\n")
    import app
    with pytest.raises(SystemExit, match="entry 3: expected 'user:password'"):
        app.read_users(str(users))
    users.write_text("dr_a:pw:with:colons\n\ndr_b: x\n")
    assert app.read_users(str(users)) == {"dr_a": "pw:with:colons", "dr_b": " x"}
    assert app.read_users("dr_a:one,dr_b:two") == {"dr_a": "one", "dr_b": "two"}  # a Space secret
    with pytest.raises(SystemExit, match="users file .* not found"):
        app.read_users(str(tmp_path / "missing.txt"))


def test_examples_flag_and_environment(tmp_path):
    """``--examples DIR`` (or SKINNET_EXAMPLES): a folder without a readable pair stops the app
    with a message naming it; a good folder serves the examples' gallery."""
    checkpoint = tiny_checkpoint(tmp_path)
    (tmp_path / "empty").mkdir()
    result = subprocess.run([sys.executable, "app.py", "--checkpoint", str(checkpoint), "--examples",
                             str(tmp_path / "empty")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "holds no readable NAME_clinical.png" in result.stderr
    assert "Traceback" not in result.stderr
    from app_helpers import write_examples
    examples = write_examples(tmp_path / "examples")
    port = free_port()
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "SKINNET_LOG_DIR": str(tmp_path / "log"),
           "SKINNET_EXAMPLES": str(examples)}
    process = subprocess.Popen([sys.executable, "app.py", "--checkpoint", str(checkpoint)], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(f"http://127.0.0.1:{port}/", process)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=5) as response:
            config = response.read().decode()
        assert '"examples"' in config and "first pair" in config and "broken" not in config
    finally:
        process.terminate()
        process.wait(timeout=30)
