"""Stage 3, de-tokenizer adaptation: the SD-XL UNet (full, ZeRO-3) learns from the MLLM's regressed features.

    ray job submit --working-dir . -- python jobs/detokenizer_adapt.py --config tiny [KEY=VALUE ...]

Starts from `train.detokenizer_adapt.sources`: `mllm` (stage 2) and `detokenizer` (stage 1), each an
MLflow model reference (default models:/seedstory-mllm@candidate, models:/seedstory-detokenizer@candidate)
or an export URI; the versions and runs they resolve to are recorded on the run (lineage).
Recipe: config -> sources resolved -> story windows (new ones each pass, shuffled) tokenized with the
MLLM's own tokenizer (+ the val split, evaluated every `val_every` steps) -> MLflow run -> Ray Train +
DeepSpeed fit -> export -> model version `train.detokenizer_adapt.registered_model`@candidate -> where
to look.
"""

from __future__ import annotations

import argparse

from seedstory.cli.options import add_config_arguments, config_from_args
from seedstory.data.streams import stage_stream
from seedstory.training.run import start_stage

STAGE = "detokenizer_adapt"


def arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    return parser


def main() -> None:
    config = config_from_args(arguments().parse_args())

    with start_stage(STAGE, config) as run:
        tokenizer = run.tokenizer()
        windows, report = stage_stream(STAGE, run.config, tokenizer)
        run.fit(windows, run.validation_set(tokenizer))
        run.log_data(report)
        run.register()
    print(run.where_to_look())


if __name__ == "__main__":
    main()
