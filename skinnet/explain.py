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
    # Gradio handlers run in worker threads where grad mode may be off (hence enable_grad).
    # The parameters are frozen, so the graph starts at the hooked layer: its output becomes
    # a leaf that requires grad (registered before grad-cam's own hook, which then sees the
    # leaf). The backward pass stops there instead of running through the whole encoder; the
    # gradient at the layer, and so the map, is the same (tests/test_explain.py).
    cut = encoder.neck.register_forward_hook(lambda module, args, output: output.detach().requires_grad_(True))
    try:
        with torch.enable_grad():
            with GradCAM(model=wrapper, target_layers=[encoder.neck], reshape_transform=reshape) as cam:
                heat = cam(input_tensor=image, targets=[target])
    finally:
        cut.remove()
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


ATTENTION_SCALE = 4.0
"""Attention overlays run from 0 to this many times uniform attention (1/N of N key cells)."""
DIMMED = 0.35


def attention_focus(grid: np.ndarray) -> tuple[float, float, str]:
    """(peak as a multiple of uniform attention, spread: entropy / log N, in words)."""
    weights = np.asarray(grid, dtype=np.float64).ravel()
    weights = weights / max(weights.sum(), 1e-12)
    n = weights.size
    peak = float(weights.max() * n)
    spread = float(-(weights * np.log(np.clip(weights, 1e-12, None))).sum() / np.log(n)) if n > 1 else 1.0
    words = ("spread evenly, no focus" if peak < 1.5 else "a mild focus" if peak < 3 else "a clear focus")
    return peak, spread, words


def _shrunk(image: Image.Image, short_side: int) -> Image.Image:
    """The image with its short side at ``short_side`` (never enlarged)."""
    factor = short_side / min(image.size)
    if factor >= 1:
        return image
    return image.convert("RGB").resize((max(short_side, round(image.width * factor)),
                                        max(short_side, round(image.height * factor))), Image.BICUBIC)


def overlay(image: Image.Image, heat: np.ndarray, caption: str, size: int = OVERLAY_SIZE,
            low: str = "low", high: str = "high", scale: tuple[float, float] | None = None) -> Image.Image:
    """Heat map (any grid) over the square the model saw, with a colour bar.

    The whole image is drawn: the model sees its central square (short side resized, the long
    side cut), so the cut-off parts are shown dimmed rather than the photo being squashed or
    silently cropped. Values are normalised to their own range, or to ``scale`` (low, high) when
    a fixed scale must keep a flat map looking flat.
    """
    heat = np.asarray(heat, dtype=np.float32)
    lo, hi = (float(heat.min()), float(heat.max())) if scale is None else scale
    heat = (heat - lo) / (hi - lo) if hi - lo > 1e-12 else np.zeros_like(heat)
    heat = F.interpolate(torch.from_numpy(heat)[None, None], size=(size, size), mode="bilinear",
                         align_corners=False)[0, 0].clamp(0, 1).numpy()
    colours = colormaps[COLORMAP](heat)[..., :3]
    full = image.convert("RGB")
    factor = size / min(full.size)
    w, h = max(size, round(full.width * factor)), max(size, round(full.height * factor))
    if w > 2 * size:  # a very long photo: keep at most half a square of context on each side
        keep = full.width * 2 * size / w
        full = full.crop((round((full.width - keep) / 2), 0, round((full.width + keep) / 2), full.height))
        w = 2 * size
    if h > 2 * size:
        keep = full.height * 2 * size / h
        full = full.crop((0, round((full.height - keep) / 2), full.width, round((full.height + keep) / 2)))
        h = 2 * size
    base = np.asarray(full.resize((w, h), Image.BICUBIC), dtype=np.float32) / 255
    left, top = (w - size) // 2, (h - size) // 2
    picture = DIMMED * base + (1 - DIMMED) * 0.5
    picture[top:top + size, left:left + size] = 0.55 * base[top:top + size, left:left + size] + 0.45 * colours
    bar_width, pad, caption_height = 18, 44, 36
    canvas = Image.new("RGB", (w + bar_width + pad + 8, h + caption_height), "white")
    canvas.paste(Image.fromarray((picture * 255).astype(np.uint8)), (0, 0))
    draw = ImageDraw.Draw(canvas)
    if (w, h) != (size, size):
        draw.rectangle((left, top, left + size - 1, top + size - 1), outline="white", width=2)
        caption += "\ndimmed: cut off, not seen by the model"
    gradient = colormaps[COLORMAP](np.linspace(1, 0, h))[:, :3]
    bar = (np.repeat(gradient[:, None, :], bar_width, axis=1) * 255).astype(np.uint8)
    canvas.paste(Image.fromarray(bar), (w + 6, 0))
    draw.multiline_text((4, h + 4), caption, fill="black", spacing=2)
    draw.text((w + bar_width + 10, 0), high, fill="black")
    draw.text((w + bar_width + 10, h - 12), low, fill="black")
    return canvas


def attention_overlay(image: Image.Image, grid: np.ndarray, caption: str) -> Image.Image:
    """Attention on a fixed scale, 0 to ATTENTION_SCALE x uniform, so that near-uniform attention
    looks flat; the caption says how focused it is."""
    peak, spread, words = attention_focus(grid)
    ratio = np.asarray(grid, dtype=np.float32) * np.asarray(grid).size / max(float(np.sum(grid)), 1e-12)
    return overlay(image, ratio, f"{caption}\n{words}: peak {peak:.1f}x uniform, spread {100 * spread:.0f}%",
                   low="0", high=f"{ATTENTION_SCALE:g}x unif.", scale=(0.0, ATTENTION_SCALE))


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
    # each image is drawn under up to five maps: shrink it once to the overlays' size
    shown = {m: _shrunk(images[m], OVERLAY_SIZE) for m in given}
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
            result.gradcam[modality] = overlay(shown[modality], heat,
                                               f"Grad-CAM {modality}: {task} {class_name} ({head})")
    if encoding is not None:
        for (stage, direction), grid in attention_maps(encoding).items():
            attended = direction.split("->")[1]
            gate = float(torch.tanh(predictor.model.cross_attention[str(stage)].gate))
            label = f"stage {stage}: {direction}"
            result.attention[label] = attention_overlay(shown[attended], grid,
                                                        f"{direction}, stage {stage} (gate {gate:+.2f})")
    return result
