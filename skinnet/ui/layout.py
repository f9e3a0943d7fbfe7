"""The page: what sits where, and which event runs which :class:`~skinnet.ui.events.AppEvents`
method. Two public endpoints (``/predict``, ``/explain``); every other event is private to
the page but still reachable by raw HTTP, hence the checks in ``events``."""
from __future__ import annotations

import atexit
import json
from pathlib import Path

import gradio as gr

from ..backup import backup_for
from ..corrections import MAX_NOTE, NO_CHANGE, VERDICTS, CorrectionsLog
from ..labels import TASKS
from ..model import HEADS
from ..predict import Predictor
from . import access, review, uploads
from .events import AppEvents, cleared_outputs
from .examples import Example, read_examples
from .exports import Exports
from .handlers import (AUTO_HEAD, CRITERIA_COLUMNS, DIAGNOSIS_COLUMNS, PREDICTED, class_choice_list, class_choices,
                       task_choices)
from .keys import form_choices
from .settings import PREDICT_CONCURRENCY, AppSettings
from .synthetic_examples import synthetic_examples
from . import views
from .views import DEMO_QUEUE_NOTE, DISCLAIMER, EXAMPLES_LABEL, INTRO, model_markdown, review_help, task_label


def _examples_gallery(examples: list[Example]) -> gr.Gallery:
    gr.Markdown(EXAMPLES_LABEL, elem_id="examples-note")
    return gr.Gallery([(e.thumbnail(), e.name) for e in examples], show_label=False, columns=5, rows=1,
                      height=120, object_fit="contain", allow_preview=False, interactive=False, format="png",
                      elem_id="examples")


def build_app(predictor: Predictor, settings: AppSettings | None = None,
              examples: list[Example] | None = None) -> gr.Blocks:
    """The Blocks app around a loaded predictor. The example pairs are the drawn ones the app
    ships, then the owner's (``examples``: read from ``settings.examples`` when not given)."""
    settings = settings or AppSettings(checkpoint=Path(predictor.card.name))
    examples = [*synthetic_examples(), *(read_examples(settings.examples) if examples is None else examples)]
    if predictor.batcher is None and predictor.device != "cpu":
        # visitors' predictions that arrive together share a forward pass; not on a CPU, where a
        # batch of flipped pairs costs more per pair than one pair (benchmarks/latency.py)
        predictor.batch_concurrent_calls(PREDICT_CONCURRENCY)
    log = CorrectionsLog(settings.log_dir)
    try:
        backup = backup_for(settings.backup, log)
    except ValueError as err:
        raise SystemExit(f"skinnet: {err}") from None
    reviewers = access.Reviewers(password_logins=bool(settings.users), hf_accounts=settings.hf_reviewers,
                                 admins=settings.admins)
    saving = reviewers.configured
    demo = settings.public_demo
    store = uploads.CleanStore()
    exports = Exports(settings.log_dir / "exports")

    with gr.Blocks(title="skinnet", delete_cache=(1800, 3600)) as app:
        images_in = uploads.SessionImages(store, lambda: app.upload_file_set)
        events = AppEvents(predictor, settings, log, reviewers, store, images_in, exports, examples, backup)
        state = gr.State(review.new_state())
        with gr.Row():
            gr.Markdown("### skinnet · multi-modal skin lesion review")
            signed_in = gr.Markdown(elem_id="signed-in", elem_classes=["signed-in"])
            if settings.users:
                gr.Button("Log out", link="/logout", size="sm", scale=0, elem_id="log-out")
            if settings.hf_reviewers:
                gr.LoginButton(scale=0, elem_id="hf-login")
        gr.Markdown(DISCLAIMER, elem_classes=["disclaimer"])
        if demo:  # a visitor is told what to upload; reviewers have the form and its help instead
            gr.Markdown(INTRO, elem_id="intro")
        with gr.Tabs() as tabs:
            with gr.Tab("Review", id="review"):
                with gr.Row(visible=not demo):
                    header = gr.Markdown(review.case_header(review.new_state(), log, None), elem_id="case-header")
                    prev_case = gr.Button("< prev", size="sm", elem_id="prev-case", scale=0)
                    next_case = gr.Button("next >", size="sm", elem_id="next-case", scale=0)
                    next_unreviewed = gr.Button("next unreviewed >", size="sm", elem_id="next-unreviewed", scale=0)

                def answer_parts():
                    """The model's answer: the summary with the guards' words, their buttons."""
                    words = gr.Markdown(label="summary", elem_id="summary")
                    with gr.Row():
                        swap = gr.Button("Swap the images", visible=False, size="sm", scale=0,
                                         elem_id="swap-images")
                        anyway = gr.Button("Show the prediction anyway", visible=False, size="sm", scale=0,
                                           elem_id="show-anyway")
                    return anyway, swap, words

                def diagnosis_bars():
                    return gr.Label(label="Diagnosis: probability of each of the five", num_top_classes=5,
                                    show_heading=False, visible=False, elem_id="diagnosis-bars")

                def explain_controls():
                    """What the Grad-CAM explains: a task, a class, a head; under the maps they change."""
                    with gr.Row(elem_id="explain-controls"):
                        return (gr.Dropdown(task_choices(), value="DIAG", label="Explain task", elem_id="explain-task"),
                                gr.Dropdown(class_choice_list("DIAG"), value=PREDICTED, label="Class",
                                            elem_id="explain-class"),
                                gr.Radio([AUTO_HEAD, *HEADS], value=AUTO_HEAD, label="Head", elem_id="explain-head"),
                                gr.Button("Explain", elem_id="explain"))

                def gradcam_parts():
                    with gr.Row():
                        return (gr.Image(label="Grad-CAM, clinical", type="pil", format="png", interactive=False,
                                         height=300, elem_id="gradcam-clinical"),
                                gr.Image(label="Grad-CAM, dermoscopy", type="pil", format="png", interactive=False,
                                         height=300, elem_id="gradcam-dermoscopy"))

                with gr.Row(equal_height=False):
                    # demo: the images on the left, the answer and its maps on the right; with reviewers:
                    # the case and the answer on the left, the review form on the right, on one screen
                    with gr.Column(scale=4 if demo else 3, min_width=520):
                        with gr.Row(elem_id="case-images"):
                            clinical = gr.Image(label="Clinical photo", type="filepath", format="png",
                                                sources=["upload", "clipboard"], height=230 if demo else 250,
                                                elem_id="clinical-input")
                            dermoscopy = gr.Image(label="Dermoscopy image", type="filepath", format="png",
                                                  sources=["upload", "clipboard"], height=230 if demo else 250,
                                                  elem_id="dermoscopy-input")
                        # a user's mistake (no image, one refused) is said here, beside the images
                        input_message = gr.Markdown(elem_id="input-message")
                        with gr.Row():
                            analyse = gr.Button("Analyse", variant="primary", elem_id="analyse", scale=4)
                            # closes the open case: two empty slots for a pair of the reviewer's own
                            own_button = gr.Button("My own pair", elem_id="own-images", scale=1, min_width=110,
                                                   visible=not demo)
                        example_gallery = None
                        if demo:  # the bars appear here, between the button and the examples
                            label = diagnosis_bars()
                            if examples:
                                example_gallery = _examples_gallery(examples)
                        else:
                            anyway_button, swap_button, summary = answer_parts()
                            label = diagnosis_bars()
                            if examples:
                                with gr.Accordion("Examples", open=False):
                                    example_gallery = _examples_gallery(examples)
                        # True once the user asked to see a prediction the guards hid (a new pair resets it)
                        show_anyway = gr.Checkbox(False, visible=False, label="show anyway", elem_id="show-anyway-flag")
                    if demo:
                        with gr.Column(scale=5, min_width=520, elem_id="answer-side"):
                            anyway_button, swap_button, summary = answer_parts()
                            cam_clinical, cam_dermoscopy = gradcam_parts()
                            # under the maps they change (the visitor sees the map follow the choice)
                            task, class_name, head, explain_button = explain_controls()
                    # a public demo has nobody who could save: no review form at all
                    with gr.Column(scale=2, min_width=380, elem_id="review-side", visible=not demo):
                        with gr.Column(elem_id="review-form"):
                            verdict = gr.Radio(list(VERDICTS), value=None, label="Your review: verdict",
                                               elem_id="verdict")
                            corrections = []
                            with gr.Group(elem_id="corrections"):
                                for pair_of_tasks in (TASKS[0:2], TASKS[2:4], TASKS[4:6], TASKS[6:8]):
                                    with gr.Row():
                                        for t in pair_of_tasks:
                                            corrections.append(gr.Dropdown(
                                                form_choices(t), value=NO_CHANGE,
                                                label=task_label(t), elem_id=f"correct-{t.name}", min_width=160))
                            with gr.Row():
                                confidence = gr.Radio([1, 2, 3, 4, 5], value=None, label="Confidence (1 low - 5 high)",
                                                      min_width=290, scale=3, elem_id="confidence")
                                note = gr.Textbox(label=f"Note (max {MAX_NOTE} chars)", lines=1, elem_id="review-note",
                                                  max_length=MAX_NOTE, min_width=120, scale=2)
                            # the event id of the case on screen: a save names the case the reviewer saw
                            case_token = gr.Textbox(visible=False, elem_id="case-token")
                            with gr.Row():
                                save = gr.Button("Save review (Enter)", variant="primary", interactive=saving,
                                                 elem_id="save-review", scale=2)
                                undo = gr.Button("Undo last save", interactive=saving, elem_id="undo-save", scale=1)
                            save_status = gr.Markdown(elem_id="save-status")
                            # which case the form shows (keys.js: the review keys wait for it after a move)
                            form_state = gr.HTML(views.form_ready(""), elem_id="form-state", padding=False)
                            gr.Markdown(review_help(reviewers), elem_classes=["form-help"])
                with gr.Accordion("Probabilities per head and the seven-point criteria", open=True):
                    with gr.Row():
                        diagnosis = gr.Dataframe(headers=DIAGNOSIS_COLUMNS, label="Diagnosis: probability per head",
                                                 scale=2, interactive=False, wrap=True, elem_id="diagnosis-table",
                                                 column_widths=["37%", "21%", "24%", "18%"])
                        criteria = gr.Dataframe(headers=CRITERIA_COLUMNS, scale=3, interactive=False, wrap=True,
                                                label="Seven-point criteria: top class and probability per head",
                                                column_widths=["25%", "25%", "25%", "25%"], elem_id="criteria-table")
                with gr.Accordion("Where the model looked: Grad-CAM and cross-attention" if not demo
                                  else "Where each image looked in the other: cross-attention", open=True):
                    if not demo:
                        task, class_name, head, explain_button = explain_controls()
                        cam_clinical, cam_dermoscopy = gradcam_parts()
                    attention = gr.Gallery(label="Cross-attention (queries of one image over the other's grid)",
                                           format="png", columns=4, object_fit="contain", height="auto",
                                           elem_id="attention")
            with gr.Tab("Queue", id="queue") as queue_tab:
                if demo:
                    gr.Markdown(DEMO_QUEUE_NOTE, elem_id="queue-demo-note")
                queue_box = (gr.Accordion("Queue controls (reviewers only)", open=False) if demo
                             else gr.Column())
                with queue_box:
                    gr.Markdown("Open a manifest CSV (`case_id, clinical, dermoscopy`, paths relative to it) or a "
                                "Derm7pt `meta/meta.csv` from the queue folder (`--queue-root` on the server).")
                    with gr.Row():
                        queue_file = gr.Dropdown([], value=None, scale=4, label="Queue file", elem_id="queue-file")
                        open_button = gr.Button("Open queue", elem_id="open-queue", interactive=saving, scale=1)
                        order_button = gr.Button("Least sure first", elem_id="order-queue", interactive=saving,
                                                 scale=1)
                    with gr.Row(elem_id="queue-filters"):
                        split_filter = gr.Radio(list(review.SPLIT_CHOICES), value="all", label="Derm7pt split",
                                                elem_id="filter-split", scale=2)
                        status_filter = gr.Radio(list(review.STATUS_CHOICES), value="all", label="Your reviews",
                                                 elem_id="filter-status", scale=2)
                        predicted_filter = gr.Dropdown(list(review.PREDICTED_CHOICES), value="any",
                                                       label="Predicted diagnosis (after 'Least sure first')",
                                                       elem_id="filter-predicted", scale=1)
                    reveal = gr.Checkbox(False, label="Teaching: show me a Derm7pt case's reference labels (all 8 tasks) "
                                         "after I save my review of it (my later changes to that case, or to its "
                                         "images under another id, are then refused)",
                                         elem_id="reveal-reference")
                    queue_status = gr.Markdown(elem_id="queue-status")
                    backup_status = gr.Markdown(elem_id="backup-status", elem_classes=["form-help"])
                    queue_view = gr.Dataframe(headers=review.QUEUE_COLUMNS, interactive=False, elem_id="queue-table")
                    with gr.Row():
                        export_rule = gr.Radio(["latest", "majority"], value="latest", scale=2,
                                               label="When reviewers disagree on a case (admins)")
                        export_button = gr.Button("Export current labels (meta.csv)",
                                                  interactive=bool(settings.admins), elem_id="export-labels", scale=1)
                        export_file = gr.HTML(label="Derm7pt-style meta.csv", scale=2, elem_id="export-file")
                    with gr.Accordion("Agreement (reviewers)", open=False):
                        gr.Markdown("Cohen's kappa per task of your labels with the model's prediction (and the "
                                    "Derm7pt reference labels); admins also see each pair of reviewers. Over the "
                                    "cases both labelled (latest labelled review each; 1 = perfect, 0 = chance). "
                                    "Intervals, Fleiss' kappa and confusion matrices: "
                                    "`python -m skinnet.agreement corrections/ --out DIR`.")
                        agreement_button = gr.Button("Show agreement", size="sm", interactive=saving,
                                                     elem_id="agreement")
                        agreement_view = gr.Dataframe(interactive=False, elem_id="agreement-table")
            with gr.Tab("Model", id="model"):
                gr.Markdown(model_markdown(predictor))

        # -- wiring -------------------------------------------------------------------------------
        images = [state, clinical, dermoscopy]
        explain_inputs = [state, clinical, dermoscopy, task, class_name, head]
        explain_outputs = [cam_clinical, cam_dermoscopy, attention]
        answered = [input_message, summary, label, diagnosis, criteria]
        form = [verdict, *corrections, confidence, note, save_status]
        # the case token says which case the form's values belong to (a move can leave before the form is in)
        form_inputs = [state, case_token, verdict, *corrections, confidence, note]
        private = {"api_visibility": "private", "preprocess": False}
        # the case token comes last in every output list that opens a case (API callers read data[-1])
        uploaded = [state, header, *form, form_state, case_token]
        cleared = [input_message, show_anyway, summary, label, diagnosis, criteria, *explain_outputs, anyway_button,
                   swap_button]
        # a queue case opens in one step (images, the model's answer, the form, the token); its maps follow
        case_outputs = [state, clinical, dermoscopy, header, *form, show_anyway, *answered, anyway_button,
                        swap_button, form_state, case_token]
        model_calls = {"concurrency_limit": PREDICT_CONCURRENCY, "concurrency_id": "predict"}
        # the case of the images in the slots: one at a time, first sent first done (two uploads in a
        # row: the pair's case is the one that stays, not the first image's arriving late)
        in_order = {"concurrency_limit": 1, "concurrency_id": "case-from-upload"}

        def after_predict(event):  # each step only after the one before succeeded; the form before the maps
            return (event.success(events.guard_buttons, [*images, show_anyway], [anyway_button, swap_button],
                                  **private)
                    .success(events.form_labels, [*images, show_anyway], corrections, **private)
                    .success(events.explain_after_predict, [*explain_inputs, show_anyway], explain_outputs,
                             **private))

        def analyse_chain(event):
            return after_predict(event.success(events.analyse, [*images, show_anyway], answered, **private,
                                               **model_calls))

        def with_maps(shown):  # after the case is on screen
            return shown.success(events.explain_after_predict, [*explain_inputs, show_anyway], explain_outputs,
                                 **private)

        def open_case(event):
            return with_maps(event.success(events.show_case, state, case_outputs, **private))

        def leaving(trigger, *then):  # unsaved changes stay with the case as its draft, then the move
            event = trigger(events.keep_draft, form_inputs, state, **private)
            for fn, inputs, outputs in then:
                event = event.success(fn, inputs, outputs, **private)
            return event

        for component, name in ((clinical, "clinical image"), (dermoscopy, "dermoscopy image")):
            component.upload(events.on_upload(name), [state, component], [component, *cleared], **private).success(
                events.case_from_upload, [state, clinical, dermoscopy], uploaded, **private, **in_order)
            # an image taken away (its x): the answer was the pair's, so it goes too; the other image is the case
            component.clear(cleared_outputs, None, cleared, api_visibility="private").success(
                events.case_from_upload, [state, clinical, dermoscopy], uploaded, **private, **in_order)
        task.change(class_choices, task, class_name, api_visibility="private")
        after_predict(analyse.click(events.analyse, [*images, show_anyway], answered, **private, **model_calls))
        # the public /predict (documented outputs: summary, DIAG table, criteria table; a bad input is an
        # error for an API caller), on a trigger no visitor sees: the page's Analyse says mistakes in words
        gr.Button(visible=False, elem_id="api-predict").click(
            events.predict, [*images, show_anyway], [summary, diagnosis, criteria], api_name="predict",
            preprocess=False, **model_calls)
        analyse_chain(anyway_button.click(lambda: True, None, show_anyway, api_visibility="private"))
        analyse_chain(swap_button.click(events.swap_images, images, [clinical, dermoscopy], **private)
                      .success(events.case_from_upload, [state, clinical, dermoscopy], uploaded, **private, **in_order))
        if example_gallery is not None:
            analyse_chain(example_gallery.select(events.open_example, state, [clinical, dermoscopy, *cleared],
                                                 **private)
                          .success(events.case_from_upload, [state, clinical, dermoscopy], uploaded, **private, **in_order))
        explain_button.click(events.explain_for_page, explain_inputs, explain_outputs, **private)
        # the public /explain (a bad input is an error for an API caller), on a trigger no visitor sees
        gr.Button(visible=False, elem_id="api-explain").click(events.explain, explain_inputs, explain_outputs,
                                                              api_name="explain", preprocess=False)
        for button, direction in ((prev_case, "prev"), (next_case, "next"), (next_unreviewed, "next unreviewed")):
            with_maps(button.click(events.go(direction), form_inputs, case_outputs, **private))
        filters = [split_filter, status_filter, predicted_filter]
        open_case(open_button.click(events.open_queue, [state, queue_file, *form_inputs[1:]],
                                    [state, queue_view, queue_status, *filters], **private)
                  .success(events.step("next"), state, state, **private))
        open_case(order_button.click(events.order_queue, form_inputs, [state, queue_view, queue_status, *filters],
                                     **private))
        for filter_ in filters:  # a user's pick (not the values a queue opening sets)
            filter_.input(events.filter_queue, [state, *filters], [state, queue_view, queue_status, header],
                          **private)
        # a reload finds the reviewer's queue where they left it (the marker changes only then)
        restored = gr.Textbox(visible=False, elem_id="restored-marker")
        app.load(events.restore_queue, state, [queue_view, queue_status, *filters, restored, *case_outputs],
                 show_progress="hidden", **private).then(None, None, None, js="() => document.body.classList.add('page-restored')",
                                 api_visibility="private", queue=False)
        restored.change(events.explain_after_predict, [*explain_inputs, show_anyway], explain_outputs, **private)
        # the form is on the other tab: a move made on the queue's tab keeps its unsaved changes as a draft
        row_opened = queue_view.select(events.open_queue_row, form_inputs, state, **private).success(
            events.show_case, state, case_outputs, **private)
        row_opened.success(lambda: gr.Tabs(selected="review"), None, tabs, api_visibility="private")
        with_maps(row_opened)
        leaving(own_button.click, (events.own_images, state, case_outputs)).success(
            cleared_outputs, None, cleared, api_visibility="private")
        export_button.click(events.export_labels, export_rule, export_file, **private)
        agreement_button.click(events.agreement, None, agreement_view, **private)
        # typed or picked by the user, not loaded. In the browser, not on the server: a server round
        # trip could come back after a Save sent just behind it and cover its "Saved" message
        unsaved = json.dumps("✎ Unsaved changes: press Save (Enter) to keep them.")
        for field_ in (verdict, *corrections, confidence, note):
            field_.input(None, None, save_status, js=f"() => {unsaved}",
                         api_visibility="private", queue=False)
        # keys.js holds moves while a save or undo is under way (their answers name the case on
        # screen); their answer in, it lets the moves go and says so when the form changed meanwhile
        save_answered = f"(status) => window.skinnetForm?.answered() ? {unsaved} : status"
        save.click(events.save, [state, case_token, reveal, verdict, confidence, note, *corrections, show_anyway],
                   [save_status, header, queue_view, form_state], concurrency_limit=4, **private).then(
            None, save_status, save_status, js=save_answered, api_visibility="private", queue=False)
        undo.click(events.undo, form_inputs,
                   [save_status, header, queue_view, verdict, *corrections, confidence, note, form_state],
                   **private).then(
            None, None, None, js="() => { window.skinnetForm?.undone(); }", api_visibility="private", queue=False)
        app.load(events.refresh_queues, None, queue_file, **private)
        app.load(events.backup_status, None, backup_status, **private)
        queue_tab.select(events.backup_status, None, backup_status, **private)
        app.load(events.who_is_signed_in, None, signed_in, **private)
    app.skinnet_exports = exports  # served by skinnet.ui.server, to the admin who made each one
    app.skinnet_sweeper = uploads.start_sweeper(images_in.sweep_originals, store.sweep, exports.sweep)
    app.skinnet_backup = backup
    if backup is not None:
        backup.start()
        atexit.register(backup.stop)  # the last push, when the process exits (app.py turns SIGTERM into an exit)
    return app
