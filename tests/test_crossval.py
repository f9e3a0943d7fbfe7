"""Cross-fitting (training.crossval): folds, out-of-fold predictions, resumability, on synthetic data."""
import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import REAL_DERM7PT, benchmark, needs_real_derm7pt
from skinnet.checkpoint import load_checkpoint
from skinnet.data import Case, Derm7pt
from skinnet_testkit.synthetic import make_release
from training import crossval, evaluate
from training.evaluate import head_predictions
from training.folds import assign_folds, pool_cases, read_folds

ROOT = Path(__file__).resolve().parents[1]
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


@needs_real_derm7pt
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


def test_distillation_term_equals_a_hand_computation():
    import math
    from skinnet.labels import TASKS
    from training.distill import distillation_term, soft_targets

    torch.manual_seed(0)
    n_outputs = sum(t.num_classes for t in TASKS)
    student, teacher_logits = torch.randn(2, n_outputs), torch.randn(2, n_outputs)
    T = 2.0
    teacher = soft_targets(teacher_logits, T)
    expected, start = [], 0
    for task in TASKS:  # KL(p || q) per case, by hand, then the masked mean over cases and tasks
        end = start + task.num_classes
        kls = []
        for b in range(2):
            p = [math.exp(v / T) for v in teacher_logits[b, start:end].tolist()]
            q = [math.exp(v / T) for v in student[b, start:end].tolist()]
            p, q = [v / sum(p) for v in p], [v / sum(q) for v in q]
            kls.append(sum(pi * math.log(pi / qi) for pi, qi in zip(p, q)))
        expected.append(kls[0])  # the mask keeps case 0 only
        start = end
    got = distillation_term(student, teacher, T, torch.tensor([1.0, 0.0]))
    assert float(got) == pytest.approx(T ** 2 * sum(expected) / len(expected), rel=1e-5)
    assert float(distillation_term(teacher_logits, teacher, T, torch.ones(2))) == pytest.approx(0, abs=1e-5)


def test_soft_targets_of_a_case_come_from_its_out_of_fold_prediction(cross_fitted):
    from training.distill import soft_targets, teacher_probabilities

    _, out, _ = cross_fitted
    oof = torch.load(out / "oof.pt", weights_only=True)
    ids = [oof["case_ids"][5], "upload:new", oof["case_ids"][0]]
    probabilities, has_target = teacher_probabilities([out / "oof.pt", out / "oof.pt"], ids, 3.0)
    assert has_target.tolist() == [True, False, True]
    expected = soft_targets(oof["logits"]["fused"][[5, 0]], 3.0)
    torch.testing.assert_close(probabilities["fused"][[0, 2]], expected)
    assert probabilities["fused"][1].abs().sum() == 0


def test_a_student_trains_on_the_teachers_out_of_fold_targets(cross_fitted, tmp_path):
    from training import train

    release, out, _ = cross_fitted
    path = train.main(["--data-root", str(release), "--out", str(tmp_path), "--refit", "--mixup", "0.2",
                       "--distill", str(out / "oof.pt"), "--distill-weight", "0.7", "--distill-temperature", "2",
                       *FAST, "--name", "student"])
    _, card = load_checkpoint(path)
    assert card.training["distill"] == {"teachers": [out.name], "weight": 0.7, "temperature": 2.0,
                                        "n_cases_with_targets": 30}
    assert "distill" in (tmp_path / "metrics.csv").read_text().splitlines()[0]


def test_a_refit_calibrated_from_out_of_fold_logits_says_so(cross_fitted, tmp_path):
    from skinnet.predict import Predictor
    from skinnet.ui.views import model_markdown
    from training import evaluate, train

    release, out, _ = cross_fitted
    refit = train.main(["--data-root", str(release), "--out", str(tmp_path / "refit"), "--refit", *FAST,
                        "--tta", "--name", "cv"])
    record = evaluate.main(["--checkpoint", str(refit), "--data-root", str(release), "--split", "test",
                            "--calibrate-from", str(out / "oof.pt")])
    _, card = load_checkpoint(refit)
    assert set(card.calibration) == {"clinical", "dermoscopy", "fused"}
    source = card.training["calibration_source"]
    assert source["fitted_on"] == "out-of-fold" and source["n_cases"] == 30 and source["folds"] == 3
    assert card.metrics["test"]["avg"] == record["avg"] and "ece_calibrated" in record["heads"]["fused"]
    text = model_markdown(Predictor.from_checkpoint(refit))
    assert "fitted on out-of-fold predictions of the same recipe (3-fold cross-fitting on 30" in text
    other = train.main(["--data-root", str(release), "--out", str(tmp_path / "other"), "--refit", *FAST,
                        "--tta", "--mixup", "0.3", "--name", "other"])
    with pytest.raises(SystemExit, match="another recipe.*mixup"):
        evaluate.main(["--checkpoint", str(other), "--data-root", str(release), "--calibrate-from",
                       str(out / "oof.pt")])


def test_a_card_that_drops_the_flips_is_calibrated_from_one_view_oof_logits(cross_fitted, tmp_path):
    """--tta-oof off: every fold model predicts its fold again with one view; a refit whose card
    is switched to one view (--set-tta off) is calibrated from those logits, never from the
    flipped ones, and the app then predicts with one view."""
    from skinnet.predict import Predictor
    from training import train

    release, out, _ = cross_fitted
    data = Derm7pt(release)
    crossval.main(["--data-root", str(release), "--out", str(out), "--folds", "3", "--tta-oof", "off"])
    one_view, flipped = (torch.load(out / name, weights_only=True) for name in ("oof_tta_off.pt", "oof.pt"))
    assert one_view["tta"] is False and flipped["tta"] is True and one_view["case_ids"] == flipped["case_ids"]
    assert torch.equal(one_view["fold"], flipped["fold"]) and torch.equal(one_view["labels"], flipped["labels"])
    folds, _ = read_folds(out / "folds.json", data)
    by_id = {c.case_id: c for c in pool_cases(data)}
    model, card = load_checkpoint(out / "fold1" / "cv.safetensors")
    mine = [c for c in one_view["case_ids"] if folds[c] == 1]
    logits, _ = head_predictions(model, card, [by_id[c] for c in mine], "cpu", tta=False)
    rows = torch.tensor([one_view["case_ids"].index(c) for c in mine])
    torch.testing.assert_close(one_view["logits"]["fused"][rows], logits["fused"], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(one_view["logits"]["fused"], flipped["logits"]["fused"])

    refit = train.main(["--data-root", str(release), "--out", str(tmp_path / "refit"), "--refit", *FAST,
                        "--tta", "--name", "cv"])
    with pytest.raises(SystemExit, match="TTA: the logits were predicted with it off, the card has it on"):
        evaluate.main(["--checkpoint", str(refit), "--data-root", str(release), "--calibrate-from",
                       str(out / "oof_tta_off.pt")])
    with pytest.raises(SystemExit, match="TTA: the logits were predicted with it on, the card has it off"):
        evaluate.main(["--checkpoint", str(refit), "--data-root", str(release), "--set-tta", "off",
                       "--calibrate-from", str(out / "oof.pt")])
    with pytest.raises(SystemExit):  # a TTA change without refitting the calibration
        evaluate.main(["--checkpoint", str(refit), "--data-root", str(release), "--set-tta", "off"])
    record = evaluate.main(["--checkpoint", str(refit), "--data-root", str(release), "--set-tta", "off",
                            "--calibrate-from", str(out / "oof_tta_off.pt")])
    _, card = load_checkpoint(refit)
    assert card.inference["tta"] is False and record["tta"] is False
    assert card.training["tta"] is True  # the recipe's flag stays as it was trained
    assert card.training["calibration_source"]["tta"] is False
    assert card.training["calibration_source"]["oof_file"] == "oof_tta_off.pt"
    assert card.metrics["test"]["avg"] == record["avg"]
    predictor = Predictor.from_checkpoint(refit)
    from skinnet.ui.views import model_markdown
    card_text = model_markdown(predictor)  # the Model tab says how it predicts and was calibrated
    assert "one view, no test-time flips" in card_text and "on 30 train + valid cases, one view)" in card_text
    calls = []
    hook = predictor.model.encoder.stages[0].register_forward_hook(lambda m, a, o: calls.append(o.shape[0]))
    try:
        predictor.predict(*(Image.open(by_id[mine[0]].clinical_path).convert("RGB"),
                            Image.open(by_id[mine[0]].dermoscopy_path).convert("RGB")))
    finally:
        hook.remove()
    assert calls == [2]  # one view of each image (joint batch-norm: both images in one batch)
    from training.fit_guards import oof_margins
    with pytest.raises(SystemExit, match="predicted with TTA on, the checkpoint predicts with it off"):
        oof_margins(out / "oof.pt", predictor)
    margins, correct = oof_margins(out / "oof_tta_off.pt", predictor)
    assert len(margins) == len(correct) == 30
    legacy = {k: v for k, v in flipped.items() if k != "tta"}  # written before OOF files said
    torch.save(legacy, out / "oof_legacy.pt")
    with pytest.raises(SystemExit, match="predicted with TTA on"):  # told by the fold models' cards
        oof_margins(out / "oof_legacy.pt", predictor)


def test_one_view_oof_needs_every_fold_finished(cross_fitted, tmp_path):
    import shutil

    release, out, _ = cross_fitted
    with pytest.raises(SystemExit):
        crossval.main(["--data-root", str(release), "--out", str(out), "--folds", "3", "--only", "1",
                       "--tta-oof", "off"])
    unfinished = tmp_path / "cv"
    shutil.copytree(out, unfinished)
    (unfinished / "fold2" / "oof.pt").unlink()  # fold 2 still training: only its latest epoch's weights
    with pytest.raises(SystemExit, match=r"folds \[2\] .* have not finished"):
        crossval.main(["--data-root", str(release), "--out", str(unfinished), "--folds", "3", "--tta-oof", "off"])


def test_learning_curve_points_train_on_stratified_fractions(cross_fitted, tmp_path):
    from training.folds import stratified_subset

    cases = fake_cases([0] * 40 + [1] * 300 + [2] * 150 + [3] * 70 + [4] * 56)
    half = stratified_subset(cases, 0.5, seed=0)
    assert Counter(c.labels[0] for c in half) == {0: 20, 1: 150, 2: 75, 3: 35, 4: 28}
    assert stratified_subset(cases, 1.0, seed=0) == cases
    release, out, _ = cross_fitted
    small = tmp_path / "half"
    crossval.main(["--data-root", str(release), "--out", str(small), "--folds", "3", "--", *FAST,
                   "--train-fraction", "0.5", "--name", "cv"])
    _, card = load_checkpoint(small / "fold0" / "cv.safetensors")
    assert card.training["data"]["train_fraction"] == 0.5 and card.training["data"]["n_train_cases"] < 20
    benchmark([ROOT / "benchmarks" / "learning_curve.py", small, out, "--figure", tmp_path / "lc.png",
               "--json", tmp_path / "lc.json"])
    points = json.loads((tmp_path / "lc.json").read_text())
    assert [p["fraction"] for p in points] == [0.5, 1.0] and (tmp_path / "lc.png").stat().st_size > 5000


def test_held_out_teachers_never_see_the_students_fold(cross_fitted, tmp_path):
    """The leak-free distillation check: with --hold-out 1 every teacher trains on neither its own
    fold nor fold 1, their OOF covers exactly the cases outside fold 1, and the student of fold 1
    gets a soft target for each of its training cases from them."""
    release, _, _ = cross_fitted
    data = Derm7pt(release)
    teachers = tmp_path / "teach"
    report = crossval.main(["--data-root", str(release), "--out", str(teachers), "--folds", "3", "--hold-out", "1",
                            "--", *FAST, "--name", "cv"])
    folds, _ = read_folds(teachers / "folds.json", data)
    assert not (teachers / "fold1").exists() and report["hold_out"] == 1
    oof = torch.load(teachers / "oof.pt", weights_only=True)
    assert set(oof["case_ids"]) == {c for c, f in folds.items() if f != 1}
    for fold in (0, 2):
        _, card = load_checkpoint(teachers / f"fold{fold}" / "cv.safetensors")
        assert card.training["data"]["held_out_fold"] == 1 and card.training["data"]["less_fold"] == fold
        assert card.training["data"]["n_train_cases"] == sum(f not in (1, fold) for f in folds.values())
    assert set(oof["fold"].tolist()) == {0, 2} and report["out_of_fold"]["n_cases"] == len(oof["case_ids"])
    student = tmp_path / "student"
    crossval.main(["--data-root", str(release), "--out", str(student), "--folds", "3", "--only", "1", "--",
                   *FAST, "--name", "cv", "--distill", str(teachers / "oof.pt")])
    _, card = load_checkpoint(student / "fold1" / "cv.safetensors")
    assert card.training["distill"]["n_cases_with_targets"] == card.training["data"]["n_train_cases"] \
        == sum(f != 1 for f in folds.values())
    assert card.training["distill"]["leak_free"] is True
    # misuse is refused: teachers held out for fold 1 teaching fold 0, an ordinary cross-fit
    # folder reused as teachers (or the reverse), a hold-out OOF as a calibration source
    with pytest.raises(SystemExit, match="another fold"):
        crossval.main(["--data-root", str(release), "--out", str(student), "--folds", "3", "--only", "0", "--",
                       *FAST, "--name", "cv", "--distill", str(teachers / "oof.pt")])
    _, ordinary, _ = cross_fitted
    with pytest.raises(SystemExit, match="trained with no --hold-out"):
        crossval.main(["--data-root", str(release), "--out", str(ordinary), "--folds", "3", "--hold-out", "1",
                       "--", *FAST, "--name", "cv"])
    with pytest.raises(SystemExit, match="trained with --hold-out 1"):
        crossval.main(["--data-root", str(release), "--out", str(teachers), "--folds", "3", "--", *FAST, "--name", "cv"])
    with pytest.raises(SystemExit, match="leaves fold 1 out"):
        evaluate.calibration_from_oof(teachers / "oof.pt", card)
    for bad in (["--hold-out", "3"], ["--folds", "2", "--hold-out", "1"]):
        with pytest.raises(SystemExit):
            crossval.main(["--data-root", str(release), "--out", str(tmp_path / "bad"), "--folds", "3", *bad])


def test_a_leak_free_student_cross_fit_in_one_command_with_parallel_folds(cross_fitted, tmp_path):
    """What training/device.sh runs: teachers held out per fold, trained two folds at a time in
    their own processes, then one student command whose every fold learns from its own
    teachers through ``{fold}`` in the flags."""
    release, _, _ = cross_fitted
    for k in (0, 2):
        crossval.main(["--data-root", str(release), "--out", str(tmp_path / f"teach_k{k}"), "--folds", "3",
                       "--hold-out", str(k), "--jobs", "2", "--", *FAST, "--name", "cv"])
        logs = sorted(p.parent.name for p in (tmp_path / f"teach_k{k}").glob("fold*/train.log"))
        assert logs == [f"fold{m}" for m in range(3) if m != k]  # each in its own process
        assert (tmp_path / f"teach_k{k}" / "oof.pt").is_file()
    student = tmp_path / "student"
    crossval.main(["--data-root", str(release), "--out", str(student), "--folds", "3", "--only", "0,2", "--jobs", "2",
                   "--", *FAST, "--name", "cv", "--distill", str(tmp_path / "teach_k{fold}" / "oof.pt")])
    for k in (0, 2):
        _, card = load_checkpoint(student / f"fold{k}" / "cv.safetensors")
        assert card.training["distill"]["leak_free"] is True and card.training["distill"]["teachers"] == [f"teach_k{k}"]
    # a failing fold is named with its log, and the command can be run again
    with pytest.raises(SystemExit, match=r"folds \[1\] failed: see .*fold1/train.log"):
        crossval.main(["--data-root", str(release), "--out", str(student), "--folds", "3", "--only", "1", "--jobs", "2",
                       "--", *FAST, "--name", "cv", "--distill", str(tmp_path / "missing_k{fold}" / "oof.pt")])


def test_compare_oof_counts_the_cases_only_one_run_gets_right(cross_fitted, tmp_path):
    """benchmarks/compare_oof.py on a cross-fit against a copy whose DIAG answers are changed
    on known cases: the discordant counts and the exact McNemar p-value (checked against scipy)."""
    from scipy.stats import binomtest

    from training.metrics import exact_mcnemar

    from skinnet.labels import TASK_SLICES
    _, out, _ = cross_fitted
    a = torch.load(out / "oof.pt", weights_only=True)
    b = {**a, "logits": {h: v.clone() for h, v in a["logits"].items()}}
    diag = TASK_SLICES["DIAG"]
    predicted = a["logits"]["fused"][:, diag].argmax(-1)
    a_right = (predicted == a["labels"][:, 0]).nonzero().flatten()
    a_wrong = (predicted != a["labels"][:, 0]).nonzero().flatten()
    spoil, mend = a_right[:3], a_wrong[:1]  # B wrong where A is right on 3 cases, right where A is wrong on 1
    for i in spoil.tolist():
        b["logits"]["fused"][i, diag] = 0
        b["logits"]["fused"][i, diag.start + (int(a["labels"][i, 0]) + 1) % (diag.stop - diag.start)] = 50
    for i in mend.tolist():
        b["logits"]["fused"][i, diag] = 0
        b["logits"]["fused"][i, diag.start + int(a["labels"][i, 0])] = 50
    torch.save(b, tmp_path / "b.pt")
    compare_oof = ROOT / "benchmarks" / "compare_oof.py"
    benchmark([compare_oof, out / "oof.pt", tmp_path / "b.pt", "--json", tmp_path / "cmp.json"])
    result = json.loads((tmp_path / "cmp.json").read_text())
    assert result["paired"]["DIAG"] == {"only_a": 3, "only_b": 1, "exact_mcnemar_p": binomtest(1, 4).pvalue}
    assert result["paired"]["PN"] == {"only_a": 0, "only_b": 0, "exact_mcnemar_p": 1.0}
    assert result["a"]["DIAG"] - result["b"]["DIAG"] == pytest.approx(2 / 30)
    assert exact_mcnemar(16, 9) == pytest.approx(binomtest(9, 25).pvalue)
    refused = benchmark([compare_oof, out / "oof.pt", _shuffled(a, tmp_path)], check=False)
    assert refused.returncode != 0 and "other cases" in refused.stderr


def _shuffled(oof, tmp_path):
    path = tmp_path / "shuffled.pt"
    torch.save({**oof, "case_ids": oof["case_ids"][::-1]}, path)
    return path


def test_the_packed_release_holds_train_and_valid_with_the_same_folds(tmp_path, monkeypatch):
    """training.pack (what training/device.sh carries to the accelerator): a release of its own
    with only the train + valid cases, the same case ids in the same pool order (so the same
    folds.json), no test split, and the float16 ImageNet copy the backbone then loads."""
    from training.pack import main as pack

    release = make_release(tmp_path / "full", n_cases=30, seed=5)
    monkeypatch.setenv("SKINNET_IMAGENET_DIR", str(tmp_path / "device" / "imagenet"))  # a former pack's copy
    pack(["--data-root", str(release), "--out", str(tmp_path / "device"), "--backbones", "tf_efficientnet_lite0"])
    full, packed = Derm7pt(release), Derm7pt(tmp_path / "device" / "derm7pt")
    assert [c.case_id for c in pool_cases(packed)] == [c.case_id for c in pool_cases(full)]
    assert [c.labels for c in pool_cases(packed)] == [c.labels for c in pool_cases(full)]
    assert packed.split("test") == [] and len(packed.cases()) == len(pool_cases(full)) < len(full.cases())
    assert assign_folds(pool_cases(packed), 3, 0) == assign_folds(pool_cases(full), 3, 0)
    for case in pool_cases(packed):
        assert case.dermoscopy_path.is_file() and str(case.dermoscopy_path).startswith(str(tmp_path / "device"))
    test_images = {c.dermoscopy_path.name for c in full.split("test")} - {c.dermoscopy_path.name for c in pool_cases(full)}
    assert test_images and not any(p.name in test_images for p in (tmp_path / "device" / "derm7pt").rglob("*.*"))
    weights = torch.load(tmp_path / "device" / "imagenet" / "tf_efficientnet_lite0.pth", weights_only=True)
    assert all(v.dtype == torch.float16 for v in weights.values() if v.is_floating_point())
    from training.ledger import case_rows  # the ledger names a case by its row in the full release
    rows = case_rows(full)
    assert case_rows(packed) == {c.case_id: rows[c.case_id] for c in pool_cases(full)}
    assert sorted(case_rows(packed).values()) != list(range(len(packed.cases())))  # not the packed file's own rows
