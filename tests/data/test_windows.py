import pytest

from seedstory.data.windows import story_windows


def test_windows_are_deterministic_and_differ_by_seed_epoch_and_story():
    a = story_windows("story-1", 30, 10, 1, seed=0)
    assert a == story_windows("story-1", 30, 10, 1, seed=0)
    assert [w.start for w in a] == [0, 10, 20]
    variants = [story_windows("story-1", 30, 10, 1, seed=1), story_windows("story-1", 30, 10, 1, seed=0, epoch=1),
                story_windows("story-2", 30, 10, 1, seed=0)]
    assert all(v != a for v in variants)


@pytest.mark.parametrize("frames", [2, 9, 10, 11, 23, 30])
def test_every_window_has_a_target_and_enough_context(frames):
    lengths = set()
    for seed in range(50):
        for window in story_windows("s", frames, 10, 1, seed):
            assert 2 <= window.length <= 10 and window.target < frames
            assert window.start % 10 == 0 and window.frames[-1] == window.target
            lengths.add(window.length)
    if frames >= 10:
        assert lengths == set(range(2, 11))


def test_too_short_chunks_are_skipped():
    assert [w.start for w in story_windows("s", 21, 10, 1, 0)] == [0, 10]
    assert story_windows("s", 1, 10, 1, 0) == []
