"""Gradio's per-session state, bounded: anyone can invent a ``session_hash`` per request.

Gradio keeps a :class:`~gradio.state_holder.SessionState` for every session hash it sees, up to
10,000, and each one starts with a copy of every component's config (about 170 KB here, kept
for deep links, a route the app refuses): about 1.8 GB reachable by one client in minutes.
:class:`SessionStore` replaces Gradio's holder after launch:

- a session starts without that copy (:class:`LeanSessionState`; Gradio fills entries in when
  an event updates a component, as it does for any entry it lacks);
- sessions unused for IDLE_S are dropped;
- at most VISITOR_SESSIONS sessions of visitors who may not review are kept (the least recently
  used go first), and at most REVIEWER_SESSIONS of reviewers: invented sessions can never push
  a reviewer's open case out.
"""
from __future__ import annotations

import datetime
from copy import copy

import gradio as gr
from gradio.state_holder import SessionState, StateHolder

VISITOR_SESSIONS = 500
"""Sessions kept for visitors who may not review (public demo visitors, unlisted accounts)."""
REVIEWER_SESSIONS = 2000
"""Sessions kept for signed-in reviewers (several tabs each)."""
IDLE_S = 3600.0
"""A session unused this long is dropped (a reviewer's place in a queue is also kept on disk)."""


class LeanSessionState(SessionState):
    """:class:`SessionState` without the per-session copy of every component's config."""

    def __init__(self, blocks: gr.Blocks):  # SessionState.__init__ less ``config_values``' eager fill
        self.blocks_config = copy(blocks.default_config)
        self.config_values = {}
        self.state_data = {}
        self._state_ttl = {}
        self.is_closed = False
        self.STATE_TTL_WHEN_CLOSED = 3600


class SessionStore(StateHolder):
    """Gradio's state holder with lean sessions, idle expiry and separate caps for visitors and
    reviewers (see the module docstring)."""

    def __init__(self):
        super().__init__()
        self.reviewer_sessions: set[str] = set()

    def __getitem__(self, session_id: str) -> SessionState:
        with self.lock:
            if session_id not in self.session_data:
                self.session_data[session_id] = LeanSessionState(self.blocks)
        self.update(session_id)
        self.time_last_used[session_id] = datetime.datetime.now()
        return self.session_data[session_id]

    def mark_reviewer(self, session_id: str) -> None:
        """Count this session against the reviewers' cap (called once a reviewer acts in it)."""
        with self.lock:
            self.reviewer_sessions.add(session_id)

    def update(self, session_id: str) -> None:
        with self.lock:
            if session_id in self.session_data:
                self.session_data.move_to_end(session_id)
            now = datetime.datetime.now()
            idle = [s for s, used in self.time_last_used.items()
                    if (now - used).total_seconds() > IDLE_S and s != session_id]
            for kept, cap in ((False, VISITOR_SESSIONS), (True, REVIEWER_SESSIONS)):
                mine = [s for s in self.session_data if (s in self.reviewer_sessions) == kept]  # oldest first
                idle += mine[:max(0, len(mine) - cap)]
            for dropped in idle:
                self.session_data.pop(dropped, None)
                self.time_last_used.pop(dropped, None)
                self.reviewer_sessions.discard(dropped)


def install_session_store(app: gr.Blocks) -> SessionStore:
    """Put a :class:`SessionStore` in place of the launched app's state holder."""
    store = SessionStore()
    store.set_blocks(app)
    app.server_app.state_holder = store
    app.skinnet_sessions = store
    return store


def mark_reviewer_session(request, session_id: str) -> None:
    """Tell the app's :class:`SessionStore` (if it has one) that a reviewer acts in this session."""
    app = getattr(getattr(request, "request", None), "app", None)
    holder = getattr(app, "state_holder", None)
    if isinstance(holder, SessionStore) and session_id:
        holder.mark_reviewer(session_id)
