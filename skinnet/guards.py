"""Checks on what the model was shown, made before its answer is believed.

Three questions, answered in the model's own feature space (:func:`guard_features`: each
stage's channel statistics and the pooled features, which :meth:`Predictor.forward` returns
with the logits, so the checks cost no extra forward pass):

- **Is this a skin lesion photo?** Mahalanobis distance of an image's features to the
  training images of the nearest modality (a Gaussian per modality, Ledoit-Wolf covariance:
  exact in its top principal components, one shared variance for the rest, so an image that
  is off in a minor direction, such as a flat colour, still counts), divided by a threshold:
  above 1 the image does not look like what the model was trained on.
- **Which modality does it look like?** A logistic regression on the same features, trained
  on Derm7pt clinical vs dermoscopy images in both slots: a pair whose clinical slot reads as
  dermoscopy and whose dermoscopy slot reads as clinical looks swapped.
- **Is the answer uncertain?** The margin between the two most probable diagnoses of the
  primary head; below a threshold chosen on out-of-fold predictions, refer the case.

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


def weights_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 of the model's tensors (names, shapes, float32 values), independent of the file
    they were stored in, so that re-saving a checkpoint with a new card keeps its guards."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().to(torch.float32).contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


@dataclass
class Checks:
    """What the guards say about one prediction (shown above it in the app).

    Attributes:
        not_lesion: the slots whose image does not look like a skin lesion photo.
        distance: slot -> distance to the training images, in thresholds (above 1: flagged).
        p_dermoscopy: slot -> probability that the image is a dermoscopy image.
        swapped: the clinical slot holds a dermoscopy image and the dermoscopy slot a clinical one.
        uncertain: the two most probable diagnoses are too close to call.
        margin: the primary head's top-2 diagnosis margin.
        margin_limit: that head's "uncertain" margin.
        accuracy_below: how often that head was right, out of fold, on cases below the limit.
    """

    not_lesion: tuple[str, ...] = ()
    distance: dict[str, float] = field(default_factory=dict)
    p_dermoscopy: dict[str, float] = field(default_factory=dict)
    swapped: bool = False
    wrong_slot: tuple[str, ...] = ()
    uncertain: bool = False
    margin: float = 1.0
    margin_limit: float = 0.0
    accuracy_below: float | None = None

    @property
    def trustworthy(self) -> bool:
        """False when the prediction should stay hidden until the user asks for it."""
        return not self.not_lesion


@dataclass
class Guards:
    """Fitted checks for one model's feature space (see the module docstring).

    Attributes:
        means: modality -> (D,) mean feature of that modality's training images.
        basis: modality -> (D, K) top K principal directions of that modality's features.
        scale: modality -> (K,) one over the standard deviation along each of them.
        residual_scale: modality -> one over the standard deviation of the other D - K directions.
        ood_threshold: distance (Mahalanobis, root mean square over the D dimensions) above
            which an image is "not a skin lesion photo".
        modality_weight, modality_bias: logistic regression, P(dermoscopy) = sigmoid(x @ w + b).
        uncertain_margin: head -> top-2 diagnosis margin below which its answer is "uncertain"
            (each head on its own out-of-fold predictions: a one-image head is less sure).
        uncertain_accuracy: head -> out-of-fold accuracy of the cases below that margin.
        fingerprint: :func:`weights_fingerprint` of the model the guards were fitted on.
        notes: how each number was chosen (shown in the Model tab and the docs).
    """

    means: dict[str, torch.Tensor]
    basis: dict[str, torch.Tensor]
    scale: dict[str, torch.Tensor]
    residual_scale: dict[str, float]
    ood_threshold: float
    modality_weight: torch.Tensor
    modality_bias: float
    uncertain_margin: dict[str, float]
    fingerprint: str
    notes: dict = field(default_factory=dict)
    uncertain_accuracy: dict[str, float] = field(default_factory=dict)

    def distance(self, features: torch.Tensor) -> torch.Tensor:
        """(..., D) features -> (...,) distance to the nearest modality's training images."""
        per_modality = []
        for m in MODALITIES:
            centred = features.float() - self.means[m]
            along = centred @ self.basis[m]
            residual = centred - along @ self.basis[m].T
            squared = (along * self.scale[m]).pow(2).sum(-1) + (residual * self.residual_scale[m]).pow(2).sum(-1)
            per_modality.append((squared / centred.shape[-1]).sqrt())
        return torch.stack(per_modality, -1).min(-1).values

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
        return Checks(not_lesion=not_lesion, distance=distance, p_dermoscopy=p_derm, swapped=swapped,
                      wrong_slot=wrong_slot, uncertain=margin < limit, margin=margin, margin_limit=limit,
                      accuracy_below=self.uncertain_accuracy.get(head))

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
        checks = {
            "ood_threshold": number(self.ood_threshold, 0.0, MAX_OOD_THRESHOLD, low_open=True),
            "residual_scale": all(number(float(v), 0.0, 1e12, low_open=True) for v in self.residual_scale.values()),
            "modality_bias": number(self.modality_bias, -1e6, 1e6),
            "uncertain_margin": all(number(float(v), 0.0, 1.0) for v in self.uncertain_margin.values()),
            "uncertain_accuracy": all(number(float(v), 0.0, 1.0) for v in self.uncertain_accuracy.values()),
            "tensors": len(dims) == 1 and all(
                self.means[m].shape == dims and self.basis[m].ndim == 2 and self.basis[m].shape[0] == dims[0]
                and self.scale[m].shape == self.basis[m].shape[1:]
                and all(bool(torch.isfinite(t).all()) for t in (self.means[m], self.basis[m], self.scale[m]))
                for m in MODALITIES) and bool(torch.isfinite(self.modality_weight).all()),
        }
        wrong = next((name for name, ok in checks.items() if not ok), None)
        if wrong:
            raise ValueError(f"{where}: the guards setting {wrong} is out of range or not finite "
                             f"(ood_threshold must be above 0 and at most {MAX_OOD_THRESHOLD:g}, margins and "
                             "accuracies from 0 to 1); refit it with python -m training.fit_guards")

    # -- storage --------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        tensors = {"modality_weight": self.modality_weight.float().contiguous()}
        for m in MODALITIES:
            tensors[f"mean.{m}"] = self.means[m].float().contiguous()
            tensors[f"basis.{m}"] = self.basis[m].float().contiguous()
            tensors[f"scale.{m}"] = self.scale[m].float().contiguous()
        settings = {"ood_threshold": self.ood_threshold, "residual_scale": self.residual_scale,
                    "modality_bias": self.modality_bias,
                    "uncertain_margin": self.uncertain_margin, "uncertain_accuracy": self.uncertain_accuracy,
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
            guards = cls(means={m: tensors[f"mean.{m}"] for m in MODALITIES},
                         basis={m: tensors[f"basis.{m}"] for m in MODALITIES},
                         scale={m: tensors[f"scale.{m}"] for m in MODALITIES},
                         residual_scale={m: float(settings["residual_scale"][m]) for m in MODALITIES},
                         ood_threshold=float(settings["ood_threshold"]),
                         modality_weight=tensors["modality_weight"],
                         modality_bias=float(settings["modality_bias"]),
                         uncertain_margin=_per_head(settings["uncertain_margin"]),
                         uncertain_accuracy=_per_head(settings.get("uncertain_accuracy", {})),
                         fingerprint=str(settings["fingerprint"]), notes=settings.get("notes", {}))
        except Exception as err:  # safetensors, JSON and missing keys all mean "not a guards file"
            raise ValueError(f"{path} is not a readable guards file ({type(err).__name__})") from None
        guards.validate(str(path))
        if model is not None and guards.fingerprint != weights_fingerprint(model):
            raise ValueError(f"{path} was fitted on other weights than the loaded checkpoint; "
                             "refit it with python -m training.fit_guards")
        return guards


def _per_head(value) -> dict[str, float]:
    """A per-head setting; a single number (guards of the first version) is the fused head's."""
    return {"fused": float(value)} if isinstance(value, (int, float)) else {k: float(v) for k, v in value.items()}


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


def uncertain_margin_from(margins: torch.Tensor, correct: torch.Tensor, worse_than: float = 0.5) -> float:
    """The largest margin t such that cases with a margin below t were right less often than
    ``worse_than`` (out-of-fold): below it, the model's answer is close to a coin toss."""
    order = margins.argsort()
    hits = correct[order].float().cumsum(0) / torch.arange(1, len(order) + 1)
    below = (hits < worse_than).nonzero()
    if len(below) == 0:
        return 0.0
    last = int(below[-1])
    return float(margins[order][last + 1]) if last + 1 < len(order) else float(margins.max())
