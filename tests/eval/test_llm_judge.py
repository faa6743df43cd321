"""The paper's judge against a loopback OpenAI-compatible server: verdicts, garbage, 429s, position bias."""

from __future__ import annotations

import pytest
from PIL import Image

from seedstory.config.evaluation import JudgeConfig
from seedstory.eval.llm_judge import (
    PAIRWISE_PROMPT, SCORED_PROMPT, JudgeClient, JudgedStory, JudgeError, judge_pairs, judge_scores, parse_score,
    parse_verdict,
)
from tests.eval.judge_server import JudgeServer, images_in, story_texts


def story(word: str, segments: int = 3) -> JudgedStory:
    picture = Image.new("RGB", (8, 8), (200, 10, 10))
    return JudgedStory(f"{word} opening.", picture, [f"{word} {i}" for i in range(segments)], [picture] * segments)


def client(server: JudgeServer, **settings) -> JudgeClient:
    return JudgeClient(JudgeConfig(base_url=server.base_url, model="judge-1", api_key_env="JUDGE_KEY",
                                   backoff_s=0.01, **settings))


@pytest.fixture(autouse=True)
def key(monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", "sk-test-secret")


def test_the_last_verdict_and_score_in_range_are_read_anything_else_is_none():
    assert parse_verdict("A is vivid, B is not... final: [[B]]") == "B"
    assert parse_verdict("[[A]] at first, but on reflection [[C]]") == "C"
    assert parse_verdict("I prefer A.") is None and parse_verdict("[[D]]") is None
    assert parse_score("Solid. [[7]]") == 7.0 and parse_score("[[8.5]]") == 8.5
    assert parse_score("[[11]]") is None and parse_score("seven out of ten") is None


def test_scores_survive_a_429_and_count_an_unreadable_verdict():
    with JudgeServer() as server:
        server.script = [(200, "Consistent style. [[8]]"), (200, "I cannot decide."), (429, "slow down"),
                         (200, "Fine. [[6]]")]
        judge = client(server, aspects=["style"])
        result = judge_scores(judge, [story("a"), story("b"), story("c")])
    assert result["style"] == {"parse_failures": 1, "images_dropped": 0, "scored": 2, "mean_score": 7.0}
    assert (judge.requests, judge.retries) == (4, 1)
    assert all(h["Authorization"] == "Bearer sk-test-secret" for h in server.headers)
    first = server.requests[0]
    assert first["model"] == "judge-1" and story_texts(first)[0] == SCORED_PROMPT.format(
        aspect="the style consistency of the story images")
    assert images_in(first) == 4 and first["messages"][0]["content"][2]["image_url"]["url"].startswith(
        "data:image/png;base64,")


def test_a_judge_that_always_picks_the_first_position_wins_nothing():
    with JudgeServer(default=lambda body: "Assistant A is better. [[A]]") as server:
        result = judge_pairs(client(server, aspects=["engagement", "coherence"]), [story("x")] * 3, [story("y")] * 3)
    for aspect in ("engagement", "coherence"):
        assert result[aspect]["first_wins"] == result[aspect]["second_wins"] == 0
        assert result[aspect]["ties"] == result[aspect]["inconsistent"] == 3
    assert len(server.requests) == 12


def test_a_story_preferred_in_both_orders_wins_and_each_order_is_asked():
    def prefers_good(body: dict) -> str:
        texts = story_texts(body)
        first_story = next(i for i, t in enumerate(texts) if t.startswith("[Assistant A"))
        second_story = next(i for i, t in enumerate(texts) if t.startswith("[Assistant B"))
        return "[[A]]" if "good" in texts[first_story] and "good" not in texts[second_story] else "[[B]]"

    with JudgeServer(default=prefers_good) as server:
        result = judge_pairs(client(server, aspects=["style"]), [story("good"), story("good")],
                             [story("bad"), story("bad")])
    assert result["style"]["first_win_rate"] == 1.0 and result["style"]["inconsistent"] == 0
    assert story_texts(server.requests[0])[0] == PAIRWISE_PROMPT.format(aspect="the style consistency of the story images")
    openings = [[t.split("\n")[0] + " " + t.split("\n")[1] for t in story_texts(r) if t.startswith("[Assistant")]
                for r in server.requests[:2]]
    assert openings == [["[Assistant A's story] Beginning: good opening.", "[Assistant B's story] Beginning: bad opening."],
                        ["[Assistant A's story] Beginning: bad opening.", "[Assistant B's story] Beginning: good opening."]]


def test_pictures_are_capped_per_request_and_the_rest_counted():
    with JudgeServer(default=lambda body: "[[C]]") as server:
        result = judge_pairs(client(server, aspects=["style"], max_images=4), [story("a")], [story("b")])
    assert [images_in(r) for r in server.requests] == [4, 4]
    assert result["style"]["images_dropped"] == 2 * 2 * 2 and result["style"]["ties"] == 1


def test_an_unreadable_pairwise_answer_is_a_parse_failure_not_a_tie():
    with JudgeServer() as server:
        server.script = [(200, "[[A]]"), (200, "no verdict here")]
        result = judge_pairs(client(server, aspects=["style"]), [story("a")], [story("b")])
    assert result["style"] == {"parse_failures": 1, "images_dropped": 0}


def test_refusals_and_exhausted_retries_are_errors_that_say_so(monkeypatch):
    with JudgeServer() as server:
        server.script = [(400, "bad request")]
        with pytest.raises(JudgeError, match="HTTP 400"):
            client(server).ask("p", [])
        server.script = [(503, "down")] * 3
        judge = client(server, retries=2)
        with pytest.raises(JudgeError, match="HTTP 503 after 3 attempts"):
            judge.ask("p", [])
        monkeypatch.delenv("JUDGE_KEY")
        with pytest.raises(JudgeError, match="JUDGE_KEY is not set"):
            client(server).ask("p", [])
