"""Where the model looked: Grad-CAM per modality and the cross-attention maps, as overlays.

Grad-CAM reads the encoder's neck, which comes after the last cross-attention: everything it
differentiates lies between the last stage's output and the head. So the pair is encoded once
(the prediction's own unflipped forward pass keeps that output and the attention maps:
:meth:`Predictor.pair_encoding`) and :class:`HeadOnLastStage` runs only neck, pooling and head
for Grad-CAM. The map equals Grad-CAM over the whole network from the image, with the other
image held fixed (tested); nothing runs through the encoder again.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from matplotlib import colormaps
from PIL import Image, ImageDraw
from torch import nn

from .labels import TASK_BY_NAME, TASK_SLICES
from .model import MODALITIES, PairEncoding, SingleSharedNet
from .predict import Predictor

OVERLAY_SIZE = 320
COLORMAP = "jet"
COLOUR_TABLE = np.rint(colormaps[COLORMAP](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)
"""The colour map as 256 RGB rows: heat in [0, 1] -> row round(255 * heat)."""


class HeadOnLastStage(nn.Module):
    """``last-stage output -> head logits`` for one modality, the other modality held fixed.

    Args:
        model: the trained network.
        modality: the modality whose last-stage output is the input, (B, C, H, W) always
            (grad-cam sizes its map from the input's last two dimensions).
        head: the head whose logits are returned (the modality's own head, or ``fused``).
        encoding: the pair's (or the lone image's) encoding; ``fused`` takes the other
            modality's pooled features from it.
    """

    def __init__(self, model: SingleSharedNet, modality: str, head: str, encoding: PairEncoding):
        super().__init__()
        other = MODALITIES[1 - MODALITIES.index(modality)]
        if head not in (modality, "fused"):
            raise ValueError(f"the {modality} image does not feed the {head} head")
        if head == "fused" and other not in encoding.pooled:
            raise ValueError("the fused head needs both images")
        # Only the parts that run are submodules: grad-cam calls eval() on the wrapper, and with
        # the whole network inside that walk (~800 modules) took longer than the map itself.
        self.__dict__["model"] = model
        self.neck, self.heads = model.encoder_for(modality).neck, model.heads
        self.modality, self.head, self.other = modality, head, other
        # clone: tensors made under inference_mode cannot enter autograd
        self.partner_pooled = encoding.pooled[other].clone() if head == "fused" else None

    def forward(self, last_stage: torch.Tensor) -> torch.Tensor:
        if self.model.encoder_for(self.modality).channels_last:
            last_stage = last_stage.permute(0, 2, 3, 1)
        pooled = {self.modality: self.model.pool_last_stage(self.modality, last_stage)}
        if self.head == "fused":
            pooled[self.other] = self.partner_pooled.expand(last_stage.shape[0], -1)
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
    focus: dict[str, str] = field(default_factory=dict)
    """The same keys -> where that attention falls, in words (``"41% on the centre (28% of the picture): ..."``)."""


def gradcam_map(predictor: Predictor, encoding: PairEncoding, modality: str, head: str,
                target: LogitTarget) -> np.ndarray:
    """Grad-CAM heat map in [0, 1] at input resolution for one modality's image.

    Args:
        encoding: from :meth:`Predictor.pair_encoding`, holding the modality's last-stage output.
    """
    from pytorch_grad_cam import GradCAM  # optional: only the explanation path needs grad-cam
    from pytorch_grad_cam.utils.image import scale_cam_image

    model = predictor.model
    encoder = model.encoder_for(modality)
    wrapper = HeadOnLastStage(model, modality, head, encoding)
    last_stage = encoding.last_stage[modality].clone()
    if encoder.channels_last:
        last_stage = last_stage.permute(0, 3, 1, 2)
    reshape = _nhwc_to_nchw if encoder.channels_last else None
    # Gradio handlers run in worker threads where grad mode may be off (hence enable_grad).
    # The parameters are frozen: the neck's output is made a leaf that requires grad
    # (registered before grad-cam's own hook, which then sees the leaf), so there is a graph.
    cut = encoder.neck.register_forward_hook(lambda module, args, output: output.detach().requires_grad_(True))
    try:
        with torch.enable_grad():
            with GradCAM(model=wrapper, target_layers=[encoder.neck], reshape_transform=reshape) as cam:
                grid = cam(input_tensor=last_stage, targets=[target])  # (1, H, W) on the neck's grid
    finally:
        cut.remove()
    # as grad-cam brings a layer's map to its input image: resized, then stretched to [0, 1] again
    size = predictor.card.image_size
    return scale_cam_image(scale_cam_image(grid, (size, size)))[0]


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


CENTRE_RADIUS = 0.3
"""The centre region: key cells within this fraction of the square's side from its middle (a
disc over 28% of the square: 31-33% of the 12 x 12 and 6 x 6 key grids), where a close-up
photo or a dermoscopy image frames the lesion."""


def _centre_mask(shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    return np.hypot((xx + 0.5) / w - 0.5, (yy + 0.5) / h - 0.5) <= CENTRE_RADIUS


def _peak_place(grid: np.ndarray) -> str:
    """Where the map's largest cell lies in the square: its centre, an edge or a corner."""
    h, w = grid.shape
    y, x = np.unravel_index(int(np.argmax(grid)), grid.shape)
    fy, fx = (y + 0.5) / h, (x + 0.5) / w
    edges = [side for side, near in (("top", fy < 0.2), ("bottom", fy > 0.8), ("left", fx < 0.2),
                                     ("right", fx > 0.8)) if near]
    if len(edges) == 2:
        return f"in the {'-'.join(edges)} corner"
    if edges:
        return f"at the {edges[0]} edge"
    return "near the centre" if _centre_mask(grid.shape)[y, x] else "between the centre and the edge"


def attention_focus(grid: np.ndarray) -> tuple[float, float, str]:
    """(share of the attention on the centre region, that region's share of the map, in words).

    Words about *where* the attention is, relative to the lesion a photo frames in its middle:
    a peak alone said "a clear focus" for maps that peaked on background skin and corners.
    """
    weights = np.asarray(grid, dtype=np.float64)
    weights = weights / max(weights.sum(), 1e-12)
    centre = _centre_mask(weights.shape)
    on_centre, area = float(weights[centre].sum()), float(centre.mean())
    ratio = on_centre / max(area, 1e-12)
    where = ("mostly on the centre, where the lesion is framed" if ratio >= 1.5 else
             "mostly off the centre (surrounding skin, background, edges)" if ratio <= 2 / 3 else
             "spread over the centre and its surroundings")
    return on_centre, area, f"{100 * on_centre:.0f}% on the centre ({100 * area:.0f}% of the picture): {where}; " \
                            f"peak {_peak_place(weights)}"


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
    # PIL, not torch: a 320 x 320 resize is not worth waking torch's thread pool (slow under load)
    heat = np.clip(np.asarray(Image.fromarray(heat, mode="F").resize((size, size), Image.BILINEAR)), 0, 1)
    colours = Image.fromarray(COLOUR_TABLE[np.rint(heat * 255).astype(np.uint8)])
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
    base = full.resize((w, h), Image.BICUBIC)
    left, top = (w - size) // 2, (h - size) // 2
    seen = (left, top, left + size, top + size)
    picture = Image.blend(Image.new("RGB", (w, h), (128, 128, 128)), base, DIMMED)
    picture.paste(Image.blend(base.crop(seen), colours, 0.45), seen[:2])
    # the colour bar runs under the picture, not beside it: Gradio's image buttons sit in the
    # top-right corner and used to hide the bar's "high" end
    if (w, h) != (size, size):
        caption += "\ndimmed: cut off, not seen by the model"
    bar_row = 22
    caption_height = ImageDraw.Draw(picture).multiline_textbbox((0, 0), caption, spacing=2)[3] + 8
    canvas = Image.new("RGB", (w, h + bar_row + caption_height), "white")
    canvas.paste(picture, (0, 0))
    draw = ImageDraw.Draw(canvas)
    if (w, h) != (size, size):
        draw.rectangle((left, top, left + size - 1, top + size - 1), outline="white", width=2)
    low_width, high_width = draw.textlength(low), draw.textlength(high)
    start, stop = round(low_width) + 10, w - round(high_width) - 10
    gradient = COLOUR_TABLE[np.rint(np.linspace(0, 255, max(stop - start, 1))).astype(np.uint8)]
    canvas.paste(Image.fromarray(np.repeat(gradient[None, :, :], 12, axis=0)), (start, h + 5))
    draw.text((4, h + 5), low, fill="black")
    draw.text((stop + 6, h + 5), high, fill="black")
    draw.multiline_text((4, h + bar_row + 4), caption, fill="black", spacing=2)
    return canvas


def attention_overlay(image: Image.Image, grid: np.ndarray, caption: str) -> Image.Image:
    """Attention on a fixed scale, 0 to ATTENTION_SCALE x uniform, so that near-uniform attention
    looks flat; the caption says how much of it falls on the centre, where the lesion is framed."""
    ratio = np.asarray(grid, dtype=np.float32) * np.asarray(grid).size / max(float(np.sum(grid)), 1e-12)
    return overlay(image, ratio, f"{caption}\n{attention_focus(grid)[2]}",
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
    # each image is drawn under up to five maps: shrink it once to the overlays' size
    shown = {m: _shrunk(images[m], OVERLAY_SIZE) for m in given}
    result = Explanation({}, {}, f"{head} head, {task} = {class_name}")
    encoding = predictor.pair_encoding(clinical, dermoscopy)
    with predictor.turn():  # grad-cam's hooks must see only this request's passes
        for modality in given:
            if head not in (modality, "fused"):
                continue
            heat = gradcam_map(predictor, encoding, modality, head, target)
            result.gradcam[modality] = overlay(shown[modality], heat,
                                               f"Grad-CAM {modality}: {task} {class_name} ({head})")
    if len(given) == 2:
        for (stage, direction), grid in attention_maps(encoding).items():
            query, attended = direction.split("->")
            gate = float(torch.tanh(predictor.model.attention_module(stage, query).gate))
            label = f"stage {stage}: {direction}"
            result.attention[label] = attention_overlay(shown[attended], grid,
                                                        f"{direction}, stage {stage} (gate {gate:+.2f})")
            result.focus[label] = attention_focus(grid)[2]
    return result
