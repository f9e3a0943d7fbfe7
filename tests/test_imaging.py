import io

import numpy as np
import pytest
from PIL import Image

from skinnet.imaging import ImageError, MAX_PIXELS, load_rgb, pixel_sha256, png_bytes


def encoded(image, fmt="PNG", **kw):
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kw)
    return buffer.getvalue()


def exif_with_gps_and_rotation():
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    exif[0x010F] = "SecretCam"
    gps = {1: "N", 2: (45.0, 30.0, 0.0), 3: "E", 4: (9.0, 10.0, 0.0)}
    exif[0x8825] = gps
    return exif


def test_exif_orientation_applied_and_all_metadata_dropped():
    image = Image.new("RGB", (40, 20), (200, 10, 10))
    data = encoded(image, "JPEG", exif=exif_with_gps_and_rotation(), comment=b"patient 42")
    assert b"SecretCam" in data
    clean = load_rgb(data)
    assert clean.size == (20, 40)  # rotated upright
    assert clean.info == {} and len(clean.getexif()) == 0
    out = png_bytes(clean)
    assert b"SecretCam" not in out and b"eXIf" not in out and b"patient" not in out


@pytest.mark.parametrize("mode, maker", [
    ("L", lambda: Image.new("L", (8, 8), 128)),
    ("RGBA", lambda: Image.new("RGBA", (8, 8), (255, 0, 0, 0))),
    ("LA", lambda: Image.new("LA", (8, 8), (10, 255))),
    ("P", lambda: Image.new("P", (8, 8), 3)),
    ("CMYK", lambda: Image.new("CMYK", (8, 8), (0, 255, 255, 0))),
    ("I;16", lambda: Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16))),
    ("F", lambda: Image.fromarray(np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8))),
])
def test_modes_become_8_bit_rgb(mode, maker):
    fmt = "TIFF" if mode in ("CMYK", "F") else "PNG"
    clean = load_rgb(encoded(maker(), fmt))
    assert clean.mode == "RGB" and clean.size == (8, 8)
    if mode == "RGBA":
        assert clean.getpixel((0, 0)) == (255, 255, 255)  # transparent -> white
    if mode == "I;16":
        assert clean.getpixel((0, 0)) == (255, 255, 255)  # full 16-bit scale -> white


def test_bad_inputs_give_clear_messages(tmp_path):
    with pytest.raises(ImageError, match="not an image file"):
        load_rgb(b"%PDF-1.4 not an image", "clinical image")
    data = encoded(Image.new("RGB", (64, 64), (1, 2, 3)), "JPEG")
    with pytest.raises(ImageError, match="damaged or truncated"):
        load_rgb(data[: len(data) // 2])
    with pytest.raises(ImageError, match="file not found"):
        load_rgb(tmp_path / "missing.png")
    side = int((MAX_PIXELS * 1.2) ** 0.5)
    bomb = encoded(Image.new("1", (side, side)), "PNG")
    with pytest.raises(ImageError, match="too large"):
        load_rgb(bomb)


def test_pixel_hash_ignores_container_and_metadata():
    image = Image.new("RGB", (10, 10), (5, 6, 7))
    a = load_rgb(encoded(image, "PNG"))
    b = load_rgb(encoded(image, "TIFF"))
    assert pixel_sha256(a) == pixel_sha256(b)
    assert pixel_sha256(a) != pixel_sha256(Image.new("RGB", (10, 10), (5, 6, 8)))


def test_wide_modes_have_a_lower_pixel_limit():
    """16-bit, float and palette images convert at full size through wider arrays first."""
    from skinnet.imaging import MAX_PIXELS_OTHER_MODES
    side = int((MAX_PIXELS_OTHER_MODES * 1.1) ** 0.5)
    buffer = io.BytesIO()
    Image.new("I;16", (side, side)).save(buffer, "PNG")
    with pytest.raises(ImageError, match="at most 12 megapixels for this kind of image"):
        load_rgb(buffer.getvalue(), "dermoscopy image")
