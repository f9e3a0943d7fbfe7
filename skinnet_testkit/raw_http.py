"""A raw HTTP caller of a launched Gradio app, the way an attacker reaches it: any event by
``fn_index`` through ``/gradio_api/queue/join``, any body, any ``session_hash`` (no gradio_client,
so none of its checks or uploads happen unless the test does them)."""
from __future__ import annotations

import contextlib
import io
import json
import re
import secrets
import threading
import types
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

NO_FORM = [None] * 12
"""The case token and the review form's 11 fields (verdict, the 8 tasks' corrections, confidence,
note) as a caller without a form sends them: an event that leaves the open case (opening a queue
or a row, ordering) keeps no draft of it."""


@dataclass
class Result:
    success: bool
    data: list | None
    error: str | None
    raw: dict
    warnings: list[str] = field(default_factory=list)
    """What the event told the user on the way (``gr.Warning`` and ``gr.Info``)."""


def fns(config: dict, name: str) -> list[int]:
    """fn_index of every event whose function is ``name`` (Gradio numbers repeats name_1, name_2)."""
    return [i for i, d in enumerate(config["dependencies"]) if re.fullmatch(rf"{name}(_\d+)?", d["api_name"] or "")]


class RawClient:
    def __init__(self, base: str, username: str | None = None, password: str | None = None,
                 cookies: dict[str, str] | None = None):
        self.base = base.rstrip("/")
        # cookies are sent as a header: a browser's Secure cookie goes over plain http here too
        headers = {"cookie": "; ".join(f"{k}={v}" for k, v in cookies.items())} if cookies else None
        self.http = httpx.Client(base_url=self.base, timeout=120, headers=headers)
        if username is not None:
            response = self.http.post("/login", data={"username": username, "password": password})
            assert response.status_code == 200, response.text

    def config(self) -> dict:
        return self.http.get("/config").json()

    def upload(self, path: Path) -> str:
        """Gradio's own upload route: returns the server path of the stored original."""
        with open(path, "rb") as handle:
            response = self.http.post("/gradio_api/upload", files={"files": (path.name, handle)})
        response.raise_for_status()
        return response.json()[0]

    def call(self, fn_index: int, data: list, session_hash: str | None = None, event_data=None) -> Result:
        session_hash = session_hash or secrets.token_hex(6)
        joined = self.join(fn_index, data, session_hash, event_data)
        return joined if isinstance(joined, Result) else self.result(joined, session_hash)

    @contextlib.contextmanager
    def page(self, session_hash: str):
        """One page's events side by side, as a browser sends them: ``join`` queues one, ``wait``
        reads its result, ``call`` does both. One stream of the session's messages stays open
        from the first event on (two streams of one session would take each other's messages)."""
        results: dict[str, Result] = {}
        arrived = threading.Condition()

        def read():
            with self.http.stream("GET", "/gradio_api/queue/data", params={"session_hash": session_hash}) as stream:
                for line in stream.iter_lines():
                    message = json.loads(line[5:]) if line.startswith("data:") else {}
                    if message.get("msg") == "process_completed":
                        output = message.get("output") or {}
                        with arrived:
                            results[message["event_id"]] = Result(bool(message.get("success")), output.get("data"),
                                                                  output.get("error"), message)
                            arrived.notify_all()

        readers: list[threading.Thread] = []

        def join(fn_index: int, data: list, event_data=None) -> str:
            event_id = self.join(fn_index, data, session_hash, event_data)
            assert not isinstance(event_id, Result), event_id.error
            # Gradio opens a session's stream only with an event pending, and closes it when none is
            if not readers or not readers[-1].is_alive():
                readers.append(threading.Thread(target=read, daemon=True))
                readers[-1].start()
            return event_id

        def wait(event_id: str, timeout: float = 120) -> Result:
            with arrived:
                assert arrived.wait_for(lambda: event_id in results, timeout), f"no result for event {event_id}"
                return results[event_id]

        yield types.SimpleNamespace(join=join, wait=wait, call=lambda *args: wait(join(*args)))

    def join(self, fn_index: int, data: list, session_hash: str, event_data=None) -> str | Result:
        """Queue an event and return its id without waiting (a refused join: its Result)."""
        # ASCII JSON: any str gets through as an escape, lone surrogates included (as an attacker sends them)
        joined = self.http.post("/gradio_api/queue/join", headers={"content-type": "application/json"},
                                content=json.dumps({"data": data, "fn_index": fn_index, "session_hash": session_hash,
                                                    "event_data": event_data, "trigger_id": None}))
        if joined.status_code != 200:
            return Result(False, None, joined.text, {"status": joined.status_code})
        return joined.json()["event_id"]

    def result(self, event_id: str, session_hash: str) -> Result:
        """The joined event's result, read from the session's stream."""
        told = []
        with self.http.stream("GET", "/gradio_api/queue/data", params={"session_hash": session_hash}) as stream:
            for line in stream.iter_lines():
                if not line.startswith("data:"):
                    continue
                message = json.loads(line[5:])
                if message.get("event_id") != event_id:
                    continue
                if message.get("msg") == "log":
                    told.append(message.get("log") or "")
                if message.get("msg") != "process_completed":
                    continue
                output = message.get("output") or {}
                return Result(bool(message.get("success")), output.get("data"), output.get("error"), message, told)
        raise AssertionError(f"no result for event {event_id}")

    def files_in(self, value) -> list[bytes]:
        """Every file an output value points at, fetched the way a browser would."""
        found = []
        if isinstance(value, dict):
            if value.get("url") or value.get("path"):
                url = value.get("url") or f"{self.base}/gradio_api/file={value['path']}"
                response = self.http.get(url)
                if response.status_code == 200:
                    found.append(response.content)
            for item in value.values():
                if isinstance(item, (dict, list)):
                    found += self.files_in(item)
        elif isinstance(value, list):
            for item in value:
                found += self.files_in(item)
        return found


def noise_png(path: Path, seed: int = 99, size=(64, 48)) -> Path:
    """A picture nothing else resembles: uniform noise (what a leak test looks for)."""
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def resembles(data: bytes, target: Path, threshold: float = 0.5) -> bool:
    """True when an image (even blended into an overlay, resized or recoloured) correlates
    with the target's pixels."""
    try:
        image = Image.open(io.BytesIO(data)).convert("L").resize((32, 24))
    except Exception:
        return False
    reference = Image.open(target).convert("L").resize((32, 24))
    a = np.asarray(image, dtype=np.float64).ravel()
    b = np.asarray(reference, dtype=np.float64).ravel()
    if a.std() < 1e-6:
        return False
    return float(np.corrcoef(a, b)[0, 1]) > threshold
