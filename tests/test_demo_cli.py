"""`endofuse demo`: its flags, defaults and one-line errors (no server is started here)."""
from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from endofuse.demo import demo_command
from endofuse.errors import EndofuseError


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    demo_command.add_arguments(parser)
    return parser.parse_args(argv)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "endofuse", "demo", *args], capture_output=True, text=True, timeout=300)


def test_defaults_bind_loopback_on_7860_with_bundled_weights_and_auto_engine():
    args = parse()
    assert (args.host, args.port, args.checkpoint, args.engine) == ("127.0.0.1", 7860, None, "auto")


def test_help_names_every_flag():
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    for flag in ("--port", "--host", "--checkpoint", "--engine"):
        assert flag in result.stdout


def test_missing_checkpoint_is_one_line_naming_the_file(tmp_path):
    missing = tmp_path / "nowhere.pt"
    result = run_cli("--checkpoint", str(missing))
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and str(missing) in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("port", ["0", "70000"])
def test_invalid_port_is_refused(port):
    with pytest.raises(EndofuseError, match=f"--port {port} is not a valid TCP port"):
        demo_command.main(parse("--port", port))


def test_unknown_engine_is_refused_by_the_parser():
    result = run_cli("--engine", "cuda-magic")
    assert result.returncode == 2 and "invalid choice" in result.stderr
