"""Prediction from a checkpoint: images in, calibrated per-head, per-task probabilities out."""
from __future__ import annotations

import queue
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
from PIL import Image

from .calibration import calibrate
from .checkpoint import ModelCard, file_sha256, load_checkpoint
from .guards import Checks, Guards, guard_features, guards_path
from .imaging import pixel_sha256
from .inference import FLIPS, flip_views, mean_over_views
from .labels import TASKS, seven_point_score, split_logits
from .model import MODALITIES, PairEncoding, SingleSharedNet
from .transforms import eval_transform

RECENT_PREDICTIONS = 16


@dataclass
class HeadPrediction:
    """One head's output: per task, the class probabilities (class name -> p) and the top class."""

    probabilities: dict[str, dict[str, float]]

    @property
    def classes(self) -> dict[str, str]:
        return {task: max(p, key=p.get) for task, p in self.probabilities.items()}

    @property
    def seven_point(self) -> int:
        return seven_point_score(self.classes)


@dataclass
class Prediction:
    """What the model says about one lesion.

    Attributes:
        heads: head name (clinical, dermoscopy, fused) -> its prediction; only the heads the
            given images allow (one image: that modality's head alone).
        modalities: which images were given.
    """

    heads: dict[str, HeadPrediction]
    modalities: tuple[str, ...]
    notes: list[str] = field(default_factory=list)
    checks: Checks | None = None
    """What the guards say (None: the checkpoint has no guards file)."""

    @property
    def primary_head(self) -> str:
        """The head to trust first: fused when both images exist, else the one there is."""
        return "fused" if "fused" in self.heads else next(iter(self.heads))


class ForwardPass(NamedTuple):
    """One pass of a batch through the model (:meth:`Predictor.forward_tensors`)."""

    logits: dict[str, torch.Tensor]
    """head -> (B, NUM_OUTPUTS) raw logits, flip-averaged if TTA is on."""
    features: dict[str, torch.Tensor]
    """given modality -> (B, D) guard features of the unflipped view."""
    encoding: PairEncoding | None = None
    """The unflipped view's encoding with attention and last-stage outputs, when asked."""


class Predictor:
    """A loaded checkpoint with its preprocessing, ready for single cases.

    Model calls take turns (:meth:`turn`): the app's handlers run in worker threads and
    Grad-CAM's hooks must only ever see their own request's forward pass.
    """

    def __init__(self, model: SingleSharedNet, card: ModelCard, checkpoint_sha256: str = "",
                 device: str = "cpu", guards: Guards | None = None, channels_last: bool = True):
        # channels-last: the same float32 arithmetic (to ~1e-6), faster convolutions on CPUs and GPUs
        self.layout = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(device, memory_format=self.layout).eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.card = card
        self.device = device
        self.checkpoint_sha256 = checkpoint_sha256
        self.transform = eval_transform(card.image_size, card.mean, card.std)
        self.guards = guards
        self.lock = threading.RLock()
        """Held for one model call at a time; take it with :meth:`turn`."""
        self.threads = torch.get_num_threads()
        """Intra-op threads of a model call that nobody else is waiting for."""
        self.threads_when_queued: int | None = 1
        """Intra-op threads of a call that others are queued behind (None: ``threads``)."""
        self._waiting = 0
        """Threads holding or queued for the model (under ``_waiting_lock``)."""
        self._waiting_lock = threading.Lock()
        self._depth = threading.local()
        self._recent_lock = threading.Lock()
        """Guards the remembered predictions only: a remembered one is read while the model runs."""
        self._recent: OrderedDict[tuple, tuple[Prediction, PairEncoding | None]] = OrderedDict()
        """Pixel hashes of a pair -> its prediction and its unflipped encoding (for the explanation)."""
        self.batcher: MicroBatcher | None = None

    def batch_concurrent_calls(self, max_batch: int = 8, wait_s: float = 0.003) -> "Predictor":
        """From now on, :meth:`predict` calls from several threads that arrive together go
        through the model as one batch (the app's visitors; see :class:`MicroBatcher`)."""
        self.batcher = MicroBatcher(self, max_batch, wait_s)
        return self

    @contextmanager
    def turn(self):
        """Hold the model for one call (re-entrant). A call that others are queued behind runs
        on ``threads_when_queued`` intra-op threads (1), leaving the other cores to the server's
        own work for the calls behind it (decoding, the queue, streaming answers); a call alone
        gets ``threads``.

        Why: with 10 clients on the 2-core CPU a forward pass took 77 ms in the server against
        53 ms alone, its two OpenMP threads stalling at every barrier whenever the server's
        threads took a core. ``benchmarks/latency.py`` measures the app with and without this
        rule in one run.
        """
        depth = getattr(self._depth, "n", 0)
        if depth:  # this thread already holds the model: same turn, same threads
            self._depth.n = depth + 1
            try:
                yield
            finally:
                self._depth.n = depth
            return
        with self._waiting_lock:
            self._waiting += 1
        counted = True
        try:
            with self.lock:
                self._depth.n = 1
                with self._waiting_lock:
                    queued = self._waiting > 1
                # under OpenMP this sets the calling thread's count (and the default of threads
                # started later): set only when it changes, each change resets oneDNN's caches
                before = torch.get_num_threads()
                wanted = (self.threads_when_queued or self.threads) if queued else self.threads
                if wanted != before:
                    torch.set_num_threads(wanted)
                try:
                    yield
                finally:
                    self._depth.n = 0
                    if wanted != before:
                        torch.set_num_threads(before)
                    with self._waiting_lock:  # before the lock goes: the next call must not count this one
                        self._waiting -= 1
                        counted = False
        finally:
            if counted:  # never got the lock
                with self._waiting_lock:
                    self._waiting -= 1

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu", guards: bool = True) -> "Predictor":
        """Load a checkpoint, and its guards file if one lies beside it (``guards=False``: never).

        Raises:
            ValueError: unreadable checkpoint, or a guards file fitted on other weights.
        """
        model, card = load_checkpoint(path, device)
        found = guards_path(Path(path).with_suffix(".safetensors"))
        checks = Guards.load(found, model) if guards and found.is_file() else None
        return cls(model, card, file_sha256(Path(path).with_suffix(".safetensors")), device, checks)

    @property
    def version(self) -> str:
        return f"{self.card.name}@{self.checkpoint_sha256[:12]}" if self.checkpoint_sha256 else self.card.name

    def to_tensor(self, image: Image.Image | None) -> torch.Tensor | None:
        return None if image is None else self.transform(image)[None].to(self.device)

    def forward(self, clinical: Image.Image | None, dermoscopy: Image.Image | None,
                tta: bool | None = None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Raw (uncalibrated) logits per head, (NUM_OUTPUTS,), flip-averaged if the card says so,
        and each given image's :func:`~skinnet.guards.guard_features` (unflipped view)."""
        if clinical is None and dermoscopy is None:
            raise ValueError("need a clinical image, a dermoscopy image, or both")
        logits, features, _ = self.forward_tensors(self.to_tensor(clinical), self.to_tensor(dermoscopy), tta)
        return {h: v[0] for h, v in logits.items()}, {m: v[0] for m, v in features.items()}

    @torch.inference_mode()
    def forward_tensors(self, clinical: torch.Tensor | None, dermoscopy: torch.Tensor | None,
                        tta: bool | None = None, keep_encoding: bool = False) -> ForwardPass:
        """:meth:`forward` for (B, 3, S, S) batches of preprocessed images: (B, NUM_OUTPUTS)
        logits per head and (B, D) guard features per given modality; with ``keep_encoding``
        also the unflipped view's attention and last-stage outputs, which is all an
        explanation needs (it then costs no second encoder pass).

        The flipped views of the whole batch go through the model as one batch: one forward
        pass, not four.
        """
        tta = self.card.tta if tta is None else tta
        n_views = len(FLIPS) if tta else 1
        given = {m: x for m, x in zip(MODALITIES, (clinical, dermoscopy)) if x is not None}
        n = next(iter(given.values())).shape[0]
        views = {m: flip_views(x, tta).contiguous(memory_format=self.layout) for m, x in given.items()}
        with self.turn():
            if len(views) == 2:
                encoding = self.model.encode_pair(views["clinical"], views["dermoscopy"], summaries=True,
                                                  return_attention=keep_encoding, keep_last_stage=keep_encoding)
            else:
                (modality, x), = views.items()
                encoding = PairEncoding(pooled={}, summaries={modality: []})
                encoding.pooled[modality] = self.model.encode_one(
                    x, modality, summaries=encoding.summaries[modality],
                    last_stage=encoding.last_stage if keep_encoding else None)
            out = self.model.classify(encoding.pooled)
        logits = {head: mean_over_views(value, n_views) for head, value in out.items()}
        unflipped = encoding.first(n)
        features = {m: guard_features(unflipped.summaries[m], unflipped.pooled[m]) for m in unflipped.pooled}
        if not keep_encoding:
            return ForwardPass(logits, features)
        unflipped.summaries = {}
        return ForwardPass(logits, features, unflipped)

    def logits(self, clinical: Image.Image | None, dermoscopy: Image.Image | None,
               tta: bool | None = None) -> dict[str, torch.Tensor]:
        """Raw (uncalibrated) logits per head, (NUM_OUTPUTS,), flip-averaged if the card says so."""
        return self.forward(clinical, dermoscopy, tta)[0]

    def predict(self, clinical: Image.Image | None, dermoscopy: Image.Image | None) -> Prediction:
        """Calibrated probabilities of every available head (clean RGB PIL images in).

        The last few results are remembered by the images' pixel hashes: the app asks for
        the same pair's prediction again to explain it and to fill the review form.
        """
        return self._remembered(clinical, dermoscopy)[0]

    def pair_encoding(self, clinical: Image.Image | None, dermoscopy: Image.Image | None) -> PairEncoding:
        """The unflipped view's encoding with attention and last-stage outputs: the one kept
        when the pair was just predicted (the app's flow: predict, then explain), else one
        forward pass of the unflipped pair."""
        return self._remembered(clinical, dermoscopy, need_encoding=True)[1]

    def _remembered(self, clinical: Image.Image | None, dermoscopy: Image.Image | None,
                    need_encoding: bool = False) -> tuple[Prediction, PairEncoding | None]:
        """The pair's (prediction, encoding) from the recent ones, else computed and remembered.
        The micro-batcher keeps no encoding: a pair it predicted runs once more, directly, when
        it is explained (never through the batcher, whose thread a caller holding the lock
        would wait on forever)."""
        if clinical is None and dermoscopy is None:
            raise ValueError("need a clinical image, a dermoscopy image, or both")
        key = tuple(None if im is None else pixel_sha256(im) for im in (clinical, dermoscopy))
        with self._recent_lock:
            found = self._recent.get(key)
            if found is not None and (found[1] is not None or not need_encoding):
                self._recent.move_to_end(key)
                return found
        if self.batcher and not need_encoding:
            found = self.batcher.predict(clinical, dermoscopy), None
        else:
            logits, features, encoding = self.forward_tensors(
                self.to_tensor(clinical), self.to_tensor(dermoscopy), keep_encoding=True)
            found = self._prediction({h: v[0] for h, v in logits.items()},
                                     {m: v[0] for m, v in features.items()}), encoding
        with self._recent_lock:
            self._recent[key] = found
            while len(self._recent) > RECENT_PREDICTIONS:
                self._recent.popitem(last=False)
        return found

    def forget(self) -> None:
        """Drop remembered predictions (benchmarks measure cold calls)."""
        with self._recent_lock:
            self._recent.clear()

    def predict_batch(self, pairs: list[tuple[Image.Image | None, Image.Image | None]],
                      batch_size: int = 8, tta: bool | None = None) -> list[Prediction]:
        """Predictions of many cases, several per forward pass (queue scoring). The model lock
        is held for one batch at a time, so other requests are served in between.

        Args:
            tta: None: as the card says; False: one view (a quarter of the work, for ranking).
        """
        results: list[Prediction | None] = [None] * len(pairs)
        groups: dict[tuple[bool, bool], list[int]] = {}
        for i, (clinical, dermoscopy) in enumerate(pairs):
            if clinical is None and dermoscopy is None:
                raise ValueError(f"case {i}: need a clinical image, a dermoscopy image, or both")
            groups.setdefault((clinical is not None, dermoscopy is not None), []).append(i)
        for (has_clinical, has_dermoscopy), indexes in groups.items():
            for start in range(0, len(indexes), batch_size):
                chunk = indexes[start:start + batch_size]
                stack = (lambda k: torch.cat([self.to_tensor(pairs[i][k]) for i in chunk]))
                logits, features, _ = self.forward_tensors(stack(0) if has_clinical else None,
                                                           stack(1) if has_dermoscopy else None, tta)
                for row, i in enumerate(chunk):
                    results[i] = self._prediction({h: v[row] for h, v in logits.items()},
                                                  {m: v[row] for m, v in features.items()})
        return results

    def _prediction(self, logits: dict[str, torch.Tensor], features: dict[str, torch.Tensor]) -> Prediction:
        heads = {}
        for head, flat in logits.items():
            calibrated = calibrate(flat, self.card.calibration.get(head))
            per_task = {}
            for task, task_logits in zip(TASKS, split_logits(calibrated).values()):
                probs = torch.softmax(task_logits, -1).tolist()
                per_task[task.name] = dict(zip(task.classes, probs))
            heads[head] = HeadPrediction(per_task)
        modalities = tuple(m for m in MODALITIES if m in features)
        notes = []
        if len(modalities) == 1:
            notes.append(f"Only the {modalities[0]} image was given: this is the {modalities[0]} head's "
                         "prediction alone, without cross-attention or fusion.")
        prediction = Prediction(heads, modalities, notes)
        if self.guards is not None:
            prediction.checks = self.guards.check(features, heads[prediction.primary_head].probabilities["DIAG"],
                                                  prediction.primary_head)
        return prediction


@dataclass
class _Waiting:
    pair: tuple[Image.Image | None, Image.Image | None]
    done: threading.Event = field(default_factory=threading.Event)
    result: Prediction | None = None
    error: BaseException | None = None


class MicroBatcher:
    """One worker thread that runs the predictions other threads ask for, several per forward
    pass: requests that queue up while the model is busy (or arrive within ``wait_s`` of the
    first) go through :meth:`Predictor.predict_batch` together, up to ``max_batch``.

    On an accelerator one batched forward of 8 pairs costs little more than one, so concurrent
    visitors get more answers per second; a lone request waits ``wait_s`` at most. The app
    turns it on only there: on the 2-core CPU a batch of flipped pairs cost more per pair than
    one pair (``benchmarks/latency.py``). Results equal unbatched ones (to float rounding:
    tests check 1e-5).
    """

    def __init__(self, predictor: Predictor, max_batch: int = 8, wait_s: float = 0.003):
        self.predictor, self.max_batch, self.wait_s = predictor, max_batch, wait_s
        self.batches: list[int] = []
        """Sizes of the batches run so far (the last 1000; benchmarks and tests read them)."""
        self._queue: queue.Queue[_Waiting] = queue.Queue()
        threading.Thread(target=self._run, name="skinnet-batcher", daemon=True).start()

    def predict(self, clinical: Image.Image | None, dermoscopy: Image.Image | None) -> Prediction:
        waiting = _Waiting((clinical, dermoscopy))
        self._queue.put(waiting)
        waiting.done.wait()
        if waiting.error is not None:
            raise waiting.error
        return waiting.result

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            deadline = time.monotonic() + self.wait_s
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            self.batches = (self.batches + [len(batch)])[-1000:]
            try:
                results = self.predictor.predict_batch([w.pair for w in batch], batch_size=self.max_batch)
            except BaseException as err:  # noqa: BLE001 (every waiting caller gets the error, the worker lives on)
                for w in batch:
                    w.error = err
                    w.done.set()
                continue
            for w, result in zip(batch, results):
                w.result = result
                w.done.set()
