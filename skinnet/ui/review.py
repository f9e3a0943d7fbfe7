"""Review sessions: who reviews, which case is open, and saving a review to the corrections log.

A session's state is a plain dict kept in ``gr.State`` (one per browser tab): the queue,
the open case, the event id made when the case was opened (so a double-clicked save logs
once) and when it was opened (time spent is measured, never typed).
"""
from __future__ import annotations

import errno
import hashlib
import json
import math
import threading
import time
from dataclasses import asdict
from typing import TypedDict
from pathlib import Path

import gradio as gr
import pandas as pd
from PIL.Image import Image

from ..corrections import (CHANGED, CONFIRMED, LABELLED_VERDICTS, MAX_NOTE, NO_CHANGE, RETRACT, VERDICTS,
                          CorrectionsError, CorrectionsLog, Review, is_answer, new_event_id, one_line, task_labels)
from ..data import DatasetError
from ..files import write_atomically
from ..imaging import ImageError, load_rgb, pixel_sha256
from ..labels import TASKS
from ..predict import Predictor
from ..review_queue import list_queues, open_queue, uncertainty
from .prepare import case_images

QUEUE_COLUMNS = ["#", "case", "source", "your review", "uncertainty"]


class ReviewSession(TypedDict, total=False):
    """A reviewer's session: what Gradio keeps per browser tab (``gr.State``), passed to every
    event and returned changed (a new dict each time: a step that finished meanwhile is never
    undone). ``tests/test_review_slips.py`` checks that the app keeps no other key."""

    owner: str | None  # who opened the session (skinnet.ui.access: nobody else may act on it)
    all: list[dict]  # the queue file's cases, in the chosen order (QueueCase fields)
    queue: list[dict]  # those the filters keep: the cases n and the arrows walk through
    index: int | None  # the open case's place in ``queue``
    case: dict | None  # the open case (a queue case, or an upload's two clean copies)
    event_id: str | None  # the open case's token: a save names the case the reviewer saw
    opened_at: float | None  # when the open case was opened (seconds spent on a review)
    uncertainty: dict[str, float]  # case id -> the model's uncertainty ('Least sure first')
    predicted: dict[str, str]  # case id -> the predicted diagnosis (the 'predicted' filter)
    filters: dict[str, str]  # split, status, predicted (NO_FILTERS)
    queue_file: str | None  # the open queue, relative to the queue folder
    queue_sha256: str  # its content hash (a reload finds the same file or starts over)
    drafts: dict[str, dict]  # case id -> {"form": the form's unsaved values, "base": the saved review they change}
    other_drafts: dict[str, dict]  # the queues left for another: queue_key -> {"at": when left, "drafts": their drafts}
    left_draft: str | None  # the case just left with a draft (the status line says so)
    dropped_draft: str | None  # the case whose draft went to keep the queue's drafts bounded (said once)
    shown: list[str]  # [token, case id] of the case whose form was last sent to the page
    shown_review: list | None  # the saved review's form values the page got with that case (None: it got a draft)
    shown_images: list[str] | None  # pixel sha256 of the open case's images as the page got them ('' for none)


def new_state() -> ReviewSession:
    """``all``: the queue file's cases (in the chosen order); ``queue``: those the filters keep,
    the ones the reviewer walks through."""
    return {"all": [], "queue": [], "index": None, "case": None, "event_id": None, "opened_at": None,
            "uncertainty": {}, "predicted": {}, "filters": dict(NO_FILTERS), "queue_file": None, "drafts": {}}


NO_FILTERS = {"split": "all", "status": "all", "predicted": "any"}
SPLIT_CHOICES = ("all", "train", "valid", "test")
STATUS_CHOICES = ("all", "unreviewed", "reviewed")
PREDICTED_CHOICES = ("any", *TASKS[0].classes)


def apply_filters(state: ReviewSession, log: CorrectionsLog, reviewer: str | None, filters: dict | None = None) -> ReviewSession:
    """The queue view: the cases of ``all`` that pass the filters, in order; the open case keeps
    its place if it is still in view."""
    filters = {**state["filters"], **(filters or {})}
    if (filters["split"] not in SPLIT_CHOICES or filters["status"] not in STATUS_CHOICES
            or filters["predicted"] not in PREDICTED_CHOICES):
        raise gr.Error("Unknown filter value.")
    if filters["predicted"] != "any" and not state["predicted"]:
        raise gr.Error("The predicted diagnosis comes from scoring the queue: press 'Least sure first' first.")
    done = log.reviewed_cases(reviewer) if reviewer else {}
    view = [c for c in state["all"]
            if filters["split"] in ("all", c.get("split"))
            and (filters["status"] == "all" or (c["case_id"] in done) == (filters["status"] == "reviewed"))
            and filters["predicted"] in ("any", state["predicted"].get(c["case_id"]))]
    current = (state.get("case") or {}).get("case_id")
    index = next((i for i, c in enumerate(view) if c["case_id"] == current), None)
    return {**state, "filters": filters, "queue": view, "index": index}


def view_status(state: ReviewSession) -> str:
    f = state["filters"]
    kept = [f"{f['split']} split" if f["split"] != "all" else "",
            f"{f['status']} by you" if f["status"] != "all" else "",
            f"predicted {f['predicted']}" if f["predicted"] != "any" else ""]
    kept = ", ".join(k for k in kept if k)
    return f"Showing {len(state['queue'])} of {len(state['all'])} cases" + (f" ({kept})." if kept else ".")


def _open_case(state: ReviewSession, case: dict) -> ReviewSession:
    return {**state, "case": case, "event_id": new_event_id(), "opened_at": time.time(), "shown_images": None}


def queue_table(state: ReviewSession, log: CorrectionsLog, reviewer: str | None) -> pd.DataFrame:
    done = log.reviewed_cases(reviewer) if reviewer else {}
    rows = [[i + 1, c["case_id"], c["source"], done.get(c["case_id"], ""),
             f"{state['uncertainty'][c['case_id']]:.2f}" if c["case_id"] in state["uncertainty"] else ""]
            for i, c in enumerate(state["queue"])]
    return pd.DataFrame(rows, columns=QUEUE_COLUMNS)


def case_header(state: ReviewSession, log: CorrectionsLog, reviewer: str | None) -> str:
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
    draft = clean_draft((state.get("drafts") or {}).get(case["case_id"]))
    if draft is not None and reviewer and not is_stale(draft, log.newest_save(reviewer, case["case_id"])):
        parts.append("unsaved draft")
    return " · ".join(parts)


def open_queue_handler(state: ReviewSession, path: str, root: Path | None, log: CorrectionsLog, reviewer: str | None,
                       name: str | None = None):
    """Open a manifest CSV or a Derm7pt meta.csv as this session's queue. A Derm7pt queue shows
    its test split first: the cases the shipped model never trained on. The same file opened
    again keeps the reviewer's drafts. Another file's case ids name other cases: the drafts of
    the queue left are put aside (``other_drafts``, the last MAX_OTHER_QUEUES files) and come
    back when that file, unchanged, is opened again."""
    if not path or not path.strip():
        raise gr.Error("Type the path of a manifest CSV (case_id, clinical, dermoscopy) or a Derm7pt meta.csv.")
    try:
        queue = open_queue(path.strip(), root)
    except DatasetError as err:  # said relative to the queue folder: no server path leaves it
        message = str(err).replace(f"{root}/", "").replace(str(root), "the queue folder") if root else str(err)
        raise gr.Error(message) from None
    digest = hashlib.sha256(Path(path.strip()).read_bytes()).hexdigest()
    cases = [asdict(c) for c in queue]
    split = "test" if any(c["split"] == "test" for c in cases) else "all"
    same_file = digest == state.get("queue_sha256") and name == state.get("queue_file")
    drafts, other_drafts, notes = dict(state.get("drafts") or {}), dict(state.get("other_drafts") or {}), []
    if not same_file:
        # an upload's id is its pixels' hash: the same lesion in any queue, so its draft goes along
        uploads = {k: v for k, v in drafts.items() if k.startswith("upload:")}
        drafts = {k: v for k, v in drafts.items() if k not in uploads}
        left = state.get("queue_file")
        if left:  # put aside, even when empty: an older copy of this queue's drafts (another tab's) must not win
            other_drafts[queue_key(left, state.get("queue_sha256"))] = {"at": time.time(), "drafts": drafts}
        if left and drafts and left == name:  # the same file, changed since: its case ids may name other lesions
            notes.append(f"{name} has changed since you opened it: your {plural(len(drafts), 'unsaved draft')} "
                         "in it cannot be carried over (they are kept for that version of the file).")
        elif left and drafts:
            notes.append(f"Your {plural(len(drafts), 'unsaved draft')} in {left} {'is' if len(drafts) == 1 else 'are'} "
                         "kept: open that queue again to finish.")
        drafts = clean_drafts((other_drafts.pop(queue_key(name, digest), None) or {}).get("drafts")) if name else {}
        if drafts:
            notes.append(f"{plural(len(drafts), 'unsaved draft')} from your last time in this queue "
                         f"{'is' if len(drafts) == 1 else 'are'} back.")
        just_left = queue_key(left, state.get("queue_sha256")) if left else None  # said above
        older = sum(len(entry["drafts"]) for key, entry in other_drafts.items()
                    if key.split(":", 1)[1] == name and key != just_left)
        if older:
            notes.append(f"Your {plural(older, 'unsaved draft')} in an earlier version of {name} "
                         f"{'stays' if older == 1 else 'stay'} aside: the file has changed since, and its case ids "
                         "may name other lesions now.")
        other_drafts, dropped = cap_aside(other_drafts)
        if dropped:
            notes.append(f"Unsaved drafts in {', '.join(dropped)} were dropped: drafts are kept for at most "
                         f"{MAX_OTHER_QUEUES} other queue files and {MAX_DRAFTS_ASIDE} drafts.")
        drafts = {**drafts, **uploads}
    if state.get("dropped_draft"):  # the last move's keep_draft dropped it; the new state forgets the key
        notes.append(dropped_message(state["dropped_draft"]))
    state = {**new_state(), "owner": state.get("owner"), "all": cases, "queue_sha256": digest, "queue_file": name,
             "filters": {**NO_FILTERS, "split": split}, "drafts": drafts, "other_drafts": other_drafts}
    state = apply_filters(state, log, reviewer)
    return state, queue_table(state, log, reviewer), " ".join([f"Opened {len(queue)} cases.", *notes,
                                                                view_status(state)])


def queue_key(name: str, sha256: str | None) -> str:
    """Which queue a set of put-aside drafts belongs to: its file, as it was (a changed file's case
    ids may name other cases)."""
    return f"{sha256}:{name}"


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


SESSIONS = "reviewer_sessions"


def _session_file(folder: Path, reviewer: str) -> Path:
    return folder / SESSIONS / f"{hashlib.sha256(reviewer.encode()).hexdigest()[:32]}.json"


_SESSION_FILES = threading.Lock()  # one reviewer's tabs write the same file: read, merge and write as one step


def _read_record(folder: Path, reviewer: str) -> dict:
    try:
        record = json.loads(_session_file(folder, reviewer).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def merged_aside(state: ReviewSession, record: dict) -> dict[str, dict]:
    """The drafts put aside, as this tab knows them and as the server's file has them (written by
    this reviewer's other tabs, or before a reload): per queue file the copy put aside last wins,
    the server's open queue counts as put aside when it was written, and the queue this tab has
    open is left out (its drafts are the tab's own)."""
    aside = clean_aside(record.get("other_drafts"))
    written_at = finite_time(record.get("written_at"))
    if isinstance(record.get("queue_file"), str) and written_at is not None:
        key = queue_key(record["queue_file"], record.get("queue_sha256"))
        if key not in aside or aside[key]["at"] < written_at:
            aside[key] = {"at": written_at, "drafts": clean_drafts(record.get("drafts"))}
    for key, entry in clean_aside(state.get("other_drafts")).items():  # a tie goes to this tab: it acts now
        if key not in aside or aside[key]["at"] <= entry["at"]:
            aside[key] = entry
    if state.get("queue_file"):
        aside.pop(queue_key(state["queue_file"], state.get("queue_sha256")), None)
    return dict(sorted(aside.items(), key=lambda item: item[1]["at"]))


def with_server_drafts(state: ReviewSession, folder: Path, reviewer: str | None) -> ReviewSession:
    """The state with the drafts this reviewer put aside in other tabs or before a reload (see
    :func:`merged_aside`): what opening a queue looks in for that queue's drafts."""
    if not reviewer:
        return state
    with _SESSION_FILES:
        return {**state, "other_drafts": merged_aside(state, _read_record(folder, reviewer))}


def remember(state: ReviewSession, folder: Path, reviewer: str | None) -> None:
    """Keep this reviewer's queue, order, filters and open case on the server (a page reload or
    another browser picks them up with :func:`restore`), and every draft put aside, this tab's
    merged with the server's (another tab's, or those of a queue a reload could not reopen)."""
    if not reviewer or not state.get("queue_file"):
        return
    case = state.get("case") or {}
    with _SESSION_FILES:
        aside, _ = cap_aside(merged_aside(state, _read_record(folder, reviewer)))
        record = {"queue_file": state["queue_file"], "queue_sha256": state.get("queue_sha256"),
                  "order": [c["case_id"] for c in state["all"]], "filters": state["filters"],
                  "case_id": case.get("case_id") if case.get("source") != "upload" else None,
                  "uncertainty": state["uncertainty"], "predicted": state["predicted"],
                  "drafts": state.get("drafts", {}), "written_at": time.time(),
                  "other_drafts": aside}
        kept_on_disk(_session_file(folder, reviewer), json.dumps(record, ensure_ascii=False),
                     "Your place in this queue was not kept on the server (it comes back on reload only once kept)")


def kept_on_disk(path: Path, text: str, what_failed: str) -> bool:
    """Write a file the app can do without (a reviewer's place, a score cache): on a full or
    failing disk the reviewer is told in words and nothing half-written is left behind."""
    try:
        write_atomically(path, text)
        return True
    except OSError as err:
        reason = "its disk is full" if err.errno in (errno.ENOSPC, errno.EDQUOT) else "it could not write the file"
        gr.Warning(f"{what_failed}: {reason}. Please tell the administrator.")
        return False


def restore(state: ReviewSession, folder: Path, root: Path | None, log: CorrectionsLog,
            reviewer: str | None) -> ReviewSession | None:
    """This reviewer's remembered queue, reopened from its file (still in the queue folder and
    unchanged, else nothing), in the remembered order with the same filters and open case."""
    if not reviewer or root is None:
        return None
    try:
        record = _read_record(folder, reviewer)
        name = record["queue_file"]
        if name not in list_queues(root):
            return None
        opened, _, _ = open_queue_handler(state, str(root / name), root, log, reviewer, name)
    except (OSError, ValueError, KeyError, TypeError, gr.Error):
        return None
    if opened["queue_sha256"] != record.get("queue_sha256"):
        return None  # the file changed: its old order and position mean nothing now
    try:  # a record written by hand or by an older app: what cannot be read starts from the defaults
        rank = {case_id: i for i, case_id in enumerate(record.get("order") or [])}
        opened["all"] = sorted(opened["all"], key=lambda c: rank.get(c["case_id"], len(rank)))
        opened["uncertainty"] = {str(k): float(v) for k, v in (record.get("uncertainty") or {}).items()}
        opened["predicted"] = {str(k): str(v) for k, v in (record.get("predicted") or {}).items()}
    except (AttributeError, TypeError, ValueError, OverflowError):
        opened["uncertainty"], opened["predicted"] = {}, {}
    opened["drafts"] = clean_drafts(record.get("drafts"))
    opened["other_drafts"] = cap_aside(clean_aside(record.get("other_drafts")))[0]
    at = next((c for c in opened["all"] if c["case_id"] == record.get("case_id")), None)
    if at is not None:
        opened = _open_case(opened, dict(at))
    try:
        return apply_filters(opened, log, reviewer, record.get("filters"))
    except gr.Error:  # filters that no longer apply (e.g. predicted, without scores): the defaults
        return apply_filters(opened, log, reviewer)


SCORE_BATCH = 32
"""Cases scored per step of "least sure first" (one model call of a few pairs each, then the
model is free for other requests)."""


def queue_scores(state: ReviewSession, predictor: Predictor, cache: Path, root: Path | None, progress=None) -> dict[str, float]:
    """Case id -> (uncertainty, predicted diagnosis) for every case of the queue view, from the
    disk cache where this queue file and checkpoint scored it before (by anyone); the rest are
    scored in batches and added to the cache."""
    key = f"{state.get('queue_sha256', 'unknown')[:20]}-{predictor.checkpoint_sha256[:20] or predictor.card.name}-1view-v2"
    path = cache / f"{key}.json"
    try:
        scores = json.loads(path.read_text())
    except (OSError, ValueError):
        scores = {}
    queue = [c for c in state["queue"] if c["case_id"] not in scores]  # cases already scored are kept
    if not queue:
        return scores
    for start in range(0, len(queue), SCORE_BATCH):
        if progress is not None:
            progress((start, len(queue)), desc="scoring cases (shared by every reviewer once done)")
        chunk = queue[start:start + SCORE_BATCH]
        pairs = [case_images(c, root) for c in chunk]
        # one view, not the card's flips: a ranking needs a quarter of the work (out of fold on
        # Derm7pt the flips move the shipped recipe's average by 0.06 points)
        for case, prediction in zip(chunk, predictor.predict_batch(pairs, tta=False)):
            diagnosis = prediction.heads[prediction.primary_head].classes["DIAG"]
            scores[case["case_id"]] = [uncertainty(prediction), diagnosis]
    kept_on_disk(path, json.dumps(scores), "The queue's scores were not kept for the next reviewer")
    return scores


def order_by_uncertainty(state: ReviewSession, predictor: Predictor, log: CorrectionsLog, reviewer: str | None,
                         root: Path | None, progress=None):
    """Sort the queue so that the cases the model is least sure of come first, and open the
    first of them you have not reviewed (``n`` then follows this order)."""
    if not state["queue"]:
        raise gr.Error("Open a queue first.")
    try:
        scores = queue_scores(state, predictor, log.folder / "queue_scores", root, progress)
    except ImageError as err:
        raise gr.Error(str(err)) from None
    uncertainty_of = {case: float(value[0]) for case, value in scores.items()}
    state = {**state, "uncertainty": uncertainty_of, "predicted": {case: value[1] for case, value in scores.items()},
             # the whole file in this order (unscored cases, outside the view, last) and the view again
             "all": sorted(state["all"], key=lambda c: -uncertainty_of.get(c["case_id"], -1.0))}
    state = apply_filters(state, log, reviewer)
    queue = state["queue"]
    done = log.reviewed_cases(reviewer) if reviewer else {}
    first = next((i for i, c in enumerate(queue) if c["case_id"] not in done), 0)
    state = _open_case({**state, "index": first}, dict(queue[first]))
    return (state, queue_table(state, log, reviewer),
            f"Ordered by model uncertainty (least sure first); opened case {queue[first]['case_id']}, "
            "the least sure one you have not reviewed.")


def open_case_id(state: ReviewSession, case_id) -> ReviewSession:
    """Open the queue's case with this id (a click on a row of the queue table)."""
    if not state["queue"]:
        raise gr.Error("Open a queue first.")
    index = next((i for i, c in enumerate(state["queue"]) if isinstance(case_id, str) and c["case_id"] == case_id),
                 None)
    if index is None:
        raise gr.Error("No such case in the open queue.")
    return _open_case({**state, "index": index}, dict(state["queue"][index]))


def step_target(state: ReviewSession, step: str, done: dict[str, str]) -> int | None:
    """Where ``step`` (prev, next, next unreviewed) leads from the open case: an index of the queue
    view, or None when every case has this reviewer's review (``done``)."""
    queue, index = state["queue"], state["index"]
    if step == "prev":
        return 0 if index is None else max(index - 1, 0)
    if step == "next":
        return 0 if index is None else min(index + 1, len(queue) - 1)
    if step == "next unreviewed":
        start = -1 if index is None else index
        order = list(range(start + 1, len(queue))) + list(range(0, start + 1))
        return next((i for i in order if queue[i]["case_id"] not in done), None)
    raise ValueError(step)


def move(state: ReviewSession, step: str, log: CorrectionsLog, reviewer: str | None) -> ReviewSession:
    """Open the previous, next, or next case this reviewer has not reviewed."""
    if not state["queue"]:
        raise gr.Error("Open a queue first.")
    target = step_target(state, step, log.reviewed_cases(reviewer) if reviewer else {})
    if target is None:
        raise gr.Error("Every case of this queue has your review.")
    return _open_case({**state, "index": target}, dict(state["queue"][target]))


def cases_ahead(state: ReviewSession, log: CorrectionsLog, reviewer: str | None) -> list[dict]:
    """The cases that ``n`` and the right arrow open from here (usually one): worth preparing now."""
    if not state["queue"] or state.get("index") is None:
        return []
    done = log.reviewed_cases(reviewer) if reviewer else {}
    done = {**done, state["case"]["case_id"]: "(this one)"}  # saving it is what the reviewer is doing
    targets = [step_target(state, step, done) for step in ("next unreviewed", "next")]
    return [state["queue"][i] for i in dict.fromkeys(t for t in targets if t is not None and t != state["index"])]


def start_upload_case(state: ReviewSession, clinical: str | None, dermoscopy: str | None) -> ReviewSession:
    """Images uploaded by hand become a case of their own (id from their pixels' hash)."""
    if not (clinical or dermoscopy):
        return {**state, "case": None, "event_id": None}
    hashes = [pixel_sha256(load_rgb(p)) if p else "" for p in (clinical, dermoscopy)]
    # one image alone names its slot: the same picture as a clinical photo and as a dermoscopy
    # image is two readings, not one
    digest = (f"{hashes[0][:12]}-{hashes[1][:12]}" if all(hashes)
              else f"clinical-{hashes[0][:12]}" if hashes[0] else f"dermoscopy-{hashes[1][:12]}")
    case = {"case_id": f"upload:{digest}", "clinical": clinical, "dermoscopy": dermoscopy, "source": "upload"}
    return {**_open_case({**state, "index": None}, case), "shown_images": hashes}


def with_shown_images(state: ReviewSession, images: tuple) -> ReviewSession:
    """The state once the open case's images (clean RGB, None for none) went to the page: a save
    is refused if the server's images of the case are no longer these."""
    return {**state, "shown_images": image_hashes(images)}


def image_hashes(images: tuple) -> list[str]:
    return [pixel_sha256(image) if image is not None else "" for image in images]


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


MAX_DRAFTS = 200
"""Drafts kept per reviewer and queue file (the oldest go first)."""
MAX_OTHER_QUEUES = 20
"""Queue files left for another whose drafts are kept (the one left longest ago goes first)."""
MAX_DRAFTS_ASIDE = 400
"""Drafts kept over all the queue files left (a reviewer's server-side file stays a few MB at most)."""
MAX_EMPTY_ASIDE = 50
"""Queue files left with no draft that are remembered as such (see :func:`cap_aside`)."""


MADE_BEFORE_BASES = "made before drafts had a base"
"""The base of a draft kept by an older app: it changed whatever was saved then, and is shown as before."""


def make_draft(values: tuple, newest_save: str | None) -> dict:
    """A draft: the form's values and the event id of the reviewer's newest save of the case when
    it was made (None: none), so a review saved since (in another queue or tab) is not
    overwritten by an older draft."""
    return {"form": list(values), "base": newest_save}


def clean_draft(draft) -> dict | None:
    """A draft as read back from the server's file or the tab: None unless the form could hold it.
    A bare list (a draft kept by an older app) gets the base MADE_BEFORE_BASES."""
    if isinstance(draft, list):
        draft = {"form": draft, "base": MADE_BEFORE_BASES}
    if not isinstance(draft, dict) or not isinstance(draft.get("base"), (str, type(None))):
        return None
    form = clean_form(draft.get("form"))
    return None if form is None else {"form": list(form), "base": draft["base"]}


def is_stale(draft: dict, newest_save: str | None) -> bool:
    """Whether the reviewer saved a review of the case after the draft was made (elsewhere:
    another queue naming the same case, another tab), ``newest_save`` being the event id of their
    newest save, withdrawn or not: the draft must not be shown over it."""
    return draft["base"] != MADE_BEFORE_BASES and draft["base"] != newest_save


def clean_drafts(drafts) -> dict[str, dict]:
    """Drafts read back from the server's file: only forms the page could have sent, at most MAX_DRAFTS."""
    if not isinstance(drafts, dict):
        return {}
    kept = {str(k): d for k, d in ((k, clean_draft(v)) for k, v in drafts.items()) if d is not None}
    return dict(list(kept.items())[-MAX_DRAFTS:])


def clean_aside(aside) -> dict[str, dict]:
    """Drafts put aside, read back: queue_key -> {"at", "drafts"} (an older file's bare drafts count
    as put aside long ago)."""
    if not isinstance(aside, dict):
        return {}
    kept = {}
    for key, entry in aside.items():
        if isinstance(entry, dict) and set(entry) == {"at", "drafts"}:
            at = finite_time(entry["at"])
            if at is not None:
                kept[str(key)] = {"at": at, "drafts": clean_drafts(entry["drafts"])}
        elif isinstance(entry, dict):
            kept[str(key)] = {"at": 0.0, "drafts": clean_drafts(entry)}
    return kept


def finite_time(value) -> float | None:
    """A time read back from a file, or None for anything else (text, a bool, inf, 10**400)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        value = float(value)
    except OverflowError:
        return None
    return value if math.isfinite(value) else None


def cap_aside(aside: dict[str, dict]) -> tuple[dict[str, dict], list[str]]:
    """At most MAX_OTHER_QUEUES queue files and MAX_DRAFTS_ASIDE drafts put aside, those left longest
    ago dropped first; returns what stays and the names of the files whose drafts were dropped.
    Of the files left with no draft (kept so that an older copy of their drafts, another tab's,
    cannot come back) the last MAX_EMPTY_ASIDE stay."""
    order = sorted(aside, key=lambda key: aside[key]["at"])
    empty = [k for k in order if not aside[k]["drafts"]]
    for key in empty[:max(0, len(empty) - MAX_EMPTY_ASIDE)]:
        order.remove(key)
    dropped = []
    while (sum(bool(aside[k]["drafts"]) for k in order) > MAX_OTHER_QUEUES
           or sum(len(aside[k]["drafts"]) for k in order) > MAX_DRAFTS_ASIDE):
        key = next(k for k in order if aside[k]["drafts"])
        order.remove(key)
        dropped.append(key.split(":", 1)[1])
    return {k: aside[k] for k in order}, dropped


def clean_form(values) -> tuple | None:
    """The review form's values as sent by a browser (verdict, the 8 corrections, confidence,
    note, its line breaks as the log keeps them: spaces), or None when they are not values the
    form can hold (a raw call)."""
    if not isinstance(values, (list, tuple)) or len(values) != len(TASKS) + 3:
        return None
    verdict, *corrected, confidence, note = values
    if verdict not in (None, *VERDICTS) or confidence not in (None, 1, 2, 3, 4, 5) or isinstance(confidence, bool):
        return None
    if not isinstance(note, (str, type(None))) or len(note or "") > MAX_NOTE or not _storable(note or ""):
        return None
    if any(not isinstance(v, str) or (v != NO_CHANGE and not is_answer(t, v)) for t, v in zip(TASKS, corrected)):
        return None
    return (verdict, *corrected, confidence, one_line(note or ""))  # compared with what the log gives back


def _storable(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:  # a lone surrogate: no file or page can carry it
        return False


def shown(state: ReviewSession, values: tuple | None = None, saved: dict | None = None) -> ReviewSession:
    """The state as its case's form and token go to the page (what :func:`form_case` checks a form
    against). ``values``: the form sent; when it is the saved review ``saved`` (or the blank form
    and nothing saved), it is remembered as ``shown_review``: a page that shows an older review
    because another tab saved since has no unsaved changes (:func:`keep_draft`, :func:`undo_last_save`)."""
    case_id = (state.get("case") or {}).get("case_id")
    if not (case_id and state.get("event_id")):
        return state
    as_saved = list(values) if values is not None and tuple(values) == form_values(saved) else None
    return {**state, "shown": [state["event_id"], case_id], "shown_review": as_saved}


def review_shown(state: ReviewSession, case_id: str) -> tuple | None:
    """The saved review's form values the page got with ``case_id`` (None: it got a draft, or another case)."""
    shown_case = (state.get("shown") or [None, None])[1]
    as_saved = state.get("shown_review")
    return tuple(as_saved) if shown_case == case_id and isinstance(as_saved, list) else None


def form_case(state: ReviewSession, token) -> str | None:
    """Whose values a form sent with this case token holds: the open case's when the token is its;
    the case last shown on the page when a case opened since never reached it (its showing
    failed: the page still shows the case before); None for a form sent before the page had
    the case it names (a quick second move: that case's values went with the first one)."""
    if not isinstance(token, str) or not token:
        return None
    if token == state.get("event_id"):
        return (state.get("case") or {}).get("case_id")
    last_token, last_case = (state.get("shown") or [None, None])[:2]
    return last_case if token == last_token else None


def keep_draft(state: ReviewSession, values, log: CorrectionsLog, reviewer: str | None,
               case_id: str | None = None) -> ReviewSession:
    """Before the reviewer leaves a case: the form's values become the draft of ``case_id`` (by
    default the open case) when they differ from what is saved (the latest review, or the blank
    form) and from the saved review the page was given with the case, and any draft of it goes
    when they do not. ``left_draft`` names the case left with a
    draft, for the next message."""
    case_id = case_id or (state.get("case") or {}).get("case_id")
    if not reviewer or not case_id:
        return {**state, "left_draft": None, "dropped_draft": None}
    values = clean_form(values)
    drafts = dict(state.get("drafts") or {})
    # a form as the page got it is no change, though another tab may have saved a newer review since
    unsaved = (values is not None and values != form_values(log.latest_review(reviewer, case_id))
               and values != review_shown(state, case_id))
    drafts.pop(case_id, None)
    dropped = None
    if unsaved:
        drafts[case_id] = make_draft(values, log.newest_save(reviewer, case_id))
        while len(drafts) > MAX_DRAFTS:
            dropped = next(iter(drafts))
            drafts.pop(dropped)
    return {**state, "drafts": drafts, "left_draft": case_id if unsaved else None, "dropped_draft": dropped}


def dropped_message(case_id: str) -> str:
    return (f"Drafts are kept for at most {MAX_DRAFTS} cases of a queue file: the oldest, of case {case_id}, "
            "is dropped.")


def form_for_case(state: ReviewSession, saved: dict | None, newest_save: str | None) -> tuple[tuple, str]:
    """(the form's values, the status line) for the case just opened: its draft if the reviewer
    left unsaved changes in it (and saved nothing newer), else the saved review or a blank form;
    the line also says where the draft of the case just left is."""
    case_id = (state.get("case") or {}).get("case_id")
    draft = clean_draft((state.get("drafts") or {}).get(case_id))
    lines = []
    left = state.get("left_draft")
    if left and left != case_id:
        lines.append(f"Your unsaved changes to case {left} are kept as a draft: open it again to finish.")
    if state.get("dropped_draft"):
        lines.append(dropped_message(state["dropped_draft"]))
    if draft is not None and is_stale(draft, newest_save):
        lines.append("Your unsaved draft of this case was older than the review you saved since (in another queue "
                     "or tab): it is dropped, and the saved review is shown.")
    elif draft is not None and tuple(draft["form"]) != form_values(saved):
        lines.append("✎ Draft: your unsaved changes to this case from before, not saved yet: press Save (Enter) "
                     "to keep them.")
        return tuple(draft["form"]), " ".join(lines)
    if saved:
        lines.append(f"Showing your saved review ({saved['verdict']}, {saved['logged_at'][:16].replace('T', ' ')} "
                     "UTC): change it and save to replace it.")
    return form_values(saved), " ".join(lines)


def save_review(state: ReviewSession, predictor: Predictor, log: CorrectionsLog, reviewer: str | None,
                clinical: Image | None, dermoscopy: Image | None, verdict: str | None,
                corrected: dict[str, str], confidence: int | None, note: str,
                prediction_shown: bool = True) -> tuple[dict, str]:
    """Append the open case's review to the log. Saving what is already your latest review of
    the case logs nothing; a changed review appends a row that supersedes the earlier one.

    Refused, with what to do instead: a review whose verdict does not fit its labels ("correct"
    without a change, "agree" with one, "unsure" or "skip" with labels picked: they would be
    dropped unsaid), and "agree" while the lesion check hides the prediction and the page was not
    told to show it anyway (``prediction_shown``): it would confirm labels nobody saw.

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
    if not _storable(note or ""):  # a lone surrogate: it cannot be written, so refuse before any image is stored
        raise gr.Error("The note has characters that cannot be stored; retype it.")
    if verdict == "correct" and not changed:
        raise gr.Error("Verdict 'correct' needs at least one corrected label (or choose 'agree').")
    if verdict == "agree" and changed:
        raise gr.Error("Verdict 'agree' with corrected labels: choose 'correct' instead.")
    if verdict in ("unsure", "skip") and changed:
        if not all(is_answer(task, changed[task.name]) for task in TASKS if task.name in changed):
            raise gr.Error("Corrections must be class names or 'no change'.")
        picked = ", ".join(f"{task.name} {changed[task.name]}" for task in TASKS if task.name in changed)
        raise gr.Error(f"Verdict '{verdict}' keeps no labels, and you picked {picked}: choose 'correct' to save "
                       "them, or set them back to 'no change'.")
    if state.get("shown_images") != image_hashes((clinical, dermoscopy)):
        raise gr.Error("The case's images changed on the server since they were shown (its queue file's images "
                       "were replaced); nothing was saved. Open the case again to see its images now, then save.")
    prediction = predictor.predict(clinical, dermoscopy)
    flattened = one_line(note or "")
    review = Review(
        event_id=state["event_id"], reviewer=reviewer, case_id=state["case"]["case_id"],
        source=state["case"]["source"], verdict=verdict,
        predicted=prediction.heads[prediction.primary_head].classes,
        corrected={t.name: corrected.get(t.name) or NO_CHANGE for t in TASKS},
        model_version=predictor.version, checkpoint_sha256=predictor.checkpoint_sha256,
        seconds_spent=time.time() - (state.get("opened_at") or time.time()),
        confidence=confidence if confidence not in (None, "") else None, note=flattened)
    previous = log.latest_review(reviewer, review.case_id)
    checks = prediction.checks
    hidden = checks is not None and not checks.trustworthy and prediction_shown is not True
    if verdict == "agree" and hidden and not (previous is not None and review.same_answer(previous)):
        shown_by = ("'They are right as they are' or 'Swap the images'" if checks.swapped
                    else "'Show the prediction anyway'")
        raise gr.Error(f"The prediction of this case is hidden until you press {shown_by}: 'agree' would confirm "
                       f"labels you have not seen. Press {'one' if checks.swapped else 'it'} first, or choose "
                       "another verdict.")
    # the log's size enters the id: after an undo the same answer is a new save, not a repeat
    review.event_id = content_event_id(state["event_id"], previous["event_id"] if previous else "",
                                       len(log.event_ids()), verdict, review.corrected, review.confidence,
                                       review.note)
    try:  # the log checks its rules (one case per id, the teaching lock) against every writer, under its lock
        logged = log.append(review, clinical, dermoscopy)
    except CorrectionsError as err:
        raise gr.Error(str(err)) from None
    if not logged:
        return state, f"Already saved: your review of case {review.case_id} is unchanged (logged once)."
    replaced = " (replaces your earlier review of this case)" if previous is not None else ""
    lines = " The note's line breaks are saved as spaces." if flattened != (note or "") else ""
    return state, f"Saved: {verdict} for case {review.case_id} ({review.seconds_spent:.0f} s){replaced}.{lines}"


def undo_last_save(state: ReviewSession, log: CorrectionsLog, reviewer: str | None,
                   form=None) -> tuple[str, dict | None, bool]:
    """Withdraw your latest review of the open case with an appended retraction row (the log
    stays append-only; readers drop both). Returns (message, the review that now stands, whether
    anything was undone): an undo with nothing to withdraw is a message, not an error, so the form
    keeps what it shows.

    ``form``: the values the page shows (verdict, the 8 corrections, confidence, note). The undo
    withdraws the latest review only when the page shows it: after another tab saved or undid,
    or with unsaved changes in the form, the page's Undo would act on a review it does not
    show, so it is refused with a message. None (a library caller): no such check."""
    if reviewer is None:
        raise gr.Error("Undo needs a signed-in reviewer.")
    case = state.get("case")
    if case is None:
        return "Nothing to undo: no case is open.", None, False
    latest = log.latest_review(reviewer, case["case_id"])
    if latest is None:
        return f"Nothing to undo: you have no saved review of case {case['case_id']}.", None, False
    on_page = clean_form(form) if form is not None else None
    if form is not None and on_page != form_values(latest):
        latest_said = f"your {latest['verdict']} review of {latest['logged_at'][:16].replace('T', ' ')} UTC"
        if on_page is not None and on_page == review_shown(state, case["case_id"]):
            return (f"Not undone: another tab or window saved or undid a review of case {case['case_id']} since "
                    f"this page showed it; {latest_said} stands. Open the case again to see it, then undo if you "
                    "still want to."), None, False
        return (f"Not undone: the form has unsaved changes to {latest_said} of case {case['case_id']}. Set the "
                "fields back to it to undo it, or save your changes to replace it."), None, False
    predicted = {t.name: latest[f"model_{t.name}"] for t in TASKS}
    retraction = Review(event_id=content_event_id(RETRACT, latest["event_id"]), reviewer=reviewer,
                        case_id=case["case_id"], source=latest["source"], verdict=RETRACT, predicted=predicted,
                        corrected={}, model_version=latest["model_version"],
                        checkpoint_sha256=latest["checkpoint_sha256"], note=latest["event_id"])
    try:  # the log refuses it after a teaching reveal
        log.append(retraction, images={"clinic": (latest["clinic"], latest["clinic_sha256"]),
                                       "derm": (latest["derm"], latest["derm_sha256"])})
    except CorrectionsError as err:
        return f"Not undone: {err}", None, False
    standing = log.latest_review(reviewer, case["case_id"])
    back = f"your earlier review ({standing['verdict']}) stands again" if standing else "the case is unreviewed by you"
    return f"Undone: your {latest['verdict']} review of case {case['case_id']} is withdrawn; {back}.", standing, True


def load_case_images(state: ReviewSession, root: Path | None) -> tuple:
    """The open case's images as clean RGB images (None where the case has none)."""
    try:
        return case_images(state.get("case") or {}, root)
    except ImageError as err:
        raise gr.Error(str(err)) from None


def reveal_reference(state: ReviewSession, log: CorrectionsLog, reviewer: str | None) -> str:
    """For teaching: the open Derm7pt case's reference labels next to the reviewer's own, once
    the reviewer has saved a labelled review of it (never before). The reveal is recorded in the
    log first, and the log then refuses the reviewer's later changes to the case and to its images
    under any case id."""
    case = state.get("case") or {}
    reference = case.get("reference") or ()
    if not reviewer or case.get("source") != "derm7pt" or len(reference) != len(TASKS):
        return "(Reference labels exist only for the cases of a Derm7pt queue.)"
    saved = log.latest_review(reviewer, case["case_id"])
    if saved is None or saved["source"] != "derm7pt" or saved["verdict"] not in LABELLED_VERDICTS:
        return "(The reference labels are shown after you save an 'agree' or 'correct' review of the case.)"
    try:
        log.record_reveal(reviewer, case["case_id"], saved)
    except CorrectionsError as err:  # not recorded: not shown either
        return f"(The reference labels are not shown: {err})"
    yours = task_labels(saved)
    lines = ["**Derm7pt reference labels** of all 8 tasks (teaching; your later changes to this case and an "
             "undo are refused)", "",
             "| task | reference | yours | |", "|---|---|---|---|"]
    for task, truth in zip(TASKS, reference):
        mine = yours.get(task.name)
        mark = "" if mine is None else ("✓" if mine == truth else "✗")
        lines.append(f"| {task.name} | {truth} | {mine or 'not reviewed'} | {mark} |")
    matched = sum(yours.get(t.name) == truth for t, truth in zip(TASKS, reference))
    lines += ["", f"{matched} of {len(yours)} labelled tasks match the reference."]
    return "\n".join(lines)
