"""A batch of a story stage's samples as tensors, on the training worker: stage 1's frames, stages 2 and 3's
windows. Their pictures arrive as uint8 and are normalised here (the decoding actors that cut the samples
never import torch, so each one starts without it)."""

from __future__ import annotations

import numpy as np
import torch
from ray.data.collate_fn import NumpyBatchCollateFn

from seedstory.data.layout import IGNORE_INDEX
from seedstory.data.pixels import normalise_sd, normalise_vit


class FrameCollate(NumpyBatchCollateFn):
    """Stage 1's frames: ViT input, SD target and its ``add_time_ids``."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        return {"vit_pixels": torch.from_numpy(normalise_vit(np.asarray(batch["vit_pixels"]))),
                "sd_pixels": torch.from_numpy(normalise_sd(np.asarray(batch["sd_pixels"]))),
                "add_time_ids": torch.from_numpy(np.asarray(batch["add_time_ids"]))}


class WindowCollate(NumpyBatchCollateFn):
    """Pads a batch of windows on the right: ids with ``pad_id``, labels with -100; images are concatenated
    (``[sum of num_images, 3, H, W]``, sample order, each sample's target last) for one ViT pass. No
    attention mask, as in ``seedstory.data.story_text.TextCollate``: causal attention never reads the
    pads after a window, and a mask would keep SDPA off its fused kernel."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        lengths = [len(ids) for ids in batch["input_ids"]]
        width = max(lengths)
        size = len(lengths)
        input_ids = torch.full((size, width), self.pad_id, dtype=torch.long)
        labels = torch.full((size, width), IGNORE_INDEX, dtype=torch.long)
        image_mask = torch.zeros((size, width), dtype=torch.bool)
        for row, length in enumerate(lengths):
            input_ids[row, :length] = torch.as_tensor(batch["input_ids"][row])
            labels[row, :length] = torch.as_tensor(batch["labels"][row])
            image_mask[row, :length] = torch.as_tensor(batch["image_mask"][row])
        pictures = np.concatenate([np.asarray(p) for p in batch["vit_pixels"]])
        out = {"input_ids": input_ids, "labels": labels, "image_mask": image_mask,
               "num_images": torch.tensor(np.asarray(batch["num_images"], dtype=np.int64)),
               "vit_pixels": torch.from_numpy(normalise_vit(pictures))}
        if "sd_pixels" in batch:
            out["sd_pixels"] = torch.from_numpy(normalise_sd(np.stack(list(batch["sd_pixels"]))))
            out["add_time_ids"] = torch.as_tensor(np.stack(list(batch["add_time_ids"])))
        return out


def target_images(num_images: torch.Tensor) -> torch.Tensor:
    """[sum(num_images)] bool: each window's last image, the one to generate (``WindowCollate``'s order)."""
    ends = torch.cumsum(num_images, dim=0) - 1
    mask = torch.zeros(int(num_images.sum()), dtype=torch.bool, device=num_images.device)
    mask[ends] = True
    return mask
