"""Stage 2, story instruction tuning: LoRA MLLM learns to continue stories, text and image features.

    ray job submit --working-dir . -- python jobs/story_instruct.py --config tiny [KEY=VALUE ...]

Recipe: config (+ base weights) -> random story windows (new ones each pass, shuffled) tokenized with
the base tokenizer, streamed from object storage (+ the val split, evaluated every `val_every` steps)
-> MLflow run -> Ray Train + DeepSpeed fit -> export (peft adapter, resamplers, tokenizer) -> model
version `train.story_instruct.registered_model`@candidate -> where to look.
Re-submit with the same `train.run_name=NAME` to resume from its latest checkpoint.
"""

from __future__ import annotations

import argparse

from seedstory.cli.options import add_config_arguments, config_from_args
from seedstory.data.streams import stage_stream
from seedstory.training.run import start_stage

STAGE = "story_instruct"


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
