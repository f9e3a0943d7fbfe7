import pandas as pd
import pytest
import torch

from conftest import REAL_DERM7PT, needs_real_derm7pt
from skinnet.labels import (NUM_OUTPUTS, TASK_BY_NAME, TASKS, seven_point_meaning, seven_point_score,
                            split_logits)
from skinnet_testkit.synthetic import ALL_RAW_VALUES


def test_standard_grouping_sizes():
    assert [t.name for t in TASKS] == ["DIAG", "PN", "STR", "PIG", "RS", "DaG", "BWV", "VS"]
    assert [t.num_classes for t in TASKS] == [5, 3, 3, 3, 2, 3, 2, 3]
    assert NUM_OUTPUTS == 24


@pytest.mark.parametrize("raw, expected", [
    ("melanoma (in situ)", "MEL"), ("melanoma metastasis", "MEL"), ("reed or spitz nevus", "NEV"),
    ("dermatofibroma", "MISC"), ("vascular lesion", "MISC"), ("seborrheic keratosis", "SK"),
    ("basal cell carcinoma", "BCC"), ("  Clark Nevus ", "NEV"),
])
def test_diagnosis_grouping(raw, expected):
    task = TASK_BY_NAME["DIAG"]
    assert task.classes[task.class_index(raw)] == expected


def test_every_raw_value_groups_and_round_trips():
    for task in TASKS:
        for raw in ALL_RAW_VALUES[task.column]:
            index = task.class_index(raw)
            assert task.class_index(task.raw_value(index)) == index


@needs_real_derm7pt
def test_every_value_in_the_real_meta_csv_groups():
    meta = pd.read_csv(REAL_DERM7PT / "meta" / "meta.csv", dtype=str)
    for task in TASKS:
        for raw in meta[task.column].unique():
            task.class_index(raw)


def test_unknown_value_names_column_and_choices():
    with pytest.raises(ValueError, match="streaks: unknown value 'wavy'.*irregular"):
        TASK_BY_NAME["STR"].class_index("wavy")


def test_seven_point_score():
    none = {"PN": "TYP", "BWV": "ABS", "VS": "ABS", "PIG": "REG", "STR": "ABS", "DaG": "REG", "RS": "ABS"}
    assert seven_point_score(none) == 0
    major = dict(none, PN="ATP", BWV="PRS", VS="IR")
    assert seven_point_score(major) == 6
    assert seven_point_score(dict(none, PIG="IR", STR="IR", DaG="IR", RS="PRS")) == 4
    assert seven_point_score(dict(none, PN="ATP", RS="PRS")) == 3
    assert "suggests melanoma" in seven_point_meaning(3)
    assert "not suggested" in seven_point_meaning(2)


def test_split_logits_layout():
    flat = torch.arange(NUM_OUTPUTS).float().expand(2, -1)
    parts = split_logits(flat)
    assert list(parts) == [t.name for t in TASKS]
    assert parts["DIAG"][0].tolist() == [0, 1, 2, 3, 4]
    assert parts["VS"][0].tolist() == [21, 22, 23]
    with pytest.raises(ValueError):
        split_logits(torch.zeros(2, 5))
