"""Cross-fitting (training.crossval): folds, out-of-fold predictions, resumability, on synthetic data."""
import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from conftest import REAL_DERM7PT
from skinnet.checkpoint import load_checkpoint
from skinnet.data import Case, Derm7pt
from synthetic import make_release
from training import crossval
from training.evaluate import head_predictions
from training.folds import assign_folds, pool_cases, read_folds

FAST = ["--image-size", "48", "--batch-size", "4", "--no-progress", "--threads", "1",
        "--cross-attention", "-1", "--attention-dim", "32", "--epochs", "1"]


def fake_cases(diagnoses):
    return [Case(str(i), Path("c"), Path("d"), (diag, 0, 0, 0, 0, 0, 0, 0)) for i, diag in enumerate(diagnoses)]


def test_folds_are_stratified_disjoint_cover_every_case_and_are_reproducible():
    diagnoses = [0] * 40 + [1] * 300 + [2] * 150 + [3] * 70 + [4] * 56  # Derm7pt-like imbalance, 616
    cases = fake_cases(diagnoses)
    folds = assign_folds(cases, 5, seed=0)
    assert set(folds) == {c.case_id for c in cases} and set(folds.values()) == set(range(5))
    for diag in range(5):
        per_fold = Counter(folds[c.case_id] for c in cases if c.labels[0] == diag)
        assert max(per_fold.values()) - min(per_fold.values()) <= 1, (diag, per_fold)
    assert assign_folds(cases, 5, seed=0) == folds and assign_folds(cases, 5, seed=1) != folds
    with pytest.raises(ValueError):
        assign_folds(cases, 1, seed=0)


@pytest.mark.skipif(not (REAL_DERM7PT / "meta" / "meta.csv").is_file(), reason="needs the real Derm7pt release")
def test_real_folds_cover_the_616_train_and_valid_cases(tmp_path):
    data = Derm7pt(REAL_DERM7PT)
    folds = crossval.ensure_folds(tmp_path, data, 5, 0)
    assert len(folds) == 616 and not set(folds) & {c.case_id for c in data.split("test")}
    assert read_folds(tmp_path / "folds.json", data)[0] == folds


@pytest.fixture(scope="module")
def cross_fitted(tmp_path_factory):
    release = make_release(tmp_path_factory.mktemp("derm7pt40"), n_cases=40, seed=3)
    out = tmp_path_factory.mktemp("cv")
    report = crossval.main(["--data-root", str(release), "--out", str(out), "--folds", "3",
                            "--ensemble-test", "--", *FAST, "--tta", "--name", "cv"])
    return release, out, report


def test_out_of_fold_predictions_come_from_the_model_that_never_saw_the_case(cross_fitted):
    release, out, report = cross_fitted
    data = Derm7pt(release)
    folds, _ = read_folds(out / "folds.json", data)
    oof = torch.load(out / "oof.pt", weights_only=True)
    assert oof["case_ids"] == [c.case_id for c in pool_cases(data)] and len(oof["case_ids"]) == 30
    by_id = {c.case_id: c for c in pool_cases(data)}
    for fold in range(3):
        model, card = load_checkpoint(out / f"fold{fold}" / "cv.safetensors")
        data_card = card.training["data"]
        assert data_card["less_fold"] == fold and card.trained_on_valid and not card.calibration
        left_out = [c for c in oof["case_ids"] if folds[c] == fold]
        assert data_card["n_train_cases"] == 30 - len(left_out)
        # the OOF logits of fold k's cases are exactly what fold k's model predicts for them
        logits, _ = head_predictions(model, card, [by_id[c] for c in left_out], "cpu", tta=True)
        rows = torch.tensor([oof["case_ids"].index(c) for c in left_out])
        for head in ("clinical", "dermoscopy", "fused"):
            torch.testing.assert_close(oof["logits"][head][rows], logits[head], atol=1e-5, rtol=1e-5)
        assert (oof["fold"][rows] == fold).all()
    r = report["out_of_fold"]
    assert r["n_cases"] == 30 and len(r["folds"]) == 3 and 0 <= r["avg"] <= 1
    assert report["ensemble_test"]["n_models"] == 3 and "DIAG" in report["ensemble_test"]
    assert json.loads((out / "crossval.json").read_text())["out_of_fold"]["avg"] == r["avg"]


def test_crossval_skips_finished_folds_and_refuses_other_folds(cross_fitted):
    release, out, report = cross_fitted
    weights = out / "fold1" / "cv.safetensors"
    before = weights.stat().st_mtime_ns
    again = crossval.main(["--data-root", str(release), "--out", str(out), "--folds", "3", "--", *FAST, "--name", "cv"])
    assert weights.stat().st_mtime_ns == before  # nothing retrained
    assert again["out_of_fold"]["avg"] == report["out_of_fold"]["avg"]
    with pytest.raises(SystemExit, match="3 folds"):
        crossval.main(["--data-root", str(release), "--out", str(out), "--folds", "4"])
