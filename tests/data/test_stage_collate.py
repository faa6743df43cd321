import numpy as np
import torch
from PIL import Image

from seedstory.data.layout import IGNORE_INDEX
from seedstory.data.pixels import normalise_vit, sd_target, vit_pixels
from seedstory.data.samples import stage1_samples
from seedstory.data.stage_collate import FrameCollate, WindowCollate, target_images


def test_target_images_marks_each_windows_last_image():
    assert target_images(torch.tensor([2, 1, 3])).tolist() == [False, True, True, False, False, True]


def test_windows_of_different_lengths_pad_to_the_longest_and_their_pictures_line_up():
    pictures = [np.full((n, 3, 4, 4), n, dtype=np.uint8) for n in (2, 1)]
    batch = {"input_ids": [np.array([5, 6, 7]), np.array([8])], "labels": [np.array([-100, 6, 7]), np.array([8])],
             "image_mask": [np.array([False, True, False]), np.array([True])], "num_images": [2, 1],
             "vit_pixels": pictures}
    out = WindowCollate(pad_id=0)(batch)
    assert out["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert out["labels"].tolist() == [[IGNORE_INDEX, 6, 7], [8, IGNORE_INDEX, IGNORE_INDEX]]
    assert "attention_mask" not in out
    assert out["image_mask"].tolist() == [[False, True, False], [True, False, False]]
    assert out["vit_pixels"].shape == (3, 3, 4, 4) and out["vit_pixels"].dtype == torch.float32
    expected = normalise_vit(np.array([2, 2, 1], dtype=np.uint8)[:, None, None, None].repeat(3, 1))[:, 0, 0, 0]
    assert out["vit_pixels"][:, 0, 0, 0].tolist() == expected.tolist()
    assert out["num_images"].tolist() == [2, 1] and "sd_pixels" not in out


def test_stage1_frames_travel_as_uint8_and_collate_to_exactly_the_models_pixels():
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (48 + 8 * i, 72, 3), dtype=np.uint8)) for i in range(3)]
    rows = list(stage1_samples(images, 56, 64))
    assert {rows[0]["vit_pixels"].dtype, rows[0]["sd_pixels"].dtype} == {np.dtype(np.uint8)}
    out = FrameCollate()({name: np.stack([row[name] for row in rows]) for name in rows[0]})
    for i, image in enumerate(images):
        assert np.array_equal(out["vit_pixels"][i].numpy(), vit_pixels(image, 56))
        sd_pixels, time_ids = sd_target(image, 64)
        assert np.array_equal(out["sd_pixels"][i].numpy(), sd_pixels)
        assert np.array_equal(out["add_time_ids"][i].numpy(), time_ids)
