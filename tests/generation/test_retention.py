"""The kept set, checked against an independently written reference over arbitrary histories."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seedstory.config.generation import AttentionSinkConfig
from seedstory.generation.retention import ImageSpan, RetentionPolicy
from seedstory.generation.slots import SlotTable

IMAGE_TOKENS = 6  # an image block is BOI + 6 + EOI = 8 tokens


def reference_kept(config: AttentionSinkConfig, seen: int, images: list[tuple[int, int]]) -> set[int]:
    """The issue's definition, written as plainly as possible; an image counts as "left the window"
    once its earliest anchor position has (the same as its BOI for the paper's anchors)."""
    everything = set(range(seen))
    if config.mode == "dense":
        return everything
    window = {p for p in everything if p >= seen - config.window}
    if config.mode == "window":
        return window
    sinks = {p for p in everything if p < config.sink_tokens}
    if config.mode == "sink":
        return sinks | window
    def first_anchor(b: int, e: int) -> int:
        return min(b - config.boi_before, e - config.eoi_before)

    left = [(b, e) for b, e in images if first_anchor(b, e) < seen - config.window]
    recent = left[max(0, len(left) - config.max_anchored_images):] if config.max_anchored_images else []
    anchors: set[int] = set()
    for b, e in recent:
        anchors |= set(range(b - config.boi_before, b + config.boi_after + 1))
        anchors |= set(range(e - config.eoi_before, e + config.eoi_after + 1))
    return sinks | window | (anchors & everything)


# A history: a prefill of some tokens, then single tokens and whole image blocks in any order.
events = st.lists(st.one_of(st.just("token"), st.just("image"), st.integers(2, 30)), max_size=40)
configs = st.builds(
    AttentionSinkConfig,
    mode=st.sampled_from(["dense", "window", "sink", "mm-sink"]),
    sink_tokens=st.integers(0, 5),
    window=st.integers(2, 24),
    boi_before=st.integers(0, 2),
    boi_after=st.integers(0, 5),
    eoi_before=st.integers(0, 5),
    eoi_after=st.integers(0, 2),
    max_anchored_images=st.integers(0, 3),
    positions=st.sampled_from(["absolute", "rerotate"]),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=configs, prefill=st.integers(1, 40), history=events)
def test_slot_table_holds_exactly_the_reference_kept_set(config, prefill, history):
    policy = RetentionPolicy(config)
    table = SlotTable(policy, rerotate=config.positions == "rerotate", initial_capacity=4)
    images: list[tuple[int, int]] = []

    def append(q: int) -> None:
        plan = table.plan(q, commit=True)
        assert plan.kv_offset == table.seen - plan.held
        table.apply(plan)
        held = table.pos[: table.stored]
        assert len(set(held.tolist())) == held.size
        assert set(held.tolist()) == reference_kept(config, table.seen, images)
        if policy.bounded:
            assert table.stored <= policy.capacity()
        if table.rerotate:  # keys held before the step sit at seen - held + rank; new keys at their own position
            positions, eff = table.positions(), table.effective_positions()
            before = positions < plan.seen
            assert before.sum() == plan.held
            assert eff[before].tolist() == list(range(plan.seen - plan.held, plan.seen))
            assert eff[~before].tolist() == positions[~before].tolist()

    append(prefill)
    for event in history:
        if event == "image":
            boi = table.seen
            span = (boi, boi + IMAGE_TOKENS + 1)
            images.append(span)
            policy.add_image(ImageSpan(*span))
            append(IMAGE_TOKENS + 2)
        elif event == "token":
            append(1)
        else:
            append(event)


def test_named_edge_cases_match_the_reference():
    """Window boundary inside an image, an image longer than the window, a prefill longer than it."""
    for window in (3, 5, 11):  # 3 and 5 < the 8-token image; 11 puts boundaries inside images
        config = AttentionSinkConfig(mode="mm-sink", sink_tokens=2, window=window, max_anchored_images=2)
        policy = RetentionPolicy(config)
        table = SlotTable(policy, rerotate=False)
        images = []
        table.apply(table.plan(40, commit=True))  # prefill longer than the window
        for _ in range(6):
            for _ in range(3):
                table.apply(table.plan(1, commit=True))
                assert set(table.positions().tolist()) == reference_kept(config, table.seen, images)
            span = (table.seen, table.seen + IMAGE_TOKENS + 1)
            images.append(span)
            policy.add_image(ImageSpan(*span))
            for _ in range(IMAGE_TOKENS + 2):  # the image token by token: the boundary walks through it
                table.apply(table.plan(1, commit=True))
                assert set(table.positions().tolist()) == reference_kept(config, table.seen, images)


def test_preview_plans_change_nothing():
    config = AttentionSinkConfig(mode="window", window=4)
    table = SlotTable(RetentionPolicy(config), rerotate=False)
    table.apply(table.plan(10, commit=True))
    before = table.positions().tolist()
    plan = table.plan(5, commit=False)
    table.apply(plan)
    assert (plan.held, plan.kv_length, table.seen, table.positions().tolist()) == (4, 9, 10, before)


def test_bad_images_are_refused():
    policy = RetentionPolicy(AttentionSinkConfig())
    policy.add_image(ImageSpan(5, 10))
    with pytest.raises(ValueError, match="without overlap"):
        policy.add_image(ImageSpan(8, 20))
    with pytest.raises(ValueError, match="boi < eoi"):
        ImageSpan(4, 4)
    with pytest.raises(ValueError, match="capacity bound"):
        RetentionPolicy(AttentionSinkConfig(mode="dense")).capacity()


def test_paper_anchors_follow_the_boi_rule():
    """With the paper's anchors an image is anchored exactly when its BOI has left the window."""
    config = AttentionSinkConfig(mode="mm-sink", sink_tokens=4, window=100)
    policy = RetentionPolicy(config)
    policy.add_image(ImageSpan(200, 265))
    assert policy.anchor_ranges(300).size == 0  # BOI 200 == seen - W: still inside
    assert policy.anchor_ranges(301).tolist() == [[200, 205], [257, 265]]


@pytest.mark.parametrize("mode", ["window", "sink", "mm-sink"])
def test_decoding_rescans_the_held_set_only_when_the_anchored_images_change(mode):
    """The steady state of decoding is planned from the one position leaving the window; the full plan
    (a keep test over every held position) runs only at the steps where an image becomes anchored."""
    config = AttentionSinkConfig(mode=mode, sink_tokens=2, window=16, boi_after=2, eoi_before=3,
                                 max_anchored_images=2)
    policy = RetentionPolicy(config)
    table = SlotTable(policy, rerotate=False)
    tested: list[int] = []
    keep = policy.keep
    policy.keep = lambda positions, seen: tested.append(positions.size) or keep(positions, seen)
    images: list[tuple[int, int]] = []
    table.apply(table.plan(20, commit=True))
    full_scans = 0
    for _ in range(8):
        span = (table.seen, table.seen + IMAGE_TOKENS + 1)
        images.append(span)
        policy.add_image(ImageSpan(*span))
        table.apply(table.plan(IMAGE_TOKENS + 2, commit=True))
        for _ in range(10):
            changes = policy.anchored(table.seen + 1) != policy.anchored(table.seen)
            tested.clear()
            table.apply(table.plan(1, commit=True))
            scanned = max(tested) > 1
            assert scanned == changes, f"step to {table.seen}: full plan {scanned}, anchored images changed {changes}"
            full_scans += scanned
            assert set(table.positions().tolist()) == reference_kept(config, table.seen, images)
    assert (0 < full_scans <= len(images)) if mode == "mm-sink" else full_scans == 0  # at most once per image
