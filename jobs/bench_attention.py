"""Attention benchmark: a 50-segment story in every cache mode with the same model.

    python jobs/bench_attention.py --out DIR [--config tiny] [KEY=VALUE ...]
    ray job submit --working-dir . -- python jobs/bench_attention.py --out s3://bucket/bench

Writes DIR/attention.json (per mode and segment: wall time and its parts (text decode, putting the
context in, image queries), per-token decode latency, KV-cache bytes allocated and held, process peak
RSS), DIR/attention.png (per-token latency, time per segment and KV memory vs segment, one line per
mode) and DIR/summary.json (the paper's Table 2 as time and memory, the issue's targets, and the
position mode the run picked as default, with the reason).
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import torch

from seedstory import storage
from seedstory.cli.options import add_config_arguments
from seedstory.generation import attention_bench as bench

# A LLaMA where attention is a visible share of decoding at 5k tokens on a 2-core CPU while all
# seven stories finish in a few minutes; 64 image tokens as in the paper. KEY=VALUE overrides win.
BENCH_SHAPE = (
    "model.image_tokens=64", "model.input_resampler.num_queries=64",
    "model.llm.hidden_size=1024", "model.llm.intermediate_size=2752", "model.llm.num_layers=4",
    "model.llm.num_heads=8", "model.llm.num_kv_heads=8", "model.llm.max_position_embeddings=8192",
)


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
    return parser


def main() -> None:
    args = arguments().parse_args()
    torch.set_num_threads(args.threads)
    settings = bench.BenchSettings(
        config=args.config, overrides=(*BENCH_SHAPE, *args.overrides), segments=args.segments,
        text_tokens=args.text_tokens, window=args.window, recompute_segments=args.recompute_segments,
        caption_tokens=args.caption_tokens, seed=args.seed,
    )

    def progress(index: int, records: dict[str, list[dict]]) -> None:
        print(f"segment {index}: " + ", ".join(
            f"{name} {1e3 * r[-1]['token_latency_s']:.1f} ms/tok" for name, r in records.items()), flush=True)

    records = bench.run(settings, progress)
    default, reason = bench.pick_positions(records["mm-sink/absolute"], records["mm-sink/rerotate"])
    modes = bench.by_mode(records, default)

    config = {**dataclasses.asdict(settings), "threads": args.threads, "positions": default}
    storage.write_bytes(storage.join(args.out, "attention.json"), json.dumps(
        {"config": config, "modes": {mode: {"segments": segments} for mode, segments in modes.items()}}, indent=1
    ).encode())
    storage.write_bytes(storage.join(args.out, "attention.png"), bench.plot(modes))
    summary = {
        "table2": bench.table2(modes),
        "targets": bench.check_targets(modes),
        "positions": {"default": default, "reason": reason,
                      "variants": bench.table2({name: records[name] for name in records if "/" in name})},
    }
    storage.write_bytes(storage.join(args.out, "summary.json"), json.dumps(summary, indent=1).encode())

    print(f"positions: {default} ({reason})")
    for row in summary["table2"] + summary["positions"]["variants"]:
        print(f"{row['mode']:>18} | {row['time_s']:7.1f} s | {row['peak_rss_gb']:5.2f} GB peak RSS | "
              f"{row['kv_mib_at_end']:7.1f} MiB KV allocated ({row['kv_held_mib_at_end']:6.1f} held) | "
              f"{row['token_latency_ms_last10']:6.2f} ms/token")
    for name, target in summary["targets"].items():
        print(f"{'PASS' if target['ok'] else 'MISS'} {name}: {target['value']:.3f} ({target['target']})")


if __name__ == "__main__":
    main()
