"""``seedstory compare``: the figures of several evaluation runs side by side, from MLflow."""

from __future__ import annotations

import argparse
import json
import sys

from seedstory.cli.options import add_config_arguments, config_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("compare", help="metric table of evaluation runs (run ids or registry aliases)")
    parser.add_argument("runs", nargs="+", metavar="RUN_OR_ALIAS",
                        help="an MLflow run id, or an alias: the newest evaluation of the versions it names now")
    parser.add_argument("--json", action="store_true",
                        help="print {\"runs\": {reference: run id}, \"metrics\": {metric: {reference: value}}} as JSON")
    add_config_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from seedstory.eval.image_metrics import IncomparableError
    from seedstory.eval.runs import RUN_ID, comparison_table, find_evaluation, format_table
    from seedstory.generation.pipeline import model_references, resolve_models
    from seedstory.tracking import use_tracking

    args.overrides = [item for item in args.runs if "=" in item] + args.overrides  # both lists are positional
    args.runs = [item for item in args.runs if "=" not in item]
    config = config_from_args(args)
    client = MlflowClient(use_tracking(config.tracking))
    try:
        found = []
        for reference in args.runs:
            sources = None if RUN_ID.match(reference) else resolve_models(config, model_references(config, reference))
            found.append(find_evaluation(client, config.tracking.experiment, reference, sources))
        table = comparison_table(found, args.runs)
    except (LookupError, IncomparableError, MlflowException) as err:
        print(f"seedstory compare: error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"runs": {ref: r.info.run_id for ref, r in zip(args.runs, found)}, "metrics": table}))
    else:
        for reference, found_run in zip(args.runs, found):
            print(f"{reference}: run {found_run.info.run_id} ({found_run.info.run_name})")
        print(format_table(table, args.runs))
    return 0
