"""What each event of the app does, bound to one app's model, log, reviewers and image store.

Every event, public or not, can be called by raw HTTP with any session hash and body. So each
method here takes its images through :class:`~skinnet.ui.uploads.SessionImages` (never a path
the client chose), binds the session to its first identity and checks who may act, all
through :meth:`AppEvents.act`. Gradio fills ``request`` and ``profile`` (the Hugging Face
sign-in, if any) by annotation; tests call the methods with their own. Whatever fails in an
event reaches the user as one sentence without server paths (:func:`said_plainly`).
"""
from __future__ import annotations

import collections
import errno
import functools
import logging
import os
import tempfile
import threading
from pathlib import Path

import gradio as gr
import pandas as pd

from ..backup import Backup
from ..corrections import NO_CHANGE, CorrectionsError, CorrectionsLog
from ..data import DatasetError
from ..imaging import ImageError
from ..labels import TASKS
from ..predict import Predictor
from ..review_queue import list_queues
from . import access, review
from .examples import Example
from .exports import ExportError, Exports, download_link
from .handlers import answer, explain_handler, form_labels, page_maps, predict_handler
from .prepare import Preparer
from .settings import AppSettings
from .sessions import mark_reviewer_session
from .uploads import CleanStore, NotYours, Owner, SessionImages
from .views import NO_IMAGES, form_ready, task_label

logger = logging.getLogger(__name__)

SOMETHING_FAILED = "Something went wrong on the server; please try again, or tell the administrator."


def said_plainly(handler, public):
    """``handler`` with every failure turned into one sentence for the user: messages with the
    server's folders named in words (``public``), a failing disk said as such, anything
    unexpected logged here and reported as SOMETHING_FAILED (Gradio would send an empty error)."""
    @functools.wraps(handler)
    def run(*args, **kwargs):
        try:
            return handler(*args, **kwargs)
        except gr.Error as err:
            raise gr.Error(public(err.message), duration=err.duration, title=err.title) from None
        except CorrectionsError as err:
            message = public(str(err))
            if "review log" not in message:  # a shard's own name says nothing to a user
                message = f"The review log on the server cannot be used: {message}"
            raise gr.Error(message) from None
        except (DatasetError, ImageError) as err:
            raise gr.Error(public(str(err))) from None
        except OSError as err:
            logger.warning("event %s: %s", getattr(handler, "__name__", "?"), err)
            full = err.errno in (errno.ENOSPC, errno.EDQUOT)
            raise gr.Error("The server's disk is full; please tell the administrator." if full
                           else SOMETHING_FAILED) from None
        except Exception:
            logger.exception("event %s", getattr(handler, "__name__", "?"))
            raise gr.Error(SOMETHING_FAILED) from None
    return run


def event(method):
    """An :class:`AppEvents` method that Gradio calls: its failures are :func:`said_plainly`."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        return said_plainly(method, self.public)(self, *args, **kwargs)
    return run


# Each of these makes new update dicts on every call: Gradio pops "value" out of an update dict
# while sending it, so one dict given to two outputs (or kept and returned twice) reaches the
# second without its value; an image slot "cleared" that way keeps its old image.

def no_bars() -> dict:
    """The five diagnoses' bars while there is no answer to show (an empty gr.Label is a blank box)."""
    return gr.update(value=None, visible=False)


def cleared_outputs() -> tuple:
    """What a new pair does to the last pair's results: no message beside the images, no 'show
    anyway', no summary, bars, tables or maps."""
    return ("", False, "", no_bars(), None, None, *no_maps(), gr.update(visible=False), gr.update(visible=False))


def no_maps() -> tuple:
    """Both Grad-CAM slots empty under their plain names, and no attention maps."""
    return (*(gr.update(value=None, label=f"Grad-CAM, {m}") for m in ("clinical", "dermoscopy")), [])


def no_answer() -> tuple:
    """An analysis that did not run: no summary, bars or tables."""
    return ("", no_bars(), None, None)


def form_marker(state, reviewer: str | None, values: tuple) -> str:
    """The form's marker (:func:`~skinnet.ui.views.form_ready`) for the open case, whose form the
    server gives as ``values``. A queue case's names the queue file as it is, so that a reload's
    kept changes never go into a case of another file that reuses the id (an upload does not
    come back after a reload: its marker carries nothing to put back)."""
    case = state.get("case") or {}
    token = state.get("event_id") or ""
    if not reviewer or not case.get("case_id") or case.get("source", "upload") == "upload":
        return form_ready(token)
    where = review.queue_key(state.get("queue_file") or "", state.get("queue_sha256"))
    return form_ready(token, f"{where}|{case['case_id']}", case["case_id"], reviewer, values)


def session_ended(state, token) -> bool:
    """A form that names a case (its token) sent to a session no event has used yet (before
    :meth:`AppEvents.act` claims it): the server dropped the page's session (an hour without use)
    or restarted since the page got the case."""
    return isinstance(token, str) and bool(token) and not (state or {}).get("owner")


def session_ended_message(what: str) -> str:
    return (f"Nothing was {what}: this page's session on the server ended (an hour without use, or the app "
            "restarted). Reload the page: a queue case comes back where you were, with the form as this tab "
            "holds it (uploaded images must be uploaded again); then press the button again.")


class OnScreen:
    """Which images (the store's file names, named by their pixels) each page shows now, by
    session and slot. An event that ends after its page shows other images (a case's maps,
    seconds of Grad-CAM, after a move) leaves the page as it is: events of one page run side by
    side and can finish in any order."""
    def __init__(self, size: int = 4096):
        self.size, self.shown, self.lock = size, collections.OrderedDict(), threading.Lock()

    @staticmethod
    def _session(request: gr.Request) -> str:
        return str(getattr(request, "session_hash", "") or "")

    def show(self, request: gr.Request, *paths, slot: int | None = None) -> None:
        """The pair now in the slots (both paths), or one slot's new image (``slot``)."""
        names = [os.path.basename(str(p)) if p else None for p in paths]
        session = self._session(request)
        with self.lock:
            shown = list(self.shown.get(session, (None, None)))
            if slot is None:
                shown = names
            else:
                shown[slot] = names[0]
            self.shown[session] = tuple(shown)
            self.shown.move_to_end(session)
            while len(self.shown) > self.size:
                self.shown.popitem(last=False)

    def shows(self, request: gr.Request, *paths) -> bool:
        """True unless the page is known to show other images than these."""
        names = tuple(os.path.basename(str(p)) if p else None for p in paths)
        with self.lock:
            return self.shown.get(self._session(request), names) == names


class AppEvents:
    def __init__(self, predictor: Predictor, settings: AppSettings, log: CorrectionsLog,
                 reviewers: access.Reviewers, store: CleanStore, images_in: SessionImages,
                 exports: Exports, examples: list[Example] = (), backup: Backup | None = None):
        self.predictor, self.settings, self.log, self.backup = predictor, settings, log, backup
        self.preparer = Preparer(predictor, store, settings.queue_root)
        self.reviewers, self.store, self.images_in, self.exports = reviewers, store, images_in, exports
        self.queue_root = settings.queue_root
        self.examples = list(examples)
        self.on_screen = OnScreen()
        # the server's folders, longest first, and how a user reads them
        places = {log.path: "the review log", log.folder: "the review log's folder",
                  self.queue_root: "the queue folder", store.folder: "the server's image store",
                  Path(tempfile.gettempdir()): "the server's temporary folder"}
        self.places = sorted(((str(Path(p)), words) for p, words in places.items() if p), key=lambda x: -len(x[0]))

    def public(self, message: str) -> str:
        """A message as a user may read it: the server's folders named in words."""
        for path, words in self.places:
            if message.startswith(path):  # a sentence that began with the path begins with its name
                message = words[:1].upper() + words[1:] + message[len(path):]
            message = message.replace(path, words)
        return message

    # -- who may do this ------------------------------------------------------------------------
    def act(self, state, request: gr.Request, profile, action: str | None = None):
        """(state bound to this identity, owner key of its images, reviewer or None).

        With ``action`` ("Saving", "Opening a queue"), a signed-in reviewer is required first:
        anyone else gets a message saying who may do it, before any input is decoded.
        """
        reviewer = (self.reviewers.require(request, profile, action) if action
                    else self.reviewers.of(request, profile))
        who = access.identity(request, profile)
        session = str(getattr(request, "session_hash", "") or "")
        if reviewer is not None:
            mark_reviewer_session(request, session)
        return access.claim_session(state, who), Owner(session, who, reviewer is not None), reviewer

    def open_images(self, owner, values, originals: bool):
        try:
            return [self.images_in.open(owner, value, name, originals)
                    for value, name in zip(values, ("clinical image", "dermoscopy image"))]
        except ImageError as err:
            raise gr.Error(str(err)) from None

    def open_for_page(self, owner, values) -> tuple[list, str]:
        """(the images, "") or ([None, None], why not) for the page's own events: a user's mistake
        (an image too large, damaged, not an image) becomes a message beside the images, not an
        error on the outputs. A file this session was not given is still an error (a forged call)."""
        try:
            return [self.images_in.open(owner, value, name, True)
                    for value, name in zip(values, ("clinical image", "dermoscopy image"))], ""
        except NotYours as err:
            raise gr.Error(str(err)) from None
        except ImageError as err:
            return [None, None], str(err)

    def _checks(self, pair):
        return self.predictor.predict(*pair).checks if any(im is not None for im in pair) else None

    # -- images and cases -----------------------------------------------------------------------
    def on_upload(self, name):
        @functools.partial(said_plainly, public=self.public)
        def handler(state, value, request: gr.Request, profile: gr.OAuthProfile | None):
            state, owner, _ = self.act(state, request, profile)
            try:
                image = self.images_in.open(owner, value, name, originals=True)
            except NotYours as err:
                raise gr.Error(str(err)) from None
            except ImageError as err:  # the refused image leaves its slot; the message says why
                self.on_screen.show(request, None, slot=0 if name.startswith("clinical") else 1)
                return (None, f"⚠️ {err}", *cleared_outputs()[1:])
            # the last pair's results go in the same response as the new image (no later step
            # can wipe an analysis the user started meanwhile)
            clean = self.store.add(owner, image) if image is not None else None
            self.on_screen.show(request, clean, slot=0 if name.startswith("clinical") else 1)
            return (clean, *cleared_outputs())
        handler.__name__ = f"upload_{name.split()[0]}"
        return handler

    @event
    def case_from_upload(self, state, clinical_value, dermoscopy_value, request: gr.Request,
                         profile: gr.OAuthProfile | None):
        state, owner, reviewer = self.act(state, request, profile)
        paths = [self.store.path_for(owner, v) for v in (clinical_value, dermoscopy_value)]
        state = review.start_upload_case(state, *(str(p) if p else None for p in paths))
        # the form shows this pair's draft or saved review (its id is its pixels' hash), or a blank form
        saved = self.saved(reviewer, state)
        values, status = review.form_for_case(state, saved, self.newest_save(reviewer, state))
        token = state.get("event_id") or ""
        state = review.shown(state, values, saved)
        self.on_screen.show(request, *paths)
        return (state, review.case_header(state, self.log, reviewer), *values, status, form_ready(token), token)

    def saved(self, reviewer, state) -> dict | None:
        """Your latest review of the open case, if any."""
        case = state.get("case")
        return self.log.latest_review(reviewer, case["case_id"]) if reviewer and case else None

    def newest_save(self, reviewer, state) -> str | None:
        """Your newest save of the open case, withdrawn or not (what a draft must not be older than)."""
        case = state.get("case")
        return self.log.newest_save(reviewer, case["case_id"]) if reviewer and case else None

    @event
    def keep_draft(self, state, token, verdict_value, diag, pn, streaks, pigmentation, regression, dots, veil, vascular,
                   confidence_value, note_value, request: gr.Request, profile: gr.OAuthProfile | None):
        """Before a move away from the open case: unsaved changes in the form stay as the case's draft.
        Part of each move's own event, never an event of its own: two events of one page that both
        write the session's state can finish in either order, and the last one's state wins.
        The draft is that of the case the form's ``token`` names (:func:`review.form_case`): a
        move sent while the one before is still on its way carries the values of a case that
        move already kept, and makes no draft of the case now open."""
        state, _, reviewer = self.act(state, request, profile)
        case_id = review.form_case(state, token)
        if case_id is None:
            return {**state, "left_draft": None, "dropped_draft": None}
        values = (verdict_value, diag, pn, streaks, pigmentation, regression, dots, veil, vascular, confidence_value,
                  note_value)
        return review.keep_draft(state, values, self.log, reviewer, case_id)

    @event
    def show_case(self, state, request: gr.Request, profile: gr.OAuthProfile | None):
        """The open case, ready to review in one step: its images, the model's answer (summary,
        tables, the form's "model says" labels, the guards' buttons), the form (the case's draft,
        the saved review, or blank) and the case token. The token comes only with that form, so a
        save sent before it names the case before and is refused. Then the cases ``n`` and the
        right arrow lead to are prepared (:mod:`skinnet.ui.prepare`); the maps follow this case."""
        state, owner, reviewer = self.act(state, request, profile)
        images = review.load_case_images(state, self.queue_root)
        saved = self.saved(reviewer, state)
        values, status = review.form_for_case(state, saved, self.newest_save(reviewer, state))
        state = review.shown({**state, "left_draft": None, "dropped_draft": None}, values, saved)
        state = review.with_shown_images(state, images)
        # a queue case's images come from its queue file: read-only (one stray click on the
        # image's x must not turn the case into another one)
        editable = (state.get("case") or {}).get("source", "upload") == "upload"
        stored = [self.store.add(owner, im) if im is not None else None for im in images]
        self.on_screen.show(request, *stored)
        shown = [gr.update(value=path, interactive=editable) for path in stored]
        answered, labels, anyway, swap = self.case_answer(images)
        if reviewer and state.get("case"):
            self.preparer.prepare(owner, review.cases_ahead(state, self.log, reviewer))
        verdict, *corrected, confidence, note = values
        token = state.get("event_id") or ""
        return (state, *shown, review.case_header(state, self.log, reviewer), verdict,
                *(gr.update(value=value, **label) for value, label in zip(corrected, labels)), confidence, note,
                status, False, *answered, anyway, swap, form_marker(state, reviewer, values), token)

    def case_answer(self, pair):
        """(the answer as Analyse gives it: message, summary, bars, DIAG table, criteria table;
        the form's label per task; the 'show anyway' and 'swap' buttons) for a case's pair (the
        predictor computes it once)."""
        if all(image is None for image in pair):
            blank = [{"label": task_label(t)} for t in TASKS]
            return ("", *no_answer()), blank, gr.update(visible=False), gr.update(visible=False)
        summary, bars, diagnosis, criteria = answer(self.predictor, *pair, False, bars=False)
        labels = [{"label": update["label"]} for update in form_labels(self.predictor, *pair)]
        shown_bars = no_bars() if bars is None else gr.update(value=bars, visible=True)
        return ("", summary, shown_bars, diagnosis, criteria), labels, *self._guard_updates(pair, False)

    @event
    def own_images(self, state, request: gr.Request, profile: gr.OAuthProfile | None):
        """Close the open case and give back two empty image slots for the reviewer's own pair."""
        state, _, reviewer = self.act(state, request, profile)
        left, dropped = state.get("left_draft"), state.get("dropped_draft")
        state = {**review.start_upload_case(state, None, None), "left_draft": None, "dropped_draft": None}
        status = " ".join(([f"Your unsaved changes to case {left} are kept as a draft: open it again to finish."]
                           if left else []) + ([review.dropped_message(dropped)] if dropped else []))
        self.on_screen.show(request, None, None)
        return (state, gr.update(value=None, interactive=True), gr.update(value=None, interactive=True),
                review.case_header(state, self.log, reviewer), None,
                *(gr.update(value=NO_CHANGE, label=task_label(t)) for t in TASKS), None, "", status, False, "",
                *no_answer(), gr.update(visible=False), gr.update(visible=False), form_ready(""), "")

    @event
    def open_example(self, state, event: gr.SelectData, request: gr.Request, profile: gr.OAuthProfile | None):
        """The clicked example pair in the image slots (this session's own clean copies)."""
        state, owner, _ = self.act(state, request, profile)
        index = event.index if isinstance(event.index, int) and not isinstance(event.index, bool) else -1
        if not 0 <= index < len(self.examples):
            raise gr.Error("No such example.")
        example = self.examples[index]
        stored = [self.store.add(owner, im) if im is not None else None
                  for im in (example.clinical, example.dermoscopy)]
        self.on_screen.show(request, *stored)
        return (*(gr.update(value=path, interactive=True) for path in stored), *cleared_outputs())

    @event
    def swap_images(self, state, clinical_value, dermoscopy_value, request: gr.Request,
                    profile: gr.OAuthProfile | None):
        state, owner, _ = self.act(state, request, profile)
        if (state.get("case") or {}).get("source", "upload") != "upload":
            raise gr.Error("A queue case's images come from its queue file: correct the file if they are swapped.")
        pair = self.open_images(owner, (clinical_value, dermoscopy_value), True)
        stored = [self.store.add(owner, image) if image is not None else None for image in reversed(pair)]
        self.on_screen.show(request, *stored)
        return stored

    # -- the model's answer ---------------------------------------------------------------------
    @event
    def analyse(self, state, clinical_value, dermoscopy_value, anyway, request: gr.Request,
                profile: gr.OAuthProfile | None):
        """The page's Analyse: (message beside the images, summary, the five diagnoses' bars, DIAG
        table, criteria table); no images or an unreadable one is a message, not an error."""
        _, owner, _ = self.act(state, request, profile)
        pair, problem = self.open_for_page(owner, (clinical_value, dermoscopy_value))
        if problem or all(image is None for image in pair):
            return (f"⚠️ {problem or NO_IMAGES}", *no_answer())
        summary, bars, diagnosis, criteria = answer(self.predictor, *pair, anyway is True, bars=False)
        return "", summary, no_bars() if bars is None else gr.update(value=bars, visible=True), diagnosis, criteria

    @event
    def predict(self, state, clinical_value, dermoscopy_value, anyway, request: gr.Request,
                profile: gr.OAuthProfile | None):
        _, owner, _ = self.act(state, request, profile)
        return predict_handler(self.predictor, *self.open_images(owner, (clinical_value, dermoscopy_value), True),
                               anyway is True)

    @event
    def guard_buttons(self, state, clinical_value, dermoscopy_value, anyway, request: gr.Request,
                      profile: gr.OAuthProfile | None):
        """Show 'show anyway' for a hidden prediction ('they are right as they are' for a pair that
        looks swapped) and 'swap' for images in the wrong slots."""
        _, owner, _ = self.act(state, request, profile)
        return self._guard_updates(self.open_images(owner, (clinical_value, dermoscopy_value), True), anyway)

    def _guard_updates(self, pair, anyway):
        checks = self._checks(pair)
        if checks is None:
            return gr.update(visible=False), gr.update(visible=False)
        misplaced = checks.swapped or (sum(im is not None for im in pair) == 1 and bool(checks.wrong_slot))
        confirm = "They are right as they are" if checks.swapped else "Show the prediction anyway"
        return (gr.update(visible=not checks.trustworthy and anyway is not True, value=confirm),
                gr.update(visible=misplaced and anyway is not True))

    @event
    def explain(self, state, clinical_value, dermoscopy_value, task_value, class_value, head_value,
                request: gr.Request, profile: gr.OAuthProfile | None):
        _, owner, _ = self.act(state, request, profile)
        return explain_handler(self.predictor, *self.open_images(owner, (clinical_value, dermoscopy_value), True),
                               task_value, class_value, head_value)

    @event
    def explain_for_page(self, state, clinical_value, dermoscopy_value, task_value, class_value, head_value,
                         request: gr.Request, profile: gr.OAuthProfile | None):
        """The page's Explain: a choice that cannot be explained (no image yet, the fused head with
        one image) is a note, and the maps on screen stay; the public ``/explain`` raises instead."""
        _, owner, _ = self.act(state, request, profile)
        pair, problem = self.open_for_page(owner, (clinical_value, dermoscopy_value))
        if problem or all(image is None for image in pair):
            gr.Warning(problem or "Nothing to explain yet: upload an image or click an example first.")
            return gr.skip(), gr.skip(), gr.skip()
        try:
            return page_maps(self.predictor, *pair, task_value, class_value, head_value)
        except gr.Error as err:
            gr.Warning(err.message)
            return gr.skip(), gr.skip(), gr.skip()

    @event
    def explain_after_predict(self, state, clinical_value, dermoscopy_value, task_value, class_value, head_value,
                              anyway, request: gr.Request, profile: gr.OAuthProfile | None):
        """The maps of an analysis: none without images or while its prediction is hidden (the
        Explain button still works); nothing at all when the page has moved to another case
        meanwhile (its maps are that case's to show)."""
        _, owner, _ = self.act(state, request, profile)
        pair = self.open_images(owner, (clinical_value, dermoscopy_value), True)
        checks = self._checks(pair)
        if all(image is None for image in pair) or (checks is not None and not checks.trustworthy
                                                    and anyway is not True):
            maps = no_maps()
        else:
            maps = page_maps(self.predictor, *pair, task_value, class_value, head_value)
        explained = [self.store.path_for(owner, v) for v in (clinical_value, dermoscopy_value)]
        return maps if self.on_screen.shows(request, *explained) else gr.skip()

    @event
    def form_labels(self, state, clinical_value, dermoscopy_value, anyway, request: gr.Request,
                    profile: gr.OAuthProfile | None):
        _, owner, _ = self.act(state, request, profile)
        return form_labels(self.predictor, *self.open_images(owner, (clinical_value, dermoscopy_value), False), anyway)

    # -- the queue ------------------------------------------------------------------------------
    def step(self, direction):
        @functools.partial(said_plainly, public=self.public)
        def handler(state, request: gr.Request, profile: gr.OAuthProfile | None):
            state, _, reviewer = self.act(state, request, profile)
            state = review.move(state, direction, self.log, reviewer)
            review.remember(state, self.log.folder, reviewer)
            return state
        handler.__name__ = "step_" + direction.replace(" ", "_")
        return handler

    def go(self, direction):
        """A move as the reviewer makes it (n, the arrows, the buttons), in one round trip: the
        open case's unsaved changes kept as its draft, the step, and the new case shown."""
        @functools.partial(said_plainly, public=self.public)
        def handler(state, token, verdict_value, diag, pn, streaks, pigmentation, regression, dots, veil, vascular,
                    confidence_value, note_value, request: gr.Request, profile: gr.OAuthProfile | None):
            state = self.keep_draft(state, token, verdict_value, diag, pn, streaks, pigmentation, regression, dots, veil,
                                    vascular, confidence_value, note_value, request, profile)
            return self.show_case(self.step(direction)(state, request, profile), request, profile)
        handler.__name__ = "go_" + direction.replace(" ", "_")
        return handler

    @staticmethod
    def filter_values(state):
        return state["filters"]["split"], state["filters"]["status"], state["filters"]["predicted"]

    @event
    def open_queue(self, state, chosen, token, verdict_value, diag, pn, streaks, pigmentation, regression, dots, veil,
                   vascular, confidence_value, note_value, request: gr.Request, profile: gr.OAuthProfile | None):
        state, _, reviewer = self.act(state, request, profile, "Opening a queue")
        state = self.keep_draft(state, token, verdict_value, diag, pn, streaks, pigmentation, regression, dots, veil,
                                vascular, confidence_value, note_value, request, profile)
        if self.queue_root is None:
            raise gr.Error("No queue folder is configured (--queue-root).")
        if not isinstance(chosen, str) or chosen not in list_queues(self.queue_root):
            raise gr.Error("Choose a queue file from the list.")
        state = review.with_server_drafts(state, self.log.folder, reviewer)  # put aside in another tab, or before a reload
        state, table, status = review.open_queue_handler(state, str(self.queue_root / chosen), self.queue_root,
                                                         self.log, reviewer, chosen)
        review.remember(state, self.log.folder, reviewer)  # the drafts put aside are on the server at once
        return state, table, status, *self.filter_values(state)

    @event
    def filter_queue(self, state, split_value, status_value, predicted_value, request: gr.Request,
                     profile: gr.OAuthProfile | None):
        state, _, reviewer = self.act(state, request, profile, "Filtering a queue")
        if not state["all"]:
            raise gr.Error("Open a queue first.")
        state = review.apply_filters(state, self.log, reviewer, {"split": split_value, "status": status_value,
                                                                 "predicted": predicted_value})
        review.remember(state, self.log.folder, reviewer)
        return (state, review.queue_table(state, self.log, reviewer), review.view_status(state),
                review.case_header(state, self.log, reviewer))

    @event
    def restore_queue(self, state, request: gr.Request, profile: gr.OAuthProfile | None):
        """On page load: the signed-in reviewer's queue, order, filters and case, as they left them,
        and the case shown (one event: the session's state is written once, or not at all when
        there is nothing to restore, so a queue opened meanwhile is not overwritten)."""
        state, _, reviewer = self.act(state, request, profile)
        restored = review.restore(state, self.log.folder, self.queue_root, self.log, reviewer)
        if restored is None:
            return gr.skip()
        status = f"Back where you left off: {restored['queue_file']}. {review.view_status(restored)}"
        try:
            shown = self.show_case(restored, request, profile)
        except gr.Error as err:  # the case cannot be shown (its image is gone): the queue still comes back
            status = f"{status} Its open case cannot be shown: {err.message}"
            shown = self.show_case({**restored, "case": None, "event_id": None}, request, profile)
        return (review.queue_table(restored, self.log, reviewer), status, *self.filter_values(restored),
                restored.get("event_id") or "restored", *shown)

    @event
    def order_queue(self, state, token, verdict_value, diag, pn, streaks, pigmentation, regression, dots, veil, vascular,
                    confidence_value, note_value, request: gr.Request, profile: gr.OAuthProfile | None,
                    progress=gr.Progress()):
        state, _, reviewer = self.act(state, request, profile, "Ordering a queue")
        state = self.keep_draft(state, token, verdict_value, diag, pn, streaks, pigmentation, regression, dots, veil,
                                vascular, confidence_value, note_value, request, profile)
        state, table, status = review.order_by_uncertainty(state, self.predictor, self.log, reviewer, self.queue_root,
                                                                 progress)
        review.remember(state, self.log.folder, reviewer)
        return state, table, status, *self.filter_values(state)

    @event
    def open_queue_row(self, state, token, verdict_value, diag, pn, streaks, pigmentation, regression, dots, veil, vascular,
                       confidence_value, note_value, event: gr.SelectData, request: gr.Request,
                       profile: gr.OAuthProfile | None):
        """The case of the clicked row, found by its case id (the table may be sorted on screen)."""
        state, _, reviewer = self.act(state, request, profile, "Opening a case")
        state = self.keep_draft(state, token, verdict_value, diag, pn, streaks, pigmentation, regression, dots, veil,
                                vascular, confidence_value, note_value, request, profile)
        row = event.row_value if isinstance(event.row_value, (list, tuple)) else []
        case_id = row[review.QUEUE_COLUMNS.index("case")] if len(row) == len(review.QUEUE_COLUMNS) else None
        state = review.open_case_id(state, case_id)
        review.remember(state, self.log.folder, reviewer)
        return state

    @event
    def refresh_queues(self, request: gr.Request, profile: gr.OAuthProfile | None):
        """The queue files, for reviewers only (their names can say more than a visitor should see)."""
        listed = list_queues(self.queue_root) if self.queue_root and self.reviewers.of(request, profile) else []
        return gr.update(choices=listed)

    # -- reviews ----------------------------------------------------------------------------------
    @event
    def save(self, state, token, reveal, verdict_value, confidence_value, note_value, diag, pn, streaks,
             pigmentation, regression, dots, veil, vascular, shown_anyway, request: gr.Request,
             profile: gr.OAuthProfile | None):
        """Append the review of the case on screen; with ``reveal`` (a Derm7pt case), the
        reference labels come back with the confirmation (and the reviewer's later changes to
        that case are refused: they would no longer be an independent reading). ``shown_anyway``:
        the page shows a prediction the lesion check hides (its 'show anyway' was pressed)."""
        ended = session_ended(state, token)
        state, owner, reviewer = self.act(state, request, profile, "Saving")  # before anything is decoded
        if ended:
            raise gr.Error(session_ended_message("saved"))
        if not state.get("event_id") or token != state["event_id"]:
            raise gr.Error("The case changed before this save reached the server; nothing was saved. "
                           "Check the form for the case on screen and save again.")
        corrected = (diag, pn, streaks, pigmentation, regression, dots, veil, vascular)  # TASKS order
        for key in ("clinical", "dermoscopy"):  # an upload case's copies stay while it is open
            self.store.refresh(owner, state["case"].get(key))
        images = review.load_case_images(state, self.queue_root)  # the server's own images of the open case
        state, message = review.save_review(state, self.predictor, self.log, reviewer, *images, verdict_value,
                                            dict(zip([t.name for t in TASKS], corrected)),
                                            confidence_value, note_value, prediction_shown=shown_anyway is True)
        if reveal is True:
            reference = review.reveal_reference(state, self.log, reviewer)
            message = f"{message}\n\n{reference}" if reference else message
        # the state is not an output: a step that finished meanwhile must not be undone by this one
        return (message, review.case_header(state, self.log, reviewer), review.queue_table(state, self.log, reviewer),
                form_marker(state, reviewer, review.form_values(self.saved(reviewer, state))))

    @event
    def undo(self, state, token, verdict_value, diag, pn, streaks, pigmentation, regression, dots, veil, vascular,
             confidence_value, note_value, request: gr.Request, profile: gr.OAuthProfile | None):
        """Withdraw your latest review of the case on screen, if the form shows it. What cannot be
        undone is said in the status line, and the form keeps what it shows (no error marks on its
        fields)."""
        ended = session_ended(state, token)
        state, _, reviewer = self.act(state, request, profile, "Undo")
        form = (verdict_value, diag, pn, streaks, pigmentation, regression, dots, veil, vascular, confidence_value,
                note_value)
        unchanged = (gr.skip(),) * (2 + len(TASKS) + 4)  # header, table, verdict, corrections, confidence, note, marker
        if ended:
            return (session_ended_message("undone"), *unchanged)
        if not state.get("event_id") or token != state["event_id"]:
            return ("The case changed before this undo reached the server; nothing was undone. Check the case on "
                    "screen and undo again.", *unchanged)
        message, standing, undone = review.undo_last_save(state, self.log, reviewer, form)
        if not undone:
            return (message, *unchanged)
        return (message, review.case_header(state, self.log, reviewer), review.queue_table(state, self.log, reviewer),
                *review.form_values(standing), form_marker(state, reviewer, review.form_values(standing)))

    @event
    def agreement(self, request: gr.Request, profile: gr.OAuthProfile | None):
        _, _, reviewer = self.act({}, request, profile, "Seeing reviewers' agreement")
        from ..agreement import agreement_report, kappa_table
        from ..corrections import log_files, read_corrections

        if not log_files(self.log.folder):
            raise gr.Error("No reviews are saved yet.")
        rows, _ = read_corrections(self.log.folder)
        admin = reviewer in self.reviewers.admins
        table = kappa_table(agreement_report(rows, intervals=False), only=None if admin else reviewer)
        if not table:
            raise gr.Error("No labelled reviews are saved yet." if admin else
                           "You have no labelled reviews yet (reviewer pairs are shown to admins only).")
        return pd.DataFrame(table, columns=["raters", "cases", *(t.name for t in TASKS)])

    @event
    def export_labels(self, rule, request: gr.Request, profile: gr.OAuthProfile | None):
        """A download link to everyone's current labels, for this admin only (:mod:`.exports`)."""
        admin = self.reviewers.require_admin(request, profile, "Exporting everyone's labels")
        if rule not in ("latest", "majority"):
            raise gr.Error("Choose 'latest' or 'majority'.")
        try:
            token, problems = self.exports.create(admin, self.log, rule)
        except ExportError as err:
            raise gr.Error(str(err)) from None
        if problems:
            gr.Warning(f"{len(problems)} bad rows left out: " + "; ".join(str(p) for p in problems[:3]))
        return download_link(token)

    @event
    def backup_status(self, request: gr.Request, profile: gr.OAuthProfile | None):
        """When the review log was last backed up (for reviewers: it says where it goes)."""
        if not self.reviewers.of(request, profile):
            return ""
        if self.backup is None:
            return ("No backup of the review log is configured (--backup): it lives on this server's disk only, "
                    "which a Space loses at every restart (see docs/security.md).")
        return self.backup.status.sentence()

    @event
    def who_is_signed_in(self, request: gr.Request, profile: gr.OAuthProfile | None):
        reviewer = self.reviewers.of(request, profile)
        if reviewer:
            return f"Signed in as **{reviewer}**"
        return "Not signed in: saving is off" if self.reviewers.configured else "Public demo: predictions only"
