import io

import numpy as np
import pytest
from PIL import Image

from seedstory.data.badrecords import BadKind, BadRecordError
from seedstory.data.images import decode_image, encode_image

EXIF_ORIENTATION = 0x0112


def _bytes(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize("mode, fmt", [(m, "PNG") for m in ("RGB", "L", "RGBA", "P", "LA", "I;16")]
                         + [(m, "JPEG") for m in ("RGB", "L", "CMYK")])
def test_every_mode_decodes_to_rgb_of_the_same_size(mode, fmt):
    image = Image.new(mode, (37, 21))
    decoded = decode_image(_bytes(image, fmt))
    assert decoded.mode == "RGB" and decoded.size == (37, 21)


def test_grayscale_keeps_its_values():
    image = Image.fromarray(np.full((8, 8), 77, dtype=np.uint8), mode="L")
    assert np.all(np.asarray(decode_image(_bytes(image, "PNG"))) == 77)


def test_transparency_is_composited_on_white():
    image = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    image.putpixel((0, 0), (10, 20, 30, 255))
    pixels = np.asarray(decode_image(_bytes(image, "PNG")))
    assert tuple(pixels[0, 0]) == (10, 20, 30) and tuple(pixels[3, 3]) == (255, 255, 255)


def test_palette_with_transparency_is_composited_on_white():
    image = Image.new("P", (4, 4), 0)
    image.putpalette([200, 0, 0, 0, 0, 200] + [0] * 762)
    image.putpixel((1, 1), 1)
    pixels = np.asarray(decode_image(_bytes(image, "PNG", transparency=0)))
    assert tuple(pixels[1, 1]) == (0, 0, 200) and tuple(pixels[0, 0]) == (255, 255, 255)


def test_exif_orientation_is_honoured():
    stored = np.zeros((20, 40, 3), dtype=np.uint8)
    stored[:, :20] = (255, 0, 0)
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[EXIF_ORIENTATION] = 6  # the camera was rotated: display needs 90 degrees clockwise
    decoded = decode_image(_bytes(image, "JPEG", exif=exif.tobytes(), quality=95))
    assert decoded.size == (20, 40)
    pixels = np.asarray(decoded).astype(int)
    assert pixels[5, 10, 0] > 200 and pixels[35, 10, 0] < 60


@pytest.mark.parametrize("data", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40])
def test_non_image_bytes_are_corrupt(data):
    with pytest.raises(BadRecordError) as err:
        decode_image(data)
    assert err.value.kind is BadKind.CORRUPT_IMAGE


def test_truncated_jpeg_is_corrupt():
    data = _bytes(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)), "JPEG")
    with pytest.raises(BadRecordError) as err:
        decode_image(data[: len(data) // 2])
    assert err.value.kind is BadKind.CORRUPT_IMAGE


def test_a_picture_too_large_to_decode_is_a_bad_record_not_a_crash():
    """A small file that would decode to 200M pixels (a decompression bomb): Pillow refuses it at open."""
    data = _bytes(Image.new("1", (20_000, 10_000)), "PNG")
    assert len(data) < 100_000
    with pytest.raises(BadRecordError, match="decompression bomb") as err:
        decode_image(data)
    assert err.value.kind is BadKind.CORRUPT_IMAGE


def test_png_encoding_round_trips_exactly():
    pixels = np.random.default_rng(1).integers(0, 255, (9, 7, 3), dtype=np.uint8)
    assert np.array_equal(np.asarray(decode_image(encode_image(Image.fromarray(pixels), ".png"))), pixels)
