"""Serving the app: the launch settings it relies on for privacy and safety."""
from __future__ import annotations

from pathlib import Path

import gradio as gr

from . import access
from .keys import page_script
from .settings import MAX_FILE_SIZE, QUEUE_SIZE, AppSettings

CSS = Path(__file__).with_name("style.css").read_text()


class NoSniff:
    """ASGI middleware: every response says ``X-Content-Type-Options: nosniff`` (a served file
    is never run as something its type does not say)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def with_header(message):
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-content-type-options", b"nosniff")]
            await send(message)

        return await self.app(scope, receive, with_header)


def launch(app: gr.Blocks, settings: AppSettings, **kwargs):
    """Launch with the privacy and safety settings the app relies on: no server-side rendering,
    no run history, an upload size limit, errors without tracebacks, throttled logins."""
    from starlette.middleware import Middleware

    app.queue(max_size=QUEUE_SIZE, default_concurrency_limit=1)
    auth = access.LoginThrottle(dict(settings.users)) if settings.users else None
    return app.launch(server_name=settings.host, server_port=settings.port, ssr_mode=False,
                      run_history=False, max_file_size=MAX_FILE_SIZE, css=CSS, head=page_script(),
                      show_error=False, auth=auth, app_kwargs={"middleware": [Middleware(NoSniff)]}, **kwargs)
