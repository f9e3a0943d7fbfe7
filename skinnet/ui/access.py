"""Who may do what in the app: reviewers, admins, logins, and whose session a request touches.

Every event of a Gradio app can be called by raw HTTP with any ``session_hash`` and any body,
so each rule here is checked on the server, per request:

- the reviewer is the signed-in identity (a password login, or ``hf:<user>`` after Hugging Face
  sign-in on a Space), never a typed name;
- admins (``--admins``) are reviewers who may also export everyone's labels;
- a session's state belongs to the identity that first used it: another identity sending the
  same ``session_hash`` is refused (:func:`claim_session`);
- repeated wrong passwords lock that user name out for a while (:class:`LoginThrottle`).
"""
from __future__ import annotations

import hmac
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import gradio as gr

if TYPE_CHECKING:
    from .review import ReviewSession

HF_PREFIX = "hf:"
"""Reviewers signed in with Hugging Face are logged as ``hf:<username>`` (never confused with a
password login of the same name)."""
ANONYMOUS = "(anonymous)"


@dataclass(frozen=True)
class Reviewers:
    """Who may save reviews: password logins (Gradio's ``auth=``) and/or Hugging Face accounts.

    ``hf_accounts`` is the allow-list of Hugging Face usernames (``"*"``: any signed-in
    account); a Space with ``hf_oauth: true`` signs them in through ``gr.LoginButton``.
    ``admins``: reviewer identities (``dr_a``, ``hf:alice``) that may also export labels.
    """

    password_logins: bool = False
    hf_accounts: frozenset[str] = frozenset()
    admins: frozenset[str] = frozenset()

    @property
    def configured(self) -> bool:
        """False: a public demo, where saving is off."""
        return self.password_logins or bool(self.hf_accounts)

    def _hf_allowed(self, profile: gr.OAuthProfile | None) -> bool:
        return profile is not None and ("*" in self.hf_accounts or profile.username in self.hf_accounts)

    def of(self, request: gr.Request | None, profile: gr.OAuthProfile | None = None) -> str | None:
        """The signed-in reviewer of a request, or None."""
        user = getattr(request, "username", None)
        if user and self.password_logins:
            return user
        if self._hf_allowed(profile):
            return HF_PREFIX + profile.username
        return None

    def require(self, request: gr.Request | None, profile: gr.OAuthProfile | None, action: str) -> str:
        """The reviewer, or a ``gr.Error`` that says how to become one."""
        reviewer = self.of(request, profile)
        if reviewer is not None:
            return reviewer
        if not self.configured:
            raise gr.Error(f"{action} is off: this app runs as a public demo (no reviewers are configured).")
        if profile is not None:
            raise gr.Error(f"{action}: the Hugging Face account @{profile.username} is not on this app's "
                           "reviewer list (SKINNET_HF_REVIEWERS).")
        how = "Sign in with Hugging Face (button at the top)" if self.hf_accounts else "Sign in"
        raise gr.Error(f"{action} needs a signed-in reviewer. {how} first.")

    def require_admin(self, request: gr.Request | None, profile: gr.OAuthProfile | None, action: str) -> str:
        reviewer = self.require(request, profile, action)
        if reviewer not in self.admins:
            raise gr.Error(f"{action} is for admins; ask the app's administrator (SKINNET_ADMINS).")
        return reviewer


def identity(request: gr.Request | None, profile: gr.OAuthProfile | None = None) -> str:
    """Who sends a request, signed in or not (a password login, ``hf:<user>``, or anonymous)."""
    user = getattr(request, "username", None)
    if user:
        return user
    if profile is not None:
        return HF_PREFIX + profile.username
    return ANONYMOUS


def claim_session(state: ReviewSession, who: str) -> ReviewSession:
    """The session state, bound to ``who`` on first use; another identity is refused.

    Gradio picks a session's state by the ``session_hash`` the client sends, so without this a
    signed-in reviewer who learnt another's hash could act on that reviewer's open case.
    """
    owner = state.get("owner")
    if owner is None:
        return {**state, "owner": who}
    if owner != who:  # names are not secrets (and may be non-ASCII)
        raise gr.Error("This page belongs to another sign-in. Reload the page to start your own session.")
    return state


@dataclass
class LoginThrottle:
    """Gradio's ``auth=`` callable: checks passwords and locks a user name out after repeated
    failures (``max_failures`` in a row, then ``lockout_s`` doubling with every further lock),
    so that guessing a password at speed gets nowhere. A correct password during a lockout
    is refused too. Only configured names are counted (guessing for a name that does not exist
    cannot succeed), so memory stays bounded and no flood of invented names can flush a real
    name's count; a refused login looks the same either way. Failures are forgotten
    ``forget_s`` after the last one."""

    users: dict[str, str]
    max_failures: int = 5
    lockout_s: float = 60.0
    forget_s: float = 900.0
    _failures: dict[str, tuple[int, float]] = field(default_factory=dict)
    _locked_until: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, username: str, password: str) -> bool:
        now = time.monotonic()
        key = str(username)[:200]
        with self._lock:
            expected = self.users.get(key)
            # compare even for unknown names, so the time taken does not say which names exist
            ok = hmac.compare_digest(str(password).encode(), (expected or "\0" * 16).encode()) and expected is not None
            if expected is None or self._locked_until.get(key, 0.0) > now:
                return False
            if ok:
                self._failures.pop(key, None)
                return True
            count, last = self._failures.get(key, (0, now))
            count = (0 if now - last > self.forget_s else count) + 1
            self._failures[key] = (count, now)
            if count % self.max_failures == 0:
                self._locked_until[key] = now + self.lockout_s * 2 ** (count // self.max_failures - 1)
            return False

    def locked(self, username: str) -> bool:
        return self._locked_until.get(username, 0.0) > time.monotonic()
