"""How a batch of preprocessed pairs becomes logits: the one prediction path.

The app (:class:`skinnet.predict.Predictor`, PIL images in) and every reported number
(``training.loop.predict_cache``, decoded image caches in) both predict through these
functions, so a test can hold them to the same probabilities (tests/test_training.py).
A card says whether its model predicts from the flips (``card.inference["tta"]``); input
size, normalisation and calibration are the card's ``image_size``, ``mean``, ``std`` and
``calibration``.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

FLIPS = ((), (3,), (2,), (2, 3))
"""The test-time views: the image, mirrored left-right, up-down, and both."""


def flip_views(images: torch.Tensor, tta: bool) -> torch.Tensor:
    """(V * B, 3, H, W): the batch under each view, views outermost (V = 4 with ``tta``, else 1),
    so that all views go through the model as one batch."""
    flips = FLIPS if tta else FLIPS[:1]
    return torch.cat([images.flip(dims) if dims else images for dims in flips])


def mean_over_views(values: torch.Tensor, n_views: int) -> torch.Tensor:
    """(V * B, ...) per-view outputs (as :func:`flip_views` orders them) -> (B, ...) their mean."""
    return values.float().view(n_views, values.shape[0] // n_views, *values.shape[1:]).mean(0)


@torch.inference_mode()
def predict_logits(model: nn.Module, clinical: torch.Tensor | None, dermoscopy: torch.Tensor | None,
                   tta: bool, precision: contextlib.AbstractContextManager | None = None) -> dict[str, torch.Tensor]:
    """Raw logits per head, (B, NUM_OUTPUTS), averaged over the views: either or both modalities.

    ``precision``: a context to run the forward pass in (e.g. bfloat16 autocast); float32 without.
    """
    n_views = len(FLIPS) if tta else 1
    given = {"clinical": clinical, "dermoscopy": dermoscopy}
    views = {m: flip_views(x, tta) if x is not None else None for m, x in given.items()}
    with precision or contextlib.nullcontext():
        out = model(views["clinical"], views["dermoscopy"])
    return {head: mean_over_views(logits, n_views) for head, logits in out.items()}
