"""Batch story generation: a prompts JSONL in, one storybook folder per prompt out, with Ray Data.

    ray job submit --working-dir . -- python jobs/generate_stories.py --config tiny \
        --prompts s3://seedstory/prompts.jsonl --out s3://seedstory/stories/batch-1 [--alias candidate]

Recipe: config -> the models at the alias (resolved once, so every actor serves the same versions)
-> prompt lines parsed on the driver (bad ones counted with their line) -> Ray Data actor pool, one
model load per actor, each prompt's storybook (story.json, PNGs, index.html) under --out/<id>/
-> --out/summary.json and where to look. A prompt line is {"text": ..., "image"?: ..., "segments"?:
..., "seed"?: ..., "id"?: ...}; a relative image path is relative to the prompts file. A prompt asking for
more than --max-segments is bad: one prompt must not hold an actor for hours. A local --out or image is
a path on the driver's machine, so the actors then run on the driver's node; on a cluster of many
machines, give s3:// paths.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from seedstory.cli.options import add_config_arguments, config_from_args
from seedstory.generation.batch import (
    SUMMARY_FILE, output_folder, prepare_prompts, prompts_folder, read_prompt_lines, summarize, write_storybooks,
)
from seedstory.generation.pipeline import model_references, resolve_models
from seedstory.storage import check_writable, join, write_bytes
from seedstory.training.registry import CANDIDATE


def arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", required=True, help="prompts JSONL (local path or s3:// URI)")
    parser.add_argument("--out", required=True, help="folder for the storybooks and summary.json (local or s3://)")
    parser.add_argument("--alias", default=CANDIDATE, help=f"registry alias of the models (default: {CANDIDATE})")
    parser.add_argument("--segments", type=int, default=None, help="default segments per story (default: story.segments)")
    parser.add_argument("--max-segments", type=int, default=100, help="the most segments a prompt may ask for")
    parser.add_argument("--actors", type=int, default=1, help="model replicas in the actor pool (default: 1)")
    parser.add_argument("--cpus-per-actor", type=float, default=1.0, help="CPUs each actor reserves (default: 1)")
    add_config_arguments(parser)
    return parser


def main() -> None:
    parser = arguments()
    args = parser.parse_args()
    config = config_from_args(args)
    segments = config.story.segments if args.segments is None else args.segments
    if not 1 <= segments <= args.max_segments:
        parser.error(f"--segments must be in [1, --max-segments={args.max_segments}], got {segments}")
    out = output_folder(args.out)
    check_writable(out)

    sources = resolve_models(config, model_references(config, args.alias))
    lines = read_prompt_lines(args.prompts)
    prompts, bad = prepare_prompts(lines, prompts_folder(args.prompts), segments, args.max_segments)
    print(f"{len(lines)} prompt lines: {len(prompts)} to write, {len(bad)} bad", flush=True)

    results = write_storybooks(config, prompts, sources, out, args.actors, args.cpus_per_actor)

    summary = summarize(results, bad, args.prompts, {name: asdict(s) for name, s in sources.items()})
    write_bytes(join(out, SUMMARY_FILE), json.dumps(summary, indent=2).encode())
    for entry in summary["bad"]:
        print(f"bad prompt {args.prompts}:{entry['line']}: {entry['detail']}")
    print(f"\n{summary['stories']} stories written, {summary['bad_prompts']} bad prompts skipped")
    print(f"summary:    {join(out, SUMMARY_FILE)}")
    for entry in summary["written"][:5]:
        print(f"storybook:  {entry['storybook']}")


if __name__ == "__main__":
    main()
