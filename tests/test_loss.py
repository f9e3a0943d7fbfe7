import pytest
import torch
import torch.nn.functional as F

from skinnet.labels import NUM_OUTPUTS, TASKS, split_logits
from skinnet.loss import EQUAL_WEIGHTS, MultiModalLoss, parse_task_weights, parse_weights, task_cross_entropy


def random_batch(b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    outputs = {h: torch.randn(b, NUM_OUTPUTS, generator=g) for h in EQUAL_WEIGHTS}
    labels = torch.stack([torch.randint(t.num_classes, (b,), generator=g) for t in TASKS], 1)
    return outputs, labels


def test_term_is_mean_cross_entropy_over_tasks():
    outputs, labels = random_batch()
    expected = sum(F.cross_entropy(l, labels[:, t]) for t, l in enumerate(split_logits(outputs["fused"]).values())) / 8
    torch.testing.assert_close(task_cross_entropy(outputs["fused"], labels), expected)


def test_equal_weights_are_the_unbiased_average_and_bias_shifts_weight():
    outputs, labels = random_batch()
    terms = {h: task_cross_entropy(o, labels) for h, o in outputs.items()}
    total, parts = MultiModalLoss()(outputs, labels)
    torch.testing.assert_close(total, sum(terms.values()) / 3)
    assert parts == pytest.approx({h: float(v) for h, v in terms.items()})
    biased, _ = MultiModalLoss(parse_weights("0.2,0.5,0.3"))(outputs, labels)
    torch.testing.assert_close(biased, 0.2 * terms["clinical"] + 0.5 * terms["dermoscopy"] + 0.3 * terms["fused"])


def test_cases_without_clinical_photo_leave_the_clinical_term():
    outputs, labels = random_batch()
    has = torch.tensor([True, True, False, False])
    _, parts = MultiModalLoss()(outputs, labels, has)
    kept = task_cross_entropy(outputs["clinical"][:2], labels[:2])
    assert parts["clinical"] == pytest.approx(float(kept), rel=1e-5)


def test_missing_heads_are_skipped_and_bad_weights_refused():
    outputs, labels = random_batch()
    total, parts = MultiModalLoss()({"dermoscopy": outputs["dermoscopy"]}, labels)
    assert set(parts) == {"dermoscopy"}
    with pytest.raises(ValueError, match="three numbers"):
        parse_weights("1,2")
    with pytest.raises(ValueError, match="unknown heads"):
        MultiModalLoss({"meta": 1.0})
    with pytest.raises(ValueError, match=">= 0"):
        MultiModalLoss({"clinical": -1.0})


def test_task_weights_weight_the_mean_over_tasks():
    torch.manual_seed(1)
    logits, labels = torch.randn(6, NUM_OUTPUTS), torch.randint(0, 2, (6, len(TASKS)))
    per_task = [F.cross_entropy(part, labels[:, t]) for t, part in enumerate(split_logits(logits).values())]
    weighted = task_cross_entropy(logits, labels, task_weights={"DIAG": 3.0})
    torch.testing.assert_close(weighted, (3 * per_task[0] + sum(per_task[1:])) / 10)
    assert parse_task_weights("DIAG=2, PN=0.5") == {"DIAG": 2.0, "PN": 0.5} and parse_task_weights("") == {}
    for bad in ("DIAG", "XX=1", "DIAG=a", "DIAG=-1"):
        with pytest.raises(ValueError, match="task weights"):
            parse_task_weights(bad)
    with pytest.raises(ValueError, match="unknown tasks"):
        MultiModalLoss(task_weights={"XX": 1.0})


def test_a_task_without_a_label_is_left_out_of_its_term():
    """A corrected upload's tasks no reviewer labelled carry NO_LABEL: the task's mean runs over
    the samples that have a label, as if the others were not in the batch."""
    import torch.nn.functional as F

    from skinnet.labels import NO_LABEL
    from skinnet.labels import TASKS, split_logits
    from skinnet.loss import task_cross_entropy

    torch.manual_seed(0)
    logits = torch.randn(3, sum(t.num_classes for t in TASKS))
    labels = torch.tensor([[t.num_classes - 1 for t in TASKS], [0] * 8, [1] * 8])
    labels[1, 2:] = NO_LABEL  # sample 1: only DIAG and PN reviewed
    by_hand = []
    for i, task_logits in enumerate(split_logits(logits).values()):
        rows = [b for b in range(3) if labels[b, i] >= 0]
        by_hand.append(F.cross_entropy(task_logits[rows], labels[rows, i]))
    assert task_cross_entropy(logits, labels) == pytest.approx(float(torch.stack(by_hand).mean()), abs=1e-6)
