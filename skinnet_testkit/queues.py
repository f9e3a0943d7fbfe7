"""Review queues of synthetic cases: a manifest CSV (``case_id,clinical,dermoscopy``) and its images."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from skinnet_testkit.synthetic import lesion_image


def write_manifest(folder: Path) -> Path:
    rng = np.random.default_rng(4)
    (folder / "img").mkdir(parents=True)
    rows = []
    for i in range(3):
        lesion_image(rng, (80, 64), tint=i).save(folder / "img" / f"c{i}_clin.png")
        lesion_image(rng, (72, 72), tint=i + 2).save(folder / "img" / f"c{i}_derm.png")
        rows.append({"case_id": f"c{i}", "clinical": f"img/c{i}_clin.png", "dermoscopy": f"img/c{i}_derm.png"})
    pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)
    return folder / "manifest.csv"


def write_queue(folder, n=3, seed=11, prefix="c"):
    rng = np.random.default_rng(seed)
    (folder / "img").mkdir(parents=True)
    rows = []
    for i in range(n):
        lesion_image(rng, (80, 64), tint=i).save(folder / "img" / f"c{i}_clin.jpg")
        lesion_image(rng, (72, 72), tint=i + 1).save(folder / "img" / f"c{i}_derm.png")
        rows.append({"case_id": f"{prefix}{i}", "clinical": f"img/c{i}_clin.jpg", "dermoscopy": f"img/c{i}_derm.png"})
    pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)
    return folder / "manifest.csv"
