"""Stage 1, de-tokenizer pretraining: condition adapter + SD-XL UNet learn to paint frames from ViT features.

    ray job submit --working-dir . -- python jobs/detokenizer_pretrain.py --config tiny [KEY=VALUE ...]

Recipe: config (+ base weights) -> every frame of the training stories, a fresh random order each
pass, streamed from object storage (+ the val split, evaluated every `val_every` steps) -> MLflow run
-> Ray Train + DeepSpeed fit -> export (diffusers UNet + adapter) -> model version
`train.detokenizer_pretrain.registered_model`@candidate -> where to look.
Re-submit with the same `train.run_name=NAME` to resume from its latest checkpoint.
"""

from __future__ import annotations

import argparse

from seedstory.cli.options import add_config_arguments, config_from_args
from seedstory.data.streams import stage_stream
from seedstory.training.run import start_stage

STAGE = "detokenizer_pretrain"


def arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    return parser


def main() -> None:
    config = config_from_args(arguments().parse_args())

    with start_stage(STAGE, config) as run:
        frames, report = stage_stream(STAGE, run.config)
        run.fit(frames, run.validation_set())
        run.log_data(report)
        run.register()
    print(run.where_to_look())


if __name__ == "__main__":
    main()
