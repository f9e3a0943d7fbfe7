"""Write a synthetic corrections log (three reviewers, 40 cases, made-up labels; no images) and
run the agreement CLI on it: the example in this folder.

    python docs/agreement/synthetic_log.py     # rewrites docs/agreement/example/
"""
import shutil
import tempfile
from pathlib import Path

import numpy as np

from skinnet import agreement
from skinnet.corrections import CorrectionsLog, Review, new_event_id
from skinnet.labels import TASKS


def main() -> None:
    rng = np.random.default_rng(7)
    folder = Path(tempfile.mkdtemp())
    log = CorrectionsLog(folder)
    # each reviewer keeps the model's class with a reviewer-specific probability, else picks another
    keep = {"dr_a": 0.8, "dr_b": 0.7, "dr_c": 0.55}
    for case in range(1, 41):
        predicted = {t.name: t.classes[int(rng.integers(t.num_classes))] for t in TASKS}
        for reviewer, p in keep.items():
            labels = {t.name: predicted[t.name] if rng.random() < p else t.classes[int(rng.integers(t.num_classes))]
                      for t in TASKS}
            changed = any(v != predicted[k] for k, v in labels.items())
            # a reviewer who changes something states every task (so each is confirmed or changed)
            log.append(Review(event_id=new_event_id(), reviewer=reviewer, case_id=f"case{case:03d}",
                              source="manifest", verdict="correct" if changed else "agree",
                              predicted=predicted, corrected=labels if changed else {}))
    out = Path(__file__).parent / "example"
    shutil.rmtree(out, ignore_errors=True)
    agreement.main([str(log.path), "--out", str(out)])
    shutil.rmtree(folder)


if __name__ == "__main__":
    main()
