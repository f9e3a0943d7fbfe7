"""The Gradio review app (imports gradio; ``import skinnet`` does not).

- ``settings``: what an app serves (``AppSettings``, limits).
- ``layout``: the page and its wiring (``build_app``); ``server``: ``launch``.
- ``events``: what each event does, with the check of who may do it (``AppEvents.act``).
- ``handlers``: the public ``/predict`` and ``/explain`` as plain functions of a predictor.
- ``views``: the text and tables the app shows; ``keys`` + ``keys.js``: the keyboard;
  ``style.css``.
- ``review``: a reviewer's session (queue, case, save, undo); ``access``: logins and who may
  act; ``uploads``: uploads reduced to clean pixels; ``examples``: the owner's example pairs.
"""
from .layout import build_app
from .server import launch
from .settings import AppSettings

__all__ = ["AppSettings", "build_app", "launch"]
