"""The cluster launcher config is one Ray's own validation accepts, on the project image."""

from __future__ import annotations

import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from tests.conftest import REPO_ROOT

LAUNCHER = REPO_ROOT / "cluster" / "launcher" / "aws-gpu.yaml"


def test_ray_validates_the_aws_gpu_cluster():
    config = prepare_config(yaml.safe_load(LAUNCHER.read_text()))
    validate_config(config)
    assert config["docker"]["image"].endswith(f"-ray{ray.__version__}-gpu")
    for source in config["file_mounts"].values():
        assert (REPO_ROOT / source / "seedstory.yaml").is_file(), source


def test_ray_refuses_a_misspelt_key():
    config = yaml.safe_load(LAUNCHER.read_text())
    config["available_node_types"]["gpu_1x"]["max_workerz"] = 3
    with pytest.raises(Exception, match="max_workerz"):
        validate_config(prepare_config(config))
