"""Serving benchmark: the story service under load, and each half scaling on its own.

    python jobs/bench_serve.py --out DIR [--config demo] [KEY=VALUE ...]

Deploys ``serve/config.yaml`` (its models: the config's registered models at ``serve.alias``) on
a free loopback port of the Ray cluster at $RAY_API_SERVER_ADDRESS, then:

1. drives it at concurrency 1, 4 and 16 (a bounded number of stories each) and records stories/s,
   p50/p95 time to first text, first picture and whole story, 4xx/5xx, and for each story its wall
   time over the slower of its writing and its painting (1.0: the faster half is wholly hidden);
2. re-deploys a painter-heavy variant (many denoising steps, short texts) and a writer-heavy one
   (one step, long texts), waits until every deployment is back at its minimum, loads each, and
   traces the running replicas of every deployment.

Writes DIR/serve.json and DIR/serve.png, and takes the service down.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import yaml

from seedstory import figures, storage
from seedstory.cli.options import add_config_arguments
from seedstory.serving import load
from seedstory.serving.deploy import APP_NAME, DEFAULT_FILE, deploy, shutdown, with_selection
from seedstory.stack import free_port

# Every story has exactly its segments: a model that does not draw is made to after a few words.
STORY_SHAPE = ["story.on_text_budget=force-image", "story.max_text_tokens=12"]
SCENARIOS = {
    "painter_heavy": ["model.scheduler.inference_steps=40", "story.max_text_tokens=2"],
    "writer_heavy": ["model.scheduler.inference_steps=1", "story.max_text_tokens=160"],
}
TARGETS = {"status_5xx": 0, "wall_over_slower_at_1": 1.15}


def arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    parser.set_defaults(config="demo")
    parser.add_argument("--out", required=True, help="output folder (local path or s3://)")
    parser.add_argument("--file", type=Path, default=DEFAULT_FILE, help="the deploy config to start from")
    parser.add_argument("--address", default=os.environ.get("RAY_API_SERVER_ADDRESS", "http://127.0.0.1:8265"))
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--stories-per-level", type=int, default=32, help="at most; at least the concurrency")
    parser.add_argument("--segments", type=int, default=6)
    parser.add_argument("--deadline", type=float, default=180.0, help="seconds per level after which no story starts")
    parser.add_argument("--scenario-seconds", type=float, default=90.0, help="load time of each scaling scenario")
    return parser


def main() -> None:
    args = arguments().parse_args()

    base = yaml.safe_load(args.file.read_text())
    port = free_port()
    scratch = Path(os.environ.get("TMPDIR", "/tmp")) / f"seedstory-bench-serve-{port}.yaml"
    token = os.environ.get("SEEDSTORY_API_TOKEN")

    def serve_with(extra: list[str]) -> str:
        selection = {"config": args.config, "alias": None, "overrides": [*args.overrides, *STORY_SHAPE, *extra]}
        scratch.write_text(yaml.safe_dump(with_selection(base, selection, port=port), sort_keys=False))
        return deploy(scratch, args.address, timeout_s=600)

    report: dict = {"config": args.config, "overrides": args.overrides, "story_shape": STORY_SHAPE,
                    "segments": args.segments, "deploy_config": str(args.file), "levels": {}, "scenarios": {}}
    try:
        url = serve_with([])
        load.read_story(url, {"text": "Warm-up.", "segments": 1}, token, 120)
        for concurrency in args.levels:
            began = time.perf_counter()
            results = load.drive(url, token, concurrency, max(concurrency, args.stories_per_level), args.segments,
                                 args.deadline)
            level = load.summarize(results, time.perf_counter() - began)
            report["levels"][str(concurrency)] = level
            print(f"concurrency {concurrency}: {level['completed']}/{level['stories']} stories, "
                  f"{level['stories_per_s']:.2f}/s, first text p50 {level['time_to_first_text_s']['p50']:.2f} s, "
                  f"story p95 {level['story_s']['p95']:.2f} s, 5xx {level['status_5xx']}", flush=True)
        minimum = {d["name"]: d["autoscaling_config"]["min_replicas"] for d in base["applications"][0]["deployments"]}
        for name, extra in SCENARIOS.items():
            url = serve_with(extra)
            load.ReplicaTrace(args.address, APP_NAME).settle(minimum, timeout_s=300)
            with load.ReplicaTrace(args.address, APP_NAME) as trace:
                began = time.perf_counter()
                results = load.drive(url, token, 16, 10_000, args.segments, args.scenario_seconds)
                wall = time.perf_counter() - began
            report["scenarios"][name] = {"overrides": extra, "peak_replicas": trace.peak(), "trace": trace.samples,
                                         "failed_polls": trace.failed_polls, **load.summarize(results, wall)}
            print(f"{name}: peak replicas {trace.peak()}", flush=True)
    finally:
        shutdown(args.address)
        scratch.unlink(missing_ok=True)

    report["verdicts"] = verdicts(report, base)
    for line in report["verdicts"]:
        print(line)
    storage.write_bytes(storage.join(args.out, "serve.json"), json.dumps(report, indent=2).encode())
    storage.write_bytes(storage.join(args.out, "serve.png"), plot(report))
    print(f"wrote {storage.join(args.out, 'serve.json')} and serve.png")


def verdicts(report: dict, deploy_config: dict) -> list[str]:
    scale = {d["name"]: d["autoscaling_config"] for d in deploy_config["applications"][0]["deployments"]}
    fives = sum(level["status_5xx"] for level in report["levels"].values())
    lines = [f"{'PASS' if fives == 0 else 'MISS'} 5xx over every level: {fives} (target 0)"]
    one = report["levels"].get("1")
    if one:
        ratio = one["wall_over_slower"]["p50"]
        lines.append(f"{'PASS' if ratio <= TARGETS['wall_over_slower_at_1'] else 'MISS'} one story's wall time / "
                     f"max(write, paint), p50 at concurrency 1: {ratio:.3f} (target <= 1.15)")
    for name, busy, idle in (("painter_heavy", "painter", "writer"), ("writer_heavy", "writer", "painter")):
        peak = report["scenarios"].get(name, {}).get("peak_replicas", {})
        ok = peak.get(busy) == scale[busy]["max_replicas"] and peak.get(idle) == scale[idle]["min_replicas"]
        lines.append(f"{'PASS' if ok else 'MISS'} {name}: {busy} peaked at {peak.get(busy)} "
                     f"(max {scale[busy]['max_replicas']}), {idle} at {peak.get(idle)} (min {scale[idle]['min_replicas']})")
    return lines


def plot(report: dict) -> bytes:
    figure, (latency, painter_heavy, writer_heavy) = figures.subplots(1, 3, figsize=(16, 4.5))
    levels = sorted(report["levels"], key=int)
    for key, label in (("time_to_first_text_s", "first text"), ("time_to_first_image_s", "first picture"),
                       ("story_s", "whole story")):
        latency.plot([int(c) for c in levels], [report["levels"][c][key]["p50"] for c in levels], "o-", label=f"{label} p50")
        latency.plot([int(c) for c in levels], [report["levels"][c][key]["p95"] for c in levels], "x--", label=f"{label} p95")
    latency.set(xscale="log", xlabel="concurrent stories", ylabel="seconds", title="latency by concurrency")
    latency.set_xticks([int(c) for c in levels], levels)
    latency.legend(fontsize=7)
    for axis, name in ((painter_heavy, "painter_heavy"), (writer_heavy, "writer_heavy")):
        trace = report["scenarios"].get(name, {}).get("trace", [])
        for deployment in ("writer", "painter", "ingress"):
            axis.step([s["t_s"] for s in trace], [s.get(deployment, 0) for s in trace], where="post", label=deployment)
        axis.set(xlabel="seconds under load", ylabel="running replicas", title=f"{name.replace('_', '-')} load")
        axis.legend(fontsize=8)
    return figures.png(figure)

if __name__ == "__main__":
    main()
