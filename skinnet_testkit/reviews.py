"""A review row with every field filled (the corrections log's tests and their writer processes)."""
from skinnet.corrections import NO_CHANGE, Review, new_event_id
from skinnet.labels import TASK_NAMES

PREDICTED = {"DIAG": "NEV", "PN": "TYP", "STR": "ABS", "PIG": "REG", "RS": "ABS", "DaG": "REG",
             "BWV": "ABS", "VS": "ABS"}


def review(verdict="agree", reviewer="dr_a", case_id="17", event_id=None, **corrected):
    return Review(event_id=event_id or new_event_id(), reviewer=reviewer, case_id=case_id, source="derm7pt",
                  verdict=verdict, predicted=dict(PREDICTED),
                  corrected={t: corrected.get(t, NO_CHANGE) for t in TASK_NAMES},
                  model_version="tiny@abc", checkpoint_sha256="abc", seconds_spent=12.34, confidence=4,
                  note="looks typical")
