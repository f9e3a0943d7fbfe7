"""The way back into training (issue 24, item 5): reviews saved through the launched app, then the
README's command, ``training.train --corrections <log> --init checkpoints/skinnet_lite2.safetensors``,
on the shipped model. It trains as a refit (the shipped model learnt valid), never on a test case
(by id, or by the pixels of an upload), and its card names the reviewed cases it used."""
import secrets

import numpy as np
import pytest

from app_helpers import tiny_checkpoint
from skinnet_testkit.raw_http import NO_FORM, RawClient
from skinnet.checkpoint import load_checkpoint
from skinnet.data import Derm7pt
from skinnet.predict import Predictor
from skinnet_testkit.synthetic import lesion_image, make_release
from test_review_e2e import reviewer_app
from test_security import case_shown, fns, save_data

from skinnet.checkpoint import DEFAULT_CHECKPOINT as SHIPPED


def save_case(client, config, session, case_id, verdict, corrections=None) -> str:
    """Open a case of the session's queue by its row, as a click does, and save a review of it."""
    row = [1, case_id, "derm7pt", "", ""]
    assert client.call(fns(config, "open_queue_row")[0], [None, *NO_FORM], session,
                       {"index": [0, 1], "value": case_id, "row_value": row}).success
    shown, token = case_shown(client, config, session)
    assert shown == case_id
    saved = client.call(fns(config, "save")[0], save_data(token, verdict, corrections=corrections), session)
    assert saved.success and "Saved" in saved.data[0], saved.error
    return saved.data[0]


def save_upload(client, config, paths, verdict, corrections) -> str:
    """'My own pair': the two images uploaded, the case made from them, a review saved."""
    session = secrets.token_hex(6)
    clean = [client.call(fns(config, f"upload_{slot}")[0], [None, {"path": client.upload(path)}], session).data[0]
             for slot, path in zip(("clinical", "dermoscopy"), paths)]
    made = client.call(fns(config, "case_from_upload")[0], [None, *clean], session)
    saved = client.call(fns(config, "save")[0], save_data(made.data[-1], verdict, corrections=corrections), session)
    assert saved.success and "Saved" in saved.data[0], saved.error
    return saved.data[0].split("for case ")[1].split(" ")[0]


@pytest.mark.timeout(1200)
@pytest.mark.skipif(not SHIPPED.is_file(), reason="needs the shipped checkpoint")
def test_the_documented_command_fine_tunes_the_shipped_model_on_reviews_saved_through_the_app(tmp_path):
    from training import train

    release = make_release(tmp_path / "queues" / "derm7pt", n_cases=12, seed=4)
    data = Derm7pt(release)
    train_case, valid_case, test_case = (data.split(s)[0] for s in ("train", "valid", "test"))
    mel = ["MEL", *["no change"] * 7]
    rng = np.random.default_rng(8)
    new_pair = [tmp_path / "new_clinical.png", tmp_path / "new_dermoscopy.png"]
    for path, tint in zip(new_pair, (1, 3)):
        lesion_image(rng, (72, 64), tint=tint).save(path)
    with reviewer_app(Predictor.from_checkpoint(tiny_checkpoint(tmp_path)), tmp_path) as settings:
        client = RawClient(f"http://127.0.0.1:{settings.port}", "dr_a", "s3cret-pass")
        config = client.config()
        session = secrets.token_hex(6)
        assert client.call(fns(config, "open_queue")[0], [None, "derm7pt/meta/meta.csv", *NO_FORM], session).success
        assert client.call(fns(config, "filter_queue")[0], [None, "all", "all", "any"], session).success
        save_case(client, config, session, train_case.case_id, "correct", mel)
        save_case(client, config, session, valid_case.case_id, "correct", mel)
        save_case(client, config, session, test_case.case_id, "correct", mel)
        # a test case's own two images, uploaded as "My own pair": a new case id, the same pixels
        leaked = save_upload(client, config, [test_case.clinical_path, test_case.dermoscopy_path], "correct", mel)
        new = save_upload(client, config, new_pair, "correct", ["SK", *["no change"] * 7])

    checkpoint = train.main(["--data-root", str(release), "--out", str(tmp_path / "run"),
                             "--corrections", str(settings.log_dir), "--init", str(SHIPPED),
                             "--epochs", "1", "--image-size", "64", "--batch-size", "4", "--threads", "1",
                             "--no-progress", "--name", "skinnet_lite2_reviewed"])
    _, card = load_checkpoint(checkpoint)
    used = card.training["data"]
    assert used["split"] == "train+valid" and card.trained_on_valid and not card.calibration  # a refit
    assert card.training["pretrained"] == "init:skinnet_lite2"
    assert used["corrections_used"] == {"derm7pt": sorted([train_case.case_id, valid_case.case_id]), "new": [new]}
    skipped = used["corrections_skipped"]
    assert set(skipped) == {test_case.case_id, leaked}
    assert "held-out test-split case" in skipped[test_case.case_id] and "held-out Derm7pt image" in skipped[leaked]
    assert used["n_train_cases"] == len(data.split("train")) + len(data.split("valid")) + 1
    # test is scored only when asked (--score-test), once per shipped candidate
    assert "valid" in card.metrics and "test" not in card.metrics
