"""Every subcommand of the `seedstory` console script answers --help."""

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from seedstory.cli.main import build_parser, main


def _command_paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [prefix]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                paths += _command_paths(sub, (*prefix, name))
    return paths


@pytest.mark.parametrize("path", _command_paths(build_parser()), ids=lambda p: " ".join(p) or "seedstory")
def test_help(path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*path, "--help"])
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "seedstory"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "stack" in result.stdout


def test_config_error_is_reported_not_raised(capsys):
    assert main(["stack", "status", "--config", "tiny", "stack.s3_port=banana"]) == 2
    err = capsys.readouterr().err
    assert "stack.s3_port" in err and "override" in err
