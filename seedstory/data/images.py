"""Decode frame bytes into RGB pictures, whatever the file's size, mode or EXIF orientation."""

from __future__ import annotations

import io

from PIL import Image, ImageOps, UnidentifiedImageError

from seedstory.data.badrecords import BadKind, BadRecordError

WHITE = (255, 255, 255)


def decode_image(data: bytes) -> Image.Image:
    """JPEG/PNG bytes -> upright RGB; transparency is composited on white, as on a page.

    ``load()`` forces the full decode so truncated files fail here, not inside a batch later.
    """
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as err:
        raise BadRecordError(BadKind.CORRUPT_IMAGE, f"cannot decode image: {err}") from None
    image = ImageOps.exif_transpose(image)
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        canvas = Image.new("RGB", image.size, WHITE)
        canvas.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        return canvas
    return image.convert("RGB")


def encode_image(image: Image.Image, suffix: str) -> bytes:
    """Encode for writing a dataset; JPEG at high quality without chroma subsampling."""
    buffer = io.BytesIO()
    if suffix.lower() in (".jpg", ".jpeg"):
        image.convert("RGB").save(buffer, format="JPEG", quality=95, subsampling=0)
    elif suffix.lower() == ".png":
        image.save(buffer, format="PNG")
    else:
        raise ValueError(f"unsupported image suffix {suffix!r}: use .jpg or .png")
    return buffer.getvalue()
