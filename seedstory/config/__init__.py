"""The typed, validated configuration of every job, command and deployment."""

from seedstory.config.loader import ConfigError, dump_config, load_config, preset_names
from seedstory.config.root import SeedStoryConfig

__all__ = ["ConfigError", "SeedStoryConfig", "dump_config", "load_config", "preset_names"]
