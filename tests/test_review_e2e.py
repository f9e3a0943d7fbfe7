"""A review session in a real headless Chromium: log in, open a queue, agree, correct, save;
then train on the resulting corrections CSV."""

import re
from contextlib import contextmanager

import numpy as np
import pytest

from app_helpers import free_port, tiny_checkpoint
from skinnet.checkpoint import load_checkpoint
from skinnet.corrections import read_corrections
from skinnet.predict import Predictor
from skinnet.ui import AppSettings, build_app, launch
from skinnet_testkit.queues import write_queue
from skinnet_testkit.synthetic import lesion_image
from test_browser import CHROMIUM, CHROMIUM_ARGS, pytestmark  # noqa: F401  (same skip rule)


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    root = tmp_path_factory.mktemp("review")
    predictor = Predictor.from_checkpoint(tiny_checkpoint(root))
    settings = AppSettings(checkpoint=root / "tiny.safetensors", port=free_port(), log_dir=root / "log",
                           users={"dr_a": "s3cret-pass"}, queue_root=root, admins=frozenset({"dr_a"}))
    app = build_app(predictor, settings)
    launch(app, settings, prevent_thread_lock=True, quiet=True)
    yield settings, write_queue(root / "queue")
    app.close()


@contextmanager
def signed_in_page(settings, width: int, height: int):
    """A headless Chromium page at this viewport, signed in as dr_a; closed afterwards."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            log_in(page, settings)
            yield page
        finally:
            browser.close()


def log_in(page, settings):
    page.goto(f"http://127.0.0.1:{settings.port}/")
    page.get_by_label("username").fill("dr_a")
    page.get_by_label("password").fill("s3cret-pass")
    page.get_by_role("button", name="Login").click()
    wait_until_restored(page)


def wait_until_restored(page) -> None:
    """The page's load is done: the reviewer's queue and case, if the server kept one, are on
    screen. Until then a queue the test opens can be replaced by the restored one."""
    from playwright.sync_api import expect

    expect(page.locator("body")).to_have_class(re.compile("page-restored"), timeout=60_000)


def start_own_pair(page, settings) -> None:
    """Empty upload slots, as a reviewer gets them with 'My own pair' (after the page load has
    restored the queue case an earlier test left dr_a in, if any)."""
    from playwright.sync_api import expect

    if (settings.log_dir / "reviewer_sessions").is_dir():
        expect(page.locator("#case-header")).to_contain_text("case c", timeout=60_000)  # restored on load
        page.locator("#own-images").click()
        expect(page.locator("#case-header")).to_contain_text("No case open", timeout=60_000)


def choose(page, dropdown_id, option):
    page.locator(f"#{dropdown_id} input").click()
    page.get_by_role("option", name=option, exact=True).click()


def test_review_session_end_to_end(session, release, tmp_path):
    from playwright.sync_api import expect

    settings, manifest = session
    with signed_in_page(settings, 1400, 2200) as page:

        open_queue_at_first_case(page)
        expect(page.locator("#queue-status")).to_contain_text("Opened 3 cases")
        expect(page.locator("#summary")).to_contain_text("Fused head", timeout=60_000)
        expect(page.locator("#correct-DIAG")).to_contain_text("model says", timeout=60_000)

        # case c0: agree, with the keyboard (a, then Enter)
        page.locator("#case-header").click()
        page.keyboard.press("a")
        expect(page.locator("#verdict input[value=agree]")).to_be_checked()
        page.keyboard.press("Enter")
        expect(page.locator("#save-status")).to_contain_text("Saved: agree for case c0", timeout=60_000)
        page.locator("#save-review").click()  # a second save of the same opened case
        expect(page.locator("#save-status")).to_contain_text("Already saved", timeout=60_000)

        # case c1: correct two labels
        page.locator("#next-unreviewed").click()
        expect(page.locator("#case-header")).to_contain_text("case c1", timeout=60_000)
        expect(page.locator("#summary")).to_contain_text("Fused head", timeout=60_000)
        expect(page.locator("#correct-DIAG")).to_contain_text("model says", timeout=60_000)
        page.locator("#verdict input[value=correct]").check()
        choose(page, "correct-DIAG", "SK")
        choose(page, "correct-BWV", "ABS")
        page.locator("#save-review").click()
        expect(page.locator("#save-status")).to_contain_text("Saved: correct for case c1", timeout=60_000)
        expect(page.locator("#case-header")).to_contain_text("your review: correct")
        page.screenshot(path=str(tmp_path / "review.png"), full_page=True)

    rows, problems = read_corrections(settings.log_dir / "corrections.csv")
    assert problems == []
    assert [(r["case_id"], r["verdict"], r["reviewer"]) for r in rows] == [("c0", "agree", "dr_a"), ("c1", "correct", "dr_a")]
    agree, correct = rows
    assert all(agree[t] == agree[f"model_{t}"] and agree[f"status_{t}"] == "confirmed" for t in ("DIAG", "STR", "VS"))
    assert correct["DIAG"] == "SK" and correct["BWV"] == "ABS" and correct["diagnosis"] == ""
    # tasks left at "no change" under "correct" are stored as not reviewed, not as the model's answer
    assert all(correct[t] == "" and correct[f"status_{t}"] == "not reviewed" for t in ("PN", "STR", "PIG", "RS",
                                                                                         "DaG", "VS"))
    assert float(correct["seconds_spent"]) > 0 and correct["model_version"].startswith("tiny@")
    for row in rows:
        assert (settings.log_dir / row["derm"]).is_file() and row["derm"].endswith(f"{row['derm_sha256']}.png")

    from training import train
    path = train.main(["--data-root", str(release), "--out", str(tmp_path / "run"), "--epochs", "1",
                       "--corrections", str(settings.log_dir / "corrections.csv"), "--image-size", "48",
                       "--batch-size", "4", "--no-progress", "--threads", "1", "--cross-attention", "-1",
                       "--attention-dim", "32"])
    _, card = load_checkpoint(path)
    assert card.training["data"]["n_corrections"] == 2 and card.training["data"]["n_new_cases"] == 2


def test_uploaded_case_saved_without_metadata_or_name(session, tmp_path):
    """An upload by hand with EXIF GPS and a revealing file name: neither reaches the log."""
    from playwright.sync_api import expect

    from app_helpers import jpeg_with_gps

    settings, _ = session
    revealing = jpeg_with_gps(tmp_path / "jane_doe_1970-01-01_left_shoulder.jpg")
    with signed_in_page(settings, 1400, 2200) as page:
        start_own_pair(page, settings)
        page.locator("#dermoscopy-input input[type=file]").set_input_files(str(revealing))
        expect(page.locator("#case-header")).to_contain_text("case upload:", timeout=60_000)
        page.locator("#analyse").click()
        expect(page.locator("#summary")).to_contain_text("Dermoscopy head", timeout=60_000)
        page.locator("#verdict input[value=unsure]").check()
        page.locator("#confidence input[value='2']").check()
        page.get_by_label("Note (max 2000 chars)").fill("first upload")
        page.locator("#save-review").click()
        expect(page.locator("#save-status")).to_contain_text("Saved: unsure", timeout=60_000)
        assert "jane_doe" not in page.content()
        # another pair is another case: nothing of the last review stays in the form
        other = tmp_path / "other.png"
        lesion_image(np.random.default_rng(3), (70, 70), tint=4).save(other)
        page.locator("#dermoscopy-input").get_by_role("button", name="Remove Image").click()
        page.locator("#dermoscopy-input input[type=file]").set_input_files(str(other))
        expect(page.locator("#save-status")).to_have_text("", timeout=60_000)
        expect(page.locator("#verdict input[value=unsure]")).not_to_be_checked()
        expect(page.locator("#confidence input[value='2']")).not_to_be_checked()
        expect(page.get_by_label("Note (max 2000 chars)")).to_have_value("")
        # the first pair again: its saved review comes back
        page.locator("#dermoscopy-input").get_by_role("button", name="Remove Image").click()
        page.locator("#dermoscopy-input input[type=file]").set_input_files(str(revealing))
        expect(page.locator("#save-status")).to_contain_text("Showing your saved review (unsure", timeout=60_000)
        expect(page.locator("#confidence input[value='2']")).to_be_checked()
        expect(page.get_by_label("Note (max 2000 chars)")).to_have_value("first upload")
        page.get_by_role("tab", name="Queue").click()
        with page.expect_download() as download:
            page.locator("#export-labels").click()
            page.locator("#export-file a").first.click(timeout=60_000)
        exported = download.value.path().read_text()
    assert exported.startswith("case_num,source,clinic,derm,DIAG,")
    log_text = "".join(p.read_text() for p in settings.log_dir.glob("shards/*.csv"))
    assert "jane_doe" not in log_text and "shoulder" not in log_text
    rows, _ = read_corrections(settings.log_dir / "corrections.csv")
    upload = [r for r in rows if r["case_id"].startswith("upload:")][-1]
    assert upload["clinic"] == "" and upload["derm"].endswith(".png")
    stored = (settings.log_dir / upload["derm"]).read_bytes()
    assert b"PatientCam" not in stored and b"Jane" not in stored and b"GPS" not in stored
    leftovers = [p for p in settings.log_dir.rglob("*") if "jane" in p.name.lower()]
    assert leftovers == []


def test_agreement_view_shows_two_reviewers_and_the_model(session, tmp_path):
    from playwright.sync_api import expect

    from skinnet.corrections import CorrectionsLog, Review, new_event_id

    settings, _ = session
    log = CorrectionsLog(settings.log_dir)  # a second reviewer's saves, as another app process would log them
    for i, (a, b) in enumerate([("NEV", "NEV"), ("MEL", "NEV"), ("SK", "SK"), ("BCC", "BCC")]):
        predicted = {"DIAG": "NEV", "PN": "ABS", "STR": "ABS", "PIG": "ABS", "RS": "ABS", "DaG": "ABS",
                     "BWV": "ABS", "VS": "ABS"}
        for reviewer, diag in (("dr_a", a), ("dr_b", b)):
            log.append(Review(event_id=new_event_id(), reviewer=reviewer, case_id=f"agree{i}", source="manifest",
                              verdict="correct", predicted=predicted, corrected={"DIAG": diag}))
    with signed_in_page(settings, 1366, 768) as page:
        page.get_by_role("tab", name="Queue").click()
        page.get_by_text("Agreement (reviewers)").click()
        page.locator("#agreement").click()
        table = page.locator("#agreement-table")
        expect(table).to_contain_text("dr_a vs dr_b", timeout=60_000)
        expect(table).to_contain_text("dr_b vs (model)")
        text = table.inner_text()
        assert "DIAG" in text and "0.67" in text  # dr_a vs dr_b on DIAG: 3 of 4 agree, kappa 2/3 (scikit-learn)


def open_queue_at_first_case(page) -> None:
    """Pick the queue file from the list (never typed), open it, and land on its first case."""
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Queue").click()
    choose(page, "queue-file", "queue/manifest.csv")
    page.locator("#open-queue").click()
    page.get_by_role("tab", name="Review").click()
    expect(page.locator("#case-header")).to_contain_text("case c0", timeout=60_000)


def open_third_case(page) -> None:
    """Open the queue and step to its third case, c2, with 'next' (whatever was reviewed before)."""
    from playwright.sync_api import expect

    open_queue_at_first_case(page)
    for case in ("c1", "c2"):
        page.locator("#next-case").click()
        expect(page.locator("#case-header")).to_contain_text(f"case {case}", timeout=60_000)


def test_edit_after_saving_supersedes_undo_withdraws_and_reopening_shows_your_review(session):
    from playwright.sync_api import expect

    settings, _ = session
    with signed_in_page(settings, 1366, 2000) as page:
        open_third_case(page)
        expect(page.locator("#correct-DIAG")).to_contain_text("model says", timeout=60_000)
        status = page.locator("#save-status")

        page.locator("#verdict input[value=correct]").check()
        choose(page, "correct-DIAG", "SK")
        expect(status).to_contain_text("Unsaved changes", timeout=30_000)
        page.locator("#save-review").click()
        expect(status).to_contain_text("Saved: correct for case c2", timeout=60_000)
        choose(page, "correct-DIAG", "MEL")  # change of mind after saving
        expect(status).to_contain_text("Unsaved changes", timeout=30_000)
        page.locator("#save-review").click()
        expect(status).to_contain_text("replaces your earlier review", timeout=60_000)
        page.locator("#save-review").click()  # nothing changed: logged once
        expect(status).to_contain_text("Already saved", timeout=60_000)

        page.locator("#undo-save").click()
        expect(status).to_contain_text("Undone: your correct review of case c2 is withdrawn", timeout=60_000)
        expect(page.locator("#correct-DIAG input")).to_have_value("SK", timeout=30_000)
        rows, _ = read_corrections(settings.log_dir / "corrections.csv")
        assert [r["DIAG"] for r in rows if r["case_id"] == "c2"] == ["SK"]  # on disk, not only on screen

        choose(page, "correct-DIAG", "NEV · dermal nevus")  # after an undo, a new answer is a new save
        page.locator("#save-review").click()
        expect(status).to_contain_text("replaces your earlier review", timeout=60_000)

        page.reload()  # a new page (still signed in): the saved review comes back into the form
        wait_until_restored(page)
        open_third_case(page)
        expect(status).to_contain_text("Showing your saved review (correct", timeout=60_000)
        expect(page.locator("#correct-DIAG input")).to_have_value("NEV · dermal nevus")
        expect(page.locator("#correct-PN input")).to_have_value("no change")  # not reviewed stays not reviewed
        expect(page.locator("#verdict input[value=correct]")).to_be_checked()

    rows, problems = read_corrections(settings.log_dir / "corrections.csv")
    mine = [r for r in rows if r["case_id"] == "c2"]
    assert problems == [] and [(r["DIAG"], r["diagnosis"]) for r in mine] == [("SK", ""), ("NEV", "dermal nevus")]
    assert mine[-1]["status_PN"] == "not reviewed" and mine[-1]["PN"] == ""
    raw = "".join(p.read_text() for p in settings.log_dir.glob("shards/*.csv"))
    assert raw.count(",c2,") == 4  # SK, MEL, the retraction of MEL, dermal nevus: appended, never edited


def test_least_sure_first_opens_the_least_sure_case_n_follows_and_rows_open_cases(session):
    from playwright.sync_api import expect

    settings, manifest = session
    write_queue(manifest.parent.parent / "queue_b", n=5, seed=5, prefix="b")
    with signed_in_page(settings, 1366, 2000) as page:
        page.get_by_role("tab", name="Queue").click()
        page.reload()  # the queue list is read at page load
        wait_until_restored(page)
        page.get_by_role("tab", name="Queue").click()
        choose(page, "queue-file", "queue_b/manifest.csv")
        page.locator("#open-queue").click()
        expect(page.locator("#queue-status")).to_contain_text("Opened 5 cases", timeout=60_000)
        expect(page.locator("#case-header")).to_contain_text(re.compile(r"case b\d \("), timeout=60_000)  # opened
        page.locator("#order-queue").click()
        expect(page.locator("#queue-status")).to_contain_text("Ordered by model uncertainty", timeout=60_000)
        table = page.locator("#queue-table")
        expect(table).to_contain_text("0.", timeout=30_000)  # uncertainty column filled
        rows = re.findall(r"(\d+)\n(b\d)\nmanifest\n(?:[a-z]+\n)?([0-9.]+)", table.inner_text())
        order, scores = [case for _, case, _ in rows], [float(score) for _, _, score in rows]
        assert sorted(order) == [f"b{i}" for i in range(5)] and scores == sorted(scores, reverse=True)
        page.get_by_role("tab", name="Review").click()
        expect(page.locator("#case-header")).to_contain_text(f"case {order[0]}", timeout=60_000)
        expect(page.locator("#case-header")).to_contain_text("1 of 5")
        expect(page.locator("#summary")).to_contain_text("Fused head", timeout=60_000)
        page.locator("#verdict input[value=skip]").check()
        page.locator("#save-review").click()
        expect(page.locator("#save-status")).to_contain_text(f"Saved: skip for case {order[0]}", timeout=60_000)
        page.locator("#next-unreviewed").click()
        expect(page.locator("#case-header")).to_contain_text(f"case {order[1]}", timeout=60_000)
        page.get_by_role("tab", name="Queue").click()
        table.get_by_text(order[3], exact=True).click()  # a click on a row opens that case
        expect(page.locator("#case-header")).to_contain_text(f"case {order[3]}", timeout=60_000)
        expect(page.locator("#case-header")).to_be_visible(timeout=30_000)  # back on the Review tab

        page.reload()  # the server kept this reviewer's queue, order and case
        wait_until_restored(page)
        expect(page.locator("#case-header")).to_contain_text(f"case {order[3]}", timeout=60_000)
        expect(page.locator("#case-header")).to_contain_text("4 of 5")
        expect(page.locator("#summary")).to_contain_text("Fused head", timeout=60_000)
        page.get_by_role("tab", name="Queue").click()
        expect(page.locator("#queue-status")).to_contain_text("Back where you left off: queue_b/manifest.csv")
        page.locator("#filter-status").get_by_text("unreviewed", exact=True).click()
        expect(page.locator("#queue-status")).to_contain_text("Showing 4 of 5 cases (unreviewed by you)",
                                                            timeout=60_000)
        assert order[0] not in table.inner_text()  # the case skipped above is reviewed
    assert len(list((settings.log_dir / "queue_scores").glob("*.json"))) == 1  # scored once, kept for everyone


def test_the_page_says_who_is_signed_in_and_logs_out(session):
    from playwright.sync_api import expect

    settings, _ = session
    with signed_in_page(settings, 1366, 768) as page:
        expect(page.locator("#signed-in")).to_contain_text("Signed in as dr_a", timeout=60_000)
        page.locator("#log-out").click()
        expect(page.get_by_label("username")).to_be_visible(timeout=30_000)


def test_queue_images_are_read_only_keys_fill_the_form_and_question_mark_lists_them(session, tmp_path):
    from playwright.sync_api import expect

    settings, _ = session
    with signed_in_page(settings, 1366, 768) as page:
        open_queue_at_first_case(page)
        expect(page.locator("#clinical-input img")).to_be_visible(timeout=60_000)
        # a queue case's images cannot be removed or replaced from the page
        for slot in ("#clinical-input", "#dermoscopy-input"):
            expect(page.locator(slot).get_by_role("button", name="Remove Image")).to_have_count(0)
            expect(page.locator(f"{slot} input[type=file]")).to_have_count(0)
        expect(page.locator("#correct-DIAG")).to_contain_text("model says", timeout=60_000)

        page.locator("#case-header").click()
        expect(page.locator("#correct-DIAG")).to_have_class(re.compile("task-cursor"))  # each case starts on DIAG
        page.keyboard.press("t")  # the second task, PN, is outlined
        expect(page.locator("#correct-PN")).to_have_class(re.compile("task-cursor"))
        page.keyboard.press("2")  # its second class
        expect(page.locator("#correct-PN input")).to_have_value("TYP", timeout=10_000)
        expect(page.locator("#verdict input[value=correct]")).to_be_checked()
        page.keyboard.press("Shift+T")
        page.keyboard.press("3")  # DIAG's third class
        expect(page.locator("#correct-DIAG input")).to_have_value("MEL", timeout=10_000)
        page.keyboard.press("0")
        expect(page.locator("#correct-DIAG input")).to_have_value("no change", timeout=10_000)
        page.get_by_label("Note (max 2000 chars)").fill("typed 2 and t here")  # keys inside a field are text
        expect(page.locator("#correct-PN input")).to_have_value("TYP")

        page.locator("#case-header").click()
        page.keyboard.press("?")
        expect(page.locator("#shortcut-help")).to_contain_text("next / previous task")
        page.screenshot(path=str(tmp_path / "keys_help.png"))
        page.keyboard.press("?")
        expect(page.locator("#shortcut-help")).to_have_count(0)

        page.locator("#own-images").click()  # back to a pair of one's own: empty, uploadable slots
        expect(page.locator("#case-header")).to_contain_text("No case open", timeout=60_000)
        for slot in ("clinical", "dermoscopy"):  # both slots: the case's images are gone from each
            expect(page.locator(f"#{slot}-input input[type=file]")).to_have_count(1, timeout=30_000)
            expect(page.locator(f"#{slot}-input img")).to_have_count(0)
        expect(page.locator("#summary")).not_to_contain_text("Fused head")


def test_images_prediction_and_the_whole_review_form_fit_one_1366x768_screen(session, tmp_path):
    from app_helpers import write_pair

    settings, _ = session
    clinical, derm = write_pair(tmp_path, seed=5)
    with signed_in_page(settings, 1366, 768) as page:
        start_own_pair(page, settings)
        for slot, path in (("clinical", clinical), ("dermoscopy", derm)):
            page.locator(f"#{slot}-input input[type=file]").set_input_files(str(path))
            # the server's clean copy (named by its pixels' SHA-256) has replaced the preview: the
            # upload's clearing of the last answer cannot land after the analysis
            page.wait_for_function(f"(() => {{ const im = document.querySelector('#{slot}-input img');"
                                   " return !!im && /[0-9a-f]{64}\\.png/.test(decodeURIComponent(im.src)); })()",
                                   timeout=60_000)
        page.locator("#analyse").click()
        page.get_by_text("Fused head:").wait_for(timeout=60_000)
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(tmp_path / "one_screen.png"))
        for selector in ("#clinical-input", "#dermoscopy-input", "#summary h3", "#verdict", "#correct-DIAG",
                         "#correct-VS", "#confidence", "#save-review"):
            box = page.locator(selector).first.bounding_box()
            assert box and box["y"] >= 0 and box["y"] + box["height"] <= 768, (selector, box)
            assert box["x"] >= 0 and box["x"] + box["width"] <= 1366, (selector, box)


@pytest.fixture(scope="module")
def derm7pt_session(tmp_path_factory):
    """An app whose queue folder holds a synthetic Derm7pt release (12 cases: 6 train, 3 valid, 3 test)."""
    from skinnet_testkit.synthetic import make_release

    root = tmp_path_factory.mktemp("teaching")
    release = make_release(root / "queues" / "derm7pt", n_cases=12)
    with reviewer_app(Predictor.from_checkpoint(tiny_checkpoint(root)), root) as settings:
        yield settings, release


@contextmanager
def reviewer_app(predictor, root):
    """The app around ``predictor`` launched in this process: dr_a its reviewer, ``root/queues``
    its queue folder, ``root/log`` its log; closed afterwards."""
    settings = AppSettings(checkpoint=root / "tiny.safetensors", port=free_port(), log_dir=root / "log",
                           users={"dr_a": "s3cret-pass"}, queue_root=root / "queues")
    app = build_app(predictor, settings)
    launch(app, settings, prevent_thread_lock=True, quiet=True)
    try:
        yield settings
    finally:
        app.close()


def test_a_derm7pt_queue_opens_on_test_filters_by_split_and_teaching_reveals_labels_after_saving(
        derm7pt_session, tmp_path):
    from playwright.sync_api import expect

    from skinnet.data import Derm7pt
    from skinnet.labels import TASKS

    settings, release = derm7pt_session
    data = Derm7pt(release)
    valid_ids = {c.case_id for c in data.split("valid")}
    with signed_in_page(settings, 1366, 768) as page:
        page.get_by_role("tab", name="Queue").click()
        page.locator("#reveal-reference input").check()
        choose(page, "queue-file", "derm7pt/meta/meta.csv")
        page.locator("#open-queue").click()
        expect(page.locator("#queue-status")).to_contain_text("Showing 3 of 12 cases (test split)", timeout=60_000)
        expect(page.locator("#filter-split input[value=test]")).to_be_checked()
        # the first test case is on screen before the reviewer filters (a filter changed while a
        # case still loads is undone when it arrives: every step returns the whole session)
        expect(page.locator("#case-header")).to_contain_text("1 of 3", timeout=60_000)
        page.locator("#filter-split input[value=valid]").check()
        expect(page.locator("#queue-status")).to_contain_text("Showing 3 of 12 cases (valid split)", timeout=60_000)
        shown = set(re.findall(r"^\d+\n(\d+)\nderm7pt$", page.locator("#queue-table").inner_text(), re.M))
        assert shown == valid_ids, page.locator("#queue-table").inner_text()

        page.get_by_role("tab", name="Review").click()
        page.locator("#next-unreviewed").click()
        # the header said "1 of 3" of the test case opened first: wait for a valid case's header
        expect(page.locator("#case-header")).to_contain_text(
            re.compile(rf"case ({'|'.join(map(re.escape, sorted(valid_ids)))})\b.*1 of 3", re.S), timeout=60_000)
        case_id = re.search(r"case (\S+)", page.locator("#case-header").inner_text()).group(1)
        assert case_id in valid_ids
        expect(page.locator("#correct-DIAG")).to_contain_text("model says", timeout=60_000)
        page.locator("#verdict input[value=correct]").check()
        choose(page, "correct-DIAG", "SK")
        page.locator("#save-review").click()
        status = page.locator("#save-status")
        expect(status).to_contain_text("Derm7pt reference labels", timeout=60_000)
        truth = next(c for c in data.cases() if c.case_id == case_id).labels
        reference = TASKS[0].classes[truth[0]]
        assert re.search(rf"DIAG\s+{reference}\s+SK", status.inner_text()), status.inner_text()
        page.screenshot(path=str(tmp_path / "teaching.png"))
        choose(page, "correct-DIAG", "BCC" if reference != "BCC" else "NEV")  # changing one's mind after seeing it
        page.locator("#save-review").click()
        expect(page.get_by_text("a new review of it would no longer be your own reading")).to_be_visible(
            timeout=60_000)
    rows, _ = read_corrections(settings.log_dir / "corrections.csv")
    assert [(r["case_id"], r["DIAG"]) for r in rows] == [(case_id, "SK")]
