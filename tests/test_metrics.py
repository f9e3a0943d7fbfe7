"""training.metrics against scikit-learn and a hand computation, and the test log."""
import csv
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn import metrics as sk

from skinnet.labels import TASK_BY_NAME, TASK_NAMES, TASKS
from training.metrics import (confusion_matrix, diagnosis_report, expected_calibration_error, paired_bootstrap,
                              paired_comparison, right_per_task, task_accuracies)

SIZES = [t.num_classes for t in TASKS]


@pytest.fixture(scope="module")
def predictions():
    """300 cases of random logits, labels correlated with them so the scores are not trivial."""
    gen = torch.Generator().manual_seed(7)
    logits = torch.randn(300, sum(SIZES), generator=gen) * 2
    labels = torch.stack([
        torch.where(torch.rand(300, generator=gen) < 0.6, part.argmax(-1),
                    torch.randint(0, part.shape[1], (300,), generator=gen))
        for part in torch.split(logits, SIZES, -1)], 1)
    return logits, labels


def test_task_accuracies_equal_scikit_learn(predictions):
    logits, labels = predictions
    acc = task_accuracies(logits, labels)
    expected = {}
    for t, (name, part) in enumerate(zip(TASK_NAMES, torch.split(logits, SIZES, -1))):
        expected[name] = sk.accuracy_score(labels[:, t].numpy(), part.argmax(-1).numpy())
        assert acc[name] == pytest.approx(expected[name], abs=1e-7), name
    assert acc["avg"] == pytest.approx(np.mean(list(expected.values())), abs=1e-7)
    assert 0.4 < acc["avg"] < 0.9  # not a degenerate case


def test_confusion_matrix_equals_scikit_learn(predictions):
    logits, labels = predictions
    for t, (name, part) in enumerate(zip(TASK_NAMES, torch.split(logits, SIZES, -1))):
        ours = confusion_matrix(logits, labels, name)
        theirs = sk.confusion_matrix(labels[:, t].numpy(), part.argmax(-1).numpy(), labels=range(SIZES[t]))
        assert np.array_equal(ours, theirs), name


def test_diagnosis_sensitivity_specificity_and_auc_equal_scikit_learn(predictions):
    logits, labels = predictions
    report = diagnosis_report(logits, labels)
    probs = torch.softmax(logits[:, :SIZES[0]], -1).numpy()
    truth, predicted = labels[:, 0].numpy(), probs.argmax(1)
    matrix = sk.confusion_matrix(truth, predicted, labels=range(SIZES[0]))
    for k, name in enumerate(TASK_BY_NAME["DIAG"].classes):
        tp = matrix[k, k]
        fn, fp = matrix[k].sum() - tp, matrix[:, k].sum() - tp
        tn = matrix.sum() - tp - fn - fp
        assert report[name]["sensitivity"] == pytest.approx(
            sk.recall_score(truth == k, predicted == k), abs=1e-9) == pytest.approx(tp / (tp + fn))
        assert report[name]["specificity"] == pytest.approx(tn / (tn + fp), abs=1e-9)
        assert report[name]["auc"] == pytest.approx(sk.roc_auc_score(truth == k, probs[:, k]), abs=1e-9)
        assert report[name]["support"] == int((truth == k).sum())


def test_expected_calibration_error_equals_a_hand_computation():
    """Two tasks' worth of hand-made cases: ECE = sum over bins of (share of cases) x |confidence -
    accuracy|, 15 equal-width bins of the top-class probability, averaged over the 8 tasks."""
    # DIAG: four cases with top probability 0.9 (3 right), two with 0.5 (1 right); other tasks: certain and right
    diag = torch.tensor([[0.9, 0.025, 0.025, 0.025, 0.025]] * 4 + [[0.5, 0.5 - 4e-6, 1e-6, 1e-6, 2e-6]] * 2)
    labels = torch.zeros(6, len(TASKS), dtype=torch.long)
    labels[3, 0] = 1  # one of the 0.9 cases is wrong
    labels[5, 0] = 1  # one of the 0.5 cases is wrong
    parts = [diag.log()]
    for task in TASKS[1:]:
        certain = torch.full((6, task.num_classes), 1e-9)
        certain[:, 0] = 1.0
        parts.append(certain.log())
    logits = torch.cat(parts, 1)
    by_hand_diag = 4 / 6 * abs(0.9 - 3 / 4) + 2 / 6 * abs(0.5 - 1 / 2)
    certain_tasks = 0.0  # confidence ~1, all right
    expected = (by_hand_diag + 7 * certain_tasks) / 8
    assert expected_calibration_error(logits, labels) == pytest.approx(expected, abs=1e-5)
    assert expected_calibration_error(logits, labels, task="DIAG") == pytest.approx(by_hand_diag, abs=1e-5)


def test_paired_bootstrap_interval_brackets_the_paired_difference():
    """A right on 60 of 200 cases where B is wrong, B right on 20 where A is wrong, one task:
    the difference is +0.2; its interval (cases resampled) brackets it, excludes 0, and
    is about the normal approximation's width; identical runs give [0, 0]."""
    a = torch.zeros(200, 1, dtype=torch.bool)
    b = torch.zeros(200, 1, dtype=torch.bool)
    a[:60], b[60:80], a[80:150], b[80:150] = True, True, True, True
    low, high = paired_bootstrap(a, b)
    diff = (a.float() - b.float()).squeeze(1).numpy()
    half_width = 1.96 * diff.std() / np.sqrt(len(diff))
    assert low < 0.2 < high and low > 0
    assert (high - low) / 2 == pytest.approx(half_width, rel=0.15)
    assert paired_bootstrap(a, a) == (0.0, 0.0)


def test_paired_bootstrap_interval_does_not_depend_on_the_seed_at_a_hundredth_of_a_point():
    """The ablation's verdicts compare the low end with a margin to the hundredth of a point
    (0.0001 as a fraction). With 2,000 draws the low end of this difference (sd of its bootstrap
    mean 0.04) spreads over about 0.006 across five seeds; the default draws keep it within 0.002."""
    a = torch.zeros(200, 1, dtype=torch.bool)
    b = torch.zeros(200, 1, dtype=torch.bool)
    a[:60], b[60:80], a[80:150], b[80:150] = True, True, True, True
    lows = [paired_bootstrap(a, b, seed=seed)[0] for seed in range(5)]
    assert max(lows) - min(lows) < 0.002
    few = [paired_bootstrap(a, b, draws=2000, seed=seed)[0] for seed in range(5)]
    assert max(few) - min(few) > max(lows) - min(lows)


def test_paired_comparison_counts_discordant_diag_cases_and_averages_all_tasks(predictions):
    """Two predictions of the same cases: B is A with DIAG spoiled on 5 cases A gets right and
    mended on 2 it gets wrong; the counts, the averages and McNemar's p come out as built."""
    from scipy.stats import binomtest

    logits, labels = predictions
    a = right_per_task(logits, labels)
    assert a.shape == (300, len(TASKS))
    assert a.float().mean(0).tolist() == pytest.approx([task_accuracies(logits, labels)[t] for t in TASK_NAMES])
    b = a.clone()
    right, wrong = a[:, 0].nonzero().flatten(), (~a[:, 0]).nonzero().flatten()
    b[right[:5], 0], b[wrong[:2], 0] = False, True
    result = paired_comparison(a, b)
    assert (result["diag_only_a"], result["diag_only_b"], result["n_cases"]) == (5, 2, 300)
    assert result["diag_exact_mcnemar_p"] == pytest.approx(binomtest(2, 7).pvalue)
    assert result["avg_difference"] == pytest.approx(3 / 300 / len(TASKS), abs=1e-6)  # float32 means
    assert result["diag_a"] - result["diag_b"] == pytest.approx(3 / 300, abs=1e-6)


def test_every_test_scoring_leaves_one_line_in_the_test_log(release, tmp_path):
    """training.train --score-test and training.evaluate --split test each append a line with the
    checkpoint's hash; a run without --score-test leaves none."""
    from skinnet.checkpoint import file_sha256
    from training import evaluate, train

    log = Path(os.environ["SKINNET_TEST_LOG"])
    before = log.read_text().splitlines() if log.is_file() else []
    fast = ["--image-size", "48", "--batch-size", "4", "--no-progress", "--threads", "1", "--cross-attention",
            "none", "--epochs", "1", "--name", "logged"]
    quiet = train.main(["--data-root", str(release), "--out", str(tmp_path / "quiet"), *fast])
    after_quiet = log.read_text().splitlines() if log.is_file() else []
    assert after_quiet == before
    path = train.main(["--data-root", str(release), "--out", str(tmp_path / "scored"), "--score-test", *fast])
    evaluate.main(["--checkpoint", str(quiet), "--data-root", str(release), "--split", "test"])
    evaluate.main(["--checkpoint", str(quiet), "--data-root", str(release), "--split", "valid"])
    rows = list(csv.DictReader(log.open()))[-2:]
    assert len(log.read_text().splitlines()) == max(len(before), 1) + 2
    assert rows[0]["checkpoint"] == "logged.safetensors" and rows[0]["checkpoint_sha256"] == file_sha256(path)
    assert rows[1]["checkpoint_sha256"] == file_sha256(quiet) and "--split test" in rows[1]["command"]
    assert float(rows[1]["avg"]) >= 0 and rows[1]["n_cases"] == "6"
