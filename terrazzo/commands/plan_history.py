"""``terrazzo plan-history``: the adaptive runtime's decisions (``serve --adapt``'s decision log)."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from terrazzo.errors import ServingError


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "plan-history",
        help="show the plan changes of terrazzo serve --adapt (reason, old/new plan, prediction)",
        description="Read the JSONL decision log written by 'terrazzo serve --adapt' (the "
        "policy's decision_log) and print one row per plan change.",
    )
    p.add_argument("log", help="the decision log (JSONL)")
    p.add_argument("--json", action="store_true", help="print the entries as a JSON array")
    p.add_argument("--last", type=int, default=None, metavar="N", help="only the last N changes")
    p.set_defaults(func=run)


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """Entries of a decision log; ServingError in one line for a missing or corrupt file."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ServingError(f"cannot read decision log {p}: {e.strerror}") from None
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            raise ServingError(f"decision log {p}: line {n} is not JSON") from None
        if not isinstance(entry, dict) or "reason" not in entry or "new" not in entry:
            raise ServingError(f"decision log {p}: line {n} is not a decision (no reason/new)")
        out.append(entry)
    return out


def run(args: argparse.Namespace) -> int:
    entries = read_log(args.log)
    if args.last is not None:
        entries = entries[-args.last :] if args.last > 0 else []
    if args.json:
        print(json.dumps(entries, indent=1))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"plan history: {args.log} ({len(entries)} changes)")
    for col in (
        "time (UTC)",
        "reason",
        "detail",
        "old plan",
        "new plan",
        "USD/h",
        "p99 pred",
        "swap",
    ):
        table.add_column(col)
    for e in entries:
        when = datetime.fromtimestamp(float(e.get("time", 0)), UTC).strftime("%H:%M:%S")
        old = e.get("old") or {}
        new = e.get("new") or {}
        swap = e.get("swap_s")
        table.add_row(
            when,
            str(e["reason"]),
            str(e.get("detail", "")),
            str(old.get("text", "")),
            str(new.get("text", "")),
            f"{old.get('usd_per_hour', 0):.2f} -> {new.get('usd_per_hour', 0):.2f}",
            f"{1e3 * float(e.get('predicted_latency_s', 0)):.0f} ms",
            "-" if swap is None else f"{float(swap):.2f} s",
        )
    Console(file=sys.stdout, width=200).print(table)
    return 0
