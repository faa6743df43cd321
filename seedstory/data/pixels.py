"""Frame pixels in the forms the models take: ViT input and SD-XL training target.

Plain PIL + numpy rather than a transformers image processor: Qwen-VL's transform is a
straight bicubic resize to a square plus CLIP normalisation, and the fast processors need
torchvision, which this stack does not install (STACK.md).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)


def vit_pixels(image: Image.Image, size: int) -> np.ndarray:
    """[3, size, size] float32, resized (bicubic, aspect not kept, as Qwen-VL) and CLIP-normalised."""
    resized = image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
    array = np.asarray(resized, dtype=np.float32) / 255.0
    return ((array - CLIP_MEAN) / CLIP_STD).transpose(2, 0, 1).copy()


def sd_target(image: Image.Image, size: int) -> tuple[np.ndarray, np.ndarray]:
    """[3, size, size] float32 in [-1, 1] and SD-XL's ``add_time_ids``.

    The shorter side is resized to ``size`` and the centre cropped, as in SD-XL's training
    recipe; ``add_time_ids`` = (original_h, original_w, crop_top, crop_left, target_h, target_w),
    the crop measured in the resized image.
    """
    width, height = image.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    resized = image.convert("RGB").resize((new_w, new_h), Image.Resampling.BICUBIC)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    cropped = resized.crop((left, top, left + size, top + size))
    array = np.asarray(cropped, dtype=np.float32) / 127.5 - 1.0
    time_ids = np.array([height, width, top, left, size, size], dtype=np.float32)
    return array.transpose(2, 0, 1).copy(), time_ids
