"""Samples/s each stage's Ray Data pipeline delivers to a consumer, on the local stack.

Writes a toy world to the stack's bucket, then for each stage streams its samples from S3
through the pipeline into a consumer iterating torch batches, and records samples/s.

    seedstory stack up && source .stack/env.sh && python jobs/bench_data.py --out out/bench
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import ray

from seedstory.cli.options import add_config_arguments, config_from_args
from seedstory.data.pipeline import stage_dataset
from seedstory.data.toyworld.generate import toy_story, write_toy_world
from seedstory.data.stage_collate import WindowCollate
from seedstory.tokenizer import INST, build_tiny_tokenizer, image_token_ids

STAGES = ("detokenizer_pretrain", "story_instruct", "detokenizer_adapt")


def arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="directory for data.json")
    parser.add_argument("--batch-size", type=int, default=8)
    add_config_arguments(parser)
    return parser


def main() -> None:
    args = arguments().parse_args()
    config = config_from_args(args)
    uri = config.storage.uri("bench", "toyworld")
    config.data.train_jsonl = [f"{uri}/train.jsonl"]
    config.data.image_root = f"{uri}/images"
    config.data.prepared = None  # what is measured is the released form, whatever the preset trains from

    world = write_toy_world(config.data.toy, uri)
    captions = [c for i in range(config.data.toy.stories) for c in toy_story(config.data.toy, i).record.captions]
    tokenizer = build_tiny_tokenizer([*captions, INST], config.model.llm.vocab_size, config.model.image_tokens)

    ray.init(log_to_driver=False)
    results = {"preset": config.model.preset, "stories": world["splits"]["train"], "batch_size": args.batch_size,
               "format": "raw jsonl + images", "storage": "local S3 (SeaweedFS)", "stages": {}}
    for stage in STAGES:
        dataset, report = stage_dataset(stage, config, "train", tokenizer=None if stage == STAGES[0] else tokenizer)
        collate = None if stage == STAGES[0] else WindowCollate(image_token_ids(tokenizer, config.model.image_tokens).pad)
        start, samples = time.perf_counter(), 0
        for batch in dataset.iter_torch_batches(batch_size=args.batch_size, collate_fn=collate):
            samples += len(batch["vit_pixels"]) if stage == STAGES[0] else len(batch["input_ids"])
        seconds = time.perf_counter() - start
        results["stages"][stage] = {"samples": samples, "seconds": round(seconds, 2),
                                    "samples_per_s": round(samples / seconds, 1), **report.metrics()}
        print(stage, results["stages"][stage])
    ray.shutdown()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "data.json").write_text(json.dumps(results, indent=2))
    print(f"wrote {out / 'data.json'}")


if __name__ == "__main__":
    main()
