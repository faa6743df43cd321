"""Prepare a StoryStream dataset for training: the released JSONL + images -> sharded Parquet, frames at the preset's sizes.

    ray job submit --working-dir . -- python jobs/prepare_data.py --config tiny --out s3://seedstory/prepared/toyworld-tiny

Then train any stage on it with `data.prepared=<out>` (the samples are exactly those of the released
form; the pictures are fetched as one Parquet row group per story and decoded at the model's sizes).
Without `--out`, the job prepares the dataset the config trains on (`data.prepared`) from the
released form the same config names, as `make demo` does.
Recipe: config -> each split's stories read, validated and resized by a Ray Data actor pool, one
Parquet file per `--stories-per-shard` stories, bad stories counted and left out (within
`data.failure_budget`) -> `<out>/prepared.json` last (sizes, shards, counts) -> MLflow run -> where to look.
"""

from __future__ import annotations

import argparse

import mlflow

from seedstory.cli.options import add_config_arguments, config_from_args
from seedstory.data.prepare import prepare_dataset
from seedstory.data.story_sets import PREPARED_MANIFEST
from seedstory.storage import join
from seedstory.tracking import run_url, tracked_run

SPLITS = ("train", "val", "test")


def arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="local folder or s3:// URI for the prepared dataset (default: data.prepared)")
    parser.add_argument("--splits", default=",".join(SPLITS), help="comma-separated splits (default: all three)")
    parser.add_argument("--stories-per-shard", type=int, default=256, help="stories per Parquet file (default: 256)")
    parser.add_argument("--no-track", action="store_true", help="do not record an MLflow run")
    add_config_arguments(parser)
    return parser


def main() -> None:
    parser = arguments()
    args = parser.parse_args()
    config = config_from_args(args)
    out = args.out or config.data.prepared
    if out is None:
        parser.error("--out is required when the config names no prepared dataset (data.prepared)")
    # The released form the config also names is what is read, whether the output is the config's prepared
    # dataset or another folder.
    config = config.model_copy(update={"data": config.data.model_copy(update={"prepared": None})})
    splits = [split.strip() for split in args.splits.split(",") if split.strip()]
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown or not splits or args.stories_per_shard < 1:
        raise SystemExit(f"--splits takes {', '.join(SPLITS)} (got {args.splits!r}); --stories-per-shard >= 1")

    manifest, ledgers = prepare_dataset(config, out, splits, args.stories_per_shard)
    for split, ledger in ledgers.items():
        print(f"  {split}: {len(manifest['splits'][split])} shards, {ledger.log_line()}")

    url = None
    if not args.no_track:
        with tracked_run(config.tracking, stage="prepare_data", run_name="prepare_data", params=config) as run:
            for split, ledger in ledgers.items():
                mlflow.log_metrics(ledger.metrics(f"data_{split}"))
            mlflow.log_dict(manifest, "prepared/" + PREPARED_MANIFEST)
            mlflow.set_tag("seedstory.prepared_uri", out)
            url = run_url(run)
    print(f"\nwhere to look:\n  prepared data: {join(out, PREPARED_MANIFEST)}"
          f"\n  train on it:   data.prepared={out}" + (f"\n  MLflow run:    {url}" if url else ""))


if __name__ == "__main__":
    main()
