"""The public endpoints' handlers (``/predict``, ``/explain``) and the form's labels: plain
functions of a :class:`~skinnet.predict.Predictor` and the images, called directly in tests.
A bad input raises ``gr.Error``, whose message the user sees."""
from __future__ import annotations

import logging

import gradio as gr
import pandas as pd
from PIL import Image

from ..explain import explain
from ..imaging import ImageError, load_rgb
from ..labels import CLASS_TITLES, TASK_BY_NAME, TASKS
from ..model import HEADS
from ..predict import Predictor
from .views import criteria_table, diagnosis_label, diagnosis_table, summary_markdown, task_label

log = logging.getLogger(__name__)

PREDICTED = "(predicted class)"
AUTO_HEAD = "auto"


def as_images(clinical, dermoscopy) -> tuple[Image.Image | None, Image.Image | None]:
    """The handlers' inputs as clean RGB images. The app passes images it opened under the
    rules of :mod:`skinnet.ui.uploads`; a path here is trusted (an in-process caller, a test)."""
    def one(value, name):
        if value is None or isinstance(value, Image.Image):
            return value
        try:
            return load_rgb(value, name)
        except ImageError as err:
            raise gr.Error(str(err)) from None
    return one(clinical, "clinical image"), one(dermoscopy, "dermoscopy image")


DIAGNOSIS_COLUMNS = ["class", *HEADS]
CRITERIA_COLUMNS = ["criterion", *HEADS]


def answer(predictor: Predictor, clinical: Image.Image, dermoscopy: Image.Image, show_anyway: bool, bars: bool):
    """(summary, the five diagnoses for ``gr.Label`` or None, DIAG table, criteria table) of
    clean images; while the guards hide the prediction the summary says why and the rest is empty."""
    prediction = predictor.predict(clinical, dermoscopy)
    log.info("predicted a case with %s", "+".join(prediction.modalities))
    summary = summary_markdown(prediction, predictor.version, show_anyway is True, bars)
    if prediction.checks is not None and not prediction.checks.trustworthy and show_anyway is not True:
        return summary, None, pd.DataFrame(columns=DIAGNOSIS_COLUMNS), pd.DataFrame(columns=CRITERIA_COLUMNS)
    return summary, diagnosis_label(prediction), diagnosis_table(prediction), criteria_table(prediction)


def predict_handler(predictor: Predictor, clinical, dermoscopy, show_anyway: bool = False):
    """``/predict``: (summary markdown, DIAG table, criteria table) for one or two images.

    An image that does not look like a skin lesion photo, or a pair that looks swapped, gets
    the warning alone (empty tables) unless ``show_anyway``.
    """
    clinical, dermoscopy = as_images(clinical, dermoscopy)
    if clinical is None and dermoscopy is None:
        raise gr.Error("Upload a clinical photo, a dermoscopy image, or both.")
    summary, _, diagnosis, criteria = answer(predictor, clinical, dermoscopy, show_anyway, bars=True)
    return summary, diagnosis, criteria


def explain_handler(predictor: Predictor, clinical, dermoscopy, task: str, class_name: str, head: str):
    """``/explain``: (Grad-CAM clinical, Grad-CAM dermoscopy, attention overlays with captions)."""
    result, _ = explained(predictor, clinical, dermoscopy, task, class_name, head)
    return result.gradcam.get("clinical"), result.gradcam.get("dermoscopy"), attention_gallery(result)


def page_maps(predictor: Predictor, clinical, dermoscopy, task: str, class_name: str, head: str):
    """The page's maps: as ``/explain``, each Grad-CAM slot also saying what its map explains, and
    why it is empty when the head chosen does not read that image (a blank slot looked broken)."""
    result, given = explained(predictor, clinical, dermoscopy, task, class_name, head)
    slots = []
    for modality in ("clinical", "dermoscopy"):
        image = result.gradcam.get(modality)
        if image is not None:
            label = f"Grad-CAM, {modality} · {result.target.split(', ', 1)[-1]}"
        elif modality in given:
            label = f"Grad-CAM, {modality}: none, the {result.target.split(' head')[0]} head does not read this image"
        else:
            label = f"Grad-CAM, {modality}"
        slots.append(gr.update(value=image, label=label))
    return (*slots, attention_gallery(result))


def attention_gallery(result) -> list[tuple]:
    # the caption says where each map's attention falls: the words under the overlay are too small in a thumbnail
    return [(image, f"{label} · {result.focus[label]}") for label, image in result.attention.items()]


def explained(predictor: Predictor, clinical, dermoscopy, task: str, class_name: str, head: str):
    """(the explanation, the modalities given) of a request checked field by field."""
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
    return explain(predictor, clinical, dermoscopy, task, cls, chosen), given


def task_choices() -> list[tuple[str, str]]:
    """The Explain task dropdown: (``PN · pigment network``, ``PN``); the value stays the code."""
    return [(f"{t.name} · {t.title}", t.name) for t in TASKS]


def class_choice_list(task: str) -> list[tuple[str, str]]:
    return [(PREDICTED, PREDICTED), *((f"{c} · {CLASS_TITLES.get(c, c)}", c) for c in TASK_BY_NAME[task].classes)]


def class_choices(task: str):
    if not isinstance(task, str) or task not in TASK_BY_NAME:
        raise gr.Error("Unknown task.")
    return gr.update(choices=class_choice_list(task), value=PREDICTED)


def form_labels(predictor: Predictor, clinical, dermoscopy, show_anyway: bool = False):
    """The correction dropdowns' labels show the model's prediction for each task (not while
    the lesion check hides the prediction)."""
    clinical, dermoscopy = as_images(clinical, dermoscopy)
    if clinical is None and dermoscopy is None:
        return [gr.update(label=task_label(t)) for t in TASKS]
    prediction = predictor.predict(clinical, dermoscopy)
    if prediction.checks is not None and not prediction.checks.trustworthy and show_anyway is not True:
        return [gr.update(label=task_label(t, hidden=True)) for t in TASKS]
    classes = prediction.heads[prediction.primary_head].classes
    return [gr.update(label=task_label(t, classes[t.name])) for t in TASKS]
