"""Two app processes serving reviewers from one log folder at once (two replicas, or a restart
that overlaps the old process), attacked and loaded by raw HTTP: the log's rules hold between
them, and concurrent saves are each on disk once, in order, even when one process is killed."""
import re
import secrets
import threading
import time

import pytest

from app_helpers import tiny_checkpoint
from skinnet_testkit.raw_http import NO_FORM, RawClient
from skinnet_testkit.app_process import PASSWORD, USER, App
from skinnet.corrections import NO_CHANGE, read_corrections, read_events
from skinnet.data import Derm7pt
from skinnet_testkit.synthetic import make_release
from skinnet_testkit.queues import write_manifest
from test_security import case_shown, fns, open_first_case, save_data, undo_data


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    root = tmp_path_factory.mktemp("replicas")
    checkpoint = tiny_checkpoint(root)
    write_manifest(root / "queues" / "clinic")
    release = make_release(root / "queues" / "derm7pt", n_cases=8, seed=2)
    env = {"SKINNET_QUEUE_ROOT": str(root / "queues")}
    apps = [App(checkpoint, root / "log", env=env) for _ in range(2)]
    yield {"apps": apps, "log": root / "log", "release": release, "root": root, "checkpoint": checkpoint,
           "env": env}
    for app in apps:
        if app.process.poll() is None:
            app.stop()


def test_the_teaching_lock_and_one_id_per_case_hold_across_two_processes(replicas):
    """The reviewer sees a case's reference labels through one process; through the other, a
    changed review of it, an undo, the same two images uploaded as "My own pair" (issue 27, item 7)
    and a manifest case reusing its id are refused."""
    a, b = (RawClient(app.url, USER, PASSWORD) for app in replicas["apps"])
    config = a.config()
    session_a, session_b = secrets.token_hex(6), secrets.token_hex(6)
    assert a.call(fns(config, "open_queue")[0], [None, "derm7pt/meta/meta.csv", *NO_FORM], session_a).success
    assert a.call(fns(config, "step_next")[0], [None], session_a).success
    case_id, token = case_shown(a, config, session_a)
    agreed = a.call(fns(config, "save")[0], save_data(token, "agree", reveal=True), session_a)
    assert agreed.success and "Derm7pt reference labels" in agreed.data[0]

    assert b.call(fns(config, "open_queue")[0], [None, "derm7pt/meta/meta.csv", *NO_FORM], session_b).success
    assert b.call(fns(config, "step_next")[0], [None], session_b).success
    shown_id, token_b = case_shown(b, config, session_b)
    assert shown_id == case_id
    changed = b.call(fns(config, "save")[0], save_data(token_b, "correct", corrections=["BCC", *[NO_CHANGE] * 7]),
                     session_b)
    assert not changed.success and f"seen the Derm7pt reference labels of case {case_id}" in changed.error

    case = next(c for c in Derm7pt(replicas["release"]).cases() if c.case_id == case_id)
    own = secrets.token_hex(6)
    clean = [b.call(fns(config, f"upload_{slot}")[0], [None, {"path": b.upload(path)}], own).data[0]
             for slot, path in (("clinical", case.clinical_path), ("dermoscopy", case.dermoscopy_path))]
    made = b.call(fns(config, "case_from_upload")[0], [None, *clean], own)
    assert made.success and "upload:" in made.data[1]
    pair = b.call(fns(config, "save")[0], save_data(made.data[-1], "correct", corrections=["BCC", *[NO_CHANGE] * 7]),
                  own)
    assert not pair.success and f"reference labels of case {case_id}, whose images this case shows" in pair.error
    undone = b.call(fns(config, "undo")[0], undo_data(token_b), session_b)
    assert undone.success and "stays as it was saved before the reveal" in undone.data[0]

    clash = replicas["root"] / "queues" / "clash"
    clash.mkdir()
    (clash / "manifest.csv").write_text(f"case_id,clinical,dermoscopy\n{case_id},,../clinic/img/c0_derm.png\n")
    assert b.call(fns(config, "open_queue")[0], [None, "clash/manifest.csv", *NO_FORM], own).success
    assert b.call(fns(config, "step_next")[0], [None], own).success
    _, clash_token = case_shown(b, config, own)
    mixed = b.call(fns(config, "save")[0], save_data(clash_token, "skip"), own)
    assert not mixed.success and "already in the review log as a case of a derm7pt queue" in mixed.error
    events = read_events(replicas["log"])[0]
    assert [(r["verdict"], r["case_id"]) for r in events] == [("agree", case_id), ("reveal", case_id)]


@pytest.mark.timeout(900)
def test_concurrent_saves_to_two_processes_survive_a_kill_of_one(replicas):
    """Three reviewers' sessions on each process save as fast as they can; one process is killed
    with SIGKILL mid-burst. Every acknowledged save is on disk once, each session's saves in the
    order it made them; the other process serves on and sees the killed one's rows; a new process
    on the same log saves again."""
    config = RawClient(replicas["apps"][0].url, USER, PASSWORD).config()
    save = fns(config, "save")[0]
    acknowledged: dict[str, list[str]] = {}
    stop = threading.Event()

    def reviewer(app_index: int, worker: int):
        client = RawClient(replicas["apps"][app_index].url, USER, PASSWORD)
        session, name = secrets.token_hex(6), f"p{app_index}w{worker}"
        mine = acknowledged.setdefault(name, [])
        try:
            token = open_first_case(client, config, session).data[-1]
            for i in range(200):
                if stop.is_set():
                    return
                note = f"{name}-{i}"
                saved = client.call(save, save_data(token, "unsure", note=note), session)
                if saved.success and "Saved" in saved.data[0]:
                    mine.append(note)
        except Exception:  # the killed process's clients lose their connection: that is the test
            return

    threads = [threading.Thread(target=reviewer, args=(p, w)) for p in range(2) for w in range(3)]
    for thread in threads:
        thread.start()
    deadline = time.time() + 120
    while time.time() < deadline and sum(map(len, acknowledged.values())) < 40:
        time.sleep(0.1)
    killed, survivor = replicas["apps"]
    killed.stop(__import__("signal").SIGKILL)
    time.sleep(3)  # the survivor's sessions go on saving
    stop.set()
    for thread in threads:
        thread.join(timeout=300)

    rows, problems = read_corrections(replicas["log"])
    assert all(p.message.startswith("row cut short") for p in problems), problems
    notes = [r["note"] for r in rows if re.fullmatch(r"p\dw\d-\d+", r["note"])]
    assert len(notes) == len(set(notes))  # none twice
    for name, saved in acknowledged.items():
        logged = [n for n in notes if n.startswith(name + "-")]
        assert logged[:len(saved)] == saved, name  # all acknowledged, in order (a last unacknowledged one may follow)
        assert len(logged) - len(saved) <= 1
    assert sum(map(len, acknowledged.values())) >= 40 and any(acknowledged[f"p1w{w}"] for w in range(3))

    # the survivor sees every row of the killed process: its form shows the latest review of c0
    client = RawClient(survivor.url, USER, PASSWORD)
    shown = open_first_case(client, config, secrets.token_hex(6))
    latest = [r for r in rows if r["case_id"] == "c0" and r["reviewer"] == USER][-1]
    assert latest["note"] in shown.data
    # a restart on the same log (the killed one's shard is left as it was) saves on
    restarted = App(replicas["checkpoint"], replicas["log"], env=replicas["env"])
    try:
        client = RawClient(restarted.url, USER, PASSWORD)
        session = secrets.token_hex(6)
        token = open_first_case(client, config, session).data[-1]
        assert client.call(save, save_data(token, "skip", note="after the kill"), session).success
    finally:
        restarted.stop()
    rows, _ = read_corrections(replicas["log"])
    assert rows[-1]["note"] == "after the kill"
    assert len({r["file"] for r in rows}) == 3  # three processes, three shards, nobody wrote another's
