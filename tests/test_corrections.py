"""The corrections log: schema, idempotence, injection safety, concurrent writers, crashes."""
import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from app_helpers import jpeg_with_gps
from skinnet.corrections import (BASE_COLUMNS, COLUMNS, CorrectionsError, CorrectionsLog, Review, neutralise,
                                 current_labels, export_meta_csv, new_event_id, read_corrections, read_events,
                                 task_labels)
from skinnet.imaging import load_rgb
from skinnet.labels import TASKS
from skinnet_testkit.reviews import PREDICTED, review

def test_rows_store_what_the_reviewer_said_task_by_task(tmp_path):
    log = CorrectionsLog(tmp_path)
    assert log.append(review("agree", case_id="1"))
    assert log.append(review("correct", case_id="2", DIAG="MEL", PN="TYP", VS="dotted"))
    assert log.append(review("skip", case_id="3"))
    frame = pd.read_csv(log.path, dtype=str, keep_default_na=False)
    assert list(frame.columns) == list(COLUMNS)
    assert frame["model_DIAG"].tolist() == ["NEV"] * 3
    # agree confirms every task; under correct a task left at "no change" is not reviewed
    assert frame["DIAG"].tolist() == ["NEV", "MEL", ""]
    assert frame["status_DIAG"].tolist() == ["confirmed", "changed", ""]
    assert frame["status_PN"].tolist() == ["confirmed", "confirmed", ""]  # picked the model's class
    assert frame["STR"].tolist() == ["ABS", "", ""] and frame["status_STR"].tolist()[1] == "not reviewed"
    assert frame["VS"].tolist() == ["ABS", "IR", ""]
    # a fine Derm7pt value only where the reviewer picked one: nothing invented from a class
    assert frame["diagnosis"].tolist() == ["", "", ""]
    assert frame["vascular_structures"].tolist() == ["", "dotted", ""]
    rows, problems = read_corrections(log.path)
    assert len(rows) == 3 and problems == []
    assert task_labels(rows[1]) == {"DIAG": "MEL", "PN": "TYP", "VS": "IR"}


def test_a_first_version_log_is_read_as_upgraded_and_never_rewritten(tmp_path):
    """Logs written before per-task status: raw values were invented for every task, so the
    class stays (confirmed or changed) and the invented raw value goes. The file stays as it was:
    new rows go to a writer's own shard."""
    header = [*BASE_COLUMNS, *(f"model_{t.column}" for t in TASKS), *(t.column for t in TASKS)]
    model = ["clark nevus", "typical", "absent", "diffuse regular", "absent", "regular", "absent", "absent"]
    base = {"logged_at": "2026-01-01T00:00:00+00:00", "reviewer": "dr_a", "source": "derm7pt", "clinic": "",
            "clinic_sha256": "", "derm": "", "derm_sha256": "", "model_version": "v1", "checkpoint_sha256": "",
            "seconds_spent": "3.0", "confidence": "", "note": ""}
    first = {**base, "event_id": "a" * 32, "case_id": "7", "verdict": "correct"}
    second = {**base, "event_id": "b" * 32, "case_id": "8", "verdict": "agree"}
    lines = [",".join(header)]
    for row, labels in ((first, ["melanoma", *model[1:]]), (second, model)):
        lines.append(",".join([*(row[c] for c in BASE_COLUMNS), *model, *labels]))
    lines.append("cut,short")
    original = "\n".join(lines) + "\n"
    (tmp_path / "corrections.csv").write_text(original)
    rows, problems = read_corrections(tmp_path / "corrections.csv")
    assert [r["DIAG"] for r in rows] == ["MEL", "NEV"] and [r["status_DIAG"] for r in rows] == ["changed", "confirmed"]
    assert rows[0]["status_PN"] == "confirmed" and rows[0]["diagnosis"] == "" and len(problems) == 1
    log = CorrectionsLog(tmp_path)
    assert log.append(review("agree", case_id="9"))
    assert (tmp_path / "corrections.csv").read_text() == original  # byte for byte
    merged, problems = read_corrections(tmp_path)
    assert [r["case_id"] for r in merged] == ["7", "8", "9"] and [str(p) for p in problems] == [
        "corrections.csv line 4: expected 31 cells, found 2 cells"]
    assert list(pd.read_csv(log.path, dtype=str).columns) == list(COLUMNS)
    assert not log.append(review("agree", case_id="7", event_id="a" * 32))  # old event ids still count
    assert log.latest_review("dr_a", "7")["DIAG"] == "MEL"


def test_same_event_logs_once(tmp_path):
    log = CorrectionsLog(tmp_path)
    event = new_event_id()
    assert log.append(review(event_id=event)) is True
    assert log.append(review(event_id=event)) is False  # double click / retry
    assert len(read_corrections(log.path)[0]) == 1


def test_formula_cells_are_neutralised_and_restored(tmp_path):
    log = CorrectionsLog(tmp_path)
    r = review()
    r.note = '=HYPERLINK("http://x","click")\nsecond line'
    r.reviewer = "@admin"
    log.append(r)
    raw = log.path.read_text()
    assert "\n=HYPERLINK" not in raw and ",=HYPERLINK" not in raw and "'=HYPERLINK" in raw
    assert len(raw.strip().splitlines()) == 2  # one physical line per row
    row = read_corrections(log.path)[0][0]
    assert row["note"].startswith('=HYPERLINK') and row["reviewer"] == "@admin"


def test_bad_reviews_refused():
    with pytest.raises(CorrectionsError, match="verdict"):
        review("maybe").validate()
    for case_id in ("x\ny", "x\ry", "tab\there", "nul\x00", "c" * 201):  # saved as another id, or never saved
        with pytest.raises(CorrectionsError, match="case.id"):
            review(case_id=case_id).validate()
    with pytest.raises(CorrectionsError, match="DIAG correction 'XYZ'"):
        review("correct", DIAG="XYZ").validate()
    with pytest.raises(CorrectionsError, match="signed-in reviewer"):
        review(reviewer="").validate()


def test_images_stored_deidentified(tmp_path):
    log = CorrectionsLog(tmp_path / "log")
    photo = load_rgb(jpeg_with_gps(tmp_path / "jane_doe_back.jpg"))
    log.append(review(case_id="upload:1"), clinical=photo, dermoscopy=photo)
    row = read_corrections(log.path)[0][0]
    stored = tmp_path / "log" / row["clinic"]
    assert stored.name == f"{row['clinic_sha256']}.png"
    data = stored.read_bytes()
    assert b"PatientCam" not in data and b"Jane" not in data and b"Exif" not in data
    assert "jane" not in log.path.read_text().lower()
    assert Image.open(stored).size == photo.size


def test_bad_rows_reported_with_line_numbers(tmp_path):
    log = CorrectionsLog(tmp_path)
    log.append(review(case_id="1"))
    with open(log.path, "a") as handle:
        handle.write("just,three,cells\n")
        line = open(log.path).read().splitlines()[1].replace(",agree,", ",approve,")
        handle.write(line + "\n")
    log.append(review(case_id="4"))
    rows, problems = read_corrections(log.path)
    assert [r["case_id"] for r in rows] == ["1", "4"]
    assert [p.line for p in problems] == [3, 4]
    assert "expected" in problems[0].message and "unknown verdict" in problems[1].message
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(CorrectionsError, match="line 1: not a skinnet corrections header"):
        read_corrections(tmp_path / "other.csv")


def test_latest_and_majority_rules_and_export(tmp_path):
    log = CorrectionsLog(tmp_path)
    log.append(review("correct", "dr_a", "9", DIAG="MEL"))
    log.append(review("correct", "dr_b", "9", DIAG="MEL", PN="ATP"))
    log.append(review("correct", "dr_c", "9", DIAG="SK"))
    log.append(review("correct", "dr_a", "8", DIAG="BCC"))
    log.append(review("correct", "dr_a", "8", DIAG="SK"))  # supersedes dr_a's earlier review
    log.append(review("skip", "dr_b", "8"))                 # carries no labels
    log.append(review("correct", "dr_a", "6", DIAG="dermal nevus"))
    log.append(review("correct", "dr_b", "6", DIAG="MEL"))  # one against one: a tie
    rows, _ = read_corrections(log.path)
    latest = current_labels(rows, "latest")
    assert latest["9"].labels == {"DIAG": "SK", "PN": "ATP"}  # tasks nobody reviewed stay out
    assert latest["8"].labels == {"DIAG": "SK"} and latest["9"].disagreement == ["DIAG"]
    majority = current_labels(rows, "majority")
    assert majority["9"].labels["DIAG"] == "MEL" and majority["9"].ties == []
    assert "DIAG" not in majority["6"].labels and majority["6"].ties == ["DIAG"]  # flagged, not resolved
    assert latest["6"].labels["DIAG"] == "MEL"
    meta = pd.read_csv(export_meta_csv(rows, tmp_path / "meta.csv", "majority"), dtype=str,
                       keep_default_na=False).set_index("case_num")
    assert set(meta.index) == {"6", "8", "9"}
    assert meta.loc["9", "reviewers"] == "dr_a;dr_b;dr_c" and meta.loc["9", "n_reviewers"] == "3"
    assert meta.loc["9", "DIAG"] == "MEL" and meta.loc["9", "diagnosis"] == "" and meta.loc["9", "STR"] == ""
    assert meta.loc["9", "disagreement"] == "DIAG" and meta.loc["6", "ties"] == "DIAG" and meta.loc["6", "DIAG"] == ""
    fine = pd.read_csv(export_meta_csv(rows, tmp_path / "l.csv", "latest"), dtype=str, keep_default_na=False)
    assert fine.set_index("case_num").loc["6", "diagnosis"] == ""  # dr_b's MEL wins; dr_a's fine value is not MEL's
    log.append(review("correct", "dr_c", "6", DIAG="dermal nevus"))
    rows, _ = read_corrections(log.path)
    entry = current_labels(rows, "majority")["6"]
    assert entry.labels["DIAG"] == "NEV" and entry.fine["DIAG"] == "dermal nevus"


def test_a_status_that_contradicts_its_class_is_a_bad_row(tmp_path):
    log = CorrectionsLog(tmp_path)
    log.append(review("correct", case_id="1", DIAG="MEL"))
    text = log.path.read_text().replace(",changed,", ",confirmed,", 1)
    log.path.write_text(text)
    rows, problems = read_corrections(log.path)
    assert rows == [] and "status 'confirmed' does not fit class MEL" in problems[0].message


WRITER = """
import sys
from skinnet_testkit.reviews import review
from skinnet.corrections import CorrectionsLog
log = CorrectionsLog(sys.argv[1])
worker = int(sys.argv[2])
for i in range(int(sys.argv[4])):
    log.append(review(reviewer=f"dr_{worker}", case_id=f"{worker}-{i}", event_id=f"{worker:02d}{i:04d}" + "0" * 26))
"""


def run_writers(folder: Path, n_workers: int, n_rows: int) -> list[subprocess.Popen]:
    script = folder / "writer.py"
    script.write_text(WRITER)
    tests = Path(__file__).parent
    return [subprocess.Popen([sys.executable, str(script), str(folder / "log"), str(w), str(tests), str(n_rows)])
            for w in range(n_workers)]


def test_eight_processes_fifty_reviews_each(tmp_path):
    writers = run_writers(tmp_path, 8, 50)
    assert all(w.wait(timeout=300) == 0 for w in writers)
    rows, problems = read_corrections(tmp_path / "log")
    assert problems == []
    assert len(rows) == 400
    assert len({r["event_id"] for r in rows}) == 400
    assert sorted(r["case_id"] for r in rows) == sorted(f"{w}-{i}" for w in range(8) for i in range(50))
    for w in range(8):  # each writer's rows in the order it wrote them
        assert [r["case_id"] for r in rows if r["reviewer"] == f"dr_{w}"] == [f"{w}-{i}" for i in range(50)]
    shards = list((tmp_path / "log" / "shards").glob("*.csv"))
    assert len(shards) == 8  # one file per writer: nobody appends to another's
    for shard in shards:
        with open(shard, newline="") as handle:
            assert {len(cells) for cells in csv.reader(handle)} == {len(COLUMNS)}  # no interleaved lines


def test_writer_killed_mid_write_leaves_a_readable_file(tmp_path):
    writers = run_writers(tmp_path, 2, 100000)
    folder = tmp_path / "log"
    deadline = time.time() + 120
    while time.time() < deadline and sum(p.read_bytes().count(b"\n") for p in folder.glob("shards/*.csv")) < 30:
        time.sleep(0.2)
    for w in writers:
        w.send_signal(signal.SIGKILL)
        w.wait()
    before, problems = read_corrections(folder)
    assert len(before) > 0 and all(p.message.startswith("row cut short") for p in problems)
    # a crash can also cut a row mid-line (e.g. a full disk): simulate the worst case
    shard = sorted(folder.glob("shards/*.csv"))[0]
    with open(shard, "a") as handle:
        handle.write('deadbeef,2026-01-01,dr_x,"unterminated quote')
    log = CorrectionsLog(folder)
    assert log.append(review(case_id="after-crash"))
    rows, problems = read_corrections(folder)
    assert [r["case_id"] for r in rows] == [r["case_id"] for r in before] + ["after-crash"]
    assert [p.file for p in problems if "unterminated" in p.message or "cut short" in p.message] in (
        [shard.relative_to(folder).as_posix()], [shard.relative_to(folder).as_posix()] * 2)
    # the next writer to open that file closes the cut row before its own (never joined to it)
    relog = CorrectionsLog(folder)
    relog.path = shard
    assert relog.append(review(case_id="after-cut"))
    rows, problems = read_corrections(folder)
    assert rows[-1]["case_id"] == "after-cut" and any(p.file == shard.relative_to(folder).as_posix()
                                                     and "cells" in p.message for p in problems)


def test_command_line_export_and_check(tmp_path):
    log = CorrectionsLog(tmp_path)
    log.append(review("correct", case_id="5", DIAG="BCC"))
    out = tmp_path / "labels.csv"
    result = subprocess.run([sys.executable, "-m", "skinnet.corrections", "export", str(log.path), str(out)],
                            capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert result.returncode == 0 and "1 cases written" in result.stdout
    assert pd.read_csv(out, dtype=str).loc[0, "DIAG"] == "BCC"
    with open(log.path, "a") as handle:
        handle.write("oops\n")
    result = subprocess.run([sys.executable, "-m", "skinnet.corrections", "check", str(log.path)],
                            capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert result.returncode == 1 and "line 3: expected" in result.stdout


def test_disk_full_mid_row_is_not_acknowledged_and_leaves_the_file_as_it_was(tmp_path, monkeypatch):
    import errno
    log = CorrectionsLog(tmp_path)
    assert log.append(review(case_id="before"))
    before = log.path.read_bytes()
    real_write = os.write
    calls = []

    def half_then_full(fd, data):  # the kernel writes part of the row, then the disk is full
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(CorrectionsError, match="Not saved: the server's disk is full. Nothing was recorded"):
        log.append(review(case_id="lost"))
    monkeypatch.setattr(os, "write", real_write)
    assert len(calls) == 2 and log.path.read_bytes() == before  # truncated back, no half row
    assert log.append(review(case_id="after"))
    rows, problems = read_corrections(log.path)
    assert [r["case_id"] for r in rows] == ["before", "after"] and problems == []


def test_a_really_full_disk_loses_no_acknowledged_review(tmp_path):
    """A 96 KB tmpfs as the log folder: save until the disk is full, then free space and save again."""
    folder = tmp_path / "small"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(folder)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        log = CorrectionsLog(folder)
        acknowledged, failures = [], 0
        image = Image.new("RGB", (48, 48), (120, 60, 30))
        for i in range(400):
            r = review(case_id=f"c{i}")
            try:
                if log.append(r, dermoscopy=image):
                    acknowledged.append(r.event_id)
            except CorrectionsError as err:
                assert "disk is full" in str(err)
                failures += 1
                if failures >= 3:
                    break
        assert failures == 3 and len(acknowledged) > 10
        rows, problems = read_corrections(log.path)
        assert problems == [] and [r["event_id"] for r in rows] == acknowledged
        assert not [p for p in (folder / "images").iterdir() if p.suffix == ".tmp"]
        (folder / "images" / f"{rows[0]['derm_sha256']}.png").unlink()  # an administrator frees space
        assert log.append(review(case_id="after"))
        assert read_corrections(log.path)[0][-1]["case_id"] == "after"
    finally:
        subprocess.run(["umount", str(folder)], check=False)


@pytest.mark.parametrize("field, value, message", [
    ("note", "x" * 200_000, "longer than 2000 characters"),
    ("confidence", 2.7, "whole number from 1 to 5"),
    ("confidence", True, "whole number from 1 to 5"),
    ("confidence", "3", "whole number from 1 to 5"),
    ("source", "evil", "source must be one of"),
    ("event_id", "../../x", "event id is malformed"),
    ("case_id", "c" * 5000, "case_id must be text of at most 200"),
    ("verdict", "approve", "verdict must be one of"),
])
def test_every_field_is_checked_on_the_server(tmp_path, field, value, message):
    log = CorrectionsLog(tmp_path)
    r = review()
    setattr(r, field, value)
    with pytest.raises(CorrectionsError, match=message):
        log.append(r)
    assert not log.path.exists()


def test_idempotency_holds_in_the_file_even_for_a_bad_row(tmp_path):
    log = CorrectionsLog(tmp_path)
    first = review(case_id="1")
    assert log.append(first)
    with open(log.path, "a") as handle:  # a row the reader rejects, carrying an event id
        handle.write("0123456789abcdef0123456789abcdef,broken\n")
    assert log.append(review(case_id="1", event_id=first.event_id)) is False
    assert log.append(review(case_id="1", event_id="0123456789abcdef0123456789abcdef")) is False
    assert log.event_ids() == {first.event_id, "0123456789abcdef0123456789abcdef"}


@pytest.mark.parametrize("start", [b"\n", b"\n\n  \n", "\ufeff".encode() + b",".join(c.encode() for c in COLUMNS) + b"\n"])
def test_blank_or_bom_started_log_keeps_every_later_row(tmp_path, start):
    log = CorrectionsLog(tmp_path)
    log.path.parent.mkdir(parents=True)
    log.path.write_bytes(start)
    assert log.append(review(case_id="a")) and log.append(review(case_id="b"))
    rows, problems = read_corrections(log.path)
    assert [r["case_id"] for r in rows] == ["a", "b"] and problems == []


def test_a_foreign_file_is_refused_not_appended_to(tmp_path):
    for foreign in (tmp_path / "corrections.csv", tmp_path / "shards" / "x.csv"):
        foreign.parent.mkdir(exist_ok=True)
        foreign.write_text("name,salary\nbob,1\n")
        log = CorrectionsLog(tmp_path)
        with pytest.raises(CorrectionsError, match="not a corrections file") as refused:
            log.append(review())
        assert str(tmp_path) not in str(refused.value)  # no server path in what a reviewer may read
        assert foreign.read_text() == "name,salary\nbob,1\n" and not log.path.exists()
        foreign.unlink()


def test_a_retraction_withdraws_one_row_of_its_own_reviewer(tmp_path):
    from skinnet.corrections import RETRACT

    log = CorrectionsLog(tmp_path)
    first, second = review("agree", case_id="5"), review("correct", case_id="5", DIAG="MEL")
    other = review("agree", reviewer="dr_b", case_id="5")
    for r in (first, second, other):
        assert log.append(r)
    assert log.latest_review("dr_a", "5")["event_id"] == second.event_id
    withdraw = Review(event_id=new_event_id(), reviewer="dr_a", case_id="5", source="derm7pt", verdict=RETRACT,
                      predicted=dict(PREDICTED), corrected={}, note=second.event_id)
    assert log.append(withdraw)
    rows, problems = read_corrections(log.path)
    assert problems == [] and [r["event_id"] for r in rows] == [first.event_id, other.event_id]
    assert log.latest_review("dr_a", "5")["verdict"] == "agree"
    assert current_labels(rows)["5"].latest["reviewer"] == "dr_b"  # the latest standing review
    # another reviewer cannot withdraw dr_b's row
    assert log.append(Review(event_id=new_event_id(), reviewer="dr_a", case_id="5", source="derm7pt",
                             verdict=RETRACT, predicted=dict(PREDICTED), corrected={}, note=other.event_id))
    assert [r["event_id"] for r in read_corrections(log.path)[0]] == [first.event_id, other.event_id]
    with pytest.raises(CorrectionsError, match="names the event id"):
        log.append(Review(event_id=new_event_id(), reviewer="dr_a", case_id="5", source="derm7pt",
                          verdict=RETRACT, predicted=dict(PREDICTED), corrected={}, note="not an id"))


def test_a_later_unsure_withdraws_the_reviewers_labels(tmp_path):
    log = CorrectionsLog(tmp_path)
    assert log.append(review("correct", case_id="9", DIAG="MEL"))
    assert log.append(review("unsure", case_id="9"))
    rows, _ = read_corrections(log.path)
    assert "9" not in current_labels(rows)


RACER = """
import sys, time
from skinnet_testkit.reviews import review
from skinnet.corrections import CorrectionsError, CorrectionsLog
log = CorrectionsLog(sys.argv[1])
worker, rounds, start = int(sys.argv[2]), int(sys.argv[4]), float(sys.argv[5])
log.event_ids()  # the log read once before the race: a check outside the lock would use this view
while time.time() < start:
    time.sleep(0.001)
for r in range(rounds):
    claim = review(reviewer=f"dr_{worker}", case_id=f"race{r}")
    claim.source = ("derm7pt", "manifest", "upload")[worker % 3]
    try:
        log.append(claim)
    except CorrectionsError as err:
        assert "one id must name one case" in str(err), err
"""


def test_one_case_id_names_one_case_even_when_processes_race_for_it(tmp_path):
    """Four processes (three sources) save the same new case ids at the same instant: the rule is
    checked under the log's lock, so each id ends up with the rows of one source only."""
    script = tmp_path / "racer.py"
    script.write_text(RACER)
    tests = Path(__file__).parent
    start = time.time() + 15  # every racer has imported and read the log by then
    racers = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "log"), str(w), str(tests), "30",
                                str(start)]) for w in range(4)]
    assert all(r.wait(timeout=300) == 0 for r in racers)
    rows, problems = read_corrections(tmp_path / "log")
    sources = {}
    for row in rows:
        sources.setdefault(row["case_id"], set()).add(row["source"])
    assert problems == [] and len(sources) == 30
    assert all(len(s) == 1 for s in sources.values()), {c: s for c, s in sources.items() if len(s) > 1}
    won_by_two = sum(sources[c] == {"derm7pt"} for c in sources)  # racers 0 and 3 share a source
    assert sum(sum(r["case_id"] == c for r in rows) for c in sources) == 30 + won_by_two


REVEALER = """
import sys
from skinnet_testkit.reviews import review
from skinnet.corrections import CorrectionsLog
from skinnet.imaging import load_rgb
log = CorrectionsLog(sys.argv[1])
saved = review("agree", reviewer="dr_t", case_id="42")
assert log.append(saved, clinical=load_rgb(sys.argv[2] + "/clin.png"), dermoscopy=load_rgb(sys.argv[2] + "/derm.png"))
assert log.record_reveal("dr_t", "42", log.latest_review("dr_t", "42"))
assert not log.record_reveal("dr_t", "42", log.latest_review("dr_t", "42"))  # recorded once
"""


def test_a_reveal_in_one_process_locks_the_case_and_its_images_in_another(tmp_path):
    """The teaching lock is a rule of the log: another process (another replica) that had read
    the log before the reveal refuses a changed review of the case, an undo of it, and the same
    images saved under another case id (the reviewer's "own pair"); other reviewers are free."""
    from skinnet.corrections import RETRACT
    from skinnet_testkit.synthetic import lesion_image
    import numpy as np

    rng = np.random.default_rng(3)
    lesion_image(rng, (60, 50), tint=1).save(tmp_path / "clin.png")
    lesion_image(rng, (50, 50), tint=2).save(tmp_path / "derm.png")
    other = CorrectionsLog(tmp_path / "log")
    assert other.event_ids() == set()
    script = tmp_path / "revealer.py"
    script.write_text(REVEALER)
    tests = Path(__file__).parent
    subprocess.run([sys.executable, str(script), str(tmp_path / "log"), str(tmp_path), str(tests)], check=True)
    clinical, derm = load_rgb(tmp_path / "clin.png"), load_rgb(tmp_path / "derm.png")
    with pytest.raises(CorrectionsError, match="seen the Derm7pt reference labels of case 42: a new review"):
        other.append(review("correct", reviewer="dr_t", case_id="42", DIAG="MEL"))
    own_pair = review("correct", reviewer="dr_t", case_id="upload:abc", DIAG="MEL")
    own_pair.source = "upload"
    for pair in ((clinical, derm), (None, derm), (clinical, None)):
        with pytest.raises(CorrectionsError, match="reference labels of case 42, whose image"):
            other.append(own_pair, *pair)
    standing = other.latest_review("dr_t", "42")
    undo = Review(event_id=new_event_id(), reviewer="dr_t", case_id="42", source="derm7pt", verdict=RETRACT,
                  predicted=dict(PREDICTED), corrected={}, note=standing["event_id"])
    with pytest.raises(CorrectionsError, match="stays as it was saved before the reveal"):
        other.append(undo)
    assert other.revealed("dr_t") == {"42"} and other.revealed("dr_b") == set()
    assert other.append(review("correct", reviewer="dr_b", case_id="42", DIAG="MEL"), clinical, derm)
    images = sorted(p.name for p in (tmp_path / "log" / "images").iterdir())
    assert len(images) == 2  # the refused saves stored nothing
    events = [r["verdict"] for r in read_events(tmp_path / "log")[0]]
    assert events == ["agree", "reveal", "correct"]
    assert [r["case_id"] for r in read_corrections(tmp_path / "log")[0]] == ["42", "42"]  # reveals are not reviews


def test_reveals_recorded_by_the_first_versions_file_keep_their_cases_locked(tmp_path):
    """reference_revealed.csv of earlier versions (reviewer, [source,] case id, time) still counts."""
    (tmp_path / "reference_revealed.csv").write_text("dr_t,17,2026-11-28T20:00:00+0000\n"
                                                     "dr_t,derm7pt,42,2026-11-29T01:00:00+0000\n"
                                                     "dr_b,derm7pt,5,2026-11-29T01:00:00+0000\nbroken\n")
    log = CorrectionsLog(tmp_path)
    assert log.revealed("dr_t") == {"17", "42"} and log.revealed("dr_b") == {"5"}
    with pytest.raises(CorrectionsError, match="reference labels of case 17"):
        log.append(review(reviewer="dr_t", case_id="17"))


def test_an_event_in_two_shards_counts_once_and_shards_merge_in_time_order(tmp_path):
    a, b = CorrectionsLog(tmp_path), CorrectionsLog(tmp_path)
    first = review(case_id="1")
    assert a.append(first)
    assert b.append(review(case_id="2", reviewer="dr_b"))
    assert not b.append(review(case_id="1", event_id=first.event_id))  # b sees a's rows under the lock
    b.path.parent.mkdir(exist_ok=True)
    with open(b.path, "a") as handle:  # as if a retried save had reached a replica with its own disk
        handle.write(a.path.read_text().splitlines()[1] + "\n")
    assert a.append(review(case_id="3"))
    rows, problems = read_corrections(tmp_path)
    assert problems == [] and [r["case_id"] for r in rows] == ["1", "2", "3"]


def test_a_save_reads_only_what_the_log_gained(tmp_path, monkeypatch):
    """The index follows the files' growth: with 3,000 rows already logged (another writer's), a
    save reads a few kilobytes, not the log."""
    import builtins

    from skinnet.corrections import storage
    from skinnet.corrections.schema import csv_line

    writer = CorrectionsLog(tmp_path)
    writer.append(review(case_id="first"))
    with open(writer.path, "a") as handle:
        for i in range(3000):
            r = review(case_id=f"bulk{i}", reviewer=f"dr_{i % 7}")
            handle.write(csv_line([neutralise(r.row({})[c]) for c in COLUMNS]))
    log = CorrectionsLog(tmp_path)
    assert log.append(review(case_id="warm"))  # the first look reads everything once
    size = writer.path.stat().st_size
    read = []
    real_open = builtins.open

    def counting_open(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        if "b" in mode and "r" in mode:
            real_read = handle.read
            handle.read = lambda *a: read.append(len(data := real_read(*a))) or data
        return handle

    monkeypatch.setattr(storage, "open", counting_open, raising=False)
    for i in range(10):
        assert log.append(review(case_id=f"new{i}"))
        assert log.latest_review("dr_a", f"new{i}")["case_id"] == f"new{i}"
    assert sum(read) < 10 * 1000 and size > 250 * 3000, (sum(read), size)
    assert len(read_corrections(tmp_path)[0]) == 3012


def test_a_fine_value_is_kept_only_where_the_class_groups_several():
    """A raw call could send a one-value class's Derm7pt value ('absent' for PN): the row says what
    the form would have said (the class, no fine value), so the same answer reads the same."""
    by_value = review("correct", PN="absent", DIAG="dermal nevus").row({})
    by_class = review("correct", PN="ABS", DIAG="dermal nevus").row({})
    assert (by_value["PN"], by_value["pigment_network"]) == ("ABS", "")
    assert by_value["diagnosis"] == "dermal nevus" and by_value == {**by_class, "event_id": by_value["event_id"],
                                                                     "logged_at": by_value["logged_at"]}


def test_a_case_id_names_the_images_of_its_first_review(tmp_path):
    """Another reviewer's review, or the same answer again, of case 17 with other images (another
    queue file's lesion under the same id, a replaced image) is refused, not logged as the case's
    review nor taken as "already saved"; the first images take reviews as before."""
    from skinnet_testkit.synthetic import lesion_image
    import numpy as np

    rng = np.random.default_rng(4)
    first, other = lesion_image(rng, (40, 40), tint=0), lesion_image(rng, (40, 40), tint=2)
    log = CorrectionsLog(tmp_path / "log")
    saved = review("correct", DIAG="MEL")
    assert log.append(saved, dermoscopy=first)
    for attempt, images in ((review("correct", DIAG="MEL", event_id=None), {"dermoscopy": other}),
                            (review("correct", reviewer="dr_b", DIAG="BCC"), {"dermoscopy": other}),
                            (review("correct", reviewer="dr_b", DIAG="BCC"), {"clinical": first}),
                            (review("correct", reviewer="dr_b", DIAG="BCC"), {"clinical": first, "dermoscopy": first})):
        with pytest.raises(CorrectionsError, match="already in the review log with other images"):
            log.append(attempt, **images)
    assert log.append(review("correct", DIAG="MEL"), dermoscopy=first) is False  # the same answer: logged once
    assert log.append(review("correct", reviewer="dr_b", DIAG="BCC"), dermoscopy=first)
    assert [r["reviewer"] for r in read_corrections(tmp_path / "log")[0]] == ["dr_a", "dr_b"]


def test_a_writer_whose_clock_runs_behind_still_logs_its_save_as_the_latest(tmp_path, monkeypatch):
    """Two processes on one log (replicas, or a restart after the clock stepped back), the second
    one's clock 2 s behind: its later save must be the reviewer's standing review for every reader
    (the app's form, training), as it was told ("replaces your earlier review")."""
    from datetime import datetime, timedelta
    from skinnet.corrections import storage

    first = CorrectionsLog(tmp_path / "log")
    assert first.append(review("agree"))

    class Behind(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime.now(tz) - timedelta(seconds=2)

    monkeypatch.setattr(storage, "datetime", Behind)
    second = CorrectionsLog(tmp_path / "log")
    later = review("correct", DIAG="MEL")
    assert second.append(later)
    for reader in (second, first, CorrectionsLog(tmp_path / "log")):
        assert reader.latest_review("dr_a", "17")["event_id"] == later.event_id
    assert read_corrections(tmp_path / "log")[0][-1]["event_id"] == later.event_id
