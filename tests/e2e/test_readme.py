"""The README is executable: its "Working by hand" block, run literally, in order, on a temporary home.

The block is the first ```bash fence after the marker ``<!-- readme-test: working-by-hand -->`` in
README.md. Every line runs in one bash shell (so ``source env.sh`` carries over), from the repository
root, with ``AIRFLOW_HOME`` and ``HOMEWORTH_HOME`` pointed at a temporary folder first (env.sh keeps
values exported before it is sourced): a fresh Airflow metadata database, landing zone, lake and MLflow
store, as on a clean checkout. Only the interactive ``airflow standalone`` is left out. Each line's exit
status is checked on its own (``set -e`` would ignore a failure on the left of ``&&``).

``make venv`` is part of the block; under ``make test`` the venv is already up to date, so it does nothing.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MARKER = "<!-- readme-test: working-by-hand -->"
INTERACTIVE = ("airflow standalone",)  # long-running servers the test does not start
FAILED = "README COMMAND FAILED"


def readme_block(text: str) -> list[str]:
    """The command lines of the marked block (blank lines and whole-line comments dropped)."""
    if text.count(MARKER) != 1:
        raise AssertionError(f"README.md must hold the marker {MARKER!r} exactly once (found {text.count(MARKER)})")
    after = text.split(MARKER, 1)[1].lstrip("\n")
    if not after.startswith("```bash\n"):
        raise AssertionError(f"the marker {MARKER!r} must be followed directly by a ```bash block")
    body = after[len("```bash\n"):].split("\n```", 1)[0]
    return [ln for ln in body.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def runnable(lines: list[str]) -> list[str]:
    """All but the interactive commands."""
    return [ln for ln in lines if not ln.lstrip().startswith(INTERACTIVE)]


def script(lines: list[str]) -> str:
    """One bash script that runs ``lines`` in order and stops at the first that fails, naming it."""
    out = ["cd " + shlex.quote(str(REPO))]
    for n, line in enumerate(lines, 1):
        out += [f"echo {shlex.quote(f'+ [{n}/{len(lines)}] {line}')}", line,
                f"rc=$?; if [ $rc -ne 0 ]; then echo {shlex.quote(f'{FAILED}: {line}')} \"(exit $rc)\"; exit $rc; fi"]
    return "\n".join(out) + "\n"


def clean_env(home: Path) -> dict[str, str]:
    """This process's environment without Airflow's, homeworth's or a venv's settings, homes set to ``home``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AIRFLOW_", "AIRFLOW__", "HOMEWORTH_", "PYTEST_")) and k != "VIRTUAL_ENV"}
    venv_bin = str(REPO / ".venv" / "bin")
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
    env.update({"AIRFLOW_HOME": str(home / "airflow"), "HOMEWORTH_HOME": str(home / "state")})
    return env


def test_block_is_found_and_parsed():
    """The extraction itself, on the real README and on a small text (fast: no command is run)."""
    lines = readme_block((REPO / "README.md").read_text())
    assert lines[0].startswith("make venv && source env.sh")
    assert [ln for ln in lines if ln.lstrip().startswith(INTERACTIVE)] == [lines[-1]], "only the last is interactive"
    assert any("sales_ingest" in ln and "from_date" in ln for ln in runnable(lines)), "the history is ingested"
    text = f"intro\n{MARKER}\n```bash\na --x  # note\n\n# only a comment\nairflow standalone\n```\nafter\n"
    assert runnable(readme_block(text)) == ["a --x  # note"]
    with pytest.raises(AssertionError, match="exactly once"):
        readme_block(text + MARKER)
    with pytest.raises(AssertionError, match="followed directly"):
        readme_block(f"{MARKER}\n```python\nx\n```\n")
    failing = subprocess.run(["bash", "-c", script(["true", "false && true", "echo never"])],
                             capture_output=True, text=True)
    assert failing.returncode == 1 and f"{FAILED}: false && true" in failing.stdout and "never" not in failing.stdout


@pytest.fixture(scope="module")
def walked(tmp_path_factory):
    """The block run on a temporary home: (the home, the output)."""
    home = tmp_path_factory.mktemp("readme")
    make = subprocess.run(["make", "-q", "venv"], cwd=REPO, capture_output=True)
    if make.returncode != 0:
        pytest.fail("the venv is older than requirements.txt / pyproject.toml: run `make venv` first "
                    "(`make test` does); this test does not reinstall packages under other running tests")
    commands = runnable(readme_block((REPO / "README.md").read_text()))
    run = subprocess.run(["bash", "-c", script(commands + ["homeworth champion"])], env=clean_env(home),
                         capture_output=True, text=True, timeout=2400)
    output = run.stdout + run.stderr
    (home / "readme-run.log").write_text(output)
    first_error = output.find("Traceback (most recent call last)")
    shown = output[first_error:first_error + 4000] + "\n...\n" if first_error >= 0 else ""
    assert run.returncode == 0, f"{shown}{output[-4000:]}\n(full log: {home / 'readme-run.log'})"
    return home, run.stdout


def test_readme_block_runs_on_a_clean_home(walked):
    home, stdout = walked
    check_state(home / "state")
    assert (home / "airflow" / "airflow.db").exists(), "Airflow used the temporary home"
    assert "champion: v1" in stdout.split("homeworth champion", 1)[-1], stdout[-2000:]


def check_state(state: Path) -> None:
    """Every replayed sale ingested once (validated or quarantined), and one model promoted."""
    import json

    import polars as pl

    from tests.kc import kc_lines

    landing_days = {p.name for p in (state / "landing").iterdir() if p.is_dir() and p.name[:2] in ("19", "20")}
    validated_days = {p.name.removeprefix("ds=") for p in (state / "lake" / "validated").glob("ds=*")}
    assert len(landing_days) > 300 and landing_days <= validated_days, \
        f"every replayed day validated: missing {sorted(landing_days - validated_days)[:5]}"
    rows = sum(pl.scan_parquet(str(state / "lake" / table / "ds=*" / "part-0.parquet")).select(pl.len()).collect().item()
               for table in ("validated", "quarantine"))
    assert rows == len(kc_lines()) - 1, f"{rows} rows validated or quarantined"
    events = [json.loads(f.read_text()) for f in sorted((state / "lake" / "ledger").glob("*.json"))]
    assert [(e["from_version"], e["to_version"]) for e in events] == [(None, "1")], events
