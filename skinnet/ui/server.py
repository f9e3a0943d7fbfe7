"""Serving the app: the launch settings it relies on for privacy and safety."""
from __future__ import annotations

from pathlib import Path

import gradio as gr

from . import access
from .keys import page_script
from .settings import MAX_BODY_BYTES, MAX_FILE_SIZE, QUEUE_SIZE, AppSettings

CSS = Path(__file__).with_name("style.css").read_text()


class RequestGuard:
    """ASGI middleware, in front of every route (Gradio's own included):

    - every response says ``X-Content-Type-Options: nosniff`` (a served file is never run as
      something its type does not say);
    - routes the app does not use are refused: ``deep_link`` (it would store and serve any
      session's inputs and outputs, to anyone who names the session, past the app's own
      session check) and ``process_recording`` (audio/video);
    - a request body over MAX_BODY_BYTES is refused (413), except uploads, which Gradio
      limits to MAX_FILE_SIZE: an event's inputs are short JSON, and without this a few
      100 MB bodies held gigabytes of memory.
    """

    REFUSED = ("/gradio_api/deep_link", "/gradio_api/process_recording")

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "").rstrip("/")
        if path.endswith(self.REFUSED):
            return await _plain(send, 404, b"Not found")
        uploading = path.endswith("/upload")
        if not uploading:
            length = dict(scope.get("headers") or []).get(b"content-length", b"0")
            if not length.isdigit() or int(length) > MAX_BODY_BYTES:
                return await _plain(send, 413, b"Request body too large")
            received = 0

            async def bounded_receive():
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > MAX_BODY_BYTES:  # a chunked body that said no length
                        return {"type": "http.disconnect"}
                return message
        else:
            bounded_receive = receive

        async def with_header(message):
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-content-type-options", b"nosniff")]
            await send(message)

        return await self.app(scope, bounded_receive, with_header)


async def _plain(send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain"), (b"x-content-type-options", b"nosniff")]})
    await send({"type": "http.response.body", "body": body})


def launch(app: gr.Blocks, settings: AppSettings, **kwargs):
    """Launch with the privacy and safety settings the app relies on: no server-side rendering,
    no run history, an upload size limit, errors without tracebacks, throttled logins, every
    event through the queue (its size and concurrency limits; no direct ``/run`` calls) and
    :class:`RequestGuard` in front."""
    from starlette.middleware import Middleware

    app.queue(max_size=QUEUE_SIZE, default_concurrency_limit=1, api_open=False)
    auth = access.LoginThrottle(dict(settings.users)) if settings.users else None
    return app.launch(server_name=settings.host, server_port=settings.port, ssr_mode=False,
                      run_history=False, max_file_size=MAX_FILE_SIZE, css=CSS, head=page_script(),
                      show_error=False, auth=auth, app_kwargs={"middleware": [Middleware(RequestGuard)]}, **kwargs)
