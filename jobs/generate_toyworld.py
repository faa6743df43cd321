"""Write the toy world (train/val/test JSONL + images, the released StoryStream format), read it
back, and record it in MLflow.

    ray job submit --working-dir . -- python jobs/generate_toyworld.py --config tiny data.toy.stories=256
    python jobs/generate_toyworld.py --config tiny --out ./toyworld --no-track

Recipe: config -> stories written deterministically by seed (and the text corpus, with
data.toy.text_stories) -> every story, image and text story read back and validated -> one MLflow
run (stage `toyworld`) with the data metrics, the summary and the first training story as an image
strip -> where to look.
"""

from __future__ import annotations

import argparse
import json

import mlflow
from PIL import Image

from seedstory import storage
from seedstory.cli.options import add_config_arguments, config_from_args
from seedstory.data.images import decode_image
from seedstory.data.records import parse_story
from seedstory.data.stories import scan_dataset
from seedstory.data.story_text import text_stories
from seedstory.data.toyworld.generate import SPLITS, write_toy_world
from seedstory.tracking import run_url, tracked_run


def story_strip(jsonl_uri: str, image_root: str) -> tuple[Image.Image, list[str]]:
    """The first story of a split as one image strip, with its captions."""
    story = parse_story(storage.read_bytes(jsonl_uri).decode().splitlines()[0])
    frames = [decode_image(storage.read_bytes(storage.join(image_root, path))) for path in story.images]
    width, height = frames[0].size
    strip = Image.new("RGB", (width * len(frames), height))
    for index, frame in enumerate(frames):
        strip.paste(frame, (index * width, 0))
    return strip, list(story.captions)


def arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help="local path or s3:// URI (default: data.toy.uri)")
    parser.add_argument("--no-track", action="store_true", help="do not record an MLflow run")
    add_config_arguments(parser)
    return parser


def main() -> None:
    args = arguments().parse_args()
    config = config_from_args(args)

    world = write_toy_world(config.data.toy, args.out)
    print(json.dumps(world, indent=2))

    ledger = scan_dataset([world["jsonl"][split] for split in SPLITS], world["image_root"], config.data.failure_budget)
    print(ledger.log_line())
    ledger.check()
    text = world.get("text")
    if text:
        stories, bad = text_stories([text["jsonl"]])
        if bad or len(stories) != text["stories"]:
            raise RuntimeError(f"{text['jsonl']} reads back {len(stories)} of {text['stories']} text stories "
                               f"({bad} bad lines)")
        print(f"text corpus: {len(stories)} stories, {text['jsonl']}")
    if args.no_track:
        return

    with tracked_run(config.tracking, stage="toyworld", run_name="toyworld", params=config) as run:
        mlflow.log_metrics({**ledger.metrics(), "data/text_stories": float(text["stories"] if text else 0)})
        mlflow.log_dict(world, "toyworld/summary.json")
        strip, captions = story_strip(world["jsonl"]["train"], world["image_root"])
        mlflow.log_image(strip, "toyworld/first_train_story.png")
        mlflow.log_text("\n".join(captions), "toyworld/first_train_story.txt")
        url = run_url(run)
    print(f"\nwhere to look:\n  MLflow run:     {url}\n  toy-world data: {world['uri']}")


if __name__ == "__main__":
    main()
