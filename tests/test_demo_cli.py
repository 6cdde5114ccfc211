"""`endofuse demo`: its flags, defaults and one-line errors (no server is started here)."""
from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from endofuse import cli
from endofuse.demo import demo_command
from endofuse.errors import EndofuseError


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    demo_command.add_arguments(parser)
    return parser.parse_args(argv)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "endofuse", "demo", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def test_defaults_bind_loopback_on_7860_with_bundled_weights_and_auto_engine():
    args = parse()
    assert (args.host, args.port, args.checkpoint, args.engine) == ("127.0.0.1", 7860, None, "auto")


def test_help_names_every_flag():
    parser, _ = cli.build_parser("demo")
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    text = subparsers.choices["demo"].format_help()
    for flag in ("--port", "--host", "--checkpoint", "--engine"):
        assert flag in text


def test_missing_checkpoint_is_one_line_naming_the_file(tmp_path):
    missing = tmp_path / "nowhere.pt"
    result = run_cli("--checkpoint", str(missing))
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and str(missing) in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("port", ["0", "70000"])
def test_invalid_port_is_refused(port):
    with pytest.raises(EndofuseError, match=f"--port {port} is not a valid TCP port"):
        demo_command.main(parse("--port", port))


def test_unknown_engine_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse("--engine", "cuda-magic")
    assert exit_info.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_missing_gradio_is_a_one_line_install_hint(monkeypatch):
    # As if endofuse were installed without the [demo] extra.
    for name in list(sys.modules):
        if name.split(".")[0] in ("gradio", "gradio_client") or name.startswith("endofuse.demo."):
            if name != "endofuse.demo.demo_command":
                monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "gradio", None)
    with pytest.raises(EndofuseError, match=r"the demo needs gradio: pip install 'endofuse\[demo\]'"):
        demo_command.main(parse())
