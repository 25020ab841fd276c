"""The ``homeworth`` command (tasks/cli.py): every subcommand is listed and has its own help, ``--help``
loads no heavy library, and the data commands write what their modules write."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest

from tasks.cli import DELEGATED, main

HOMEWORTH = Path(sys.executable).parent / "homeworth"  # the console script `make venv` installs
if not HOMEWORTH.exists():
    HOMEWORTH = Path(shutil.which("homeworth") or HOMEWORTH)
# Each subcommand and one flag its help must show.
COMMANDS = {"champion": "--json", "ledger": "--limit", "rollback": "--reason", "score": "--file", "serve": "--port",
            "replay": "--start", "synth": "--rows"}


def _homeworth(*args: str, home: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOMEWORTH_")}
    if home is not None:
        env["HOMEWORTH_HOME"] = str(home)
    return subprocess.run([str(HOMEWORTH), *args], capture_output=True, text=True, env=env, timeout=300)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_commands_are_the_ones_documented():
    assert set(COMMANDS) == {"champion", "ledger", "rollback"} | set(DELEGATED)


def test_console_script_help_lists_every_subcommand():
    assert HOMEWORTH.exists(), f"no console script at {HOMEWORTH}: is the project installed (make venv)?"
    r = _homeworth("--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: homeworth ")
    for command in COMMANDS:
        assert re.search(rf"^\s+{command}\s+\S", r.stdout, re.MULTILINE), f"{command} missing from:\n{r.stdout}"


def test_python_m_tasks_cli_is_the_same_command():
    r = subprocess.run([sys.executable, "-m", "tasks.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert all(command in r.stdout for command in COMMANDS)


def test_help_imports_no_heavy_library():
    code = ("import contextlib, io, sys\nfrom tasks.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n    try:\n        main(['--help'])\n"
            "    except SystemExit as exc:\n        assert exc.code == 0, exc.code\n"
            "print(' '.join(m for m in ('torch', 'lightning', 'mlflow', 'polars', 'great_expectations')"
            " if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "", f"homeworth --help imported {r.stdout.strip()}"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_each_subcommand_has_its_own_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: homeworth {command} "), out
    assert COMMANDS[command] in out


def test_unknown_command_fails():
    with pytest.raises(SystemExit) as exc:
        main(["no-such-command"])
    assert exc.value.code == 2


def test_replay_writes_what_the_module_writes(tmp_path, spec):
    from tasks.ingest.replay import replay

    r = _homeworth("replay", "--start", "2015-05-12", "--end", "2015-05-15", home=tmp_path / "state")
    assert r.returncode == 0, r.stderr
    expected = replay(spec, str(tmp_path / "expected"), start=date(2015, 5, 12), end=date(2015, 5, 15))
    assert r.stdout.strip() == str(expected)
    landed = _files(tmp_path / "state" / "landing")
    assert sorted(landed) == [f"2015-05-{d}/sales.csv" for d in (12, 13, 14)]
    assert landed == _files(tmp_path / "expected")


def test_synth_writes_what_the_module_writes(tmp_path):
    from tasks.datasets.king_county.synth import generate

    args = dict(rows=40, days=3, seed=5, fmt="csv", chunk_rows=25)
    r = _homeworth("synth", "--rows", "40", "--days", "3", "--seed", "5", "--format", "csv", "--chunk-rows", "25",
                   "--out", str(tmp_path / "cli"))
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    expected = generate(out=tmp_path / "module", **args)
    for key in ("rows", "days", "first_day", "last_day", "files", "files_written", "chunks", "prices_clipped"):
        assert summary[key] == expected[key], key
    assert summary["rows"] == 40 and summary["files_written"] == 3
    assert _files(tmp_path / "cli") == _files(tmp_path / "module")
