"""Each stage's model states per GPU under ZeRO, from the paper preset's real parameter counts (meta device)."""

from __future__ import annotations

import json

import pytest

from seedstory.cli.main import main
from seedstory.models.summary import parameter_counts
from seedstory.models.zero_memory import StageParameters, stage_parameters


@pytest.fixture(scope="module")
def paper_stages(paper):
    return stage_parameters(paper), parameter_counts(paper)


def test_each_stage_trains_and_freezes_the_paper_components(paper_stages):
    stages, counts = paper_stages
    detokenizer = counts["unet"] + counts["condition_adapter"]
    mllm = counts["input_resampler"] + counts["llm"] + counts["output_resampler"]
    assert (stages["detokenizer_pretrain"].trainable, stages["detokenizer_pretrain"].frozen) == (
        detokenizer, counts["vit"] + counts["vae"])
    assert (stages["detokenizer_adapt"].trainable, stages["detokenizer_adapt"].frozen) == (
        detokenizer, counts["vit"] + mllm + counts["vae"])
    instruct = stages["story_instruct"]
    assert instruct.trainable == counts["llm_adapter"] + counts["input_resampler"] + counts["output_resampler"]
    assert instruct.trainable + instruct.frozen > counts["vit"] + mllm, "LoRA adds its factors to the frozen LLM"


def test_per_gpu_bytes_follow_deepspeeds_accounting():
    """Trainable: bf16 weight + bf16 and fp32 gradient + fp32 master + two Adam moments; frozen: a bf16 weight."""
    stage = StageParameters(trainable=8_000, frozen=1_000, largest_trainable_module=500)
    one, eight = stage.per_gpu_bytes(1), stage.per_gpu_bytes(8)
    assert one["zero2"] == 2 * 8_000 + 18 * 8_000 + 2 * 1_000
    assert eight["zero2"] == 2 * 8_000 + 18 * 8_000 // 8 + 2 * 1_000
    assert eight["zero3_everything"] == 4 * 500 + 18 * 8_000 // 8 + 2 * 1_000 // 8
    assert eight["zero3_trainable_only"] == 4 * 500 + 18 * 8_000 // 8 + 2 * 1_000


def test_summary_prints_the_paper_stages_on_8_gpus(capsys, paper_stages):
    stages, _ = paper_stages
    assert main(["summary", "--config", "paper", "--zero-gpus", "8", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert list(printed) == list(stages)
    for name, row in printed.items():
        assert row == {"trainable": stages[name].trainable, "frozen": stages[name].frozen,
                       **stages[name].per_gpu_bytes(8)}
    adapt = printed["detokenizer_adapt"]
    assert adapt["zero3_everything"] < adapt["zero3_trainable_only"] < adapt["zero2"]
    with pytest.raises(SystemExit, match="--zero-gpus must be at least 1"):
        main(["summary", "--config", "paper", "--zero-gpus", "0"])
