"""Is the toy world learned? The trained models scored exactly on test-split stories they never saw.

    ray job submit --working-dir . -- python jobs/evaluate_toy.py --config toy --out s3://seedstory/eval/toy

Recipe: config -> the models at --alias (stage 1's de-tokenizer, stage 2's MLLM, stage 3's adapted
de-tokenizer) -> --stories test stories, each opened with its first frame and caption -> the
de-tokenizer alone and teacher-forced images, each with the facts its pictures got wrong, by kind ->
free generation of --long-segments segments in every attention variant, and how many characters the
default variant's captions name against the test stories' own (``cast``) -> DIR/toy_eval.json and
DIR/toy_eval.png, the same as an MLflow run (figures and error counts as metrics, per-segment scores
as steps, the files as artifacts) -> PASS/MISS per target, and whether a variant leads the configured
default by more than the evaluation's noise (``toy_world.clear_leader``). The free generation figures
of --segments segments are the first segments of the default variant's long stories
(generation is deterministic, so a shorter story is exactly their beginning).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import mlflow
import numpy as np
import torch

from seedstory.cli.options import add_config_arguments, config_from_args
from seedstory.data.toyworld.judge import Judge
from seedstory.eval import toy_world
from seedstory.eval.attention_quality import mode_config
from seedstory.eval.held_out import held_out_stories
from seedstory.eval.runs import lineage_tags
from seedstory.generation.attention_bench import POSITIONED
from seedstory.generation.pipeline import StoryModels, StoryPipeline, model_references, resolve_models
from seedstory.models.export import load_detokenizer
from seedstory.storage import join, write_bytes
from seedstory.tracking import tracked_run
from seedstory.training.registry import CANDIDATE

TARGETS = {"detokenizer_coherence": 0.95, "teacher_forced_coherence": 0.85, "free_validity": 0.95,
           "free_coherence": 0.80, "free_consistency": 0.80}


def variants() -> list[tuple[str, str, str]]:
    """(name, cache mode, positions); only the sink modes move keys, so only they have two position modes."""
    runs = [(mode, mode, "absolute") for mode in ("dense", "window")]
    return runs + [(f"{mode}/{positions}", mode, positions) for mode in POSITIONED for positions in ("absolute", "rerotate")]


def arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder (local path or s3://)")
    parser.add_argument("--alias", default=CANDIDATE, help=f"registry alias of the models (default: {CANDIDATE})")
    parser.add_argument("--stories", type=int, default=32, help="test stories (default: 32)")
    parser.add_argument("--segments", type=int, default=10, help="free-generation length of the targets (default: 10)")
    parser.add_argument("--long-segments", type=int, default=25, help="story length of the attention sweep (default: 25)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    add_config_arguments(parser)
    return parser


def _figure(value: float | None) -> str:
    return "none" if value is None else f"{value:.2f}"


def main() -> None:
    parser = arguments()
    args = parser.parse_args()
    config = config_from_args(args)
    for flag, value in (("--stories", args.stories), ("--segments", args.segments), ("--threads", args.threads)):
        if value < 1:
            parser.error(f"{flag} must be at least 1, got {value}")
    if args.long_segments < args.segments:
        parser.error("--long-segments must be at least --segments")
    torch.set_num_threads(args.threads)

    references = {**model_references(config, args.alias),
                  "stage1": f"models:/{config.train.detokenizer_pretrain.registered_model}@{args.alias}"}
    sources = resolve_models(config, references)
    models = StoryModels.load({part: sources[part] for part in ("mllm", "detokenizer")})
    stage1 = load_detokenizer(sources["stage1"].uri).eval()
    stories = held_out_stories(config, args.stories)
    judge = Judge(config.data.toy.image_size)
    window_frames = config.data.window_frames
    default = config.story.cache
    default_name = default.mode if default.mode not in POSITIONED else f"{default.mode}/{default.positions}"
    with tracked_run(config.tracking, stage="evaluate_toy", run_name=f"evaluate-toy-{time.strftime('%Y%m%d-%H%M%S')}",
                     params=config, tags=lineage_tags(sources)):
        began = time.perf_counter()
        judged = {
            "detokenizer": toy_world.detokenizer_alone(stage1, models.vit, stories, judge, window_frames,
                                                       config.model.scheduler),
            "adapted_detokenizer": toy_world.detokenizer_alone(models.detokenizer, models.vit, stories, judge,
                                                               window_frames, config.model.scheduler),
            "teacher_forced": toy_world.teacher_forced(StoryPipeline(models, config), stories, judge, window_frames),
        }
        figures = {f"{name}_coherence": float(np.mean(pictures.coherence)) for name, pictures in judged.items()}
        errors = {name: pictures.errors for name, pictures in judged.items()}
        print(f"de-tokenizer and teacher-forced figures in {time.perf_counter() - began:.0f} s", flush=True)

        curves, long_overall, runs_of = {}, {}, {}
        for name, mode, positions in variants():
            began = time.perf_counter()
            pipeline = StoryPipeline(models, mode_config(config, mode, positions))
            runs = [toy_world.free_story_scores(pipeline, story, judge, args.long_segments, config.story.seed)
                    for story in stories]
            runs_of[name] = runs
            curves[name] = toy_world.per_segment(runs, args.long_segments)
            long_overall[name] = toy_world.overall(runs, args.long_segments)
            print(f"{name}: {long_overall[name]} in {time.perf_counter() - began:.0f} s", flush=True)
        short = [{score: run[score][:args.segments] for score in ("validity", "coherence", "consistency", "characters")}
                 for run in runs_of[default_name]]
        figures.update({f"free_{score}": value for score, value in toy_world.overall(short, args.segments).items()})
        cast = {
            "written": toy_world.cast_sizes([n for run in short for n in run["characters"]],
                                            [v for run in short for v in run["validity"]]),
            "true": toy_world.cast_sizes([toy_world.characters_named(caption) for story in stories
                                          for caption in story.captions[1:args.segments + 1]]),
        }
        print(f"characters per caption: written {_figure(cast['written']['characters_per_caption'])} (at most one "
              f"in {_figure(cast['written']['one_character_share'])}), the test stories' own "
              f"{_figure(cast['true']['characters_per_caption'])} ({_figure(cast['true']['one_character_share'])})",
              flush=True)

        beyond = toy_world.beyond_training_length(curves, window_frames)
        best = max(beyond, key=beyond.get) if beyond else None
        leads = toy_world.leads_over(curves, default_name, window_frames)
        leader = toy_world.clear_leader(leads)
        result = {
            "config": {"stories": len(stories), "segments": args.segments, "long_segments": args.long_segments,
                       "training_frames": window_frames, "default_variant": default_name, "alias": args.alias,
                       "sampler": {"steps": config.model.scheduler.inference_steps,
                                   "guidance_scale": config.model.scheduler.guidance_scale}},
            "models": {name: {"reference": s.reference, "version": s.version, "uri": s.uri} for name, s in sources.items()},
            "figures": figures,
            "errors": errors,
            "cast": cast,
            "targets": {name: {"value": figures[name], "target": f">= {bound}", "ok": figures[name] >= bound}
                        for name, bound in TARGETS.items()},
            "attention": {"overall": long_overall, "beyond_training_length": beyond, "best": best,
                          "lead_over_default": leads, "clear_leader": leader, "per_segment": curves},
            "outcomes": {name: [run["outcome"] for run in runs] for name, runs in runs_of.items()},
        }
        files = {"toy_eval.json": json.dumps(result, indent=1).encode(),
                 "toy_eval.png": toy_world.plot_per_segment(curves, window_frames)}
        mlflow.log_metrics({f"toy/{name}": value for name, value in figures.items()})
        mlflow.log_metrics({f"toy/errors/{name}/{kind}": count for name, counts in errors.items()
                            for kind, count in counts.items()})
        mlflow.log_metrics({f"toy/cast/{whose}/{name}": value for whose, figures_of in cast.items()
                            for name, value in figures_of.items() if value is not None})
        for index in range(args.long_segments):
            mlflow.log_metrics({f"toy/{name}/{score}": values[index] for name, scores in curves.items()
                                for score, values in scores.items() if values[index] is not None}, step=index)
        with tempfile.TemporaryDirectory() as folder:
            for name, data in files.items():
                Path(folder, name).write_bytes(data)
                write_bytes(join(args.out, name), data)
            mlflow.log_artifacts(folder)

    for name, target in result["targets"].items():
        print(f"{'PASS' if target['ok'] else 'MISS'} {name}: {target['value']:.3f} ({target['target']})")
    for name, counts in errors.items():
        wrong = ", ".join(f"{kind} {count}" for kind, count in counts.items() if kind not in ("pictures", "characters"))
        print(f"{name}: {counts['pictures']} pictures of {counts['characters']} characters; wrong: {wrong}")
    if best is None:
        too_short = args.long_segments <= toy_world.first_segment_past(window_frames)
        print("attention variants not compared: " + (
            f"--long-segments {args.long_segments} does not pass the training length ({window_frames} frames)"
            if too_short else "no story of any variant got past the training length"))
    else:
        reached = f"{beyond[default_name]:.3f}" if default_name in beyond else "no story got past the training length"
        print(f"best attention past the training length: {best} ({beyond[best]:.3f}); configured default: "
              f"{default_name} ({reached})")
        if leader is None:
            print(f"no variant leads {default_name} by more than {toy_world.CLEAR_LEAD_STANDARD_ERRORS:g} standard errors")
        else:
            lead = leads[leader]
            print(f"{leader} leads {default_name} by {lead['difference']:.3f} (standard error {lead['standard_error']:.3f}): "
                  f"clearly in this evaluation; the default (story.cache) moves if a second chain agrees")
    print(f"results: {join(args.out, 'toy_eval.json')}")


if __name__ == "__main__":
    main()
