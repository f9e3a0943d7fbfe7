"""Where the model looked: Grad-CAM per modality and the cross-attention maps, as overlays.

Grad-CAM with a shared encoder: wrapping the model "with the other image fixed" would run
the hooked encoder twice per forward and grad-cam keeps the first activation, so the
dermoscopy map could belong to the clinical photo. Here the pair is encoded once without
hooks, keeping what the other modality offers to cross-attention; then
:class:`OneModalityModel` runs the encoder once, on the explained image only, and its
output equals the full model's output for the pair (tested).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from PIL import Image, ImageDraw
from torch import nn

from .labels import TASK_BY_NAME, TASK_SLICES
from .model import MODALITIES, PairEncoding, SingleSharedNet
from .predict import Predictor

OVERLAY_SIZE = 320
COLORMAP = "jet"


class OneModalityModel(nn.Module):
    """``image -> head logits`` for one modality, the other modality held fixed.

    Args:
        model: the trained network.
        modality: the modality whose image is the input.
        head: the head whose logits are returned (the modality's own head, or ``fused``).
        partner: the pair's encoding (``keep_keys=True``), or None when only this image exists.
    """

    def __init__(self, model: SingleSharedNet, modality: str, head: str, partner: PairEncoding | None):
        super().__init__()
        other = MODALITIES[1 - MODALITIES.index(modality)]
        if head not in (modality, "fused"):
            raise ValueError(f"the {modality} image does not feed the {head} head")
        if head == "fused" and partner is None:
            raise ValueError("the fused head needs both images")
        self.model, self.modality, self.head, self.other = model, modality, head, other
        self.partner_keys = None if partner is None else {s: k[other] for s, k in partner.keys.items()}
        self.partner_pooled = None if partner is None else partner.pooled[other]

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        pooled = {self.modality: self.model.encode_one(image, self.modality, self.partner_keys)}
        if self.head == "fused":
            pooled[self.other] = self.partner_pooled.expand(image.shape[0], -1)
        return self.model.classify(pooled)[self.head]


class LogitTarget:
    """Grad-CAM target: one class logit of one task in a head's flat output."""

    def __init__(self, task: str, class_name: str):
        task_def = TASK_BY_NAME.get(task)
        if task_def is None:
            raise ValueError(f"unknown task {task!r}; tasks: {list(TASK_BY_NAME)}")
        if class_name not in task_def.classes:
            raise ValueError(f"{task} has no class {class_name!r}; classes: {list(task_def.classes)}")
        self.index = TASK_SLICES[task].start + task_def.classes.index(class_name)

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return output[..., self.index]


def _nhwc_to_nchw(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.permute(0, 3, 1, 2)


@dataclass
class Explanation:
    """Overlays for one case: Grad-CAM per modality and attention per stage and direction."""

    gradcam: dict[str, Image.Image]
    attention: dict[str, Image.Image]
    """``"stage 3: clinical->dermoscopy"`` -> overlay on the attended (key) image."""
    target: str


def gradcam_map(predictor: Predictor, image: torch.Tensor, modality: str, head: str,
                partner: PairEncoding | None, target: LogitTarget) -> np.ndarray:
    """Grad-CAM heat map in [0, 1] at input resolution for one modality's image."""
    from pytorch_grad_cam import GradCAM  # optional: only the explanation path needs grad-cam

    model = predictor.model
    encoder = model.encoder_for(modality)
    wrapper = OneModalityModel(model, modality, head, partner).eval()
    reshape = _nhwc_to_nchw if encoder.channels_last else None
    # Gradio handlers run in worker threads where grad mode may be off; parameters are
    # frozen, so the input must require grad for gradients to reach the hooked layer.
    with torch.enable_grad():
        image = image.clone().requires_grad_(True)
        with GradCAM(model=wrapper, target_layers=[encoder.neck], reshape_transform=reshape) as cam:
            heat = cam(input_tensor=image, targets=[target])
    return heat[0]


def attention_maps(encoding: PairEncoding) -> dict[tuple[int, str], np.ndarray]:
    """Mean attention over heads and queries, on the key grid, per (stage, direction)."""
    maps = {}
    for stage, directions in encoding.attention.items():
        h, w = encoding.grids[stage]
        for direction, weights in directions.items():
            grid = weights[0].mean(0).reshape(h, w).float().cpu().numpy()
            maps[(stage, direction)] = grid
    return maps


def overlay(image: Image.Image, heat: np.ndarray, caption: str, size: int = OVERLAY_SIZE,
            low: str = "low", high: str = "high") -> Image.Image:
    """Heat map (any grid, values normalised to its own range) over the image, with a colour bar."""
    heat = np.asarray(heat, dtype=np.float32)
    span = float(heat.max() - heat.min())
    heat = (heat - heat.min()) / span if span > 1e-12 else np.zeros_like(heat)
    heat = F.interpolate(torch.from_numpy(heat)[None, None], size=(size, size), mode="bilinear",
                         align_corners=False)[0, 0].clamp(0, 1).numpy()
    colours = colormaps[COLORMAP](heat)[..., :3]
    base = np.asarray(image.convert("RGB").resize((size, size), Image.BICUBIC), dtype=np.float32) / 255
    blended = (0.55 * base + 0.45 * colours) * 255
    bar_width, pad, caption_height = 18, 44, 22
    canvas = Image.new("RGB", (size + bar_width + pad + 8, size + caption_height), "white")
    canvas.paste(Image.fromarray(blended.astype(np.uint8)), (0, 0))
    gradient = colormaps[COLORMAP](np.linspace(1, 0, size))[:, :3]
    bar = (np.repeat(gradient[:, None, :], bar_width, axis=1) * 255).astype(np.uint8)
    canvas.paste(Image.fromarray(bar), (size + 6, 0))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, size + 5), caption, fill="black")
    draw.text((size + bar_width + 10, 0), high, fill="black")
    draw.text((size + bar_width + 10, size - 12), low, fill="black")
    return canvas


def explain(predictor: Predictor, clinical: Image.Image | None, dermoscopy: Image.Image | None,
            task: str = "DIAG", class_name: str | None = None, head: str | None = None) -> Explanation:
    """Grad-CAM of each given image for (head, task, class), and the cross-attention overlays.

    Args:
        task, class_name: what to explain; the class defaults to the primary head's prediction.
        head: ``fused`` (default with both images) or a modality's own head. With the fused
            head each image's map shows how it moved the fused logit; with a modality's head
            the other image's map is left out.
    """
    images = {"clinical": clinical, "dermoscopy": dermoscopy}
    given = [m for m in MODALITIES if images[m] is not None]
    if not given:
        raise ValueError("need a clinical image, a dermoscopy image, or both")
    head = head or ("fused" if len(given) == 2 else given[0])
    if class_name is None:
        class_name = predictor.predict(clinical, dermoscopy).heads[head].classes[task]
    target = LogitTarget(task, class_name)
    tensors = {m: predictor.to_tensor(images[m]) for m in given}
    display = {m: predictor.display_image(images[m]) for m in given}
    result = Explanation({}, {}, f"{head} head, {task} = {class_name}")
    with predictor.lock:
        encoding = None
        if len(given) == 2:
            with torch.no_grad():  # not inference_mode: its tensors cannot enter autograd
                encoding = predictor.model.encode_pair(tensors["clinical"], tensors["dermoscopy"],
                                                       return_attention=True, keep_keys=True)
        for modality in given:
            explained_head = head if head in (modality, "fused") else None
            if explained_head is None:
                continue
            heat = gradcam_map(predictor, tensors[modality], modality, explained_head, encoding, target)
            result.gradcam[modality] = overlay(display[modality], heat,
                                               f"Grad-CAM {modality}: {task} {class_name} ({head})")
    if encoding is not None:
        for (stage, direction), grid in attention_maps(encoding).items():
            attended = direction.split("->")[1]
            gate = float(torch.tanh(predictor.model.cross_attention[str(stage)].gate))
            label = f"stage {stage}: {direction}"
            result.attention[label] = overlay(display[attended], grid,
                                              f"{direction} attention, stage {stage} (gate {gate:+.2f})")
    return result
