"""What each event of the app does, bound to one app's model, log, reviewers and image store.

Every event, public or not, can be called by raw HTTP with any session hash and body. So each
method here takes its images through :class:`~skinnet.ui.uploads.SessionImages` (never a path
the client chose), binds the session to its first identity and checks who may act, all
through :meth:`AppEvents.act`. Gradio fills ``request`` and ``profile`` (the Hugging Face
sign-in, if any) by annotation; tests call the methods with their own.
"""
from __future__ import annotations

import gradio as gr
import pandas as pd

from ..corrections import CorrectionsLog
from ..imaging import ImageError
from ..labels import TASKS
from ..predict import Predictor
from ..review_queue import list_queues
from . import access, review
from .examples import Example
from .handlers import answer, explain_handler, form_labels, predict_handler
from .settings import AppSettings
from .uploads import CleanStore, NotYours, SessionImages
from .views import NO_IMAGES

NO_BARS = gr.update(value=None, visible=False)
"""The five diagnoses' bars while there is no answer to show (an empty gr.Label is a blank box)."""
CLEARED_OUTPUTS = ("", False, "", NO_BARS, None, None, None, None, [], gr.update(visible=False),
                   gr.update(visible=False))
"""What a new pair does to the last pair's results: no message beside the images, no 'show
anyway', no summary, bars, tables or maps."""
NO_ANSWER = ("", NO_BARS, None, None)
"""An analysis that did not run: no summary, bars or tables."""


class AppEvents:
    def __init__(self, predictor: Predictor, settings: AppSettings, log: CorrectionsLog,
                 reviewers: access.Reviewers, store: CleanStore, images_in: SessionImages,
                 examples: list[Example] = ()):
        self.predictor, self.settings, self.log = predictor, settings, log
        self.reviewers, self.store, self.images_in = reviewers, store, images_in
        self.queue_root = settings.queue_root
        self.examples = list(examples)

    # -- who may do this ------------------------------------------------------------------------
    def act(self, state, request: gr.Request, profile, action: str | None = None):
        """(state bound to this identity, owner key of its images, reviewer or None).

        With ``action`` ("Saving", "Opening a queue"), a signed-in reviewer is required first:
        anyone else gets a message saying who may do it, before any input is decoded.
        """
        reviewer = (self.reviewers.require(request, profile, action) if action
                    else self.reviewers.of(request, profile))
        who = access.identity(request, profile)
        owner = (str(getattr(request, "session_hash", "") or ""), who)
        return access.claim_session(state, who), owner, reviewer

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
        def handler(state, value, request: gr.Request, profile: gr.OAuthProfile | None):
            state, owner, _ = self.act(state, request, profile)
            try:
                image = self.images_in.open(owner, value, name, originals=True)
            except NotYours as err:
                raise gr.Error(str(err)) from None
            except ImageError as err:  # the refused image leaves its slot; the message says why
                return (None, f"⚠️ {err}", *CLEARED_OUTPUTS[1:])
            # the last pair's results go in the same response as the new image (no later step
            # can wipe an analysis the user started meanwhile)
            return (self.store.add(owner, image) if image is not None else None, *CLEARED_OUTPUTS)
        handler.__name__ = f"upload_{name.split()[0]}"
        return handler

    def case_from_upload(self, state, clinical_value, dermoscopy_value, request: gr.Request,
                         profile: gr.OAuthProfile | None):
        state, owner, reviewer = self.act(state, request, profile)
        paths = [self.store.path_for(owner, v) for v in (clinical_value, dermoscopy_value)]
        state = review.start_upload_case(state, *(str(p) if p else None for p in paths))
        # the form shows this pair's saved review (its id is its pixels' hash), or a blank form
        saved, status = self.saved_review(reviewer, state)
        return (state, review.case_header(state, self.log, reviewer), *review.form_values(saved), status,
                state.get("event_id") or "")

    def saved_review(self, reviewer, state):
        """(your latest review of the open case or None, the line that says it is shown)."""
        saved = self.log.latest_review(reviewer, state["case"]["case_id"]) if reviewer and state.get("case") else None
        status = (f"Showing your saved review ({saved['verdict']}, {saved['logged_at']}): change it and save to "
                  "replace it." if saved else "")
        return saved, status

    def show_case(self, state, request: gr.Request, profile: gr.OAuthProfile | None):
        state, owner, reviewer = self.act(state, request, profile)
        images = review.load_case_images(state)
        saved, status = self.saved_review(reviewer, state)
        # a queue case's images come from its queue file: read-only (one stray click on the
        # image's x must not turn the case into another one)
        editable = (state.get("case") or {}).get("source", "upload") == "upload"
        shown = [gr.update(value=self.store.add(owner, im) if im is not None else None, interactive=editable)
                 for im in images]
        return (state, *shown, review.case_header(state, self.log, reviewer), *review.form_values(saved), status,
                False, state.get("event_id") or "")

    def own_images(self, state, request: gr.Request, profile: gr.OAuthProfile | None):
        """Close the open case and give back two empty image slots for the reviewer's own pair."""
        state, _, reviewer = self.act(state, request, profile)
        state = review.start_upload_case(state, None, None)
        blank = gr.update(value=None, interactive=True)
        return (state, blank, blank, review.case_header(state, self.log, reviewer),
                *review.form_values(None), "", False, "")

    def open_example(self, state, event: gr.SelectData, request: gr.Request, profile: gr.OAuthProfile | None):
        """The clicked example pair in the image slots (this session's own clean copies)."""
        state, owner, _ = self.act(state, request, profile)
        index = event.index if isinstance(event.index, int) and not isinstance(event.index, bool) else -1
        if not 0 <= index < len(self.examples):
            raise gr.Error("No such example.")
        example = self.examples[index]
        return (*(gr.update(value=self.store.add(owner, im) if im is not None else None, interactive=True)
                  for im in (example.clinical, example.dermoscopy)), *CLEARED_OUTPUTS)

    def swap_images(self, state, clinical_value, dermoscopy_value, request: gr.Request,
                    profile: gr.OAuthProfile | None):
        state, owner, _ = self.act(state, request, profile)
        if (state.get("case") or {}).get("source", "upload") != "upload":
            raise gr.Error("A queue case's images come from its queue file: correct the file if they are swapped.")
        pair = self.open_images(owner, (clinical_value, dermoscopy_value), True)
        return [self.store.add(owner, image) if image is not None else None for image in reversed(pair)]

    # -- the model's answer ---------------------------------------------------------------------
    def analyse(self, state, clinical_value, dermoscopy_value, anyway, request: gr.Request,
                profile: gr.OAuthProfile | None):
        """The page's Analyse: (message beside the images, summary, the five diagnoses' bars, DIAG
        table, criteria table); no images or an unreadable one is a message, not an error."""
        _, owner, _ = self.act(state, request, profile)
        pair, problem = self.open_for_page(owner, (clinical_value, dermoscopy_value))
        if problem or all(image is None for image in pair):
            return (f"⚠️ {problem or NO_IMAGES}", *NO_ANSWER)
        summary, bars, diagnosis, criteria = answer(self.predictor, *pair, anyway is True, bars=False)
        return "", summary, NO_BARS if bars is None else gr.update(value=bars, visible=True), diagnosis, criteria

    def predict(self, state, clinical_value, dermoscopy_value, anyway, request: gr.Request,
                profile: gr.OAuthProfile | None):
        _, owner, _ = self.act(state, request, profile)
        return predict_handler(self.predictor, *self.open_images(owner, (clinical_value, dermoscopy_value), True),
                               anyway is True)

    def guard_buttons(self, state, clinical_value, dermoscopy_value, anyway, request: gr.Request,
                      profile: gr.OAuthProfile | None):
        """Show 'show anyway' for a hidden prediction ('they are right as they are' for a pair that
        looks swapped) and 'swap' for images in the wrong slots."""
        _, owner, _ = self.act(state, request, profile)
        pair = self.open_images(owner, (clinical_value, dermoscopy_value), True)
        checks = self._checks(pair)
        if checks is None:
            return gr.update(visible=False), gr.update(visible=False)
        misplaced = checks.swapped or (sum(im is not None for im in pair) == 1 and bool(checks.wrong_slot))
        confirm = "They are right as they are" if checks.swapped else "Show the prediction anyway"
        return (gr.update(visible=not checks.trustworthy and anyway is not True, value=confirm),
                gr.update(visible=misplaced and anyway is not True))

    def explain(self, state, clinical_value, dermoscopy_value, task_value, class_value, head_value,
                request: gr.Request, profile: gr.OAuthProfile | None):
        _, owner, _ = self.act(state, request, profile)
        return explain_handler(self.predictor, *self.open_images(owner, (clinical_value, dermoscopy_value), True),
                               task_value, class_value, head_value)

    def explain_after_predict(self, state, clinical_value, dermoscopy_value, task_value, class_value, head_value,
                              anyway, request: gr.Request, profile: gr.OAuthProfile | None):
        """The maps of an analysis: none without images or while its prediction is hidden (the
        Explain button still works)."""
        _, owner, _ = self.act(state, request, profile)
        pair = self.open_images(owner, (clinical_value, dermoscopy_value), True)
        checks = self._checks(pair)
        if all(image is None for image in pair) or (checks is not None and not checks.trustworthy
                                                    and anyway is not True):
            return None, None, []
        return explain_handler(self.predictor, *pair, task_value, class_value, head_value)

    def form_labels(self, state, clinical_value, dermoscopy_value, anyway, request: gr.Request,
                    profile: gr.OAuthProfile | None):
        _, owner, _ = self.act(state, request, profile)
        return form_labels(self.predictor, *self.open_images(owner, (clinical_value, dermoscopy_value), False), anyway)

    # -- the queue ------------------------------------------------------------------------------
    def step(self, direction):
        def handler(state, request: gr.Request, profile: gr.OAuthProfile | None):
            state, _, reviewer = self.act(state, request, profile)
            state = review.move(state, direction, self.log, reviewer)
            review.remember(state, self.log.folder, reviewer)
            return state
        handler.__name__ = "step_" + direction.replace(" ", "_")
        return handler

    @staticmethod
    def filter_values(state):
        return state["filters"]["split"], state["filters"]["status"], state["filters"]["predicted"]

    def open_queue(self, state, chosen, request: gr.Request, profile: gr.OAuthProfile | None):
        state, _, reviewer = self.act(state, request, profile, "Opening a queue")
        if self.queue_root is None:
            raise gr.Error("No queue folder is configured (--queue-root).")
        if not isinstance(chosen, str) or chosen not in list_queues(self.queue_root):
            raise gr.Error("Choose a queue file from the list.")
        state, table, status = review.open_queue_handler(state, str(self.queue_root / chosen), self.queue_root,
                                                         self.log, reviewer, chosen)
        return state, table, status, *self.filter_values(state)

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

    def restore_queue(self, state, request: gr.Request, profile: gr.OAuthProfile | None):
        """On page load: the signed-in reviewer's queue, order, filters and case, as they left them."""
        state, _, reviewer = self.act(state, request, profile)
        restored = review.restore(state, self.log.folder, self.queue_root, self.log, reviewer)
        if restored is None:
            return (state, gr.update(), gr.update(), gr.update(), gr.update(), gr.update(), gr.update())
        status = f"Back where you left off: {restored['queue_file']}. {review.view_status(restored)}"
        return (restored, review.queue_table(restored, self.log, reviewer), status, *self.filter_values(restored),
                restored.get("event_id") or "restored")

    def order_queue(self, state, request: gr.Request, profile: gr.OAuthProfile | None, progress=gr.Progress()):
        state, _, reviewer = self.act(state, request, profile, "Ordering a queue")
        state, table, status = review.order_by_uncertainty(state, self.predictor, self.log, reviewer, progress)
        review.remember(state, self.log.folder, reviewer)
        return state, table, status, *self.filter_values(state)

    def open_queue_row(self, state, event: gr.SelectData, request: gr.Request, profile: gr.OAuthProfile | None):
        """The case of the clicked row, found by its case id (the table may be sorted on screen)."""
        state, _, reviewer = self.act(state, request, profile, "Opening a case")
        row = event.row_value if isinstance(event.row_value, (list, tuple)) else []
        case_id = row[review.QUEUE_COLUMNS.index("case")] if len(row) == len(review.QUEUE_COLUMNS) else None
        state = review.open_case_id(state, case_id)
        review.remember(state, self.log.folder, reviewer)
        return state

    def refresh_queues(self, request: gr.Request, profile: gr.OAuthProfile | None):
        """The queue files, for reviewers only (their names can say more than a visitor should see)."""
        listed = list_queues(self.queue_root) if self.queue_root and self.reviewers.of(request, profile) else []
        return gr.update(choices=listed)

    # -- reviews ----------------------------------------------------------------------------------
    def save(self, state, token, reveal, verdict_value, confidence_value, note_value, diag, pn, streaks,
             pigmentation, regression, dots, veil, vascular, request: gr.Request, profile: gr.OAuthProfile | None):
        """Append the review of the case on screen; with ``reveal`` (a Derm7pt case), the
        reference labels come back with the confirmation (and the reviewer's later changes to
        that case are refused: they would no longer be an independent reading)."""
        state, owner, reviewer = self.act(state, request, profile, "Saving")  # before anything is decoded
        if not state.get("event_id") or token != state["event_id"]:
            raise gr.Error("The case changed before this save reached the server; nothing was saved. "
                           "Check the form for the case on screen and save again.")
        corrected = (diag, pn, streaks, pigmentation, regression, dots, veil, vascular)  # TASKS order
        for key in ("clinical", "dermoscopy"):  # an upload case's copies stay while it is open
            self.store.refresh(owner, state["case"].get(key))
        images = review.load_case_images(state)  # the server's own images of the open case
        state, message = review.save_review(state, self.predictor, self.log, reviewer, *images, verdict_value,
                                            dict(zip([t.name for t in TASKS], corrected)),
                                            confidence_value, note_value)
        if reveal is True:
            reference = review.reveal_reference(state, self.log, reviewer)
            message = f"{message}\n\n{reference}" if reference else message
        # the state is not an output: a step that finished meanwhile must not be undone by this one
        return message, review.case_header(state, self.log, reviewer), review.queue_table(state, self.log, reviewer)

    def undo(self, state, token, request: gr.Request, profile: gr.OAuthProfile | None):
        state, _, reviewer = self.act(state, request, profile, "Undo")
        if not state.get("event_id") or token != state["event_id"]:
            raise gr.Error("The case changed before this undo reached the server; nothing was undone. "
                           "Check the case on screen and undo again.")
        message, standing = review.undo_last_save(state, self.log, reviewer)
        return (message, review.case_header(state, self.log, reviewer), review.queue_table(state, self.log, reviewer),
                *review.form_values(standing))

    def agreement(self, request: gr.Request, profile: gr.OAuthProfile | None):
        _, _, reviewer = self.act({}, request, profile, "Seeing reviewers' agreement")
        from ..agreement import agreement_report, kappa_table
        from ..corrections import read_corrections

        if not self.log.path.is_file():
            raise gr.Error("No reviews are saved yet.")
        rows, _ = read_corrections(self.log.path)
        admin = reviewer in self.reviewers.admins
        table = kappa_table(agreement_report(rows, intervals=False), only=None if admin else reviewer)
        if not table:
            raise gr.Error("No labelled reviews are saved yet." if admin else
                           "You have no labelled reviews yet (reviewer pairs are shown to admins only).")
        return pd.DataFrame(table, columns=["raters", "cases", *(t.name for t in TASKS)])

    def export_labels(self, rule, request: gr.Request, profile: gr.OAuthProfile | None):
        self.reviewers.require_admin(request, profile, "Exporting everyone's labels")
        if rule not in ("latest", "majority"):
            raise gr.Error("Choose 'latest' or 'majority'.")
        return review.export_labels(self.log, rule)

    def who_is_signed_in(self, request: gr.Request, profile: gr.OAuthProfile | None):
        reviewer = self.reviewers.of(request, profile)
        if reviewer:
            return f"Signed in as **{reviewer}**"
        return "Not signed in: saving is off" if self.reviewers.configured else "Public demo: predictions only"
