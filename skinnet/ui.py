"""The Gradio review app: paired upload, per-head predictions, Grad-CAM and attention maps.

Handlers are plain functions of a :class:`Predictor` (tested directly), then ``build_app``
lays out the Blocks and wires them with named API endpoints (``/predict``, ``/explain``).
This module imports gradio; ``import skinnet`` does not.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import pandas as pd
from PIL import Image

from . import access, uploads
from .explain import explain
from .imaging import ImageError, load_rgb
from .guards import Checks
from .labels import (CLASS_TITLES, SEVEN_POINT_CRITERIA, SEVEN_POINT_THRESHOLD, TASK_BY_NAME, TASKS,
                     seven_point_meaning)
from .model import HEADS
from .predict import Prediction, Predictor

log = logging.getLogger(__name__)

DISCLAIMER = ("**Research tool, not a diagnosis.** A model trained on Derm7pt (research use only), not a "
              "medical device: it must not guide the care of a patient.")
PREDICTED = "(predicted class)"
AUTO_HEAD = "auto"
MAX_FILE_SIZE = "20mb"
CSS = """
.disclaimer {border-left: 4px solid #d97706; padding: 2px 10px; background: #fffbeb; font-size: 0.9em;}
.form-help {font-size: 0.85em;}
.signed-in {text-align: right; font-size: 0.9em;}
#corrections .block {padding: 2px 8px !important;}
#corrections .wrap-inner {padding-top: 0 !important; padding-bottom: 0 !important;}
#corrections .secondary-wrap {min-height: 30px !important; height: 30px !important;}
#verdict, #confidence {padding-top: 4px !important; padding-bottom: 4px !important;}
#confidence label {padding: 2px 8px !important;}
.task-cursor {box-shadow: inset 0 0 0 3px #2563eb !important; border-radius: 6px;}
#shortcut-help {position: fixed; right: 16px; bottom: 16px; z-index: 1000; background: white; color: #111;
  border: 1px solid #999; border-radius: 8px; padding: 10px 14px; box-shadow: 0 4px 16px rgba(0,0,0,.2);
  font-size: 0.9em;}
#shortcut-help td {padding: 1px 8px;}
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
    """Queue files and their images must lie inside this folder (None: no queues)."""
    admins: frozenset[str] = frozenset()
    """Reviewer identities (``dr_a``, ``hf:alice``) that may also export everyone's labels."""


# -- inputs ---------------------------------------------------------------------------------
def as_images(clinical, dermoscopy) -> tuple[Image.Image | None, Image.Image | None]:
    """The handlers' inputs as clean RGB images. The app passes images it opened under the
    rules of :mod:`skinnet.uploads`; a path here is trusted (an in-process caller, a test)."""
    def one(value, name):
        if value is None or isinstance(value, Image.Image):
            return value
        try:
            return load_rgb(value, name)
        except ImageError as err:
            raise gr.Error(str(err)) from None
    return one(clinical, "clinical image"), one(dermoscopy, "dermoscopy image")


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


def _class_words(task_name: str, cls: str) -> str:
    return f"{cls} {CLASS_TITLES.get(cls, cls)}"


def seven_point_points(classes: dict[str, str]) -> dict[str, int]:
    """Criterion (task name) -> the points it adds to the seven-point score, for those that add any."""
    return {task: points for task, cls, points in SEVEN_POINT_CRITERIA if classes[task] == cls}


def criteria_table(prediction: Prediction) -> pd.DataFrame:
    """Per criterion, each head's top class in words and its probability; ``+2`` / ``+1`` marks
    the criteria that add to that head's seven-point score."""
    rows = []
    points = {head: seven_point_points(p.classes) for head, p in prediction.heads.items()}
    for task in TASKS[1:]:
        row = {"criterion": f"{task.name} {task.title.lower()}"}
        for head in HEADS:
            if head in prediction.heads:
                probs = prediction.heads[head].probabilities[task.name]
                top = max(probs, key=probs.get)
                adds = points[head].get(task.name)
                row[head] = f"{_class_words(task.name, top)} {_fmt(probs[top])}" + (f" (+{adds})" if adds else "")
            else:
                row[head] = "-"
        rows.append(row)
    score_row = {"criterion": f"7-point score (>= {SEVEN_POINT_THRESHOLD}: MEL?)"}
    for head in HEADS:
        score_row[head] = str(prediction.heads[head].seven_point) if head in prediction.heads else "-"
    rows.append(score_row)
    return pd.DataFrame(rows, columns=["criterion", *HEADS])


def bar(p: float, width: int = 20) -> str:
    """A probability as a text bar (renders anywhere: Markdown, API clients, logs)."""
    filled = round(max(0.0, min(1.0, p)) * width)
    return "█" * filled + "░" * (width - filled)


def check_lines(checks: Checks | None, shown: bool) -> list[str]:
    """What the guards say, in plain sentences, most serious first."""
    if checks is None:
        return []
    lines = []
    for slot in checks.not_lesion:
        lines.append(f"> ⚠️ **The {SLOT_WORDS[slot]} does not look like a skin lesion photo** (its distance "
                     f"to the images the model was trained on is {checks.distance[slot]:.2f} x the limit). "
                     "The model only knows clinical photos and dermoscopy images of skin lesions; its answer "
                     "for anything else is meaningless." + ("" if shown else " The prediction is hidden."))
    if checks.swapped:
        lines.append("> ⚠️ **These images look swapped**: the clinical slot holds what looks like a dermoscopy "
                     f"image (p = {checks.p_dermoscopy['clinical']:.2f}) and the dermoscopy slot a clinical photo "
                     f"(p = {1 - checks.p_dermoscopy['dermoscopy']:.2f}). Use **Swap the images** if so.")
    else:
        for slot in checks.wrong_slot:
            other = "clinical photo" if slot == "dermoscopy" else "dermoscopy image"
            lines.append(f"> ⚠️ The {SLOT_WORDS[slot]} looks like a **{other}**: check that each image "
                         "is in its slot.")
    if checks.uncertain and (shown or not checks.not_lesion):
        right = (f"it was right on {100 * checks.accuracy_below:.0f}% of them" if checks.accuracy_below is not None
                 else "it was right less than half the time")
        lines.append(f"> 🟠 **Uncertain: refer or get a second opinion.** The two most likely diagnoses are "
                     f"{checks.margin:.2f} apart. On cases it had not seen whose two most likely diagnoses were "
                     f"less than {checks.margin_limit:.2f} apart, {right}.")
    return lines


SLOT_WORDS = {"clinical": "clinical photo", "dermoscopy": "dermoscopy image"}


def summary_markdown(prediction: Prediction, version: str, show_anyway: bool = False) -> str:
    head = prediction.primary_head
    checks = prediction.checks
    hidden = checks is not None and not checks.trustworthy and not show_anyway
    lines = check_lines(checks, not hidden)
    if hidden:
        return "\n\n".join(["### No prediction shown", *lines,
                              "If you are sure the image is a skin lesion photo, use **Show the prediction anyway**."])
    probs = prediction.heads[head].probabilities["DIAG"]
    top = max(probs, key=probs.get)
    classes = prediction.heads[head].classes
    score = prediction.heads[head].seven_point
    contributing = ", ".join(f"{CLASS_TITLES[classes[t]]} {TASK_BY_NAME[t].title.lower()} (+{n})"
                             for t, n in seven_point_points(classes).items())
    used = " + ".join(prediction.modalities)
    bars = [f"`{top:<4} {bar(probs[top])} {probs[top]:.2f}` {CLASS_TITLES[top]} (most likely)"]
    if top != "MEL":
        bars.append(f"`MEL  {bar(probs['MEL'])} {probs['MEL']:.2f}` melanoma")
    lines = [f"### {head.capitalize()} head: {top} ({CLASS_TITLES[top]}), p = {probs[top]:.2f}", *lines,
             "<br>".join(bars),
             f"Seven-point checklist score: **{seven_point_meaning(score)}**"
             + (f" from {contributing}" if contributing else ""),
             f"Images used: **{used}** · model `{version}`"]
    lines += [f"> {note}" for note in prediction.notes]
    return "\n\n".join(lines)


CLEARED_OUTPUTS = (False, "", None, None, None, None, [], gr.update(visible=False), gr.update(visible=False))
"""What a new pair does to the last pair's results: no 'show anyway', no summary, tables or maps."""


def predict_handler(predictor: Predictor, clinical, dermoscopy, show_anyway: bool = False):
    """``/predict``: (summary markdown, DIAG table, criteria table) for one or two images.

    An image that does not look like a skin lesion photo gets the warning alone (empty tables)
    unless ``show_anyway``.
    """
    clinical, dermoscopy = as_images(clinical, dermoscopy)
    if clinical is None and dermoscopy is None:
        raise gr.Error("Upload a clinical photo, a dermoscopy image, or both.")
    prediction = predictor.predict(clinical, dermoscopy)
    log.info("predicted a case with %s", "+".join(prediction.modalities))
    summary = summary_markdown(prediction, predictor.version, show_anyway is True)
    if prediction.checks is not None and not prediction.checks.trustworthy and show_anyway is not True:
        return summary, pd.DataFrame(columns=["class", *HEADS]), pd.DataFrame(columns=["criterion", *HEADS])
    return summary, diagnosis_table(prediction), criteria_table(prediction)


def explain_handler(predictor: Predictor, clinical, dermoscopy, task: str, class_name: str, head: str):
    """``/explain``: (Grad-CAM clinical, Grad-CAM dermoscopy, attention overlays with captions)."""
    clinical, dermoscopy = as_images(clinical, dermoscopy)
    if clinical is None and dermoscopy is None:
        raise gr.Error("Upload a clinical photo, a dermoscopy image, or both.")
    if not isinstance(task, str) or task not in TASK_BY_NAME:
        raise gr.Error(f"Unknown task; choose one of {list(TASK_BY_NAME)}.")
    cls = None if class_name in (None, "", PREDICTED) else class_name
    if cls is not None and (not isinstance(cls, str) or cls not in TASK_BY_NAME[task].classes):
        raise gr.Error(f"{task} has no such class; choose one of {list(TASK_BY_NAME[task].classes)}.")
    given = [m for m, im in (("clinical", clinical), ("dermoscopy", dermoscopy)) if im is not None]
    if head not in (None, "", AUTO_HEAD, *HEADS):
        raise gr.Error(f"Unknown head; choose one of {[AUTO_HEAD, *HEADS]}.")
    chosen = None if head in (None, "", AUTO_HEAD) else head
    if chosen == "fused" and len(given) < 2:
        raise gr.Error("The fused head needs both images; choose 'auto' or the head of the image you gave.")
    if chosen in ("clinical", "dermoscopy") and chosen not in given:
        raise gr.Error(f"The {chosen} head needs a {chosen} image.")
    result = explain(predictor, clinical, dermoscopy, task, cls, chosen)
    gallery = [(image, label) for label, image in result.attention.items()]
    return result.gradcam.get("clinical"), result.gradcam.get("dermoscopy"), gallery


def class_choices(task: str):
    if not isinstance(task, str) or task not in TASK_BY_NAME:
        raise gr.Error("Unknown task.")
    return gr.update(choices=[PREDICTED, *TASK_BY_NAME[task].classes], value=PREDICTED)


def calibration_summary(calibration: dict, source: dict | None = None) -> str:
    if not calibration:
        return "none (raw softmax)"
    diag = calibration.get("fused", next(iter(calibration.values()))).get("DIAG", {})
    biased = any(any(entry.get("bias") or []) for head in calibration.values() for entry in head.values())
    what = "a temperature and class biases per task and head" if biased else "temperatures"
    where = "the validation split"
    if source and source.get("fitted_on") == "out-of-fold":
        where = (f"out-of-fold predictions of the same recipe ({source.get('folds')}-fold cross-fitting "
                 f"on {source.get('n_cases')} train + valid cases)")
    return f"{what}, fitted on {where} (fused DIAG: temperature {diag.get('temperature', 1.0):.2f})"


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
             f"- Calibration: {calibration_summary(card.calibration, card.training.get('calibration_source'))}"]
    for split in ("valid", "test"):
        if split in card.metrics:
            m = card.metrics[split]
            tasks = ", ".join(f"{k} {100 * v:.1f}" for k, v in m["tasks"].items())
            in_sample = ""
            if split == "valid" and card.trained_on_valid:
                in_sample = " (in the training data: a refit)"
            elif split == "valid" and card.calibration and not card.training.get("calibration_source"):
                in_sample = " (the split the calibration was fitted on)"
            lines.append(f"- Derm7pt {split}{in_sample}, fused head: average {100 * m['avg']:.1f}% ({tasks})")
    data = card.training.get("data", {})
    if data:
        lines.append(f"- Trained on {data.get('dataset', '?')} {data.get('split', '')} "
                     f"({data.get('n_train_cases', '?')} cases, {data.get('n_corrections', 0)} corrections)")
    lines.append("- Derm7pt is for research use only; so are these weights.")
    return "\n".join(lines)


# -- layout -----------------------------------------------------------------------------------
SHORTCUTS = (("a / c / u / s", "verdict: agree, correct, unsure, skip"),
             ("t / Shift+t", "next / previous task of the form (outlined)"),
             ("0-9", "the outlined task's value: 0 no change, 1 its first class, 2 the second ..."),
             ("Enter, Ctrl+Enter", "save the review (Ctrl+Enter also from the note)"),
             ("n", "next case you have not reviewed"), ("← →", "previous / next case of the queue"),
             ("?", "show or hide this list"))
"""Every keyboard shortcut, for the help the ``?`` key opens and the line under the form."""
SHORTCUTS_JS = """
<script>
(() => {
  const TASKS = %s;
  const HELP = %s;
  let cursor = -1;
  const outline = () => TASKS.forEach((t, i) => {
    const el = document.querySelector(`#correct-${t}`);
    if (el) el.classList.toggle('task-cursor', i === cursor);
  });
  const press = (el) => ['mousedown', 'mouseup', 'click'].forEach(
    (type) => el.dispatchEvent(new MouseEvent(type, {bubbles: true, cancelable: true})));
  const pick = (n) => {
    if (cursor < 0) return;
    const input = document.querySelector(`#correct-${TASKS[cursor]} input`);
    if (!input) return;
    input.focus(); press(input);
    setTimeout(() => {
      const options = document.querySelectorAll('[role="option"]');
      if (options[n]) {
        press(options[n]);
        if (n > 0) { const correct = document.querySelector('#verdict input[value="correct"]'); if (correct && !correct.checked) correct.click(); }
      }
      input.blur();
    }, 80);
  };
  const toggleHelp = () => {
    let panel = document.querySelector('#shortcut-help');
    if (panel) { panel.remove(); return; }
    panel = document.createElement('div');
    panel.id = 'shortcut-help';
    panel.setAttribute('role', 'dialog');
    panel.innerHTML = '<b>Keyboard</b> (not while typing in a field)<table>' +
      HELP.map(([k, v]) => `<tr><td><kbd>${k}</kbd></td><td>${v}</td></tr>`).join('') + '</table>';
    document.body.appendChild(panel);
  };
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
    else if (event.key === 't' || event.key === 'T') {
      cursor = event.key === 't' ? (cursor + 1) %% TASKS.length : (cursor - 1 + TASKS.length) %% TASKS.length;
      outline(); event.preventDefault();
    } else if (/^[0-9]$/.test(event.key)) { pick(Number(event.key)); event.preventDefault(); }
    else if (event.key === '?') { toggleHelp(); event.preventDefault(); }
    else if (event.key === 'Escape') { const panel = document.querySelector('#shortcut-help'); if (panel) panel.remove(); }
  });
})();
</script>
""" % (json.dumps([t.name for t in TASKS]), json.dumps(SHORTCUTS))
SHORTCUTS_HELP = ("Keys: **a** agree · **c** correct · **u** unsure · **s** skip · **t** next task, **0-9** its "
                  "value · **Enter** save · **n** next unreviewed · **← →** cases · **?** all keys")


def _task_label(task, predicted: str | None = None, hidden: bool = False) -> str:
    if hidden:
        return f"{task.name} ({task.title}): prediction hidden"
    return f"{task.name}: model says {predicted}" if predicted else f"{task.name} ({task.title})"


def form_labels(predictor: Predictor, clinical, dermoscopy, show_anyway: bool = False):
    """The correction dropdowns' labels show the model's prediction for each task (not while
    the lesion check hides the prediction)."""
    clinical, dermoscopy = as_images(clinical, dermoscopy)
    if clinical is None and dermoscopy is None:
        return [gr.update(label=_task_label(t)) for t in TASKS]
    prediction = predictor.predict(clinical, dermoscopy)
    if prediction.checks is not None and not prediction.checks.trustworthy and show_anyway is not True:
        return [gr.update(label=_task_label(t, hidden=True)) for t in TASKS]
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
    """The Blocks app around a loaded predictor.

    Every event, public or not, can be called by raw HTTP with any session hash and body: each
    handler below takes its images through :class:`~skinnet.uploads.SessionImages` (never a
    path the client chose), binds the session to its first identity, and checks who may act.
    """
    from . import review
    from .corrections import MAX_NOTE, NO_CHANGE, VERDICTS, CorrectionsLog, fine_choices
    from .review_queue import list_queues

    settings = settings or AppSettings(checkpoint=Path(predictor.card.name))
    if predictor.batcher is None and predictor.device != "cpu":
        # visitors' predictions that arrive together share a forward pass; not on a CPU, where a
        # batch of flipped pairs costs more per pair than one pair (benchmarks/latency.py)
        predictor.batch_concurrent_calls(PREDICT_CONCURRENCY)
    log = CorrectionsLog(settings.log_dir)
    reviewers = access.Reviewers(password_logins=bool(settings.users), hf_accounts=settings.hf_reviewers,
                                 admins=settings.admins)
    saving = reviewers.configured
    queue_root = settings.queue_root
    store = uploads.CleanStore()

    with gr.Blocks(title="skinnet", delete_cache=(1800, 3600)) as app:
        images_in = uploads.SessionImages(store, lambda: app.upload_file_set)
        state = gr.State(review.new_state())
        with gr.Row():
            gr.Markdown("### skinnet · multi-modal skin lesion review")
            signed_in = gr.Markdown(elem_id="signed-in", elem_classes=["signed-in"])
            if settings.users:
                gr.Button("Log out", link="/logout", size="sm", scale=0, elem_id="log-out")
            if settings.hf_reviewers:
                gr.LoginButton(scale=0, elem_id="hf-login")
        gr.Markdown(DISCLAIMER, elem_classes=["disclaimer"])
        with gr.Tabs() as tabs:
            with gr.Tab("Review", id="review"):
                with gr.Row():
                    header = gr.Markdown(review.case_header(review.new_state(), log, None), elem_id="case-header")
                    prev_case = gr.Button("< prev", size="sm", elem_id="prev-case", scale=0)
                    next_case = gr.Button("next >", size="sm", elem_id="next-case", scale=0)
                    next_unreviewed = gr.Button("next unreviewed >", size="sm", elem_id="next-unreviewed", scale=0)
                with gr.Row(equal_height=False):
                    # left: the case and what the model says; right: the review form, on the same screen
                    with gr.Column(scale=3, min_width=520):
                        with gr.Row():
                            clinical = gr.Image(label="Clinical photo", type="filepath", format="png",
                                                sources=["upload", "clipboard"], height=250, elem_id="clinical-input")
                            dermoscopy = gr.Image(label="Dermoscopy image", type="filepath", format="png",
                                                  sources=["upload", "clipboard"], height=250,
                                                  elem_id="dermoscopy-input")
                        with gr.Row():
                            analyse = gr.Button("Analyse", variant="primary", elem_id="analyse", scale=4)
                            # closes the open case: two empty slots for a pair of the reviewer's own
                            own_button = gr.Button("My own pair", elem_id="own-images", scale=1, min_width=110)
                        with gr.Row():
                            anyway_button = gr.Button("Show the prediction anyway", visible=False, size="sm",
                                                      scale=0, elem_id="show-anyway")
                            swap_button = gr.Button("Swap the images", visible=False, size="sm", scale=0,
                                                    elem_id="swap-images")
                        summary = gr.Markdown(label="summary", elem_id="summary")
                        # True once the user asked to see a prediction the lesion check hid (a new pair resets it)
                        show_anyway = gr.Checkbox(False, visible=False, label="show anyway", elem_id="show-anyway-flag")
                    with gr.Column(scale=2, min_width=380, elem_id="review-form"):
                        verdict = gr.Radio(list(VERDICTS), value=None, label="Your review: verdict", elem_id="verdict")
                        corrections = []
                        with gr.Group(elem_id="corrections"):
                            for pair_of_tasks in (TASKS[0:2], TASKS[2:4], TASKS[4:6], TASKS[6:8]):
                                with gr.Row():
                                    for t in pair_of_tasks:
                                        corrections.append(gr.Dropdown(
                                            [NO_CHANGE, *t.classes, *fine_choices(t)], value=NO_CHANGE,
                                            label=_task_label(t),
                                            elem_id=f"correct-{t.name}", min_width=160))
                        with gr.Row():
                            confidence = gr.Radio([1, 2, 3, 4, 5], value=None, label="Confidence (1 low - 5 high)",
                                                  min_width=290, scale=3, elem_id="confidence")
                            note = gr.Textbox(label=f"Note (max {MAX_NOTE} chars)", lines=1,
                                              max_length=MAX_NOTE, min_width=120, scale=2)
                        # the event id of the case on screen: a save names the case the reviewer saw
                        case_token = gr.Textbox(visible=False, elem_id="case-token")
                        with gr.Row():
                            save = gr.Button("Save review (Enter)", variant="primary", interactive=saving,
                                             elem_id="save-review", scale=2)
                            undo = gr.Button("Undo last save", interactive=saving, elem_id="undo-save", scale=1)
                        save_status = gr.Markdown(elem_id="save-status")
                        gr.Markdown(review_help(reviewers), elem_classes=["form-help"])
                with gr.Row():
                    diagnosis = gr.Dataframe(label="Diagnosis: probability per head", show_label=True, scale=2,
                                             interactive=False, elem_id="diagnosis-table")
                    criteria = gr.Dataframe(label="Seven-point criteria: top class and probability per head",
                                            interactive=False, elem_id="criteria-table", scale=3)
                with gr.Accordion("Where the model looked: Grad-CAM and cross-attention", open=True):
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
            with gr.Tab("Queue", id="queue"):
                gr.Markdown("Open a manifest CSV (`case_id, clinical, dermoscopy`, paths relative to it) or a "
                            "Derm7pt `meta/meta.csv` from the queue folder" + (f" (`{queue_root}`)." if queue_root else "."))
                with gr.Row():
                    queue_file = gr.Dropdown([], value=None, scale=4, label="Queue file", elem_id="queue-file")
                    open_button = gr.Button("Open queue", elem_id="open-queue", interactive=saving, scale=1)
                    order_button = gr.Button("Least sure first", elem_id="order-queue", interactive=saving, scale=1)
                with gr.Row():
                    split_filter = gr.Radio(list(review.SPLIT_CHOICES), value="all", label="Derm7pt split",
                                            elem_id="filter-split", scale=2)
                    status_filter = gr.Radio(list(review.STATUS_CHOICES), value="all", label="Your reviews",
                                             elem_id="filter-status", scale=2)
                    predicted_filter = gr.Dropdown(list(review.PREDICTED_CHOICES), value="any",
                                                   label="Predicted diagnosis (after 'Least sure first')",
                                                   elem_id="filter-predicted", scale=1)
                queue_status = gr.Markdown(elem_id="queue-status")
                queue_view = gr.Dataframe(headers=review.QUEUE_COLUMNS, interactive=False, elem_id="queue-table")
                with gr.Row():
                    export_rule = gr.Radio(["latest", "majority"], value="latest", scale=2,
                                           label="When reviewers disagree on a case (admins)")
                    export_button = gr.Button("Export current labels (meta.csv)", interactive=bool(settings.admins),
                                              elem_id="export-labels", scale=1)
                    export_file = gr.File(label="Derm7pt-style meta.csv", interactive=False, scale=2,
                                          elem_id="export-file")
                with gr.Accordion("Agreement (reviewers)", open=False):
                    gr.Markdown("Cohen's kappa per task of each reviewer with the model's prediction and with each "
                                "other reviewer, over the cases both labelled (latest labelled review each; 1 = "
                                "perfect, 0 = chance). Intervals, Fleiss' kappa and confusion matrices: "
                                "`python -m skinnet.agreement corrections.csv --out DIR`.")
                    agreement_button = gr.Button("Show agreement", size="sm", interactive=saving, elem_id="agreement")
                    agreement_view = gr.Dataframe(interactive=False, elem_id="agreement-table")
            with gr.Tab("Model", id="model"):
                gr.Markdown(model_markdown(predictor))

        # -- handlers bound to this app -------------------------------------------------------
        # Gradio fills ``request`` and ``profile`` (the Hugging Face sign-in, if any) by annotation.
        def session(state, request: gr.Request, profile):
            """(state bound to this identity, owner key of this session's images)."""
            who = access.identity(request, profile)
            return access.claim_session(state, who), (str(getattr(request, "session_hash", "") or ""), who)

        def open_images(owner, values, originals: bool):
            try:
                return [images_in.open(owner, value, name, originals)
                        for value, name in zip(values, ("clinical image", "dermoscopy image"))]
            except ImageError as err:
                raise gr.Error(str(err)) from None

        def on_upload(name):
            def handler(state, value, request: gr.Request, profile: gr.OAuthProfile | None):
                state, owner = session(state, request, profile)
                try:
                    image = images_in.open(owner, value, name, originals=True)
                except ImageError as err:
                    raise gr.Error(str(err)) from None
                # the last pair's results go in the same response as the new image (no later step
                # can wipe an analysis the user started meanwhile)
                return (store.add(owner, image) if image is not None else None, *CLEARED_OUTPUTS)
            handler.__name__ = f"upload_{name.split()[0]}"
            return handler

        def case_from_upload(state, clinical_value, dermoscopy_value, request: gr.Request,
                             profile: gr.OAuthProfile | None):
            state, owner = session(state, request, profile)
            paths = [store.path_for(owner, v) for v in (clinical_value, dermoscopy_value)]
            state = review.start_upload_case(state, *(str(p) if p else None for p in paths))
            reviewer = reviewers.of(request, profile)
            # the form shows this pair's saved review (its id is its pixels' hash), or a blank form
            saved, status = saved_review(reviewer, state)
            return (state, review.case_header(state, log, reviewer), *review.form_values(saved), status,
                    state.get("event_id") or "")

        def saved_review(reviewer, state):
            """(your latest review of the open case or None, the line that says it is shown)."""
            saved = log.latest_review(reviewer, state["case"]["case_id"]) if reviewer and state.get("case") else None
            status = (f"Showing your saved review ({saved['verdict']}, {saved['logged_at']}): change it and save to "
                      "replace it." if saved else "")
            return saved, status

        def show_case(state, request: gr.Request, profile: gr.OAuthProfile | None):
            state, owner = session(state, request, profile)
            images = review.load_case_images(state)
            reviewer = reviewers.of(request, profile)
            saved, status = saved_review(reviewer, state)
            # a queue case's images come from its queue file: read-only (one stray click on the
            # image's x must not turn the case into another one)
            editable = (state.get("case") or {}).get("source", "upload") == "upload"
            shown = [gr.update(value=store.add(owner, im) if im is not None else None, interactive=editable)
                     for im in images]
            return (state, *shown, review.case_header(state, log, reviewer), *review.form_values(saved), status,
                    False, state.get("event_id") or "")

        def own_images(state, request: gr.Request, profile: gr.OAuthProfile | None):
            """Close the open case and give back two empty image slots for the reviewer's own pair."""
            state, _ = session(state, request, profile)
            state = review.start_upload_case(state, None, None)
            blank = gr.update(value=None, interactive=True)
            return (state, blank, blank, review.case_header(state, log, reviewers.of(request, profile)),
                    *review.form_values(None), "", False, "")

        def step(direction):
            def handler(state, request: gr.Request, profile: gr.OAuthProfile | None):
                state, _ = session(state, request, profile)
                reviewer = reviewers.of(request, profile)
                state = review.move(state, direction, log, reviewer)
                review.remember(state, log.folder, reviewer)
                return state
            handler.__name__ = "step_" + direction.replace(" ", "_")
            return handler

        def predict(state, clinical_value, dermoscopy_value, anyway, request: gr.Request,
                    profile: gr.OAuthProfile | None):
            _, owner = session(state, request, profile)
            return predict_handler(predictor, *open_images(owner, (clinical_value, dermoscopy_value), True),
                                   anyway is True)

        def guard_buttons(state, clinical_value, dermoscopy_value, anyway, request: gr.Request,
                          profile: gr.OAuthProfile | None):
            """Show 'show anyway' for a hidden prediction and 'swap' for images in the wrong slots."""
            _, owner = session(state, request, profile)
            pair = open_images(owner, (clinical_value, dermoscopy_value), True)
            checks = predictor.predict(*pair).checks if any(im is not None for im in pair) else None
            if checks is None:
                return gr.update(visible=False), gr.update(visible=False)
            misplaced = checks.swapped or (sum(im is not None for im in pair) == 1 and bool(checks.wrong_slot))
            return gr.update(visible=not checks.trustworthy and anyway is not True), gr.update(visible=misplaced)

        def swap_images(state, clinical_value, dermoscopy_value, request: gr.Request,
                        profile: gr.OAuthProfile | None):
            state, owner = session(state, request, profile)
            if (state.get("case") or {}).get("source", "upload") != "upload":
                raise gr.Error("A queue case's images come from its queue file: correct the file if they are swapped.")
            pair = open_images(owner, (clinical_value, dermoscopy_value), True)
            return [store.add(owner, image) if image is not None else None for image in reversed(pair)]

        def explain_(state, clinical_value, dermoscopy_value, task_value, class_value, head_value,
                     request: gr.Request, profile: gr.OAuthProfile | None):
            _, owner = session(state, request, profile)
            return explain_handler(predictor, *open_images(owner, (clinical_value, dermoscopy_value), True),
                                   task_value, class_value, head_value)

        def explain_after_predict(state, clinical_value, dermoscopy_value, task_value, class_value, head_value,
                                  anyway, request: gr.Request, profile: gr.OAuthProfile | None):
            """The maps of an analysis: none while its prediction is hidden (the Explain button still works)."""
            _, owner = session(state, request, profile)
            pair = open_images(owner, (clinical_value, dermoscopy_value), True)
            checks = predictor.predict(*pair).checks if any(im is not None for im in pair) else None
            if checks is not None and not checks.trustworthy and anyway is not True:
                return None, None, []
            return explain_handler(predictor, *pair, task_value, class_value, head_value)

        def labels_(state, clinical_value, dermoscopy_value, anyway, request: gr.Request,
                    profile: gr.OAuthProfile | None):
            _, owner = session(state, request, profile)
            return form_labels(predictor, *open_images(owner, (clinical_value, dermoscopy_value), False), anyway)

        def open_queue(state, chosen, request: gr.Request, profile: gr.OAuthProfile | None):
            reviewer = reviewers.require(request, profile, "Opening a queue")
            state, _ = session(state, request, profile)
            if queue_root is None:
                raise gr.Error("No queue folder is configured (--queue-root).")
            if not isinstance(chosen, str) or chosen not in list_queues(queue_root):
                raise gr.Error("Choose a queue file from the list.")
            state, table, status = review.open_queue_handler(state, str(queue_root / chosen), queue_root, log,
                                                             reviewer, chosen)
            return state, table, status, *filter_values(state)

        def filter_values(state):
            return state["filters"]["split"], state["filters"]["status"], state["filters"]["predicted"]

        def filter_queue(state, split_value, status_value, predicted_value, request: gr.Request,
                         profile: gr.OAuthProfile | None):
            reviewer = reviewers.require(request, profile, "Filtering a queue")
            state, _ = session(state, request, profile)
            if not state["all"]:
                raise gr.Error("Open a queue first.")
            state = review.apply_filters(state, log, reviewer, {"split": split_value, "status": status_value,
                                                                "predicted": predicted_value})
            review.remember(state, log.folder, reviewer)
            return (state, review.queue_table(state, log, reviewer), review.view_status(state),
                    review.case_header(state, log, reviewer))

        def restore_queue(state, request: gr.Request, profile: gr.OAuthProfile | None):
            """On page load: the signed-in reviewer's queue, order, filters and case, as they left them."""
            reviewer = reviewers.of(request, profile)
            state, _ = session(state, request, profile)
            restored = review.restore(state, log.folder, queue_root, log, reviewer)
            if restored is None:
                return (state, gr.update(), gr.update(), gr.update(), gr.update(), gr.update(), gr.update())
            status = f"Back where you left off: {restored['queue_file']}. {review.view_status(restored)}"
            return (restored, review.queue_table(restored, log, reviewer), status, *filter_values(restored),
                    restored.get("event_id") or "restored")

        def order_queue(state, request: gr.Request, profile: gr.OAuthProfile | None, progress=gr.Progress()):
            reviewer = reviewers.require(request, profile, "Ordering a queue")
            state, _ = session(state, request, profile)
            state, table, status = review.order_by_uncertainty(state, predictor, log, reviewer, progress)
            review.remember(state, log.folder, reviewer)
            return state, table, status, *filter_values(state)

        def open_queue_row(state, event: gr.SelectData, request: gr.Request, profile: gr.OAuthProfile | None):
            """The case of the clicked row, found by its case id (the table may be sorted on screen)."""
            reviewers.require(request, profile, "Opening a case")
            state, _ = session(state, request, profile)
            row = event.row_value if isinstance(event.row_value, (list, tuple)) else []
            case_id = row[review.QUEUE_COLUMNS.index("case")] if len(row) == len(review.QUEUE_COLUMNS) else None
            state = review.open_case_id(state, case_id)
            review.remember(state, log.folder, reviewers.of(request, profile))
            return state

        def export_labels(rule, request: gr.Request, profile: gr.OAuthProfile | None):
            reviewers.require_admin(request, profile, "Exporting everyone's labels")
            if rule not in ("latest", "majority"):
                raise gr.Error("Choose 'latest' or 'majority'.")
            return review.export_labels(log, rule)

        def save_handler(state, token, verdict_value, confidence_value, note_value, diag, pn, streaks, pigmentation,
                         regression, dots, veil, vascular, request: gr.Request, profile: gr.OAuthProfile | None):
            reviewer = reviewers.require(request, profile, "Saving")  # before anything is decoded
            state, owner = session(state, request, profile)
            if not state.get("event_id") or token != state["event_id"]:
                raise gr.Error("The case changed before this save reached the server; nothing was saved. "
                               "Check the form for the case on screen and save again.")
            corrected = (diag, pn, streaks, pigmentation, regression, dots, veil, vascular)  # TASKS order
            for key in ("clinical", "dermoscopy"):  # an upload case's copies stay while it is open
                store.refresh(owner, state["case"].get(key))
            images = review.load_case_images(state)  # the server's own images of the open case
            state, message = review.save_review(state, predictor, log, reviewer, *images, verdict_value,
                                                dict(zip([t.name for t in TASKS], corrected)),
                                                confidence_value, note_value)
            # the state is not an output: a step that finished meanwhile must not be undone by this one
            return message, review.case_header(state, log, reviewer), review.queue_table(state, log, reviewer)

        def agreement_view_(request: gr.Request, profile: gr.OAuthProfile | None):
            reviewers.require(request, profile, "Seeing reviewers' agreement")
            from .agreement import agreement_report, kappa_table
            from .corrections import read_corrections

            if not log.path.is_file():
                raise gr.Error("No reviews are saved yet.")
            rows, _ = read_corrections(log.path)
            table = kappa_table(agreement_report(rows, intervals=False))
            if not table:
                raise gr.Error("No labelled reviews are saved yet.")
            return pd.DataFrame(table, columns=["raters", "cases", *(t.name for t in TASKS)])

        def undo_handler(state, token, request: gr.Request, profile: gr.OAuthProfile | None):
            reviewer = reviewers.require(request, profile, "Undo")
            state, _ = session(state, request, profile)
            if not state.get("event_id") or token != state["event_id"]:
                raise gr.Error("The case changed before this undo reached the server; nothing was undone. "
                               "Check the case on screen and undo again.")
            message, standing = review.undo_last_save(state, log, reviewer)
            return (message, review.case_header(state, log, reviewer), review.queue_table(state, log, reviewer),
                    *review.form_values(standing))

        def who_is_signed_in(request: gr.Request, profile: gr.OAuthProfile | None):
            reviewer = reviewers.of(request, profile)
            if reviewer:
                return f"Signed in as **{reviewer}**"
            return "Public demo: predictions only" if not saving else "Not signed in: saving is off"

        def refresh_queues(request: gr.Request, profile: gr.OAuthProfile | None):
            """The queue files, for reviewers only (their names can say more than a visitor should see)."""
            listed = list_queues(queue_root) if queue_root and reviewers.of(request, profile) else []
            return gr.update(choices=listed)

        # -- wiring ---------------------------------------------------------------------------
        images = [state, clinical, dermoscopy]
        explain_inputs = [state, clinical, dermoscopy, task, class_name, head]
        explain_outputs = [cam_clinical, cam_dermoscopy, attention]
        predicted = [summary, diagnosis, criteria]
        form = [verdict, *corrections, confidence, note, save_status]
        private = {"api_visibility": "private", "preprocess": False}
        # the case token comes last in every output list that opens a case (API callers read data[-1])
        uploaded = [state, header, *form, case_token]
        cleared = [show_anyway, *predicted, *explain_outputs, anyway_button, swap_button]

        def after_predict(event):  # each step only after the one before succeeded
            return (event.success(guard_buttons, [*images, show_anyway], [anyway_button, swap_button], **private)
                    .success(explain_after_predict, [*explain_inputs, show_anyway], explain_outputs, **private)
                    .success(labels_, [*images, show_anyway], corrections, **private))

        def analyse_chain(event):
            return after_predict(event.success(predict, [*images, show_anyway], predicted, **private))

        for component, name in ((clinical, "clinical image"), (dermoscopy, "dermoscopy image")):
            component.upload(on_upload(name), [state, component], [component, *cleared], **private).success(
                case_from_upload, [state, clinical, dermoscopy], uploaded, **private)
        task.change(class_choices, task, class_name, api_visibility="private")
        after_predict(analyse.click(predict, [*images, show_anyway], predicted, api_name="predict", preprocess=False,
                                    concurrency_limit=PREDICT_CONCURRENCY))
        analyse_chain(anyway_button.click(lambda: True, None, show_anyway, api_visibility="private"))
        analyse_chain(swap_button.click(swap_images, images, [clinical, dermoscopy], **private)
                      .success(case_from_upload, [state, clinical, dermoscopy], uploaded, **private))
        explain_button.click(explain_, explain_inputs, explain_outputs, api_name="explain", preprocess=False)
        case_outputs = [state, clinical, dermoscopy, header, *form, show_anyway, case_token]
        for button, direction in ((prev_case, "prev"), (next_case, "next"), (next_unreviewed, "next unreviewed")):
            analyse_chain(button.click(step(direction), state, state, **private)
                          .success(show_case, state, case_outputs, **private))
        filters = [split_filter, status_filter, predicted_filter]
        analyse_chain(open_button.click(open_queue, [state, queue_file], [state, queue_view, queue_status, *filters],
                                        **private)
                      .success(step("next"), state, state, **private)
                      .success(show_case, state, case_outputs, **private))
        analyse_chain(order_button.click(order_queue, state, [state, queue_view, queue_status, *filters], **private)
                      .success(show_case, state, case_outputs, **private))
        for filter_ in filters:  # a user's pick (not the values a queue opening sets)
            filter_.input(filter_queue, [state, *filters], [state, queue_view, queue_status, header], **private)
        # a reload finds the reviewer's queue where they left it (the marker changes only then)
        restored = gr.Textbox(visible=False, elem_id="restored-marker")
        app.load(restore_queue, state, [state, queue_view, queue_status, *filters, restored], **private)
        analyse_chain(restored.change(show_case, state, case_outputs, **private))
        analyse_chain(queue_view.select(open_queue_row, state, state, **private)
                      .success(show_case, state, case_outputs, **private)
                      .success(lambda: gr.Tabs(selected="review"), None, tabs, api_visibility="private"))
        own_button.click(own_images, state, case_outputs, **private).success(
            lambda: CLEARED_OUTPUTS, None, cleared, api_visibility="private")
        export_button.click(export_labels, export_rule, export_file, **private)
        agreement_button.click(agreement_view_, None, agreement_view, **private)
        save.click(save_handler, [state, case_token, verdict, confidence, note, *corrections],
                   [save_status, header, queue_view], concurrency_limit=4, **private)
        undo.click(undo_handler, [state, case_token], [save_status, header, queue_view, verdict, *corrections, confidence, note],
                   **private)
        for field_ in (verdict, *corrections, confidence, note):  # typed or picked by the user, not loaded
            field_.input(lambda: "✎ Unsaved changes: press Save (Enter) to keep them.", None, save_status,
                         api_visibility="private", queue=False)
        app.load(refresh_queues, None, queue_file, **private)
        app.load(who_is_signed_in, None, signed_in, **private)
    app.skinnet_sweeper = uploads.start_sweeper(images_in)
    return app


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


PREDICT_CONCURRENCY = 8
"""``/predict`` calls handled at once; their model work is batched (:class:`~skinnet.predict.MicroBatcher`)."""
QUEUE_SIZE = 64
"""Requests waiting in Gradio's queue; past it a visitor is told the app is busy."""


def launch(app: gr.Blocks, settings: AppSettings, **kwargs):
    """Launch with the privacy and safety settings the app relies on."""
    from starlette.middleware import Middleware

    app.queue(max_size=QUEUE_SIZE, default_concurrency_limit=1)
    auth = access.LoginThrottle(dict(settings.users)) if settings.users else None
    return app.launch(server_name=settings.host, server_port=settings.port, ssr_mode=False,
                      run_history=False, max_file_size=MAX_FILE_SIZE, css=CSS, head=SHORTCUTS_JS,
                      show_error=False, auth=auth, app_kwargs={"middleware": [Middleware(NoSniff)]}, **kwargs)
