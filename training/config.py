"""The whole configuration of a training run, typed, in one place.

``python -m training.train`` builds a :class:`TrainConfig` from its flags (``training.params``),
optionally on top of a named recipe file (``--recipe recipes/skinnet_lite2.toml``: the same
names as the fields, flags given on the command line win), and stores it whole in the model
card (``card.training["config"]``, less the machine's paths), so a card says exactly how its
model was made.
"""
from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
LOCAL_FIELDS = ("data_root", "out", "corrections", "folds_file", "device", "threads", "no_progress", "resume", "recipe")
"""Where and how this machine ran it, not what the model is: left out of the card."""


@dataclass
class TrainConfig:
    """Every choice of a training run (the flags of ``python -m training.train``, same names)."""

    # data: which cases are learnt and scored
    data_root: str
    out: str
    corrections: str | None = None
    corrections_rule: str = "latest"
    strict_corrections: bool = False
    refit: bool = False
    fold: int | None = None
    folds_file: str | None = None
    hold_out: int | None = None
    train_fraction: float = 1.0
    image_size: int = 224
    cache_size: int | None = None
    # augmentation (skinnet.transforms.BatchAugment)
    zoom: tuple[float, float] = (0.75, 1.25)
    shift: float = 0.1
    rotate: bool = True
    color: float = 0.2
    # model
    backbone: str = "tf_efficientnet_lite0"
    pretrained: str = "offline"
    two_encoders: bool = False
    cross_attention: tuple[int, ...] = (-2, -1)
    attention_sharing: str | None = None
    attention_dim: int | None = None
    attention_heads: int | None = None
    bn_mode: str | None = None
    dropout: float | None = None
    drop_path: float = 0.0
    init: str | None = None
    # optimisation
    loss_weights: dict[str, float] = field(default_factory=lambda: {"clinical": 0.2, "dermoscopy": 0.5, "fused": 0.3})
    task_weights: dict[str, float] = field(default_factory=dict)
    label_smoothing: float = 0.1
    mixup: float = 0.0
    distill: str | None = None
    distill_weight: float = 0.5
    distill_temperature: float = 2.0
    epochs: int = 40
    batch_size: int = 32
    lr: float = 1e-3
    backbone_lr_scale: float = 0.3
    weight_decay: float = 1e-4
    warmup_epochs: float = 2.0
    ema: float = 0.99
    swa_start: int = 0
    tta: bool = False
    # run
    seed: int = 0
    device: str | None = None
    precision: str = "auto"
    amp: bool = False
    channels_last: bool = True
    compile: bool = False
    resume: bool = False
    name: str = "model"
    score_test: bool = False
    no_test: bool = False
    limit_cases: int | None = None
    threads: int | None = None
    no_progress: bool = False
    recipe: str | None = None

    @property
    def cross_fit(self) -> bool:
        """A fold model of ``training.crossval`` (trains on train + valid less a fold)."""
        return self.fold is not None

    @property
    def keep_last(self) -> bool:
        """Keep the last epoch: nothing held out may select one (a refit), or must (a fold model)."""
        return self.refit or self.cross_fit

    def augmentation(self) -> dict[str, Any]:
        """``BatchAugment``'s keyword arguments."""
        return {"zoom": tuple(self.zoom), "shift": self.shift, "rotate": self.rotate, "color": self.color}

    def to_card(self) -> dict[str, Any]:
        """What the card keeps: every field but the machine's paths and run switches."""
        record = asdict(self)
        for name in LOCAL_FIELDS:
            record.pop(name, None)
        record["cross_attention"] = list(self.cross_attention)
        record["zoom"] = list(self.zoom)
        return record


def read_recipe(name_or_path: str) -> dict[str, Any]:
    """A recipe file's values (``recipes/<name>.toml`` or a path), checked against the fields.

    Raises:
        ValueError: no such file, or names that are not :class:`TrainConfig` fields.
    """
    path = Path(name_or_path)
    if not path.suffix:
        path = RECIPES / f"{name_or_path}.toml"
    if not path.is_file():
        known = sorted(p.stem for p in RECIPES.glob("*.toml"))
        raise ValueError(f"no recipe {name_or_path!r} (known: {known})")
    values = tomllib.loads(path.read_text())
    unknown = set(values) - {f.name for f in fields(TrainConfig)}
    if unknown:
        raise ValueError(f"{path}: {sorted(unknown)} are not training options")
    return values
