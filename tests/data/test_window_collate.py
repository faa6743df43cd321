import numpy as np
import torch

from seedstory.data.layout import IGNORE_INDEX
from seedstory.data.window_collate import WindowCollate, target_images


def test_target_images_marks_each_windows_last_image():
    assert target_images(torch.tensor([2, 1, 3])).tolist() == [False, True, True, False, False, True]


def test_windows_of_different_lengths_pad_to_the_longest_and_their_pictures_line_up():
    pictures = [np.full((n, 3, 4, 4), n, dtype=np.float32) for n in (2, 1)]
    batch = {"input_ids": [np.array([5, 6, 7]), np.array([8])], "labels": [np.array([-100, 6, 7]), np.array([8])],
             "image_mask": [np.array([False, True, False]), np.array([True])], "num_images": [2, 1],
             "vit_pixels": pictures}
    out = WindowCollate(pad_id=0)(batch)
    assert out["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert out["labels"].tolist() == [[IGNORE_INDEX, 6, 7], [8, IGNORE_INDEX, IGNORE_INDEX]]
    assert "attention_mask" not in out
    assert out["image_mask"].tolist() == [[False, True, False], [True, False, False]]
    assert out["vit_pixels"].shape == (3, 3, 4, 4) and out["vit_pixels"][:, 0, 0, 0].tolist() == [2, 2, 1]
    assert out["num_images"].tolist() == [2, 1] and "sd_pixels" not in out
