"""The paper's GPT-4V judge over any OpenAI-compatible chat endpoint.

Three aspects (style consistency of the images, engagement of the story, coherence of text and
images), two protocols with the paper's prompts: pairwise (``[[A]]``, ``[[B]]``, ``[[C]]`` for a
tie) and scored (``[[n]]`` out of 10). A pairwise comparison is asked in both orders, because
judges favour a position: a story wins only when it wins in both orders, and an order-dependent
answer counts as a tie (and is reported as inconsistent). A verdict that cannot be read is
counted as a parse failure and left out of the rates, never scored as zero. Requests that get a
429 or a 5xx are retried with exponential backoff (``Retry-After`` is honoured); pictures go as
data URLs, at most ``max_images`` per request, and the key is read from the environment and
never logged.
"""

from __future__ import annotations

import base64
import json
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field

from PIL import Image

from seedstory.config.evaluation import JudgeConfig
from seedstory.generation.storybook import png_bytes

ASPECT_TEXT = {
    "style": "the style consistency of the story images",
    "engagement": "the engagement of the story",
    "coherence": "the coherence of the generated text and images",
}
PAIRWISE_PROMPT = (
    "Please act as an impartial judge and evaluate the quality of the generation story contents provided by two AI "
    "assistants. Your job is to evaluate which assistant's generation is better. Your evaluation should consider "
    "{aspect}. Avoid any position biases and ensure that the order in which the responses were presented does not "
    "influence your decision. Do not allow the length of the responses to influence your evaluation. Do not favor "
    "certain names of the assistants. Be as objective as possible. After providing your explanation, output your "
    'final verdict by strictly following this format: "[[A]]" if assistant A is better, "[[B]]" if assistant B is '
    'better, and "[[C]]" for a tie.'
)
SCORED_PROMPT = (
    "Please act as an impartial judge and evaluate the quality of the generation story contents provided by an AI "
    "assistant. Your job is to give a score out of 10. Your evaluation should consider {aspect}. Do not allow the "
    "length of the responses to influence your evaluation. Be as objective as possible. After providing your "
    'explanation, output your final score by strictly following this format: "[[score]]", such as "[[7]]".'
)
VERDICT = re.compile(r"\[\[([ABC])\]\]")
SCORE = re.compile(r"\[\[(\d+(?:\.\d+)?)\]\]")
RETRIED = {429, 500, 502, 503, 504}
MAX_RETRY_AFTER_S = 60.0


class JudgeError(RuntimeError):
    """The endpoint refused a request for good (a 4xx other than 429) or kept failing past the retries."""


@dataclass(frozen=True)
class JudgedStory:
    """What the judge reads: the opening and the generated segments, each a text and its picture."""

    opening: str
    opening_image: Image.Image | None
    texts: Sequence[str]
    images: Sequence[Image.Image]


def parse_verdict(reply: str) -> str | None:
    """The last ``[[A]]``/``[[B]]``/``[[C]]`` (the prompt asks for it after the explanation), else None."""
    found = VERDICT.findall(reply)
    return found[-1] if found else None


def parse_score(reply: str) -> float | None:
    """The last ``[[n]]`` with 0 <= n <= 10, else None."""
    found = [float(value) for value in SCORE.findall(reply)]
    return found[-1] if found and 0 <= found[-1] <= 10 else None


def data_url(image: Image.Image) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(image.convert("RGB"))).decode()


def story_parts(label: str, story: JudgedStory, max_images: int) -> tuple[list[dict], int]:
    """Chat content parts of one story (every text; pictures up to ``max_images``) and how many were left out."""
    parts: list[dict] = [{"type": "text", "text": f"{label}\nBeginning: {story.opening}"}]
    pictures = [story.opening_image] if story.opening_image is not None else []
    captions: list[str | None] = [None] * len(pictures)
    pictures += list(story.images)
    captions += [f"Segment {index}: {text}" for index, text in enumerate(story.texts, start=1)]
    for shown, (caption, picture) in enumerate(zip(captions, pictures)):
        if caption is not None:
            parts.append({"type": "text", "text": caption})
        if shown < max_images:
            parts.append({"type": "image_url", "image_url": {"url": data_url(picture)}})
    return parts, max(len(pictures) - max_images, 0)


@dataclass
class AspectTally:
    """One aspect's pairwise counts, from the first story's side, or its scores."""

    first_wins: int = 0
    second_wins: int = 0
    ties: int = 0
    inconsistent: int = 0
    scores: list[float] = field(default_factory=list)
    parse_failures: int = 0
    images_dropped: int = 0

    def summary(self) -> dict[str, float | int | None]:
        judged = self.first_wins + self.second_wins + self.ties
        out: dict[str, float | int | None] = {"parse_failures": self.parse_failures,
                                              "images_dropped": self.images_dropped}
        if judged:
            out.update(judged=judged, first_wins=self.first_wins, second_wins=self.second_wins, ties=self.ties,
                       inconsistent=self.inconsistent, first_win_rate=self.first_wins / judged,
                       second_win_rate=self.second_wins / judged, tie_rate=self.ties / judged)
        if self.scores:
            out.update(scored=len(self.scores), mean_score=sum(self.scores) / len(self.scores))
        return out


class JudgeClient:
    def __init__(self, config: JudgeConfig) -> None:
        self.config = config
        self.requests = 0
        self.retries = 0

    def ask(self, prompt: str, parts: list[dict]) -> str:
        """One chat completion: the prompt, then the stories' parts; the reply's text."""
        body = json.dumps({
            "model": self.config.model, "max_tokens": self.config.max_tokens, "temperature": 0,
            "messages": [{"role": "user", "content": [{"type": "text", "text": prompt}, *parts]}],
        }).encode()
        headers = {"Content-Type": "application/json"}
        if self.config.api_key_env:
            key = os.environ.get(self.config.api_key_env)
            if not key:
                raise JudgeError(f"eval.judge.api_key_env: the environment variable {self.config.api_key_env} is "
                                 "not set (set it, or api_key_env: null for an endpoint without a key)")
            headers["Authorization"] = f"Bearer {key}"
        url = self.config.base_url.rstrip("/") + "/chat/completions"
        attempt = 0
        while True:
            self.requests += 1
            request = urllib.request.Request(url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.config.timeout_s) as response:
                    reply = json.loads(response.read())
                return _reply_text(reply, url)
            except urllib.error.HTTPError as err:
                if err.code not in RETRIED:
                    raise JudgeError(f"{url}: HTTP {err.code} {err.reason}: {err.read()[:300]!r}") from None
                if attempt == self.config.retries:
                    raise JudgeError(f"{url}: HTTP {err.code} after {attempt + 1} attempts") from None
                wait = _retry_after(err.headers.get("Retry-After")) or self.config.backoff_s * 2 ** attempt
            except (urllib.error.URLError, TimeoutError) as err:
                if attempt == self.config.retries:
                    raise JudgeError(f"{url}: {err} after {attempt + 1} attempts") from None
                wait = self.config.backoff_s * 2 ** attempt
            self.retries += 1
            attempt += 1
            time.sleep(wait)

    def pairwise(self, aspect: str, first: JudgedStory, second: JudgedStory, tally: AspectTally) -> None:
        """Both orders; the first story wins only if it wins in both, an order-dependent answer is a tie."""
        prompt = PAIRWISE_PROMPT.format(aspect=ASPECT_TEXT[aspect])
        per_story = max(self.config.max_images // 2, 1)
        outcomes = []
        for a, b, first_is in ((first, second, "A"), (second, first, "B")):
            parts_a, dropped_a = story_parts("[Assistant A's story]", a, per_story)
            parts_b, dropped_b = story_parts("[Assistant B's story]", b, per_story)
            tally.images_dropped += dropped_a + dropped_b
            verdict = parse_verdict(self.ask(prompt, parts_a + parts_b))
            if verdict is None:
                tally.parse_failures += 1
                return
            outcomes.append("tie" if verdict == "C" else "first" if verdict == first_is else "second")
        if outcomes[0] != outcomes[1]:
            tally.inconsistent += 1
            tally.ties += 1
        elif outcomes[0] == "first":
            tally.first_wins += 1
        elif outcomes[0] == "second":
            tally.second_wins += 1
        else:
            tally.ties += 1

    def score(self, aspect: str, story: JudgedStory, tally: AspectTally) -> None:
        parts, dropped = story_parts("[The assistant's story]", story, self.config.max_images)
        tally.images_dropped += dropped
        value = parse_score(self.ask(SCORED_PROMPT.format(aspect=ASPECT_TEXT[aspect]), parts))
        if value is None:
            tally.parse_failures += 1
        else:
            tally.scores.append(value)


def judge_scores(client: JudgeClient, stories: Sequence[JudgedStory]) -> dict[str, dict]:
    """Scored protocol: per aspect, the mean score out of 10 and the parse failures."""
    out = {}
    for aspect in client.config.aspects:
        tally = AspectTally()
        for story in stories:
            client.score(aspect, story, tally)
        out[aspect] = tally.summary()
    return out


def judge_pairs(client: JudgeClient, firsts: Sequence[JudgedStory], seconds: Sequence[JudgedStory]) -> dict[str, dict]:
    """Pairwise protocol over stories with the same openings: per aspect, win rates from the first's side."""
    if len(firsts) != len(seconds):
        raise ValueError(f"pairwise judging pairs stories by opening: {len(firsts)} against {len(seconds)}")
    out = {}
    for aspect in client.config.aspects:
        tally = AspectTally()
        for first, second in zip(firsts, seconds):
            client.pairwise(aspect, first, second, tally)
        out[aspect] = tally.summary()
    return out


def _reply_text(reply: dict, url: str) -> str:
    try:
        content = reply["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise JudgeError(f"{url}: not a chat completion: {json.dumps(reply)[:300]}") from None
    return content if isinstance(content, str) else ""


def _retry_after(value: str | None) -> float | None:
    try:
        return min(float(value), MAX_RETRY_AFTER_S) if value else None
    except ValueError:
        return None
