"""The experiment ledger (training.ledger, training.crossval --ledger), the precision choice and
the individual cross-attention option, on synthetic data."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from skinnet.calibration import calibrate
from skinnet.data import Derm7pt
from skinnet.labels import TASK_NAMES, TASKS
from skinnet.model import count_parameters, create_model
from skinnet_testkit.synthetic import make_release
from training import crossval, ledger
from training.evaluate import calibration_from_oof
from training.folds import pool_cases
from training.precision import autocast, resolve_precision, to_layout

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--image-size", "48", "--batch-size", "4", "--cross-attention", "-1", "--attention-dim", "32",
        "--epochs", "1", "--tta", "--name", "cv"]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A 3-fold entry cross-fitted into a ledger; the run folder is kept for comparison."""
    release = make_release(tmp_path_factory.mktemp("derm7pt40"), n_cases=40, seed=3)
    root = tmp_path_factory.mktemp("experiments")
    out = tmp_path_factory.mktemp("runs")
    report = crossval.main(["--data-root", str(release), "--out", str(out), "--folds", "3", "--threads", "1",
                            "--ledger", str(root / "tiny"), "--", *FAST, "--no-progress"])
    return release, root / "tiny", out, report


def test_each_fold_writes_one_row_per_case_with_probabilities_that_sum_to_one(recorded):
    release, entry, out, report = recorded
    data = Derm7pt(release)
    row_of = {c.case_id: i for i, c in enumerate(data.cases())}
    folds = json.loads((entry / "folds.json").read_text())["folds"]
    for k in range(3):
        frame = pd.read_csv(entry / f"fold{k}" / "oof.csv")
        assert list(frame.columns[:2]) == ["case", "fold"]
        assert list(frame.columns[2:]) == [f"{t.name}_{c}" for t in TASKS for c in t.classes]
        assert "DIAG_MEL" in frame.columns and "PN_TYP" in frame.columns
        mine = sorted(row_of[c] for c, f in folds.items() if f == k)
        assert sorted(frame["case"]) == mine and (frame["fold"] == k).all()  # one row per case of the fold
        start = 2
        for task in TASKS:
            sums = frame.iloc[:, start:start + task.num_classes].sum(axis=1)
            assert ((sums - 1).abs() < 1e-5).all(), task.name
            start += task.num_classes
        # the probabilities are the fold model's own logits, softmaxed per task
        part = torch.load(out / f"fold{k}" / "oof.pt", weights_only=True)
        expected = ledger.probabilities_frame(part["logits"]["fused"], [row_of[c] for c in part["case_ids"]], [k] * 10)
        pd.testing.assert_frame_equal(frame.sort_values("case").reset_index(drop=True),
                                      expected.sort_values("case").reset_index(drop=True), atol=1e-6, rtol=1e-5)
        for name in ("oof_clinical.csv", "oof_dermoscopy.csv", "oof_tta_off.csv", "eval.json", "metrics.csv", "run.json"):
            assert (entry / f"fold{k}" / name).is_file(), name
        assert not list((entry / f"fold{k}").glob("*.safetensors")) and not list((entry / f"fold{k}").glob("*.pt"))
    joined = pd.read_csv(entry / "oof.csv")
    assert len(joined) == 30 and joined["case"].is_unique
    assert set(joined["case"]) == {row_of[c.case_id] for c in pool_cases(data)}
    run = json.loads((entry / "fold0" / "run.json").read_text())
    assert run["card"]["training"]["precision"] in ("bf16", "fp32") and run["commit"]
    assert report["out_of_fold"]["n_cases"] == 30


def test_the_report_and_calibration_come_from_the_ledger_alone(recorded, tmp_path):
    """A new machine: no run folder, only the committed ledger. Nothing is retrained, and the
    OOF read back from the CSVs gives the same scores and calibration as the logits."""
    release, entry, out, report = recorded
    again = crossval.main(["--data-root", str(release), "--out", str(tmp_path / "fresh"), "--folds", "3",
                           "--ledger", str(entry), "--", *FAST, "--no-progress"])
    assert not list((tmp_path / "fresh").glob("fold[0-9]"))  # nothing trained
    assert again["out_of_fold"]["avg"] == pytest.approx(report["out_of_fold"]["avg"])
    data = Derm7pt(release)
    from_ledger = ledger.read_oof(entry, data)
    from_logits = crossval.gather_oof(out, 3, data, crossval.ensure_folds(out, data, 3, 0))
    assert from_ledger["case_ids"] == from_logits["case_ids"]
    assert torch.equal(from_ledger["labels"], from_logits["labels"]) and from_ledger["tta"] is True
    sizes = [t.num_classes for t in TASKS]
    for head in ("clinical", "dermoscopy", "fused"):  # log-probabilities: the logits less a constant per task
        for mine, theirs in zip(torch.split(from_ledger["logits"][head], sizes, -1),
                                torch.split(from_logits["logits"][head], sizes, -1)):
            torch.testing.assert_close(mine - mine.mean(-1, keepdim=True), theirs - theirs.mean(-1, keepdim=True),
                                       atol=1e-4, rtol=0)
    from skinnet.checkpoint import read_card
    card = read_card(next((out / "fold0").glob("*.safetensors")))
    fitted, note = calibration_from_oof(entry, card, data)
    assert note["ledger"] == "experiments/tiny" and note["n_cases"] == 30 and note["tta"] is True
    torch.save(from_logits, tmp_path / "oof.pt")
    for fold in range(3):  # calibration_from_oof reads the recipe from a fold card beside an oof.pt
        (tmp_path / f"fold{fold}").symlink_to(out / f"fold{fold}")
    reference, _ = calibration_from_oof(tmp_path / "oof.pt", card)
    probe = from_logits["logits"]["fused"]
    torch.testing.assert_close(torch.softmax(calibrate(probe, fitted["fused"])[:, :5], -1),
                               torch.softmax(calibrate(probe, reference["fused"])[:, :5], -1), atol=2e-3, rtol=0)
    with pytest.raises(SystemExit, match="TTA"):  # one-view predictions do not calibrate a four-view card
        calibration_from_oof(entry / "oof_tta_off.csv", card, data)
    # a card written before a model field existed (the shipped one has no attention_sharing) holds
    # its default: the same recipe; the other value is another model
    import dataclasses
    older = dataclasses.replace(card, model={k: v for k, v in card.model.items() if k != "attention_sharing"})
    assert calibration_from_oof(entry, older, data)[1]["n_cases"] == 30
    with pytest.raises(SystemExit, match="another recipe.*model or loss weights"):
        calibration_from_oof(entry, dataclasses.replace(card, model={**card.model, "attention_sharing": "individual"}),
                             data)


def test_int8_storage_is_scored_out_of_fold_on_the_entrys_own_fold_models(recorded, tmp_path):
    """benchmarks/int8_oof.py: every case predicted by the fold model that never saw it, once per
    storage; float16 reproduces the ledger, and fold runs that are not the entry's are refused."""
    from conftest import benchmark

    release, entry, out, _ = recorded
    card = next((out / "fold0").glob("*.safetensors"))
    args = ["--data-root", release, "--entry", entry, "--checkpoint", card, "--json", tmp_path / "int8.json"]
    benchmark([ROOT / "benchmarks" / "int8_oof.py", "--runs", out, *args])
    result = json.loads((tmp_path / "int8.json").read_text())
    assert result["n_cases"] == 30 and set(result["storage"]) == {"float16", "int8_partial_shipped", "int8_everywhere"}
    assert result["storage"]["int8_everywhere"]["max_probability_change_vs_float16"] > 0
    assert result["everywhere_vs_partial"]["n_cases"] == 30
    swapped = tmp_path / "swapped"
    for k, source in enumerate((1, 0, 2)):  # folds 0 and 1 trade weights: each predicts cases it trained on
        (swapped / f"fold{k}").mkdir(parents=True)
        for f in (out / f"fold{source}").iterdir():
            (swapped / f"fold{k}" / f.name).symlink_to(f)
    refused = benchmark([ROOT / "benchmarks" / "int8_oof.py", "--runs", swapped, *args], check=False)
    assert refused.returncode != 0 and "does not reproduce the ledger" in refused.stderr


def made_up_entry(data: Derm7pt, path: Path, folds_done: list[int], diag_wrong_every: int = 0,
                  one_view_diag_wrong_every: int | None = None) -> None:
    """A 3-fold ledger entry whose out-of-fold answers are known: right on every task of every
    case, except DIAG wrong on every ``diag_wrong_every``-th case of each fold (0: never). With
    ``one_view_diag_wrong_every`` the entry predicts with flips (``--tta``) and also keeps one-view
    answers (``oof_tta_off.csv``), DIAG wrong on every such case."""
    rows = ledger.case_rows(data)
    labels = {c.case_id: c.labels for c in pool_cases(data)}
    flags = FAST if one_view_diag_wrong_every is None else [*FAST, "--tta"]
    entry = ledger.Experiment(name=path.name, description="", train_flags=flags, folds=3, path=path)
    entry.save()
    folds = crossval.ensure_folds(entry.path, data, 3, 0)
    for k in folds_done:
        ids = [c for c, f in folds.items() if f == k]
        entry.fold_path(k).mkdir(parents=True)
        files = {"": diag_wrong_every}
        if one_view_diag_wrong_every is not None:
            files["tta_off"] = one_view_diag_wrong_every
        for views, wrong_every in files.items():
            logits = torch.full((len(ids), sum(t.num_classes for t in TASKS)), -5.0)
            start = 0
            for t, task in enumerate(TASKS):
                for i, case_id in enumerate(ids):
                    said = labels[case_id][t]
                    if t == 0 and wrong_every and i % wrong_every == 0:
                        said = (said + 1) % task.num_classes
                    logits[i, start + said] = 5.0
                start += task.num_classes
            ledger.write_probabilities(entry.fold_path(k) / ledger.oof_file_name("fused", views),
                                       ledger.probabilities_frame(logits, [rows[c] for c in ids], [k] * len(ids)))


def test_the_claims_table_gives_each_claim_the_verdict_its_rule_says(tmp_path):
    """benchmarks/ablation_oof.py on a ledger of the six configurations with made-up out-of-fold
    probabilities whose answers are known: b wrong on half the DIAG cases, every other entry
    right everywhere; a and f with folds missing. Each verdict follows the written rule
    ("replaces": interval above -1 point; "helps": above 0), paired on the folds both finished."""
    from conftest import benchmark

    release = make_release(tmp_path / "derm7pt", n_cases=40, seed=3)
    root = tmp_path / "exp"
    finished = {"a_two_encoders": [0, 1], "b_shared_encoder": [0, 1, 2], "c_individual_attention": [0, 1, 2],
                "d_shared_attention": [0, 1, 2], "e_method": [0, 1, 2], "f_single_scale": [0]}
    for name, folds_done in finished.items():
        made_up_entry(Derm7pt(release), root / name, folds_done, diag_wrong_every=2 if name == "b_shared_encoder" else 0)
    markdown = tmp_path / "results.md"
    markdown.write_text("# Results\n\n<!-- ablation-oof:begin -->\nSTALE TABLE\n<!-- ablation-oof:end -->\nafter\n")
    benchmark([ROOT / "benchmarks" / "ablation_oof.py", "--data-root", release, "--root", root,
               "--json", tmp_path / "ablation_oof.json", "--results-md", markdown])
    configs = json.loads((tmp_path / "ablation_oof.json").read_text())
    assert [c["entry"] for c in configs] == list(finished) and configs[4]["n_cases"] == 30
    assert configs[4]["oof_avg"] == 1.0 and configs[4]["oof_diag_balanced"] == 1.0 and configs[1]["oof_diag"] < 0.6
    assert 0.2 < configs[1]["oof_diag_balanced"] < 0.8
    claims = {c["a"][0] + c["b"][0]: c for c in json.loads((tmp_path / "ablation_oof_claims.json").read_text())}
    assert claims["ba"]["verdict"].startswith("does not hold so far") and claims["ba"]["folds"] == [0, 1]
    assert claims["dc"]["verdict"] == "holds"  # level: the interval [0, 0] is above -1 point
    assert claims["db"]["verdict"] == "holds"  # DIAG right on half the cases more: about +6 points, above 0
    assert claims["ed"]["verdict"] == "does not hold"  # level: a "helps" claim needs more than 0
    assert claims["ef"]["verdict"].startswith("does not hold so far") and claims["ef"]["folds"] == [0]
    text = markdown.read_text()
    assert "STALE TABLE" not in text and "| 3 of 3 | 30 |" in text and text.endswith("<!-- ablation-oof:end -->\nafter\n")
    assert "| cross-attention helps | d vs b | 30 |" in text and "Ledger status when this table was made" in text
    assert claims["db"]["result"]["task_difference"] == pytest.approx({"DIAG": 0.5, **{t: 0.0 for t in TASK_NAMES[1:]}},
                                                                     abs=0.04)  # all of it on DIAG
    assert "| d vs b | 30 | +" in text


def test_the_candidates_table_follows_the_rules_written_before_the_runs(tmp_path):
    """benchmarks/candidates_oof.py on made-up entries: the reference (e_method) wrong on every
    third DIAG case; g_lite1 right everywhere (passes "helps"), i_epochs40 the same as the
    reference (level: does not pass), h_distilled right everywhere but with a fold missing (so
    far). Nothing is chosen while a candidate is pending; then the passing one with the highest
average is, and no other section of the file moves."""
    from conftest import benchmark

    release = make_release(tmp_path / "derm7pt", n_cases=40, seed=3)
    root = tmp_path / "exp"
    for name, folds_done, wrong in (("e_method", [0, 1, 2], 3), ("g_lite1", [0, 1, 2], 0),
                                    ("i_epochs40", [0, 1, 2], 3), ("h_distilled", [0, 1], 0)):
        # one-view answers for the reference and g_lite1 only, g_lite1's worse than the reference's
        one_view = {"e_method": 3, "g_lite1": 2}.get(name)
        made_up_entry(Derm7pt(release), root / name, folds_done, diag_wrong_every=wrong,
                      one_view_diag_wrong_every=one_view)
    markdown = tmp_path / "results.md"
    markdown.write_text("# Results\n\n<!-- ablation-oof:begin -->\nkept\n<!-- ablation-oof:end -->\n"
                        "<!-- candidates-oof:begin -->\nSTALE\n<!-- candidates-oof:end -->\nafter\n")
    benchmark([ROOT / "benchmarks" / "candidates_oof.py", "--data-root", release, "--root", root,
               "--json", tmp_path / "candidates.json", "--results-md", markdown])
    result = json.loads((tmp_path / "candidates.json").read_text())
    rows = {r["entry"]: r for r in result["candidates"]}
    assert rows["g_lite1"]["verdict"] == "passes" and rows["g_lite1"]["result"]["avg_difference_95ci"][0] > 0
    # one view is reported where both kept it, and decides nothing (g_lite1 is behind there)
    assert rows["g_lite1"]["one_view"]["avg_difference"] < 0 and rows["i_epochs40"]["one_view"] is None
    assert rows["g_lite1"]["params"] < count_parameters(create_model(backbone="tf_efficientnet_lite2"))
    assert rows["i_epochs40"]["verdict"] == "does not pass" and rows["i_epochs40"]["result"]["avg_difference"] == 0
    assert rows["h_distilled"]["verdict"].startswith("passes so far") and rows["h_distilled"]["folds"] == [0, 1]
    # a pending candidate could still pass with a higher average: nothing is chosen yet
    assert result["decision"] == "no choice yet: g_lite1 passes; waiting for h_distilled"
    text = markdown.read_text()
    assert "STALE" not in text and "kept" in text and text.endswith("<!-- candidates-oof:end -->\nafter\n")
    assert "**Decision: no choice yet: g_lite1 passes" in text and "| `h_distilled`: " in text
    assert "As the app predicts, one view" in text
    # h_distilled's last fold: it passes too (DIAG above the reference's), with a lower average
    made_up_entry(Derm7pt(release), root / "h_distilled", [2], diag_wrong_every=2)
    benchmark([ROOT / "benchmarks" / "candidates_oof.py", "--data-root", release, "--root", root,
               "--json", tmp_path / "candidates.json", "--results-md", markdown])
    result = json.loads((tmp_path / "candidates.json").read_text())
    rows = {r["entry"]: r for r in result["candidates"]}
    assert rows["h_distilled"]["verdict"] == "passes" and rows["h_distilled"]["result"]["avg_a"] < 1.0
    assert result["decision"].startswith("next model: g_lite1")
    assert "**Decision: next model: g_lite1" in markdown.read_text()

def test_the_flips_verdict_follows_the_rule_written_before_it_ran(tmp_path):
    """benchmarks/tta_oof.py on six made-up cross-fits: with flips DIAG is wrong on every sixth
    case, with one view on every second, so the flips come back; then the shipped recipe's
    (e_method's) one view is the better one, so one view stays although the pooled interval is
    above 0; an incomplete entry is refused (the rule needs all six)."""
    from conftest import benchmark

    release = make_release(tmp_path / "derm7pt", n_cases=60, seed=3)
    names = ["a_two_encoders", "b_shared_encoder", "c_individual_attention", "d_shared_attention", "e_method",
             "f_single_scale"]
    markdown = tmp_path / "results.md"
    markdown.write_text("# Results\n\n<!-- tta-oof:begin -->\nSTALE\n<!-- tta-oof:end -->\nafter\n")

    latency = tmp_path / "latency.json"

    def run(root: Path, predict_ratio: float | None = 1.5) -> dict:
        latency.unlink(missing_ok=True)
        if predict_ratio is not None:  # a four-flip card's latency record
            latency.write_text(json.dumps({"four_flips": {"tta": True, "ratio_predict_to_forward": predict_ratio,
                                                          "ratio_explain_to_forward": 5.0}}))
        benchmark([ROOT / "benchmarks" / "tta_oof.py", "--data-root", release, "--root", root,
                   "--json", tmp_path / "tta.json", "--results-md", markdown, "--latency", latency])
        return json.loads((tmp_path / "tta.json").read_text())

    for name in names:
        made_up_entry(Derm7pt(release), tmp_path / "better" / name, [0, 1, 2], diag_wrong_every=6,
                      one_view_diag_wrong_every=2)
    result = run(tmp_path / "better")
    assert result["flips_come_back"] and result["pooled"]["avg_difference_95ci"][0] > 0
    assert result["pooled"]["entries_avg_up"] == 6 and result["pooled"]["diag_difference"] > 0
    assert "**Decision: the flips come back" in markdown.read_text() and "STALE" not in markdown.read_text()
    # the same answers, but four flips make prediction 3.4x a bare forward (target 2x): one view stays
    result = run(tmp_path / "better", predict_ratio=3.4)
    assert result["out_of_fold_conditions_hold"] and not result["flips_come_back"]
    assert "misses its latency targets (predict 3.4x (target 2x)" in result["decision"]
    result = run(tmp_path / "better", predict_ratio=None)  # not measured: no verdict either way
    assert not result["flips_come_back"] and "not measured yet" in result["decision"]

    for name in names:  # the same, but the shipped recipe is worse with flips
        wrong = (2, 6) if name == "e_method" else (6, 2)
        made_up_entry(Derm7pt(release), tmp_path / "mixed" / name, [0, 1, 2], diag_wrong_every=wrong[0],
                      one_view_diag_wrong_every=wrong[1])
    result = run(tmp_path / "mixed")
    assert result["pooled"]["avg_difference_95ci"][0] > 0 and not result["flips_come_back"]
    assert "**Decision: one view stays" in markdown.read_text()

    made_up_entry(Derm7pt(release), tmp_path / "short" / names[0], [0, 1], one_view_diag_wrong_every=2)
    for name in names[1:]:
        made_up_entry(Derm7pt(release), tmp_path / "short" / name, [0, 1, 2], one_view_diag_wrong_every=2)
    with pytest.raises(subprocess.CalledProcessError) as refused:
        run(tmp_path / "short")
    assert "is not a complete cross-fit" in refused.value.stderr


def test_the_combiner_benchmark_runs_on_a_ledger_entry(recorded, tmp_path):
    """benchmarks/stacking_oof.py end to end on a synthetic entry: every variant scores every case."""
    from conftest import benchmark

    release, entry, _, _ = recorded
    benchmark([ROOT / "benchmarks" / "stacking_oof.py", "--data-root", release, "--entry", entry,
               "--json", tmp_path / "stacking.json"])
    result = json.loads((tmp_path / "stacking.json").read_text())
    assert result["n_cases"] == 30 and len(result["variants"]) == 3
    assert all(c["n_cases"] == 30 and "verdict" in c for c in result["comparisons"].values())


def test_the_combiner_learns_from_other_heads_and_never_from_the_fold_it_predicts():
    """No case is predicted by a fit that saw its label (changing one fold's labels moves the other
    folds' predictions, not its own), and a head that knows the answers is found."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("stacking_oof", ROOT / "benchmarks" / "stacking_oof.py")
    stacking = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stacking)
    stacking.STRENGTHS = (1.0,)  # one strength: the inner search is not what is tested here
    g = torch.Generator().manual_seed(0)
    n = 200
    labels = torch.stack([torch.randint(0, t.num_classes, (n,), generator=g) for t in TASKS], 1)
    folds = torch.arange(n) % 5
    noise = {h: torch.log_softmax(torch.randn(n, sum(t.num_classes for t in TASKS), generator=g), -1)
             for h in ("clinical", "dermoscopy", "fused")}
    before = stacking.combine(noise, labels, folds, own_task_only=False)
    relabelled = labels.clone()
    relabelled[folds == 0] = 0  # fold 0's answers changed: its own predictions must not move
    after = stacking.combine(noise, relabelled, folds, own_task_only=False)
    torch.testing.assert_close(after[folds == 0], before[folds == 0])
    assert not torch.allclose(after[folds == 1], before[folds == 1])
    knowing = dict(noise)
    one_hot = torch.cat([torch.nn.functional.one_hot(labels[:, t], task.num_classes)
                         for t, task in enumerate(TASKS)], 1).float()
    knowing["dermoscopy"] = torch.log_softmax(3 * one_hot + torch.randn(one_hot.shape, generator=g), -1)
    learned = stacking.right_per_task(stacking.combine(knowing, labels, folds, own_task_only=True), labels)
    assert learned.float().mean() > 0.9


def test_an_entry_refuses_another_recipe(recorded, tmp_path):
    release, entry, _, _ = recorded
    with pytest.raises(SystemExit, match="use another --ledger"):
        crossval.main(["--data-root", str(release), "--out", str(tmp_path), "--folds", "3", "--ledger", str(entry),
                       "--", *FAST, "--mixup", "0.3"])


def test_the_cpu_hours_left_run_from_a_quiet_machines_to_the_median(tmp_path):
    """Three finished folds took 10, 20 and 60 minutes (the last beside a test run): three pending
    trainings of twice the cost need 1.0 hour at the quiet pace (the lower quartile) and 2.0 at
    the median."""
    release = make_release(tmp_path / "derm7pt", n_cases=40, seed=3)
    root = tmp_path / "exp"
    made_up_entry(Derm7pt(release), root / "done", [0, 1, 2])
    done = ledger.Experiment.load(root / "done")
    for k, minutes in enumerate((10, 20, 60)):
        pd.DataFrame({"epoch": [1, 2], "seconds": [30 * minutes] * 2}).to_csv(done.fold_path(k) / "metrics.csv",
                                                                           index=False)
    ledger.Experiment(name="later", description="", train_flags=FAST, folds=3, cost=2.0, path=root / "later").save()
    assert ledger.status_lines(root)[-1].startswith(
        "pending: 3 folds, about 1.0-2.0 CPU hours (10-20 min per shipped-recipe fold: the lower quartile and the median")


def test_status_counts_done_and_pending_folds_and_their_cpu_hours(recorded, tmp_path):
    _, entry, _, _ = recorded
    root = entry.parent
    more = ledger.Experiment(name="later", description="not run", train_flags=FAST, folds=3, cost=2.0, path=root / "later")
    more.save()
    lines = ledger.status_lines(root)
    assert any(line.startswith("tiny") and "3/3 folds  complete" in line for line in lines)
    assert any(line.startswith("later") and "pending folds [0, 1, 2]" in line for line in lines)
    minutes = [ledger.fold_minutes(ledger.Experiment.load(entry), k) for k in range(3)]
    quiet, typical = (3 * 2.0 * sorted(minutes)[k] / 60 for k in (0, 1))  # the lower quartile, the median
    assert (f"pending: 3 folds, about {quiet:.1f}-{typical:.1f} CPU hours" in lines[-1] if quiet != typical
            else f"pending: 3 folds, about {typical:.1f} CPU hours" in lines[-1])
    order = ledger.pending_runs(ledger.experiments(root))
    assert [(e.name, k) for e, k in order] == [("later", 0), ("later", 1), ("later", 2)]
    # fold by fold within a hundred of priorities; a higher hundred only after the lower ones
    ledger.Experiment(name="sooner", description="", train_flags=FAST, folds=3, priority=10, path=root / "sooner").save()
    ledger.Experiment(name="check", description="", train_flags=FAST, folds=3, run_folds=[0], priority=170,
                      path=root / "check").save()
    order = ledger.pending_runs(ledger.experiments(root))
    assert [(e.name, k) for e, k in order] == [("sooner", 0), ("later", 0), ("sooner", 1), ("later", 1),
                                               ("sooner", 2), ("later", 2), ("check", 0)]


def test_a_killed_run_restarts_at_the_first_unfinished_fold_and_ends_as_an_unbroken_one(tmp_path):
    """kill -9 in the middle of fold 1; the same command again skips fold 0, resumes fold 1 from
    its last epoch and ends with the probabilities of a run that was never interrupted."""
    release = make_release(tmp_path / "derm7pt", n_cases=40, seed=3)
    flags = [*FAST[:-5], "--epochs", "2", "--tta", "--name", "cv"]
    for name in ("killed", "unbroken"):
        ledger.Experiment(name=name, description="", train_flags=flags, folds=2, path=tmp_path / "exp" / name).save()
    command = [sys.executable, "-m", "training.ledger", "--root", str(tmp_path / "exp"), "run", "--data-root",
               str(release), "--runs", str(tmp_path / "runs"), "--threads", "1"]
    first = subprocess.Popen([*command, "--only", "killed"], cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.STDOUT)
    progress = tmp_path / "runs" / "killed" / "fold1" / "last_state.pt"  # epoch 1 of fold 1 is over
    deadline = time.time() + 300
    while not progress.is_file():
        assert first.poll() is None and time.time() < deadline, "fold 1 never got going"
        time.sleep(0.2)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    entry = ledger.Experiment.load(tmp_path / "exp" / "killed")
    assert entry.done(0) and not entry.done(1)
    fold0 = (entry.fold_path(0) / "oof.csv").stat().st_mtime_ns
    second = subprocess.run([*command, "--only", "killed"], cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
    assert second.returncode == 0, second.stdout + second.stderr
    log = second.stderr
    assert "1 fold runs pending" in log and "== killed fold 1 ==" in log and "== killed fold 0 ==" not in log
    assert "resumed from" in log and "fold1/last_state.pt at epoch 1" in log
    assert (entry.fold_path(0) / "oof.csv").stat().st_mtime_ns == fold0 and entry.complete()
    subprocess.run([*command, "--only", "unbroken"], cwd=ROOT, capture_output=True, check=True, timeout=600)
    for k in range(2):
        resumed = pd.read_csv(entry.fold_path(k) / "oof.csv")
        unbroken = pd.read_csv(tmp_path / "exp" / "unbroken" / f"fold{k}" / "oof.csv")
        pd.testing.assert_frame_equal(resumed, unbroken, atol=1e-5, rtol=1e-4)


def test_one_training_fills_two_teacher_folds_that_learn_the_same_cases(recorded, tmp_path):
    """With 3 folds, teach_k0's fold 1 and teach_k1's fold 0 both learn fold 2 alone (and so on
    for each pair): the ledger trains one of each pair and fills the other from the same model,
    which predicts the fold it held out. 6 teacher folds, 3 trainings; an entry completed by a
    twin is joined like one completed by training; the twin's card says what it learnt."""
    release = make_release(tmp_path / "derm7pt", n_cases=40, seed=3)
    flags = [*FAST[:-5], "--epochs", "1", "--tta", "--name", "cv"]

    def teachers(root: Path) -> list[ledger.Experiment]:
        for k in range(3):
            ledger.Experiment(name=f"teach_k{k}", description="", train_flags=flags, folds=3, hold_out=k,
                              path=root / f"teach_k{k}").save()
        return ledger.experiments(root)

    def run(root: Path, *more: str) -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, "-m", "training.ledger", "--root", str(root), "run", "--data-root",
                               str(release), "--runs", str(root.parent / f"runs_{root.name}"), "--threads", "1",
                               *more], cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
        return done

    root = tmp_path / "one_at_a_time"
    teachers(root)
    assert "pending: 6 folds (3 trainings" in ledger.status_lines(root)[-1]
    log = run(root).stderr
    trained = [line.split("== ")[1].split(" ==")[0] for line in log.splitlines() if "== teach" in line]
    assert trained == ["teach_k1 fold 0", "teach_k2 fold 0", "teach_k2 fold 1"], log
    entries = ledger.experiments(root)
    assert all(e.complete() and (e.path / "crossval.json").is_file() and (e.path / "oof.csv").is_file()
               for e in entries)  # teach_k0 and teach_k1 were completed by twins
    first = entries[0]
    card = json.loads((first.fold_path(1) / "run.json").read_text())["card"]["training"]
    assert card["data"]["less_fold"] == 1 and card["data"]["held_out_fold"] == 0
    assert (card["config"]["fold"], card["config"]["hold_out"]) == (1, 0)
    assert card["twin_of"].endswith("teach_k1/fold0") and ledger.fold_minutes(first, 1) is None
    folds = json.loads((root / "teach_k0" / "folds.json").read_text())["folds"]
    assert card["data"]["n_train_cases"] == sum(f == 2 for f in folds.values())  # fold 2, and only fold 2
    row_of = {c.case_id: i for i, c in enumerate(Derm7pt(release).cases())}
    for view in ("oof.csv", "oof_tta_off.csv"):
        frame = pd.read_csv(first.fold_path(1) / view)
        assert sorted(frame["case"]) == sorted(row_of[c] for c, f in folds.items() if f == 1)
    assert not (root.parent / "runs_one_at_a_time" / "teach_k0" / "fold1" / "last_state.pt").exists()  # never trained
    # the same with folds trained at once (training/device.sh): a twin is never started beside its twin
    at_once = tmp_path / "at_once"
    teachers(at_once)
    log = run(at_once, "--jobs", "2").stderr
    started = [line.split("== ")[1].split(" started")[0] for line in log.splitlines() if " started (" in line]
    assert len(started) == 3 and all(e.complete() for e in ledger.experiments(at_once)), log
    with pytest.raises(ValueError, match="not a held-out fold run"):  # an ordinary fold model is no teacher's twin
        _, _, ordinary, _ = recorded
        crossval.predict_twin(ordinary / "fold0", tmp_path / "nope", Derm7pt(recorded[0]),
                              recorded[1] / "folds.json")


def test_individual_cross_attention_has_one_module_per_direction():
    shared = create_model(cross_attention_stages=(-2, -1), attention_dim=32)
    individual = create_model(cross_attention_stages=(-2, -1), attention_dim=32, attention_sharing="individual")
    none = create_model(cross_attention_stages=(), attention_dim=32)
    attention = count_parameters(shared) - count_parameters(none)
    assert attention > 0 and count_parameters(individual) - count_parameters(none) == 2 * attention
    assert sorted(individual.cross_attention) == sorted(f"{s}_{m}" for s in individual.attention_stages
                                                        for m in ("clinical", "dermoscopy"))
    # each direction runs through its own module: opening one gate changes only its queries' branch
    individual.eval()
    stage = individual.attention_stages[-1]
    x, y = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = individual.encode_pair(x, y).pooled
        individual.attention_module(stage, "dermoscopy").gate.fill_(0.8)
        after = individual.encode_pair(x, y).pooled
    torch.testing.assert_close(after["clinical"], before["clinical"])
    assert not torch.allclose(after["dermoscopy"], before["dermoscopy"])
    with pytest.raises(ValueError, match="attention_sharing"):
        create_model(attention_sharing="sometimes")


def test_bf16_and_channels_last_agree_with_float32_within_a_stated_tolerance():
    """The training speed-up changes the arithmetic, not the model: on the pretrained Lite0 with
    open cross-attention gates, bfloat16 autocast + channels-last gives the float32 class
    probabilities to within 0.03 (measured: about 0.01), and channels-last alone in float32
    to within 1e-5."""
    torch.manual_seed(0)
    model = create_model(pretrained="offline", cross_attention_stages=(-2, -1), attention_dim=32).eval()
    for module in model.cross_attention.values():
        module.gate.data.fill_(0.5)
    x, y = torch.rand(4, 3, 96, 96) * 2 - 1, torch.rand(4, 3, 96, 96) * 2 - 1

    def probabilities(bf16: bool, channels_last: bool) -> torch.Tensor:
        m = model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        with torch.no_grad(), autocast("cpu", bf16):
            out = m(to_layout(x, channels_last), to_layout(y, channels_last))["fused"].float()
        return torch.cat([torch.softmax(t, -1) for t in torch.split(out, [t.num_classes for t in TASKS], -1)], -1)

    fp32 = probabilities(False, False)
    torch.testing.assert_close(probabilities(False, True), fp32, atol=1e-5, rtol=0)
    difference = (probabilities(True, True) - fp32).abs().max()
    assert 0 < difference < 0.03


def test_precision_auto_resolves_by_device_and_cpu():
    assert resolve_precision("auto", "cuda") == "bf16" and resolve_precision("fp32", "cuda") == "fp32"
    assert resolve_precision("auto", "cpu") in ("bf16", "fp32") and resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError):
        resolve_precision("fp8", "cpu")


def test_the_accelerator_script_runs_pending_folds_at_once_and_students_after_their_teachers(tmp_path):
    """training/device.sh run, on the CPU with a tiny ledger: two folds at a time, the student's
    fold only once its leak-free teachers' entry is complete, and the ledger returned as a tar."""
    import tarfile

    release = make_release(tmp_path / "derm7pt", n_cases=40, seed=3)
    root = tmp_path / "exp"
    flags = [*FAST[:-5], "--epochs", "1", "--name", "cv"]
    ledger.Experiment(name="teach_k0", description="", train_flags=flags, folds=3, hold_out=0, priority=1,
                      path=root / "teach_k0").save()
    ledger.Experiment(name="student", description="", folds=3, run_folds=[0], priority=0, path=root / "student",
                      train_flags=[*flags, "--distill", str(root / "teach_k{fold}")]).save()
    env = {**os.environ, "DEVICE": "cpu", "DATA": str(release), "LEDGER": str(root), "JOBS": "2", "LIMIT": "400",
           "OUT": str(tmp_path / "out"), "RUNS": str(tmp_path / "runs")}
    done = subprocess.run(["bash", "training/device.sh", "run"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    teachers, student = (ledger.Experiment.load(root / name) for name in ("teach_k0", "student"))
    assert teachers.done(1) and teachers.done(2) and not teachers.pending() and student.done(0)
    card = json.loads((student.fold_path(0) / "run.json").read_text())["card"]
    assert card["training"]["distill"]["leak_free"] is True
    assert card["training"]["distill"]["teachers"] == ["teach_k0"]  # the entry, not its parent folder
    log = (tmp_path / "runs" / "ledger.log").read_text()
    started = [line.split("== ")[1].split(" started")[0] for line in log.splitlines() if "started" in line]
    assert started[-1] == "student fold 0" and set(started[:2]) == {"teach_k0 fold 1", "teach_k0 fold 2"}
    with tarfile.open(tmp_path / "out" / "experiments.tar") as tar:
        names = tar.getnames()
    assert any(n.endswith("student/fold0/oof.csv") for n in names) and not any(n.endswith(".safetensors") for n in names)


def test_the_accelerator_scripts_watchdog_stops_its_own_run_and_no_other_ledger_run(tmp_path):
    """LIMIT=3 s with folds that take longer: the watchdog stops this script's ledger run and its
    fold processes, and leaves alone another process that looks like a ledger run (the CPU's
    background runner: a pattern kill used to stop it whenever the test suite ran this script)."""
    release = make_release(tmp_path / "derm7pt", n_cases=40, seed=3)
    root = tmp_path / "exp"
    ledger.Experiment(name="slow", description="", folds=3, path=root / "slow",
                      train_flags=[*FAST[:-5], "--epochs", "50", "--name", "cv"]).save()
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "training.ledger", "run"])
    env = {**os.environ, "DEVICE": "cpu", "DATA": str(release), "LEDGER": str(root), "JOBS": "1", "LIMIT": "3",
           "OUT": str(tmp_path / "out"), "RUNS": str(tmp_path / "runs")}
    try:
        began = time.monotonic()
        done = subprocess.run(["bash", "training/device.sh", "run"], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        assert time.monotonic() - began < 120  # stopped, not run to the end of 50 epochs x 3 folds
        assert "watchdog: stopping at 3 s" in (tmp_path / "runs" / "watchdog.log").read_text()
        assert bystander.poll() is None  # the other "ledger run" lives on
        time.sleep(1)
        left = subprocess.run(["pgrep", "-f", f"training.crossval.*{root}"], capture_output=True, text=True)
        assert left.stdout.strip() == ""  # no fold process of this run is left behind
    finally:
        bystander.kill()
        bystander.wait()


def test_confidence_levels_fit_on_an_unfinished_entry_only_when_asked_and_say_which_folds(recorded, tmp_path):
    """An entry still being built (fold 2 not in yet): its finished folds choose the levels with
    --oof-partial, and the notes say which; without it the missing fold is an error."""
    import shutil

    from skinnet.guards import LEVELS, Guards
    from skinnet.predict import Predictor
    from training.fit_guards import fit_levels

    release, entry, out, _ = recorded
    unfinished = tmp_path / "tiny"
    shutil.copytree(entry, unfinished)
    for part in (unfinished / "fold2").iterdir():
        part.unlink()
    predictor = Predictor.from_checkpoint(next((out / "fold0").glob("*.safetensors")))
    guards = Guards(blocks=[], ood_threshold=1.0, modality_weight=torch.zeros(1), modality_bias=0.0,
                    uncertain_margin={}, fingerprint="")
    data = Derm7pt(release)
    with pytest.raises(SystemExit, match=r"folds \[2\] are not in the ledger yet"):
        fit_levels(guards, predictor, unfinished, data)
    fitted = fit_levels(guards, predictor, unfinished, data, partial=True)
    assert "folds [0, 1] of 3 only" in fitted.notes["uncertain"]
    levels = fitted.levels["fused"]
    assert {levels[n]["cases"] for n in LEVELS} == {20} and sum(levels[n]["share"] for n in LEVELS) == pytest.approx(1)
    assert fitted.uncertain_margin["fused"] <= fitted.low_confidence_margin["fused"]
