"""Honest maps: attention on a fixed scale, the cut-off parts of a photo shown as such, and the
model-randomisation sanity check for Grad-CAM (Adebayo et al. 2018)."""
import copy

import numpy as np
import pytest
import torch
from PIL import Image
from skinnet_testkit.synthetic import lesion_image

from skinnet.explain import attention_focus, attention_overlay, gradcam_map, overlay
from skinnet.predict import Predictor

from skinnet.checkpoint import DEFAULT_CHECKPOINT as SHIPPED


def _square(canvas: Image.Image, size: int = 320) -> np.ndarray:
    return np.asarray(canvas, dtype=np.float32)[:size, :size]


def test_flat_attention_looks_flat_and_the_caption_says_where_attention_falls():
    image = Image.new("RGB", (320, 320), (200, 160, 140))
    uniform = np.full((6, 6), 1 / 36)
    peaked = np.full((6, 6), 0.2 / 35)
    peaked[2, 3] = 0.8
    on_centre, area, words = attention_focus(uniform)
    assert on_centre == pytest.approx(area) and area == pytest.approx(12 / 36)  # the 12 middle cells of 36
    assert "spread over the centre and its surroundings" in words
    on_centre, _, words = attention_focus(peaked)
    assert on_centre > 0.8 and "mostly on the centre" in words and words.endswith("peak near the centre")
    # a sharp peak on a corner, the background: not "a clear focus" (what the caption used to say)
    cornered = np.full((6, 6), 0.2 / 35)
    cornered[0, 5] = 0.8
    on_centre, _, words = attention_focus(cornered)
    assert on_centre < 0.1 and "mostly off the centre" in words and words.endswith("peak in the top-right corner")
    assert "focus" not in words
    # min-max scaling would stretch a 1% ripple on a uniform map to the full colour range; this does not
    ripple = uniform * (1 + 0.01 * np.random.default_rng(0).standard_normal((6, 6)))
    flat, sharp = _square(attention_overlay(image, ripple, "x")), _square(attention_overlay(image, peaked, "x"))
    assert flat.std(axis=(0, 1)).max() < 3 and sharp.std(axis=(0, 1)).max() > 20
    stretched = _square(overlay(image, ripple, "x"))
    assert stretched.std(axis=(0, 1)).max() > 20


def test_a_wide_photo_is_shown_whole_with_the_cut_off_sides_dimmed():
    photo = Image.new("RGB", (600, 400), (230, 230, 230))
    canvas = np.asarray(overlay(photo, np.zeros((4, 4)), "x"), dtype=np.float32)
    assert canvas.shape[1] > 480 - 1  # 600 x 400 shown at 480 x 320, not squashed to 320 x 320
    side, centre = canvas[:320, 10:70].mean((0, 1)), canvas[:320, 100:380].mean((0, 1))
    assert side == pytest.approx([0.35 * 230 + 0.65 * 127.5] * 3, abs=2)  # dimmed grey, no heat colour
    assert centre[2] > centre[0] + 40  # the seen square carries the (low: blue) heat colours


@pytest.mark.skipif(not SHIPPED.is_file(), reason="needs the shipped checkpoint")
def test_gradcam_of_randomised_weights_differs_from_the_trained_model():
    """Cascading randomisation from the top: if the map were a property of the image alone
    (an edge detector), it would survive; a faithful map must change."""
    predictor = Predictor.from_checkpoint(SHIPPED)
    rng = np.random.default_rng(0)
    image = lesion_image(rng, size=(300, 200), tint=2)
    from skinnet.explain import LogitTarget

    target = LogitTarget("DIAG", "MEL")
    trained = gradcam_map(predictor, predictor.pair_encoding(None, image), "dermoscopy", "dermoscopy", target)
    randomised = Predictor(copy.deepcopy(predictor.model), predictor.card)
    torch.manual_seed(0)
    layers = [randomised.model.heads, randomised.model.encoder.neck, randomised.model.encoder.stages[-1]]
    for layer in layers:
        for module in layer.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    random_map = gradcam_map(randomised, randomised.pair_encoding(None, image), "dermoscopy", "dermoscopy", target)
    rank = lambda m: np.argsort(np.argsort(m.ravel()))  # noqa: E731
    spearman = np.corrcoef(rank(trained), rank(random_map))[0, 1]
    assert trained.std() > 0 and spearman < 0.5, spearman


def test_a_very_long_image_gives_a_bounded_overlay():
    """A 1024 x 1 picture must not become a 327,680-pixel-wide canvas (memory)."""
    canvas = overlay(Image.new("RGB", (1024, 1), (200, 100, 50)), np.zeros((4, 4)), "x")
    assert canvas.width <= 2 * 320 + 100 and canvas.height <= 2 * 320 + 60


class FromImage(torch.nn.Module):
    """The plain way to Grad-CAM one image of a pair: image -> the whole encoder (cross-attending
    to the other image's kept key tokens) -> head; the gradient flows back to the input."""

    def __init__(self, model, modality, head, pair):
        super().__init__()
        self.model, self.modality, self.head, self.pair = model, modality, head, pair

    def forward(self, image):
        other = "clinical" if self.modality == "dermoscopy" else "dermoscopy"
        keys = None if self.pair is None else {s: k[other] for s, k in self.pair.keys.items()}
        pooled = {self.modality: self.model.encode_one(image, self.modality, keys)}
        if self.head == "fused":
            pooled[other] = self.pair.pooled[other]
        return self.model.classify(pooled)[self.head]


@pytest.mark.skipif(not SHIPPED.is_file(), reason="needs the shipped checkpoint")
def test_gradcam_from_the_kept_last_stage_equals_plain_gradcam_from_the_image():
    """gradcam_map differentiates only neck, pooling and head, from the prediction's own
    last-stage output; the map must equal grad-cam run the plain way on the image, with the
    gradient flowing through the whole encoder, for the fused head of a pair (cross-attention to
    the other image in between) and for a lone image's head."""
    from pytorch_grad_cam import GradCAM

    from skinnet.explain import LogitTarget, _nhwc_to_nchw

    predictor = Predictor.from_checkpoint(SHIPPED)
    rng = np.random.default_rng(3)
    clinical, derm = lesion_image(rng, size=(300, 200), tint=1), lesion_image(rng, size=(240, 240), tint=3)
    x_c, x_d = predictor.to_tensor(clinical), predictor.to_tensor(derm)
    with torch.no_grad():
        pair = predictor.model.encode_pair(x_c, x_d, keep_keys=True)
    target = LogitTarget("DIAG", "MEL")
    for head, given, partner in (("fused", (clinical, derm), pair), ("dermoscopy", (None, derm), None)):
        fast = gradcam_map(predictor, predictor.pair_encoding(*given), "dermoscopy", head, target)
        encoder = predictor.model.encoder_for("dermoscopy")
        plain_model = FromImage(predictor.model, "dermoscopy", head, partner).eval()
        with torch.enable_grad(), GradCAM(model=plain_model, target_layers=[encoder.neck],
                                          reshape_transform=_nhwc_to_nchw if encoder.channels_last else None) as cam:
            plain = cam(input_tensor=x_d.clone().requires_grad_(True), targets=[target])[0]
        assert fast.std() > 0.01
        np.testing.assert_allclose(fast, plain, atol=1e-5)


def test_the_colour_bar_runs_under_the_picture_clear_of_the_image_buttons():
    """Gradio draws its download / full-screen buttons over an image's top-right corner: the
    colour bar and its 'high' label sit under the picture, low on the left, high on the right."""
    from skinnet.explain import COLOUR_TABLE

    canvas = np.asarray(overlay(Image.new("RGB", (300, 200), (90, 60, 40)), np.zeros((4, 4)), "x", high="5x unif."))
    height, width = 320, 480  # the 3:2 photo at the model's 320 px short side, nothing beside it
    assert canvas.shape[1] == width and canvas.shape[0] > height + 20
    assert (canvas[:40, -40:] != 255).any(axis=-1).all()  # the top-right corner is picture, no white label strip
    bar = canvas[height + 10].astype(int)
    coloured = np.flatnonzero(np.abs(bar - 255).sum(-1) > 30)
    runs = np.split(coloured, np.flatnonzero(np.diff(coloured) > 1) + 1)
    run = max(runs, key=len)  # the bar; the labels' letters are short runs either side of it
    assert len(run) > width / 2 and run[0] > 10 and run[-1] < width - 40  # room for 'low' and '5x unif.'
    assert np.abs(bar[run[0]] - COLOUR_TABLE[0]).sum() < 40
    assert np.abs(bar[run[-1]] - COLOUR_TABLE[255]).sum() < 40
    # a three-line caption (attention on a 3:2 photo) fits: its last line is not cut off
    three = np.asarray(attention_overlay(Image.new("RGB", (300, 200)), np.ones((6, 6)), "a -> b, stage 3"))
    assert np.flatnonzero((three[height + 22:] != 255).any(axis=(1, 2)))[-1] < three.shape[0] - height - 22 - 2
    assert three.shape[0] - height - 22 >= 3 * 11  # room for three lines of PIL's default font
