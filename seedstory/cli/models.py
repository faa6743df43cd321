"""``seedstory summary``: parameter counts of a preset's components, built on the meta device, and each
stage's model-state memory per GPU under ZeRO (``--zero-gpus``)."""

from __future__ import annotations

import argparse
import json

from seedstory.cli.options import add_config_arguments, config_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("summary", help="parameter count of each model component (no weights loaded)")
    add_config_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object: component -> parameter count")
    parser.add_argument("--zero-gpus", type=int, metavar="N",
                        help="instead: each stage's trainable and frozen parameters and its model-state GiB per GPU "
                             "under ZeRO-2 and ZeRO-3 on N GPUs")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from seedstory.models.summary import parameter_counts

    config = config_from_args(args).model
    if args.zero_gpus is not None:
        return zero_memory(config, args.zero_gpus, args.json)
    counts = parameter_counts(config)
    if args.json:
        print(json.dumps(counts))
        return 0
    width = max(map(len, counts))
    for name, value in counts.items():
        print(f"{name:<{width}}  {value:>15,}")
    return 0


def zero_memory(config, gpus: int, as_json: bool) -> int:
    from seedstory.models.zero_memory import stage_parameters

    if gpus < 1:
        raise SystemExit(f"seedstory summary: --zero-gpus must be at least 1, got {gpus}")
    stages = {name: {"trainable": s.trainable, "frozen": s.frozen, **s.per_gpu_bytes(gpus)}
              for name, s in stage_parameters(config).items()}
    if as_json:
        print(json.dumps(stages))
        return 0
    print(f"{'stage':<22}{'trainable':>16}{'frozen':>16}   GiB per GPU on {gpus}: ZeRO-2 | ZeRO-3, all | "
          "ZeRO-3, trainable only")
    for name, row in stages.items():
        print(f"{name:<22}{row['trainable']:>16,}{row['frozen']:>16,}   "
              + " | ".join(f"{row[key] / 2**30:.2f}" for key in ("zero2", "zero3_everything", "zero3_trainable_only")))
    return 0
