"""The Derm7pt label schema: the 8 tasks, their classes, raw meta.csv values, the 7-point score.

Everything that names a task or a class reads it from here: the data reader, the heads'
output layout, the checkpoint card, the UI and the corrections log.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Task:
    """One classification task of the Derm7pt standard 8-task grouping.

    Attributes:
        name: short name (DIAG, PN, ...).
        column: the meta.csv column holding the raw value.
        classes: class names, in output-index order.
        raw_values: for each class, the raw meta.csv values grouped into it. The first raw
            value of a class is the one written back when a class must become a raw value.
        title: a human-readable name for the UI.
    """

    name: str
    column: str
    classes: tuple[str, ...]
    raw_values: tuple[tuple[str, ...], ...]
    title: str

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def class_index(self, raw_value: str) -> int:
        """Index of the class a raw meta.csv value belongs to.

        Raises:
            ValueError: the value belongs to no class of this task.
        """
        key = str(raw_value).strip().lower()
        for index, values in enumerate(self.raw_values):
            if key in values:
                return index
        known = sorted(v for values in self.raw_values for v in values)
        raise ValueError(f"{self.column}: unknown value {raw_value!r}; expected one of {known}")

    def raw_value(self, class_index: int) -> str:
        """The canonical raw meta.csv value for a class (the first of its group)."""
        return self.raw_values[class_index][0]


_ABSENT = ("absent",)

TASKS: tuple[Task, ...] = (
    Task("DIAG", "diagnosis", ("BCC", "NEV", "MEL", "MISC", "SK"), (
        ("basal cell carcinoma",),
        ("clark nevus", "blue nevus", "combined nevus", "congenital nevus", "dermal nevus",
         "recurrent nevus", "reed or spitz nevus"),
        ("melanoma", "melanoma (in situ)", "melanoma (less than 0.76 mm)",
         "melanoma (0.76 to 1.5 mm)", "melanoma (more than 1.5 mm)", "melanoma metastasis"),
        ("miscellaneous", "dermatofibroma", "lentigo", "melanosis", "vascular lesion"),
        ("seborrheic keratosis",),
    ), "Diagnosis"),
    Task("PN", "pigment_network", ("ABS", "TYP", "ATP"),
         (_ABSENT, ("typical",), ("atypical",)), "Pigment network"),
    Task("STR", "streaks", ("ABS", "REG", "IR"),
         (_ABSENT, ("regular",), ("irregular",)), "Streaks"),
    Task("PIG", "pigmentation", ("ABS", "REG", "IR"),
         (_ABSENT, ("diffuse regular", "localized regular"),
          ("diffuse irregular", "localized irregular")), "Pigmentation"),
    Task("RS", "regression_structures", ("ABS", "PRS"),
         (_ABSENT, ("blue areas", "white areas", "combinations")), "Regression structures"),
    Task("DaG", "dots_and_globules", ("ABS", "REG", "IR"),
         (_ABSENT, ("regular",), ("irregular",)), "Dots and globules"),
    Task("BWV", "blue_whitish_veil", ("ABS", "PRS"),
         (_ABSENT, ("present",)), "Blue-whitish veil"),
    Task("VS", "vascular_structures", ("ABS", "REG", "IR"),
         (_ABSENT, ("arborizing", "comma", "hairpin", "within regression", "wreath"),
          ("dotted", "linear irregular")), "Vascular structures"),
)

TASK_NAMES: tuple[str, ...] = tuple(t.name for t in TASKS)
TASK_BY_NAME: dict[str, Task] = {t.name: t for t in TASKS}
LABEL_COLUMNS: tuple[str, ...] = tuple(t.column for t in TASKS)
NUM_OUTPUTS: int = sum(t.num_classes for t in TASKS)
"""Width of one head's flat logit vector: the 8 tasks' classes side by side, in TASKS order."""

# Class names whose full form helps a reader of the UI.
CLASS_TITLES: dict[str, str] = {
    "BCC": "basal cell carcinoma", "NEV": "nevus", "MEL": "melanoma",
    "MISC": "miscellaneous", "SK": "seborrheic keratosis", "ABS": "absent",
    "TYP": "typical", "ATP": "atypical", "REG": "regular", "IR": "irregular",
    "PRS": "present",
}


def task_slices() -> dict[str, slice]:
    """Where each task's logits sit in a head's flat output."""
    slices, start = {}, 0
    for task in TASKS:
        slices[task.name] = slice(start, start + task.num_classes)
        start += task.num_classes
    return slices


TASK_SLICES: dict[str, slice] = task_slices()


def split_logits(flat: torch.Tensor) -> dict[str, torch.Tensor]:
    """Split a (..., NUM_OUTPUTS) tensor into one (..., num_classes) tensor per task."""
    if flat.shape[-1] != NUM_OUTPUTS:
        raise ValueError(f"expected {NUM_OUTPUTS} logits in the last dimension, got {flat.shape[-1]}")
    return {name: flat[..., s] for name, s in TASK_SLICES.items()}


def schema() -> list[dict]:
    """The schema as plain data, stored in checkpoint cards and compared on load."""
    return [{"name": t.name, "column": t.column, "classes": list(t.classes)} for t in TASKS]


# Seven-point checklist (Argenziano): (task, class, points). Major criteria count 2.
SEVEN_POINT_CRITERIA: tuple[tuple[str, str, int], ...] = (
    ("PN", "ATP", 2), ("BWV", "PRS", 2), ("VS", "IR", 2),
    ("PIG", "IR", 1), ("STR", "IR", 1), ("DaG", "IR", 1), ("RS", "PRS", 1),
)
SEVEN_POINT_THRESHOLD = 3
"""A score at or above this suggests melanoma."""


def seven_point_score(classes: dict[str, str]) -> int:
    """Seven-point checklist score from one predicted (or true) class name per criterion.

    Args:
        classes: task name -> class name, for at least the 7 criteria (DIAG is ignored).
    """
    return sum(points for task, cls, points in SEVEN_POINT_CRITERIA if classes[task] == cls)


def seven_point_meaning(score: int) -> str:
    if score >= SEVEN_POINT_THRESHOLD:
        return f"{score} (>= {SEVEN_POINT_THRESHOLD} suggests melanoma)"
    return f"{score} (< {SEVEN_POINT_THRESHOLD}: melanoma not suggested by the checklist)"


NO_LABEL = -1
"""A task's label index where nobody labelled it (a reviewed upload's unreviewed tasks): the loss
leaves it out (skinnet/loss.py)."""
