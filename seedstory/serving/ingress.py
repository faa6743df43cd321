"""The HTTP ingress: checks every request, streams stories, serves saved ones and the storybook page."""


import asyncio
import hmac
import os
import re
import uuid
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from ray import serve
from ray.serve.handle import DeploymentHandle

from seedstory.config import SeedStoryConfig
from seedstory.generation.pipeline import StoryInputError
from seedstory.generation.storybook import STORY_FILE, image_name
from seedstory.serving.api import NDJSON, STORY_ID, ApiError, parse_story_request
from seedstory.serving.selection import ModelSelection
from seedstory.serving.story_stream import REPLICA_LOST, StoryRecord, StoryStream
from seedstory.storage import join, read_bytes

PNG_NAME = re.compile(r"^(\d{1,4})\.png$")

api = FastAPI(title="SEED-Story", summary="Long interleaved stories: text and pictures, streamed as they are made")


@api.exception_handler(ApiError)
async def _api_error(_: Request, err: ApiError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused as soon as it grows past ``limit`` (a missing or false Content-Length included)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, None, f"body is over serve.max_body_bytes ({limit})")
        chunks.append(chunk)
    return b"".join(chunks)


def _read(uri: str, what: str) -> bytes:
    try:
        return read_bytes(uri)
    except FileNotFoundError:
        raise ApiError(404, "id", f"no story {what!r}") from None


# Helpers above: serve.ingress pickles this class by value, with the globals defined before it.
@serve.deployment(name="ingress")
@serve.ingress(api)
class Ingress:
    def __init__(self, writer: DeploymentHandle, painter: DeploymentHandle) -> None:
        self.writer = writer
        self.painter = painter
        self.config: SeedStoryConfig | None = None
        self._token: str | None = None
        self._page = resources.files("seedstory.serving").joinpath("page.html").read_text()

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        self.config = ModelSelection.model_validate(user_config).load()
        self._token = os.environ.get(self.config.serve.api_token_env) or None

    def _authorize(self, request: Request) -> None:
        if self._token is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self._token.encode()):
            raise ApiError(401, "Authorization", "a valid 'Bearer <token>' header is required",
                           headers={"WWW-Authenticate": "Bearer"})

    def _folder(self, story_id: str) -> str:
        if not STORY_ID.match(story_id):
            raise ApiError(404, "id", f"no story {story_id!r}")
        return self.config.storage.uri(self.config.serve.stories, story_id)

    @api.get("/", response_class=HTMLResponse)
    def page(self) -> str:
        return self._page

    @api.get("/healthz")
    def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/v1/models")
    async def models(self, request: Request) -> dict[str, Any]:
        self._authorize(request)
        writer, painter = await asyncio.gather(self.writer.models.remote(), self.painter.models.remote())
        return {**writer, **painter}

    @api.post("/v1/stories")
    async def create_story(self, request: Request) -> StreamingResponse:
        self._authorize(request)
        limits = self.config.serve
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limits.max_body_bytes:
            raise ApiError(413, None, f"body of {declared} bytes is over serve.max_body_bytes ({limits.max_body_bytes})")
        story = parse_story_request(await _read_body(request, limits.max_body_bytes), limits)
        story_id = uuid.uuid4().hex
        # A full writer queue is refused by Serve itself: 503 with the writer's Retry-After.
        stream = self.writer.options(stream=True).write.remote(story_id, story.text, story.image, story.segments,
                                                               story.seed)
        header, painter_models = await asyncio.gather(anext(stream), self.painter.models.remote(),
                                                      return_exceptions=True)
        for part, failure in (("writer", header), ("painter", painter_models)):
            if isinstance(failure, BaseException):
                stream.cancel()  # the writer may have taken a row for a story that will not be read
                if isinstance(failure, StoryInputError):  # the writer read the opening (its tokens) and refused it
                    field, _, problem = str(getattr(failure, "cause", failure)).partition(":")
                    raise ApiError(422, field, problem.strip()) from None
                if isinstance(failure, REPLICA_LOST):
                    raise ApiError(503, None, f"the {part} was lost before the story began "
                                   f"({type(failure).__name__}); retry",
                                   headers={"Retry-After": str(getattr(limits, part).retry_after_s)}) from None
                raise failure
        record = StoryRecord(id=story_id, opening=story.text, opening_image=story.image,
                             header={**header, "models": {**header["models"], **painter_models}})
        events = StoryStream(record, stream, self.painter, limits.painter.retries, self._folder(story_id))
        return StreamingResponse(events.events(), media_type=NDJSON, headers={"X-Story-Id": story_id})

    @api.get("/v1/stories/{story_id}")
    def story(self, story_id: str, request: Request) -> Response:
        self._authorize(request)
        return Response(_read(join(self._folder(story_id), STORY_FILE), story_id), media_type="application/json")

    @api.get("/v1/stories/{story_id}/{name}")
    def picture(self, story_id: str, name: str, request: Request) -> Response:
        self._authorize(request)
        match = PNG_NAME.match(name)
        if match is None:
            raise ApiError(404, "index", f"{name!r} is not <index>.png")
        uri = join(self._folder(story_id), image_name(int(match[1])))
        return Response(_read(uri, f"{story_id}/{name}"), media_type="image/png")

