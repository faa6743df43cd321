"""The stage-2 layout and label mask, token by token, on a small example."""

import numpy as np

from seedstory.data.layout import IGNORE_INDEX, StoryLayout
from seedstory.tokenizer import INST, build_tiny_tokenizer, image_token_ids

N = 3


def test_layout_and_labels_token_by_token():
    captions = ["Tom hops in.", "Mia waits.", "Ben grows big."]
    tokenizer = build_tiny_tokenizer([*captions, INST] * 10, vocab_size=300, image_tokens=N)
    ids = image_token_ids(tokenizer, N)
    enc = [tokenizer.encode(c, add_special_tokens=False) for c in captions]
    inst = tokenizer.encode(INST, add_special_tokens=False)
    img = [ids.boi, *ids.image, ids.eoi]

    window = StoryLayout(tokenizer, N).build(captions)

    expected = [ids.bos, *enc[0], *img, *inst, *enc[1], *img, *inst, *enc[2], *img, ids.eos]
    assert window.input_ids.tolist() == expected
    target_start = 1 + len(enc[0]) + len(img) + len(inst) + len(enc[1]) + len(img) + len(inst)
    labelled = [i for i, label in enumerate(window.labels) if label != IGNORE_INDEX]
    assert labelled == [*range(target_start, target_start + len(enc[2])), target_start + len(enc[2]), len(expected) - 1]
    assert window.labels[target_start + len(enc[2])] == ids.boi and window.labels[-1] == ids.eos
    assert all(window.labels[i] == window.input_ids[i] for i in labelled)
    image_positions = np.flatnonzero(window.image_mask).tolist()
    assert len(image_positions) == 3 * N
    assert all(window.input_ids[p] in ids.image for p in image_positions)
    assert all(window.input_ids[p] not in ids.image for p in range(len(expected)) if p not in image_positions)
    assert tokenizer.decode(window.input_ids).startswith("<s>Tom hops in.<img><img_00000>")


def test_single_frame_window_supervises_the_whole_caption():
    tokenizer = build_tiny_tokenizer(["Tom hops in."] * 5, vocab_size=290, image_tokens=N)
    window = StoryLayout(tokenizer, N).build(["Tom hops in."])
    caption = tokenizer.encode("Tom hops in.", add_special_tokens=False)
    assert (window.labels != IGNORE_INDEX).sum() == len(caption) + 2
