"""What the app says: the prediction's summary, tables and guard warnings, the model card
and the review form's labels, as Markdown text and DataFrames (no Gradio here)."""
from __future__ import annotations

import html
import json
import uuid

import pandas as pd

from ..guards import CONFIDENT, LOW_CONFIDENCE, UNCERTAIN, Checks
from ..labels import (CLASS_TITLES, SEVEN_POINT_CRITERIA, SEVEN_POINT_THRESHOLD, TASK_BY_NAME, TASKS,
                      seven_point_meaning)
from ..model import HEADS
from ..predict import Prediction, Predictor
from .keys import SHORTCUTS_HELP, form_choices

DISCLAIMER = ("**Research tool, not a diagnosis.** A model trained on Derm7pt (research use only), not a "
              "medical device: it must not guide the care of a patient.")
PAPER_URL = "https://arxiv.org/abs/2403.19203"
INTRO = ("Upload a **clinical photo** (a close-up of the lesion, in the middle, taken with an ordinary camera) and a "
         "**dermoscopy image** of the same lesion, then press **Analyse**, or click an example. Either image "
         "alone works too, with less certainty. The model is the single-shared network of Tang & Lasser "
         f"([paper]({PAPER_URL})), trained on the Derm7pt images.")
EXAMPLES_LABEL = ("**Examples**: click one. The pairs are *synthetic*, drawn by code, not patients (no real "
                  "lesion image may be shipped here), so the lesion check rightly says they are not photos: press "
                  "**Show the prediction anyway** to see the rest of the app.")
NO_IMAGES = "Upload a clinical photo, a dermoscopy image, or both (or click an example), then press Analyse."
DEMO_QUEUE_NOTE = ("**Review queues are for signed-in reviewers.** This public demo has no reviewer logins, so "
                   "queues, exports and agreement are off; upload a pair or click an example on the Review tab.")


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


def diagnosis_label(prediction: Prediction) -> dict[str, float]:
    """The primary head's five diagnoses and their probabilities, for ``gr.Label`` (bars)."""
    probs = prediction.heads[prediction.primary_head].probabilities["DIAG"]
    return {f"{cls} {CLASS_TITLES[cls]}": p for cls, p in probs.items()}


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
    if checks.not_lesion:
        slots = " and the ".join(SLOT_WORDS[slot] for slot in checks.not_lesion)
        both = len(checks.not_lesion) > 1
        distances = " and ".join(f"{checks.distance[slot]:.2f}" for slot in checks.not_lesion)
        lines.append(f"> ⚠️ **The {slots} {'do' if both else 'does'} not look like a skin lesion photo** "
                     f"({'their distances' if both else 'its distance'} to the images the model was trained on: "
                     f"{distances} x the limit). The model only knows clinical photos and dermoscopy images of "
                     "skin lesions; its answer for anything else means nothing."
                     + ("" if shown else " The prediction is hidden."))
    if checks.swapped:
        lines.append("> ⚠️ **These images look swapped**: the clinical slot holds what looks like a dermoscopy "
                     f"image (p = {checks.p_dermoscopy['clinical']:.2f}) and the dermoscopy slot a clinical photo "
                     f"(p = {1 - checks.p_dermoscopy['dermoscopy']:.2f})."
                     + ("" if shown else " Use **Swap the images** if so, or **They are right as they are** to see "
                                         "the prediction of the pair as it is."))
    else:
        for slot in checks.wrong_slot:
            other = "clinical photo" if slot == "dermoscopy" else "dermoscopy image"
            lines.append(f"> ⚠️ The {SLOT_WORDS[slot]} looks like a **{other}**: check that each image "
                         "is in its slot.")
    level = level_line(checks)
    if level and shown:
        lines.append(level)
    return lines


SLOT_WORDS = {"clinical": "clinical photo", "dermoscopy": "dermoscopy image"}
LEVEL_WORDS = {UNCERTAIN: "> **Uncertain.**",
               LOW_CONFIDENCE: "> **Low confidence.**",
               CONFIDENT: "**Confident, as far as this model goes.**"}


def level_line(checks: Checks) -> str | None:
    """How sure the answer is, and what that level meant on cases the model had not seen (None:
    the guards have no levels, every case would read "confident")."""
    if checks.level == CONFIDENT and not checks.low_limit and not checks.meaning:
        return None
    bounds = {UNCERTAIN: f"under {checks.margin_limit:.2f}",
              LOW_CONFIDENCE: f"from {checks.margin_limit:.2f} to {checks.low_limit:.2f}",
              CONFIDENT: f"of at least {checks.low_limit:.2f}"}[checks.level]
    line = (f"{LEVEL_WORDS[checks.level]} The two most likely diagnoses are {checks.margin:.2f} apart; this level "
            f"is a gap {bounds}.")
    meaning = checks.meaning or {}
    if meaning.get("accuracy") is not None:
        right = f"its diagnosis was right on {100 * meaning['accuracy']:.0f}%"
        if meaning.get("share") is None:
            return f"{line} At this level, on cases it had not trained on, {right}."
        which = {UNCERTAIN: "least sure", LOW_CONFIDENCE: "next", CONFIDENT: "surest"}[checks.level]
        cases = f"{meaning['cases']} cases" if meaning.get("cases") else "the cases"
        line += (f" Of {cases} it had not trained on, the {which} {100 * meaning['share']:.0f}% were at this level; "
                 f"of those, {right}.")
    return line


def summary_markdown(prediction: Prediction, version: str, show_anyway: bool = False, bars: bool = True) -> str:
    """The answer in words: the guards' warnings first; while they hide the prediction, nothing
    else. ``bars``: the text bars of the most likely class and of melanoma (the page shows all
    five diagnoses in a ``gr.Label`` instead)."""
    head = prediction.primary_head
    checks = prediction.checks
    hidden = checks is not None and not checks.trustworthy and not show_anyway
    lines = check_lines(checks, not hidden)
    if hidden:
        if checks.not_lesion:
            return "\n\n".join(["### No prediction shown", *lines, "If you are sure the image is a skin lesion "
                                  "photo, use **Show the prediction anyway**."])
        return "\n\n".join(["### Check the images first: no prediction shown yet", *lines])
    probs = prediction.heads[head].probabilities["DIAG"]
    top = max(probs, key=probs.get)
    classes = prediction.heads[head].classes
    score = prediction.heads[head].seven_point
    contributing = ", ".join(f"{CLASS_TITLES[classes[t]]} {TASK_BY_NAME[t].title.lower()} (+{n})"
                             for t, n in seven_point_points(classes).items())
    used = " + ".join(prediction.modalities)
    lines = [f"### {head.capitalize()} head: {top} ({CLASS_TITLES[top]}), p = {probs[top]:.2f}", *lines]
    if bars:
        shown = [f"`{top:<4} {bar(probs[top])} {probs[top]:.2f}` {CLASS_TITLES[top]} (most likely)"]
        if top != "MEL":
            shown.append(f"`MEL  {bar(probs['MEL'])} {probs['MEL']:.2f}` melanoma")
        lines.append("<br>".join(shown))
    lines += [f"Seven-point checklist score: **{seven_point_meaning(score)}**"
              + (f" from {contributing}" if contributing else "")
              + f" · images used: **{used}** · model `{version}` · research tool, not a diagnosis"]
    lines += [f"> {note}" for note in prediction.notes]
    return "\n\n".join(lines)


def calibration_summary(calibration: dict, source: dict | None = None) -> str:
    if not calibration:
        return "none (raw softmax)"
    diag = calibration.get("fused", next(iter(calibration.values()))).get("DIAG", {})
    biased = any(any(entry.get("bias") or []) for head in calibration.values() for entry in head.values())
    what = "a temperature and class biases per task and head" if biased else "temperatures"
    where = "the validation split"
    if source and source.get("fitted_on") == "out-of-fold":
        where = (f"out-of-fold predictions of the same recipe ({source.get('folds')}-fold cross-fitting "
                 f"on {source.get('n_cases')} train + valid cases{', one view' if source.get('tta') is False else ''})")
    return f"{what}, fitted on {where} (fused DIAG: temperature {diag.get('temperature', 1.0):.2f})"


def storage_summary(card) -> str:
    if card.weights != "int8":
        return card.weights
    return (f"float16, and int8 with a scale per output channel for the weight tensors of at least "
            f"{card.int8_min_elements:,} values")


def stages_words(stages) -> str:
    """``[-2, -1]`` -> "after the last two stages" (a card counts stages from the end)."""
    stages = list(stages or [])
    if not stages:
        return "none"
    if all(isinstance(s, int) and s < 0 for s in stages) and sorted(stages) == list(range(-len(stages), 0)):
        return "after the last stage" if len(stages) == 1 else f"after the last {len(stages)} stages"
    return f"after stages {stages}"


def model_markdown(predictor: Predictor) -> str:
    card = predictor.card
    weights = dict(card.loss_weights)
    lines = [f"### Model `{predictor.version}`",
             f"- Backbone: `{card.model['backbone']}` ({'one shared encoder' if card.model['shared'] else 'two encoders'}), "
             f"cross-attention {stages_words(card.model['cross_attention_stages'])}; "
             f"{card.params / 1e6:.2f}M parameters; input {card.image_size} px, "
             f"{'averaged over the 4 flips' if card.tta else 'one view, no test-time flips'}; "
             f"weights stored as "
             f"{storage_summary(card)}",
             "- Loss weights: " + ", ".join(f"{head} {weight:g}" for head, weight in weights.items())
             + (" (biased toward dermoscopy, as the paper's loss)" if weights.get("dermoscopy", 0) > max(
                 (w for h, w in weights.items() if h != "dermoscopy"), default=0) else ""),
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


def form_ready(token: str, case: str = "", name: str = "", who: str = "", values: tuple | None = None) -> str:
    """The marker the page's script watches: the form now shows the case this token names (an
    empty token: no case). Until it changes after a move, the review keys and Save do nothing.

    For a queue case, also which one (``case``: its queue file as it is and its id; ``name``:
    the id the reviewer sees), the reviewer (``who``) and the form as the server gives it now
    (``values``: the draft, the review that stands or the blank form; shown as the page shows
    them): the script keeps the form's unsaved changes across a page reload (an app restart
    reloads every page) and puts them back only into that case, for that reviewer, while the
    server still gives the same form (:func:`shown_form`)."""
    token = token or "none-" + uuid.uuid4().hex[:8]
    data = {"token": token, "case": case, "name": name, "who": who,
            "form": shown_form(values) if values is not None else ""}
    attributes = " ".join(f'data-{k}="{html.escape(v, quote=True)}"' for k, v in data.items() if v)
    return f'<span class="form-ready" {attributes}></span>'


def shown_form(values: tuple) -> str:
    """The form's values (verdict, a value per task, confidence, note) as the page shows them
    (a fine Derm7pt value by its label, ``NEV · dermal nevus``), in JSON: what the page's script
    compares its own fields with."""
    verdict, *corrected, confidence, note = values
    labels = [{value: label for label, value in form_choices(t)}.get(v, v) for t, v in zip(TASKS, corrected)]
    return json.dumps([verdict or None, *labels, str(confidence) if confidence else None, note or ""],
                      ensure_ascii=False)


def task_label(task, predicted: str | None = None, hidden: bool = False) -> str:
    if hidden:
        return f"{task.name} ({task.title}): prediction hidden"
    return f"{task.name}: model says {predicted}" if predicted else f"{task.name} ({task.title})"



def review_help(reviewers) -> str:
    """The line above the review form: how saving works in this deployment."""
    if not reviewers.configured:
        return ("Saving corrections is **off**: this is the public demo (no reviewers are configured). "
                "Predictions and maps work as usual.")
    if reviewers.hf_accounts and not reviewers.password_logins:
        return ("Sign in with Hugging Face (button at the top) to save: accounts on this app's reviewer "
                "list are recorded as `hf:<username>`. " + SHORTCUTS_HELP)
    return SHORTCUTS_HELP

