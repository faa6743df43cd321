"""Attention benchmark: the paper's Table 2, time and memory on one model, quality on the trained ones.

    python jobs/bench_attention.py --out DIR [--config tiny] [KEY=VALUE ...]
    ray job submit --working-dir . -- python jobs/bench_attention.py --out s3://bucket/bench \
        [--quality --alias candidate --stories 8 --lengths 25,50] [--no-timing]

Time and memory: a 50-segment story in every cache mode with the same random model at a shape where
attention matters. DIR/attention.json holds, per mode and segment, wall time and its parts (text
decode, putting the context in, image queries), per-token decode latency, KV-cache bytes allocated
and held, process peak RSS; DIR/attention.png plots them; DIR/summary.json holds Table 2 as time and
memory, the targets, and the position mode the run picked as default, with the reason.

Quality (--quality): the models at --alias continue the test split's first --stories openings in
every mode; at each of --lengths segments, FID/KID and CLIP scores against the true frames (past the
data's end, the last true frame) next to the same stories' time and KV memory: attention.json's
"quality" and summary.json's "table2_quality".
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import torch

from seedstory import storage
from seedstory.cli.options import add_config_arguments
from seedstory.config import load_config
from seedstory.eval.attention_quality import quality_table
from seedstory.eval.extractors import build_extractors
from seedstory.eval.held_out import held_out_stories
from seedstory.generation import attention_bench as bench
from seedstory.generation.pipeline import StoryModels, model_references, resolve_models
from seedstory.training.registry import CANDIDATE


def arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    parser.add_argument("--out", required=True, help="output folder (local path or s3://)")
    parser.add_argument("--segments", type=int, default=50)
    parser.add_argument("--text-tokens", type=int, default=32, help="text tokens per segment, then BOI is forced")
    parser.add_argument("--window", type=int, default=1024, help="W in tokens: about 10 segments, the training length")
    parser.add_argument("--recompute-segments", type=int, default=10, help="K of recompute-window")
    parser.add_argument("--caption-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-timing", action="store_true", help="skip the time-and-memory stories")
    parser.add_argument("--quality", action="store_true", help="also score trained models' stories in every mode")
    parser.add_argument("--alias", default=CANDIDATE, help=f"registry alias of the trained models (default: {CANDIDATE})")
    parser.add_argument("--stories", type=int, default=8, help="test-split openings for --quality (default: 8)")
    parser.add_argument("--lengths", default="25,50", help="story lengths scored by --quality (default: 25,50)")
    parser.add_argument("--modes", default=",".join(bench.MODES), help="modes scored by --quality (default: all; "
                        "sink and mm-sink in story.cache.positions)")
    return parser


def main() -> None:
    parser = arguments()
    args = parser.parse_args()
    lengths = sorted({int(n) for n in args.lengths.split(",")})
    if args.no_timing and not args.quality:
        parser.error("--no-timing without --quality leaves nothing to measure")
    if lengths[0] < 1:
        parser.error(f"--lengths must be positive, got {args.lengths}")
    torch.set_num_threads(args.threads)
    report: dict = {"config": {"threads": args.threads}}
    summary: dict = {}
    if not args.no_timing:
        time_and_memory(args, report, summary)
    if args.quality:
        quality(args, lengths, report, summary)
    storage.write_bytes(storage.join(args.out, "attention.json"), json.dumps(report, indent=1).encode())
    storage.write_bytes(storage.join(args.out, "summary.json"), json.dumps(summary, indent=1).encode())


def time_and_memory(args: argparse.Namespace, report: dict, summary: dict) -> None:
    settings = bench.BenchSettings(
        config=args.config, overrides=(*bench.BENCH_SHAPE, *args.overrides), segments=args.segments,
        text_tokens=args.text_tokens, window=args.window, recompute_segments=args.recompute_segments,
        caption_tokens=args.caption_tokens, seed=args.seed,
    )

    def progress(index: int, records: dict[str, list[dict]]) -> None:
        print(f"segment {index}: " + ", ".join(
            f"{name} {1e3 * r[-1]['token_latency_s']:.1f} ms/tok" for name, r in records.items()), flush=True)

    records = bench.run(settings, progress)
    default, reason = bench.pick_positions(records["mm-sink/absolute"], records["mm-sink/rerotate"])
    modes = bench.by_mode(records, default)

    report["config"].update({**dataclasses.asdict(settings), "positions": default})
    report["modes"] = {mode: {"segments": segments} for mode, segments in modes.items()}
    storage.write_bytes(storage.join(args.out, "attention.png"), bench.plot(modes))
    summary.update({
        "table2": bench.table2(modes),
        "targets": bench.check_targets(modes),
        "positions": {"default": default, "reason": reason,
                      "variants": bench.table2({name: records[name] for name in records if "/" in name})},
    })

    print(f"positions: {default} ({reason})")
    for row in summary["table2"] + summary["positions"]["variants"]:
        print(f"{row['mode']:>18} | {row['time_s']:7.1f} s | {row['peak_rss_gb']:5.2f} GB peak RSS | "
              f"{row['kv_mib_at_end']:7.1f} MiB KV allocated ({row['kv_held_mib_at_end']:6.1f} held) | "
              f"{row['token_latency_ms_last10']:6.2f} ms/token")
    for name, target in summary["targets"].items():
        print(f"{'PASS' if target['ok'] else 'MISS'} {name}: {target['value']:.3f} ({target['target']})")


def quality(args: argparse.Namespace, lengths: list[int], report: dict, summary: dict) -> None:
    config = load_config(args.config, args.overrides)
    extractor, pair = build_extractors(config)
    sources = resolve_models(config, model_references(config, args.alias))
    models = StoryModels.load(sources)
    stories = held_out_stories(config, args.stories)
    rows = quality_table(config, models, stories, lengths, extractor, pair, args.modes.split(","),
                         lambda line: print(line, flush=True))
    report["quality"] = {"alias": args.alias, "models": {name: dataclasses.asdict(s) for name, s in sources.items()},
                         "stories": len(stories), "lengths": lengths, "extractor": extractor.identity(),
                         "clip": pair.identity(), "story": config.story.model_dump(mode="json"), "rows": rows}
    summary["table2_quality"] = rows
    for row in rows:
        print(f"{row['mode']:>16} @ {row['segments']:>3} | FID {row['fid']:8.4f} | KID {row['kid']:8.5f} | "
              f"CLIP t-i {row['clip_text_image']:.3f} i-i {row['clip_image_image']:.3f} | "
              f"{row['time_s']:6.1f} s | {row['kv_mib']:7.2f} MiB KV")


if __name__ == "__main__":
    main()
