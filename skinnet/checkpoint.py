"""Checkpoints: fp16 safetensors weights beside a JSON model card.

The card is the single source of the architecture, input size, normalisation, label schema
and calibration for everything that uses a trained model (evaluation, prediction,
explanations, the app). Loading never unpickles and never touches the network.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from . import __version__
from .calibration import TEMPERATURE_RANGE, from_temperature
from .files import write_atomically
from .labels import TASK_BY_NAME, schema
from .model import HEADS, ModelConfig, SingleSharedNet, count_parameters

DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[1] / "checkpoints" / "skinnet_lite2.safetensors"
"""The shipped model: what the app, the benchmarks and the tests load unless told otherwise."""
CARD_FORMAT = 3  # 3: an inference section; 2: per-task temperature and class bias (1: one temperature per head)


@dataclass
class ModelCard:
    """What a checkpoint is: how to rebuild it, how to feed it, how it was made, how good it is.

    Attributes:
        name: file stem of the checkpoint.
        model: :class:`ModelConfig` fields.
        image_size: square input side in pixels.
        mean, std: input normalisation (RGB, 0..1 scale).
        labels: the label schema the heads were trained for (:func:`skinnet.labels.schema`).
        loss_weights: head -> weight used in training.
        calibration: head -> its calibration (:mod:`skinnet.calibration`); empty = uncalibrated.
        inference: how the model predicts beyond input size, normalisation and calibration:
            ``tta``, whether from the four flips (:mod:`skinnet.inference`). The training
            record keeps the recipe's own flag; this is what the app and evaluation use.
        training: seed, epochs, data (split, number of corrections used), hardware, time...
        metrics: split -> head -> task -> accuracy (and whatever else evaluation stores).
        params: number of parameters.
        weights: how the weights file stores them: ``float16`` (default), ``float32``, or
            ``int8`` (see :func:`quantize_int8`); kept when the checkpoint is re-saved.
        int8_min_elements: with ``int8``, only tensors at least this large are quantized.
    """

    name: str
    model: dict[str, Any]
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    labels: list[dict] = field(default_factory=schema)
    loss_weights: dict[str, float] = field(default_factory=dict)
    calibration: dict[str, dict] = field(default_factory=dict)
    inference: dict[str, Any] = field(default_factory=lambda: {"tta": False})
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    params: int = 0
    weights: str = "float16"
    int8_min_elements: int = 1024
    skinnet_version: str = __version__
    card_format: int = CARD_FORMAT
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    @property
    def model_config(self) -> ModelConfig:
        return ModelConfig(**self.model)

    @property
    def tta(self) -> bool:
        """Whether the model predicts from the four flips (averaged logits) or one view."""
        return bool(self.inference.get("tta", False))

    @property
    def trained_on_valid(self) -> bool:
        """A refit (``training.train --refit``): valid is in its training data, not held out."""
        return "valid" in self.training.get("data", {}).get("split", "").split("+")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict, where: str = "card") -> "ModelCard":
        if not isinstance(data, dict):
            raise ValueError(f"{where}: not a skinnet model card (not a JSON object)")
        known = set(cls.__dataclass_fields__)
        if "temperatures" in data and "calibration" not in data:  # format 1
            data = {**data, "calibration": {h: from_temperature(t) for h, t in data["temperatures"].items()}}
        if "inference" not in data:  # formats 1-2 kept the prediction's flips in the training record
            training = data.get("training") if isinstance(data.get("training"), dict) else {}
            data = {**data, "inference": {"tta": bool(training.get("tta", False))}}
        missing = [k for k in ("name", "model", "image_size", "mean", "std") if k not in data]
        if missing:
            raise ValueError(f"{where}: not a skinnet model card, missing {missing}")
        card = cls(**{k: v for k, v in data.items() if k in known})
        card.mean, card.std = tuple(card.mean), tuple(card.std)
        return card


def card_path(weights_path: Path) -> Path:
    return weights_path.with_suffix(".json")


CONTRACT_KEY = "skinnet_inference"
"""safetensors metadata key: the card fields that decide what the weights predict, written
with the weights, so that a card edited by hand or copied from another checkpoint is caught."""


def inference_contract(card: ModelCard) -> dict:
    """What must agree between a card and its weights: architecture, input, labels, calibration,
    and the test-time flips (the calibration was fitted on logits predicted with or without them)."""
    return json.loads(json.dumps({"model": card.model, "image_size": card.image_size, "mean": list(card.mean),
                                  "std": list(card.std), "labels": card.labels, "calibration": card.calibration,
                                  "tta": card.tta}))


BACKBONE_ARGUMENTS = {"drop_path_rate": float, "drop_rate": float, "embed_dim": int, "depths": list,
                      "num_heads": list, "img_size": int, "window_size": int}
"""The timm arguments a card may pass (architecture sizes and regularisation); any other, such as
``checkpoint_path`` or ``pretrained_cfg_overlay``, would make timm open files or the network."""
FIELD_TYPES = {"name": str, "model": dict, "labels": list, "loss_weights": dict, "calibration": dict,
               "training": dict, "metrics": dict, "params": int, "weights": str, "int8_min_elements": int}


def _validate_backbone_arguments(arguments, where: str) -> None:
    if not isinstance(arguments, dict):
        raise ValueError(f"{where}: model.backbone_kwargs must be a mapping")
    for key, value in arguments.items():
        kind = BACKBONE_ARGUMENTS.get(key)
        numbers = list(value) if kind is list and isinstance(value, (list, tuple)) else [value]
        if kind is None or not numbers or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                  and math.isfinite(v) and 0 <= v <= 4096 for v in numbers):
            raise ValueError(f"{where}: model.backbone_kwargs {key!r} is not an architecture setting skinnet "
                             f"accepts ({', '.join(BACKBONE_ARGUMENTS)}: numbers from 0 to 4096)")


def validate_card(card: ModelCard, where: str) -> None:
    """Values a model can run with: field types, sizes, normalisation, calibration shapes, and
    only architecture settings in the model's timm arguments.

    Raises:
        ValueError: the first value that is out of range, with where it is.
    """
    def finite(values) -> bool:
        return all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)

    for name, kind in FIELD_TYPES.items():
        if not isinstance(getattr(card, name), kind) or isinstance(getattr(card, name), bool):
            raise ValueError(f"{where}: {name} must be a {kind.__name__}")
    unknown = sorted(set(card.model) - set(ModelConfig.__dataclass_fields__))
    if unknown or not isinstance(card.model.get("backbone", ""), str):
        raise ValueError(f"{where}: model has settings skinnet does not know ({unknown[:3]}) or a backbone "
                         "that is not a name")
    _validate_backbone_arguments(card.model.get("backbone_kwargs", {}), where)
    if not isinstance(card.mean, (tuple, list)) or not isinstance(card.std, (tuple, list)):
        raise ValueError(f"{where}: mean and std must be lists of 3 numbers")
    if not isinstance(card.image_size, int) or not 32 <= card.image_size <= 2048:
        raise ValueError(f"{where}: image_size must be a whole number of pixels from 32 to 2048")
    if len(card.mean) != 3 or len(card.std) != 3 or not finite(card.mean) or not finite(card.std) \
            or min(card.std) <= 0:
        raise ValueError(f"{where}: mean and std must be 3 finite numbers each, std above 0")
    if not isinstance(card.calibration, dict):
        raise ValueError(f"{where}: calibration must be a mapping of heads")
    for head, tasks in card.calibration.items():
        if head not in HEADS or not isinstance(tasks, dict):
            raise ValueError(f"{where}: calibration for an unknown head {head!r}")
        for task, entry in tasks.items():
            if task not in TASK_BY_NAME or not isinstance(entry, dict):
                raise ValueError(f"{where}: calibration of {head} for an unknown task {task!r}")
            temperature, bias = entry.get("temperature", 1.0), entry.get("bias") or []
            if not finite([temperature]) or not TEMPERATURE_RANGE[0] <= temperature <= TEMPERATURE_RANGE[1]:
                raise ValueError(f"{where}: {head} {task} temperature must be within {TEMPERATURE_RANGE}")
            if not isinstance(bias, list) or not finite(bias) or len(bias) not in (0, TASK_BY_NAME[task].num_classes):
                raise ValueError(f"{where}: {head} {task} bias must be {TASK_BY_NAME[task].num_classes} numbers")


WEIGHT_FORMATS = ("float16", "float32", "int8")
SCALE_SUFFIX = ":int8_scale"


def quantize_int8(state: dict[str, torch.Tensor], min_elements: int = 1024) -> dict[str, torch.Tensor]:
    """Weight-only int8 storage: each weight matrix/kernel of >= ``min_elements`` values is
    stored as int8 with one float16 scale per output channel (symmetric, round to nearest);
    everything else as float16. The default (1024: all but biases, norms, gates) halves a
    float16 file; a high threshold quantizes only the widest layers, which are the least
    sensitive. :func:`dequantize` undoes it at load."""
    out = {}
    for key, value in state.items():
        value = value.detach().cpu()
        if value.is_floating_point() and value.ndim >= 2 and value.numel() >= min_elements:
            flat = value.float().reshape(value.shape[0], -1)
            scale = (flat.abs().amax(1) / 127).clamp_min(1e-12).half()
            out[key] = (flat / scale.float()[:, None]).round().clamp(-127, 127).to(torch.int8).reshape(value.shape)
            out[key + SCALE_SUFFIX] = scale
        else:
            out[key] = value.half() if value.is_floating_point() else value
    return out


def dequantize(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Float tensors back from :func:`quantize_int8`'s layout (other layouts pass through)."""
    out = {}
    for key, value in state.items():
        if key.endswith(SCALE_SUFFIX):
            continue
        scale = state.get(key + SCALE_SUFFIX)
        if scale is not None:
            value = value.float() * scale.float().reshape(-1, *[1] * (value.ndim - 1))
        out[key] = value
    return out


def save_checkpoint(model: SingleSharedNet, card: ModelCard, path: str | Path,
                    weights_format: str | None = None) -> Path:
    """Write ``<path>.safetensors`` (weights) and ``<path>.json`` (card).

    Args:
        weights_format: one of WEIGHT_FORMATS; default: the card's (``float16`` for a new card).

    Returns:
        The weights path.
    """
    weights_format = weights_format or card.weights
    if weights_format not in WEIGHT_FORMATS:
        raise ValueError(f"weights format must be one of {WEIGHT_FORMATS}, got {weights_format!r}")
    weights = Path(path).with_suffix(".safetensors")
    card.name = weights.stem
    card.card_format = CARD_FORMAT  # written in this version's layout, whatever it was read from
    card.model = model.config.to_dict()
    card.params = count_parameters(model)
    card.weights = weights_format
    if weights_format == "int8":
        state = quantize_int8(model.state_dict(), card.int8_min_elements)
    else:
        dtype = getattr(torch, weights_format)
        state = {k: (v.to(dtype) if v.is_floating_point() else v).detach().cpu().contiguous()
                 for k, v in model.state_dict().items()}
    metadata = {"format": "pt", CONTRACT_KEY: json.dumps(inference_contract(card), sort_keys=True)}
    # 0644: a checkpoint is meant to be shared
    write_atomically(weights, lambda tmp: save_file(state, tmp, metadata=metadata), mode=0o644)
    write_atomically(card_path(weights), card.to_json(), mode=0o644)
    return weights


def update_card(card: ModelCard, path: str | Path) -> Path:
    """Rewrite only the card beside saved weights, for fields the weights do not bind (metrics,
    the training record): the weights file, and so its hash, stay as they are (re-saving equal
    tensors can change the file's bytes: safetensors writes its metadata in no fixed order).

    Raises:
        ValueError: the card's inference fields differ from those the weights were saved with.
    """
    weights = Path(path).with_suffix(".safetensors")
    with safe_open(str(weights), "pt") as handle:
        bound = json.loads((handle.metadata() or {}).get(CONTRACT_KEY, "null"))
    if bound != inference_contract(card):
        raise ValueError(f"{weights.name}: the card's inference fields changed; save the checkpoint instead")
    write_atomically(card_path(weights), card.to_json(), mode=0o644)
    return weights


def read_card(path: str | Path) -> ModelCard:
    """The card of a checkpoint (``.safetensors`` or ``.json`` path), checked against the schema.

    Raises:
        FileNotFoundError: no card beside the weights.
        ValueError: not a card, or trained for another label schema.
    """
    json_path = card_path(Path(path))
    if not json_path.is_file():
        raise FileNotFoundError(f"model card {json_path} not found (a checkpoint is a .safetensors "
                                "file with a .json card beside it)")
    try:
        data = json.loads(json_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{json_path} is not valid JSON: {err}") from None
    except RecursionError:
        raise ValueError(f"{json_path} is not valid JSON for a card: it is nested too deeply") from None
    card = ModelCard.from_dict(data, str(json_path))
    validate_card(card, str(json_path))
    if card.labels != schema():
        raise ValueError(f"{json_path}: the checkpoint was trained for another label schema "
                         f"({[t.get('name') for t in card.labels]} with its classes) than this "
                         "skinnet's Derm7pt 8-task schema")
    return card


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[SingleSharedNet, ModelCard]:
    """Rebuild the model from its card (``pretrained=False``) and load the weights.

    Raises:
        FileNotFoundError: weights or card missing.
        ValueError: card/schema mismatch, or weights that do not fit the card's architecture.
    """
    weights = Path(path).with_suffix(".safetensors")
    if not weights.is_file():
        raise FileNotFoundError(f"checkpoint weights {weights} not found")
    card = read_card(weights)
    try:
        with safe_open(str(weights), framework="pt") as handle:
            metadata = handle.metadata() or {}
            state = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as err:  # safetensors raises its own error types for truncated or foreign files
        raise ValueError(f"{weights} is not a readable safetensors file ({err})") from None
    try:
        written = json.loads(metadata[CONTRACT_KEY])
        assert isinstance(written, dict)
    except (KeyError, ValueError, RecursionError, AssertionError):
        raise ValueError(f"{weights} says nothing about the card it belongs to (no {CONTRACT_KEY} metadata): "
                         "re-save it with skinnet (save_checkpoint) from a card you trust") from None
    # files written before "tta" joined the contract are not checked on it
    differ = sorted(k for k, v in inference_contract(card).items() if written.get(k, v if k == "tta" else None) != v)
    if differ:
        raise ValueError(f"{card_path(weights)} disagrees with its weights file on {differ}: the card was "
                         "edited or belongs to other weights")
    try:
        model = SingleSharedNet(card.model_config, pretrained=False)
    except Exception as err:  # timm and torch raise many kinds for an architecture they cannot build
        reason = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        raise ValueError(f"{card_path(weights)}: cannot build its model ({reason})") from None
    state = dequantize(state)
    reference = model.state_dict()
    missing = sorted(set(reference) - set(state))
    unexpected = sorted(set(state) - set(reference))
    wrong = [k for k in reference if k in state and state[k].shape != reference[k].shape]
    if missing or unexpected or wrong:
        raise ValueError(f"{weights} does not match its card's architecture "
                         f"({card.model.get('backbone')}): missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}, wrong shapes {wrong[:3]}")
    model.load_state_dict({k: v.to(reference[k].dtype) for k, v in state.items()})
    return model.to(device).eval(), card


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
