"""Write the toy world (train/val/test JSONL + images, StoryStream format) deterministically by seed.

    python jobs/generate_toyworld.py --config tiny data.toy.stories=256 [--out s3://bucket/toy]
"""

from __future__ import annotations

import argparse
import json

from seedstory.cli.options import add_config_arguments, config_from_args
from seedstory.data.toyworld.generate import write_toy_world


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help="local path or s3:// URI (default: data.toy.uri)")
    add_config_arguments(parser)
    args = parser.parse_args()
    config = config_from_args(args)
    summary = write_toy_world(config.data.toy, args.out)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
