import shutil

import pytest
import torch

from conftest import REAL_DERM7PT, needs_real_derm7pt
from skinnet.data import Derm7pt, DatasetError
from skinnet.imaging import load_rgb
from skinnet.transforms import BatchAugment, ImageCache, eval_transform


def test_reads_synthetic_release_with_quirks(release):
    data = Derm7pt(release)
    cases = data.cases()
    assert len(cases) == 24
    # meta.csv says FCl/..., the folder on disk is FCL/: resolved regardless of case.
    assert cases[1].dermoscopy_path.parent.name == "FCL"
    assert cases[1].dermoscopy_path.is_file()
    # upper-case .JPG clinical files resolve.
    assert cases[0].clinical_path.suffix == ".JPG"
    # clinic == derm is flagged.
    assert cases[2].clinic_is_derm and not cases[0].clinic_is_derm
    sizes = {s: len(data.split(s)) for s in ("train", "valid", "test")}
    assert sizes == {"train": 12, "valid": 6, "test": 6}
    ids = [c.case_id for s in ("train", "valid", "test") for c in data.split(s)]
    assert len(set(ids)) == 24
    assert data.split_of()[data.split("test")[0].case_id] == "test"


def copy_release(release, tmp_path):
    target = tmp_path / "release"
    shutil.copytree(release, target)
    return target


def test_missing_folder_and_meta(tmp_path, release):
    with pytest.raises(DatasetError, match="not found"):
        Derm7pt(tmp_path / "nowhere")
    broken = copy_release(release, tmp_path)
    (broken / "meta" / "meta.csv").unlink()
    with pytest.raises(DatasetError, match="meta.csv is missing"):
        Derm7pt(broken)


def test_missing_image_names_row_and_file(tmp_path, release):
    broken = copy_release(release, tmp_path)
    victim = next((broken / "images" / "NEL").glob("Nel005d.jpg"))
    victim.unlink()
    with pytest.raises(DatasetError, match=r"row 7 \(case 6\).*Nel005d.jpg.*not found"):
        Derm7pt(broken).cases()


def test_missing_column_split_and_bad_label(tmp_path, release):
    broken = copy_release(release, tmp_path)
    meta = broken / "meta" / "meta.csv"
    text = meta.read_text()
    meta.write_text(text.replace("pigment_network", "pigment_net", 1))
    with pytest.raises(DatasetError, match="lacks the columns.*pigment_network"):
        Derm7pt(broken)
    meta.write_text(text.replace("clark nevus", "purple nevus", 1))
    with pytest.raises(DatasetError, match="unknown value 'purple nevus'"):
        Derm7pt(broken).cases()
    meta.write_text(text)
    (broken / "meta" / "valid_indexes.csv").unlink()
    with pytest.raises(DatasetError, match="valid_indexes.csv"):
        Derm7pt(broken).split("valid")
    with pytest.raises(DatasetError, match="unknown split"):
        Derm7pt(broken).split("holdout")


def test_eval_transform_is_the_cache_path_for_one_image(release):
    """The app's PIL transform and the training cache + BatchAugment(train=False) give one tensor."""
    case = Derm7pt(release).cases()[0]
    norm = ((0.5,) * 3, (0.5,) * 3)
    single = eval_transform(32, *norm)(load_rgb(case.dermoscopy_path))
    cache = ImageCache([case], size=32)
    batched = BatchAugment(32, *norm)(cache.dermoscopy, train=False)[0]
    assert single.shape == (3, 32, 32) and -1.0 <= single.min() and single.max() <= 1.0
    torch.testing.assert_close(single, batched, atol=1 / 127.5 + 1e-6, rtol=0)


def test_image_cache_and_batch_augment(release):
    cases = Derm7pt(release).cases()[:6]
    cache = ImageCache(cases, size=40)
    assert cache.clinical.shape == (6, 3, 40, 40) and cache.clinical.dtype == torch.uint8
    assert cache.has_clinical.tolist() == [True, True, False, True, True, True]
    augment = BatchAugment(32, (0.5,) * 3, (0.5,) * 3)
    torch.manual_seed(0)
    a, b = augment(cache.dermoscopy), augment(cache.dermoscopy)
    assert a.shape == (6, 3, 32, 32) and not torch.allclose(a, b)
    assert a.min() >= -1.0 and a.max() <= 1.0
    plain = augment(cache.dermoscopy, train=False)
    assert torch.equal(plain, augment(cache.dermoscopy, train=False))


@needs_real_derm7pt
def test_real_release_official_split():
    data = Derm7pt(REAL_DERM7PT)
    assert [len(data.split(s)) for s in ("train", "valid", "test")] == [413, 203, 395]
    flagged = [c.case_id for c in data.cases() if c.clinic_is_derm]
    assert flagged == ["565", "800", "824", "827", "833", "834", "839", "844", "851"]
    assert data.cases()[815].dermoscopy_path.parent.name == "FCL" or \
        data.cases()[815].clinical_path.parent.name == "FCL"
