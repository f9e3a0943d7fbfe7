"""Checks on what the model was shown, made before its answer is believed.

Three questions, answered in the model's own feature space (:func:`guard_features`: each
stage's channel statistics and the pooled features, which :meth:`Predictor.forward` returns
with the logits, so the checks cost no extra forward pass):

- **Is this a skin lesion photo?** For each block of the features (each stage's channel
  statistics, the pooled features), the Mahalanobis distance of an image to the training
  images of the nearest modality (a Gaussian per modality, Ledoit-Wolf covariance: exact in
  its top principal components, one shared variance for the rest, so an image that is off in a
  minor direction, such as a flat colour, still counts), in units of that block's distances of
  unseen lesions; the largest over the blocks, divided by a threshold: above 1 the image does
  not look like what the model was trained on. One Gaussian over all blocks let the 1280
  pooled dimensions drown the early stages' colour and texture, where pictures that are not
  lesions differ most: they sat at 1.0-1.3x the threshold.
- **Which modality does it look like?** A logistic regression on the same features, trained
  on Derm7pt clinical vs dermoscopy images in both slots: a pair whose clinical slot reads as
  dermoscopy and whose dermoscopy slot reads as clinical looks swapped.
- **How sure is the answer?** The margin between the two most probable diagnoses of the
  primary head puts a case in one of three levels: "uncertain" (the least sure sixth or so of
  unseen cases: refer it), "low confidence" (the next band) or "confident". The limits are
  quantiles of out-of-fold margins, and each level keeps how often the model was right there,
  which the app says beside the answer.

The fitted numbers live in ``<checkpoint>.guards.safetensors`` beside the checkpoint (written
by ``python -m training.fit_guards``), bound to the weights they were fitted on by a
fingerprint of the model's tensors: guards of other weights are refused, not misapplied.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .model import MODALITIES

GUARDS_SUFFIX = ".guards.safetensors"
MAX_OOD_THRESHOLD = 100.0
"""Distances are root-mean-square standard deviations from the training images (about 1 for
them; the shipped threshold is 1.27): a threshold above this would flag nothing."""
SETTINGS_KEY = "skinnet.guards"


def guards_path(checkpoint: str | Path) -> Path:
    """Where a checkpoint's guards live: ``skinnet_lite2.safetensors`` -> ``skinnet_lite2.guards.safetensors``."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.name.removesuffix(".safetensors") + GUARDS_SUFFIX)


def guard_features(summaries: list[torch.Tensor], pooled: torch.Tensor) -> torch.Tensor:
    """What the guards look at, (B, D): the channel means and standard deviations of every stage
    but the first and the pooled features, each unit-normalised, side by side.

    Measured on Derm7pt with a fold model (fitted on its training folds, scored on its unseen
    fold and on 53 pictures that are not lesions): the pooled features alone separate badly
    (pictures that are not lesions land *closer* to the training images' mean than unseen
    lesions do); the earlier stages' statistics describe texture and colour, where they differ.
    """
    parts = [*summaries[1:], pooled.float()]
    return torch.cat([torch.nn.functional.normalize(p, dim=-1) for p in parts], -1)


def guard_feature_blocks(summaries: list[torch.Tensor], pooled: torch.Tensor) -> list[tuple[int, int]]:
    """The column ranges of :func:`guard_features`' parts: each stage's statistics, the pooled features."""
    ends = torch.tensor([p.shape[-1] for p in [*summaries[1:], pooled]]).cumsum(0).tolist()
    return list(zip([0, *ends[:-1]], ends))


def weights_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 of the model's tensors (names, shapes, float32 values), independent of the file
    they were stored in, so that re-saving a checkpoint with a new card keeps its guards."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().to(torch.float32).contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


UNCERTAIN, LOW_CONFIDENCE, CONFIDENT = "uncertain", "low confidence", "confident"
LEVELS = (UNCERTAIN, LOW_CONFIDENCE, CONFIDENT)
LEVEL_SHARES = (0.175, 0.40)
"""Out-of-fold share of cases below the "uncertain" limit and below the "low confidence" limit:
the least sure 17.5% are uncertain (risk-coverage: that is where accuracy falls to a coin toss),
the next 22.5% low confidence."""


@dataclass
class Checks:
    """What the guards say about one prediction (shown above it in the app).

    Attributes:
        not_lesion: the slots whose image does not look like a skin lesion photo.
        distance: slot -> distance to the training images, in thresholds (above 1: flagged).
        p_dermoscopy: slot -> probability that the image is a dermoscopy image.
        swapped: the clinical slot holds a dermoscopy image and the dermoscopy slot a clinical one.
        level: how sure the answer is: uncertain, low confidence or confident (LEVELS).
        margin: the primary head's top-2 diagnosis margin.
        margin_limit: that head's "uncertain" limit; low_limit: its "low confidence" limit.
        meaning: what the level meant out of fold: ``share`` of the unseen cases, the head's
            ``accuracy`` on them, out of ``cases`` (None: not fitted).
    """

    not_lesion: tuple[str, ...] = ()
    distance: dict[str, float] = field(default_factory=dict)
    p_dermoscopy: dict[str, float] = field(default_factory=dict)
    swapped: bool = False
    wrong_slot: tuple[str, ...] = ()
    level: str = CONFIDENT
    margin: float = 1.0
    margin_limit: float = 0.0
    low_limit: float = 0.0
    meaning: dict | None = None

    @property
    def uncertain(self) -> bool:
        return self.level == UNCERTAIN

    @property
    def trustworthy(self) -> bool:
        """False when the prediction should stay hidden until the user asks for it: an image
        that is not a lesion photo, or a pair that looks swapped (its diagnosis would read as
        an answer about the wrong images)."""
        return not self.not_lesion and not self.swapped


@dataclass
class FeatureBlock:
    """One block of the guard features (columns ``start:stop``) with a Gaussian per modality.

    Attributes:
        means: modality -> mean of that modality's training images in this block.
        basis: modality -> (d, K) top K principal directions; scale: (K,) one over the
            standard deviation along each; residual_scale: one over the standard deviation of
            the other d - K directions.
        unseen: the block's distance that unseen lesions exceed 1% of the time (distances are
            given in this unit, so blocks of any size compare).
    """

    start: int
    stop: int
    means: dict[str, torch.Tensor]
    basis: dict[str, torch.Tensor]
    scale: dict[str, torch.Tensor]
    residual_scale: dict[str, float]
    unseen: float = 1.0

    def distance(self, features: torch.Tensor) -> torch.Tensor:
        """(..., D) features -> (...,) distance to the nearest modality's training images (root
        mean square Mahalanobis over the block's dimensions, in units of ``unseen``)."""
        x = features[..., self.start:self.stop].float()
        per_modality = []
        for m in MODALITIES:
            centred = x - self.means[m]
            along = centred @ self.basis[m]
            residual = centred - along @ self.basis[m].T
            squared = (along * self.scale[m]).pow(2).sum(-1) + (residual * self.residual_scale[m]).pow(2).sum(-1)
            per_modality.append((squared / centred.shape[-1]).sqrt())
        return torch.stack(per_modality, -1).min(-1).values / self.unseen


@dataclass
class Guards:
    """Fitted checks for one model's feature space (see the module docstring).

    Attributes:
        blocks: the feature blocks, each with its Gaussians (:class:`FeatureBlock`).
        ood_threshold: distance (the largest over the blocks) above which an image is "not a
            skin lesion photo".
        modality_weight, modality_bias: logistic regression, P(dermoscopy) = sigmoid(x @ w + b).
        uncertain_margin: head -> top-2 diagnosis margin below which its answer is "uncertain"
            (each head on its own out-of-fold predictions: a one-image head is less sure).
        low_confidence_margin: head -> margin below which it is "low confidence" (none: no such level).
        levels: head -> level -> its out-of-fold ``share``, ``accuracy`` and ``cases``.
        fingerprint: :func:`weights_fingerprint` of the model the guards were fitted on.
        notes: how each number was chosen (shown in the Model tab and the docs).
    """

    blocks: list[FeatureBlock]
    ood_threshold: float
    modality_weight: torch.Tensor
    modality_bias: float
    uncertain_margin: dict[str, float]
    fingerprint: str
    notes: dict = field(default_factory=dict)
    low_confidence_margin: dict[str, float] = field(default_factory=dict)
    levels: dict[str, dict[str, dict]] = field(default_factory=dict)

    @property
    def feature_size(self) -> int:
        return self.blocks[-1].stop

    def distance(self, features: torch.Tensor) -> torch.Tensor:
        """(..., D) features -> (...,) the largest block distance to the training images."""
        return torch.stack([block.distance(features) for block in self.blocks], -1).max(-1).values

    def p_dermoscopy(self, features: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(features.float() @ self.modality_weight + self.modality_bias)

    def check(self, features: dict[str, torch.Tensor], diagnosis: dict[str, float], head: str = "fused") -> Checks:
        """Checks of one case.

        Args:
            features: slot (clinical, dermoscopy) -> (D,) pooled features of the image given there.
            diagnosis: the primary head's DIAG probabilities (class -> p).
            head: which head that is (each has its own "uncertain" margin).
        """
        distance = {m: float(self.distance(f)) / self.ood_threshold for m, f in features.items()}
        p_derm = {m: float(self.p_dermoscopy(f)) for m, f in features.items()}
        not_lesion = tuple(m for m in features if distance[m] > 1.0)
        reads_as = {m: "dermoscopy" if p > 0.5 else "clinical" for m, p in p_derm.items()}
        wrong_slot = tuple(m for m in features if m not in not_lesion and reads_as[m] != m)
        swapped = len(features) == 2 and set(wrong_slot) == set(MODALITIES)
        top2 = sorted(diagnosis.values(), reverse=True)[:2]
        margin = top2[0] - (top2[1] if len(top2) > 1 else 0.0)
        limit = self.uncertain_margin.get(head, self.uncertain_margin.get("fused", 0.0))
        low = max(limit, self.low_confidence_margin.get(head, self.low_confidence_margin.get("fused", 0.0)))
        level = UNCERTAIN if margin < limit else LOW_CONFIDENCE if margin < low else CONFIDENT
        return Checks(not_lesion=not_lesion, distance=distance, p_dermoscopy=p_derm, swapped=swapped,
                      wrong_slot=wrong_slot, level=level, margin=margin, margin_limit=limit, low_limit=low,
                      meaning=self.levels.get(head, {}).get(level))

    def validate(self, where: str) -> None:
        """Refuse settings that would switch a check off or break it: a threshold no image can
        pass (1e30), NaN (every comparison false), margins outside 0..1, shapes that disagree.

        Raises:
            ValueError: the first setting out of range, named.
        """
        def number(value, low: float, high: float, low_open: bool = False) -> bool:
            return isinstance(value, float) and math.isfinite(value) and (low < value if low_open else low <= value) \
                and value <= high

        dims = self.modality_weight.shape

        def block_ok(block: FeatureBlock) -> bool:
            width = block.stop - block.start
            return 0 <= block.start < block.stop and number(float(block.unseen), 0.0, 1e12, low_open=True) and all(
                block.means[m].shape == (width,) and block.basis[m].ndim == 2 and block.basis[m].shape[0] == width
                and block.scale[m].shape == block.basis[m].shape[1:]
                and number(float(block.residual_scale[m]), 0.0, 1e12, low_open=True)
                and all(bool(torch.isfinite(t).all()) for t in (block.means[m], block.basis[m], block.scale[m]))
                for m in MODALITIES)

        accuracies = [level.get(key, 0.0) for by_level in self.levels.values() for level in by_level.values()
                      for key in ("share", "accuracy")]
        checks = {
            "ood_threshold": number(self.ood_threshold, 0.0, MAX_OOD_THRESHOLD, low_open=True),
            "blocks": bool(self.blocks) and all(block_ok(b) for b in self.blocks)
            and all(a.stop == b.start for a, b in zip(self.blocks, self.blocks[1:])),
            "modality_bias": number(self.modality_bias, -1e6, 1e6),
            "uncertain_margin": all(number(float(v), 0.0, 1.0) for v in self.uncertain_margin.values()),
            "low_confidence_margin": all(number(float(v), 0.0, 1.0) for v in self.low_confidence_margin.values()),
            "levels": all(number(float(v), 0.0, 1.0) for v in accuracies),
            "modality_weight": len(dims) == 1 and dims[0] == self.feature_size
            and bool(torch.isfinite(self.modality_weight).all()),
        }
        wrong = next((name for name, ok in checks.items() if not ok), None)
        if wrong:
            raise ValueError(f"{where}: the guards setting {wrong} is out of range or not finite "
                             f"(ood_threshold must be above 0 and at most {MAX_OOD_THRESHOLD:g}, margins and "
                             "accuracies from 0 to 1); refit it with python -m training.fit_guards")

    # -- storage --------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        tensors = {"modality_weight": self.modality_weight.float().contiguous()}
        for i, block in enumerate(self.blocks):
            for m in MODALITIES:
                for name in ("means", "basis", "scale"):
                    tensors[f"block{i}.{name}.{m}"] = getattr(block, name)[m].float().contiguous()
        blocks = [{"start": b.start, "stop": b.stop, "residual_scale": b.residual_scale, "unseen": b.unseen}
                  for b in self.blocks]
        settings = {"ood_threshold": self.ood_threshold, "blocks": blocks,
                    "modality_bias": self.modality_bias,
                    "uncertain_margin": self.uncertain_margin, "low_confidence_margin": self.low_confidence_margin,
                    "levels": self.levels,
                    "fingerprint": self.fingerprint,
                    "notes": self.notes}
        path = Path(path)
        save_file(tensors, str(path), metadata={SETTINGS_KEY: json.dumps(settings)})
        return path

    @classmethod
    def load(cls, path: str | Path, model: torch.nn.Module | None = None) -> "Guards":
        """Read guards; with ``model``, refuse guards fitted on other weights.

        Raises:
            ValueError: unreadable file, or fitted on other weights.
        """
        try:
            with safe_open(str(path), framework="pt") as handle:
                settings = json.loads((handle.metadata() or {})[SETTINGS_KEY])
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}
            guards = cls(blocks=_read_blocks(settings, tensors),
                         ood_threshold=float(settings["ood_threshold"]),
                         modality_weight=tensors["modality_weight"],
                         modality_bias=float(settings["modality_bias"]),
                         uncertain_margin=_per_head(settings["uncertain_margin"]),
                         low_confidence_margin=_per_head(settings.get("low_confidence_margin", {})),
                         levels=settings.get("levels") or _old_levels(settings.get("uncertain_accuracy", {})),
                         fingerprint=str(settings["fingerprint"]), notes=settings.get("notes", {}))
        except Exception as err:  # safetensors, JSON and missing keys all mean "not a guards file"
            raise ValueError(f"{path} is not a readable guards file ({type(err).__name__})") from None
        guards.validate(str(path))
        if model is not None and guards.fingerprint != weights_fingerprint(model):
            raise ValueError(f"{path} was fitted on other weights than the loaded checkpoint; "
                             "refit it with python -m training.fit_guards")
        return guards


def _read_blocks(settings: dict, tensors: dict) -> list[FeatureBlock]:
    if "blocks" not in settings:  # guards of the first version: one Gaussian over all the features
        size = tensors["mean.clinical"].shape[-1]
        return [FeatureBlock(0, size, *({m: tensors[f"{name}.{m}"] for m in MODALITIES} for name in ("mean", "basis", "scale")),
                             {m: float(settings["residual_scale"][m]) for m in MODALITIES})]
    return [FeatureBlock(int(b["start"]), int(b["stop"]),
                         *({m: tensors[f"block{i}.{name}.{m}"] for m in MODALITIES} for name in ("means", "basis", "scale")),
                         {m: float(b["residual_scale"][m]) for m in MODALITIES}, float(b["unseen"]))
            for i, b in enumerate(settings["blocks"])]


def _per_head(value) -> dict[str, float]:
    """A per-head setting; a single number (guards of the first version) is the fused head's."""
    return {"fused": float(value)} if isinstance(value, (int, float)) else {k: float(v) for k, v in value.items()}


def _old_levels(uncertain_accuracy) -> dict:
    """Guards written before the levels kept only the accuracy below the uncertain margin."""
    return {head: {UNCERTAIN: {"accuracy": accuracy}} for head, accuracy in _per_head(uncertain_accuracy).items()}


def fit_gaussian(features: torch.Tensor, components: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """(N, D) features -> (mean, basis (D, K), scale (K,), residual scale) of a Ledoit-Wolf
    Gaussian: its top K principal directions kept, the others given their mean variance.

    The shrunk covariance ``(1 - a) S + a mu I`` has the sample covariance's eigenvectors, so
    one thin SVD of the centred features gives everything (no D x D eigendecomposition).
    """
    from sklearn.covariance import ledoit_wolf_shrinkage

    x = features.double()
    mean = x.mean(0)
    centred = x - mean
    n, dim = centred.shape
    shrinkage = float(ledoit_wolf_shrinkage(centred.numpy(), assume_centered=True))
    _, singular, vectors = torch.linalg.svd(centred, full_matrices=False)
    sample = singular.pow(2) / n  # eigenvalues of S; the other dim - len(sample) are 0
    mu = float(sample.sum()) / dim
    shrunk = (1 - shrinkage) * sample + shrinkage * mu
    k = min(components, len(sample))
    residual_var = ((1 - shrinkage) * float(sample[k:].sum()) + (dim - k) * shrinkage * mu) / max(dim - k, 1)
    return (mean.float(), vectors[:k].T.float(), shrunk[:k].clamp_min(1e-12).rsqrt().float(),
            max(residual_var, 1e-12) ** -0.5)


def fit_modality(features: torch.Tensor, is_dermoscopy: torch.Tensor, c: float = 0.1
                 ) -> tuple[torch.Tensor, float]:
    """Logistic regression P(dermoscopy | features) on standardised features, folded back into
    one weight vector and bias over raw features."""
    from sklearn.linear_model import LogisticRegression

    x = features.double()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    fit = LogisticRegression(C=c, max_iter=2000).fit(((x - mean) / std).numpy(), is_dermoscopy.numpy())
    w = torch.from_numpy(fit.coef_[0]) / std
    b = float(fit.intercept_[0]) - float((mean * w).sum())
    return w.float(), b


def confidence_levels(margins: torch.Tensor, correct: torch.Tensor, shares: tuple[float, float] = LEVEL_SHARES
                      ) -> tuple[float, float, dict[str, dict]]:
    """(uncertain limit, low-confidence limit, level -> share, accuracy and cases) from
    out-of-fold top-2 margins and whether each case was right: the limits are the margins'
    ``shares`` quantiles, so the least sure ``shares[0]`` of unseen cases are "uncertain"."""
    uncertain, low = (float(margins.double().quantile(q)) for q in shares)
    bands = {UNCERTAIN: margins < uncertain, LOW_CONFIDENCE: (margins >= uncertain) & (margins < low),
             CONFIDENT: margins >= low}
    levels = {name: {"share": float(band.float().mean()), "cases": len(margins),
                     "accuracy": float(correct[band].float().mean()) if band.any() else None}
              for name, band in bands.items()}
    return uncertain, low, levels
