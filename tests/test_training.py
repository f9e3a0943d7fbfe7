"""The real training and evaluation commands, end to end on a synthetic release, on CPU."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import REAL_DERM7PT, needs_real_derm7pt
from skinnet.checkpoint import DEFAULT_CHECKPOINT as SHIPPED
from skinnet.checkpoint import load_checkpoint, save_checkpoint
from skinnet.labels import TASK_NAMES
from training import evaluate, train
from training.distributed import DistInfo
from training.loop import epoch_batches, mix_pairs, recompute_batchnorm
from training.params import parse_args

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--image-size", "48", "--batch-size", "4", "--no-progress", "--threads", "1",
        "--cross-attention", "-1", "--attention-dim", "32"]


def test_parse_args_defaults_and_errors(tmp_path):
    args = parse_args(["--data-root", "d", "--out", "o"])
    assert args.loss_weights == {"clinical": 0.2, "dermoscopy": 0.5, "fused": 0.3}
    assert args.cross_attention == (-2, -1) and args.cache_size == 256
    assert parse_args(["--data-root", "d", "--out", "o", "--cross-attention", "none"]).cross_attention == ()
    for bad in (["--loss-weights", "1,2"], ["--cross-attention", "x"], ["--image-size", "8"]):
        with pytest.raises(SystemExit):
            parse_args(["--data-root", "d", "--out", "o", *bad])


def test_epoch_batches_are_disjoint_shares():
    shares = [epoch_batches(10, 4, epoch=3, seed=1, info=DistInfo(rank, 2)) for rank in (0, 1)]
    assert len(shares[0]) == 2  # 10 // 4 full batches
    for a, b in zip(*shares):
        assert len(a) == len(b) == 2 and not set(a.tolist()) & set(b.tolist())
    assert [t.tolist() for t in epoch_batches(10, 4, 3, 1, DistInfo())] != \
           [t.tolist() for t in epoch_batches(10, 4, 4, 1, DistInfo())]


def test_mixup_blends_both_images_of_a_case_with_the_same_partner():
    import numpy as np
    clinical = torch.arange(8.0).view(8, 1, 1, 1).expand(8, 3, 4, 4)
    derm = 10 * clinical
    mixed_c, mixed_d, partner, lam = mix_pairs(clinical, derm, 0.4, np.random.default_rng(0))
    assert 0 < lam < 1 and sorted(partner.tolist()) == list(range(8)) and partner.tolist() != list(range(8))
    torch.testing.assert_close(mixed_c, lam * clinical + (1 - lam) * clinical[partner])
    torch.testing.assert_close(mixed_d, 10 * mixed_c)  # the dermoscopy image has the same partner and weight
    same = mix_pairs(clinical, derm, 0.0, np.random.default_rng(0))
    assert same[3] == 1.0 and torch.equal(same[0], clinical)


@pytest.fixture(scope="module")
def trained(release, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    path = train.main(["--data-root", str(release), "--out", str(out), "--epochs", "2", "--score-test",
                       "--name", "tiny", "--mixup", "0.2", "--drop-path", "0.1", *FAST])
    return path, out


def test_train_writes_checkpoint_card_metrics_and_curves(trained):
    path, out = trained
    assert path == out / "tiny.safetensors" and path.is_file()
    for name in ("tiny.json", "metrics.csv", "curves.png", "eval.json", "last_state.pt", "confusion_test.png"):
        assert (out / name).is_file(), name
    _, card = load_checkpoint(path)
    assert card.training["epochs"] == 2 and card.training["data"]["n_corrections"] == 0
    assert card.training["mixup"] == 0.2
    assert card.model["backbone_kwargs"] == {"drop_path_rate": 0.1}  # rebuilt as trained; inert in eval
    assert set(card.calibration) == {"clinical", "dermoscopy", "fused"}
    assert all(set(head) == set(TASK_NAMES) for head in card.calibration.values())
    assert set(card.metrics) == {"valid", "test"} and set(card.metrics["test"]["tasks"]) == set(TASK_NAMES)
    assert card.image_size == 48 and card.loss_weights["dermoscopy"] == 0.5


def test_evaluate_reproduces_the_card(trained, release, tmp_path):
    path, _ = trained
    record = evaluate.main(["--checkpoint", str(path), "--data-root", str(release), "--split", "test",
                            "--json", str(tmp_path / "test.json"), "--figures", str(tmp_path)])
    _, card = load_checkpoint(path)
    assert record["tasks"] == card.metrics["test"]["tasks"] and record["avg"] == card.metrics["test"]["avg"]
    saved = json.loads((tmp_path / "test.json").read_text())
    assert saved["split"] == "test" and saved["n_cases"] == 6 and saved["params"] > 0
    assert set(saved["heads"]) == {"clinical", "dermoscopy", "fused"}
    assert saved["heads"]["clinical"]["n_cases"] <= 6
    assert set(saved["heads"]["fused"]["diagnosis"]) == {"BCC", "NEV", "MEL", "MISC", "SK"}
    assert (tmp_path / "confusion_test.png").stat().st_size > 1000
    fused = saved["heads"]["fused"]
    assert set(fused["uncalibrated"]["tasks"]) == set(TASK_NAMES) and 0 <= fused["ece_calibrated"] <= 1


def test_recalibrating_a_checkpoint_refreshes_its_card(trained, release, tmp_path):
    """--calibrate re-fits on valid and stores the new valid and test scores, not stale ones."""
    path, _ = trained
    for suffix in (".safetensors", ".json"):
        shutil.copy(path.with_suffix(suffix), tmp_path / f"copy{suffix}")
    copy = tmp_path / "copy.safetensors"
    model, card = load_checkpoint(copy)
    card.calibration = {}
    card.metrics["test"]["avg"] = -1.0  # stale numbers must not survive
    save_checkpoint(model, card, copy)  # (a card edited by hand would be refused: it disagrees with its weights)
    record = evaluate.main(["--checkpoint", str(copy), "--data-root", str(release), "--split", "test",
                            "--calibrate"])
    _, card = load_checkpoint(copy)
    assert set(card.calibration) == {"clinical", "dermoscopy", "fused"}
    assert set(card.metrics) == {"valid", "test"} and card.metrics["test"]["avg"] == record["avg"]
    again = evaluate.main(["--checkpoint", str(copy), "--data-root", str(release), "--split", "test"])
    assert again["tasks"] == record["tasks"]


def test_resume_continues_after_interruption(release, tmp_path):
    common = ["--data-root", str(release), "--out", str(tmp_path), "--name", "r", *FAST]
    train.main([*common, "--epochs", "1"])
    history = (tmp_path / "metrics.csv").read_text().splitlines()
    assert len(history) == 2
    train.main([*common, "--epochs", "2", "--resume"])
    history = (tmp_path / "metrics.csv").read_text().splitlines()
    assert len(history) == 3 and history[2].startswith("2,")


def test_recompute_batchnorm_measures_the_training_images(release):
    """After SWA the BatchNorm statistics are those of the (augmented) training images."""
    from skinnet.data import Derm7pt
    from skinnet.transforms import BatchAugment, ImageCache

    class PairNorm(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = torch.nn.BatchNorm2d(3, momentum=0.1)
            self.drop = torch.nn.Dropout(0.5)

        def forward(self, clinical, derm):
            assert not self.drop.training  # only BatchNorm layers train during the pass
            return self.norm(torch.cat([clinical, derm]))

    cache = ImageCache(Derm7pt(release).split("train"), 32)
    # flips only: the per-channel mean and variance do not depend on the random draws
    augment = BatchAugment(32, (0.5,) * 3, (0.25,) * 3, zoom=(1.0, 1.0), shift=0.0, rotate=False, color=0.0)
    model = PairNorm().train()
    recompute_batchnorm(model, cache, augment, device="cpu", batch_size=len(cache))
    images = augment(torch.cat([cache.clinical, cache.dermoscopy]), train=False)
    torch.testing.assert_close(model.norm.running_mean, images.mean(dim=(0, 2, 3)), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(model.norm.running_var, images.var(dim=(0, 2, 3)), atol=1e-3, rtol=1e-3)
    assert model.training and model.norm.momentum == 0.1 and int(model.norm.num_batches_tracked) == 1


def test_swa_averages_epoch_weights_and_survives_resume(release, tmp_path):
    """--swa-start: the average of the EMA weights at each epoch's end, scored on valid each epoch."""
    common = ["--data-root", str(release), "--out", str(tmp_path), "--name", "s", "--swa-start", "1", *FAST]
    train.main([*common, "--epochs", "1"])
    first = torch.load(tmp_path / "last_state.pt", weights_only=True)
    train.main([*common, "--epochs", "2", "--resume"])
    second = torch.load(tmp_path / "last_state.pt", weights_only=True)
    assert int(second["swa"]["n_averaged"]) == 2
    weights = [k for k, v in first["ema"].items() if v.is_floating_point() and "running_" not in k]
    assert len(weights) > 50
    for name in weights:
        torch.testing.assert_close(second["swa"][f"module.{name}"], (first["ema"][name] + second["ema"][name]) / 2)
    assert any(not torch.equal(first["ema"][k], second["ema"][k]) for k in weights)
    history = (tmp_path / "metrics.csv").read_text().splitlines()
    assert "valid_swa_avg" in history[0] and len(history) == 3
    _, card = load_checkpoint(tmp_path / "s.safetensors")
    assert card.training["swa_start"] == 1
    # the card names the weights kept: replay the choice (plain epoch, then its average) from metrics.csv
    best, kept = float("-inf"), None
    for row in pd.read_csv(tmp_path / "metrics.csv").itertuples():
        if row.valid_avg > best:
            best, kept = row.valid_avg, {"best_epoch": row.epoch}
        if row.valid_swa_avg > best:
            best, kept = row.valid_swa_avg, {"best_epoch": row.epoch, "swa_epochs": [1, row.epoch]}
    assert {k: card.training.get(k) for k in ("best_epoch", "swa_epochs") if k in card.training} == kept
    with pytest.raises(SystemExit):
        parse_args(["--data-root", "d", "--out", "o", "--epochs", "3", "--swa-start", "4"])


def test_refit_trains_on_valid_keeps_the_last_epoch_and_stays_uncalibrated(release, tmp_path):
    """--refit: the final fit of a recipe chosen on valid, with valid in the training data."""
    from safetensors.torch import load_file
    from skinnet.data import Derm7pt

    data = Derm7pt(release)
    path = train.main(["--data-root", str(release), "--out", str(tmp_path), "--name", "f", "--epochs", "2",
                       "--refit", *FAST])
    model, card = load_checkpoint(path)
    assert "test" not in card.metrics  # a candidate is scored on test later, once (training.evaluate)
    assert "test" not in json.loads((tmp_path / "eval.json").read_text())
    assert card.training["data"]["split"] == "train+valid"
    assert card.training["data"]["n_train_cases"] == len(data.split("train")) + len(data.split("valid"))
    assert card.training["best_epoch"] == 2 and card.calibration == {}
    last = torch.load(tmp_path / "last_state.pt", weights_only=True)["ema"]
    saved = load_file(str(path))
    assert len(saved) > 50
    for name, value in saved.items():  # the kept weights are the last epoch's EMA, not a selected epoch
        torch.testing.assert_close(value.float(), last[name].float(), atol=2e-3, rtol=2e-3)
    with pytest.raises(SystemExit, match="refit"):
        evaluate.main(["--checkpoint", str(path), "--data-root", str(release), "--calibrate"])
    record = evaluate.main(["--checkpoint", str(path), "--data-root", str(release), "--weights", "int8"])
    _, card = load_checkpoint(path)
    assert card.calibration == {} and card.weights == "int8" and card.metrics["test"]["avg"] == record["avg"]


def test_fine_tune_from_checkpoint_keeps_architecture(trained, release, tmp_path):
    path, _ = trained
    new = train.main(["--data-root", str(release), "--out", str(tmp_path), "--epochs", "1",
                      "--init", str(path), "--name", "ft", *FAST])
    model, card = load_checkpoint(new)
    assert card.model == load_checkpoint(path)[1].model
    assert card.training["pretrained"] == "init:tiny"




DDP_STEP = r"""
import sys, torch
from torch.nn.parallel import DistributedDataParallel
from skinnet.data import Derm7pt
from skinnet.loss import MultiModalLoss
from skinnet.model import create_model
from skinnet.transforms import BatchAugment, ImageCache
from training.distributed import cleanup, init_distributed
from training.loop import train_one_epoch

release, dump = sys.argv[1], sys.argv[2]
info = init_distributed("cpu")
torch.manual_seed(0)  # same initial weights on both ranks (DDP also broadcasts rank 0's)
model = create_model(cross_attention_stages=(-1,), attention_dim=32)
if info.rank == 0:
    torch.save(dict(model.named_parameters()), dump + ".initial")
ddp = DistributedDataParallel(model)
torch.manual_seed(1 + info.rank)  # different augmentation per rank: gradients differ per rank
cache = ImageCache(Derm7pt(release).split("train"), 48)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
train_one_epoch(ddp, cache, BatchAugment(48, (0.5,) * 3, (0.5,) * 3), MultiModalLoss(), optimizer,
                lambda step: None, epoch=0, batch_size=4, seed=0, info=info, device="cpu", amp=False,
                step_offset=0)
# parameters, not BatchNorm buffers: DDP syncs gradients; running statistics stay per rank
# until rank 0's are broadcast at the next forward (and rank 0 is the one that saves)
torch.save(dict(model.named_parameters()), dump.format(rank=info.rank))
cleanup(info)
"""


def torchrun(args, cwd, port):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(port), *args]
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def test_ddp_ranks_agree_on_weights_after_steps(release, tmp_path):
    script = tmp_path / "ddp_step.py"
    script.write_text(DDP_STEP)
    torchrun([str(script), str(release), str(tmp_path / "rank{rank}.pt")], ROOT, 29581)
    weights = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    initial = torch.load(tmp_path / "rank{rank}.pt.initial", weights_only=True)
    assert any(not torch.equal(weights[0][k], initial[k]) for k in initial), "no step was taken"
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key


def test_train_command_under_torchrun(release, tmp_path):
    torchrun(["-m", "training.train", "--data-root", str(release), "--out", str(tmp_path),
              "--epochs", "1", "--device", "cpu", *FAST], ROOT, 29582)
    _, card = load_checkpoint(tmp_path / "model.safetensors")
    assert card.training["world_size"] == 2


def test_train_on_corrections(release, tmp_path):
    from skinnet.corrections import CorrectionsLog, NO_CHANGE, Review, new_event_id
    from skinnet.data import Derm7pt
    from skinnet.imaging import load_rgb
    from skinnet_testkit.synthetic import other_lesion_image
    import numpy as np

    data = Derm7pt(release)
    train_id, test_case = data.split("train")[0].case_id, data.split("test")[0]
    predicted = {"DIAG": "NEV", "PN": "TYP", "STR": "ABS", "PIG": "REG", "RS": "ABS", "DaG": "REG",
                 "BWV": "ABS", "VS": "ABS"}

    def reviewed(case_id, source, **corrected):
        return Review(new_event_id(), "dr_a", case_id, source, "correct", dict(predicted),
                      {t: corrected.get(t, NO_CHANGE) for t in predicted})

    log = CorrectionsLog(tmp_path / "log")
    log.append(reviewed(train_id, "derm7pt", DIAG="MEL"))
    log.append(reviewed(test_case.case_id, "derm7pt", DIAG="SK"))
    rng = np.random.default_rng(5)
    log.append(reviewed("upload:new", "upload", DIAG="BCC"), clinical=other_lesion_image(rng),
               dermoscopy=other_lesion_image(rng))
    log.append(reviewed("upload:leak", "upload", DIAG="MEL"), dermoscopy=load_rgb(test_case.dermoscopy_path))
    with open(log.path, "a") as handle:
        handle.write("broken,row\n")
    out = tmp_path / "out"
    path = train.main(["--data-root", str(release), "--out", str(out), "--epochs", "1", "--name", "c",
                       "--corrections", str(log.path), *FAST])
    _, card = load_checkpoint(path)
    data_card = card.training["data"]
    assert data_card["n_corrections"] == 2
    assert data_card["n_corrected_derm7pt"] == 1 and data_card["n_new_cases"] == 1
    assert data_card["n_skipped_held_out"] == 2 and data_card["n_bad_rows"] == 1
    assert data_card["n_train_cases"] == 13
    with pytest.raises(SystemExit, match="1 bad rows, refused"):
        train.main(["--data-root", str(release), "--out", str(tmp_path / "strict"), "--epochs", "1",
                    "--corrections", str(log.path), "--strict-corrections", *FAST])
    # what training learns: the reviewed task changes, a task not reviewed keeps the reference
    # label (Derm7pt) or has none (an upload: the loss skips it)
    from skinnet.labels import NO_LABEL
    from training.data import training_cases
    args = train.parse_args(["--data-root", str(release), "--out", str(out), "--corrections", str(log.path)])
    cases = {c.case_id: c for c in training_cases(data, args)[0]}
    reference = next(c for c in data.split("train") if c.case_id == train_id).labels
    assert cases[train_id].labels == (2, *reference[1:])  # MEL, and the 7 criteria as Derm7pt has them
    assert cases["upload:new"].labels == (0, *[NO_LABEL] * 7)


def test_refit_learns_valid_corrections_but_never_test(release, tmp_path):
    from skinnet.corrections import CorrectionsLog, NO_CHANGE, Review, new_event_id
    from skinnet.data import Derm7pt
    from skinnet.labels import TASK_BY_NAME
    from training.data import training_cases

    data = Derm7pt(release)
    valid_case, test_case = data.split("valid")[0], data.split("test")[0]
    log = CorrectionsLog(tmp_path / "log")
    for case in (valid_case, test_case):
        predicted = {t: TASK_BY_NAME[t].classes[0] for t in TASK_NAMES}
        corrected = {t: NO_CHANGE for t in TASK_NAMES}
        corrected["DIAG"] = "SK" if case.labels[0] != TASK_BY_NAME["DIAG"].classes.index("SK") else "BCC"
        log.append(Review(new_event_id(), "dr_a", case.case_id, "derm7pt", "correct", predicted, corrected))
    common = ["--data-root", str(release), "--out", "o", "--corrections", str(log.path)]
    cases, stats = training_cases(data, parse_args([*common, "--refit"]))
    by_id = {c.case_id: c for c in cases}
    assert len(cases) == len(data.split("train")) + len(data.split("valid")) and test_case.case_id not in by_id
    assert by_id[valid_case.case_id].labels[0] != valid_case.labels[0]  # the reviewer's DIAG is trained on
    assert stats["n_corrected_derm7pt"] == 1 and stats["n_skipped_held_out"] == 1
    cases, stats = training_cases(data, parse_args(common))  # without --refit valid stays held out
    assert valid_case.case_id not in {c.case_id for c in cases} and stats["n_skipped_held_out"] == 2



@pytest.mark.slow  # 1.5-3 minutes: every test pair with the card's flips
@pytest.mark.timeout(1800)
@needs_real_derm7pt
def test_shipped_checkpoint_reproduces_its_card_on_real_test_split(tmp_path):
    _, card = load_checkpoint(SHIPPED)
    record = evaluate.main(["--checkpoint", str(SHIPPED), "--data-root", str(REAL_DERM7PT), "--split", "test",
                            "--json", str(tmp_path / "test.json")])
    assert record["n_cases"] == 395
    assert record["tasks"] == pytest.approx(card.metrics["test"]["tasks"], abs=1e-9)
    assert record["avg"] == pytest.approx(card.metrics["test"]["avg"], abs=1e-9)
    assert record["params"] == card.params <= 8_000_000
    assert SHIPPED.stat().st_size < 10_000_000  # the "under 10 MB"


def test_held_out_images_edited_are_never_trained_on(release, tmp_path):
    """A test image re-saved as JPEG q95, mirrored, cropped by 1 px or shrunk is still that image,
    and so is one cropped by 3-20% per side, turned by 5 or 15 degrees, framed, sheared, or
    mirrored and cropped (issue 27: the perceptual hash alone let these through)."""
    import io
    from PIL import Image
    from skinnet_testkit.edits import HARD_EDITS
    from skinnet.corrections import CorrectionsLog, NO_CHANGE, Review, new_event_id
    from skinnet.data import Derm7pt
    from skinnet.imaging import load_rgb
    from skinnet_testkit.synthetic import other_lesion_image, textured_lesion_image
    from training.data import training_cases
    import numpy as np

    copy = shutil.copytree(release, tmp_path / "release")
    held_out = Derm7pt(copy).split("test")[1].dermoscopy_path
    textured_lesion_image(np.random.default_rng(8)).save(held_out, quality=90)  # a photo-sized image
    data = Derm7pt(copy)
    original = load_rgb(held_out)
    w, h = original.size
    buffer = io.BytesIO()
    original.save(buffer, "JPEG", quality=95)
    edits = {"jpeg95": Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"),
             "mirrored": original.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
             "cropped": original.crop((1, 1, w - 1, h - 1)), "shrunk": original.resize((w // 2, h // 2)),
             **{name: edit(original) for name, edit in HARD_EDITS.items()}}
    predicted = {t: "ABS" for t in TASK_NAMES} | {"DIAG": "NEV", "PN": "TYP"}
    log = CorrectionsLog(tmp_path / "log")
    new = {"new": other_lesion_image(np.random.default_rng(42)),  # and one made like the held-out image
           "new-textured": textured_lesion_image(np.random.default_rng(9))}
    for name, image in [*edits.items(), *new.items()]:
        log.append(Review(new_event_id(), "dr_a", f"upload:{name}", "upload", "agree", predicted,
                          {t: NO_CHANGE for t in TASK_NAMES}), dermoscopy=image)
    cases, stats = training_cases(data, parse_args(["--data-root", str(copy), "--out", "o",
                                                    "--corrections", str(log.path)]))
    assert [c.case_id for c in cases if c.case_id.startswith("upload:")] == ["upload:new", "upload:new-textured"]
    assert stats["n_skipped_held_out"] == len(edits) and stats["n_new_cases"] == 2


def test_fine_tuning_a_refit_is_a_refit(release, tmp_path):
    """``--init`` of a model that learnt valid (the shipped one is a refit) trains as a refit
    without being told: valid is learnt, the last epoch kept, no calibration fitted on valid."""
    first = train.main(["--data-root", str(release), "--out", str(tmp_path / "refit"), "--epochs", "1",
                        "--refit", *FAST])
    assert parse_args(["--data-root", "d", "--out", "o", "--init", str(first)]).refit
    again = train.main(["--data-root", str(release), "--out", str(tmp_path / "ft"), "--epochs", "1",
                        "--init", str(first), *FAST])
    _, card = load_checkpoint(again)
    assert card.trained_on_valid and not card.calibration


def test_the_recipe_file_is_the_shipped_models_recipe_and_flags_win(tmp_path):
    """recipes/skinnet_lite2.toml gives every training choice the shipped card records; a flag
    given on the command line overrides it; a misspelt recipe key is refused."""
    from skinnet.checkpoint import read_card
    from training.config import TrainConfig

    config = parse_args(["--recipe", "skinnet_lite2", "--data-root", "d", "--out", "o"])
    assert isinstance(config, TrainConfig)
    shipped = read_card(ROOT / "checkpoints" / "skinnet_lite2.json")
    for key in ("epochs", "image_size", "batch_size", "lr", "backbone_lr_scale", "weight_decay", "label_smoothing",
                "mixup", "ema", "swa_start", "pretrained", "seed"):
        assert getattr(config, key) == shipped.training[key], key
    assert config.loss_weights == shipped.loss_weights and config.backbone == shipped.model["backbone"]
    assert list(config.cross_attention) == shipped.model["cross_attention_stages"]
    assert config.drop_path == shipped.model["backbone_kwargs"]["drop_path_rate"]
    assert parse_args(["--recipe", "skinnet_lite2", "--data-root", "d", "--out", "o", "--epochs", "3"]).epochs == 3
    bad = tmp_path / "bad.toml"
    bad.write_text('epochz = 3\n')
    with pytest.raises(SystemExit):
        parse_args(["--recipe", str(bad), "--data-root", "d", "--out", "o"])


def test_the_card_keeps_the_whole_config_and_augmentation_is_configurable(trained, release, tmp_path):
    path, _ = trained
    _, card = load_checkpoint(path)
    config = card.training["config"]
    assert config["epochs"] == 2 and config["mixup"] == 0.2 and config["zoom"] == [0.75, 1.25]
    assert "data_root" not in config and "out" not in config  # no machine paths in a card
    plain = train.main(["--data-root", str(release), "--out", str(tmp_path), "--epochs", "1", "--name", "plain",
                        "--zoom", "1,1", "--shift", "0", "--no-rotate", "--color", "0", *FAST])
    _, card = load_checkpoint(plain)
    assert card.training["config"]["rotate"] is False and card.training["config"]["zoom"] == [1.0, 1.0]
    with pytest.raises(SystemExit):
        parse_args(["--data-root", "d", "--out", "o", "--zoom", "1.5,1"])


@pytest.mark.parametrize("tta", [False, True])
def test_the_app_and_training_evaluate_give_the_same_probabilities(trained, release, tmp_path, tta):
    """One prediction path: the app's Predictor (PIL images from the files) and training.evaluate
    (decoded cache, batched) give each head's calibrated probabilities to 1e-5, with and without
    the flips."""
    from skinnet.calibration import calibrate
    from skinnet.data import Derm7pt
    from skinnet.imaging import load_rgb
    from skinnet.labels import TASKS
    from skinnet.predict import Predictor
    from training.evaluate import head_predictions

    path, _ = trained
    model, card = load_checkpoint(path)
    card.inference["tta"] = tta
    copy = save_checkpoint(model, card, tmp_path / "copy")
    model, card = load_checkpoint(copy)
    assert card.calibration  # a calibrated card: the calibration is part of what must agree
    cases = Derm7pt(release).split("valid") + Derm7pt(release).split("test")
    logits, _ = head_predictions(model, card, cases, "cpu", card.tta)
    predictor = Predictor.from_checkpoint(copy, guards=False)
    for i, case in enumerate(cases):
        # what evaluation sees: the pair as the release gives it (a missing photo is the dermoscopy image)
        app = predictor.predict(load_rgb(case.clinical_path), load_rgb(case.dermoscopy_path))
        assert set(app.heads) == {"clinical", "dermoscopy", "fused"}
        for head, prediction in app.heads.items():
            flat = calibrate(logits[head][i], card.calibration.get(head))
            start = 0
            for task in TASKS:
                expected = torch.softmax(flat[start:start + task.num_classes], -1)
                got = torch.tensor([prediction.probabilities[task.name][c] for c in task.classes])
                torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
                start += task.num_classes


def test_an_older_card_keeps_its_prediction_setting_in_the_inference_section():
    from skinnet.checkpoint import read_card

    shipped = read_card(ROOT / "checkpoints" / "skinnet_lite2.json")  # written as card format 2
    assert shipped.inference == {"tta": False} and shipped.tta is False
    assert shipped.training["tta"] is False


def test_the_near_duplicate_check_takes_any_picture():
    """Flat, tiny, noisy or unrelated uploads: an answer, never an exception (a training run
    must not stop at an odd upload)."""
    import numpy as np
    from PIL import Image
    from skinnet.near_duplicates import ReferenceImages
    from skinnet_testkit.synthetic import textured_lesion_image

    rng = np.random.default_rng(3)
    noise = Image.fromarray(rng.integers(0, 256, (224, 336, 3), dtype=np.uint8))
    references = ReferenceImages([textured_lesion_image(rng), noise])
    odd = [Image.new("RGB", (3, 3)), Image.new("RGB", (400, 300), (90, 90, 90)), textured_lesion_image(rng),
           Image.fromarray(rng.integers(0, 256, (224, 336, 3), dtype=np.uint8))]
    assert [references.match(image) for image in odd] == [None] * 4
    assert references.match(noise).check == "exact" and ReferenceImages([]).match(noise) is None
