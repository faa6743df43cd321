"""Caption validity: true stories are legal throughout, broken or shuffled text is not."""

import numpy as np
import pytest

from seedstory.config.data import ToyWorldConfig
from seedstory.data.toyworld.generate import toy_story
from seedstory.data.toyworld.validity import caption_validity

CONFIG = ToyWorldConfig(stories=40, min_frames=10, max_frames=30, seed=11)


def test_every_true_caption_is_a_legal_next_frame():
    for index in range(CONFIG.stories):
        captions = list(toy_story(CONFIG, index).record.captions)
        assert all(caption_validity(captions[0], captions[1:])), index


def test_captions_from_other_stories_are_rarely_legal():
    rng = np.random.default_rng(0)
    stories = [list(toy_story(CONFIG, i).record.captions) for i in range(CONFIG.stories)]
    verdicts = [v for i, captions in enumerate(stories)
                for v in caption_validity(captions[0], [stories[int(j)][5] for j in rng.permutation(len(stories))[:5]
                                                         if int(j) != i])]
    assert np.mean(verdicts) < 0.1


def test_incomplete_two_changes_and_crowded_frames_are_invalid():
    opening = "Our story begins in the meadow. Tom the red circle, small, stands on the left."
    assert caption_validity(opening, [
        "Tom walks over on the right, still small. All this happens in the meadow.",  # one move: legal
        "Tom is on the right.",  # no scene, no size
        "Everyone travels to the beach. Tom, still big, rests on the left.",  # two changes
        "Mia the blue square hops in on the right, tiny and cheerful. In the meadow, Tom is on the right, looking small.",
    ]) == [True, False, False, False]  # Mia enters onto Tom's spot
    assert caption_validity(opening, ["Tom grows big! All this happens in the meadow."]) == [False]  # no position


def test_the_next_caption_is_judged_from_the_last_valid_one():
    opening = "Our story begins in the cave. Ben the yellow triangle, big, stands in the middle."
    verdicts = caption_validity(opening, ["nonsense", "Ben, standing in the middle, shrinks and becomes small. "
                                          "All this happens in the cave."])
    assert verdicts == [False, True]


def test_an_opening_that_is_not_a_frame_is_an_error():
    with pytest.raises(ValueError, match="does not state a whole frame"):
        caption_validity("Once upon a time.", ["x"])
