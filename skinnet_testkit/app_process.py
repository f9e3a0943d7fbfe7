"""``python app.py`` of this checkout in its own process (the benchmarks and the tests that
attack or load the app from outside)."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
"""The checkout whose ``app.py`` is launched."""

USER, PASSWORD = "bench", "bench-password-1"


class App:
    """``python app.py`` in its own process, with its own log folder."""

    def __init__(self, checkpoint: Path, log_dir: Path, users: bool = True, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "GRADIO_SERVER_PORT": str(self.port), "SKINNET_LOG_DIR": str(log_dir), **(env or {})}
        env.pop("SKINNET_USERS", None)
        if users:
            env["SKINNET_USERS"] = f"{USER}:{PASSWORD}"
        self.process = subprocess.Popen([sys.executable, "app.py", "--checkpoint", str(checkpoint)], cwd=ROOT,
                                        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 180
        while time.time() < deadline:
            try:
                urllib.request.urlopen(self.url + "/", timeout=2)
                return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError("the app did not start")

    def rss_gb(self, key: str = "VmRSS") -> float:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(rf"{key}:\s+(\d+) kB", status).group(1)) / 1024 ** 2

    def stop(self, sig=signal.SIGTERM) -> None:
        self.process.send_signal(sig)
        self.process.wait(timeout=60)


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fn(config: dict, name: str) -> int:
    """fn_index of the first event whose function is ``name`` (Gradio numbers repeats name_1, ...)."""
    return next(i for i, d in enumerate(config["dependencies"]) if re.fullmatch(rf"{name}(_\d+)?", d["api_name"] or ""))


