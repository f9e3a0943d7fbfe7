"""Attacks on the launched app from outside, by raw HTTP to every event (as on a public Space).

Each test performs one attack of issue 12 the way it was found: a ``POST /gradio_api/queue/join``
by ``fn_index`` with a hand-made body and session hash, then the results read back.
"""
import json
import re
import secrets
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from app_helpers import app_env, free_port, launched, start_app, stop_app, tiny_checkpoint, write_examples
from conftest import REAL_DERM7PT, needs_real_derm7pt, small_disk
from skinnet_testkit.raw_http import NO_FORM, RawClient, Result, fns, noise_png, resembles
from skinnet.corrections import CorrectionsLog, NO_CHANGE, Review, new_event_id, read_corrections, read_events
from skinnet.imaging import load_rgb, pixel_sha256
from skinnet.labels import TASK_NAMES
from skinnet.ui import AppSettings
from skinnet_testkit.queues import write_manifest
from skinnet_testkit.synthetic import lesion_image, make_release

# dr_locked is only for the lockout test, dr_t for the teaching test, dr_k for the agreement
# test: each test that saves or locks a name has its own, so test order does not matter.
USERS = {"dr_a": "pass-a-123", "dr_b": "pass-b-456", "dr_c": "pass-c-789",
         "dr_locked": "pass-l-000", "dr_t": "pass-t-321", "dr_k": "pass-k-654", "dr_i": "pass-i-987"}
NOT_YOURS = "not an upload of this session"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("secured")
    queues = root / "queues"
    write_manifest(queues / "clinic")
    release = make_release(queues / "derm7pt", n_cases=8, seed=2)
    examples = write_examples(root / "examples")
    secret = noise_png(root / "secret.png")  # a server file no visitor may see
    log = CorrectionsLog(root / "log")
    stored = Image.fromarray(np.random.default_rng(5).integers(0, 256, (48, 64, 3), dtype=np.uint8))
    predicted = {t: "ABS" for t in TASK_NAMES} | {"DIAG": "NEV", "PN": "TYP"}
    log.append(Review(new_event_id(), "dr_a", "upload:x", "upload", "unsure", predicted,
                      {t: NO_CHANGE for t in TASK_NAMES}), dermoscopy=stored)
    others = root / "log" / "images" / f"{pixel_sha256(stored)}.png"  # dr_a's stored image
    assert others.is_file()
    settings = AppSettings(checkpoint=tiny_checkpoint(root), port=free_port(), log_dir=root / "log",
                           users=USERS, queue_root=queues, admins=frozenset({"dr_a"}), examples=examples)
    with launched(settings) as app:
        yield {"url": f"http://127.0.0.1:{settings.port}", "secret": secret, "stored": others, "root": root,
               "log": settings.log_dir, "release": release, "examples": examples, "app": app}


def test_issue_attack_upload_event_then_case_display_reads_no_server_file(server):
    """The attack as reported: fn ``on_upload`` with {"path": "/any/file.png"} (a FileData without
    ``meta``), then the case-display event, returned that file's pixels."""
    client = RawClient(server["url"], "dr_b", USERS["dr_b"])
    config = client.config()
    session = secrets.token_hex(6)
    for target in (server["secret"], server["stored"]):
        upload = client.call(fns(config, "upload_clinical")[0], [None, {"path": str(target)}], session)
        assert not upload.success and NOT_YOURS in upload.error
        made = client.call(fns(config, "case_from_upload")[0], [None, {"path": str(target)}, None], session)
        assert made.success and made.data[-1] == ""  # no case was opened from it
        for index in fns(config, "show_case"):
            shown = client.call(index, [None], session)
            assert not any(resembles(f, target) for f in client.files_in(shown.data))


@pytest.mark.timeout(900)
def test_every_event_with_a_foreign_path_in_every_file_input_returns_none_of_its_pixels(server):
    client = RawClient(server["url"], "dr_b", USERS["dr_b"])
    config = client.config()
    kinds = {c["id"]: c["type"] for c in config["components"]}
    values = {c["id"]: c.get("props", {}).get("value") for c in config["components"]}
    dependencies = config["dependencies"]
    assert len(dependencies) > 25
    file_inputs_seen = 0
    for target in (server["secret"], server["stored"]):
        forms = [str(target), {"path": str(target)},
                 {"path": str(target), "meta": {"_type": "gradio.FileData"}, "orig_name": "x.png"}]
        for form in forms:
            session = secrets.token_hex(6)
            outputs = []
            for index, dependency in enumerate(dependencies):  # every event gets the path in every file input
                data = []
                for component in dependency["inputs"]:
                    if kinds[component] in ("image", "file", "gallery"):
                        data.append(form)
                        file_inputs_seen += 1
                    elif kinds[component] == "state":
                        data.append(None)
                    else:
                        data.append(values[component])
                outputs.append(client.call(index, data, session))
            for index in range(len(dependencies)):  # then every event again, with nothing foreign
                data = [None if kinds[c] in ("image", "file", "gallery", "state") else values[c]
                        for c in dependencies[index]["inputs"]]
                outputs.append(client.call(index, data, session))
            for result in outputs:
                assert not any(resembles(f, target) for f in client.files_in(result.data)), result.raw
                assert "No such file" not in str(result.raw) and "Is a directory" not in str(result.raw)
    assert file_inputs_seen >= 60


def test_errors_do_not_say_whether_a_path_exists(server):
    client = RawClient(server["url"], "dr_b", USERS["dr_b"])
    config = client.config()
    upload, predict = fns(config, "upload_clinical")[0], fns(config, "predict")[0]
    for index, data in ((upload, lambda p: [None, {"path": p}]), (predict, lambda p: [None, {"path": p}, None, False])):
        errors = {client.call(index, data(path)).error
                  for path in ("/etc/shadow", "/nonexistent/x.png", "/tmp", "/etc/hostname", str(server["secret"]))}
        assert errors == {f"clinical image: that file is {NOT_YOURS}; upload the image again."}


def test_the_public_api_still_works_with_gradio_uploads(server):
    from gradio_client import Client, handle_file

    pair = [server["root"] / "queues" / "clinic" / "img" / f"c0_{m}.png" for m in ("clin", "derm")]
    client = Client(server["url"] + "/", auth=("dr_b", USERS["dr_b"]), verbose=False)
    summary, _, _ = client.predict(handle_file(str(pair[0])), handle_file(str(pair[1])), api_name="/predict")
    assert "Fused head" in summary


def open_first_case(client: RawClient, config: dict, session: str, queue: str = "clinic/manifest.csv") -> Result:
    opened = client.call(fns(config, "open_queue")[0], [None, queue, *NO_FORM], session)
    assert opened.success, opened.error
    assert client.call(fns(config, "step_next")[0], [None], session).success
    return client.call(fns(config, "show_case")[0], [None], session)


def save_data(token: str, verdict: str = "agree", **fields) -> list:
    """The save event's inputs: state, case token, reveal, verdict, confidence, note, 8 corrections,
    whether the page shows a hidden prediction anyway."""
    return [None, token, fields.get("reveal", False), verdict, fields.get("confidence"), fields.get("note", ""),
            *fields.get("corrections", [NO_CHANGE] * 8), fields.get("shown_anyway", False)]


def undo_data(token: str, verdict: str | None = "agree", **fields) -> list:
    """The undo event's inputs: state, case token and the form the page shows (verdict, 8
    corrections, confidence, note)."""
    return [None, token, verdict, *fields.get("corrections", [NO_CHANGE] * 8), fields.get("confidence"),
            fields.get("note", "")]


def test_another_reviewer_cannot_act_on_a_session_by_its_hash(server):
    a = RawClient(server["url"], "dr_a", USERS["dr_a"])
    b = RawClient(server["url"], "dr_b", USERS["dr_b"])
    config = a.config()
    session_a = secrets.token_hex(6)
    shown = open_first_case(a, config, session_a)
    token = shown.data[-1]
    assert re.fullmatch(r"[0-9a-f]{32}", token)
    for index, data in ((fns(config, "show_case")[0], [None]), (fns(config, "step_next")[0], [None]),
                        (fns(config, "save")[0], save_data(token))):
        hijack = b.call(index, data, session_a)
        assert not hijack.success and "belongs to another sign-in" in hijack.error
    rows, _ = read_corrections(server["log"] / "corrections.csv")
    assert all(r["reviewer"] != "dr_b" for r in rows)
    saved = a.call(fns(config, "save")[0], save_data(token), session_a)  # dr_a's own session still works
    assert saved.success and "Saved: agree for case c0" in saved.data[0]


def test_a_save_is_for_the_case_on_screen_with_the_servers_images(server):
    """A quick 'n' then Enter: the save arrives after the server opened the next case."""
    client = RawClient(server["url"], "dr_a", USERS["dr_a"])
    config = client.config()
    session = secrets.token_hex(6)
    c0_token = open_first_case(client, config, session).data[-1]
    assert client.call(fns(config, "step_next")[0], [None], session).success  # the server moves to c1
    late = client.call(fns(config, "save")[0], save_data(c0_token, note="about c0"), session)
    assert not late.success and "The case changed before this save reached the server" in late.error
    c1_token = client.call(fns(config, "show_case")[0], [None], session).data[-1]
    saved = client.call(fns(config, "save")[0], save_data(c1_token, note="about c1"), session)
    assert saved.success and "case c1" in saved.data[0]
    rows, _ = read_corrections(server["log"] / "corrections.csv")
    row = [r for r in rows if r["note"] in ("about c0", "about c1")]
    assert [r["case_id"] for r in row] == ["c1"]
    folder = server["root"] / "queues" / "clinic" / "img"
    assert row[0]["derm_sha256"] == pixel_sha256(load_rgb(folder / "c1_derm.png"))
    assert row[0]["clinic_sha256"] == pixel_sha256(load_rgb(folder / "c1_clin.png"))


def test_an_undo_is_for_the_case_on_screen(server):
    """Undo sent for c0 after the server opened c1 withdraws nothing; undo of your own review of
    the case on screen works; another sign-in cannot undo through your session."""
    client = RawClient(server["url"], "dr_c", USERS["dr_c"])  # no other test saves as dr_c
    config = client.config()
    session = secrets.token_hex(6)
    undo = fns(config, "undo")[0]
    c0_token = open_first_case(client, config, session).data[-1]
    assert client.call(fns(config, "save")[0], save_data(c0_token, note="undo race c0"), session).success
    assert client.call(fns(config, "step_next")[0], [None], session).success  # the server moves to c1
    late = client.call(undo, undo_data(c0_token, note="undo race c0"), session)  # said in the status line: no error marks on the form
    assert late.success and "The case changed before this undo reached the server" in late.data[0]
    other = RawClient(server["url"], "dr_b", USERS["dr_b"]).call(undo, undo_data(c0_token, note="undo race c0"), session)
    assert not other.success and "belongs to another sign-in" in other.error
    for forged in ("", "0" * 32, None, ["x"], "a" * 100_000):
        forged_undo = client.call(undo, undo_data(forged, note="undo race c0"), session)
        assert not forged_undo.success or "nothing was undone" in forged_undo.data[0]
    rows, _ = read_corrections(server["log"] / "corrections.csv")
    assert [r["case_id"] for r in rows if r["note"] == "undo race c0"] == ["c0"]  # still standing
    c1_token = client.call(fns(config, "show_case")[0], [None], session).data[-1]
    nothing = client.call(undo, undo_data(c1_token), session)
    assert nothing.success and "Nothing to undo" in nothing.data[0]
    # an undo withdraws the review the page shows, and only that one
    assert client.call(fns(config, "save")[0], save_data(c1_token, "unsure", note="c1 first"), session).success
    assert client.call(fns(config, "save")[0], save_data(c1_token, "skip", note="c1 second"), session).success
    for shown in (undo_data(c1_token, "unsure", note="c1 first"), undo_data(c1_token, "skip", note="c1 changed"),
                  undo_data(c1_token, None), [None, c1_token, "skip", ["x"], *[NO_CHANGE] * 7, None, "c1 second"]):
        refused = client.call(undo, shown, session)
        assert refused.success and refused.data[0].startswith("Not undone: "), shown
    assert read_corrections(server["log"] / "corrections.csv")[0][-1]["note"] == "c1 second"  # nothing withdrawn
    undone = client.call(undo, undo_data(c1_token, "skip", note="c1 second"), session)
    assert undone.success and "Undone: your skip review of case c1 is withdrawn" in undone.data[0]
    assert "unsure" in undone.data[0] and undone.data[3] == "unsure" and undone.data[-2] == "c1 first"
    assert 'data-name="c1"' in undone.data[-1] and "c1 first" in undone.data[-1]  # the marker: the form as it stands


def test_a_queue_row_click_opens_the_case_it_names_and_nothing_else(server):
    """The row's values come from the browser: the case id is looked up in this session's own
    queue (so a sorted table opens the right case) and anything else is refused."""
    client = RawClient(server["url"], "dr_b", USERS["dr_b"])
    config = client.config()
    session = secrets.token_hex(6)
    assert client.call(fns(config, "open_queue")[0], [None, "clinic/manifest.csv", *NO_FORM], session).success
    select, show = fns(config, "open_queue_row")[0], fns(config, "show_case")[0]
    clicked = client.call(select, [None, *NO_FORM], session, {"index": [0, 1], "value": "c2",
                                                    "row_value": [3, "c2", "manifest", "", ""]})
    assert clicked.success, clicked.error
    shown = client.call(show, [None], session)
    assert "case c2" in shown.data[3]  # the header names the clicked row's case, whatever its position
    for row in ([1, "../../secret.png", "manifest", "", ""], [1, str(server["secret"]), "", "", ""], "c0",
                None, [1, ["c0"], "", "", ""], [1, "c0"]):
        refused = client.call(select, [None, *NO_FORM], session, {"index": [0, 1], "value": "c0", "row_value": row})
        assert not refused.success and "No such case in the open queue" in (refused.error or ""), row
    for event in (None, {"index": [0, 1]}, "c0"):  # not even a select event: Gradio refuses it first
        assert not client.call(select, [None, *NO_FORM], session, event).success
    assert "case c2" in client.call(show, [None], session).data[3]  # still the clicked case


def test_queue_filters_own_images_and_restore_take_no_hostile_input(server):
    """The events added for filters, "My own pair" and the page-load restore, called by raw HTTP:
    filter values outside their lists are refused, another sign-in cannot use them on your
    session, "My own pair" closes the case (a late save for it is refused), and a restore only
    ever returns the caller's own queue."""
    a = RawClient(server["url"], "dr_a", USERS["dr_a"])
    config = a.config()
    session = secrets.token_hex(6)
    token = open_first_case(a, config, session).data[-1]
    filter_fn = fns(config, "filter_queue")[0]
    for values in (["../../etc", "all", "any"], ["all", ["reviewed"], "any"], ["all", "all", "x" * 100_000],
                   [None, None, None], ["all", "all", {"path": str(server["secret"])}]):
        refused = a.call(filter_fn, [None, *values], session)
        assert not refused.success, values
    kept = a.call(filter_fn, [None, "all", "unreviewed", "any"], session)
    assert kept.success and "unreviewed by you" in kept.data[2]
    hijack = RawClient(server["url"], "dr_b", USERS["dr_b"]).call(filter_fn, [None, "all", "all", "any"], session)
    assert not hijack.success and "belongs to another sign-in" in hijack.error

    restore_fn = fns(config, "restore_queue")[0]
    mine = a.call(restore_fn, [None], secrets.token_hex(6))  # a new page of dr_a
    assert mine.success and "Back where you left off: clinic/manifest.csv" in mine.data[1]
    other = RawClient(server["url"], "dr_c", USERS["dr_c"]).call(restore_fn, [None], secrets.token_hex(6))
    assert other.success and "unreviewed by you" not in str(other.data)  # dr_a's filter stays dr_a's

    closed = a.call(fns(config, "own_images")[0], [None], session)
    assert closed.success and closed.data[-1] == "" and "No case open" in closed.data[3]
    late = a.call(fns(config, "save")[0], save_data(token), session)
    assert not late.success and "The case changed before this save reached the server" in late.error


@pytest.mark.parametrize("field, value, message", [
    (5, "n" * 200_000, "longer than 2000 characters"), (4, 2.7, "whole number from 1 to 5"),
    (3, "approve", "Choose a verdict")])
def test_oversized_and_malformed_fields_are_refused_on_the_server(server, field, value, message):
    client = RawClient(server["url"], "dr_a", USERS["dr_a"])
    config = client.config()
    session = secrets.token_hex(6)
    token = open_first_case(client, config, session).data[-1]
    data = save_data(token)
    data[field] = value
    before = read_events(server["log"])[0]
    result = client.call(fns(config, "save")[0], data, session)
    assert not result.success and message in result.error
    assert read_events(server["log"])[0] == before


def test_queues_open_only_from_the_queue_folder_and_export_is_for_admins(server):
    client = RawClient(server["url"], "dr_b", USERS["dr_b"])
    config = client.config()
    open_fn = fns(config, "open_queue")[0]
    for chosen in ("/etc/passwd", "../secret.png", str(server["root"] / "queues" / "clinic" / "manifest.csv"),
                   ["clinic/manifest.csv"]):
        result = client.call(open_fn, [None, chosen, *NO_FORM])
        assert not result.success and "Choose a queue file from the list" in result.error
    export = client.call(fns(config, "export_labels")[0], ["latest"])
    assert not export.success and "Exporting everyone's labels is for admins" in export.error
    anonymous = RawClient(server["url"])
    assert anonymous.http.post("/gradio_api/queue/join", json={"data": ["latest"], "fn_index": 0,
                                                                "session_hash": "x"}).status_code == 401


def test_a_queue_file_whose_case_id_could_not_be_saved_as_it_is_is_refused_when_it_opens(tmp_path):
    """A quoted line break in a manifest's case id was written to the log as a space: every save
    said "Saved" yet the case never showed as reviewed and undo found nothing. Such an id (and one
    too long to save) is refused with its line when the queue opens."""
    from skinnet.data import DatasetError
    from skinnet.review_queue import open_queue

    (tmp_path / "img").mkdir()
    lesion_image(np.random.default_rng(1), (40, 40), tint=0).save(tmp_path / "img" / "d.png")
    for case_id, line in (('"x\ny"', 3), ("c" * 201, 3), ('"tab\there"', 3)):
        (tmp_path / "manifest.csv").write_text(f"case_id,clinical,dermoscopy\nok,,img/d.png\n{case_id},,img/d.png\n")
        with pytest.raises(DatasetError, match=f"line {line}: case id .* control character"):
            open_queue(tmp_path / "manifest.csv", tmp_path)


def test_a_derm7pt_meta_csv_in_the_queue_folder_cannot_point_outside_it(tmp_path):
    from skinnet.data import DatasetError
    from skinnet.review_queue import list_queues, open_queue as read_queue
    from skinnet_testkit.synthetic import make_release

    root = tmp_path / "queues"
    release = make_release(root / "derm7pt")
    meta = release / "meta" / "meta.csv"
    assert read_queue(meta, root) and "derm7pt/meta/meta.csv" in list_queues(root)
    outside = noise_png(tmp_path / "outside.png")
    frame = pd.read_csv(meta, dtype=str, keep_default_na=False)
    frame.loc[0, "derm"] = "../../../outside.png"
    frame.to_csv(meta, index=False)
    with pytest.raises(DatasetError, match="outside the queue folder"):
        read_queue(meta, root)
    frame.loc[0, "derm"] = str(outside)  # an absolute path
    frame.to_csv(meta, index=False)
    with pytest.raises(DatasetError, match="outside the queue folder"):
        read_queue(meta, root)
    outside_manifest = tmp_path / "elsewhere" / "manifest.csv"
    outside_manifest.parent.mkdir()
    outside_manifest.write_text("case_id,clinical,dermoscopy\nx,../outside.png,\n")
    (root / "linked.csv").symlink_to(outside_manifest)  # a file link inside the root that leaves it
    (root / "folder_link").symlink_to(outside_manifest.parent)
    assert [q for q in list_queues(root) if "link" in q] == []
    with pytest.raises(DatasetError, match="outside the queue folder"):
        read_queue(root / "linked.csv", root)


def test_repeated_wrong_passwords_lock_the_name_out(server):
    import httpx

    http = httpx.Client(base_url=server["url"])
    codes = [http.post("/login", data={"username": "dr_locked", "password": f"guess{i}"}).status_code for i in range(20)]
    assert set(codes) == {400}
    assert http.post("/login", data={"username": "dr_locked", "password": USERS["dr_locked"]}).status_code == 400  # locked
    assert http.post("/login", data={"username": "dr_a", "password": USERS["dr_a"]}).status_code == 200


def test_login_throttle_unlocks_after_the_lockout():
    from skinnet.ui.access import LoginThrottle

    throttle = LoginThrottle({"dr_a": "right"}, max_failures=3, lockout_s=0.2)
    assert [throttle("dr_a", "wrong") for _ in range(3)] == [False] * 3
    assert throttle("dr_a", "right") is False and throttle.locked("dr_a")
    time.sleep(0.25)
    assert throttle("dr_a", "right") is True and throttle("nobody", "right") is False


def test_junk_names_do_not_reset_a_targets_failure_count():
    from skinnet.ui.access import LoginThrottle

    throttle = LoginThrottle({"dr_a": "right"}, max_failures=5)
    for round_ in range(3):  # 2 guesses at the target, then a flood of invented names
        assert not throttle("dr_a", f"guess{round_}a") and not throttle("dr_a", f"guess{round_}b")
        for i in range(2000):
            assert throttle(f"junk{round_}-{i}", "x") is False
    assert throttle.locked("dr_a") and set(throttle._failures) == {"dr_a"}  # memory: real names only


def test_identities_may_be_non_ascii():
    from skinnet.ui.access import claim_session

    state = claim_session({}, "dr_müller")
    assert claim_session(state, "dr_müller")["owner"] == "dr_müller"
    with pytest.raises(Exception, match="belongs to another sign-in"):
        claim_session(state, "dr_muller")


def test_served_files_say_nosniff(server):
    client = RawClient(server["url"], "dr_a", USERS["dr_a"])
    assert client.http.get("/config").headers["x-content-type-options"] == "nosniff"
    path = client.upload(server["root"] / "queues" / "clinic" / "img" / "c0_clin.png")
    response = client.http.get(f"/gradio_api/file={path}")
    assert response.status_code == 200 and response.headers["x-content-type-options"] == "nosniff"


def test_an_upload_with_no_event_after_it_is_swept(server, monkeypatch):
    import skinnet.ui.uploads

    monkeypatch.setattr(skinnet.ui.uploads, "ORIGINAL_TTL_S", 1.0)
    client = RawClient(server["url"], "dr_a", USERS["dr_a"])
    revealing = server["root"] / "john_doe_dob_1970.png"
    lesion_image(np.random.default_rng(8), (40, 40)).save(revealing)
    path = Path(client.upload(revealing))
    assert path.is_file() and "john_doe" in path.name
    deadline = time.time() + 20
    while path.exists() and time.time() < deadline:
        time.sleep(0.5)
    assert not path.exists()
    assert client.http.get(f"/gradio_api/file={path}").status_code != 200


def test_two_sessions_with_the_same_image_keep_their_clean_copies(server):
    """Content-addressed copies are shared: one session's use must not delete another's."""
    client = RawClient(server["url"], "dr_a", USERS["dr_a"])
    config = client.config()
    image = server["root"] / "queues" / "clinic" / "img" / "c2_derm.png"
    upload_fn, predict_fn = fns(config, "upload_dermoscopy")[0], fns(config, "form_labels")[0]
    sessions = [secrets.token_hex(6) for _ in range(2)]
    clean = {}
    for session in sessions:
        result = client.call(upload_fn, [None, {"path": client.upload(image)}], session)
        assert result.success
        clean[session] = result.data[0]
    for _ in range(3):
        for session in sessions:  # the labels event takes de-identified copies only
            assert client.call(predict_fn, [None, None, clean[session], False], session).success
    stranger = client.call(predict_fn, [None, None, clean[sessions[0]], False], secrets.token_hex(6))
    assert not stranger.success and NOT_YOURS in stranger.error


def test_concurrent_saves_through_the_http_api_are_each_on_disk_once(server):
    """4 reviewers' sessions x 10 saves at once, by raw HTTP: every acknowledged save is in the log once."""
    config = RawClient(server["url"], "dr_a", USERS["dr_a"]).config()
    acknowledged, failures = [], []

    def reviewer(worker: int):
        client = RawClient(server["url"], "dr_a", USERS["dr_a"])
        rng = np.random.default_rng(100 + worker)
        for i in range(10):
            session = secrets.token_hex(6)
            path = server["root"] / f"w{worker}_{i}.png"
            lesion_image(rng, (48, 40), tint=i).save(path)
            clean = client.call(fns(config, "upload_dermoscopy")[0], [None, {"path": client.upload(path)}], session)
            note = f"w{worker}-{i}"
            made = client.call(fns(config, "case_from_upload")[0], [None, None, clean.data[0]], session) \
                if clean.success else clean
            if not made.success:  # said in the assertion below, not lost in a thread's traceback
                failures.append(f"{note}: {made.error}")
                continue
            saved = client.call(fns(config, "save")[0], save_data(made.data[-1], "unsure", note=note), session)
            (acknowledged if saved.success and "Saved" in saved.data[0] else failures).append(
                note if saved.success else f"{note}: {saved.error}")

    threads = [threading.Thread(target=reviewer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    rows, problems = read_corrections(server["log"] / "corrections.csv")
    notes = [r["note"] for r in rows if re.fullmatch(r"w\d-\d+", r["note"])]
    assert problems == [] and failures == [], failures
    assert sorted(notes) == sorted(acknowledged) and len(acknowledged) == 40


@pytest.mark.timeout(600)
def test_six_40_megapixel_images_at_once_keep_the_app_small_and_answering(tmp_path):
    """The memory attack: six tiny PNGs of 39.7 MP each, sent anonymously to several image events
    at once. The app must stay under 2.5 GB (peak RSS) and answer a normal /predict meanwhile."""
    from gradio_client import Client, handle_file
    from app_helpers import write_pair

    process, url = start_app(app_env(tmp_path))
    try:
        bombs = []
        for i in range(6):
            image = Image.new("RGB", (6300, 6300), (40 * i, 90, 200 - 30 * i))
            image.paste((10, 10, 10), (100 * i, 100, 100 * i + 500, 600))
            image.save(tmp_path / f"big{i}.png")
            bombs.append(tmp_path / f"big{i}.png")
        del image
        assert max(p.stat().st_size for p in bombs) < 400_000
        client = RawClient(url)
        config = client.config()
        targets = [(fns(config, "upload_clinical")[0], lambda f: [None, f]),
                   (fns(config, "upload_dermoscopy")[0], lambda f: [None, f]),
                   (fns(config, "predict")[0], lambda f: [None, f, f]),
                   (fns(config, "explain")[0], lambda f: [None, f, f, "DIAG", "(predicted class)", "auto"])]
        results, normal = [], {}

        def attack(path, index, make):
            attacker = RawClient(url)
            results.append(attacker.call(index, make({"path": attacker.upload(path)})))

        threads = [threading.Thread(target=attack, args=(path, index, make))
                   for path in bombs for index, make in targets]
        for t in threads:
            t.start()
        started = time.time()
        pair = write_pair(tmp_path)
        summary, _, _ = Client(url + "/", verbose=False).predict(handle_file(str(pair[0])), handle_file(str(pair[1])),
                                                                  api_name="/predict")
        normal["seconds"] = time.time() - started
        for t in threads:
            t.join(timeout=500)
        status = Path(f"/proc/{process.pid}/status").read_text()
        peak_gb = int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024 ** 2
        print(f"peak RSS {peak_gb:.2f} GB; normal /predict answered in {normal['seconds']:.1f} s")
        assert "Fused head" in summary
        assert len(results) == 24 and peak_gb < 2.5
    finally:
        stop_app(process)


def case_shown(client: RawClient, config: dict, session: str) -> tuple[str, str]:
    """(case id from the header, case token) of the case the server has open for this session."""
    shown = client.call(fns(config, "show_case")[0], [None], session)
    assert shown.success, shown.error
    return re.search(r"\*\*case (\S+)\*\*", shown.data[3]).group(1), shown.data[-1]


def test_reference_labels_come_only_after_a_labelled_save_and_then_the_case_takes_no_changes(server):
    """Teaching mode: the Derm7pt labels of a case are in the server's state of a Derm7pt queue,
    never sent before the reviewer saved an agree/correct review; after the reveal a changed
    review of that case, and an undo of it, are refused (it would no longer be the reviewer's own
    reading)."""
    from skinnet.data import Derm7pt
    from skinnet.labels import TASKS

    client = RawClient(server["url"], "dr_t", USERS["dr_t"])
    config = client.config()
    session = secrets.token_hex(6)
    assert client.call(fns(config, "open_queue")[0], [None, "derm7pt/meta/meta.csv", *NO_FORM], session).success
    assert client.call(fns(config, "step_next")[0], [None], session).success
    case_id, token = case_shown(client, config, session)
    case = next(c for c in Derm7pt(server["release"]).cases() if c.case_id == case_id)
    reference = [t.classes[i] for t, i in zip(TASKS, case.labels)]
    save = fns(config, "save")[0]

    refused = client.call(save, save_data(token, "approve", reveal=True), session)
    assert not refused.success and "reference" not in refused.error
    skipped = client.call(save, save_data(token, "skip", reveal=True), session)
    assert skipped.success and "after you save an 'agree' or 'correct' review" in skipped.data[0]
    assert "| DIAG |" not in skipped.data[0]
    agreed = client.call(save, save_data(token, "agree", reveal=True), session)
    assert agreed.success and "Derm7pt reference labels" in agreed.data[0]
    for task, truth in zip(TASKS, reference):
        assert f"| {task.name} | {truth} |" in agreed.data[0]
    reveals = [(r["reviewer"], r["source"], r["case_id"]) for r in read_events(server["log"])[0]
               if r["verdict"] == "reveal"]
    assert reveals == [("dr_t", "derm7pt", case_id)]  # recorded in the log, before it was shown

    before = read_events(server["log"])[0]
    other = next(c for c in TASKS[0].classes if c != reference[0])
    changed = client.call(save, save_data(token, "correct", corrections=[other] + [NO_CHANGE] * 7), session)
    assert not changed.success and "seen the Derm7pt reference labels" in changed.error
    assert client.call(save, save_data(token, "agree"), session).data[0].startswith("Already saved")
    undone = client.call(fns(config, "undo")[0], undo_data(token), session)
    assert undone.success and "Not undone: You have seen the Derm7pt reference labels" in undone.data[0]
    # a manifest that reuses the case's id is not a way around it (nor a way to mix two cases
    # under one id, for anyone)
    clash = server["root"] / "queues" / f"clash_{case_id}"
    clash.mkdir()
    lesion_image(np.random.default_rng(9), (60, 60), tint=1).save(clash / "d.png")
    (clash / "manifest.csv").write_text(f"case_id,clinical,dermoscopy\n{case_id},,d.png\n")
    for who, reviewer in ((client, session), (RawClient(server["url"], "dr_c", USERS["dr_c"]), secrets.token_hex(6))):
        assert who.call(fns(config, "open_queue")[0], [None, f"clash_{case_id}/manifest.csv", *NO_FORM], reviewer).success
        assert who.call(fns(config, "step_next")[0], [None], reviewer).success
        shown_id, clash_token = case_shown(who, config, reviewer)
        assert shown_id == case_id
        mixed = who.call(save, save_data(clash_token, "correct", corrections=[other] + [NO_CHANGE] * 7), reviewer)
        assert not mixed.success and "already in the review log as a case of a derm7pt queue" in mixed.error
    assert read_events(server["log"])[0] == before
    # another reviewer who did not ask sees nothing of it
    other_reviewer = RawClient(server["url"], "dr_b", USERS["dr_b"])
    session_b = secrets.token_hex(6)
    assert other_reviewer.call(fns(config, "open_queue")[0], [None, "derm7pt/meta/meta.csv", *NO_FORM], session_b).success
    assert other_reviewer.call(fns(config, "step_next")[0], [None], session_b).success
    _, token_b = case_shown(other_reviewer, config, session_b)
    plain = other_reviewer.call(save, save_data(token_b, "agree"), session_b)
    assert plain.success and "reference" not in plain.data[0]


@pytest.mark.parametrize("event_data", [{"index": 99}, {"index": -1}, {"index": "0"}, {"index": [0, 0]},
                                        {"index": True}, {"value": "x"}, None])
def test_example_clicks_with_hostile_indexes_open_nothing(server, event_data):
    client = RawClient(server["url"], "dr_b", USERS["dr_b"])
    config = client.config()
    result = client.call(fns(config, "open_example")[0], [None], event_data=event_data)
    assert not result.success
    assert "Traceback" not in str(result.raw) and str(server["examples"]) not in str(result.raw)


def test_an_example_click_gives_clean_copies_without_names(server):
    client = RawClient(server["url"], "dr_b", USERS["dr_b"])
    config = client.config()
    result = client.call(fns(config, "open_example")[0], [None], event_data={"index": 0, "value": None})
    assert result.success, result.error
    files = client.files_in(result.data[:2])
    assert len(files) == 2 and all(f.startswith(b"\x89PNG") and b"GPS" not in f and b"exif" not in f.lower()
                                   for f in files)
    assert "first_pair" not in json.dumps(result.data[:2])  # the owner's file names stay on the server


def test_a_reviewer_sees_only_their_own_agreement_with_the_model_not_other_reviewers_labels(server):
    """Against another reviewer a kappa is an oracle for that reviewer's labels (save a guess,
    read the kappa, undo): only admins see pairs of reviewers."""
    config = RawClient(server["url"], "dr_b", USERS["dr_b"]).config()
    shown_cases = {}
    for name in ("dr_b", "dr_k"):
        client, session = RawClient(server["url"], name, USERS[name]), secrets.token_hex(6)
        assert client.call(fns(config, "open_queue")[0], [None, "clinic/manifest.csv", *NO_FORM], session).success
        assert client.call(fns(config, "step_next")[0], [None], session).success
        case_id, token = case_shown(client, config, session)
        shown_cases[name] = case_id
        saved = client.call(fns(config, "save")[0], save_data(token, "correct", corrections=["MEL"] + [NO_CHANGE] * 7),
                            session)
        assert saved.success, saved.error
    assert shown_cases["dr_b"] == shown_cases["dr_k"]
    agreement = fns(config, "agreement")[0]
    mine = RawClient(server["url"], "dr_k", USERS["dr_k"]).call(agreement, [])
    assert mine.success, mine.error
    raters = [row[0] for row in mine.data[0]["data"]]
    assert raters and all("dr_k" in r and "(model)" in r for r in raters), raters
    admin = RawClient(server["url"], "dr_a", USERS["dr_a"]).call(agreement, [])
    assert admin.success and any("dr_b" in r[0] and "dr_k" in r[0] for r in admin.data[0]["data"])
    assert not RawClient(server["url"]).call(agreement, []).success  # anonymous: nothing


def test_oversized_bodies_unused_routes_and_direct_runs_are_refused(server):
    """A 2 MB event body is refused before it is read (413), a chunked one is cut off; Gradio's
    deep_link route (it would store and serve a session's inputs and outputs) and the direct
    /run route (past the queue's limits) are closed; the app keeps serving."""
    import httpx

    signed_in = RawClient(server["url"], "dr_b", USERS["dr_b"])
    http, config = signed_in.http, signed_in.config()
    explain = fns(config, "explain")[0]
    body = json.dumps({"data": [None, None, None, "A" * 2_000_000, "(predicted class)", "auto"],
                       "fn_index": explain, "session_hash": secrets.token_hex(6), "trigger_id": None})
    big = http.post("/gradio_api/queue/join", content=body, headers={"content-type": "application/json"})
    assert big.status_code == 413

    def chunks():
        for i in range(0, len(body), 65536):
            yield body[i:i + 65536].encode()

    try:
        chunked = http.post("/gradio_api/queue/join", content=chunks(), headers={"content-type": "application/json"})
        assert chunked.status_code in (400, 413) and "event_id" not in chunked.text
    except httpx.HTTPError:
        pass  # the server hung up: as good
    session = secrets.token_hex(6)
    for who in (httpx.Client(base_url=server["url"]), http):
        assert who.get("/gradio_api/deep_link", params={"session_hash": session}).status_code == 404
    run = http.post("/gradio_api/run/predict", json={"data": [None, None, False]})
    assert run.status_code >= 400 and "join the queue" in run.text
    small = signed_in.call(explain, [None, None, None, "DIAG", "(predicted class)", "auto"])
    assert small.error is None or "Traceback" not in small.error  # still answering, with a message


def test_no_server_path_in_the_page_or_in_a_bad_queue_message(server):
    client = RawClient(server["url"], "dr_b", USERS["dr_b"])
    root = server["root"] / "queues"
    bad = root / "broken_manifest"
    bad.mkdir(exist_ok=True)
    (bad / "manifest.csv").write_text("case_id,clinical,dermoscopy\nz1,missing.png,\n")
    config = client.config()
    assert str(server["root"]) not in json.dumps(config)
    opened = client.call(fns(config, "open_queue")[0], [None, "broken_manifest/manifest.csv", *NO_FORM], secrets.token_hex(6))
    assert not opened.success and "missing.png" in opened.error and str(server["root"]) not in opened.error


def test_a_note_that_cannot_be_stored_is_refused_before_anything_is_written(server):
    client, session = RawClient(server["url"], "dr_b", USERS["dr_b"]), secrets.token_hex(6)
    config = client.config()
    path = server["root"] / "surrogate.png"
    lesion_image(np.random.default_rng(77), (50, 40), tint=4).save(path)
    clean = client.call(fns(config, "upload_dermoscopy")[0], [None, {"path": client.upload(path)}], session)
    made = client.call(fns(config, "case_from_upload")[0], [None, None, clean.data[0]], session)
    images = sorted((server["log"] / "images").iterdir())
    refused = client.call(fns(config, "save")[0], save_data(made.data[-1], "unsure", note="lone \ud800 half"), session)
    assert not refused.success and "cannot be stored" in refused.error
    assert sorted((server["log"] / "images").iterdir()) == images
    saved = client.call(fns(config, "save")[0], save_data(made.data[-1], "unsure", note="retyped"), session)
    assert saved.success and saved.data[0].startswith("Saved")


def test_visitors_inventing_sessions_cannot_push_a_reviewers_images_out(tmp_path, monkeypatch):
    """The store's cap on grants evicts anonymous visitors' grants first: thousands of example
    clicks from invented session hashes leave a signed-in reviewer's open case usable."""
    from skinnet.ui import uploads
    from skinnet.ui.access import ANONYMOUS

    monkeypatch.setattr(uploads, "MAX_GRANTS", 8)
    store = uploads.CleanStore(tmp_path / "clean")
    rng = np.random.default_rng(3)
    reviewer = uploads.Owner("abc123", "dr_a", reviewer=True)
    mine = store.add(reviewer, Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)))
    example = Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8))
    visitors = [uploads.Owner(secrets.token_hex(6), ANONYMOUS) for _ in range(50)]
    for visitor in visitors:
        store.add(visitor, example)
    assert store.path_for(reviewer, mine) == Path(mine)
    assert store.path_for(visitors[0], store.add(visitors[-1], example)) is None  # the oldest visitor's went
    store.sweep(now=time.monotonic() + 1)
    assert Path(mine).is_file()


@needs_real_derm7pt
def test_a_test_image_cropped_and_uploaded_as_an_own_pair_is_never_trained_on(server, tmp_path, caplog):
    """The attack as reported: Derm7pt test case 232, both images cropped by 10% per side,
    uploaded as "My own pair" and saved with DIAG = MEL by raw HTTP; then a training run on the
    log must leave it out as a held-out case."""
    from skinnet.data import Derm7pt
    from training.data import training_cases
    from training.params import parse_args

    data = Derm7pt(REAL_DERM7PT)
    case = next(c for c in data.cases() if c.case_id == "232")
    assert data.split_of()["232"] == "test"
    client, session = RawClient(server["url"], "dr_a", USERS["dr_a"]), secrets.token_hex(6)
    config = client.config()
    clean = []
    for name, path in (("clinical", case.clinical_path), ("dermoscopy", case.dermoscopy_path)):
        image = load_rgb(path)
        w, h = image.size
        image.crop((w // 10, h // 10, w - w // 10, h - h // 10)).save(tmp_path / f"mine_{name}.jpg", quality=92)
        uploaded = client.call(fns(config, f"upload_{name}")[0], [None, {"path": client.upload(tmp_path / f"mine_{name}.jpg")}],
                               session)
        assert uploaded.success, uploaded.error
        clean.append(uploaded.data[0])
    made = client.call(fns(config, "case_from_upload")[0], [None, *clean], session)
    case_id = re.search(r"\*\*case (\S+)\*\*", made.data[1]).group(1)
    saved = client.call(fns(config, "save")[0], save_data(made.data[-1], "correct", corrections=["MEL"] + [NO_CHANGE] * 7),
                        session)
    assert saved.success and "Saved: correct" in saved.data[0], saved.error
    with caplog.at_level("WARNING", logger="skinnet.train"):
        cases, stats = training_cases(data, parse_args(["--data-root", str(REAL_DERM7PT), "--out", str(tmp_path / "o"),
                                                        "--corrections", str(server["log"] / "corrections.csv")]))
    assert case_id.startswith("upload:") and case_id not in {c.case_id for c in cases}
    why = [r.getMessage() for r in caplog.records if f"(case {case_id})" in r.getMessage()]
    assert len(why) == 1 and "an edited copy of a held-out Derm7pt image of case 232" in why[0], why
    assert stats["n_skipped_held_out"] >= 1


def export_link(client: RawClient, result: Result) -> str:
    """The URL an admin's page gets for an export, whatever form the app gives it in (a download
    link, or a file Gradio serves)."""
    value = result.data[0]
    if isinstance(value, dict):
        return value.get("url") or f"{client.base}/gradio_api/file={value['path']}"
    href = re.search(r'href="([^"]+)"', value).group(1)
    return f"{client.base}/{href}"


def test_an_export_is_for_its_admin_only_and_only_for_ten_minutes(server, monkeypatch):
    """Everyone's labels, exported by an admin: another signed-in reviewer and an anonymous
    visitor who get the link fetch nothing; the admin can, until EXPORT_TTL_S, then the file
    is gone from the server."""
    admin = RawClient(server["url"], "dr_a", USERS["dr_a"])
    exported = admin.call(fns(admin.config(), "export_labels")[0], ["majority"])
    assert exported.success, exported.error
    url = export_link(admin, exported)
    for stranger in (RawClient(server["url"], "dr_b", USERS["dr_b"]), RawClient(server["url"])):
        fetched = stranger.http.get(url)
        assert fetched.status_code == 404 and b"case_num" not in fetched.content, (url, fetched.status_code)
    mine = admin.http.get(url)
    assert mine.status_code == 200 and mine.text.startswith("case_num,source,clinic,derm,DIAG,")
    assert "attachment" in mine.headers["content-disposition"] and mine.headers["cache-control"] == "no-store"

    from skinnet.ui import exports
    files = list((server["log"] / "exports").iterdir())
    assert len(files) == 1 and str(server["log"]) not in exported.data[0]
    monkeypatch.setattr(exports, "EXPORT_TTL_S", 0.0)  # ten minutes later
    assert admin.http.get(url).status_code == 404
    deadline = time.time() + 30  # the app's sweeper runs every 5 s
    while files[0].exists() and time.time() < deadline:
        time.sleep(0.5)
    assert not files[0].exists()


def test_a_killed_apps_exports_are_removed_when_it_starts_again(tmp_path):
    """An export made, the app killed with SIGKILL: once it starts again no copy of the export
    is left on the server (its log folder, the temporary folder Gradio and Python use)."""
    import tempfile

    marker = f"killed-export-{secrets.token_hex(4)}"
    log = CorrectionsLog(tmp_path / "log")
    predicted = {t: "ABS" for t in TASK_NAMES} | {"DIAG": "NEV", "PN": "TYP"}
    log.append(Review(new_event_id(), "dr_a", marker, "upload", "correct", predicted,
                      {t: NO_CHANGE for t in TASK_NAMES} | {"DIAG": "MEL"}), dermoscopy=Image.new("RGB", (8, 8)))
    started = time.time()
    env = app_env(tmp_path, SKINNET_USERS="dr_a:pass-a-123", SKINNET_ADMINS="dr_a")

    def copies() -> list[Path]:
        found = []
        for folder in (tmp_path / "log", Path(tempfile.gettempdir())):
            for path in folder.rglob("*.csv"):
                try:
                    if path.stat().st_mtime >= started and marker in path.read_text(errors="replace"):
                        found.append(path)
                except OSError:
                    pass
        return [p for p in found if p != log.path]

    process, url = start_app(env)
    try:
        admin = RawClient(url, "dr_a", "pass-a-123")
        exported = admin.call(fns(admin.config(), "export_labels")[0], ["latest"])
        assert exported.success and marker in admin.http.get(export_link(admin, exported)).text
        assert copies(), "the export should be on disk while the app runs"
        process.kill()
        process.wait(timeout=30)
        process, _ = start_app(env)
        assert copies() == []
    finally:
        stop_app(process)


OPEN_ROUTES = {("GET", "/"), ("HEAD", "/"), ("GET", "/config"), ("GET", "/config/"), ("GET", "/theme.css"),
               ("GET", "/favicon.ico"), ("GET", "/robots.txt"), ("GET", "/manifest.json"), ("GET", "/pwa_icon"),
               ("GET", "/pwa_icon/{size}"), ("GET", "/static/{path:path}"), ("GET", "/assets/{path:path}"),
               ("GET", "/gradio_api/info"), ("GET", "/gradio_api/info/"), ("GET", "/gradio_api/queue/data"),
               ("GET", "/gradio_api/upload_progress"), ("GET", "/gradio_api/startup-events"),
               ("GET", "/gradio_api/app_id"), ("GET", "/gradio_api/app_id/"),
               ("GET", "/gradio_api/heartbeat/{session_hash}"), ("GET", "/gradio_api/file={path_or_url:path}"),
               ("HEAD", "/gradio_api/file={path_or_url:path}"), ("GET", "/logout"), ("POST", "/login"),
               ("POST", "/login/"), ("POST", "/gradio_api/upload"), ("POST", "/gradio_api/queue/join"),
               ("POST", "/gradio_api/run/{api_name}"), ("POST", "/gradio_api/run/{api_name}/")}
"""What the page, gradio_client and the logins use (recorded from a browser and a client; ``app_id``
is what a page that lost its connection polls, to reload once the app is back); the
Hugging Face sign-in routes exist only on a Space (tests/test_space_security.py)."""


def app_routes(routes) -> list[tuple[str, str]]:
    """(method, path template) of every route of a launched Gradio app, included routers too."""
    found = []
    for route in routes:
        if hasattr(route, "path"):
            found += [(method, route.path) for method in sorted(getattr(route, "methods", None) or ["GET"])]
        else:  # FastAPI's included router
            found += app_routes(route.original_router.routes)
    return found


def test_only_the_routes_the_app_uses_answer(server):
    """Every route of the launched app, called anonymously and signed in: only the allow-list
    answers; ``/gradio_api/dev/reload`` (a stream held open forever, polled 20 times a second)
    and every other route of Gradio's is refused at once."""
    import httpx

    routes = app_routes(server["app"].server_app.routes)
    assert len(routes) > 60
    values = {"path": "x/y.png", "path_or_url": "x.png", "api_name": "predict", "size": "192",
              "session_hash": "abc", "event_id": "e1", "run": "1", "component_id": "1", "segment_id": "1",
              "ext": "ts", "id": "1", "key": "k", "environment": "prod", "type": "index", "file_name": "x.js", "url_path": "x"}
    clients = {"anonymous": httpx.Client(base_url=server["url"], timeout=10),
               "signed in": RawClient(server["url"], "dr_a", USERS["dr_a"]).http}
    for who, http in clients.items():
        answered = set()
        for method, template in routes:
            path = re.sub(r"\{(\w+)(:\w+)?\}", lambda m: values[m.group(1)], template)
            with http.stream(method, path, content=b"{}" if method == "POST" else None,
                             headers={"content-type": "application/json"}) as response:  # some are endless streams
                refused = response.status_code == 404 and response.headers.get("content-type") == "text/plain" \
                    and (method == "HEAD" or response.read() == b"Not found")  # a HEAD answer has no body
            if not refused:
                answered.add((method, template))
        assert answered == OPEN_ROUTES, (who, sorted(answered ^ OPEN_ROUTES))
    started = time.time()
    reload = clients["anonymous"].get("/gradio_api/dev/reload")
    assert reload.status_code == 404 and time.time() - started < 5


def resident_mb(pid: int) -> float:
    return int(re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text()).group(1)) / 1024


@pytest.mark.timeout(900)
def test_invented_sessions_do_not_grow_the_apps_memory(tmp_path):
    """Anonymous visitors, each with a new session hash, upload two images and ask /predict.
    After a warm-up of 60 such sessions, 240 more grow the app's resident memory by less than
    30 MB (Gradio kept about 170 KB per session, up to 10,000 sessions: 1.7 GB)."""
    from app_helpers import write_pair

    process, url = start_app(app_env(tmp_path))
    try:
        pairs = [write_pair(tmp_path, seed) for seed in range(4)]
        client = RawClient(url)
        config = client.config()
        upload = {name: fns(config, f"upload_{name}")[0] for name in ("clinical", "dermoscopy")}
        predict = fns(config, "predict")[0]

        def visitor(i: int) -> None:
            session = secrets.token_hex(8)
            clean = []
            for name, path in zip(("clinical", "dermoscopy"), pairs[i % len(pairs)]):
                uploaded = client.call(upload[name], [None, {"path": client.upload(path)}], session)
                assert uploaded.success, uploaded.error
                clean.append(uploaded.data[0])
            assert client.call(predict, [None, *clean, False], session).success

        for i in range(60):
            visitor(i)
        before = resident_mb(process.pid)
        for i in range(240):
            visitor(i)
        grown = resident_mb(process.pid) - before
        print(f"240 more sessions: resident memory {before:.0f} MB -> +{grown:.1f} MB")
        assert grown < 30
    finally:
        stop_app(process)


def test_invented_sessions_push_out_visitors_sessions_never_a_reviewers(server, monkeypatch):
    """The session store's caps: past VISITOR_SESSIONS the least recently used visitors' sessions
    go, a reviewer's stays (a reviewer's case lives in it); each keeps every field Gradio's own
    session state has."""
    from gradio.state_holder import SessionState

    from skinnet.ui import sessions

    store = server["app"].server_app.state_holder
    assert isinstance(store, sessions.SessionStore)
    assert set(vars(sessions.LeanSessionState(server["app"]))) == set(vars(SessionState(server["app"])))
    monkeypatch.setattr(sessions, "VISITOR_SESSIONS", 5)
    client = RawClient(server["url"], "dr_b", USERS["dr_b"])
    config = client.config()
    reviewer_session = secrets.token_hex(6)
    assert client.call(fns(config, "open_queue")[0], [None, "clinic/manifest.csv", *NO_FORM], reviewer_session).success
    visitor = RawClient(server["url"], "dr_c", USERS["dr_c"])  # sessions where no reviewer acted count as visitors'
    for _ in range(12):
        assert visitor.call(fns(config, "who_is_signed_in")[0], [], secrets.token_hex(6)).success
    assert reviewer_session in store.session_data
    assert len([s for s in store.session_data if s not in store.reviewer_sessions]) == 5
    assert client.call(fns(config, "step_next")[0], [None], reviewer_session).success  # its queue is still open


def test_a_queue_image_swapped_for_a_link_after_the_queue_opened_is_not_served(server):
    """The queue folder's files are checked when a queue opens; a link put in place of a case's
    image afterwards (pointing at a server file outside the folder) must not be read when the
    case is shown, scored or saved."""
    folder = server["root"] / "queues" / "swap"
    (folder / "img").mkdir(parents=True)
    rng = np.random.default_rng(11)
    for i in range(2):
        lesion_image(rng, (64, 64), tint=i).save(folder / "img" / f"s{i}.png")
    (folder / "manifest.csv").write_text("case_id,clinical,dermoscopy\nswap0,,img/s0.png\nswap1,,img/s1.png\n")
    client, session = RawClient(server["url"], "dr_b", USERS["dr_b"]), secrets.token_hex(6)
    config = client.config()
    assert open_first_case(client, config, session, "swap/manifest.csv").success
    (folder / "img" / "s1.png").unlink()
    (folder / "img" / "s1.png").symlink_to(server["secret"])  # swapped in after the queue opened
    assert client.call(fns(config, "step_next")[0], [None], session).success
    shown = client.call(fns(config, "show_case")[0], [None], session)
    assert not any(resembles(f, server["secret"]) for f in client.files_in(shown.data))
    assert not shown.success and "no longer inside the queue folder" in shown.error
    assert str(server["root"]) not in shown.error
    ordered = client.call(fns(config, "order_queue")[0], [None, *NO_FORM], session)
    assert not ordered.success and "no longer inside the queue folder" in ordered.error


def fill(folder: Path) -> None:
    """Write to the folder's disk until it is full."""
    with open(folder / "filler", "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 4096)
        except OSError:
            pass


def test_a_full_disk_while_moving_through_a_queue_says_so_and_leaves_nothing(tmp_path):
    """The log folder's disk fills up while a reviewer walks a queue (the app keeps each
    reviewer's place there): moving on still works, the reviewer is told in words that the
    place was not kept, and no half-written file is left behind."""
    write_manifest(tmp_path / "queues" / "clinic")
    with small_disk(tmp_path / "log", "256k") as log_dir:
        settings = AppSettings(checkpoint=tiny_checkpoint(tmp_path), port=free_port(), log_dir=log_dir,
                               users={"dr_a": USERS["dr_a"]}, queue_root=tmp_path / "queues")
        with launched(settings):
            client = RawClient(f"http://127.0.0.1:{settings.port}", "dr_a", USERS["dr_a"])
            session, config = secrets.token_hex(6), client.config()
            assert open_first_case(client, config, session).success
            fill(log_dir)
            blank_form = [None, None, None, *[NO_CHANGE] * len(TASK_NAMES), None, ""]  # state, token, verdict, tasks, confidence, note
            for move in ("go_next", "go_prev", "go_next_unreviewed"):
                moved = client.call(fns(config, move)[0], blank_form, session)
                assert moved.success, (move, moved.error)
                assert any("disk is full" in w for w in moved.warnings), (move, moved.warnings)
            ordered = client.call(fns(config, "order_queue")[0], [None, *NO_FORM], session)
            assert ordered.success, ordered.error
        assert [p.name for p in log_dir.rglob("*") if p.name.endswith(".tmp")] == []


def test_a_foreign_review_log_is_named_in_words_not_by_its_server_path(tmp_path):
    """The log folder's file is replaced by one that is not a skinnet log (a spreadsheet saved
    over it) while a reviewer has a case open: saving and every other answer that reads the log
    say so in words, with no server path, and the file is left as it was."""
    write_manifest(tmp_path / "queues" / "clinic")
    settings = AppSettings(checkpoint=tiny_checkpoint(tmp_path), port=free_port(), log_dir=tmp_path / "log",
                           users={"dr_a": USERS["dr_a"]}, queue_root=tmp_path / "queues", admins=frozenset({"dr_a"}))
    foreign = tmp_path / "log" / "corrections.csv"
    with launched(settings):
        client, session = RawClient(f"http://127.0.0.1:{settings.port}", "dr_a", USERS["dr_a"]), secrets.token_hex(6)
        config = client.config()
        clean = client.call(fns(config, "upload_dermoscopy")[0],
                            [None, {"path": client.upload(tmp_path / "queues" / "clinic" / "img" / "c0_derm.png")}],
                            session)
        made = client.call(fns(config, "case_from_upload")[0], [None, None, clean.data[0]], session)
        assert made.success, made.error
        foreign.parent.mkdir(exist_ok=True)
        foreign.write_text("patient,diagnosis\nJane Doe,MEL\n")
        answers = [client.call(fns(config, "save")[0], save_data(made.data[-1], "unsure"), session),
                   client.call(fns(config, "case_from_upload")[0], [None, None, clean.data[0]], session),
                   client.call(fns(config, "open_queue")[0], [None, "clinic/manifest.csv", *NO_FORM], session),
                   client.call(fns(config, "agreement")[0], []),
                   client.call(fns(config, "export_labels")[0], ["latest"])]
    for answer in answers:
        assert not answer.success and "review log" in (answer.error or ""), answer.raw
        assert str(tmp_path) not in json.dumps(answer.raw), answer.error
    assert foreign.read_text() == "patient,diagnosis\nJane Doe,MEL\n"


def test_every_event_returns_as_many_values_as_its_outputs(server):
    """A handler's returned tuple and its output list in layout.py are written apart, and Gradio
    ignores extra values with a warning and hides a short tuple's error from the page: every
    event of the page, called by raw HTTP with its inputs' current values in a reviewer's session
    with a case open, returns exactly as many values as its event has outputs."""
    import functools

    from gradio import skip

    app = server["app"]
    mismatched, returned = [], set()

    def counted(index, block_fn):
        original = block_fn.fn

        @functools.wraps(original)
        def run(*args, **kwargs):
            result = original(*args, **kwargs)
            if len(block_fn.outputs) > 1 and result == skip():  # one skip leaves every output as it is: valid
                returned.add(index)
            elif len(block_fn.outputs) > 1 and isinstance(result, (tuple, list)):
                returned.add(index)
                if len(result) != len(block_fn.outputs):
                    mismatched.append((block_fn.name, len(block_fn.outputs), len(result)))
            return result
        return original, run

    originals = {}
    for index, block_fn in app.fns.items():
        if block_fn.fn is not None:
            originals[index], block_fn.fn = counted(index, block_fn)
    try:
        client, session = RawClient(server["url"], "dr_a", USERS["dr_a"]), secrets.token_hex(6)
        config = client.config()
        assert open_first_case(client, config, session).success
        props = {c["id"]: c for c in config["components"]}
        for index, dependency in enumerate(config["dependencies"]):
            if index not in originals:
                continue
            data = [None if props[i].get("type") == "state" else props[i].get("props", {}).get("value")
                    for i in dependency["inputs"]]
            select = any(trigger == "select" for _, trigger in dependency["targets"])
            client.call(index, data, session, event_data={"index": 0, "value": None} if select else None)
    finally:
        for index, original in originals.items():
            app.fns[index].fn = original
    assert not mismatched, mismatched
    multi = {i for i, f in app.fns.items() if f.fn is not None and len(f.outputs) > 1}
    assert len(returned) >= 0.8 * len(multi), (len(returned), len(multi))  # most events returned normally


def test_a_review_is_saved_only_with_the_images_its_page_showed_and_its_id_named(server):
    """Three ways a label could end up on images the reviewer never saw, sent as the app sends
    them: a queue image replaced on the server after the case was shown; a second queue file that
    reuses a case id for another lesion; the same picture uploaded alone in the clinical slot and
    then in the dermoscopy slot (two readings, not one). dr_i saves in no other test."""
    rng = np.random.default_rng(17)
    for name in ("ids_a", "ids_b"):  # the same ids, other lesions
        folder = server["root"] / "queues" / name
        (folder / "img").mkdir(parents=True)
        for i in range(2):
            lesion_image(rng, (64, 56), tint=i).save(folder / "img" / f"d{i}.png")
        (folder / "manifest.csv").write_text("case_id,clinical,dermoscopy\nid0,,img/d0.png\nid1,,img/d1.png\n")
    client, config = RawClient(server["url"], "dr_i", USERS["dr_i"]), None
    config = client.config()
    save, show = fns(config, "save")[0], fns(config, "show_case")[0]
    mel = [*["MEL"], *[NO_CHANGE] * 7]

    def rows_of(case_id):
        return [r for r in read_events(server["log"])[0] if r["case_id"] == case_id and r["reviewer"] == "dr_i"]

    session = secrets.token_hex(6)
    shown = open_first_case(client, config, session, "ids_a/manifest.csv")
    assert shown.success and "id0" in shown.data[3]
    image = server["root"] / "queues" / "ids_a" / "img" / "d0.png"
    seen = pixel_sha256(load_rgb(image))
    lesion_image(rng, (64, 56), tint=3).save(image)  # replaced after the page showed it
    late = client.call(save, save_data(shown.data[-1], "correct", corrections=mel, note="on the shown image"), session)
    assert not late.success and "images changed on the server since they were shown" in late.error
    assert rows_of("id0") == []
    shown = client.call(show, [None], session)  # shown again: the new image, now saved with it
    saved = client.call(save, save_data(shown.data[-1], "correct", corrections=mel, note="a"), session)
    assert saved.success and "Saved: correct for case id0" in saved.data[0]
    assert [r["derm_sha256"] for r in rows_of("id0")] == [pixel_sha256(load_rgb(image))] != [seen]

    other = secrets.token_hex(6)  # ids_b's id0: another lesion under the same id
    shown = open_first_case(client, config, other, "ids_b/manifest.csv")
    for form in (save_data(shown.data[-1], "correct", corrections=mel, note="a"),  # the same answer too
                 save_data(shown.data[-1], "correct", corrections=["BCC", *[NO_CHANGE] * 7], note="b")):
        refused = client.call(save, form, other)
        assert not refused.success and "already in the review log with other images" in refused.error
    assert [r["note"] for r in rows_of("id0")] == ["a"]

    upload = secrets.token_hex(6)
    picture = server["root"] / "one_picture.png"
    lesion_image(rng, (60, 60), tint=4).save(picture)
    clean = client.call(fns(config, "upload_clinical")[0], [None, {"path": client.upload(picture)}], upload).data[0]
    made = {}
    for slot, pair in (("clinical", [clean, None]), ("dermoscopy", [None, clean])):
        made[slot] = client.call(fns(config, "case_from_upload")[0], [None, *pair], upload)
        assert made[slot].success and f"upload:{slot}-" in made[slot].data[1]
        said = client.call(save, save_data(made[slot].data[-1], "correct", corrections=["SK", *[NO_CHANGE] * 7]),
                           upload)
        assert said.success and said.data[0].startswith("Saved: correct") and "replaces" not in said.data[0]
    stored = [r for r in read_events(server["log"])[0] if r["reviewer"] == "dr_i" and r["source"] == "upload"]
    assert [(bool(r["clinic"]), bool(r["derm"])) for r in stored] == [(True, False), (False, True)]


def test_a_save_from_a_page_whose_session_the_server_dropped_says_so(server, monkeypatch):
    """An hour without use drops a page's session on the server; the save sent from that page then
    met a fresh session and was told "the case changed", on every retry. It says what happened and
    what to do, and nothing is saved or undone."""
    from skinnet.ui import sessions

    client = RawClient(server["url"], "dr_b", USERS["dr_b"])
    config = client.config()
    idle, busy = secrets.token_hex(6), secrets.token_hex(6)
    token = open_first_case(client, config, idle).data[-1]
    before = len(read_events(server["log"])[0])
    monkeypatch.setattr(sessions, "IDLE_S", 0.0)  # the hour has passed: the next request drops it
    assert open_first_case(client, config, busy).success
    monkeypatch.setattr(sessions, "IDLE_S", 3600.0)
    for _ in range(2):
        late = client.call(fns(config, "save")[0], save_data(token, note="after lunch"), idle)
        assert not late.success and "session on the server ended" in late.error and "Reload the page" in late.error
    undone = client.call(fns(config, "undo")[0], undo_data(token), idle)
    assert undone.success and undone.data[0].startswith("Nothing was undone: this page's session")
    assert len(read_events(server["log"])[0]) == before
