"""A reviewer's slips, in a real headless Chromium at 1366x768 (issue 24, item 1): what is saved is
what the reviewer meant. Each test does what a dermatologist did when the app saved something
they did not mean, and checks the page and the log."""
import re
import time

import pytest

from app_helpers import tiny_checkpoint
from skinnet.corrections import read_corrections
from skinnet.imaging import load_rgb, pixel_sha256
from skinnet.labels import TASKS
from skinnet.predict import Predictor
from test_browser import CHROMIUM, CHROMIUM_ARGS, pytestmark  # noqa: F401  (same skip rule)
from skinnet_testkit.queues import write_queue
from test_review_e2e import choose, reviewer_app, wait_until_restored
from test_review_saves import drafts_setup

SLOW_S = 2.5
"""How long the model takes for the slow case (c1's images), so that a move to it can be watched."""


@pytest.fixture(scope="module")
def app_(tmp_path_factory):
    root = tmp_path_factory.mktemp("slips")
    predictor = Predictor.from_checkpoint(tiny_checkpoint(root))
    write_queue(root / "queues" / "queue", n=5)
    write_queue(root / "queues" / "other", n=2, seed=12, prefix="o")
    slow = pixel_sha256(load_rgb(root / "queues" / "queue" / "img" / "c1_derm.png"))
    real = predictor.predict

    def predict(clinical, dermoscopy):  # c1's prediction takes a while, each time it is asked for
        if dermoscopy is not None and pixel_sha256(dermoscopy) == slow:
            time.sleep(SLOW_S)
        return real(clinical, dermoscopy)

    predictor.predict = predict
    with reviewer_app(predictor, root) as settings:
        yield settings, root


@pytest.fixture
def page(app_):
    """A fresh browser and log for each test: dr_a signed in, the queue open on c0, its form ready."""
    from playwright.sync_api import sync_playwright

    settings, root = app_
    for path in sorted((settings.log_dir).rglob("*"), reverse=True):  # each slip on a log of its own
        if path.is_file():
            path.unlink()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1366, "height": 768})
        sign_in(page, settings.port)
        page.get_by_role("tab", name="Queue").click()
        choose(page, "queue-file", "queue/manifest.csv")
        page.locator("#open-queue").click()
        page.get_by_role("tab", name="Review").click()
        wait_for_case(page, "c0")
        yield page
        browser.close()


def sign_in(page, port: int) -> None:
    """dr_a signs in, and the page's load (the queue restored, if any) is done."""
    page.goto(f"http://127.0.0.1:{port}/")
    page.get_by_label("username").fill("dr_a")
    page.get_by_label("password").fill("s3cret-pass")
    page.get_by_role("button", name="Login").click()
    wait_until_restored(page)


def leave_c0_half_labelled(page, note: str) -> None:
    """On c0: verdict correct, DIAG SK, a note, then the right arrow (unsaved: a draft)."""
    page.locator("#verdict input[value=correct]").check()
    choose(page, "correct-DIAG", "SK")
    page.get_by_label("Note (max 2000 chars)").fill(note)
    page.locator("#case-header").click()
    page.keyboard.press("ArrowRight")
    wait_for_case(page, "c1")


def wait_for_case(page, case_id: str, timeout: float = 60_000) -> None:
    """The case is on screen and its form is ready (header, model labels, no loading state)."""
    from playwright.sync_api import expect

    expect(page.locator("#case-header")).to_contain_text(f"case {case_id} (", timeout=timeout)
    expect(page.locator("#correct-DIAG")).to_contain_text("model says", timeout=timeout)
    expect(page.locator("body")).not_to_have_class(re.compile("case-loading"), timeout=timeout)
    page.locator("#case-header").click()  # the reviewer's attention: on the case, not in a field


def rows(settings):
    folder = settings.log_dir
    return read_corrections(folder)[0] if any(folder.glob("shards/*.csv")) else []


def click_row(page, case_id: str) -> None:
    """A click on the queue table's row of this case (its case cell)."""
    cells = page.locator("#queue-table [data-testid^='cell-'][data-testid$='-1']")
    cells.filter(has_text=re.compile(rf"^\s*{case_id}\s*$")).first.click()


def label_of(page, task: str) -> str:
    return page.locator(f"#correct-{task} [data-testid='block-info']").inner_text()


def test_each_case_starts_with_the_task_cursor_on_diag(page, app_):
    """t t moved the cursor to PN on one case; on the next case "3" is meant for DIAG."""
    from playwright.sync_api import expect

    settings, _ = app_
    expect(page.locator("#correct-DIAG")).to_have_class(re.compile("task-cursor"))  # shown from the start
    page.keyboard.press("t")
    expect(page.locator("#correct-PN")).to_have_class(re.compile("task-cursor"))
    page.keyboard.press("ArrowRight")
    wait_for_case(page, "c1", timeout=60_000)
    expect(page.locator("#correct-DIAG")).to_have_class(re.compile("task-cursor"))
    expect(page.locator("#correct-PN")).not_to_have_class(re.compile("task-cursor"))
    page.keyboard.press("3")
    expect(page.locator("#correct-DIAG input")).to_have_value("MEL", timeout=10_000)
    expect(page.locator("#correct-PN input")).to_have_value("no change")
    page.keyboard.press("Enter")
    expect(page.locator("#save-status")).to_contain_text("Saved: correct for case c1", timeout=60_000)
    saved = rows(settings)
    assert [(r["case_id"], r["DIAG"], r["status_PN"]) for r in saved] == [("c1", "MEL", "not reviewed")]


def test_keys_and_save_do_nothing_until_the_next_cases_form_is_in(page, app_, tmp_path):
    """n, then at once a (agree) and Enter, while the model still works on the next case: the form
    says it is loading, the keys and the Save button do nothing, and the agree a reviewer gives
    afterwards is for the labels they see."""
    from playwright.sync_api import expect

    settings, _ = app_
    before = label_of(page, "DIAG")
    page.keyboard.press("n")
    expect(page.locator("body")).to_have_class(re.compile("case-loading"), timeout=5_000)
    page.keyboard.press("a")
    page.keyboard.press("Enter")
    page.locator("#save-review").click(force=True)
    page.keyboard.press("t")
    page.screenshot(path=str(tmp_path / "loading.png"))
    assert page.evaluate("getComputedStyle(document.querySelector('#review-side'), '::before').content").startswith(
        '"Loading the case')
    time.sleep(1.0)
    assert rows(settings) == []
    assert not page.locator("#verdict input[value=agree]").is_checked()
    wait_for_case(page, "c1", timeout=60_000)
    assert rows(settings) == []  # nothing was saved, for either case
    expect(page.locator("#verdict input[value=agree]")).not_to_be_checked()
    expect(page.locator("#correct-DIAG")).to_have_class(re.compile("task-cursor"))  # the "t" did nothing
    shown = label_of(page, "DIAG")
    page.keyboard.press("a")
    page.keyboard.press("Enter")
    expect(page.locator("#save-status")).to_contain_text("Saved: agree for case c1", timeout=60_000)
    saved = rows(settings)
    assert [r["case_id"] for r in saved] == ["c1"] and shown == f"DIAG: model says {saved[0]['DIAG']}"
    assert before.startswith("DIAG: model says")


def test_leaving_a_case_with_unsaved_changes_keeps_a_draft_and_says_so(page, app_, tmp_path):
    """n, the arrows, a queue row and "My own pair" each leave a case with changes not saved:
    the changes stay with the case as a draft, the page says so, and reopening the case shows them."""
    from playwright.sync_api import expect

    settings, _ = app_
    status = page.locator("#save-status")
    leave_c0_half_labelled(page, "half done")
    expect(status).to_contain_text("Your unsaved changes to case c0 are kept as a draft")
    page.screenshot(path=str(tmp_path / "draft_kept.png"))
    page.keyboard.press("ArrowLeft")
    wait_for_case(page, "c0")
    expect(status).to_contain_text("Draft: your unsaved changes to this case from before, not saved yet")
    expect(page.locator("#case-header")).to_contain_text("unsaved draft")
    expect(page.locator("#correct-DIAG input")).to_have_value("SK")
    expect(page.get_by_label("Note (max 2000 chars)")).to_have_value("half done")
    expect(page.locator("#verdict input[value=correct]")).to_be_checked()
    page.screenshot(path=str(tmp_path / "draft_back.png"))
    assert rows(settings) == []  # a draft is not a review

    # a queue row: the form is on the Review tab, the row on the Queue tab
    page.get_by_label("Note (max 2000 chars)").fill("half done, then more")
    page.get_by_role("tab", name="Queue").click()
    click_row(page, "c3")
    wait_for_case(page, "c3")
    expect(status).to_contain_text("Your unsaved changes to case c0 are kept as a draft")
    page.locator("#verdict input[value=skip]").check()
    page.locator("#own-images").click()  # "My own pair"
    expect(page.locator("#case-header")).to_contain_text("No case open", timeout=60_000)
    expect(status).to_contain_text("Your unsaved changes to case c3 are kept as a draft")
    # saving the draft makes it a review; leaving the case then leaves nothing behind
    page.get_by_role("tab", name="Queue").click()
    click_row(page, "c0")
    wait_for_case(page, "c0")
    expect(page.get_by_label("Note (max 2000 chars)")).to_have_value("half done, then more")
    page.keyboard.press("Enter")
    expect(status).to_contain_text("Saved: correct for case c0", timeout=60_000)
    page.keyboard.press("ArrowRight")
    wait_for_case(page, "c1")
    expect(status).not_to_contain_text("draft")
    saved = rows(settings)
    assert [(r["case_id"], r["DIAG"], r["note"]) for r in saved] == [("c0", "SK", "half done, then more")]


def test_nothing_to_undo_is_a_message_and_marks_no_field(page, app_, tmp_path):
    from playwright.sync_api import expect

    page.locator("#verdict input[value=unsure]").check()
    page.locator("#undo-save").click()
    expect(page.locator("#save-status")).to_contain_text("Nothing to undo: you have no saved review of case c0",
                                                         timeout=60_000)
    page.screenshot(path=str(tmp_path / "nothing_to_undo.png"))
    assert page.locator("#review-form .error").count() == 0  # no red Error badge on any field
    expect(page.locator("#verdict input[value=unsure]")).to_be_checked()  # the form keeps what it shows
    page.keyboard.press("Enter")
    expect(page.locator("#save-status")).to_contain_text("Saved: unsure for case c0", timeout=60_000)


def test_a_filter_picked_while_a_case_loads_waits_and_the_shown_filter_is_the_one_moves_follow(page, app_, tmp_path):
    """c0 reviewed; a click on c1's row, and at once on "unreviewed" while c1 loads. That filter
    used to show as picked, then the case's arrival undid it on the server: the arrows walked the
    whole queue under an "unreviewed" filter. Now the filters are dimmed and take no click until
    the case is in; the filter on screen is the one the arrows follow, before and after. And a
    and Enter on the Queue tab save nothing (they used to review the hidden form's case)."""
    from playwright.sync_api import expect

    settings, _ = app_
    page.keyboard.press("a")
    page.keyboard.press("Enter")
    expect(page.locator("#save-status")).to_contain_text("Saved: agree for case c0", timeout=60_000)
    page.get_by_role("tab", name="Queue").click()
    click_row(page, "c3")  # from c3 the app prepares c4, not c1
    wait_for_case(page, "c3")
    page.get_by_role("tab", name="Queue").click()
    click_row(page, "c1")  # c1 takes SLOW_S to predict
    expect(page.locator("body")).to_have_class(re.compile("case-loading"), timeout=5_000)
    unreviewed = page.locator("#filter-status input[value=unreviewed]")
    page.locator("#filter-status").get_by_text("unreviewed", exact=True).click(force=True)
    page.screenshot(path=str(tmp_path / "filter_while_loading.png"))
    wait_for_case(page, "c1")
    page.get_by_role("tab", name="Queue").click()
    expect(page.locator("#filter-status input[value=all]")).to_be_checked()
    expect(unreviewed).not_to_be_checked()
    page.keyboard.press("a")  # the review keys act on the form only while it is shown
    page.keyboard.press("Enter")
    time.sleep(1.0)
    assert [r["case_id"] for r in rows(settings)] == ["c0"]
    page.get_by_role("tab", name="Review").click()
    page.keyboard.press("ArrowLeft")  # the queue on screen is all cases: c0 comes before c1
    wait_for_case(page, "c0")

    # picked once the case is in, the filter holds through the moves that follow
    page.get_by_role("tab", name="Queue").click()
    page.locator("#filter-status").get_by_text("unreviewed", exact=True).click()
    expect(page.locator("#queue-status")).to_contain_text("Showing 4 of 5 cases (unreviewed by you)", timeout=60_000)
    click_row(page, "c2")
    wait_for_case(page, "c2")
    page.keyboard.press("ArrowLeft")
    wait_for_case(page, "c1")
    page.keyboard.press("ArrowLeft")  # c1 is the first unreviewed case: no step back to c0
    time.sleep(1.0)
    expect(page.locator("#case-header")).to_contain_text("case c1 (")
    page.get_by_role("tab", name="Queue").click()
    expect(unreviewed).to_be_checked()
    assert [r["case_id"] for r in rows(settings)] == ["c0"]


def test_digit_keys_show_beside_choices_and_typing_filters_diags_24_values(page, app_, tmp_path):
    from playwright.sync_api import expect

    settings, _ = app_
    page.locator("#correct-DIAG input").click()
    options = page.locator("#correct-DIAG [role=option]")
    expect(options).to_have_count(24)
    expect(options.nth(3)).to_have_attribute("data-key", "3")
    keys = page.evaluate("Array.from(document.querySelectorAll('#correct-DIAG [role=option]')).map(o => "
                         "[o.textContent.replace('✓', '').trim(), getComputedStyle(o, '::before').content])")
    assert keys[:6] == [["no change", '"0"'], ["BCC", '"1"'], ["NEV", '"2"'], ["MEL", '"3"'], ["MISC", '"4"'],
                        ["SK", '"5"']]
    assert all(content == '""' for _, content in keys[10:])  # past 9 no key: reached by typing (f)
    page.screenshot(path=str(tmp_path / "digit_keys.png"))
    page.keyboard.press("Escape")
    page.locator("#case-header").click()
    page.keyboard.press("f")
    page.keyboard.type("dermal")
    page.keyboard.press("Enter")
    expect(page.locator("#correct-DIAG input")).to_have_value("NEV · dermal nevus", timeout=10_000)
    expect(page.locator("#verdict input[value=correct]")).to_be_checked()
    page.wait_for_function("document.activeElement === document.body || !document.activeElement.closest('#corrections')")
    page.keyboard.press("Enter")  # the review keys work again: Enter saves
    expect(page.locator("#save-status")).to_contain_text("Saved: correct for case c0", timeout=60_000)
    saved = rows(settings)
    assert [(r["DIAG"], r["diagnosis"]) for r in saved] == [("NEV", "dermal nevus")]


def test_a_digit_pick_is_dropped_when_another_cases_form_arrives_before_its_choice_is_pressed(page, app_):
    """A digit key opens the outlined dropdown and presses its choice once the option list is
    drawn. A move clicked just after the key, on a page slow to draw the list, brought the next
    case's form in first: the choice landed there and marked that case "correct". The arrival is
    made certain here (the form marker names another case the moment the key has started its
    pick): the choice is not pressed, nothing is marked, and a later pick works."""
    from playwright.sync_api import expect

    page.locator("#case-header").click()
    page.evaluate("""() => window.addEventListener('keydown', () => {  // after the page's own key handlers
        const marker = document.querySelector('#form-state .form-ready');
        window.skinnetTestToken = marker.dataset.token;
        marker.dataset.token = 'another-case';
    }, {once: true})""")
    page.keyboard.press("3")
    page.wait_for_function("document.querySelector('#correct-DIAG [role=option]')", timeout=10_000)  # the list is drawn
    expect(page.locator("#correct-DIAG input")).not_to_be_focused(timeout=10_000)  # and the pick is over (it blurs)
    page.wait_for_timeout(300)
    expect(page.locator("#correct-DIAG input")).to_have_value("no change")
    expect(page.locator("#verdict input[value=correct]")).not_to_be_checked()
    page.evaluate("document.querySelector('#form-state .form-ready').dataset.token = window.skinnetTestToken")
    page.locator("#case-header").click()
    page.keyboard.press("3")  # the same case again: the pick is taken
    expect(page.locator("#correct-DIAG input")).to_have_value("MEL", timeout=10_000)
    expect(page.locator("#verdict input[value=correct]")).to_be_checked()


def test_after_ctrl_enter_from_the_note_the_next_n_moves_on(page, app_):
    from playwright.sync_api import expect

    settings, _ = app_
    page.keyboard.press("a")
    note = page.get_by_label("Note (max 2000 chars)")
    note.click()
    page.keyboard.type("typical")
    page.keyboard.press("Control+Enter")
    expect(page.locator("#save-status")).to_contain_text("Saved: agree for case c0", timeout=60_000)
    page.keyboard.press("n")
    wait_for_case(page, "c1")
    expect(note).to_have_value("")  # c1's blank form, not "typicaln"
    assert [(r["case_id"], r["note"]) for r in rows(settings)] == [("c0", "typical")]


def test_a_draft_waits_in_its_queue_while_the_reviewer_works_another(page, app_, tmp_path):
    """A reviewer leaves c0 half labelled, opens another queue file, then comes back: the page
    says the draft is kept, the other queue's first case starts blank, and the first queue's c0
    shows the draft again (it used to be dropped with the switch)."""
    from playwright.sync_api import expect

    settings, _ = app_
    page.locator("#verdict input[value=correct]").check()
    choose(page, "correct-DIAG", "SK")
    page.get_by_label("Note (max 2000 chars)").fill("half done")

    def open_file(name: str) -> None:
        page.get_by_role("tab", name="Queue").click()
        choose(page, "queue-file", name)
        page.locator("#open-queue").click()

    open_file("other/manifest.csv")
    expect(page.locator("#queue-status")).to_contain_text("Your 1 unsaved draft in queue/manifest.csv is kept",
                                                          timeout=60_000)
    page.screenshot(path=str(tmp_path / "draft_put_aside.png"))
    page.get_by_role("tab", name="Review").click()
    wait_for_case(page, "o0")
    expect(page.locator("#correct-DIAG input")).to_have_value("no change")
    expect(page.get_by_label("Note (max 2000 chars)")).to_have_value("")
    open_file("queue/manifest.csv")
    expect(page.locator("#queue-status")).to_contain_text("1 unsaved draft from your last time in this queue is back",
                                                          timeout=60_000)
    page.get_by_role("tab", name="Review").click()
    wait_for_case(page, "c0")
    expect(page.locator("#save-status")).to_contain_text("Draft: your unsaved changes to this case from before")
    expect(page.locator("#correct-DIAG input")).to_have_value("SK")
    expect(page.get_by_label("Note (max 2000 chars)")).to_have_value("half done")
    page.screenshot(path=str(tmp_path / "draft_back_from_other_queue.png"))
    assert rows(settings) == []  # a draft is not a review


def save_mel_on_c0(window) -> None:
    """In another window on c0 (verdict correct): DIAG MEL, note "second look", saved with Enter."""
    from playwright.sync_api import expect

    choose(window, "correct-DIAG", "MEL")
    window.get_by_label("Note (max 2000 chars)").fill("second look")
    window.locator("#case-header").click()
    window.keyboard.press("Enter")
    expect(window.locator("#save-status")).to_contain_text("Saved: correct for case c0", timeout=60_000)


def test_a_draft_left_in_one_tab_never_shows_over_a_review_saved_in_another(page, app_, tmp_path):
    """Tab 1 leaves c0 half labelled (SK). The reviewer opens a second window, goes to c0 there and
    saves MEL. Back in tab 1, c0 used to come back with the older SK draft and "press Save to
    keep them": one Enter replaced the newer review. Now tab 1 shows the saved MEL review and
    says why, and an Enter there logs nothing new."""
    from playwright.sync_api import expect

    settings, _ = app_
    leave_c0_half_labelled(page, "first look")
    second = page.context.browser.new_context(viewport={"width": 1366, "height": 768}).new_page()  # another window
    sign_in(second, settings.port)
    wait_for_case(second, "c1")
    second.keyboard.press("ArrowLeft")
    wait_for_case(second, "c0")
    save_mel_on_c0(second)
    page.bring_to_front()
    page.keyboard.press("ArrowLeft")
    wait_for_case(page, "c0")
    expect(page.locator("#save-status")).to_contain_text("older than the review you saved since")
    expect(page.locator("#case-header")).not_to_contain_text("unsaved draft")
    expect(page.locator("#correct-DIAG input")).to_have_value("MEL")
    expect(page.get_by_label("Note (max 2000 chars)")).to_have_value("second look")
    page.screenshot(path=str(tmp_path / "older_draft_not_shown.png"))
    page.locator("#case-header").click()
    page.keyboard.press("Enter")
    expect(page.locator("#save-status")).to_contain_text("Already saved", timeout=60_000)
    assert [(r["case_id"], r["DIAG"], r["note"]) for r in rows(settings)] == [("c0", "MEL", "second look")]
    second.context.close()


def test_drafts_come_back_after_a_reload_and_hostile_values_are_no_draft(tmp_path):
    """Drafts go to the server with the reviewer's place in the queue (a reload or another browser
    finds them); values a form cannot hold (a raw call) make no draft."""
    from skinnet.corrections import CorrectionsLog
    from skinnet.ui import review

    write_queue(tmp_path / "queues" / "queue", n=3)
    log = CorrectionsLog(tmp_path / "log")
    name = "queue/manifest.csv"
    state, _, _ = review.open_queue_handler(review.new_state(), str(tmp_path / "queues" / name),
                                            tmp_path / "queues", log, "dr_a", name)
    state = review.move(state, "next", log, "dr_a")
    values = ("correct", "SK", *["no change"] * 7, 3, "half done")
    state = review.keep_draft(state, values, log, "dr_a")
    assert state["left_draft"] == "c0" and state["drafts"] == {"c0": {"form": list(values), "base": None}}
    state = review.move(state, "next", log, "dr_a")
    review.remember(state, log.folder, "dr_a")
    back = review.restore(review.new_state(), log.folder, tmp_path / "queues", log, "dr_a")
    assert back["case"]["case_id"] == "c1" and back["drafts"] == {"c0": {"form": list(values), "base": None}}
    back = review.move(back, "prev", log, "dr_a")
    shown, status = review.form_for_case(back, None, None)
    assert shown == values and "Draft: your unsaved changes" in status
    for hostile in (("correct", "<script>", *["no change"] * 7, 3, ""), ("approve", *["no change"] * 8, None, ""),
                    ("agree", *["no change"] * 8, 9, ""), ("agree", *["no change"] * 8, None, "x" * 5000), "x", None):
        assert review.keep_draft(back, hostile, log, "dr_a")["drafts"] == {}  # dropped, nothing stored
    assert review.keep_draft(back, review.form_values(None), log, "dr_a")["drafts"] == {}  # back to blank: no draft


def test_drafts_stay_with_their_queue_file_across_switches_and_reloads(tmp_path):
    """Opening the queue again (to start over from its first case) used to drop every draft, on
    the server too, and so did a look at another queue. The same file keeps them; another file's
    c0 is another lesion, so the drafts are put aside, said so, and come back with their file
    (after a reload too); a file changed since gets none of them."""
    from skinnet.corrections import CorrectionsLog
    from skinnet.ui import review

    write_queue(tmp_path / "queues" / "queue", n=3)
    write_queue(tmp_path / "queues" / "other", n=3, seed=12)
    log = CorrectionsLog(tmp_path / "log")

    def open_(state, name):
        return review.open_queue_handler(state, str(tmp_path / "queues" / name), tmp_path / "queues", log, "dr_a",
                                         name)[0]

    state = review.move(open_(review.new_state(), "queue/manifest.csv"), "next", log, "dr_a")
    values = ("correct", "SK", *["no change"] * 7, 3, "half done")
    state = review.keep_draft(state, values, log, "dr_a")
    again = open_(state, "queue/manifest.csv")
    assert again["drafts"] == {"c0": {"form": list(values), "base": None}}
    again = review.move(again, "next", log, "dr_a")
    assert review.form_for_case(again, None, None)[0] == values
    other, _, said = review.open_queue_handler(again, str(tmp_path / "queues" / "other/manifest.csv"),
                                               tmp_path / "queues", log, "dr_a", "other/manifest.csv")
    assert other["drafts"] == {} and "Your 1 unsaved draft in queue/manifest.csv is kept" in said
    other = review.keep_draft(review.move(other, "next", log, "dr_a"),
                              ("agree", *["no change"] * 8, 5, "other c0"), log, "dr_a")
    review.remember(review.move(other, "next", log, "dr_a"), log.folder, "dr_a")
    back = review.restore(review.new_state(), log.folder, tmp_path / "queues", log, "dr_a")  # a reload
    assert back["queue_file"] == "other/manifest.csv" and back["drafts"]["c0"]["form"] == ["agree", *["no change"] * 8,
                                                                                           5, "other c0"]
    first, _, said = review.open_queue_handler(back, str(tmp_path / "queues" / "queue/manifest.csv"),
                                               tmp_path / "queues", log, "dr_a", "queue/manifest.csv")
    assert first["drafts"]["c0"]["form"] == list(values)
    assert "1 unsaved draft from your last time in this queue is back" in said
    assert review.form_for_case(review.move(first, "next", log, "dr_a"), None, None)[0] == values  # c0, as left
    assert open_(first, "other/manifest.csv")["drafts"]["c0"]["form"][-1] == "other c0"
    with open(tmp_path / "queues" / "queue" / "manifest.csv", "a") as f:  # the file changes: its drafts stay out
        f.write("c9,img/c0_clin.jpg,img/c0_derm.png\n")
    assert open_(open_(first, "other/manifest.csv"), "queue/manifest.csv")["drafts"] == {}
    changed, _, said = review.open_queue_handler(first, str(tmp_path / "queues" / "queue/manifest.csv"),
                                                 tmp_path / "queues", log, "dr_a", "queue/manifest.csv")
    assert changed["drafts"] == {}
    assert "queue/manifest.csv has changed since you opened it: your 1 unsaved draft in it cannot be carried" in said
    old_version = review.queue_key("queue/manifest.csv", first["queue_sha256"])  # kept for the file as it was
    assert changed["other_drafts"][old_version]["drafts"]["c0"]["form"] == list(values)
    again, _, said = review.open_queue_handler(review.move(changed, "next", log, "dr_a"),
                                               str(tmp_path / "queues" / "other/manifest.csv"), tmp_path / "queues",
                                               log, "dr_a", "other/manifest.csv")
    again, _, said = review.open_queue_handler(again, str(tmp_path / "queues" / "queue/manifest.csv"),
                                               tmp_path / "queues", log, "dr_a", "queue/manifest.csv")
    assert "Your 1 unsaved draft in an earlier version of queue/manifest.csv stays aside" in said


def test_a_changed_last_queue_file_does_not_wipe_the_drafts_of_other_queues(tmp_path):
    """The reload after the last open queue file changed on disk restores nothing (its order means
    nothing now). The next queue opened used to write an empty set of put-aside drafts over the
    server's: the drafts of every queue were gone, unsaid. Now they all stay, the changed file's too
    (kept for its old version)."""
    review, log, open_, draft_and_leave = drafts_setup(tmp_path)
    values = ("correct", "SK", *["no change"] * 7, 3, "queue c0")
    state = draft_and_leave(review.move(open_(review.new_state(), "queue/manifest.csv")[0], "next", log, "dr_a"),
                            values)
    state = open_(state, "other/manifest.csv")[0]
    draft_and_leave(review.move(state, "next", log, "dr_a"), ("agree", *["no change"] * 8, 5, "other o0"))
    with open(tmp_path / "queues" / "other" / "manifest.csv", "a") as f:  # the open file changes on disk
        f.write("o9,img/o0_clin.jpg,img/o0_derm.png\n")
    assert review.restore(review.new_state(), log.folder, tmp_path / "queues", log, "dr_a") is None  # the reload
    fresh, _, _ = open_(review.new_state(), "queue/manifest.csv")
    assert fresh["drafts"]["c0"]["form"] == list(values)  # was {}: wiped
    review.remember(fresh, log.folder, "dr_a")
    record = review._read_record(log.folder, "dr_a")
    kept = [entry["drafts"] for entry in record["other_drafts"].values()]
    assert [d["o0"]["form"][-1] for d in kept] == ["other o0"]  # the changed file's drafts, for its old version


def test_two_tabs_of_one_reviewer_keep_each_others_drafts(tmp_path):
    """One reviewer, two tabs, one queue file in each. Each tab wrote its own view of the drafts
    put aside over the server's, so a reload lost the other tab's drafts. Now the server's copy
    and the tab's are merged (the copy put aside last wins per file)."""
    review, log, open_, draft_and_leave = drafts_setup(tmp_path)
    tab_1 = review.move(open_(review.new_state(), "queue/manifest.csv")[0], "next", log, "dr_a")
    tab_1 = draft_and_leave(tab_1, ("unsure", *["no change"] * 8, 2, "tab 1"))
    tab_2 = review.move(open_(review.new_state(), "other/manifest.csv")[0], "next", log, "dr_a")
    draft_and_leave(tab_2, ("agree", *["no change"] * 8, 4, "tab 2"))  # written last: the server's open queue
    reload_1 = review.restore(review.new_state(), log.folder, tmp_path / "queues", log, "dr_a")
    assert reload_1["queue_file"] == "other/manifest.csv" and reload_1["drafts"]["o0"]["form"][-1] == "tab 2"
    back, _, said = open_(reload_1, "queue/manifest.csv")
    assert back["drafts"]["c0"]["form"][-1] == "tab 1" and "1 unsaved draft from your last time" in said
    review.remember(back, log.folder, "dr_a")
    assert review.restore(review.new_state(), log.folder, tmp_path / "queues", log, "dr_a")["drafts"]["c0"]["form"][-1] \
        == "tab 1"
    assert open_(back, "other/manifest.csv")[0]["drafts"]["o0"]["form"][-1] == "tab 2"


def test_an_older_draft_never_replaces_a_review_saved_since(tmp_path):
    """A draft of c0 left in one queue; the same case id reviewed and saved meanwhile (another tab,
    or another queue naming the same Derm7pt case). Coming back used to show the old draft with
    "press Save to keep them": one Enter overwrote the newer review with the older values. Now
    the saved review is shown and the reviewer told why."""
    from skinnet_testkit.reviews import review as a_review

    review, log, open_, draft_and_leave = drafts_setup(tmp_path)
    state = review.move(open_(review.new_state(), "queue/manifest.csv")[0], "next", log, "dr_a")
    state = draft_and_leave(state, ("correct", "SK", *["no change"] * 7, 3, "old draft"))
    log.append(a_review(verdict="agree", case_id="c0"))  # saved since, elsewhere
    saved = log.latest_review("dr_a", "c0")

    def shown(state):
        state = review.move(state, "prev", log, "dr_a") if state["case"]["case_id"] != "c0" else state
        return review.form_for_case(state, log.latest_review("dr_a", "c0"), log.newest_save("dr_a", "c0"))

    form, said = shown(state)
    assert form == review.form_values(saved) and "older than the review you saved since" in said
    state = review.move(state, "prev", log, "dr_a")  # a draft made on top of that review is kept and shown
    newer = ("correct", "MEL", *["no change"] * 7, 5, "on top of the saved one")
    state = review.keep_draft(state, newer, log, "dr_a")
    form, said = shown(state)
    assert form == newer and "Draft: your unsaved changes" in said
    assert "unsaved draft" in review.case_header(state, log, "dr_a")
    # that review undone elsewhere: the draft was made on top of it, and still shows
    assert review.undo_last_save(state, log, "dr_a")[2] and log.latest_review("dr_a", "c0") is None
    assert shown(state)[0] == newer
    # saved, then undone: the undone values do not come back as a draft over what stands again
    log.append(a_review(verdict="unsure", case_id="c0"))
    state = review.keep_draft(state, ("skip", *["no change"] * 8, None, "a third try"), log, "dr_a")
    log.append(a_review(verdict="agree", case_id="c0"))  # the draft saved
    assert review.undo_last_save(state, log, "dr_a")[2]
    form, said = shown(state)
    assert form == review.form_values(log.latest_review("dr_a", "c0")) and "older than the review" in said
    assert "unsaved draft" not in review.case_header(state, log, "dr_a")
    # a draft kept by an older app (a bare list) changed whatever was saved then: shown as before
    legacy = {**state, "drafts": {"c0": list(newer)}}
    assert shown(legacy)[0] == newer


def test_a_draft_of_an_uploaded_pair_goes_along_to_any_queue(tmp_path):
    """Drafts of an uploaded pair made before any queue was open (nothing to put them aside
    under) were dropped, unsaid, when a queue was opened. An upload's id is its pixels' hash: the
    same lesion whatever the queue, so its draft now stays with the reviewer across queues."""
    review, log, open_, _ = drafts_setup(tmp_path)
    images = tmp_path / "queues" / "queue" / "img"
    state = review.start_upload_case(review.new_state(), str(images / "c0_clin.jpg"), str(images / "c0_derm.png"))
    upload = state["case"]["case_id"]
    values = ("unsure", *["no change"] * 8, 2, "my own pair")
    state = review.keep_draft(state, values, log, "dr_a")
    state, _, said = open_(state, "queue/manifest.csv")
    assert state["drafts"][upload]["form"] == list(values) and "unsaved draft" not in said
    state = open_(review.move(state, "next", log, "dr_a"), "other/manifest.csv")[0]
    assert state["drafts"][upload]["form"] == list(values)


def test_a_draft_discarded_in_one_tab_does_not_come_back_from_another(tmp_path):
    """Tab B leaves a draft in queue Q1 and moves to Q2; tab A opens Q1 (the draft comes with
    it), discards the draft and moves to Q2. B still holds its old copy of Q1's drafts: its next
    step must not put the discarded draft back on the server for a reload or a third tab."""
    review, log, open_, draft_and_leave = drafts_setup(tmp_path)
    values = ("unsure", *["no change"] * 8, 2, "discard me")
    tab_b = draft_and_leave(review.move(open_(review.new_state(), "queue/manifest.csv")[0], "next", log, "dr_a"),
                            values)
    tab_b = open_(tab_b, "other/manifest.csv")[0]
    review.remember(tab_b, log.folder, "dr_a")
    tab_a, _, said = open_(review.new_state(), "queue/manifest.csv")
    assert tab_a["drafts"]["c0"]["form"] == list(values)
    tab_a = review.move(tab_a, "next", log, "dr_a")
    tab_a = draft_and_leave(tab_a, review.form_values(None))  # back to the blank form: the draft goes
    assert tab_a["drafts"] == {}
    tab_a = open_(tab_a, "other/manifest.csv")[0]
    review.remember(tab_a, log.folder, "dr_a")
    review.remember(review.move(tab_b, "next", log, "dr_a"), log.folder, "dr_a")  # tab B's next step
    tab_c, _, _ = open_(review.new_state(), "queue/manifest.csv")
    assert tab_c["drafts"] == {}


def test_a_session_file_with_odd_values_restores_what_it_can(tmp_path):
    """The server-side file of a reviewer, written by hand or by an older app: numbers too big
    for a float, wrong types. Restoring and the next steps work; what cannot be read is left out."""
    review, log, open_, draft_and_leave = drafts_setup(tmp_path)
    draft_and_leave(review.move(open_(review.new_state(), "queue/manifest.csv")[0], "next", log, "dr_a"),
                    ("unsure", *["no change"] * 8, 2, "kept"))
    path = review._session_file(log.folder, "dr_a")
    record = review._read_record(log.folder, "dr_a")
    key = review.queue_key("other/manifest.csv", "0" * 64)
    odd = {**record, "written_at": 10 ** 400, "uncertainty": ["not", "a", "dict"], "order": 7,
           "other_drafts": {key: {"at": 10 ** 400, "drafts": {}}, "x": {"at": "soon", "drafts": 3}}}
    import json

    path.write_text(json.dumps(odd))
    back = review.restore(review.new_state(), log.folder, tmp_path / "queues", log, "dr_a")
    assert back["drafts"]["c0"]["form"][-1] == "kept" and back["uncertainty"] == {}
    review.remember(back, log.folder, "dr_a")
    assert open_(back, "other/manifest.csv")[0]["drafts"] == {}


def test_put_aside_drafts_are_bounded_and_a_broken_note_is_no_draft(tmp_path):
    """A signed-in reviewer (or a raw call in their name) filling drafts with 2,000-emoji notes in
    many queue files: the server-side file stays bounded (it is rewritten at every step), and the
    files dropped are named. A note with a lone surrogate (no page or file can carry it) is not
    kept as a draft at all."""
    from skinnet.corrections import MAX_NOTE

    review, log, _, _ = drafts_setup(tmp_path)
    heavy = {f"c{i}": {"form": ["unsure", *["no change"] * 8, 1, "\U0001F600" * MAX_NOTE], "base": None}
             for i in range(review.MAX_DRAFTS)}
    aside = {review.queue_key(f"q{n}/manifest.csv", f"{n:064x}"): {"at": float(n), "drafts": dict(heavy)}
             for n in range(review.MAX_OTHER_QUEUES + 1)}
    kept, dropped = review.cap_aside(aside)
    assert sum(len(e["drafts"]) for e in kept.values()) <= review.MAX_DRAFTS_ASIDE
    assert dropped[0] == "q0/manifest.csv" and "q20/manifest.csv" in [k.split(":", 1)[1] for k in kept]
    state = review.open_queue_handler(review.new_state(), str(tmp_path / "queues" / "queue/manifest.csv"),
                                      tmp_path / "queues", log, "dr_a", "queue/manifest.csv")[0]
    review.remember({**state, "drafts": dict(heavy), "other_drafts": aside}, log.folder, "dr_a")
    size = review._session_file(log.folder, "dr_a").stat().st_size
    assert size < (review.MAX_DRAFTS + review.MAX_DRAFTS_ASIDE) * MAX_NOTE * 4 * 1.1  # UTF-8, not \\u escapes
    assert review.clean_form(("agree", *["no change"] * 8, None, "broken \ud800 note")) is None



def test_a_session_holds_only_the_keys_its_type_declares(tmp_path):
    """Every step of a reviewer's session (open, filter, move, draft, restore, an upload case,
    the owner) returns a ``ReviewSession``: no key the type does not declare, none of the wrong kind."""
    import types
    import typing

    from skinnet.corrections import CorrectionsLog
    from skinnet.ui import access, review

    declared = typing.get_type_hints(review.ReviewSession)

    def matches(value, kind) -> bool:
        if typing.get_origin(kind) in (typing.Union, types.UnionType):
            return any(matches(value, k) for k in typing.get_args(kind))
        return value is None if kind is type(None) else isinstance(value, typing.get_origin(kind) or kind)

    def holds_declared(state):
        assert set(state) <= set(declared), set(state) - set(declared)
        assert all(matches(value, declared[key]) for key, value in state.items()), state
        return state

    write_queue(tmp_path / "queues" / "queue", n=3)
    log = CorrectionsLog(tmp_path / "log")
    name = "queue/manifest.csv"
    state = holds_declared(access.claim_session(review.new_state(), "dr_a"))
    state, _, _ = review.open_queue_handler(state, str(tmp_path / "queues" / name), tmp_path / "queues", log, "dr_a",
                                            name)
    state = holds_declared(review.apply_filters(holds_declared(state), log, "dr_a", {"status": "unreviewed"}))
    state = holds_declared(review.move(state, "next", log, "dr_a"))
    state = holds_declared(review.keep_draft(state, ("correct", "SK", *["no change"] * 7, 3, "x"), log, "dr_a"))
    state = holds_declared(review.move(state, "next unreviewed", log, "dr_a"))
    review.remember(state, log.folder, "dr_a")
    holds_declared(review.restore(review.new_state(), log.folder, tmp_path / "queues", log, "dr_a"))
    holds_declared(review.start_upload_case(state, None, None))


def test_the_unsaved_changes_mark_is_set_in_the_browser_and_can_never_cover_a_saved_message(app_):
    """CI caught it: "a", then Enter at once, and the page said "Unsaved changes" after the save.
    The mark was a server call (queue=False) whose answer could arrive after the Save's "Saved".
    Now every field's mark is a browser-only event: no server function, so nothing comes late."""
    from skinnet_testkit.raw_http import RawClient

    settings, _ = app_
    config = RawClient(f"http://127.0.0.1:{settings.port}", "dr_a", "s3cret-pass").config()
    ids = {c.get("props", {}).get("elem_id"): c["id"] for c in config["components"]}
    marks = [d for d in config["dependencies"]
             if ids["save-status"] in d["outputs"] and any(t[1] == "input" for t in d["targets"])]
    fields = {ids[name] for name in ("verdict", "confidence", *(f"correct-{t.name}" for t in TASKS))}
    assert fields <= {t[0] for d in marks for t in d["targets"]}
    for mark in marks:
        assert not mark["backend_fn"] and "Unsaved changes" in mark["js"], mark


def test_a_move_made_while_a_save_is_under_way_follows_its_answer_and_a_digit_then_enter_saves_the_pick(
        page, app_, monkeypatch, tmp_path):
    """A reviewer's rhythm is a, Enter, n. The save's answer names the case it saved (header,
    status); when it came back after the move's, the next case was on screen under the saved
    one's header. Now the move waits for the save's answer. A field changed while a save is under
    way is still unsaved when the answer comes. And a digit's pick takes a moment: Enter pressed
    meanwhile saves once the pick is in (it used to save the form without it)."""
    from playwright.sync_api import expect

    from skinnet.corrections import CorrectionsLog

    settings, _ = app_
    status, header = page.locator("#save-status"), page.locator("#case-header")
    page.get_by_role("tab", name="Queue").click()
    click_row(page, "c3")  # c1 is the slow case: these moves stay clear of it
    wait_for_case(page, "c3")
    page.evaluate("""() => { window.headersSeen = [];
        new MutationObserver(() => { const text = document.querySelector('#case-header').innerText;
            const m = text.match(/case (c[0-9]) \\(/); if (m && window.headersSeen.at(-1) !== m[1]) window.headersSeen.push(m[1]); })
            .observe(document.querySelector('#case-header'), {childList: true, subtree: true, characterData: true}); }""")
    real = CorrectionsLog.append

    def slow_append(self, *args, **kwargs):  # a save the disk keeps waiting (the app runs in this process)
        time.sleep(2.0)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(CorrectionsLog, "append", slow_append)
    page.keyboard.press("a")
    page.keyboard.press("Enter")
    page.keyboard.press("n")
    page.screenshot(path=str(tmp_path / "move_waits_for_the_save.png"))
    wait_for_case(page, "c4")
    time.sleep(1.0)  # nothing late comes back to cover c4
    expect(header).to_contain_text("case c4 (")
    seen = page.evaluate("window.headersSeen")
    assert "c4" in seen and "c3" not in seen[seen.index("c4"):], seen  # c3's header never came back over c4
    assert [(r["case_id"], r["verdict"]) for r in rows(settings)] == [("c3", "agree")]

    page.keyboard.press("u")
    page.keyboard.press("Enter")
    page.locator("#verdict").get_by_text("skip", exact=True).click()  # changed while the save is under way
    deadline = time.monotonic() + 60
    while len(rows(settings)) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [(r["case_id"], r["verdict"]) for r in rows(settings)] == [("c3", "agree"), ("c4", "unsure")]
    expect(page.locator("body")).not_to_have_class(re.compile(r"\bsaving\b"), timeout=60_000)  # its answer is in
    expect(status).not_to_contain_text("Saved:", timeout=10_000)  # skip is not what was saved
    expect(status).to_contain_text("Unsaved changes")

    monkeypatch.setattr(CorrectionsLog, "append", real)
    page.locator("#case-header").click()
    page.keyboard.press("Enter")  # skip, saved
    expect(status).to_contain_text("Saved: skip for case c4", timeout=60_000)
    page.keyboard.press("ArrowLeft")
    wait_for_case(page, "c3")
    page.keyboard.press("3")  # DIAG: MEL, and the verdict "correct"
    page.keyboard.press("Enter")
    expect(status).to_contain_text("Saved: correct for case c3", timeout=60_000)
    saved = rows(settings)
    assert [(r["case_id"], r["verdict"], r["DIAG"]) for r in saved][-1] == ("c3", "correct", "MEL")


def test_maps_that_end_after_the_page_moved_on_leave_the_next_case_alone(app_, monkeypatch):
    """A case's maps take seconds; the reviewer may be on another case by then. They used to land
    on it (another lesion's Grad-CAM under this one's images). Now an event that ends after its
    page moved on changes nothing. Raw HTTP on the app in this process, its Grad-CAM slowed."""
    import secrets
    import threading

    from skinnet.ui import events as app_events
    from skinnet_testkit.raw_http import NO_FORM, RawClient, fns
    from test_security import open_first_case

    settings, _ = app_
    client = RawClient(f"http://127.0.0.1:{settings.port}", "dr_a", "s3cret-pass")
    config = client.config()
    session = secrets.token_hex(6)
    shown = open_first_case(client, config, session, "queue/manifest.csv")
    assert shown.success and "case c0" in shown.data[3], shown.error
    images = [v.get("value", v) if isinstance(v, dict) else v for v in shown.data[1:3]]  # updates carry values
    maps_of_c0 = [None, *images, "DIAG", None, "auto", True]
    explain = fns(config, "explain_after_predict")[0]
    on_time = client.call(explain, maps_of_c0, session)
    assert on_time.success and len(client.files_in(on_time.data)) >= 2  # c0 still shown: its maps come

    real, started, moved = app_events.page_maps, threading.Event(), threading.Event()

    def slow_maps(*args, **kwargs):  # c0's Grad-CAM: still at work when the page moves to c3
        started.set()
        assert moved.wait(60)
        return real(*args, **kwargs)

    monkeypatch.setattr(app_events, "page_maps", slow_maps)
    with client.page(session) as page_:
        pending = page_.join(explain, maps_of_c0)
        assert started.wait(60)
        row = {"index": [3, 1], "value": "c3", "row_value": [4, "c3", "queue", "", ""]}
        assert page_.call(fns(config, "open_queue_row")[0], [None, *NO_FORM], row).success
        shown = page_.call(fns(config, "show_case")[0], [None])
        assert shown.success and "case c3" in shown.data[3]
        moved.set()
        late = page_.wait(pending)
    assert late.success and client.files_in(late.data) == [], late.raw


def test_a_move_sent_before_the_next_case_is_in_keeps_no_draft_of_the_wrong_case(app_):
    """The reviewer labels c0, presses n, and clicks Next before c1's form is in: that click
    carries c0's labels with c0's case token, but the server has c1 open by then. c0's labels
    used to become c1's draft (shown, and saved with one Enter, as the reviewer's reading of c1).
    Now a form that is not the open case's makes no draft; c0 keeps its own. Raw HTTP, the two
    moves in the order the server gets them."""
    import secrets

    from skinnet.corrections import NO_CHANGE
    from skinnet_testkit.raw_http import RawClient, fns
    from test_security import open_first_case

    settings, _ = app_
    client = RawClient(f"http://127.0.0.1:{settings.port}", "dr_a", "s3cret-pass")
    config, session = client.config(), secrets.token_hex(6)
    go_next, go_prev = fns(config, "go_next")[0], fns(config, "go_prev")[0]
    shown = open_first_case(client, config, session, "queue/manifest.csv")
    assert shown.success and "case c0" in shown.data[3], shown.error
    c0_token, c0_labels = shown.data[-1], ["correct", "SK", *[NO_CHANGE] * 7, 3, "c0: seborrhoeic keratosis"]
    blank = [None, *[NO_CHANGE] * 8, None, ""]

    def form(result):  # verdict, the 8 corrections, confidence, note as the page shows them; the status line
        values = [v.get("value") if isinstance(v, dict) else v for v in result.data[4:15]]
        return values, result.data[15]

    first = client.call(go_next, [None, c0_token, *c0_labels], session)
    assert first.success and "case c1" in first.data[3], first.error
    late = client.call(go_next, [None, c0_token, *c0_labels], session)  # sent while c0's form was on screen
    assert late.success and "case c2" in late.data[3], late.error
    back = client.call(go_prev, [None, late.data[-1], *blank], session)
    assert back.success and "case c1" in back.data[3], back.error
    values, status = form(back)
    assert values == blank and "Draft" not in status  # c1 has no labels it was never given
    back = client.call(go_prev, [None, back.data[-1], *blank], session)
    values, status = form(back)
    assert "case c0" in back.data[3] and values == c0_labels and "Draft" in status  # c0 keeps its own


def test_two_uploads_in_a_row_leave_the_pairs_case_open_even_when_the_first_ones_case_comes_late(
        page, app_, tmp_path, monkeypatch):
    """Each slot's upload opens the case of the images in the slots. The first upload's case (the
    clinical photo alone) used to be able to arrive after the pair's and stay: a save then kept one
    image of the two. Now the two run in the order they were sent. The clinical-alone case is
    slowed here (the app runs in this process) so that it would come last."""
    from playwright.sync_api import expect

    import threading

    from app_helpers import write_pair
    from skinnet.ui import review as app_review

    settings, _ = app_
    real = app_review.start_upload_case

    alone_done = threading.Event()

    def slow_when_alone(state, clinical, dermoscopy):
        if dermoscopy is None:
            time.sleep(3.0)
            try:
                return real(state, clinical, dermoscopy)
            finally:
                alone_done.set()
        return real(state, clinical, dermoscopy)

    monkeypatch.setattr(app_review, "start_upload_case", slow_when_alone)
    page.locator("#own-images").click()
    expect(page.locator("#case-header")).to_contain_text("No case open", timeout=60_000)
    clinical, dermoscopy = write_pair(tmp_path, seed=11)
    page.locator("#clinical-input input[type=file]").set_input_files(str(clinical))
    page.locator("#dermoscopy-input input[type=file]").set_input_files(str(dermoscopy))
    pair_case = re.compile(r"case upload:[0-9a-f]{12}-[0-9a-f]{12}")
    expect(page.locator("#case-header")).to_contain_text(pair_case, timeout=60_000)
    assert alone_done.wait(60)
    time.sleep(0.5)  # the slowed case's answer, had it come last, is on the page by now
    expect(page.locator("#case-header")).to_contain_text(pair_case)
    page.locator("#case-header").click()
    page.keyboard.press("a")
    page.keyboard.press("Enter")
    expect(page.locator("#save-status")).to_contain_text("Saved: agree for case upload:", timeout=60_000)
    saved = rows(settings)
    assert len(saved) == 1 and saved[0]["clinic_sha256"] and saved[0]["derm_sha256"], saved  # both images kept


def test_a_restored_case_whose_image_is_broken_brings_the_queue_back_and_says_why(app_):
    """A new page restores the reviewer's queue and case in one event; when the case's image was
    damaged in the queue folder meanwhile, the queue still comes back, with no case open and a
    sentence saying why (the whole restore used to fail). Runs last: it moves dr_a's place."""
    import secrets

    from skinnet_testkit.raw_http import RawClient, fns
    from test_security import open_first_case

    settings, root = app_
    write_queue(root / "queues" / "gone", n=2, prefix="g")
    client = RawClient(f"http://127.0.0.1:{settings.port}", "dr_a", "s3cret-pass")
    config = client.config()
    shown = open_first_case(client, config, secrets.token_hex(6), "gone/manifest.csv")
    assert shown.success and "case g0" in shown.data[3]
    (root / "queues" / "gone" / "img" / "c0_derm.png").write_bytes(b"no longer a PNG")  # g0's dermoscopy image
    restored = client.call(fns(config, "restore_queue")[0], [None], secrets.token_hex(6))  # a new page
    assert restored.success, restored.error
    assert "Back where you left off: gone/manifest.csv" in restored.data[1]
    assert "Its open case cannot be shown" in restored.data[1] and "No case open" in str(restored.data)


def test_edits_made_after_a_case_failed_to_open_stay_with_the_case_on_screen(app_):
    """A queue row's case whose image is damaged cannot be shown: the page keeps the case before
    (its images, form and token) while the server has the new one open. What the reviewer then
    types belongs to the case on screen, and the next move keeps it as that case's draft (it used
    to become the unshowable case's draft). Runs after the restore test: it moves dr_a's place."""
    import secrets

    from skinnet.corrections import NO_CHANGE
    from skinnet_testkit.raw_http import RawClient, fns
    from test_security import open_first_case

    settings, root = app_
    write_queue(root / "queues" / "torn", n=3, prefix="t")
    (root / "queues" / "torn" / "img" / "c2_derm.png").write_bytes(b"no longer a PNG")  # t2's dermoscopy image
    client = RawClient(f"http://127.0.0.1:{settings.port}", "dr_a", "s3cret-pass")
    config, session = client.config(), secrets.token_hex(6)
    shown = open_first_case(client, config, session, "torn/manifest.csv")
    assert shown.success and "case t0" in shown.data[3], shown.error
    row = {"index": [2, 1], "value": "t2", "row_value": [3, "t2", "queue", "", ""]}
    blank = [None, *[NO_CHANGE] * 8, None, ""]
    assert client.call(fns(config, "open_queue_row")[0], [None, shown.data[-1], *blank], session, row).success
    failed = client.call(fns(config, "show_case")[0], [None], session)
    assert not failed.success and "image" in failed.error  # the page still shows t0
    t0_labels = ["correct", "MEL", *[NO_CHANGE] * 7, 2, "typed on t0 after t2 failed"]
    moved = client.call(fns(config, "go_prev")[0], [None, shown.data[-1], *t0_labels], session)
    assert moved.success and "case t1" in moved.data[3], moved.error  # the move steps from t2's place
    assert "unsaved changes to case t0 are kept as a draft" in moved.data[15]
    back = client.call(fns(config, "go_prev")[0], [None, moved.data[-1], *blank], session)
    assert "case t0" in back.data[3] and "Draft" in back.data[15]
    assert [v.get("value") if isinstance(v, dict) else v for v in back.data[4:15]] == t0_labels


def test_unsaved_changes_survive_an_app_restart(tmp_path):
    """dr_a has half a review of c0 on screen (correct, DIAG SK, PN TYP, confidence 4, a note),
    the page idle, when the app restarts. The page used to show bare "Error" badges on the next
    click (or "Attempting reconnection" for ever) and nothing on it worked; a reload lost the
    form. Now the page reloads itself once another app answers, dr_a
    signs in again (a password login does not outlive the process), c0 comes back with the
    changes put back and says so on screen, and one Save logs them once, as meant."""
    from playwright.sync_api import expect, sync_playwright

    from app_helpers import app_env, start_app, stop_app

    write_queue(tmp_path / "queues" / "queue", n=3)
    env = app_env(tmp_path, SKINNET_USERS="dr_a:s3cret-pass", SKINNET_QUEUE_ROOT=str(tmp_path / "queues"))
    process, _ = start_app(env)
    port = int(env["GRADIO_SERVER_PORT"])
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1366, "height": 768})
            sign_in(page, port)
            page.get_by_role("tab", name="Queue").click()
            choose(page, "queue-file", "queue/manifest.csv")
            page.locator("#open-queue").click()
            page.get_by_role("tab", name="Review").click()
            wait_for_case(page, "c0")
            page.locator("#verdict input[value=correct]").check()
            choose(page, "correct-DIAG", "SK")
            choose(page, "correct-PN", "TYP")
            page.locator("#confidence input[value='4']").check()
            page.get_by_label("Note (max 2000 chars)").fill("flat, waxy; check again")
            expect(page.locator("#save-status")).to_contain_text("Unsaved changes", timeout=30_000)
            page.wait_for_timeout(3000)  # idle: no event under way as the app goes (Gradio's own reload needs one)

            stop_app(process)
            process, _ = start_app(env)
            expect(page.get_by_label("username")).to_be_visible(timeout=60_000)  # reloaded by itself
            sign_in(page, port)
            kept = page.locator("#kept-changes")
            expect(kept).to_have_text("✎ Unsaved changes from before the reload are back: press Save (Enter) to "
                                      "keep them.", timeout=60_000)
            expect(kept).to_be_in_viewport(ratio=1)
            expect(page.locator("#save-review")).to_be_in_viewport(ratio=1)
            note = page.locator("#restart-note")  # why the page reloaded, and what did not come through
            expect(note).to_contain_text("The app restarted")
            expect(note).to_contain_text("Uploaded images are never kept")
            expect(note).to_contain_text("Unsaved changes to a queue case come back when you open it")
            page.screenshot(path=str(tmp_path / "changes_back_after_restart.png"))
            note_box = note.bounding_box()
            for covered in ("#save-review", "#review-form", "#case-header", ".disclaimer"):  # the note is above them all
                box = page.locator(covered).first.bounding_box()
                assert note_box["y"] + note_box["height"] <= box["y"], f"the note covers {covered}"
            note.get_by_role("button", name="Dismiss").click()
            expect(note).to_have_count(0)
            expect(page.locator("#correct-DIAG input")).to_have_value("SK")
            expect(page.locator("#correct-PN input")).to_have_value("TYP")
            expect(page.locator("#correct-STR input")).to_have_value("no change")
            expect(page.locator("#verdict input[value=correct]")).to_be_checked()
            expect(page.locator("#confidence input[value='4']")).to_be_checked()
            expect(page.get_by_label("Note (max 2000 chars)")).to_have_value("flat, waxy; check again")
            page.locator("#case-header").click()
            page.keyboard.press("Enter")
            expect(page.locator("#save-status")).to_contain_text("Saved: correct for case c0", timeout=60_000)
            expect(kept).to_have_count(0)
            page.reload()  # saved: nothing is put back a second time
            wait_until_restored(page)
            wait_for_case(page, "c0")
            expect(page.locator("#save-status")).to_contain_text("Showing your saved review")
            expect(page.locator("#kept-changes")).to_have_count(0)
            expect(page.locator("#restart-note")).to_have_count(0)  # a reload by hand is not a restart
            browser.close()
    finally:
        stop_app(process)
    saved = [(r["case_id"], r["reviewer"], r["verdict"], r["DIAG"], r["PN"], r["STR"], r["confidence"], r["note"])
             for r in read_corrections(tmp_path / "log")[0]]
    assert saved == [("c0", "dr_a", "correct", "SK", "TYP", "", "4", "flat, waxy; check again")]


def test_changes_kept_through_a_reload_go_back_only_into_their_case_with_nothing_saved_since(page, app_, tmp_path):
    """Tab 1 has unsaved changes on c0 when a second window moves dr_a's place to c2, and tab 1
    reloads: it opens on c2 with nothing put back, and the changes go back into c0 when tab 1
    opens it. Then the second window saves a review of c0 and tab 1 reloads again: the older
    changes are not put over the newer review; the page lists them instead, and Enter logs
    nothing new. Last, the second window withdraws that review and tab 1 reloads: nothing comes
    back (the form had no unsaved changes)."""
    from playwright.sync_api import expect

    settings, _ = app_
    page.locator("#verdict input[value=correct]").check()
    choose(page, "correct-PN", "TYP")
    page.get_by_label("Note (max 2000 chars)").fill("first look")
    second = page.context.browser.new_context(viewport={"width": 1366, "height": 768}).new_page()  # another window
    sign_in(second, settings.port)
    wait_for_case(second, "c0")
    for case in ("c1", "c2"):
        second.keyboard.press("ArrowRight")
        wait_for_case(second, case)

    page.bring_to_front()
    page.reload()
    wait_until_restored(page)
    wait_for_case(page, "c2")
    expect(page.locator("#kept-changes")).to_have_count(0)
    expect(page.locator("#correct-PN input")).to_have_value("no change")
    for case in ("c1", "c0"):
        page.keyboard.press("ArrowLeft")
        wait_for_case(page, case)
    expect(page.locator("#kept-changes")).to_contain_text("from before the reload are back", timeout=30_000)
    expect(page.locator("#correct-PN input")).to_have_value("TYP")
    expect(page.get_by_label("Note (max 2000 chars)")).to_have_value("first look")

    second.bring_to_front()
    for case in ("c1", "c0"):
        second.keyboard.press("ArrowLeft")
        wait_for_case(second, case)
    second.locator("#verdict input[value=correct]").check()
    save_mel_on_c0(second)

    page.bring_to_front()
    page.reload()
    wait_until_restored(page)
    wait_for_case(page, "c0")
    expect(page.locator("#kept-changes")).to_contain_text(
        'Unsaved changes from before the reload not put back: case c0 changed since in another tab (a review saved '
        'or withdrawn, or a draft kept), or your last Save went through. They were: verdict correct, PN TYP, '
        'note "first look".', timeout=30_000)
    expect(page.locator("#correct-DIAG input")).to_have_value("MEL")
    expect(page.locator("#correct-PN input")).to_have_value("no change")
    expect(page.locator("#kept-changes")).to_be_in_viewport()  # its first lines: it may go on below
    page.screenshot(path=str(tmp_path / "kept_changes_not_put_back.png"))
    page.locator("#case-header").click()
    page.keyboard.press("Enter")
    expect(page.locator("#save-status")).to_contain_text("Already saved", timeout=60_000)
    assert [(r["case_id"], r["DIAG"], r["PN"], r["note"]) for r in rows(settings)] == [("c0", "MEL", "", "second look")]

    second.bring_to_front()  # the review withdrawn in the other window: a reload brings nothing back
    second.locator("#undo-save").click()
    expect(second.locator("#save-status")).to_contain_text("Undone", timeout=60_000)
    page.bring_to_front()
    page.reload()
    wait_until_restored(page)
    wait_for_case(page, "c0")
    page.wait_for_timeout(1000)
    expect(page.locator("#kept-changes")).to_have_count(0)
    expect(page.locator("#correct-DIAG input")).to_have_value("no change")
    expect(page.locator("#case-header")).to_contain_text("not reviewed by you yet")
    second.context.close()


def test_keys_and_clicks_during_a_put_back_leave_it_whole(page, app_):
    """Every task of c0 changed, then a reload. While the changes go back in (about a second,
    the form dimmed), the reviewer presses the right arrow, Enter and clicks next: a click used
    to close the dropdown being set and a key to land in it, so some changes were not put back.
    Now they are not taken: c0 stays open, nothing is saved, and every change is back."""
    from playwright.sync_api import expect

    settings, _ = app_
    page.locator("#verdict input[value=correct]").check()
    wanted = {t.name: t.classes[-1] for t in TASKS}
    for task, value in wanted.items():  # each from its own option list (a closing one can still be drawn)
        field = page.locator(f"#correct-{task} input")
        field.click()
        page.locator(f"#{field.get_attribute('aria-controls')}").get_by_role("option", name=value, exact=True).click()
        expect(field).to_have_value(value)
    page.locator("#confidence input[value='3']").check()
    page.get_by_label("Note (max 2000 chars)").fill("all eight")
    page.locator("#case-header").click()
    page.reload()
    page.wait_for_function("document.body.classList.contains('form-restoring')", timeout=60_000)
    for _ in range(3):
        page.keyboard.press("ArrowRight")
        page.locator("#next-case").click(force=True)
    page.keyboard.press("Enter")
    expect(page.locator("#kept-changes")).to_contain_text("from before the reload are back", timeout=30_000)
    expect(page.locator("#case-header")).to_contain_text("case c0 (")
    for task, value in wanted.items():
        expect(page.locator(f"#correct-{task} input")).to_have_value(value)
    expect(page.get_by_label("Note (max 2000 chars)")).to_have_value("all eight")
    assert rows(settings) == []


def test_what_else_lies_in_the_tabs_storage_does_not_stop_the_form_being_kept(page, app_):
    """The tab's storage holds entries this page did not write (another script of the origin, an
    older version: null, values that are not lists). The sort that trims the kept entries threw
    on them at every page exit, so no change was kept again in that tab. Now they are dropped,
    and c0's changes come back after the reload."""
    from playwright.sync_api import expect

    settings, _ = app_
    page.evaluate("""() => sessionStorage.setItem('skinnet-unsaved-forms', JSON.stringify({
        junk: null, 'dr_a\\nold': {values: 'not a list', given: [], at: 'yesterday'}, list: [1, 2]}))""")
    page.locator("#verdict input[value=correct]").check()
    choose(page, "correct-PN", "TYP")
    page.get_by_label("Note (max 2000 chars)").fill("kept anyway")
    page.locator("#case-header").click()
    page.reload()
    wait_until_restored(page)
    expect(page.locator("#kept-changes")).to_contain_text("from before the reload are back", timeout=30_000)
    expect(page.locator("#correct-PN input")).to_have_value("TYP")
    expect(page.get_by_label("Note (max 2000 chars)")).to_have_value("kept anyway")
    assert rows(settings) == []
