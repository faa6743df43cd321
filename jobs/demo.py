"""The demo on the embedded stack: write the toy world to object storage, read it back, track it.

    ray job submit --working-dir . -- python jobs/demo.py --config tiny [KEY=VALUE ...]

Recipe: config -> toy world written in the released StoryStream format -> every story and image
read back and validated -> one MLflow run with the data metrics and a story strip -> where to look.
"""

from __future__ import annotations

import argparse
import io

import mlflow
from PIL import Image

from seedstory import storage
from seedstory.cli.options import add_config_arguments, config_from_args
from seedstory.data.records import parse_story
from seedstory.data.stories import scan_dataset
from seedstory.data.toyworld.generate import SPLITS, write_toy_world
from seedstory.tracking import run_url, tracked_run


def story_strip(jsonl_uri: str, image_root: str) -> tuple[Image.Image, list[str]]:
    """The first story of a split as one image strip, with its captions."""
    first_line = storage.read_bytes(jsonl_uri).decode().splitlines()[0]
    story = parse_story(first_line)
    frames = [Image.open(io.BytesIO(storage.read_bytes(storage.join(image_root, path)))).convert("RGB")
              for path in story.images]
    width, height = frames[0].size
    strip = Image.new("RGB", (width * len(frames), height))
    for index, frame in enumerate(frames):
        strip.paste(frame, (index * width, 0))
    return strip, list(story.captions)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    config = config_from_args(parser.parse_args())

    world = write_toy_world(config.data.toy)
    print(f"wrote {world['stories']} toy-world stories ({world['frames']} frames) to {world['uri']}")

    ledger = scan_dataset([world["jsonl"][split] for split in SPLITS], world["image_root"], config.data.failure_budget)
    print(ledger.log_line())
    ledger.check()

    with tracked_run(config.tracking, stage="demo", run_name="toyworld-demo", params=config) as run:
        mlflow.log_metrics(ledger.metrics())
        mlflow.log_dict(world, "toyworld/summary.json")
        strip, captions = story_strip(world["jsonl"]["train"], world["image_root"])
        mlflow.log_image(strip, "toyworld/first_train_story.png")
        mlflow.log_text("\n".join(captions), "toyworld/first_train_story.txt")
        url = run_url(run)

    print("\nwhere to look:")
    print(f"  MLflow run:      {url}")
    print(f"  toy-world data:  {world['uri']}  (train/val/test JSONL + images/, the released StoryStream format)")


if __name__ == "__main__":
    main()
