"""Review sessions: who reviews, which case is open, and saving a review to the corrections log.

A session's state is a plain dict kept in ``gr.State`` (one per browser tab): the queue,
the open case, the event id made when the case was opened (so a double-clicked save logs
once) and when it was opened (time spent is measured, never typed).
"""
from __future__ import annotations

import hashlib
import json
import tempfile
import time
import uuid
from dataclasses import asdict
from pathlib import Path

import gradio as gr
import pandas as pd
from PIL.Image import Image

from .corrections import (CHANGED, CONFIRMED, NO_CHANGE, RETRACT, VERDICTS, CorrectionsError, CorrectionsLog, Review,
                          export_meta_csv,
                          new_event_id, read_corrections)
from .data import DatasetError
from .imaging import ImageError, load_rgb, pixel_sha256
from .labels import TASKS
from .predict import Predictor
from .review_queue import open_queue, uncertainty

QUEUE_COLUMNS = ["#", "case", "source", "your review", "uncertainty"]


def new_state() -> dict:
    return {"queue": [], "index": None, "case": None, "event_id": None, "opened_at": None,
            "uncertainty": {}}


def _open_case(state: dict, case: dict) -> dict:
    return {**state, "case": case, "event_id": new_event_id(), "opened_at": time.time()}


def queue_table(state: dict, log: CorrectionsLog, reviewer: str | None) -> pd.DataFrame:
    done = log.reviewed_cases(reviewer) if reviewer else {}
    rows = [[i + 1, c["case_id"], c["source"], done.get(c["case_id"], ""),
             f"{state['uncertainty'][c['case_id']]:.2f}" if c["case_id"] in state["uncertainty"] else ""]
            for i, c in enumerate(state["queue"])]
    return pd.DataFrame(rows, columns=QUEUE_COLUMNS)


def case_header(state: dict, log: CorrectionsLog, reviewer: str | None) -> str:
    case = state.get("case")
    if case is None:
        return "No case open: open a queue, or upload images (they become a case of their own)."
    done = log.reviewed_cases(reviewer) if reviewer else {}
    parts = [f"**case {case['case_id']}** ({case['source']})"]
    if state["index"] is not None and state["queue"]:
        reviewed = sum(c["case_id"] in done for c in state["queue"])
        parts.append(f"{state['index'] + 1} of {len(state['queue'])}, {reviewed} reviewed by you")
    status = done.get(case["case_id"])
    parts.append(f"your review: **{status}**" if status else "not reviewed by you yet")
    return " · ".join(parts)


def open_queue_handler(state: dict, path: str, root: Path | None, log: CorrectionsLog, reviewer: str | None):
    """Open a manifest CSV or a Derm7pt meta.csv as this session's queue."""
    if not path or not path.strip():
        raise gr.Error("Type the path of a manifest CSV (case_id, clinical, dermoscopy) or a Derm7pt meta.csv.")
    try:
        queue = open_queue(path.strip(), root)
    except DatasetError as err:
        raise gr.Error(str(err)) from None
    digest = hashlib.sha256(Path(path.strip()).read_bytes()).hexdigest()
    state = {**new_state(), "owner": state.get("owner"), "queue": [asdict(c) for c in queue], "queue_sha256": digest}
    return state, queue_table(state, log, reviewer), f"Opened {len(queue)} cases."


SCORE_BATCH = 32
"""Cases scored per step of "least sure first" (one model call of a few pairs each, then the
model is free for other requests)."""


def queue_scores(state: dict, predictor: Predictor, cache: Path, progress=None) -> dict[str, float]:
    """Uncertainty of every case of the open queue, from the disk cache when this queue file and
    checkpoint were scored before (by anyone), else scored in batches and cached."""
    key = f"{state.get('queue_sha256', 'unknown')[:20]}-{predictor.checkpoint_sha256[:20] or predictor.card.name}-1view"
    path = cache / f"{key}.json"
    try:
        scores = json.loads(path.read_text())
        if all(c["case_id"] in scores for c in state["queue"]):
            return scores
    except (OSError, ValueError):
        pass
    scores, queue = {}, state["queue"]
    for start in range(0, len(queue), SCORE_BATCH):
        if progress is not None:
            progress((start, len(queue)), desc="scoring cases (shared by every reviewer once done)")
        chunk = queue[start:start + SCORE_BATCH]
        pairs = [tuple(load_rgb(c[k]) if c[k] else None for k in ("clinical", "dermoscopy")) for c in chunk]
        # one view, not the card's flips: a ranking needs a quarter of the work (out of fold on
        # Derm7pt the flips move the shipped recipe's average by 0.06 points)
        for case, prediction in zip(chunk, predictor.predict_batch(pairs, tta=False)):
            scores[case["case_id"]] = uncertainty(prediction)
    cache.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(f".{uuid.uuid4().hex[:8]}.tmp")
    temporary.write_text(json.dumps(scores))
    temporary.replace(path)
    return scores


def order_by_uncertainty(state: dict, predictor: Predictor, log: CorrectionsLog, reviewer: str | None,
                         progress=None):
    """Sort the queue so that the cases the model is least sure of come first, and open the
    first of them you have not reviewed (``n`` then follows this order)."""
    if not state["queue"]:
        raise gr.Error("Open a queue first.")
    try:
        scores = queue_scores(state, predictor, log.folder / "queue_scores", progress)
    except ImageError as err:
        raise gr.Error(str(err)) from None
    queue = sorted(state["queue"], key=lambda c: -scores[c["case_id"]])
    done = log.reviewed_cases(reviewer) if reviewer else {}
    first = next((i for i, c in enumerate(queue) if c["case_id"] not in done), 0)
    state = _open_case({**state, "queue": queue, "uncertainty": scores, "index": first}, dict(queue[first]))
    return (state, queue_table(state, log, reviewer),
            f"Ordered by model uncertainty (least sure first); opened case {queue[first]['case_id']}, "
            "the least sure one you have not reviewed.")


def open_case_id(state: dict, case_id) -> dict:
    """Open the queue's case with this id (a click on a row of the queue table)."""
    if not state["queue"]:
        raise gr.Error("Open a queue first.")
    index = next((i for i, c in enumerate(state["queue"]) if isinstance(case_id, str) and c["case_id"] == case_id),
                 None)
    if index is None:
        raise gr.Error("No such case in the open queue.")
    return _open_case({**state, "index": index}, dict(state["queue"][index]))


def move(state: dict, step: str, log: CorrectionsLog, reviewer: str | None) -> dict:
    """Open the previous, next, or next case this reviewer has not reviewed."""
    queue = state["queue"]
    if not queue:
        raise gr.Error("Open a queue first.")
    index = state["index"]
    if step == "prev":
        target = 0 if index is None else max(index - 1, 0)
    elif step == "next":
        target = 0 if index is None else min(index + 1, len(queue) - 1)
    elif step == "next unreviewed":
        done = log.reviewed_cases(reviewer) if reviewer else {}
        start = -1 if index is None else index
        order = list(range(start + 1, len(queue))) + list(range(0, start + 1))
        target = next((i for i in order if queue[i]["case_id"] not in done), None)
        if target is None:
            raise gr.Error("Every case of this queue has your review.")
    else:
        raise ValueError(step)
    return _open_case({**state, "index": target}, dict(queue[target]))


def start_upload_case(state: dict, clinical: str | None, dermoscopy: str | None) -> dict:
    """Images uploaded by hand become a case of their own (id from their pixels' hash)."""
    images = [p for p in (clinical, dermoscopy) if p]
    if not images:
        return {**state, "case": None, "event_id": None}
    digest = "-".join(pixel_sha256(load_rgb(p))[:12] for p in images)
    case = {"case_id": f"upload:{digest}", "clinical": clinical, "dermoscopy": dermoscopy, "source": "upload"}
    return _open_case({**state, "index": None}, case)


def content_event_id(*parts) -> str:
    """An event id fixed by what is saved: the same save sent twice (a double click, a retried
    request) gets the same id and is logged once; a changed review gets a new one."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def form_values(row: dict | None) -> tuple:
    """(verdict, corrections per task, confidence, note) that show a saved row in the form;
    the blank form without one. A task shows what the reviewer picked (a fine value if they
    gave one) and "no change" where they did not review it, whatever the model says now."""
    if row is None:
        return (None, *([NO_CHANGE] * len(TASKS)), None, "")
    corrected = []
    for task in TASKS:
        reviewed = row["verdict"] == "correct" and row.get(f"status_{task.name}") in (CONFIRMED, CHANGED)
        corrected.append((row.get(task.column) or row[task.name]) if reviewed else NO_CHANGE)
    confidence = int(row["confidence"]) if row.get("confidence") else None
    return (row["verdict"], *corrected, confidence, row.get("note", ""))


def save_review(state: dict, predictor: Predictor, log: CorrectionsLog, reviewer: str | None,
                clinical: Image | None, dermoscopy: Image | None, verdict: str | None,
                corrected: dict[str, str], confidence: int | None, note: str) -> tuple[dict, str]:
    """Append the open case's review to the log. Saving what is already your latest review of
    the case logs nothing; a changed review appends a row that supersedes the earlier one.

    Returns:
        The state and a status message.
    """
    if reviewer is None:
        raise gr.Error("Saving needs a signed-in reviewer (this app runs as a public demo).")
    if state.get("case") is None or state.get("event_id") is None:
        raise gr.Error("No case is open: open a queue or upload images first.")
    if not isinstance(verdict, str) or verdict not in VERDICTS:
        raise gr.Error("Choose a verdict: agree, correct, unsure or skip.")
    if clinical is None and dermoscopy is None:
        raise gr.Error("The case has no image to review.")
    if any(v is not None and not isinstance(v, str) for v in corrected.values()):
        raise gr.Error("Corrections must be class names or 'no change'.")
    changed = {t: v for t, v in corrected.items() if v not in (None, "", NO_CHANGE)}
    if not isinstance(note, (str, type(None))):
        raise gr.Error("The note must be text.")
    if verdict == "correct" and not changed:
        raise gr.Error("Verdict 'correct' needs at least one corrected label (or choose 'agree').")
    if verdict == "agree" and changed:
        raise gr.Error("Verdict 'agree' with corrected labels: choose 'correct' instead.")
    prediction = predictor.predict(clinical, dermoscopy)
    review = Review(
        event_id=state["event_id"], reviewer=reviewer, case_id=state["case"]["case_id"],
        source=state["case"]["source"], verdict=verdict,
        predicted=prediction.heads[prediction.primary_head].classes,
        corrected={t.name: corrected.get(t.name) or NO_CHANGE for t in TASKS},
        model_version=predictor.version, checkpoint_sha256=predictor.checkpoint_sha256,
        seconds_spent=time.time() - (state.get("opened_at") or time.time()),
        confidence=confidence if confidence not in (None, "") else None, note=note or "")
    try:
        review.validate()
        previous = log.latest_review(reviewer, review.case_id)
        if previous is not None and log.same_content(review, previous):
            return state, f"Already saved: your review of case {review.case_id} is unchanged (logged once)."
        # the log's size enters the id: after an undo the same answer is a new save, not a repeat
        review.event_id = content_event_id(state["event_id"], previous["event_id"] if previous else "",
                                           len(log.event_ids()), verdict, review.corrected, review.confidence,
                                           review.note)
        logged = log.append(review, clinical, dermoscopy)
    except CorrectionsError as err:
        raise gr.Error(str(err)) from None
    if not logged:
        return state, f"Already saved: your review of case {review.case_id} is unchanged (logged once)."
    replaced = " (replaces your earlier review of this case)" if previous is not None else ""
    return state, f"Saved: {verdict} for case {review.case_id} ({review.seconds_spent:.0f} s){replaced}."


def undo_last_save(state: dict, log: CorrectionsLog, reviewer: str | None) -> tuple[str, dict | None]:
    """Withdraw your latest review of the open case with an appended retraction row (the log
    stays append-only; readers drop both). Returns (message, the review that now stands)."""
    if reviewer is None:
        raise gr.Error("Undo needs a signed-in reviewer.")
    case = state.get("case")
    if case is None:
        raise gr.Error("No case is open.")
    latest = log.latest_review(reviewer, case["case_id"])
    if latest is None:
        raise gr.Error(f"Nothing to undo: you have no saved review of case {case['case_id']}.")
    predicted = {t.name: latest[f"model_{t.name}"] for t in TASKS}
    retraction = Review(event_id=content_event_id(RETRACT, latest["event_id"]), reviewer=reviewer,
                        case_id=case["case_id"], source=latest["source"], verdict=RETRACT, predicted=predicted,
                        corrected={}, model_version=latest["model_version"],
                        checkpoint_sha256=latest["checkpoint_sha256"], note=latest["event_id"])
    try:
        log.append(retraction, images={"clinic": (latest["clinic"], latest["clinic_sha256"]),
                                       "derm": (latest["derm"], latest["derm_sha256"])})
    except CorrectionsError as err:
        raise gr.Error(str(err)) from None
    standing = log.latest_review(reviewer, case["case_id"])
    back = f"your earlier review ({standing['verdict']}) stands again" if standing else "the case is unreviewed by you"
    return f"Undone: your {latest['verdict']} review of case {case['case_id']} is withdrawn; {back}.", standing


def export_labels(log: CorrectionsLog, rule: str) -> str:
    """The current labels of every reviewed case as a Derm7pt-style meta.csv (a temporary file)."""
    if not log.path.is_file():
        raise gr.Error("No review has been saved yet.")
    rows, problems = read_corrections(log.path)
    target = Path(tempfile.mkdtemp(prefix="skinnet-export-")) / f"labels_{rule}.csv"
    export_meta_csv(rows, target, rule)
    if problems:
        gr.Warning(f"{len(problems)} bad rows left out: " + "; ".join(str(p) for p in problems[:3]))
    return str(target)


def load_case_images(state: dict) -> tuple:
    """The open case's images as clean RGB images (None where the case has none)."""
    case = state.get("case") or {}
    try:
        return tuple(load_rgb(case[k], k) if case.get(k) else None for k in ("clinical", "dermoscopy"))
    except ImageError as err:
        raise gr.Error(str(err)) from None

