"""The foundation: packaging, console script, subcommand dispatch."""
import importlib.util
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import endofuse
from endofuse import cli

SUBCOMMANDS = ["synth", "train", "evaluate", "convert-reference", "export", "run", "bench", "demo"]


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "endofuse", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def test_help_lists_every_subcommand_with_examples():
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    for name in SUBCOMMANDS:
        assert f"\n    {name}" in result.stdout, f"{name} missing from --help:\n{result.stdout}"
    assert "examples:" in result.stdout


def test_version_matches_package():
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"endofuse {endofuse.__version__}"


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "endofuse"
    assert script.exists(), f"console script not found next to {sys.executable}"
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and endofuse.__version__ in result.stdout


def test_missing_dependency_inside_a_subcommand_is_not_hidden(monkeypatch, tmp_path):
    # A module that exists but imports something missing must raise with its traceback.
    (tmp_path / "endofuse_broken_cmd.py").write_text("import a_dependency_that_is_missing\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    fake = cli.Subcommand("broken", "endofuse_broken_cmd", "broken")
    monkeypatch.setattr(cli, "SUBCOMMANDS", [*cli.SUBCOMMANDS, fake])
    with pytest.raises(ModuleNotFoundError, match="a_dependency_that_is_missing"):
        cli.main(["broken"])


def test_only_endofuse_errors_print_as_one_line(monkeypatch, tmp_path, capsys):
    (tmp_path / "endofuse_failing_cmd.py").write_text(
        "from endofuse.errors import InvalidOptionError\n"
        "def add_arguments(parser):\n    parser.add_argument('--kind')\n"
        "def main(args):\n"
        "    raise InvalidOptionError('--kind: bad value') if args.kind == 'user' else ValueError('a bug')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    fake = cli.Subcommand("failing", "endofuse_failing_cmd", "fails")
    monkeypatch.setattr(cli, "SUBCOMMANDS", [*cli.SUBCOMMANDS, fake])
    monkeypatch.delenv("ENDOFUSE_DEBUG", raising=False)
    assert cli.main(["failing", "--kind", "user"]) == 1
    assert capsys.readouterr().err == "endofuse failing: error: --kind: bad value\n"
    with pytest.raises(ValueError, match="a bug"):  # not a user error: the traceback is kept
        cli.main(["failing", "--kind", "bug"])


def test_no_subcommand_prints_help_and_exits_2():
    result = run_cli()
    assert result.returncode == 2
    assert "commands" in result.stdout


@pytest.mark.parametrize("name", ["kernels", "model", "train", "realtime", "demo"])
def test_subpackages_import_under_endofuse_names(name):
    module = importlib.import_module(f"endofuse.{name}")
    assert module.__name__ == f"endofuse.{name}"


def test_no_bare_top_level_packages_are_importable(tmp_path):
    # Outside the checkout, only `endofuse` may be importable, never `model` / `train` / ...
    code = ("import importlib.util as u; "
            "print([n for n in ('model','train','kernels','realtime','demo','cli') if u.find_spec(n)])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=60,
                            env={**os.environ, "PYTHONPATH": ""})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_wheel_maps_folders_under_endofuse(tmp_path, repo_root):
    # Build the real wheel and check its layout: every module lives under endofuse/.
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path),
         str(repo_root)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    wheel = next(tmp_path.glob("endofuse-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"endofuse"}
    for sub in ("kernels", "model", "train", "realtime", "demo"):
        assert f"endofuse/{sub}/__init__.py" in names
    # the CLIP tokenizer's vocabulary ships with its licence ([classify] needs no other package for it)
    assert {"endofuse/model/clip_vocab/bpe_simple_vocab_16e6.txt.gz", "endofuse/model/clip_vocab/LICENSE"} <= set(names)
    assert "endofuse/__main__.py" in names and "endofuse/cli.py" in names
