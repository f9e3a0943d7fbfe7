"""Opening untrusted images safely: orientation applied, metadata dropped, one RGB format.

Every image that enters skinnet (dataset files, uploads in the app) goes through
:func:`load_rgb` or :func:`to_clean_rgb`, so no EXIF/GPS block, ICC profile, comment or
original file name travels any further than this module.
"""
from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_PIXELS = 40_000_000
"""Refuse larger images (decompression bombs); a 40 MP photo is larger than any dermatoscope's."""


class ImageError(ValueError):
    """An input is not a usable image; the message says why, in words a user can act on."""


def open_image(source: str | Path | bytes | io.BytesIO, name: str = "image") -> Image.Image:
    """Open and fully decode an image, turning PIL's many failure modes into ImageError.

    Args:
        source: a path, raw bytes or a binary stream.
        name: how to call the input in messages (never the uploaded file name: privacy).
    """
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    with warnings.catch_warnings():
        # PIL warns (and only errors at twice the limit): make the warning an error too.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        old_limit = Image.MAX_IMAGE_PIXELS
        try:
            Image.MAX_IMAGE_PIXELS = MAX_PIXELS
            image = Image.open(source)
            image.load()
        except FileNotFoundError:
            raise ImageError(f"{name}: file not found") from None
        except UnidentifiedImageError:
            raise ImageError(f"{name}: not an image file (expected JPEG, PNG, TIFF, BMP or WebP)") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageError(f"{name}: too large (more than {MAX_PIXELS // 1_000_000} megapixels)") from None
        except (OSError, SyntaxError, ValueError) as err:
            raise ImageError(f"{name}: the file is damaged or truncated ({err})") from None
        finally:
            Image.MAX_IMAGE_PIXELS = old_limit
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


def load_rgb(source: str | Path | bytes | io.BytesIO, name: str = "image") -> Image.Image:
    """Open an image and return its clean 8-bit RGB pixels (see :func:`to_clean_rgb`)."""
    return to_clean_rgb(open_image(source, name))


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
