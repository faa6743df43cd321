import numpy as np
import pytest
from PIL import Image

from seedstory.data.pixels import CLIP_MEAN, CLIP_STD, PreparedFrame, sd_crop, sd_target, vit_pixels, vit_resize


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


def test_a_prepared_frame_gives_the_originals_pixels_and_refuses_other_sizes():
    original = Image.new("RGB", (96, 80), (10, 200, 90))
    original.putpixel((40, 40), (255, 0, 0))
    crop, time_ids = sd_crop(original, 64)
    frame = PreparedFrame(vit_resize(original, 56), crop, tuple(time_ids.tolist()))
    assert np.array_equal(vit_pixels(frame, 56), vit_pixels(original, 56))
    for got, want in zip(sd_target(frame, 64), sd_target(original, 64)):
        assert np.array_equal(got, want)
    with pytest.raises(ValueError, match="ViT picture is 56x56 but the preset's ViT size is 448"):
        vit_pixels(frame, 448)
