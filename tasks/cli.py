"""homeworth: the champion, batch scoring, the endpoint and landing data, from one command.

    homeworth champion [--json] [--repair] # the champion, since when, by whom, why, its metrics
    homeworth ledger [--json] [--limit N]
    homeworth rollback --version 3 --reason "v4 over-values waterfront houses" [--user alice] [--expect 4]
    homeworth score --file listings.csv [--out scored.csv] [--version N]   # batch scoring
    homeworth serve [--host 127.0.0.1] [--port 8000]                        # the endpoint on its own
    homeworth replay [--start 2015-03-01] [--end 2015-05-28]                # the bundled sales as a daily feed
    homeworth synth --rows N --days D --seed S --out DIR                    # synthetic sales at any scale
    homeworth spec infer FILE --name NAME --target COL [--id COL] [--time COL] [--split time|random|column]
                         [--split-column COL] [--suite [PATH]]   # a spec for a new market's file, to stdout

``python -m tasks.cli ...`` is the same command, and ``homeworth <command> --help`` lists a command's
flags. score, serve, replay and synth are the ``main`` of their modules (``DELEGATED``), given the rest of
the command line as it is; a module is imported only when its command runs, so ``homeworth --help``
loads neither torch, MLflow nor Polars.

A rollback from here is a person's action: it is recorded with the wall-clock time and the user
(``--user``, else the login name). The ``champion_rollback`` DAG does the same from the Airflow UI.

The champion is the promotion ledger's newest event; the MLflow alias follows it. ``champion`` exits
with 3 and says so on stderr when the two disagree (a move interrupted between its ledger event and the
alias, or an alias moved by hand); ``champion --repair`` points the alias at the ledger's champion.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from typing import NamedTuple

PROG = "homeworth"


class Delegated(NamedTuple):
    module: str  # its main(argv, prog) parses the command's own flags
    help: str


DELEGATED: dict[str, Delegated] = {
    "score": Delegated("tasks.serving.score", "price a listings file with the champion (batch scoring)"),
    "serve": Delegated("tasks.serving.api", "serve the champion on its own (the HTTP endpoint)"),
    "replay": Delegated("tasks.ingest.replay", "replay the bundled sales into the landing zone, a folder a day"),
    "synth": Delegated("tasks.datasets.king_county.synth", "write synthetic King County sales at any scale"),
}


def _fmt_metrics(m: dict | None) -> str:
    if not m:
        return "-"
    keys = [k for k in ("mdape", "ppe10", "rmse_ln") if k in m]
    return ", ".join(f"{k} {m[k]:.4f}" for k in keys)


def champion_info(settings) -> dict:
    """The champion (the ledger's newest event) with the event explaining it (or, before the ledger existed,
    the alias and its tags), the alias, and any disagreement between them."""
    from tasks.core import tracking
    from tasks.registry import champion

    c = tracking.client(settings)
    state = champion.read(c, settings)
    base = {"model_name": settings.model_name, "champion_version": state.version, "alias_version": state.alias,
            "ledger_version": state.head.to_version if state.head is not None else None,
            "disagreement": champion.disagreement(state),
            "unreadable_ledger_files": [f"{name}: {why}" for name, why in state.scan.problems]}
    if state.version is None:
        return base
    mv = c.get_model_version(settings.model_name, state.version)
    event = state.head
    metrics = {}
    if mv.run_id:
        metrics = {k.removeprefix("test/"): v for k, v in c.get_run(mv.run_id).data.metrics.items()
                   if k.startswith("test/")}
    info = {**base, "test_metrics": metrics,
            "data_window": [mv.tags.get("data.window_start"), mv.tags.get("data.window_end")],
            "mlflow_run_id": mv.run_id, "source": mv.source}
    if event is not None:
        info.update({"since": event.at.isoformat(), "by": event.who(), "kind": event.kind, "reason": event.reason,
                     "from_version": event.from_version, "ledger_event": event.event_id, "ledger_seq": event.seq})
    else:
        info.update({"since": None, "by": mv.tags.get("promotion.airflow_run_id"), "kind": "promotion",
                     "reason": mv.tags.get("promotion.reason"), "ledger_event": None})
    return info


def _repair(settings) -> None:
    """``homeworth champion --repair``: point the alias at the ledger's newest event, saying what moved."""
    from tasks.core import tracking
    from tasks.registry import champion

    c = tracking.client(settings)
    before = champion.read(c, settings)
    after = champion.sync(c, settings)
    if before.alias != after.alias:
        print(f"repaired: moved the alias '{tracking.CHAMPION}' from v{before.alias or ' (none)'} to "
              f"v{after.alias} (ledger event #{after.head.seq}, {after.head.event_id})", file=sys.stderr)
    else:
        print("nothing to repair: the alias and the ledger agree", file=sys.stderr)


def _print_champion(info: dict) -> None:
    print(f"{info['model_name']} champion: v{info['champion_version']}")
    print(f"  since:   {info.get('since') or 'unknown (before the ledger)'} ({info.get('kind')} by {info.get('by')})")
    if info.get("from_version") is not None:
        print(f"  replaced: v{info['from_version']}")
    print(f"  why:     {info.get('reason')}")
    print(f"  test:    {_fmt_metrics(info['test_metrics'])}")
    print(f"  window:  {info['data_window'][0]} .. {info['data_window'][1]} (end exclusive)")
    seq = f"#{info['ledger_seq']} " if info.get("ledger_seq") else ""
    print(f"  ledger:  {seq}{info.get('ledger_event') or '-'}")


def cmd_champion(args) -> int:
    """Exit status: 0, 1 with no champion, 3 when the alias and the ledger disagree (stderr says how to repair)."""
    from tasks.core.settings import get_settings

    settings = get_settings()
    if args.repair:
        _repair(settings)
    info = champion_info(settings)
    for problem in info["unreadable_ledger_files"]:
        print(f"warning: unreadable ledger file skipped: {problem}", file=sys.stderr)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
    elif info["champion_version"] is None:
        print(f"{info['model_name']}: no champion yet")
    else:
        _print_champion(info)
    if info["disagreement"]:
        print(f"CHAMPION DISAGREEMENT: {info['disagreement']}.\n  The ledger is the source of truth. Repair: "
              f"homeworth champion --repair (points the alias at v{info['ledger_version']}; the next promote or "
              "rollback does the same)", file=sys.stderr)
        return 3
    return 0 if info["champion_version"] is not None else 1


def cmd_ledger(args) -> int:
    from tasks.core.settings import get_settings
    from tasks.registry import ledger

    found = ledger.scan(get_settings())
    for name, why in found.problems:
        print(f"warning: ledger file {name} is unreadable and was skipped: {why}", file=sys.stderr)
    events = found.events
    if args.limit:
        events = events[-args.limit:]
    if args.json:
        print(json.dumps([json.loads(e.model_dump_json()) for e in events], indent=2))
        return 0
    if not events:
        print("the ledger is empty: the champion has never moved")
        return 0
    for e in events:
        frm = f"v{e.from_version}" if e.from_version else "none"
        diff = (e.metrics or {}).get("difference") or {}
        delta = f" (mdape {-diff['mdape']:+.4f})" if "mdape" in diff else ""
        print(f"#{e.seq:<3} {e.at:%Y-%m-%d %H:%M:%S}Z {e.kind:<9} {frm:>5} -> v{e.to_version:<4} by {e.who()}{delta}")
        print(f"      {e.reason}")
    return 0


def cmd_rollback(args) -> int:
    import getpass
    import socket
    from datetime import datetime, timezone

    from tasks.core.settings import get_settings
    from tasks.registry.rollback import RollbackError, rollback

    at = datetime.now(timezone.utc)  # a person's action: the wall clock is when it happened
    user = args.user or getpass.getuser()
    actor = {"type": "user", "user": user, "host": socket.gethostname(), "via": "tasks.cli"}
    try:
        out = rollback(get_settings(), args.version, args.reason, actor, at, key=f"cli/{user}/{at.isoformat()}",
                       expected=args.expect)
    except RollbackError as exc:
        print(f"rollback refused: {exc}", file=sys.stderr)
        return 2
    if out["outcome"] == "superseded":
        print(f"nothing moved: {out['reason']}", file=sys.stderr)
        return 4
    print(f"champion: v{out['previous_champion']} -> v{out['champion_version']} (ledger event {out['ledger_event']})")
    return 0


def cmd_spec_infer(args) -> int:
    """Print the inferred spec; with ``--suite`` also write the starter expectations module (the spec names it)."""
    from pathlib import Path

    from tasks.core.infer import infer
    from tasks.core.infer_render import module_name, render_spec, render_suite

    try:
        inferred = infer(args.file, args.name, args.target, args.id, args.time, args.split, args.split_column,
                         rows=args.sample_rows)
    except (ValueError, FileNotFoundError) as exc:
        print(f"spec infer: {exc}", file=sys.stderr)
        return 2
    suite_module = None
    if args.suite is not None:
        path = Path(args.suite or f"expectations/{args.name}.py")
        try:
            suite_module = module_name(path, Path.cwd())
        except ValueError:
            print(f"spec infer: --suite {path} must be under the current folder (it is imported by name)",
                  file=sys.stderr)
            return 2
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(render_suite(inferred, Path(args.file).name))
        tmp.replace(path)
        print(f"spec infer: wrote the starter suite {path} ({suite_module})", file=sys.stderr)
    sys.stdout.write(render_spec(inferred, Path(args.file).name, suite_module))
    return 0


def _add_spec_commands(sub) -> None:
    sp = sub.add_parser("spec", help="dataset specs: infer one from a sales file")
    ssub = sp.add_subparsers(dest="spec_command", required=True, metavar="<spec command>")
    inf = ssub.add_parser("infer", help="write a spec inferred from a sample of FILE to stdout",
                          description="Infer a dataset spec (YAML, with a comment on every guess) from a sample "
                                      "of a CSV, CSV.gz or Parquet file; see docs/datasets.md.")
    inf.add_argument("file", help="the sales file (.csv, .csv.gz or .parquet)")
    inf.add_argument("--name", required=True, help="the dataset's name (the spec's name)")
    inf.add_argument("--target", required=True, help="the price column")
    inf.add_argument("--id", default=None, help="the column identifying the item sold (default: none; "
                     "duplicates are then whole-row duplicates)")
    inf.add_argument("--time", default=None, help="the sale date column (default: the date column, if one)")
    inf.add_argument("--split", choices=["time", "random", "column"], default=None,
                     help="default: column with --split-column, else time with a date column, else random")
    inf.add_argument("--split-column", default=None, help="a column of train / val / test")
    inf.add_argument("--suite", nargs="?", const="", default=None, metavar="PATH",
                     help="also write a starter expectations module (default path expectations/NAME.py)")
    inf.add_argument("--sample-rows", type=int, default=50_000, help="rows read from the file's start")
    inf.set_defaults(func=cmd_spec_infer)


def _add_operator_commands(sub) -> None:
    """champion, ledger and rollback: the champion's history and its one manual move."""
    ch = sub.add_parser("champion", help="show the live version and why it is live")
    ch.add_argument("--json", action="store_true")
    ch.add_argument("--repair", action="store_true",
                    help="point the champion alias at the ledger's newest event if they disagree")
    ch.set_defaults(func=cmd_champion)
    le = sub.add_parser("ledger", help="every move of the champion, oldest first")
    le.add_argument("--json", action="store_true")
    le.add_argument("--limit", type=int, default=0, help="only the last N events")
    le.set_defaults(func=cmd_ledger)
    rb = sub.add_parser("rollback", help="move the champion back to an earlier champion")
    rb.add_argument("--version", required=True, help="the model version to make champion again")
    rb.add_argument("--reason", required=True, help="why (recorded in the ledger)")
    rb.add_argument("--user", default=None, help="who is doing this (default: the login name)")
    rb.add_argument("--expect", default=None,
                    help="the champion you mean to replace; if another one is live by then, nothing moves")
    rb.set_defaults(func=cmd_rollback)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0],
                                epilog="homeworth <command> --help lists the command's flags.")
    sub = p.add_subparsers(dest="command", required=True, metavar="<command>")
    _add_operator_commands(sub)
    _add_spec_commands(sub)
    for name, d in DELEGATED.items():
        # Listed here for --help; main() hands their arguments to the module's own parser before this one runs.
        sub.add_parser(name, help=d.help, add_help=False)
    return p


def run_delegated(name: str, argv: list[str]) -> int:
    """The module's ``main(argv, prog)``; its return value as an exit status (a summary or None is success)."""
    result = importlib.import_module(DELEGATED[name].module).main(argv, prog=f"{PROG} {name}")
    return result if isinstance(result, int) else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in DELEGATED:
        return run_delegated(argv[0], argv[1:])
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
