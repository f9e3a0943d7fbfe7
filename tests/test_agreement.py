"""Agreement statistics, checked against scikit-learn and a published example, and the CLI on a
synthetic two- and three-reviewer log."""
import json

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

from skinnet import agreement
from skinnet.corrections import CorrectionsLog, Review, new_event_id
from skinnet.labels import TASK_BY_NAME, TASKS


@pytest.mark.parametrize("seed", range(5))
def test_cohen_kappa_equals_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 4, 60)
    b = np.where(rng.random(60) < 0.6, a, rng.integers(0, 4, 60))
    assert agreement.cohen_kappa(a, b, 4) == pytest.approx(cohen_kappa_score(a, b), abs=1e-12)


def test_fleiss_kappa_of_the_published_example():
    """Fleiss (1971) as worked on Wikipedia: 10 items, 14 raters, 5 classes, kappa 0.210."""
    counts = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
              [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    assert agreement.fleiss_kappa(np.array(counts)) == pytest.approx(0.210, abs=5e-4)
    with pytest.raises(ValueError):
        agreement.fleiss_kappa(np.array([[1, 1], [2, 1]]))


def _save(log, reviewer, case_id, predicted, labels, verdict="correct"):
    """A review that picked ``labels`` task by task (tasks missing from it: not reviewed)."""
    log.append(Review(event_id=new_event_id(), reviewer=reviewer, case_id=case_id, source="derm7pt",
                      verdict=verdict, predicted=predicted, corrected=dict(labels)))


def test_cli_on_a_synthetic_log_matches_scikit_learn(tmp_path, release):
    rng = np.random.default_rng(0)
    log = CorrectionsLog(tmp_path / "log")
    diag = TASK_BY_NAME["DIAG"].classes
    truth = {}
    cases = [str(i + 1) for i in range(20)]  # the synthetic release's case_num values
    for n, case in enumerate(cases):
        shown_a = {t.name: t.classes[int(rng.integers(t.num_classes))] for t in TASKS}
        shown_b = {**shown_a, "DIAG": diag[int(rng.integers(5))]}  # dr_b reviewed after a checkpoint change
        a = {**shown_a, "DIAG": diag[int(rng.integers(5))]}
        b = {**shown_a, "DIAG": a["DIAG"] if rng.random() < 0.7 else diag[int(rng.integers(5))]}
        if n % 2:
            del b["PN"]  # dr_b left PN at "no change" here: not reviewed, so not compared
        c = {**shown_a, "DIAG": b["DIAG"] if rng.random() < 0.5 else diag[int(rng.integers(5))]}
        _save(log, "dr_a", case, shown_a, {**a, "DIAG": diag[(diag.index(a["DIAG"]) + 1) % 5]})  # superseded
        _save(log, "dr_a", case, shown_a, a)
        _save(log, "dr_b", case, shown_b, b)
        _save(log, "dr_c", case, shown_a, {}, verdict="unsure")  # carries no label; superseded
        _save(log, "dr_c", case, shown_a, c)
        truth[case] = (shown_a, a, b, c, shown_b)
    out = tmp_path / "agreement"
    report = agreement.main([str(log.path), "--reference", str(release / "meta" / "meta.csv"), "--out", str(out)])

    def find(task, first, second):
        return next(c for c in report["comparisons"] if (c["task"], c["first"], c["second"]) == (task, first, second))

    index = {name: i for i, name in enumerate(diag)}
    a_diag = [index[truth[c][1]["DIAG"]] for c in cases]
    b_diag = [index[truth[c][2]["DIAG"]] for c in cases]
    shown_a_diag = [index[truth[c][0]["DIAG"]] for c in cases]
    shown_b_diag = [index[truth[c][4]["DIAG"]] for c in cases]
    assert find("DIAG", "dr_a", "dr_b")["kappa"] == pytest.approx(cohen_kappa_score(a_diag, b_diag))
    # each reviewer against the prediction the model showed that reviewer
    assert find("DIAG", "dr_a", "(model)")["kappa"] == pytest.approx(cohen_kappa_score(a_diag, shown_a_diag))
    assert find("DIAG", "dr_b", "(model)")["kappa"] == pytest.approx(cohen_kappa_score(b_diag, shown_b_diag))
    assert find("DIAG", "dr_a", "dr_b")["agreement"] == pytest.approx(np.mean(np.array(a_diag) == b_diag))
    low, high = find("DIAG", "dr_a", "dr_b")["kappa_interval"]
    assert low <= find("DIAG", "dr_a", "dr_b")["kappa"] <= high
    assert find("PN", "dr_a", "dr_b")["kappa"] == 1.0 and find("PN", "dr_a", "dr_b")["n_cases"] == 10
    reference = agreement.read_reference(release / "meta" / "meta.csv")
    ref_diag = [reference[c][0] for c in cases]
    assert find("DIAG", "dr_a", "(reference)")["kappa"] == pytest.approx(cohen_kappa_score(a_diag, ref_diag))
    assert report["fleiss"]["DIAG"]["n_reviewers"] == 3 and report["fleiss"]["DIAG"]["n_cases"] == 20
    assert json.loads((out / "agreement.json").read_text())["reviewers"] == ["dr_a", "dr_b", "dr_c"]
    assert "dr_a vs dr_b" in (out / "agreement.md").read_text()
    assert (out / "confusion_dr_a_vs_dr_b.png").stat().st_size > 10_000
