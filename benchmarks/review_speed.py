"""How many actions and seconds a review takes: with the mouse only, and with the keys.

    python benchmarks/review_speed.py --data-root ../shared/derm7pt [--checkpoint CKPT] [--moves 20]

Starts ``python app.py`` with a reviewer login and a manifest queue of four Derm7pt test pairs
(copied to a temporary folder; without ``--data-root``, synthetic pairs, which the shipped
model's lesion check may hide its prediction for), and drives a
headless Chromium through two tasks on successive cases, each done both ways:

- **agree** with the model on a case;
- **correct two labels** (DIAG and BWV) of a case.

Every run is real: the row must land in the review log with the right case and labels.
Reported per task and way: the input actions performed (pointing + clicks, keystrokes), the
human time those actions take by the keystroke-level model (Card, Moran & Newell 1980:
K = 0.28 s a keystroke, P = 1.1 s to point, B = 0.1 s a button press or release, H = 0.4 s to
move a hand between mouse and keys, M = 1.35 s per decision, the same decisions both ways),
and the measured seconds from the first action to "Saved" (the app's and the browser's
share). Then the **next-case latency**: ``n`` pressed ``--moves`` times on a queue of Derm7pt
test pairs, each time timed until the next case is ready (its header, both images drawn, the
prediction's summary and all 8 "model says" labels of the form for that case, checked against
the model's own answer computed here; the maps may follow), the reviewer working on each case for
``--dwell`` seconds (3) before the next ``n``. Cases are ordered so that two
successive ones differ in at least one predicted class, so that a form still showing the last
case's labels is never taken for the new one's. Writes a table and
``benchmarks/results/review_speed.json`` (``--only-next-case``: ``review_speed_next_case.json``).
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from skinnet.checkpoint import DEFAULT_CHECKPOINT
from report import write_section
from skinnet_testkit.app_process import PASSWORD, USER, App
from skinnet_testkit.browser import CHROMIUM, CHROMIUM_ARGS
from skinnet_testkit.queues import write_queue

ROOT = Path(__file__).resolve().parents[1]

KLM = {"K": 0.28, "P": 1.1, "B": 0.1, "H": 0.4, "M": 1.35}
DECISIONS = {"agree": 1, "correct two labels": 2}
"""Mental operators per task: the same whichever way the reviewer enters the decision."""
BWV_INDEX = 6
"""BWV is the form's seventh task: six presses of ``t`` from DIAG."""


@dataclass
class Run:
    task: str
    way: str
    case: str
    operators: list[str] = field(default_factory=list)
    measured_s: float = 0.0

    @property
    def actions(self) -> dict[str, int]:
        return {"clicks": self.operators.count("P"), "keys": self.operators.count("K")}

    @property
    def klm_s(self) -> float:
        mental = KLM["M"] * DECISIONS[self.task]
        return round(sum(KLM[o] for o in self.operators) + mental, 2)


class Reviewer:
    """A page and the operators its actions cost (a click = point + press + release; a key =
    one keystroke; a switch between mouse and keys = one homing)."""

    def __init__(self, page):
        self.page, self.hand, self.run = page, "mouse", None

    def _home(self, hand: str) -> None:
        if self.hand != hand:
            self.run.operators.append("H")
            self.hand = hand

    def click(self, selector: str) -> None:
        self._home("mouse")
        self.run.operators += ["P", "B", "B"]
        self.page.locator(selector).first.click()

    def choose(self, dropdown: str, option: str) -> None:
        self.click(f"#{dropdown} input")
        self._home("mouse")
        self.run.operators += ["P", "B", "B"]
        self.page.get_by_role("option", name=option, exact=True).click()

    def key(self, key: str) -> None:
        self._home("keys")
        self.run.operators.append("K")
        self.page.keyboard.press(key)


def wait_for_case(page, case_id: str) -> None:
    from playwright.sync_api import expect

    expect(page.locator("#case-header")).to_contain_text(f"case {case_id}", timeout=120_000)
    expect(page.locator("#correct-DIAG")).to_contain_text("model says", timeout=120_000)
    page.locator("#case-header").click()  # where the reviewer's attention is: not in a field


def perform(reviewer: Reviewer, run: Run) -> None:
    from playwright.sync_api import expect

    reviewer.run, page = run, reviewer.page
    start = time.perf_counter()
    if run.task == "agree" and run.way == "mouse":
        reviewer.click("#verdict input[value=agree]")
        reviewer.click("#save-review")
    elif run.task == "agree":
        reviewer.key("a")
        reviewer.key("Enter")
    elif run.way == "mouse":
        reviewer.click("#verdict input[value=correct]")
        reviewer.choose("correct-DIAG", "SK")
        reviewer.choose("correct-BWV", "PRS")
        reviewer.click("#save-review")
    else:  # each case starts with the task cursor on DIAG
        reviewer.key("5")  # DIAG's fifth class: SK (BCC, NEV, MEL, MISC, SK)
        expect(page.locator("#correct-DIAG input")).to_have_value("SK", timeout=10_000)
        for _ in range(BWV_INDEX):
            reviewer.key("t")
        reviewer.key("2")  # BWV: ABS, PRS
        expect(page.locator("#correct-BWV input")).to_have_value("PRS", timeout=10_000)
        reviewer.key("Enter")
    expect(page.locator("#save-status")).to_contain_text(f"Saved: {run.task.split()[0]} for case {run.case}",
                                                         timeout=120_000)
    run.measured_s = round(time.perf_counter() - start, 2)


SECTION = """### Review speed: mouse only against the keys

`python benchmarks/review_speed.py` ({checkpoint}, {data}, headless Chromium at 1366x768, one
run): each task done for real on a case of its own, the row checked in the review log.
Human seconds by the keystroke-level model (K 0.28 s, P 1.1 s, B 0.1 s per press or release,
H 0.4 s, M 1.35 s per decision, the same decisions both ways); measured seconds are the app's
and the browser's share on this shared 2-core machine (noisy).

{table}

With the keys, agreeing takes {agree} of the mouse-only time and correcting two labels
{correct_two_labels} (KLM). The mouse-only path is what the app offered before the keys and
the one-screen layout; with the old layout (the form 1.5 screens below the images) each way
also paid a scroll."""


def derm7pt_queue(data_root: Path, folder: Path, n: int, cases=None) -> Path:
    """A manifest of Derm7pt test cases with both images (the first ``n``, or ``cases``), named c0, c1, ..."""
    import shutil

    import pandas as pd

    from skinnet.data import Derm7pt

    (folder / "img").mkdir(parents=True)
    if cases is None:
        cases = [c for c in Derm7pt(data_root).split("test") if not c.clinic_is_derm][:n]
    rows = []
    for i, case in enumerate(cases):
        for slot, path in (("clinical", case.clinical_path), ("dermoscopy", case.dermoscopy_path)):
            shutil.copy(path, folder / "img" / f"c{i}_{slot}{path.suffix.lower()}")
        rows.append({"case_id": f"c{i}", "clinical": f"img/c{i}_clinical{case.clinical_path.suffix.lower()}",
                     "dermoscopy": f"img/c{i}_dermoscopy{case.dermoscopy_path.suffix.lower()}"})
    pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)
    return folder / "manifest.csv"


def form_labels_of(checkpoint: Path, pairs) -> list[list[str]]:
    """The 8 labels the review form must show for each pair: the model's own answer, computed
    here from the same pixels the app shows (the app shrinks images the same way)."""
    from skinnet.imaging import load_rgb
    from skinnet.labels import TASKS
    from skinnet.predict import Predictor
    from skinnet.ui.views import task_label

    predictor = Predictor.from_checkpoint(checkpoint)
    labels = []
    for clinical, dermoscopy in pairs:
        prediction = predictor.predict(load_rgb(clinical), load_rgb(dermoscopy))
        hidden = prediction.checks is not None and not prediction.checks.trustworthy
        classes = prediction.heads[prediction.primary_head].classes
        labels.append([task_label(t, hidden=True) if hidden else task_label(t, classes[t.name]) for t in TASKS])
    return labels


def distinct_run(cases, labels, length: int) -> list[int]:
    """Indexes of ``length`` cases in which each differs from the one before in some form label."""
    chosen = [0]
    for i in range(1, len(cases)):
        if len(chosen) == length:
            break
        if labels[i] != labels[chosen[-1]]:
            chosen.append(i)
    if len(chosen) < length:
        raise SystemExit(f"only {len(chosen)} test cases in a row with differing predictions")
    return chosen


READY = """([caseId, labels, before]) => {
  const header = document.querySelector('#case-header');
  if (!header || !header.innerText.includes(`case ${caseId} (`)) return false;
  const images = ['#clinical-input img', '#dermoscopy-input img'].map((s) => document.querySelector(s));
  if (images.some((im) => !im || !im.complete || !im.naturalWidth || before.images.includes(im.src))) return false;
  const summary = document.querySelector('#summary');
  if (!summary || !summary.innerText.includes('head:') || summary.innerText === before.summary) return false;
  return labels.every((label, i) => {
    const el = document.querySelectorAll('#corrections [data-testid="block-info"]')[i];
    return el && el.innerText.trim() === label;
  });
}"""
SNAPSHOT = """() => ({images: ['#clinical-input img', '#dermoscopy-input img'].map(
  (s) => (document.querySelector(s) || {}).src || ''), summary: (document.querySelector('#summary') || {}).innerText || ''})"""


def next_case_latency(page, labels: list[list[str]], moves: int, dwell_s: float = 3.0) -> list[float]:
    """Seconds from pressing ``n`` to the next case being ready (see the module's doc), ``moves``
    times; between two moves the reviewer works on the case for ``dwell_s`` seconds."""
    page.wait_for_function(READY, arg=["c0", labels[0], {"images": [], "summary": ""}], timeout=180_000,
                           polling=25)
    seconds = []
    for i in range(1, moves + 1):
        before = page.evaluate(SNAPSHOT)
        page.locator("#case-header").click()  # the reviewer's focus: not in a field
        started = time.perf_counter()
        page.keyboard.press("n")
        page.wait_for_function(READY, arg=[f"c{i}", labels[i], before], timeout=180_000, polling=25)
        seconds.append(time.perf_counter() - started)
        print(f"move {i}: {seconds[-1]:.2f} s", flush=True)
        page.wait_for_timeout(dwell_s * 1000)  # the reviewer works on the case (the maps arrive meanwhile)
    return seconds


def percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q))


def measure_next_case(checkpoint: Path, data_root: Path, moves: int, dwell_s: float = 3.0) -> dict:
    """The next-case latency of ``moves`` presses of ``n`` on a queue of Derm7pt test pairs."""
    from playwright.sync_api import sync_playwright

    from skinnet.data import Derm7pt

    candidates = [c for c in Derm7pt(data_root).split("test") if not c.clinic_is_derm][:4 * moves]
    labels = form_labels_of(checkpoint, [(c.clinical_path, c.dermoscopy_path) for c in candidates])
    shown = [i for i, case_labels in enumerate(labels) if "prediction hidden" not in case_labels[0]]
    candidates, labels = [candidates[i] for i in shown], [labels[i] for i in shown]  # a hidden one waits for a click
    order = distinct_run(candidates, labels, moves + 1)
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        derm7pt_queue(data_root, folder / "queues" / "queue", 0, [candidates[i] for i in order])
        app = App(checkpoint, folder / "log", env={"SKINNET_QUEUE_ROOT": str(folder / "queues")})
        load = os.getloadavg()[0]
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1366, "height": 768})
                sign_in_and_open_queue(page, app.url)
                seconds = next_case_latency(page, [labels[i] for i in order], moves, dwell_s)
                browser.close()
        finally:
            app.stop()
    return {"moves": moves, "dwell_s": dwell_s, "seconds": [round(s, 3) for s in seconds], "median_s": round(percentile(seconds, 50), 3),
            "p90_s": round(percentile(seconds, 90), 3), "load_average_1min_at_start": round(load, 2),
            "load_average_1min_at_end": round(os.getloadavg()[0], 2)}


def sign_in_and_open_queue(page, url: str) -> None:
    page.goto(url + "/")
    page.get_by_label("username").fill(USER)
    page.get_by_label("password").fill(PASSWORD)
    page.get_by_role("button", name="Login").click()
    page.get_by_role("tab", name="Queue").click()
    page.locator("#queue-file input").click()
    page.get_by_role("option", name="queue/manifest.csv", exact=True).click()
    page.locator("#open-queue").click()
    page.get_by_role("tab", name="Review").click()


NEXT_CASE_JSON = ROOT / "benchmarks" / "results" / "review_speed_next_case.json"
NEXT_CASE_SECTION = """### Review speed: from `n` to the next case, ready

`python benchmarks/review_speed.py --data-root ... --only-next-case --tag TAG` ({checkpoint}, a queue of
Derm7pt test pairs, headless Chromium at 1366x768): `n` pressed {moves} times, each time timed until
the next case is ready (its header, both images drawn, the prediction's summary and all 8 "model
says" labels of the form for that case, checked against the model's own answer; the maps may
follow), the reviewer working on each case for a few seconds in between. `before`: the code before
issue 24 (the form's labels came after the maps, nothing prepared ahead); `after`: a move is one
round trip and the next case is prepared while the reviewer works on this one. Each a single run
on the shared 2-core machine, busy with a training run and other work (its load average is given):

{table}"""


def record_next_case(args) -> dict:
    """Time ``n`` and keep the result under ``--tag`` in ``review_speed_next_case.json``."""
    if not args.data_root:
        raise SystemExit("--only-next-case needs --data-root (real Derm7pt test pairs)")
    result = measure_next_case(Path(args.checkpoint), Path(args.data_root), args.moves, args.dwell)
    print(f"next case ready after n: median {result['median_s']:.2f} s, p90 {result['p90_s']:.2f} s "
          f"over {args.moves} moves (load average {result['load_average_1min_at_start']})")
    kept = json.loads(NEXT_CASE_JSON.read_text()) if NEXT_CASE_JSON.is_file() else {}
    kept[args.tag] = result
    NEXT_CASE_JSON.write_text(json.dumps(kept, indent=1) + "\n")
    write_next_case_section(Path(args.checkpoint).stem, kept)
    return result


def write_next_case_section(checkpoint: str, kept: dict) -> None:
    lines = ["| code | seconds on each case before `n` | median | p90 | load average (1 min) at start, end |",
             "|---|---|---|---|---|"]
    lines += [f"| {tag} | {r['dwell_s']:g} | {r['median_s']:.2f} s | {r['p90_s']:.2f} s | "
              f"{r['load_average_1min_at_start']}, {r['load_average_1min_at_end']} |" for tag, r in kept.items()]
    moves = {r["moves"] for r in kept.values()}
    write_section(ROOT / "docs" / "results.md", "review_next_case", NEXT_CASE_SECTION.format(
        checkpoint=checkpoint, moves="/".join(map(str, sorted(moves))), table="\n".join(lines)))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    parser.add_argument("--data-root", default=None, help="Derm7pt release_v0 (real pairs for the queue)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "review_speed.json"))
    parser.add_argument("--moves", type=int, default=20, help="presses of n timed for the next-case latency")
    parser.add_argument("--dwell", type=float, default=3.0,
                        help="seconds the reviewer works on each case before pressing n (by the keystroke-level "
                             "model an agree with the keys takes 1.9 s, correcting two labels 5.2 s)")
    parser.add_argument("--only-next-case", action="store_true", help="time the next case only (needs --data-root)")
    parser.add_argument("--tag", default="now", help="the key the next-case result is kept under (before, after)")
    args = parser.parse_args(argv)
    if args.only_next_case:
        return record_next_case(args)
    from playwright.sync_api import sync_playwright

    from skinnet.corrections import read_corrections

    plan = [("agree", "mouse"), ("agree", "keys"), ("correct two labels", "mouse"), ("correct two labels", "keys")]
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        if args.data_root:
            derm7pt_queue(Path(args.data_root), folder / "queues" / "queue", n=len(plan))
        else:
            write_queue(folder / "queues" / "queue", n=len(plan))
        app = App(Path(args.checkpoint), folder / "log", env={"SKINNET_QUEUE_ROOT": str(folder / "queues")})
        runs = []
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1366, "height": 768})
                sign_in_and_open_queue(page, app.url)
                reviewer = Reviewer(page)
                for number, (task, way) in enumerate(plan):
                    case = f"c{number}"
                    if number:
                        page.locator("#next-unreviewed").click()
                    wait_for_case(page, case)
                    run = Run(task, way, case)
                    reviewer.hand = "mouse" if way == "mouse" else "keys"  # each way starts with its hand in place
                    perform(reviewer, run)
                    runs.append(run)
                browser.close()
        finally:
            app.stop()
        rows, problems = read_corrections(folder / "log")
    assert not problems and [r["case_id"] for r in rows] == [r.case for r in runs], rows
    for row, run in zip(rows, runs):
        if run.task == "agree":
            assert row["verdict"] == "agree" and row["status_DIAG"] == "confirmed"
        else:
            assert row["verdict"] == "correct" and (row["DIAG"], row["BWV"]) == ("SK", "PRS")
            assert row["status_PN"] == "not reviewed"

    results = {"klm_seconds": KLM, "runs": [{**asdict(r), "actions": r.actions, "klm_s": r.klm_s} for r in runs]}
    for task in DECISIONS:
        mouse, keys = (next(r for r in runs if r.task == task and r.way == w) for w in ("mouse", "keys"))
        results[f"{task}: keys / mouse, KLM seconds"] = round(keys.klm_s / mouse.klm_s, 2)
    lines = ["| task | way | clicks | keys | human seconds (KLM) | measured seconds to 'Saved' |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r.task} | {r.way} | {r.actions['clicks']} | {r.actions['keys']} | {r.klm_s:.2f} | "
              f"{r.measured_s:.2f} |" for r in runs]
    table = "\n".join(lines)
    print(table)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    write_section(ROOT / "docs" / "results.md", "review_speed", SECTION.format(
        table=table, data="four Derm7pt test pairs" if args.data_root else "four synthetic pairs",
        checkpoint=Path(args.checkpoint).stem,
        **{k.split(":")[0].replace(" ", "_"): v for k, v in results.items() if k.endswith("KLM seconds")}))
    return results


if __name__ == "__main__":
    main()
