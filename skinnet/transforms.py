"""Image preprocessing: PIL transforms for single images, and a batched tensor path for training.

Both read size and normalisation from the model card (or the backbone's weights), never
from constants of their own. The tensor path decodes the dataset once into a uint8 cache
(:class:`ImageCache`, small enough to live on a GPU) and augments whole batches there
(:class:`BatchAugment`), which is what makes a Derm7pt epoch take seconds on a GPU.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision.transforms import v2

from .imaging import load_rgb


def resize_center_crop(image: Image.Image, size: int) -> Image.Image:
    """Resize the short side to ``size`` and cut the central ``size`` x ``size`` square."""
    scale = size / min(image.size)
    w, h = max(size, round(image.width * scale)), max(size, round(image.height * scale))
    image = image.resize((w, h), Image.BICUBIC)
    left, top = (w - size) // 2, (h - size) // 2
    return image.crop((left, top, left + size, top + size))


def eval_transform(image_size: int, mean: Sequence[float], std: Sequence[float]):
    """PIL RGB image -> normalised (3, S, S) float tensor, deterministic."""
    return v2.Compose([
        v2.Lambda(lambda im: resize_center_crop(im, image_size)),
        v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std),
    ])


def image_to_uint8(image: Image.Image, size: int) -> torch.Tensor:
    """(3, S, S) uint8 tensor of the resized, centre-cropped image."""
    array = np.asarray(resize_center_crop(image, size), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


class ImageCache:
    """All images of a list of cases decoded once: (N, 3, S, S) uint8 per modality.

    Derm7pt at 256 px is about 400 MB for both modalities of all 1011 cases.
    """

    def __init__(self, cases, size: int, device: str | torch.device = "cpu"):
        self.size = size
        self.case_ids = [c.case_id for c in cases]
        self.clinical = torch.stack([image_to_uint8(load_rgb(c.clinical_path), size) for c in cases]).to(device)
        self.dermoscopy = torch.stack([image_to_uint8(load_rgb(c.dermoscopy_path), size) for c in cases]).to(device)
        self.labels = torch.tensor([c.labels for c in cases], dtype=torch.long, device=device)
        self.has_clinical = torch.tensor([not c.clinic_is_derm for c in cases], device=device)

    def __len__(self) -> int:
        return len(self.case_ids)


class BatchAugment(nn.Module):
    """Random flips, rotation, zoom, shift and colour jitter for a uint8 batch, on its device.

    One affine warp per image (``affine_grid`` + ``grid_sample``, reflection padding), so the
    cost is one resampling whatever the combination. Output is float, normalised, at
    ``out_size``. ``train=False`` only resizes and normalises.
    """

    def __init__(self, out_size: int, mean: Sequence[float], std: Sequence[float],
                 zoom: tuple[float, float] = (0.75, 1.25), shift: float = 0.1,
                 rotate: bool = True, color: float = 0.2):
        super().__init__()
        self.out_size = out_size
        self.zoom, self.shift, self.rotate, self.color = zoom, shift, rotate, color
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def forward(self, images: torch.Tensor, train: bool = True) -> torch.Tensor:
        x = images.float() / 255.0
        if not train:
            if x.shape[-1] != self.out_size:
                x = F.interpolate(x, size=self.out_size, mode="bilinear", antialias=True, align_corners=False)
            return self.normalize(x)
        b, device = x.shape[0], x.device
        angle = torch.rand(b, device=device) * 2 * math.pi if self.rotate else torch.zeros(b, device=device)
        log_zoom = torch.empty(b, device=device).uniform_(math.log(self.zoom[0]), math.log(self.zoom[1]))
        scale = torch.exp(-log_zoom)  # sampling grid scale: < 1 zooms in
        flip_x = torch.where(torch.rand(b, device=device) < 0.5, -1.0, 1.0)
        cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
        theta = torch.stack([
            torch.stack([cos * flip_x, -sin, torch.empty(b, device=device).uniform_(-self.shift, self.shift)], 1),
            torch.stack([sin * flip_x, cos, torch.empty(b, device=device).uniform_(-self.shift, self.shift)], 1),
        ], 1)
        grid = F.affine_grid(theta, (b, 3, self.out_size, self.out_size), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        if self.color > 0:
            x = self._jitter(x)
        return self.normalize(x)

    def _jitter(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]

        def factor():
            return torch.empty(b, 1, 1, 1, device=x.device).uniform_(1 - self.color, 1 + self.color)

        x = x * factor()
        gray_mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - gray_mean) * factor() + gray_mean
        gray = (0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:]).expand_as(x)
        x = (x - gray) * factor() + gray
        return x.clamp(0, 1)
