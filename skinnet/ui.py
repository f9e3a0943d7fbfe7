"""The Gradio review app: paired upload, per-head predictions, Grad-CAM and attention maps.

Handlers are plain functions of a :class:`Predictor` (tested directly), then ``build_app``
lays out the Blocks and wires them with named API endpoints (``/predict``, ``/explain``).
This module imports gradio; ``import skinnet`` does not.
"""
from __future__ import annotations

import functools
import logging
import os
import re
import tempfile
import threading
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import gradio as gr
import pandas as pd
from PIL import Image

from .explain import explain
from .imaging import ImageError, load_rgb, pixel_sha256, png_bytes
from .labels import CLASS_TITLES, SEVEN_POINT_THRESHOLD, TASK_BY_NAME, TASKS, seven_point_meaning
from .model import HEADS
from .predict import Prediction, Predictor

log = logging.getLogger(__name__)

DISCLAIMER = ("**Research tool, not a diagnosis.** Predictions come from a model trained on the "
              "Derm7pt dataset (research use only); they are not a medical device's output and must "
              "not guide the care of a patient.")
PREDICTED = "(predicted class)"
AUTO_HEAD = "auto"
MAX_FILE_SIZE = "20mb"
ORIGINAL_GRACE_S = 30.0
"""Seconds an original upload stays in Gradio's cache after it was read (see _discard_upload)."""
CSS = """
.disclaimer {border-left: 4px solid #d97706; padding: 6px 10px; background: #fffbeb;}
"""


@dataclass
class AppSettings:
    """Where the app listens and what it serves (flags and environment, see ``app.py``)."""

    checkpoint: Path
    host: str = "127.0.0.1"
    port: int = 7860
    log_dir: Path = Path("corrections")
    users: dict[str, str] = field(default_factory=dict)
    """Reviewers' logins (user -> password). None configured: a public demo, saving off."""
    hf_reviewers: frozenset[str] = frozenset()
    """Hugging Face usernames that may save after signing in on a Space (``"*"``: anyone signed in)."""
    queue_root: Path | None = None
    """Queue files and their images must lie inside this folder (None: anywhere)."""


# -- uploads ----------------------------------------------------------------------------------
def _gradio_upload_roots() -> list[Path]:
    root = os.environ.get("GRADIO_TEMP_DIR") or str(Path(tempfile.gettempdir()) / "gradio")
    return [Path(root).resolve()]


def read_uploads(clinical_path, dermoscopy_path, uploads_only: bool = False):
    """Open the uploaded pair as clean RGB pixels, then delete Gradio's copies of the originals.

    Gradio keeps uploads in its cache under their original file names, with their metadata:
    once the pixels are read, those copies go, so neither survives on the server. (Both are
    read before either is deleted: Gradio stores identical uploads once.)

    Args:
        clinical_path, dermoscopy_path: paths, or Gradio file payloads, or None.
        uploads_only: accept only files in Gradio's upload folder (the app's setting: an API
            caller must not make the server read, or delete, any other file).

    Returns:
        (clinical, dermoscopy), each a PIL image or None.
    """
    clinical_path = _upload_path(clinical_path, uploads_only)
    dermoscopy_path = _upload_path(dermoscopy_path, uploads_only)
    try:
        return tuple(_open(path, name) for path, name in
                     ((clinical_path, "clinical image"), (dermoscopy_path, "dermoscopy image")))
    finally:
        for path in (clinical_path, dermoscopy_path):
            if path:
                _discard_upload(path)


def _upload_path(value, uploads_only: bool = False) -> str | None:
    """The file path of an image component's raw value (events run with ``preprocess=False``,
    so that unreadable files reach our own checks instead of Gradio's generic error)."""
    if isinstance(value, dict):
        value = value.get("path")
    if not value:
        return None
    if uploads_only and not _is_upload(value):
        raise gr.Error("That file is not an upload of this session; upload the image again.")
    return value


def _is_upload(path: str) -> bool:
    resolved = Path(path).resolve()
    return any(root in resolved.parents for root in _gradio_upload_roots())


def _open(path: str | None, name: str) -> Image.Image | None:
    if path is None:
        return None
    try:
        return load_rgb(path, name)
    except ImageError as err:
        raise gr.Error(str(err)) from None


def _is_clean(path: str) -> bool:
    """A de-identified copy made by :func:`sanitize_upload` (named by its pixels' hash)."""
    return re.fullmatch(r"[0-9a-f]{64}\.png", Path(path).name) is not None


def _discard_upload(path: str) -> None:
    """Delete an original upload from Gradio's cache, after a grace period.

    The grace lets events already queued with the same file (an Analyse click racing the
    upload handler, the explain step chained after predict) still read it. De-identified
    copies stay: they are the component's value while the reviewer works on the case
    (Gradio's ``delete_cache`` removes them later).
    """
    if not _is_upload(path) or _is_clean(path):
        return
    target = Path(path).resolve()
    timer = threading.Timer(ORIGINAL_GRACE_S, lambda: target.unlink(missing_ok=True))
    timer.daemon = True
    timer.start()


def sanitize_upload(path: str | None, name: str) -> str | None:
    """Upload handler: replace the component's value by a de-identified PNG (pixels only,
    named by their SHA-256), and schedule the original's deletion."""
    path = _upload_path(path, uploads_only=True)
    if path is None or _is_clean(path):
        return path
    try:
        image = _open(path, name)
    finally:
        _discard_upload(path)
    return clean_copy(image)


@functools.cache
def _clean_dir() -> Path:
    """Where de-identified copies are written before Gradio caches them (one per process)."""
    return Path(tempfile.mkdtemp(prefix="skinnet-clean-"))


def clean_copy(image: Image.Image | None) -> str | None:
    """Write de-identified pixels as ``<sha256>.png`` for an image component to show."""
    if image is None:
        return None
    clean = _clean_dir() / f"{pixel_sha256(image)}.png"
    if not clean.exists():
        temporary = clean.with_suffix(f".{threading.get_ident()}.tmp")
        temporary.write_bytes(png_bytes(image))
        os.replace(temporary, clean)
    return str(clean)


# -- prediction -------------------------------------------------------------------------------
def _fmt(p: float) -> str:
    return f"{p:.2f}"


def diagnosis_table(prediction: Prediction) -> pd.DataFrame:
    rows = []
    for cls in TASK_BY_NAME["DIAG"].classes:
        row = {"class": f"{cls} {CLASS_TITLES[cls]}"}
        for head in HEADS:
            row[head] = _fmt(prediction.heads[head].probabilities["DIAG"][cls]) if head in prediction.heads else "-"
        rows.append(row)
    return pd.DataFrame(rows, columns=["class", *HEADS])


def criteria_table(prediction: Prediction) -> pd.DataFrame:
    rows = []
    for task in TASKS[1:]:
        row = {"criterion": f"{task.name} {task.title.lower()}"}
        for head in HEADS:
            if head in prediction.heads:
                probs = prediction.heads[head].probabilities[task.name]
                top = max(probs, key=probs.get)
                row[head] = f"{top} {_fmt(probs[top])}"
            else:
                row[head] = "-"
        rows.append(row)
    score_row = {"criterion": f"7-point score (>= {SEVEN_POINT_THRESHOLD}: MEL?)"}
    for head in HEADS:
        score_row[head] = str(prediction.heads[head].seven_point) if head in prediction.heads else "-"
    rows.append(score_row)
    return pd.DataFrame(rows, columns=["criterion", *HEADS])


def summary_markdown(prediction: Prediction, version: str) -> str:
    head = prediction.primary_head
    probs = prediction.heads[head].probabilities["DIAG"]
    top = max(probs, key=probs.get)
    score = prediction.heads[head].seven_point
    used = " + ".join(prediction.modalities)
    lines = [f"### {head.capitalize()} head: {top} ({CLASS_TITLES[top]}), p = {probs[top]:.2f}",
             f"Seven-point checklist score: **{seven_point_meaning(score)}**",
             f"Images used: **{used}** · model `{version}`"]
    lines += [f"> {note}" for note in prediction.notes]
    return "\n\n".join(lines)


def predict_handler(predictor: Predictor, clinical_path, dermoscopy_path, uploads_only: bool = False):
    """``/predict``: (summary markdown, DIAG table, criteria table) for one or two images."""
    clinical, dermoscopy = read_uploads(clinical_path, dermoscopy_path, uploads_only)
    if clinical is None and dermoscopy is None:
        raise gr.Error("Upload a clinical photo, a dermoscopy image, or both.")
    prediction = predictor.predict(clinical, dermoscopy)
    log.info("predicted a case with %s", "+".join(prediction.modalities))
    return summary_markdown(prediction, predictor.version), diagnosis_table(prediction), criteria_table(prediction)


def explain_handler(predictor: Predictor, clinical_path, dermoscopy_path, task: str, class_name: str,
                    head: str, uploads_only: bool = False):
    """``/explain``: (Grad-CAM clinical, Grad-CAM dermoscopy, attention overlays with captions)."""
    clinical, dermoscopy = read_uploads(clinical_path, dermoscopy_path, uploads_only)
    if clinical is None and dermoscopy is None:
        raise gr.Error("Upload a clinical photo, a dermoscopy image, or both.")
    if task not in TASK_BY_NAME:
        raise gr.Error(f"Unknown task {task!r}; choose one of {list(TASK_BY_NAME)}.")
    cls = None if class_name in (None, "", PREDICTED) else class_name
    if cls is not None and cls not in TASK_BY_NAME[task].classes:
        raise gr.Error(f"{task} has no class {cls!r}; choose one of {list(TASK_BY_NAME[task].classes)}.")
    given = [m for m, im in (("clinical", clinical), ("dermoscopy", dermoscopy)) if im is not None]
    chosen = None if head in (None, "", AUTO_HEAD) else head
    if chosen == "fused" and len(given) < 2:
        raise gr.Error("The fused head needs both images; choose 'auto' or the head of the image you gave.")
    if chosen in ("clinical", "dermoscopy") and chosen not in given:
        raise gr.Error(f"The {chosen} head needs a {chosen} image.")
    result = explain(predictor, clinical, dermoscopy, task, cls, chosen)
    gallery = [(image, label) for label, image in result.attention.items()]
    return result.gradcam.get("clinical"), result.gradcam.get("dermoscopy"), gallery


def class_choices(task: str):
    return gr.update(choices=[PREDICTED, *TASK_BY_NAME[task].classes], value=PREDICTED)


def calibration_summary(calibration: dict) -> str:
    if not calibration:
        return "none (raw softmax)"
    diag = calibration.get("fused", next(iter(calibration.values()))).get("DIAG", {})
    biased = any(any(entry.get("bias") or []) for head in calibration.values() for entry in head.values())
    what = "a temperature and class biases per task and head" if biased else "temperatures"
    return f"{what}, fitted on the validation split (fused DIAG: temperature {diag.get('temperature', 1.0):.2f})"


def storage_summary(card) -> str:
    if card.weights != "int8":
        return card.weights
    return (f"float16, and int8 with a scale per output channel for the weight tensors of at least "
            f"{card.int8_min_elements:,} values")


def model_markdown(predictor: Predictor) -> str:
    card = predictor.card
    lines = [f"### Model `{predictor.version}`",
             f"- Backbone: `{card.model['backbone']}` ({'one shared encoder' if card.model['shared'] else 'two encoders'}), "
             f"cross-attention after stages {card.model['cross_attention_stages'] or 'none'}; "
             f"{card.params / 1e6:.2f}M parameters; input {card.image_size} px; weights stored as "
             f"{storage_summary(card)}",
             f"- Loss weights (clinical, dermoscopy, fused): {card.loss_weights}",
             f"- Calibration: {calibration_summary(card.calibration)}"]
    for split in ("valid", "test"):
        if split in card.metrics:
            m = card.metrics[split]
            tasks = ", ".join(f"{k} {100 * v:.1f}" for k, v in m["tasks"].items())
            in_sample = ""
            if split == "valid" and card.trained_on_valid:
                in_sample = " (in the training data: a refit)"
            elif split == "valid" and card.calibration:
                in_sample = " (the split the calibration was fitted on)"
            lines.append(f"- Derm7pt {split}{in_sample}, fused head: average {100 * m['avg']:.1f}% ({tasks})")
    data = card.training.get("data", {})
    if data:
        lines.append(f"- Trained on {data.get('dataset', '?')} {data.get('split', '')} "
                     f"({data.get('n_train_cases', '?')} cases, {data.get('n_corrections', 0)} corrections)")
    lines.append("- Derm7pt is for research use only; so are these weights.")
    return "\n".join(lines)


# -- layout -----------------------------------------------------------------------------------
SHORTCUTS_JS = """
<script>
document.addEventListener('keydown', (event) => {
  const target = event.target;
  const typing = target && (target.tagName === 'TEXTAREA' || (target.tagName === 'INPUT' && target.type !== 'radio' && target.type !== 'checkbox'));
  const click = (selector) => { const el = document.querySelector(selector); if (el) { el.click(); event.preventDefault(); } };
  if (event.key === 'Enter' && (event.ctrlKey || event.metaKey)) { click('#save-review'); return; }
  if (typing || event.altKey || event.ctrlKey || event.metaKey) return;
  const verdicts = {a: 'agree', c: 'correct', u: 'unsure', s: 'skip'};
  if (verdicts[event.key]) click(`#verdict input[value="${verdicts[event.key]}"]`);
  else if (event.key === 'Enter') click('#save-review');
  else if (event.key === 'n') click('#next-unreviewed');
  else if (event.key === 'ArrowRight') click('#next-case');
  else if (event.key === 'ArrowLeft') click('#prev-case');
});
</script>
"""
SHORTCUTS_HELP = ("Keys: **a** agree · **c** correct · **u** unsure · **s** skip · **Enter** save · "
                  "**n** next unreviewed · **← →** previous / next case")


def _task_label(task, predicted: str | None = None) -> str:
    return f"{task.name}: model says {predicted}" if predicted else f"{task.name} ({task.title})"


def form_labels(predictor: Predictor, clinical_path, dermoscopy_path):
    """The correction dropdowns' labels show the model's prediction for each task."""
    clinical, dermoscopy = read_uploads(clinical_path, dermoscopy_path, uploads_only=True)
    if clinical is None and dermoscopy is None:
        return [gr.update(label=_task_label(t)) for t in TASKS]
    prediction = predictor.predict(clinical, dermoscopy)
    classes = prediction.heads[prediction.primary_head].classes
    return [gr.update(label=_task_label(t, classes[t.name])) for t in TASKS]


def review_help(reviewers) -> str:
    """The line above the review form: how saving works in this deployment."""
    if not reviewers.configured:
        return ("Saving corrections is **off**: this is the public demo (no reviewers are configured). "
                "Predictions and maps work as usual.")
    if reviewers.hf_accounts and not reviewers.password_logins:
        return ("Sign in with Hugging Face (button at the top) to save: accounts on this app's reviewer "
                "list are recorded as `hf:<username>`. " + SHORTCUTS_HELP)
    return SHORTCUTS_HELP


def build_app(predictor: Predictor, settings: AppSettings | None = None) -> gr.Blocks:
    """The Blocks app around a loaded predictor."""
    from . import review
    from .corrections import NO_CHANGE, VERDICTS, CorrectionsLog

    settings = settings or AppSettings(checkpoint=Path(predictor.card.name))
    log = CorrectionsLog(settings.log_dir)
    reviewers = review.Reviewers(password_logins=bool(settings.users), hf_accounts=settings.hf_reviewers)
    saving = reviewers.configured
    queue_root = settings.queue_root

    with gr.Blocks(title="skinnet", delete_cache=(1800, 3600)) as app:
        state = gr.State(review.new_state())
        with gr.Row():
            gr.Markdown("# skinnet · multi-modal skin lesion review")
            if settings.hf_reviewers:
                gr.LoginButton(scale=0, elem_id="hf-login")
        gr.Markdown(DISCLAIMER, elem_classes=["disclaimer"])
        with gr.Tab("Review"):
            with gr.Row():
                header = gr.Markdown(review.case_header(review.new_state(), log, None), elem_id="case-header")
                prev_case = gr.Button("< prev", size="sm", elem_id="prev-case", scale=0)
                next_case = gr.Button("next >", size="sm", elem_id="next-case", scale=0)
                next_unreviewed = gr.Button("next unreviewed >", size="sm", elem_id="next-unreviewed", scale=0)
            with gr.Row():
                clinical = gr.Image(label="Clinical photo", type="filepath", format="png",
                                    sources=["upload", "clipboard"], height=300, elem_id="clinical-input")
                dermoscopy = gr.Image(label="Dermoscopy image", type="filepath", format="png",
                                      sources=["upload", "clipboard"], height=300, elem_id="dermoscopy-input")
            analyse = gr.Button("Analyse", variant="primary", elem_id="analyse")
            summary = gr.Markdown(label="summary", elem_id="summary")
            with gr.Row():
                diagnosis = gr.Dataframe(label="Diagnosis: probability per head", show_label=True, scale=2,
                                         interactive=False, elem_id="diagnosis-table")
                criteria = gr.Dataframe(label="Seven-point criteria: top class and probability per head",
                                        interactive=False, elem_id="criteria-table", scale=3)
            with gr.Row():
                task = gr.Dropdown([t.name for t in TASKS], value="DIAG", label="Explain task")
                class_name = gr.Dropdown([PREDICTED, *TASK_BY_NAME["DIAG"].classes], value=PREDICTED,
                                         label="Class")
                head = gr.Radio([AUTO_HEAD, *HEADS], value=AUTO_HEAD, label="Head")
                explain_button = gr.Button("Explain", elem_id="explain")
            with gr.Row():
                cam_clinical = gr.Image(label="Grad-CAM, clinical", type="pil", format="png",
                                        interactive=False, elem_id="gradcam-clinical")
                cam_dermoscopy = gr.Image(label="Grad-CAM, dermoscopy", type="pil", format="png",
                                          interactive=False, elem_id="gradcam-dermoscopy")
            attention = gr.Gallery(label="Cross-attention (queries of one image over the other's grid)",
                                   format="png", columns=4, object_fit="contain", height="auto",
                                   elem_id="attention")
            with gr.Group(elem_id="review-form"):
                gr.Markdown("### Your review\n" + review_help(reviewers))
                verdict = gr.Radio(list(VERDICTS), value=None, label="Verdict", elem_id="verdict")
                corrections = []
                for row_tasks in (TASKS[:4], TASKS[4:]):
                    with gr.Row():
                        for t in row_tasks:
                            corrections.append(gr.Dropdown([NO_CHANGE, *t.classes], value=NO_CHANGE,
                                                           label=_task_label(t), elem_id=f"correct-{t.name}"))
                with gr.Row():
                    confidence = gr.Radio([1, 2, 3, 4, 5], value=None, label="Confidence (1 low - 5 high)")
                    note = gr.Textbox(label="Note", lines=1, max_length=2000)
                save = gr.Button("Save review (Enter)", variant="primary", interactive=saving,
                                 elem_id="save-review")
                save_status = gr.Markdown(elem_id="save-status")
        with gr.Tab("Queue"):
            gr.Markdown("Open a manifest CSV (`case_id, clinical, dermoscopy`, paths relative to it) or a "
                        "Derm7pt `meta/meta.csv`" + (f" inside `{queue_root}`." if queue_root else "."))
            with gr.Row():
                queue_path = gr.Textbox(label="Queue file (path on the server)", scale=4, elem_id="queue-path")
                open_button = gr.Button("Open queue", elem_id="open-queue", interactive=saving, scale=1)
                order_button = gr.Button("Least sure first", elem_id="order-queue", interactive=saving, scale=1)
            queue_status = gr.Markdown(elem_id="queue-status")
            queue_view = gr.Dataframe(headers=review.QUEUE_COLUMNS, interactive=False, elem_id="queue-table")
            with gr.Row():
                export_rule = gr.Radio(["latest", "majority"], value="latest", scale=2,
                                       label="When reviewers disagree on a case")
                export_button = gr.Button("Export current labels (meta.csv)", interactive=saving,
                                          elem_id="export-labels", scale=1)
                export_file = gr.File(label="Derm7pt-style meta.csv", interactive=False, scale=2,
                                      elem_id="export-file")
        with gr.Tab("Model"):
            gr.Markdown(model_markdown(predictor))

        # -- handlers bound to this app -------------------------------------------------------
        # Gradio fills ``request`` and ``profile`` (the Hugging Face sign-in, if any) by annotation.
        def show_case(state, request: gr.Request, profile: gr.OAuthProfile | None):
            images = review.load_case_images(state)
            reviewer = reviewers.of(request, profile)
            return (state, *(clean_copy(im) for im in images), review.case_header(state, log, reviewer),
                    None, *([NO_CHANGE] * len(TASKS)), None, "", "")

        def step(direction):
            def handler(state, request: gr.Request, profile: gr.OAuthProfile | None):
                return review.move(state, direction, log, reviewers.of(request, profile))
            return handler

        def on_upload(state, clinical_value, dermoscopy_value, request: gr.Request,
                      profile: gr.OAuthProfile | None):
            state = review.start_upload_case(state, _upload_path(clinical_value), _upload_path(dermoscopy_value))
            return state, review.case_header(state, log, reviewers.of(request, profile)), None, ""

        def open_queue(state, path, request: gr.Request, profile: gr.OAuthProfile | None):
            reviewer = reviewers.require(request, profile, "Opening a queue")
            return review.open_queue_handler(state, path, queue_root, log, reviewer)

        def order_queue(state, request: gr.Request, profile: gr.OAuthProfile | None, progress=gr.Progress()):
            return review.order_by_uncertainty(state, predictor, log, reviewers.of(request, profile), progress)

        def export_labels(rule, request: gr.Request, profile: gr.OAuthProfile | None):
            reviewers.require(request, profile, "Exporting labels")
            return review.export_labels(log, rule)

        def save_handler(state, clinical_value, dermoscopy_value, verdict_value, confidence_value, note_value,
                         diag, pn, streaks, pigmentation, regression, dots, veil, vascular, request: gr.Request,
                         profile: gr.OAuthProfile | None):
            corrected = (diag, pn, streaks, pigmentation, regression, dots, veil, vascular)  # TASKS order
            images = read_uploads(clinical_value, dermoscopy_value, uploads_only=True)
            reviewer = reviewers.require(request, profile, "Saving")
            state, message = review.save_review(state, predictor, log, reviewer, *images, verdict_value,
                                                dict(zip([t.name for t in TASKS], corrected)),
                                                confidence_value, note_value)
            return state, message, review.case_header(state, log, reviewer), review.queue_table(state, log, reviewer)

        # -- wiring ---------------------------------------------------------------------------
        predict = partial(predict_handler, predictor, uploads_only=True)
        explain_ = partial(explain_handler, predictor, uploads_only=True)
        labels_ = partial(form_labels, predictor)
        images = [clinical, dermoscopy]
        explain_inputs = [clinical, dermoscopy, task, class_name, head]
        explain_outputs = [cam_clinical, cam_dermoscopy, attention]
        form = [verdict, *corrections, confidence, note, save_status]
        private = {"api_visibility": "private", "preprocess": False}

        def analyse_chain(event):
            return (event.then(predict, images, [summary, diagnosis, criteria], **private)
                    .then(explain_, explain_inputs, explain_outputs, **private)
                    .then(labels_, images, corrections, **private))

        for component, name in ((clinical, "clinical image"), (dermoscopy, "dermoscopy image")):
            component.upload(partial(sanitize_upload, name=name), component, component, **private).then(
                on_upload, [state, clinical, dermoscopy], [state, header, verdict, save_status], **private)
        task.change(class_choices, task, class_name, api_visibility="private")
        analyse.click(predict, images, [summary, diagnosis, criteria], api_name="predict", preprocess=False).then(
            explain_, explain_inputs, explain_outputs, **private).then(labels_, images, corrections, **private)
        explain_button.click(explain_, explain_inputs, explain_outputs, api_name="explain", preprocess=False)
        case_outputs = [state, clinical, dermoscopy, header, *form]
        for button, direction in ((prev_case, "prev"), (next_case, "next"), (next_unreviewed, "next unreviewed")):
            analyse_chain(button.click(step(direction), state, state, api_visibility="private")
                          .then(show_case, state, case_outputs, api_visibility="private"))
        analyse_chain(open_button.click(open_queue, [state, queue_path], [state, queue_view, queue_status],
                                        api_visibility="private")
                      .then(step("next"), state, state, api_visibility="private")
                      .then(show_case, state, case_outputs, api_visibility="private"))
        order_button.click(order_queue, state, [state, queue_view, queue_status], api_visibility="private")
        export_button.click(export_labels, export_rule, export_file, api_visibility="private")
        save.click(save_handler, [state, clinical, dermoscopy, verdict, confidence, note, *corrections],
                   [state, save_status, header, queue_view], preprocess=False, api_visibility="private",
                   concurrency_limit=None)
    return app


def launch(app: gr.Blocks, settings: AppSettings, **kwargs):
    """Launch with the privacy and safety settings the app relies on."""
    return app.launch(server_name=settings.host, server_port=settings.port, ssr_mode=False,
                      run_history=False, max_file_size=MAX_FILE_SIZE, css=CSS, head=SHORTCUTS_JS,
                      show_error=True, auth=list(settings.users.items()) or None, **kwargs)
