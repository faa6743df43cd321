"""Frame pixels in the forms the models take: ViT input and SD-XL training target.

The story stages' samples carry the pictures as uint8 (``vit_image``, ``sd_image``), a quarter of
float32's bytes in the object store, and the training worker's collate normalises them
(``normalise_vit``, ``normalise_sd``) to exactly the values ``vit_pixels`` and ``sd_target`` give.

Plain PIL + numpy rather than a transformers image processor: Qwen-VL's transform is a
straight bicubic resize to a square plus CLIP normalisation, and the fast processors need
torchvision, which this stack does not install (STACK.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)


@dataclass(frozen=True)
class PreparedFrame:
    """A frame already at a preset's sizes (``jobs/prepare_data.py``): the ViT's square resize, SD-XL's
    crop, and the ``add_time_ids`` of that crop, which keep the original size. Stored losslessly, they
    give exactly the values ``vit_pixels`` and ``sd_target`` give the original picture."""

    vit: Image.Image
    sd: Image.Image
    time_ids: tuple[float, ...]


Frame = Image.Image | PreparedFrame


def vit_resize(image: Image.Image, size: int) -> Image.Image:
    """Bicubic, to a square, aspect not kept (as Qwen-VL)."""
    return image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)


def sd_crop(image: Image.Image, size: int) -> tuple[Image.Image, np.ndarray]:
    """SD-XL's training crop: the shorter side resized to ``size``, the centre cropped; with its
    ``add_time_ids`` = (original_h, original_w, crop_top, crop_left, target_h, target_w), the crop
    measured in the resized image."""
    width, height = image.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    resized = image.convert("RGB").resize((new_w, new_h), Image.Resampling.BICUBIC)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    cropped = resized.crop((left, top, left + size, top + size))
    return cropped, np.array([height, width, top, left, size, size], dtype=np.float32)


def _prepared(image: Image.Image, size: int, form: str) -> Image.Image:
    if image.size != (size, size):
        raise ValueError(f"a prepared frame's {form} picture is {image.size[0]}x{image.size[1]} but the preset's "
                         f"{form} size is {size}: prepare the data for this preset (jobs/prepare_data.py)")
    return image


def image_bytes(size: int) -> int:
    """What one picture of ``vit_image`` or ``sd_image`` at ``size`` holds."""
    return 3 * size * size


def vit_image(frame: Frame, size: int) -> np.ndarray:
    """[3, size, size] uint8, resized (``vit_resize``): the ViT's input before ``normalise_vit``."""
    resized = _prepared(frame.vit, size, "ViT") if isinstance(frame, PreparedFrame) else vit_resize(frame, size)
    return np.asarray(resized, dtype=np.uint8).transpose(2, 0, 1).copy()


def sd_image(frame: Frame, size: int) -> tuple[np.ndarray, np.ndarray]:
    """[3, size, size] uint8 (``sd_crop``), the SD target before ``normalise_sd``, and its ``add_time_ids``."""
    if isinstance(frame, PreparedFrame):
        cropped, time_ids = _prepared(frame.sd, size, "SD"), np.array(frame.time_ids, dtype=np.float32)
    else:
        cropped, time_ids = sd_crop(frame, size)
    return np.asarray(cropped, dtype=np.uint8).transpose(2, 0, 1).copy(), time_ids


def normalise_vit(pixels: np.ndarray) -> np.ndarray:
    """``vit_image``'s pictures ([..., 3, H, W] uint8) CLIP-normalised, float32."""
    channels = (slice(None), None, None)
    return (pixels.astype(np.float32) / 255.0 - CLIP_MEAN[channels]) / CLIP_STD[channels]


def normalise_sd(pixels: np.ndarray) -> np.ndarray:
    """``sd_image``'s pictures ([..., 3, H, W] uint8) in [-1, 1], float32."""
    return pixels.astype(np.float32) / 127.5 - 1.0


def vit_pixels(frame: Frame, size: int) -> np.ndarray:
    """[3, size, size] float32, resized (``vit_resize``) and CLIP-normalised."""
    return normalise_vit(vit_image(frame, size))


def sd_target(frame: Frame, size: int) -> tuple[np.ndarray, np.ndarray]:
    """[3, size, size] float32 in [-1, 1] (``sd_crop``) and SD-XL's ``add_time_ids``."""
    pixels, time_ids = sd_image(frame, size)
    return normalise_sd(pixels), time_ids
