"""Load the config from a shipped preset or a YAML file, then apply ``key=value`` overrides.

A file may start from another with ``extends: <preset name or relative path>``. Every leaf
remembers which file (or override) set it, so a validation error names the key *and* its
source.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from seedstory.config.root import SeedStoryConfig

PRESET_PACKAGE = "seedstory.configs"


class ConfigError(ValueError):
    """A config that cannot be used; the message names the key and the file it came from."""


def preset_names() -> list[str]:
    return sorted(p.name[: -len(".yaml")] for p in resources.files(PRESET_PACKAGE).iterdir() if p.name.endswith(".yaml"))


def preset_path(name: str) -> Path:
    path = Path(str(resources.files(PRESET_PACKAGE).joinpath(f"{name}.yaml")))
    if not path.is_file():
        raise ConfigError(f"no preset named {name!r} (shipped presets: {', '.join(preset_names())})")
    return path


def resolve_source(source: str | Path, relative_to: Path | None = None) -> Path:
    """A preset name (``tiny``) or a YAML path, relative paths resolved against ``relative_to``."""
    text = str(source)
    if not text.endswith((".yaml", ".yml")) and "/" not in text:
        return preset_path(text)
    path = Path(text)
    if not path.is_absolute() and relative_to is not None:
        path = relative_to / path
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    return path


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def _merge(base: dict, update: Mapping, origin: dict[tuple, str], source: str, prefix: tuple = ()) -> dict:
    for key, value in update.items():
        path = (*prefix, key)
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value, origin, source, path)
        else:
            base[key] = value
            for known in [k for k in origin if k[: len(path)] == path]:
                del origin[known]
            origin[path] = source
    return base


def _load_file(path: Path, origin: dict[tuple, str], chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    if path.resolve() in chain:
        raise ConfigError(f"{path}: 'extends' forms a cycle: {' -> '.join(map(str, (*chain, path)))}")
    data = _read_yaml(path)
    parent = data.pop("extends", None)
    merged: dict[str, Any] = {}
    if parent is not None:
        merged = _load_file(resolve_source(parent, path.parent), origin, (*chain, path.resolve()))
    return _merge(merged, data, origin, str(path))


def parse_override(text: str) -> tuple[tuple[str, ...], Any]:
    """``train.story_instruct.lr=3e-4`` -> (("train", "story_instruct", "lr"), 0.0003)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not of the form key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: value is not valid YAML: {err}") from err
    return tuple(key.strip().split(".")), value


def _nest(path: tuple[str, ...], value: Any) -> dict:
    for part in reversed(path):
        value = {part: value}
    return value


def _source_of(loc: tuple, origin: dict[tuple, str]) -> str:
    """What set ``loc``: a key's file or override; for a section (a validator's error spans its keys), every
    file and override that set a key in it."""
    under = dict.fromkeys(source for path, source in origin.items() if path[: len(loc)] == loc)
    if under:
        return ", ".join(under)
    for size in range(len(loc) - 1, 0, -1):  # set as part of a section a file or override gave whole
        if loc[:size] in origin:
            return origin[loc[:size]]
    return "defaults"


def load_config(source: str | Path = "tiny", overrides: Iterable[str] = ()) -> SeedStoryConfig:
    origin: dict[tuple, str] = {}
    data = _load_file(resolve_source(source), origin)
    for text in overrides:
        path, value = parse_override(text)
        _merge(data, _nest(path, value), origin, f"override {text!r}")
    try:
        return SeedStoryConfig.model_validate(data)
    except ValidationError as err:
        lines = []
        for problem in err.errors():
            loc = tuple(str(part) for part in problem["loc"])
            lines.append(f"{_source_of(loc, origin)}: {'.'.join(loc)}: {problem['msg']}")
        raise ConfigError("invalid config:\n  " + "\n  ".join(lines)) from None


def dump_config(config: SeedStoryConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
