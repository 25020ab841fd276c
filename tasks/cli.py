"""Operator commands for the champion: who is live and why, the ledger, and a rollback.

    python -m tasks.cli champion                 # the live version, since when, by whom, why, its metrics
    python -m tasks.cli ledger [--json] [--limit N]
    python -m tasks.cli rollback --version 3 --reason "v4 over-values waterfront houses" [--user alice]

A rollback from here is a person's action: it is recorded with the wall-clock time and the user
(``--user``, else the login name). The ``champion_rollback`` DAG does the same from the Airflow UI.
"""

from __future__ import annotations

import argparse
import getpass
import json
import socket
import sys
from datetime import datetime, timezone

from tasks.core import tracking
from tasks.core.settings import get_settings
from tasks.registry import ledger


def _fmt_metrics(m: dict | None) -> str:
    if not m:
        return "-"
    keys = [k for k in ("mdape", "ppe10", "rmse_ln") if k in m]
    return ", ".join(f"{k} {m[k]:.4f}" for k in keys)


def champion_info(settings) -> dict:
    """The live version with the ledger event (or, before the ledger existed, the tags) explaining it."""
    c = tracking.client(settings)
    mv = tracking.champion_version(c, settings.model_name)
    if mv is None:
        return {"model_name": settings.model_name, "champion_version": None}
    event = ledger.latest_for(settings, str(mv.version))
    metrics = {}
    if mv.run_id:
        metrics = {k.removeprefix("test/"): v for k, v in c.get_run(mv.run_id).data.metrics.items()
                   if k.startswith("test/")}
    info = {"model_name": settings.model_name, "champion_version": str(mv.version), "test_metrics": metrics,
            "data_window": [mv.tags.get("data.window_start"), mv.tags.get("data.window_end")],
            "mlflow_run_id": mv.run_id, "source": mv.source}
    if event is not None:
        info.update({"since": event.at.isoformat(), "by": event.who(), "kind": event.kind, "reason": event.reason,
                     "from_version": event.from_version, "ledger_event": event.event_id})
    else:
        info.update({"since": None, "by": mv.tags.get("promotion.airflow_run_id"), "kind": "promotion",
                     "reason": mv.tags.get("promotion.reason"), "ledger_event": None})
    return info


def cmd_champion(args) -> int:
    info = champion_info(get_settings())
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    if info["champion_version"] is None:
        print(f"{info['model_name']}: no champion yet")
        return 1
    print(f"{info['model_name']} champion: v{info['champion_version']}")
    print(f"  since:   {info.get('since') or 'unknown (before the ledger)'} ({info.get('kind')} by {info.get('by')})")
    if info.get("from_version") is not None:
        print(f"  replaced: v{info['from_version']}")
    print(f"  why:     {info.get('reason')}")
    print(f"  test:    {_fmt_metrics(info['test_metrics'])}")
    print(f"  window:  {info['data_window'][0]} .. {info['data_window'][1]} (end exclusive)")
    print(f"  ledger:  {info.get('ledger_event') or '-'}")
    return 0


def cmd_ledger(args) -> int:
    events = ledger.read_all(get_settings())
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
    from tasks.registry.promote import RollbackError, rollback

    at = datetime.now(timezone.utc)  # a person's action: the wall clock is when it happened
    user = args.user or getpass.getuser()
    actor = {"type": "user", "user": user, "host": socket.gethostname(), "via": "tasks.cli"}
    try:
        out = rollback(get_settings(), args.version, args.reason, actor, at, key=f"cli/{user}/{at.isoformat()}")
    except RollbackError as exc:
        print(f"rollback refused: {exc}", file=sys.stderr)
        return 2
    print(f"champion: v{out['previous_champion']} -> v{out['champion_version']} (ledger event {out['ledger_event']})")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tasks.cli", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    ch = sub.add_parser("champion", help="show the live version and why it is live")
    ch.add_argument("--json", action="store_true")
    ch.set_defaults(func=cmd_champion)
    le = sub.add_parser("ledger", help="every move of the champion, oldest first")
    le.add_argument("--json", action="store_true")
    le.add_argument("--limit", type=int, default=0, help="only the last N events")
    le.set_defaults(func=cmd_ledger)
    rb = sub.add_parser("rollback", help="move the champion back to an earlier champion")
    rb.add_argument("--version", required=True, help="the model version to make champion again")
    rb.add_argument("--reason", required=True, help="why (recorded in the ledger)")
    rb.add_argument("--user", default=None, help="who is doing this (default: the login name)")
    rb.set_defaults(func=cmd_rollback)
    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
