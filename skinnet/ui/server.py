"""Serving the app: the launch settings it relies on for privacy and safety."""
from __future__ import annotations

import re
from pathlib import Path

import gradio as gr
from starlette.requests import Request
from starlette.responses import Response

from . import access
from .exports import ROUTE as EXPORT_ROUTE
from .exports import TOKEN_CHARS, Exports
from .keys import page_script
from .sessions import install_session_store
from .settings import MAX_BODY_BYTES, MAX_FILE_SIZE, QUEUE_SIZE, AppSettings

CSS = Path(__file__).with_name("style.css").read_text()

OPEN_ROUTES = {
    "GET": (r"/", r"/config", r"/theme\.css", r"/favicon\.ico", r"/robots\.txt", r"/manifest\.json",
            r"/pwa_icon(/\d+)?", r"/(assets|static)/.+",
            r"/gradio_api/(info|queue/data|upload_progress|startup-events|app_id)", r"/gradio_api/heartbeat/[^/]+",
            r"/gradio_api/file=.+", r"/logout", r"/login/(huggingface|callback)",
            re.escape(EXPORT_ROUTE) + rf"[0-9a-f]{{{TOKEN_CHARS}}}"),
    "POST": (r"/login", r"/gradio_api/upload", r"/gradio_api/queue/join", r"/gradio_api/run/predict"),
}
"""Every route the page, ``gradio_client`` and the sign-ins use (found by recording a browser's
and a client's requests); all of Gradio's others answer 404. ``/gradio_api/run/predict`` serves
only the page's one unqueued event (``queue(api_open=False)`` keeps every other event in the queue).
``/gradio_api/app_id`` (a random number per app start): Gradio's page asks it every 2 s after an
event lost its connection, and the app's own script (``keys.js``) every 10 s; an answer from a
restarted app reloads the page. Without it, the page said "Attempting reconnection" for ever, or
showed bare errors, until the user reloaded by hand."""
_OPEN = {method: re.compile("|".join(f"(?:{p})" for p in patterns)) for method, patterns in OPEN_ROUTES.items()}
_OPEN["HEAD"] = _OPEN["GET"]


def route_is_open(method: str, path: str) -> bool:
    pattern = _OPEN.get(method)
    return pattern is not None and pattern.fullmatch(path.rstrip("/") or "/") is not None


class RequestGuard:
    """ASGI middleware, in front of every route (Gradio's own included):

    - only the routes of OPEN_ROUTES answer; the rest of Gradio's (``dev/reload`` held a stream
      open per anonymous caller forever, ``deep_link`` stored and served any session's inputs and
      outputs, monitoring, file browsing, MCP...) get 404;
    - every response says ``X-Content-Type-Options: nosniff`` (a served file is never run as
      something its type does not say);
    - a request body over MAX_BODY_BYTES is refused (413), except uploads, which Gradio
      limits to MAX_FILE_SIZE: an event's inputs are short JSON, and without this a few
      100 MB bodies held gigabytes of memory;
    - ``/logout`` signs out of both kinds of login (Gradio's Hugging Face routes replace its
      password logout, which left a password login signed in): the password login's tokens are
      revoked on the server and its cookies deleted, then Gradio's own logout runs;
    - ``/skinnet/export/<token>``: an export, for the admin who made it (:mod:`.exports`).
    """

    def __init__(self, app, exports: Exports | None = None):
        self.app = app
        self.exports = exports

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        if not route_is_open(scope.get("method", ""), path):
            return await _plain(send, 404, b"Not found")
        if path.startswith(EXPORT_ROUTE):
            return await self.serve_export(scope, send, path[len(EXPORT_ROUTE):])
        if path.rstrip("/") == "/logout":
            send = _deleting_password_cookies(send, sign_out_password_login(scope))
        uploading = path.rstrip("/").endswith("/upload")
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

    async def serve_export(self, scope, send, token: str):
        export = self.exports.download(token, signed_in_identity(scope)) if self.exports else None
        if export is None:  # a wrong token, another sign-in and an expired export all look the same
            return await _plain(send, 404, b"Not found")
        body = export.path.read_bytes()
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"text/csv; charset=utf-8"), (b"x-content-type-options", b"nosniff"),
            (b"cache-control", b"no-store"),
            (b"content-disposition", f'attachment; filename="{export.name}"'.encode())]})
        await send({"type": "http.response.body", "body": body})


def _password_cookies(app) -> tuple[str, str]:
    return f"access-token-{app.cookie_id}", f"access-token-unsecure-{app.cookie_id}"


def signed_in_identity(scope) -> str | None:
    """Who a plain HTTP request comes from, the way the app's events name them
    (:func:`skinnet.ui.access.identity`): a password login, ``hf:<user>``, or None."""
    from gradio.oauth import _get_valid_oauth_info_from_session  # Gradio's own expiry rule

    app, cookies = scope.get("app"), Request(scope).cookies
    tokens = getattr(app, "tokens", None) or {}
    for name in _password_cookies(app) if hasattr(app, "cookie_id") else ():
        if cookies.get(name) in tokens:
            return tokens[cookies[name]]
    info = _get_valid_oauth_info_from_session(scope["session"]) if "session" in scope else None
    username = ((info or {}).get("userinfo") or {}).get("preferred_username")
    return access.HF_PREFIX + username if username else None


def sign_out_password_login(scope) -> list[tuple[bytes, bytes]]:
    """Revoke every token of the request's password login (all its sessions, as Gradio's own
    logout does); the headers that delete its cookies."""
    app = scope.get("app")
    if not hasattr(app, "cookie_id"):
        return []
    cookies = Request(scope).cookies
    user = next((app.tokens[cookies[n]] for n in _password_cookies(app) if cookies.get(n) in app.tokens), None)
    if user is not None:
        for token, owner in list(app.tokens.items()):
            if owner == user:
                app.tokens.pop(token, None)
    deleting = Response()
    for name in _password_cookies(app):
        deleting.delete_cookie(name, path="/")
    return [(k, v) for k, v in deleting.raw_headers if k == b"set-cookie"]


def _deleting_password_cookies(send, headers):
    async def sending(message):
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", []), *headers]
        await send(message)
    return sending


async def _plain(send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain"), (b"x-content-type-options", b"nosniff")]})
    await send({"type": "http.response.body", "body": body})


def launch(app: gr.Blocks, settings: AppSettings, prevent_thread_lock: bool = False, **kwargs):
    """Launch with the privacy and safety settings the app relies on: no server-side rendering,
    no run history, an upload size limit, errors without tracebacks, throttled logins, every
    event through the queue (its size and concurrency limits; no direct ``/run`` calls),
    :class:`RequestGuard` in front and bounded per-session state (:mod:`.sessions`)."""
    from starlette.middleware import Middleware

    app.queue(max_size=QUEUE_SIZE, default_concurrency_limit=1, api_open=False)
    auth = access.LoginThrottle(dict(settings.users)) if settings.users else None
    guard = Middleware(RequestGuard, exports=getattr(app, "skinnet_exports", None))
    launched = app.launch(server_name=settings.host, server_port=settings.port, ssr_mode=False,
                          run_history=False, max_file_size=MAX_FILE_SIZE, css=CSS, head=page_script(),
                          show_error=False, auth=auth, app_kwargs={"middleware": [guard]},
                          prevent_thread_lock=True, **kwargs)
    install_session_store(app)
    if not prevent_thread_lock:
        app.block_thread()
    return launched
