import pytest

from seedstory.config import ConfigError, SeedStoryConfig, dump_config, load_config, preset_names
from seedstory.data.toyworld.generate import split_of


@pytest.mark.parametrize("preset", preset_names())
def test_every_shipped_preset_loads(preset):
    config = load_config(preset)
    assert isinstance(config, SeedStoryConfig)
    assert config.model.preset in {"tiny", "paper"}


def test_model_presets_name_themselves():
    assert load_config("tiny").model.preset == "tiny"
    assert load_config("paper").model.preset == "paper"


def test_shipped_presets():
    assert set(preset_names()) == {"tiny", "paper", "demo", "toy"}
    assert load_config("demo").train.story_instruct.max_steps < load_config("tiny").train.story_instruct.max_steps


def test_the_toy_preset_holds_enough_unseen_stories_in_a_world_of_its_own():
    toy, tiny = load_config("toy"), load_config("tiny")
    # tiny's shapes; its own loss, noise schedule, pooled and spatial conditions for a de-tokenizer learned from scratch
    differs = {name for name in type(tiny.model).model_fields if getattr(toy.model, name) != getattr(tiny.model, name)}
    assert differs == {"loss", "scheduler", "condition_adapter", "unet"}
    assert toy.model.unet.model_copy(update={"pooled_dim": tiny.model.unet.pooled_dim}) == tiny.model.unet
    plain_adapter = toy.model.condition_adapter.model_copy(update={"pooled_from": "tokens", "spatial_channels": 0})
    assert plain_adapter == tiny.model.condition_adapter
    assert sum(split_of(toy.data.toy, index) == "test" for index in range(toy.data.toy.stories)) >= 32
    assert all(uri.startswith(toy.data.toy.uri + "/") for uri in
               [*toy.data.train_jsonl, *toy.data.val_jsonl, *toy.data.test_jsonl, toy.data.image_root])
    assert toy.data.toy.uri != tiny.data.toy.uri and toy.train.base_weights != tiny.train.base_weights


def test_paper_preset_has_design_shapes():
    model = load_config("paper").model
    assert (model.vit.image_size, model.vit.num_queries, model.vit.output_dim) == (448, 256, 4096)
    assert model.input_resampler.num_queries == model.image_tokens == 64
    assert (model.llm.hidden_size, model.llm.num_layers, model.llm.vocab_size) == (4096, 32, 32000)
    assert (model.lora.r, model.lora.alpha) == (6, 32)
    assert model.unet.cross_attention_dim == 2048 and model.unet.pooled_dim == 1280


def test_overrides_are_typed():
    config = load_config("tiny", ["train.story_instruct.lr=3e-4", "stack.s3_port=9555", "data.train_jsonl=[a.jsonl, b.jsonl]"])
    assert config.train.story_instruct.lr == pytest.approx(3e-4)
    assert config.stack.s3_port == 9555
    assert config.data.train_jsonl == ["a.jsonl", "b.jsonl"]


def test_file_extends_a_preset_and_round_trips(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("extends: tiny\ntracking:\n  experiment: mine\n")
    config = load_config(str(path))
    assert config.tracking.experiment == "mine"
    assert config.model.preset == "tiny"
    dumped = tmp_path / "dumped.yaml"
    dumped.write_text(dump_config(config))
    assert load_config(str(dumped)) == config


def test_unknown_key_names_key_and_file(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("extends: tiny\ntrain:\n  story_instruct:\n    learning_rate: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    assert "train.story_instruct.learning_rate" in str(err.value)
    assert str(path) in str(err.value)


def test_wrong_type_names_key_and_file(tmp_path):
    path = tmp_path / "types.yaml"
    path.write_text("extends: tiny\nstack:\n  s3_port: not-a-port\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    assert "stack.s3_port" in str(err.value) and str(path) in str(err.value)


def test_error_in_inherited_value_names_the_parent_file(tmp_path):
    (tmp_path / "base.yaml").write_text("extends: tiny\nmodel:\n  llm:\n    num_layers: zero\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\ntracking:\n  experiment: x\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(tmp_path / "child.yaml"))
    assert "model.llm.num_layers" in str(err.value) and "base.yaml" in str(err.value)
    assert "child.yaml" not in str(err.value)


def test_bad_override_names_the_override():
    with pytest.raises(ConfigError) as err:
        load_config("tiny", ["train.story_instruct.max_steps=many"])
    assert "train.story_instruct.max_steps" in str(err.value) and "override" in str(err.value)
    with pytest.raises(ConfigError, match="key=value"):
        load_config("tiny", ["no-equals-sign"])


def test_a_sections_own_check_names_every_source_of_its_keys():
    with pytest.raises(ConfigError) as err:
        load_config("tiny", ["story.temperature=0.5"])
    line = str(err.value).splitlines()[1]
    assert "override 'story.temperature=0.5'" in line and "tiny.yaml" in line, line
    assert "temperature/top_k only apply with sampling" in line


def test_missing_file_and_unknown_preset(tmp_path):
    with pytest.raises(ConfigError, match="not found.*nope.yaml"):
        load_config(str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match="no preset named 'huge'"):
        load_config("huge")


def test_extends_cycle_is_reported(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(str(tmp_path / "a.yaml"))


@pytest.mark.parametrize("preset", [name for name in preset_names() if load_config(name).model.preset == "tiny"])
def test_each_tiny_preset_has_a_story_per_llm_base_sample_of_a_step(preset):
    config = load_config(preset)
    train = sum(split_of(config.data.toy, index) == "train" for index in range(config.data.toy.stories))
    assert train >= config.train.llm_pretrain.micro_batch_size * config.train.llm_pretrain.num_workers


def test_a_writer_batches_every_request_it_accepts_unless_told_fewer():
    assert load_config("tiny", ["serve.writer.max_ongoing_requests=6"]).serve.writer.batch == 6
    assert load_config("tiny", ["serve.writer.max_stories=2"]).serve.writer.batch == 2
    with pytest.raises(ConfigError, match=r"max_stories \(9\) exceeds max_ongoing_requests \(4\)"):
        load_config("tiny", ["serve.writer.max_ongoing_requests=4", "serve.writer.max_stories=9"])
