import numpy as np
from PIL import Image

from seedstory.data.pixels import CLIP_MEAN, CLIP_STD, sd_target, vit_pixels


def test_vit_pixels_are_clip_normalised_at_the_vit_size():
    pixels = vit_pixels(Image.new("RGB", (80, 40), (255, 0, 128)), 56)
    assert pixels.shape == (3, 56, 56) and pixels.dtype == np.float32
    expected = (np.array([255, 0, 128]) / 255.0 - CLIP_MEAN) / CLIP_STD
    assert np.allclose(pixels[:, 10, 10], expected, atol=1e-5)


def test_sd_target_crops_the_centre_and_reports_sdxl_conditioning():
    source = np.zeros((60, 120, 3), dtype=np.uint8)
    source[:, 30:90] = 255
    pixels, time_ids = sd_target(Image.fromarray(source), 32)
    assert pixels.shape == (3, 32, 32) and pixels.min() >= -1 and pixels.max() <= 1
    assert time_ids.tolist() == [60, 120, 0, 16, 32, 32]
    assert np.allclose(pixels[:, :, 1:-1], 1.0, atol=0.02)
