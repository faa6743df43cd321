"""Story models registered in this test run: tiny exports on the session's S3, versions in its MLflow.

The weights are untrained (a story's text is noise), which is all the pipeline's mechanics need:
every segment is forced to an image after a few tokens, so each story has exactly its segments.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import pytest
from mlflow import MlflowClient

from seedstory.config import SeedStoryConfig, load_config
from seedstory.models.detokenizer import build_detokenizer
from seedstory.models.export import export_detokenizer, export_mllm
from seedstory.models.lora import attach_lora
from seedstory.models.mllm import build_mllm
from seedstory.models.weights import CACHE_ENV, load_tokenizer
from seedstory.tokenizer import image_token_ids
from seedstory.training.base_weights import with_base_weights, write_tiny_base
from seedstory.training.registry import register_export

STORY_OVERRIDES = ["story.on_text_budget=force-image", "story.max_text_tokens=6", "model.scheduler.inference_steps=4"]


@dataclass(frozen=True)
class RegisteredStoryModels:
    config: SeedStoryConfig
    overrides: list[str]
    versions: dict[str, str]


@pytest.fixture(scope="session")
def weights_cache(tmp_path_factory):
    """Keeps downloaded exports out of ~/.cache, for this process and the jobs it submits."""
    cache = tmp_path_factory.mktemp("weights-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(cache))
        yield cache


@pytest.fixture(scope="session")
def story_models(mlflow_server, weights_cache) -> RegisteredStoryModels:
    tag = uuid.uuid4().hex[:6]
    bucket = mlflow_server.bucket
    overrides = [
        f"storage.bucket={bucket}", "tracking.experiment=generation", f"train.base_weights=s3://{bucket}/base-gen-{tag}",
        "data.toy.stories=4", f"train.story_instruct.registered_model=gen-mllm-{tag}",
        f"train.detokenizer_adapt.registered_model=gen-detok-{tag}",
        f"train.detokenizer_pretrain.registered_model=gen-stage1-{tag}", *STORY_OVERRIDES,
    ]
    config = load_config("tiny", overrides)
    write_tiny_base(config, config.train.base_weights)
    resolved = with_base_weights(config)
    model = resolved.model
    tokenizer = load_tokenizer(model.llm.tokenizer, model.image_tokens)
    mllm = attach_lora(build_mllm(model, image_token_ids(tokenizer, model.image_tokens)), model.lora)
    exports = {"mllm": f"s3://{bucket}/exports/gen-{tag}/mllm", "detokenizer": f"s3://{bucket}/exports/gen-{tag}/det"}
    export_mllm(mllm, model, exports["mllm"], tokenizer)
    export_detokenizer(build_detokenizer(model), exports["detokenizer"])

    client = MlflowClient()
    experiment = client.get_experiment_by_name("generation")
    run = client.create_run(experiment.experiment_id if experiment else client.create_experiment("generation"))
    versions = {}
    for part, name in (("mllm", config.train.story_instruct.registered_model),
                       ("detokenizer", config.train.detokenizer_adapt.registered_model)):
        versions[part] = register_export(client, name, exports[part], run.info.run_id).version
    register_export(client, config.train.detokenizer_pretrain.registered_model, exports["detokenizer"], run.info.run_id)
    client.set_terminated(run.info.run_id)
    return RegisteredStoryModels(config, overrides, versions)
