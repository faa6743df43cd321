import pytest

from seedstory.data.windows import story_windows, window_count


def test_windows_are_a_function_of_seed_pass_and_story():
    a = story_windows("story-1", 30, 10, 1, seed=0, pass_index=3)
    assert a == story_windows("story-1", 30, 10, 1, seed=0, pass_index=3)
    variants = [story_windows("story-1", 30, 10, 1, seed=1, pass_index=3),
                story_windows("story-1", 30, 10, 1, seed=0, pass_index=4),
                story_windows("story-2", 30, 10, 1, seed=0, pass_index=3)]
    assert all(v != a for v in variants)


def test_windows_start_at_any_frame_and_differ_between_passes():
    passes = [story_windows("s", 23, 10, 1, seed=0, pass_index=p) for p in range(20)]
    starts = {w.start for windows in passes for w in windows}
    assert starts - {0, 10, 20}, starts
    assert max(starts) > 13
    assert len({tuple(windows) for windows in passes}) == 20


@pytest.mark.parametrize("frames", [2, 9, 10, 11, 23, 30])
def test_every_window_fits_the_story_with_a_target_and_enough_context(frames):
    lengths = set()
    for seed in range(50):
        windows = story_windows("s", frames, 10, 1, seed)
        assert len(windows) == window_count(frames, 10, 1) == -(-frames // 10)
        for window in windows:
            assert 2 <= window.length <= 10 and 0 <= window.start and window.target < frames
            assert window.frames[-1] == window.target
            lengths.add(window.length)
    assert lengths == set(range(2, min(frames, 10) + 1))


def test_stories_too_short_for_a_target_after_the_context_yield_none():
    assert story_windows("s", 1, 10, 1, 0) == [] and window_count(1, 10, 1) == 0
    assert story_windows("s", 3, 10, 3, 0) == [] and len(story_windows("s", 4, 10, 3, 0)) == 1
