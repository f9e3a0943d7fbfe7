"""Opening untrusted images safely: orientation applied, metadata dropped, one RGB format.

Every image that enters skinnet (dataset files, uploads in the app) goes through
:func:`load_rgb` or :func:`to_clean_rgb`, so no EXIF/GPS block, ICC profile, comment or
original file name travels any further than this module.
"""
from __future__ import annotations

import hashlib
import io
import threading
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_PIXELS = 40_000_000
"""Refuse larger images (decompression bombs); a 40 MP photo is larger than any dermatoscope's."""
MAX_SIDE = 1024
"""Images are kept at most this many pixels on their long side (JPEGs are decoded at a reduced
scale, others shrunk right after decoding): the model sees 192-224 px, a reviewer's image
panel a few hundred, Derm7pt's images are 768 px, and a 40 MP image would hold 120 MB per
copy, several copies per request."""
SHRINKABLE_MODES = ("RGB", "RGBA", "L", "LA", "CMYK", "YCbCr")
"""Modes shrunk as soon as they are decoded; the others (16-bit, float, palette) are first
converted at full size through wider arrays, so they get a lower pixel limit."""
MAX_PIXELS_OTHER_MODES = 12_000_000
DECODE_SLOTS = 2
"""Full-size decodes running at once, in the whole process: with MAX_PIXELS this bounds the
memory that concurrent uploads can take (about 2 x 160 MB), whatever the number of requests."""
_decode_slots = threading.BoundedSemaphore(DECODE_SLOTS)


class ImageError(ValueError):
    """An input is not a usable image; the message says why, in words a user can act on."""


def open_image(source: str | Path | bytes | io.BytesIO, name: str = "image",
               max_side: int | None = MAX_SIDE) -> Image.Image:
    """Open and decode an image, turning PIL's many failure modes into ImageError.

    The size is checked from the header before any pixel is decoded, without touching PIL's
    process-wide limits (they are shared by every thread). A JPEG larger than ``max_side``
    is decoded at a reduced scale (1/2 to 1/8); :func:`load_rgb` bounds how many run at once.

    Args:
        source: a path, raw bytes or a binary stream.
        name: how to call the input in messages (never the uploaded file name: privacy).
    """
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    try:
        image = Image.open(source)
        width, height = image.size
        limit = MAX_PIXELS if image.mode in SHRINKABLE_MODES else MAX_PIXELS_OTHER_MODES
        if width * height > limit:
            raise ImageError(f"{name}: too large ({width} x {height} pixels; at most "
                             f"{limit // 1_000_000} megapixels for this kind of image)")
        if max_side and max(width, height) > max_side and image.format == "JPEG":
            scale = max_side / max(width, height)
            image.draft(None, (max(1, int(width * scale)), max(1, int(height * scale))))
        image.load()
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{name}: file not found") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image file (expected JPEG, PNG, TIFF, BMP or WebP)") from None
    except Image.DecompressionBombError:
        raise ImageError(f"{name}: too large (more than {MAX_PIXELS // 1_000_000} megapixels)") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageError(f"{name}: the file is damaged or truncated ({err})") from None
    return image


def to_clean_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB copy of an image with EXIF orientation applied and every metadata dropped.

    Handles grayscale, palette, RGBA/LA (composited on white), CMYK and 16/32-bit images.
    The result is rebuilt from its pixels, so ``info``/EXIF/ICC/XMP do not survive.
    """
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # a corrupt EXIF block must not lose the pixels
        pass
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / top * 255.0, 0, 255).astype(np.uint8), "L")
    elif image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        span = max(array.max() - array.min(), 1e-12)
        image = Image.fromarray(((array - array.min()) / span * 255.0).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    rgb = image.convert("RGB")
    return Image.fromarray(np.array(rgb, dtype=np.uint8), "RGB")


def load_rgb(source: str | Path | bytes | io.BytesIO, name: str = "image",
             max_side: int | None = MAX_SIDE) -> Image.Image:
    """Open an image and return its clean 8-bit RGB pixels (see :func:`to_clean_rgb`), at most
    ``max_side`` on the long side (None: full size). At most DECODE_SLOTS run at once."""
    with _decode_slots:
        image = open_image(source, name, max_side)
        if max_side and max(image.size) > max_side and image.mode in SHRINKABLE_MODES:
            image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)  # before any copy is made
        image = to_clean_rgb(image)
        if max_side and max(image.size) > max_side:
            image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return image



def pixel_sha256(image: Image.Image) -> str:
    """SHA-256 of an image's RGB pixels and size: the same picture hashes the same
    whatever file format or metadata it came in."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    digest = hashlib.sha256(f"{rgb.width}x{rgb.height}:".encode())
    digest.update(rgb.tobytes())
    return digest.hexdigest()


def png_bytes(image: Image.Image) -> bytes:
    """Lossless PNG encoding with no metadata chunks."""
    buffer = io.BytesIO()
    to_clean_rgb(image).save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


HASH_SIDE = 16
"""A perceptual hash keeps the HASH_SIDE x HASH_SIDE lowest DCT frequencies (255 bits, DC left out)."""


def perceptual_hashes(image: Image.Image) -> np.ndarray:
    """The perceptual hashes of an image's 8 rotations and mirrors, ``(8, 255)`` booleans.

    Each is the sign of the lowest 2-D DCT frequencies of a 64 x 64 grey version against their
    median (a pHash): it survives re-encoding, resizing, small crops and colour shifts, and
    taking all 8 orientations makes a mirrored or rotated copy match too. Compare with
    :func:`hash_distance`.
    """
    from scipy.fft import dctn

    grey = np.asarray(image.convert("L").resize((64, 64), Image.Resampling.LANCZOS), dtype=np.float64)
    hashes = []
    for k in range(4):
        for flipped in (False, True):
            view = np.rot90(grey, k)
            view = view[:, ::-1] if flipped else view
            low = dctn(view, norm="ortho")[:HASH_SIDE, :HASH_SIDE].ravel()[1:]
            hashes.append(low > np.median(low))
    return np.array(hashes)


def hash_distance(candidate: np.ndarray, references: np.ndarray) -> np.ndarray:
    """For each reference hash ``(N, 255)``, the fewest differing bits to any of the candidate's
    8 orientations ``(8, 255)``."""
    references = np.atleast_2d(references)
    return (candidate[:, None, :] != references[None, :, :]).sum(-1).min(0)
