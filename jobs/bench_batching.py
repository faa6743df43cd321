"""Batching benchmark: many stories per writer, continuously batched under the multimodal attention sink.

    python jobs/bench_batching.py --out DIR [--batches 1,2,4,8,16] [--segments 25] [KEY=VALUE ...]
    python jobs/bench_batching.py --dtype bfloat16 --repeats 3 --out DIR    # the README's: a CPU with bf16 units
    ray job submit --working-dir . -- python jobs/bench_batching.py --out s3://bucket/bench/batching
    python jobs/bench_batching.py --config paper --shape config --device cuda --dtype bfloat16 \
        --batches 1,32 --out DIR        # the paper's LLaMA, random weights, on a GPU

The attention benchmark's model (mm-sink, W = 1024; ``--shape config`` takes the config's own model
instead), stories of --segments segments arriving every --arrive-every engine steps,
--stories-per-row per row in all. Each batch size runs in its own Ray task and process, so peak RSS
is that batch's; ``--in-process`` runs them one after another in this process instead, for a machine
without Ray. Writes DIR/batching.json (tokens/s, stories/s, p50/p95 per-token latency, KV bytes and
peak memory per batch size, the first four the medians of --repeats interleaved runs; decoding's
tokens/s against the bandwidth ceiling; how many 50-segment stories fit one KV budget in mm-sink
against dense; the targets) and DIR/batching.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from seedstory import storage
from seedstory.cli.options import add_config_arguments
from seedstory.generation import batching_bench as bench
from seedstory.generation.attention_bench import BENCH_SHAPE, BenchSettings


def arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    parser.add_argument("--out", required=True, help="output folder (local path or s3://)")
    parser.add_argument("--batches", default="1,2,4,8,16", help="stories per batch to measure")
    parser.add_argument("--segments", type=int, default=25)
    parser.add_argument("--text-tokens", type=int, default=32, help="text tokens per segment, then BOI is forced")
    parser.add_argument("--window", type=int, default=1024)
    parser.add_argument("--caption-tokens", type=int, default=16)
    parser.add_argument("--stories-per-row", type=int, default=2, help="stories per batch row, arriving staggered")
    parser.add_argument("--arrive-every", type=int, default=8, help="engine steps between two arrivals")
    parser.add_argument("--fit-segments", type=int, default=50, help="story length of the KV-budget comparison")
    parser.add_argument("--shape", choices=("bench", "config"), default="bench",
                        help="bench: the attention benchmark's LLaMA over the config; config: the config's own model")
    parser.add_argument("--device", default="cpu", help="torch device of the model and cache (cpu, cuda)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="the random weights' dtype")
    parser.add_argument("--in-process", action="store_true",
                        help="run every batch size in this process, without Ray (peak RSS is then the largest so far)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs of every batch size, interleaved; the table gives each figure's median")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main() -> None:
    parser = arguments()
    args = parser.parse_args()
    batches = sorted({int(b) for b in args.batches.split(",")})
    if batches[0] < 1:
        parser.error(f"--batches must be positive, got {args.batches}")
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    workload = BenchSettings(
        config=args.config, overrides=(*(BENCH_SHAPE if args.shape == "bench" else ()), *args.overrides),
        segments=args.segments, text_tokens=args.text_tokens, window=args.window, recompute_segments=1,
        caption_tokens=args.caption_tokens, seed=args.seed,
    )
    settings = bench.BatchingSettings(workload, stories_per_row=args.stories_per_row,
                                      arrive_every=args.arrive_every, threads=args.threads, device=args.device,
                                      dtype=args.dtype)

    run_batch, kv_fit = (bench.run_batch, bench.kv_fit) if args.in_process else remote_tasks(args)
    report = {"config": dataclasses.asdict(settings) | {"repeats": args.repeats}, "batches": []}
    runs: dict[int, list[dict]] = {batch: [] for batch in batches}
    for _ in range(args.repeats):  # round by round, so that the machine's drift touches every batch size alike
        for batch in batches:
            result = run_batch(settings, batch)
            ceiling = ("no forward carried text tokens alone" if result["decode_tokens_per_s"] is None else
                       f"decoding {result['decode_tokens_per_s']:.1f} tokens/s = "
                       f"{result['decode_bandwidth_fraction']:.3f} of the bandwidth ceiling "
                       f"({result['decode_ceiling_tokens_per_s']:.1f})")
            print(f"batch {batch:>3}: {result['tokens_per_s']:7.1f} tokens/s, {result['stories_per_s']:.3f} stories/s, "
                  f"p50 {1e3 * result['token_latency_p50_s']:.1f} ms, p95 {1e3 * result['token_latency_p95_s']:.1f} ms "
                  f"per token, {result['kv_bytes'] / 2**20:.1f} MiB KV; {ceiling}", flush=True)
            runs[batch].append(result)
            report["batches"] = [bench.median_run(runs[b]) for b in batches if runs[b]]
            write(args.out, report)  # a run cut short keeps what it measured
    fit = kv_fit(settings, args.fit_segments)
    print(f"one KV budget of {fit['budget_bytes'] / 2**20:.0f} MiB holds {fit['mm_sink_stories']} mm-sink stories "
          f"of {fit['segments']} segments, "
          f"{fit['dense_stories']} dense ({fit['ratio']:.2f}x)")

    report |= {"fit": fit, "targets": targets(report["batches"], fit)}
    for name, target in report["targets"].items():
        print(f"{'PASS' if target['ok'] else 'MISS'} {name}: {target['value']:.3f} ({target['target']})")
    write(args.out, report)
    storage.write_bytes(storage.join(args.out, "batching.png"), bench.plot(report["batches"]))


def remote_tasks(args: argparse.Namespace):
    """Each measurement in a fresh worker process (``max_calls=1``): ru_maxrss is a process's peak."""
    import ray  # only this path needs a Ray cluster

    gpus = 0 if args.device == "cpu" else 1
    run_batch = ray.remote(num_cpus=args.threads, num_gpus=gpus, max_calls=1)(bench.run_batch)
    kv_fit = ray.remote(num_cpus=1, max_calls=1)(bench.kv_fit)
    return (lambda *a: ray.get(run_batch.remote(*a))), (lambda *a: ray.get(kv_fit.remote(*a)))


def write(out: str, report: dict) -> None:
    storage.write_bytes(storage.join(out, "batching.json"), json.dumps(report, indent=1).encode())


def targets(results: list[dict], fit: dict) -> dict[str, dict]:
    """The throughput and latency targets at batch 8 against batch 1 (when both ran), and the KV fit."""
    by_batch = {r["batch"]: r for r in results}
    found = {"mm_sink_stories_vs_dense": {"value": fit["ratio"], "target": ">= 4", "ok": fit["ratio"] >= 4}}
    if 1 in by_batch and 8 in by_batch:
        one, eight = by_batch[1], by_batch[8]
        speedup = eight["tokens_per_s"] / one["tokens_per_s"]
        latency = eight["token_latency_p95_s"] / one["token_latency_p95_s"]
        found["tokens_per_s_at_8_vs_1"] = {"value": speedup, "target": ">= 4", "ok": speedup >= 4}
        found["token_latency_p95_at_8_vs_1"] = {"value": latency, "target": "<= 2", "ok": latency <= 2}
    return found


if __name__ == "__main__":
    main()
