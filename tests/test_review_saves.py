"""Saving, drafts and undo at the library level (skinnet.ui.review, no browser): what is logged is
what the reviewer meant, and what the page shows is what the checks compare against. The
browser side of the same rules is in test_review_slips.py."""
import pytest

from app_helpers import tiny_checkpoint
from skinnet.corrections import read_corrections
from skinnet.labels import TASKS
from skinnet.predict import Predictor
from skinnet_testkit.queues import write_queue


def drafts_setup(tmp_path):
    from skinnet.corrections import CorrectionsLog
    from skinnet.ui import review

    write_queue(tmp_path / "queues" / "queue", n=3)
    write_queue(tmp_path / "queues" / "other", n=3, seed=12, prefix="o")
    log = CorrectionsLog(tmp_path / "log")

    def open_(state, name):
        state = review.with_server_drafts(state, log.folder, "dr_a")  # as the app's open_queue does
        return review.open_queue_handler(state, str(tmp_path / "queues" / name), tmp_path / "queues", log, "dr_a",
                                         name)

    def draft_and_leave(state, values):  # the open case's form changed, then the next case opened
        state = review.keep_draft(state, values, log, "dr_a")
        state = review.move(state, "next", log, "dr_a")
        review.remember(state, log.folder, "dr_a")
        return state

    return review, log, open_, draft_and_leave


def saving_setup(tmp_path, checkpoint=None):
    """(review module, log, state with c0 of the queue open, c0's images, predictor, save): save(verdict,
    corrections dict or None, note, **kw) saves c0 as dr_a and returns the status message."""
    review, log, open_, _ = drafts_setup(tmp_path)
    predictor = Predictor.from_checkpoint(checkpoint or tiny_checkpoint(tmp_path))
    state = review.move(open_(review.new_state(), "queue/manifest.csv")[0], "next", log, "dr_a")
    assert state["case"]["case_id"] == "c0"
    images = review.load_case_images(state, tmp_path / "queues")
    state = review.with_shown_images(state, images)  # as the app's show_case does

    def save(verdict, corrected=None, note="", confidence=None, **kw):
        corrected = {t.name: (corrected or {}).get(t.name, "no change") for t in TASKS}
        return review.save_review(state, predictor, log, "dr_a", *images, verdict, corrected, confidence, note, **kw)[1]

    return review, log, state, save


@pytest.mark.parametrize("note", ["first line\nsecond line", "a\r\nb\rc", "'+ve for MEL? second opinion",
                                  "'=SUM(A1)", "''two quotes", "'-already", "=formula\nand a line"])
def test_a_saved_note_is_what_the_form_holds_and_saving_it_again_logs_nothing(tmp_path, note):
    """A note with a line break (Shift+Enter, a paste) or starting with a quote before = + - @ was
    saved changed (line breaks as spaces, the quote dropped on reading): the form then differed
    from the saved review, so each later Save logged the same review again and the case stayed
    marked "unsaved draft". Now the log gives back what a form with that note compares as, the
    status says when line breaks became spaces, and a second save, the draft check and Undo all
    see the saved review."""
    from skinnet.corrections import one_line

    review, log, state, save = saving_setup(tmp_path)
    said = save("unsure", note=note)
    assert said.startswith("Saved: unsure for case c0")
    assert ("line breaks are saved as spaces" in said) == ("\n" in note or "\r" in note)
    saved = rows_of(log)
    assert [r["note"] for r in saved] == [one_line(note)] and one_line(note) == note.replace("\r\n", "\n\n") \
        .replace("\r", "\n").replace("\n", " ")
    assert save("unsure", note=note).startswith("Already saved") and len(rows_of(log)) == 1
    form = ("unsure", *["no change"] * 8, None, note)
    kept = review.keep_draft(state, form, log, "dr_a")
    assert kept["left_draft"] is None and "c0" not in kept["drafts"]
    assert "unsaved draft" not in review.case_header(kept, log, "dr_a")
    message, _, undone = review.undo_last_save(state, log, "dr_a", form)
    assert undone, message


def rows_of(log):
    return read_corrections(log.folder)[0] if any(log.folder.glob("shards/*.csv")) else []


@pytest.mark.parametrize("verdict", ["unsure", "skip"])
def test_labels_picked_under_unsure_or_skip_are_refused_not_dropped(tmp_path, verdict):
    """MEL picked, then the verdict set to unsure: "Saved" came back and MEL was nowhere in the log
    (unsure and skip keep no labels), and the case stayed marked as an unsaved draft. Now the save
    is refused with what to do, nothing is logged, and the same verdict without labels saves."""
    import gradio as gr

    _, log, _, save = saving_setup(tmp_path)
    with pytest.raises(gr.Error, match=f"Verdict '{verdict}' keeps no labels, and you picked DIAG MEL, PN ATP"):
        save(verdict, {"DIAG": "MEL", "PN": "ATP"}, note="maybe melanoma")
    assert rows_of(log) == []
    assert save(verdict, note="maybe melanoma").startswith(f"Saved: {verdict}")


def test_agree_is_refused_while_the_prediction_is_hidden_until_it_is_shown(tmp_path):
    """The lesion check hid the prediction (every task "prediction hidden"), and "agree" saved the
    eight hidden labels as confirmed: labels the reviewer never saw, which training then uses.
    Now "agree" needs the prediction on screen ('show anyway'); the other verdicts are unchanged."""
    import gradio as gr
    import numpy as np
    from app_helpers import guarded_checkpoint
    from skinnet.imaging import load_rgb
    from skinnet_testkit.non_lesion import generated_images
    from skinnet_testkit.synthetic import dermoscopy_like_image

    review, log, _, _ = drafts_setup(tmp_path)
    predictor = Predictor.from_checkpoint(guarded_checkpoint(tmp_path / "guarded"))
    document, derm = tmp_path / "page.png", tmp_path / "derm.jpg"
    dict(generated_images())["document-1"].save(document)
    dermoscopy_like_image(np.random.default_rng(21)).save(derm, quality=90)
    pair = load_rgb(document), load_rgb(derm)
    assert not predictor.predict(*pair).checks.trustworthy  # the page would say "No prediction shown"
    state = review.start_upload_case(review.new_state(), str(document), str(derm))
    blank = {t.name: "no change" for t in TASKS}
    with pytest.raises(gr.Error, match="hidden until you press 'Show the prediction anyway': 'agree' would confirm"):
        review.save_review(state, predictor, log, "dr_a", *pair, "agree", blank, None, "", prediction_shown=False)
    assert rows_of(log) == []
    said = review.save_review(state, predictor, log, "dr_a", *pair, "agree", blank, None, "", prediction_shown=True)[1]
    assert said.startswith("Saved: agree") and [r["verdict"] for r in rows_of(log)] == ["agree"]


def test_the_draft_that_goes_to_keep_a_queues_drafts_bounded_is_named(tmp_path):
    """Drafts of a queue file are capped (MAX_DRAFTS); the oldest went unsaid, and reopening its
    case showed a blank form. Now the next status line names it, once."""
    review, log, _, _ = drafts_setup(tmp_path)
    state = review.new_state()
    for i in range(review.MAX_DRAFTS + 1):
        state = review.keep_draft(state, ("unsure", *["no change"] * 8, None, f"draft {i}"), log, "dr_a", f"x{i}")
        assert state["dropped_draft"] == (None if i < review.MAX_DRAFTS else "x0")
    assert len(state["drafts"]) == review.MAX_DRAFTS and "x0" not in state["drafts"]
    state = {**state, "case": {"case_id": "x5", "source": "upload"}}
    _, said = review.form_for_case(state, None, None)
    assert f"at most {review.MAX_DRAFTS} cases of a queue file: the oldest, of case x0, is dropped" in said


def test_a_page_left_behind_by_another_tabs_save_has_no_unsaved_changes_and_its_undo_says_why(tmp_path):
    """Tab B shows review R1 of c0; tab A saves R2. B's Undo was refused with "open the case
    again", and leaving made R1 a draft over R2 ("press Save to keep them": one Enter brought the
    older review back). Now B's form as the page got it is no change: no draft, the refusal says
    another tab saved, reopening shows R2, and Undo then withdraws R2."""
    review, log, state, save = saving_setup(tmp_path)
    first = ("unsure", *["no change"] * 8, None, "R1")
    save("unsure", note="R1")
    shown_b = review.shown(state, first, log.latest_review("dr_a", "c0"))  # what the server sent tab B
    assert review.review_shown(shown_b, "c0") == first
    save("skip", note="R2")  # tab A
    message, _, undone = review.undo_last_save(shown_b, log, "dr_a", first)
    assert not undone and message.startswith("Not undone: another tab or window saved or undid a review of case c0")
    assert "your skip review of" in message and rows_of(log)[-1]["note"] == "R2"
    left = review.keep_draft(shown_b, first, log, "dr_a")
    assert left["left_draft"] is None and "c0" not in left["drafts"]
    form, said = review.form_for_case(left, log.latest_review("dr_a", "c0"), log.newest_save("dr_a", "c0"))
    assert form == ("skip", *["no change"] * 8, None, "R2") and "Draft" not in said
    # changes B made on top of R1 are unsaved changes, said as such
    edited = ("correct", "MEL", *["no change"] * 7, None, "R1 and MEL")
    message, _, undone = review.undo_last_save(shown_b, log, "dr_a", edited)
    assert not undone and message.startswith("Not undone: the form has unsaved changes to your skip review")
    assert review.keep_draft(shown_b, edited, log, "dr_a")["left_draft"] == "c0"
    reopened = review.shown(left, form, log.latest_review("dr_a", "c0"))
    message, standing, undone = review.undo_last_save(reopened, log, "dr_a", form)
    assert undone and standing["note"] == "R1", message


def test_the_draft_dropped_by_the_bound_is_named_when_another_queue_opens(tmp_path):
    """The move that dropped the oldest draft can be opening another queue file: its status names it."""
    review, log, open_, _ = drafts_setup(tmp_path)
    state = review.move(open_(review.new_state(), "queue/manifest.csv")[0], "next", log, "dr_a")
    state = {**state, "drafts": {f"x{i}": review.make_draft(("unsure", *["no change"] * 8, None, f"d{i}"), None)
                                 for i in range(review.MAX_DRAFTS)}}
    state = review.keep_draft(state, ("skip", *["no change"] * 8, None, "the newest"), log, "dr_a")
    assert state["dropped_draft"] == "x0"
    _, _, said = open_(state, "other/manifest.csv")
    assert "the oldest, of case x0, is dropped" in said


def test_agree_on_a_pair_that_looks_swapped_names_the_buttons_on_screen_and_an_unchanged_agree_resaves(tmp_path):
    """A pair that looks swapped hides its prediction behind 'They are right as they are' / 'Swap
    the images' (no 'Show the prediction anyway' on screen): the refusal names those. An agree
    saved after the prediction was shown, saved again unchanged on a later visit (the flag is
    reset per case), is "Already saved", not a refusal."""
    import gradio as gr
    import numpy as np
    from app_helpers import guarded_checkpoint
    from skinnet_testkit.synthetic import clinical_like_image, dermoscopy_like_image

    review, log, _, _ = drafts_setup(tmp_path)
    predictor = Predictor.from_checkpoint(guarded_checkpoint(tmp_path / "guarded"))
    rng = np.random.default_rng(21)
    clinical, derm = tmp_path / "clinical.jpg", tmp_path / "derm.jpg"
    clinical_like_image(rng).save(clinical, quality=90)
    dermoscopy_like_image(rng).save(derm, quality=90)
    from skinnet.imaging import load_rgb
    pair = load_rgb(derm), load_rgb(clinical)  # in each other's slots
    assert predictor.predict(*pair).checks.swapped
    state = review.start_upload_case(review.new_state(), str(derm), str(clinical))
    blank = {t.name: "no change" for t in TASKS}
    with pytest.raises(gr.Error, match="hidden until you press 'They are right as they are' or 'Swap the images'"):
        review.save_review(state, predictor, log, "dr_a", *pair, "agree", blank, None, "", prediction_shown=False)
    assert review.save_review(state, predictor, log, "dr_a", *pair, "agree", blank, None, "",
                              prediction_shown=True)[1].startswith("Saved: agree")
    again = review.save_review(state, predictor, log, "dr_a", *pair, "agree", blank, None, "", prediction_shown=False)
    assert again[1].startswith("Already saved") and len(rows_of(log)) == 1


def test_the_forms_marker_names_the_queue_file_the_reviewer_and_the_form_as_the_page_shows_it(tmp_path):
    """What the page keeps a form's unsaved changes under through a reload (keys.js): two queue
    files that both have a case c0 (other images) give different keys, so kept changes never go
    into the other file's c0; the form is given as the page shows it (a fine value by its label,
    the confidence as its radio's text); a hostile reviewer name stays inside its attribute;
    uploads and visitors carry nothing to put back."""
    import html
    import json
    import re

    from skinnet.ui.events import form_marker

    review, log, open_, _ = drafts_setup(tmp_path)
    write_queue(tmp_path / "queues" / "copy", n=3, seed=5)  # c0, c1, c2 again: other lesions
    markers = []
    for name in ("queue/manifest.csv", "copy/manifest.csv"):
        state = review.move(open_(review.new_state(), name)[0], "next", log, "dr_a")
        assert state["case"]["case_id"] == "c0"
        values = ("correct", "dermal nevus", *["no change"] * 7, 4, 'says "flat"')
        markers.append(form_marker(state, 'dr_a"><script>x</script>', values))

    def data(marker):
        return {k: html.unescape(v) for k, v in re.findall(r'data-(\w+)="([^"]*)"', marker)}

    first, second = data(markers[0]), data(markers[1])
    assert first["case"].endswith(":queue/manifest.csv|c0") and second["case"].endswith(":copy/manifest.csv|c0")
    assert first["name"] == second["name"] == "c0" and first["who"] == 'dr_a"><script>x</script>'
    assert "<script>" not in markers[0]
    assert json.loads(first["form"]) == ["correct", "NEV · dermal nevus", *["no change"] * 7, "4", 'says "flat"']
    upload = review.start_upload_case(review.new_state(), None, None)
    for state, reviewer in ((upload, "dr_a"), (state, None)):
        assert set(data(form_marker(state, reviewer, review.form_values(None)))) == {"token"}
