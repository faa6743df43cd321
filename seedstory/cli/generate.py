"""``seedstory generate``: one story from registered (or exported) models into a storybook folder."""

from __future__ import annotations

import argparse
import sys

from PIL import Image

from seedstory.cli.options import add_config_arguments, config_from_args
from seedstory.training.registry import CANDIDATE


def _opening(args: argparse.Namespace, config) -> tuple[str, Image.Image | None]:
    from seedstory.data.story_sets import split_jsonl
    from seedstory.data.stories import story_opening
    from seedstory.generation.pipeline import StoryInputError, read_image

    if args.from_split:
        if args.text is not None or args.image is not None:
            raise StoryInputError("--from-split takes the opening from the dataset: drop --text and --image")
        return story_opening(split_jsonl(config, args.from_split), config.data.image_root, args.story)
    if args.text is None or not args.text.strip():
        raise StoryInputError("text: empty; give --text \"...\" (the story's first sentence)")
    if args.image is not None and not args.image.strip():
        raise StoryInputError("image: empty; give --image PATH, or leave it out for a story without one")
    return args.text, read_image(args.image) if args.image is not None else None


def _refused(err: Exception | str) -> int:
    print(f"seedstory generate: error: {err}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    from seedstory.generation.pipeline import (
        StoryInputError, StoryModels, StoryPipeline, model_references, request_settings, resolve_models,
    )
    from seedstory.generation.storybook import save_storybook
    from seedstory.models.weights import WeightsError
    from seedstory.storage import check_writable

    config = config_from_args(args)
    try:
        settings = request_settings(config.story, args.segments, args.seed)
        text, image = _opening(args, config)
        sources = resolve_models(config, model_references(config, args.alias, args.mllm, args.detokenizer))
    except (StoryInputError, LookupError, ValueError, FileNotFoundError) as err:
        return _refused(err)
    try:
        check_writable(args.out)
    except OSError as err:
        return _refused(f"out: cannot write to {args.out}: {err}")
    try:
        pipeline = StoryPipeline(StoryModels.load(sources), config)
    except (WeightsError, FileNotFoundError) as err:
        return _refused(f"models: {err}")
    try:  # the opening's length in tokens is checked once the tokenizer is loaded
        story = pipeline.write(text, image, segments=settings.segments, seed=settings.seed)
    except StoryInputError as err:
        return _refused(err)
    print(f"opening: {story.opening}", flush=True)
    for segment in story:
        print(f"[{segment.index}] {segment.text}", flush=True)
    page = save_storybook(pipeline.storybook(story), args.out)
    print(f"outcome: {story.outcome.value}; {len(story.segments)} segments; painting overlap "
          f"{story.timings.overlap:.0%}\nstorybook: {page}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    text = "write one story from the trained models: text and pictures into a storybook folder"
    parser = subparsers.add_parser("generate", help=text, description=text)
    parser.add_argument("--text", help="the story's first sentence")
    parser.add_argument("--image", help="the opening picture (local path or s3:// URI, JPEG or PNG); optional")
    parser.add_argument("--from-split", choices=("train", "val", "test"),
                        help="open with the first caption and frame of a story of this split of config.data "
                             "instead of --text/--image; see --story")
    parser.add_argument("--story", type=int, default=0, help="which story of --from-split, in file order (default: 0)")
    parser.add_argument("--segments", type=int, default=None, help="segments after the opening (default: story.segments)")
    parser.add_argument("--seed", type=int, default=None, help="sampling and painting seed (default: story.seed)")
    parser.add_argument("--alias", default=CANDIDATE,
                        help=f"registry alias of the stage-2 and stage-3 models (default: {CANDIDATE})")
    parser.add_argument("--mllm", help="an MLLM export URI or models:/ reference instead of the alias")
    parser.add_argument("--detokenizer", help="a de-tokenizer export URI or models:/ reference instead of the alias")
    parser.add_argument("--out", required=True, help="the storybook folder (local path or s3:// URI)")
    add_config_arguments(parser)
    parser.set_defaults(handler=run)
