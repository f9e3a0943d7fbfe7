"""What the accelerator machine needs for a cross-fit, in one folder small enough to carry.

    python -m training.pack --data-root /path/to/release_v0 --out .device

The device tool carries at most 64 MiB with the working tree, and the machine can neither
download nor install the ImageNet weight packages. So: the train + valid cases only (a
cross-fit never reads test), as a release_v0 folder of their own (``meta.csv`` of those rows in
their order, with split files renumbered to match and an empty test split, so that their case
ids, pool order and ``folds.json`` are the same as on the full release), and a float16 copy of
the ImageNet weights for ``$SKINNET_IMAGENET_DIR``. ``training/device.sh pack`` runs this.
"""
from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

import pandas as pd
import torch

from skinnet.backbones import OFFLINE_WEIGHTS_DIR, offline_weights_path
from skinnet.data import IMAGE_DIR, META_FILE, Derm7pt, read_split_indexes

SPLIT_FILE = "{}_indexes.csv"
RELEASE_ROW = "release_row"


def pack_cross_fit_data(source: Path, target: Path) -> int:
    """Copy the train + valid cases of the release at ``source`` into a release at ``target``;
    returns the number of images copied."""
    data = Derm7pt(source)
    source = data.root
    train, valid = (read_split_indexes(source / "meta", split) for split in ("train", "valid"))
    rows = list(train) + list(valid)
    (target / "meta").mkdir(parents=True)
    packed = data.meta.iloc[rows].copy()
    packed[RELEASE_ROW] = rows  # the ledger names cases by their row in the full release's meta.csv
    packed.to_csv(target / META_FILE, index=False)
    for split, numbers in (("train", range(len(train))), ("valid", range(len(train), len(rows))), ("test", [])):
        pd.DataFrame({"indexes": list(numbers)}).to_csv(target / "meta" / SPLIT_FILE.format(split), index=False)
    copied = 0
    for case in data.split("train") + data.split("valid"):
        for image in {case.clinical_path, case.dermoscopy_path}:
            copy = target / IMAGE_DIR / image.relative_to(source / IMAGE_DIR)
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(image, copy)
            copied += 1
    return copied


def pack_imagenet_weights(name: str, folder: Path) -> Path:
    """A float16 copy of a backbone's offline ImageNet weights, named as ``$SKINNET_IMAGENET_DIR`` wants."""
    carried = os.environ.pop(OFFLINE_WEIGHTS_DIR, None)  # always from the package, never a former copy
    try:
        weights = torch.load(offline_weights_path(name), map_location="cpu", weights_only=True)
    finally:
        if carried is not None:
            os.environ[OFFLINE_WEIGHTS_DIR] = carried
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.pth"
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in weights.items()}, path)
    return path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m training.pack", description=__doc__.split("\n")[0])
    p.add_argument("--data-root", required=True, help="Derm7pt release_v0 folder")
    p.add_argument("--out", default=".device", help="folder to write (replaced): derm7pt/ and imagenet/")
    p.add_argument("--backbones", nargs="+", default=["tf_efficientnet_lite1", "tf_efficientnet_lite2"])
    args = p.parse_args(argv)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    n = pack_cross_fit_data(Path(args.data_root), out / "derm7pt")
    weights = [pack_imagenet_weights(name, out / "imagenet").name for name in args.backbones]
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"{out}: {n} train + valid images, {', '.join(weights)} (float16; set {OFFLINE_WEIGHTS_DIR}="
          f"{out / 'imagenet'}), {size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
