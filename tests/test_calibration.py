"""Per-task temperature and class-bias calibration, fitted on validation-like data."""
import json

import pytest
import torch

from skinnet.calibration import calibrate, cross_fit, fit_head, fit_task, from_temperature
from skinnet.checkpoint import read_card
from skinnet.labels import NUM_OUTPUTS, TASK_NAMES, split_logits


def test_bias_restores_a_class_the_model_calls_too_rarely():
    """Scores rank class 2 well but sit 2 logits too low: the fitted bias lifts it back."""
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (3000,), generator=g)
    true_logits = 2.0 * torch.nn.functional.one_hot(labels, 3).float() + torch.randn(3000, 3, generator=g)
    shifted = true_logits - torch.tensor([0.0, 0.0, 2.0])
    fit = fit_task(shifted, labels)
    # the bias lives on the temperature-scaled logits: it undoes the shift of 2 as 2 / T
    lift = (fit["bias"][2] - fit["bias"][0]) * fit["temperature"]
    assert lift == pytest.approx(2.0, abs=0.3)
    corrected = shifted / fit["temperature"] + torch.tensor(fit["bias"])
    before = (shifted.argmax(1) == labels).float().mean()
    after = (corrected.argmax(1) == labels).float().mean()
    assert after > before + 0.1


def test_temperature_alone_undoes_overconfidence_and_leaves_biases_at_zero():
    """Labels drawn from softmax(z), logits given as 3z: the temperature alone comes out near 3,
    every bias exactly 0."""
    g = torch.Generator().manual_seed(1)
    z = torch.randn(4000, 4, generator=g)
    labels = torch.multinomial(z.softmax(-1), 1, generator=g).squeeze(1)
    fit = fit_task(3 * z, labels, biases=False)
    assert fit["temperature"] == pytest.approx(3.0, rel=0.1)
    assert fit["bias"] == [0.0] * 4


def test_cross_fit_calibrates_each_fold_from_the_other_folds_only():
    """Logits that say nothing; DIAG is class 1 in fold 0 (250 cases) and class 0 in folds 1-3
    (50 each). A fit that saw fold 0 calls its cases class 1 (its own labels, and the pooled
    majority); fitted on the other folds only, they come out class 0. Each fold's result is
    exactly the fit on the others applied to it."""
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(400, NUM_OUTPUTS, generator=g) * 0.01
    folds = torch.cat([torch.zeros(250, dtype=torch.long), torch.arange(150) % 3 + 1])
    labels = torch.zeros(400, len(TASK_NAMES), dtype=torch.long)
    labels[folds == 0, 0] = 1
    diag = split_logits(cross_fit(logits, labels, folds))["DIAG"]
    in_sample = split_logits(calibrate(logits, fit_head(logits, labels)))["DIAG"]
    assert (in_sample[folds == 0].argmax(-1) == 1).all()
    assert (diag[folds == 0].argmax(-1) == 0).all()  # from folds 1-3 alone
    assert (diag[folds != 0].argmax(-1) == 1).all()  # their fits include fold 0's 250 cases
    out = cross_fit(logits, labels, folds)
    for k in range(4):
        others = folds != k
        torch.testing.assert_close(out[folds == k], calibrate(logits[folds == k], fit_head(logits[others], labels[others])))


def test_class_absent_from_labels_keeps_a_finite_bias():
    logits = torch.randn(50, 4)
    labels = torch.randint(0, 3, (50,))  # class 3 never occurs
    fit = fit_task(logits, labels)
    assert all(abs(b) < 50 for b in fit["bias"]) and sum(fit["bias"]) == pytest.approx(0, abs=1e-3)


def test_head_fit_covers_every_task_and_round_trips_through_json():
    logits, labels = torch.randn(40, NUM_OUTPUTS), torch.zeros(40, len(TASK_NAMES), dtype=torch.long)
    head = json.loads(json.dumps(fit_head(logits, labels)))
    assert set(head) == set(TASK_NAMES)
    calibrated = calibrate(logits, head)
    assert calibrated.shape == logits.shape
    for task, part in split_logits(calibrated).items():
        entry = head[task]
        expected = split_logits(logits)[task] / entry["temperature"] + torch.tensor(entry["bias"])
        torch.testing.assert_close(part, expected)


def test_uncalibrated_card_is_the_identity():
    logits = torch.randn(3, NUM_OUTPUTS)
    assert calibrate(logits, None) is logits and calibrate(logits, {}) is logits


def test_format_1_card_temperatures_become_calibration(tmp_path):
    """Cards written before per-task calibration (one temperature per head) still load."""
    card = {"name": "old", "model": {}, "image_size": 64, "mean": [0.5] * 3, "std": [0.5] * 3,
            "temperatures": {"fused": 2.0}, "card_format": 1}
    (tmp_path / "old.json").write_text(json.dumps(card))
    loaded = read_card(tmp_path / "old.safetensors")
    assert loaded.calibration == {"fused": from_temperature(2.0)}
    logits = torch.randn(2, NUM_OUTPUTS)
    torch.testing.assert_close(calibrate(logits, loaded.calibration["fused"]), logits / 2.0)
