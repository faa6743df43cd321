"""Evaluate the models at an alias as the paper does, and compare them with another alias.

    ray job submit --working-dir . -- python jobs/evaluate.py --config tiny --out s3://seedstory/eval/run-1 \
        [--alias candidate] [--compare-alias production]

Recipe: config -> the extractors (failing before anything is generated if their weights are
missing) -> the test split's first eval.stories stories; each opening (first frame and caption)
becomes a prompt -> for each alias, the batch generator's Ray Data actor pool writes one
storybook per opening -> FID/KID and CLIP scores against the held-out frames, the toy world's
exact judge, and the LLM judge's scores when eval.judge is configured, overall and per segment
-> one MLflow run per evaluated alias (metrics, per-segment metrics as steps, eval.json, the plot
and a few storybooks as artifacts, tags naming the model versions and the dataset) -> with
--compare-alias, the side-by-side table and the judge's pairwise win rates -> DIR/eval.json.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict

from seedstory.cli.options import add_config_arguments, config_from_args
from seedstory.data.images import encode_image
from seedstory.data.toyworld.judge import Judge
from seedstory.eval import runs, story_metrics
from seedstory.eval.extractors import build_extractors
from seedstory.eval.held_out import held_out_stories
from seedstory.eval.llm_judge import JudgeClient, JudgedStory, judge_pairs, judge_scores
from seedstory.generation.batch import Prompt, write_storybooks
from seedstory.generation.pipeline import model_references, resolve_models
from seedstory.generation.storybook import read_storybook
from seedstory.storage import join, read_bytes, write_bytes
from seedstory.training.registry import CANDIDATE

STORYBOOK_ARTIFACTS = 3


def arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder (local path or s3://)")
    parser.add_argument("--alias", default=CANDIDATE, help=f"registry alias to evaluate (default: {CANDIDATE})")
    parser.add_argument("--compare-alias", default=None, help="a second alias, evaluated the same way and compared")
    parser.add_argument("--actors", type=int, default=1, help="model replicas generating stories (default: 1)")
    parser.add_argument("--cpus-per-actor", type=float, default=1.0, help="CPUs each actor reserves (default: 1)")
    add_config_arguments(parser)
    return parser


def main() -> None:
    parser = arguments()
    args = parser.parse_args()
    config = config_from_args(args)
    if args.compare_alias == args.alias:
        parser.error("--compare-alias must differ from --alias")
    settings = config.eval

    extractor, pair = build_extractors(config)
    client = JudgeClient(settings.judge) if settings.judge else None
    held_out = held_out_stories(config, settings.stories)
    prompts = []
    for number, story in enumerate(held_out, start=1):
        opening = join(args.out, "openings", f"{number:04d}.png")
        write_bytes(opening, encode_image(story.frames[0], ".png"))
        prompts.append(Prompt(line=number, id=f"story-{number:04d}", text=story.captions[0], image=opening,
                              segments=settings.segments, seed=settings.seed))
    print(f"{len(prompts)} openings from {config.data.test_jsonl}; extractor {extractor.name} ({extractor.digest}), "
          f"CLIP {pair.name} ({pair.digest})", flush=True)

    results, sources_of, judged, curves = {}, {}, {}, {}
    for alias in filter(None, (args.alias, args.compare_alias)):
        began = time.perf_counter()
        sources = sources_of[alias] = resolve_models(config, model_references(config, alias))
        folder = join(args.out, alias)
        rows = write_storybooks(config, prompts, sources, join(folder, "stories"), args.actors, args.cpus_per_actor)
        failed = [row for row in rows if row["detail"]]
        if failed:
            raise RuntimeError(f"{len(failed)} test openings could not be written, e.g. {failed[0]['detail']}")
        books = {row["id"]: read_storybook(row["storybook"].removesuffix("/index.html")) for row in rows}
        generated = [story_metrics.GeneratedStory(story, [s["text"] for s in books[p.id][0]["segments"]],
                                                  books[p.id][1]) for p, story in zip(prompts, held_out)]
        result = {"models": {name: asdict(s) for name, s in sources.items()},
                  "images": story_metrics.image_text_metrics(generated, extractor, pair, settings)}
        if settings.toy_judge:
            result["toy"] = story_metrics.toy_judge_metrics(generated, Judge(config.data.toy.image_size),
                                                          settings.segments)
        if client:
            judged[alias] = [JudgedStory(g.held_out.captions[0], g.held_out.frames[0], g.texts, g.images)
                             for g in generated[:settings.judge.stories]]
            result["judge"] = judge_scores(client, judged[alias])
        results[alias] = result
        curves[alias] = runs.per_segment_metrics(result)
        print(f"{alias}: {json.dumps(runs.overall_metrics(result))} in {time.perf_counter() - began:.0f} s", flush=True)

    comparison = None
    if args.compare_alias:
        comparison = {"table": {name: {alias: runs.overall_metrics(results[alias]).get(name) for alias in results}
                                for name in runs.overall_metrics(results[args.alias])}}
        if client:
            comparison["pairwise"] = judge_pairs(client, judged[args.alias], judged[args.compare_alias])
    plot = story_metrics.plot_per_segment(curves, config.data.window_frames)
    report = {"config": {"stories": len(prompts), "segments": settings.segments, "dataset": config.data.test_jsonl,
                         "eval": settings.model_dump(mode="json", exclude={"judge"}),
                         "judge": {"base_url": settings.judge.base_url, "model": settings.judge.model,
                                   "requests": client.requests, "retries": client.retries} if client else None},
              "results": results, "comparison": comparison}
    write_bytes(join(args.out, "eval.json"), json.dumps(report, indent=1).encode())
    write_bytes(join(args.out, "eval.png"), plot)

    for alias, result in results.items():
        pages = {p.id: read_bytes(join(args.out, alias, "stories", p.id, "index.html"))
                 for p in prompts[:STORYBOOK_ARTIFACTS]}
        pairwise = comparison.get("pairwise") if comparison and alias == args.alias else None
        runs.log_evaluation(config, alias, sources_of[alias], {**report, "results": {alias: result}}, plot, pages,
                            pairwise, args.compare_alias)
    if comparison:
        labels = list(results)
        print(runs.format_table(comparison["table"], labels))
        for aspect, rates in comparison.get("pairwise", {}).items():
            print(f"judge {aspect}: " + (f"{args.alias} wins {rates['first_win_rate']:.0%}, {args.compare_alias} "
                                         f"{rates['second_win_rate']:.0%}, ties {rates['tie_rate']:.0%} "
                                         f"({rates['inconsistent']} order-dependent, " if "judged" in rates else
                                         "no readable verdict (") + f"{rates['parse_failures']} unreadable)")
    print(f"results: {join(args.out, 'eval.json')}")


if __name__ == "__main__":
    main()
