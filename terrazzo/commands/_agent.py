"""`terrazzo compile agent.yaml`: the agent branch of the compile command (placement, builds, bundle summary)."""

from __future__ import annotations

import argparse
from typing import Any


def is_agent_spec(path: str) -> bool:
    """True for agent specs (YAML files), which the compile command hands to ``compile_agent``."""
    return str(path).lower().endswith((".yaml", ".yml"))


def batch_sizes_arg(text: str) -> tuple[int, ...]:
    """``--batch-sizes 1,2,4,8`` → ``(1, 2, 4, 8)``; ``""`` → no batched builds.

    Raises:
        FrontendError: not comma-separated integers in 1..256.
    """
    from terrazzo.errors import FrontendError

    try:
        sizes = tuple(sorted({int(x) for x in text.split(",") if x.strip()}))
    except ValueError:
        raise FrontendError(f"--batch-sizes {text!r}: comma-separated integers") from None
    if any(b < 1 or b > 256 for b in sizes):
        raise FrontendError(f"--batch-sizes {text!r}: each batch size must be in 1..256")
    return sizes


def run_compile(args: argparse.Namespace) -> int:
    """Compile an agent spec with ``terrazzo.pipeline.compile_agent`` and print a summary."""
    from rich.console import Console
    from rich.table import Table

    from terrazzo.commands._common import print_json
    from terrazzo.pipeline import compile_agent

    err = Console(stderr=True)

    def progress(event: str, d: Any) -> None:
        if event == "placed":
            err.print(f"[green]✓[/green] placed (predicted {d['latency_s'] * 1e3:.1f} ms)")
        elif event == "build":
            err.print(f"    build {d['task']:<18} {d['device']:<10} {d['target'].get('kind')}")

    res = compile_agent(
        args.model, args.fleet, args.sla, args.output, rps=args.rps, solver=args.solver,
        profile=args.profile, sign_key=args.sign, progress=None if args.json else progress,
        batch_sizes=batch_sizes_arg(getattr(args, "batch_sizes", "") or ""),
    )  # fmt: skip
    from terrazzo.bundle import open_bundle

    # our own output, just written: read for its description only (no code loads)
    with open_bundle(res.path, allow_unsigned=True) as b:
        stages = [s for s in b.stages]
    summary = {
        "bundle": str(res.path),
        "kind": "agent",
        "build_s": round(res.build_s, 3),
        "plan": {"solver": res.plan.solver, "latency_s": res.plan.latency_s,
                 "usd_per_hour": res.plan.usd_per_hour},
        "devices": res.devices,
        "notes": list(res.notes),
        "stages": [{"index": s.index, "ops": list(s.ops), "device": s.device, "target": dict(s.target),
                    "fallback_reason": s.fallback_reason, "files": sorted(s.files)} for s in stages],
    }  # fmt: skip
    if args.json:
        print_json(summary)
        return 0
    table = Table(title=f"agent → {res.path}")
    for col in ("node", "device class(es)"):
        table.add_column(col)
    for node, dev in res.devices.items():
        table.add_row(node, dev)
    Console().print(table)
    for s in stages:
        fb = f"  fallback: {s.fallback_reason}" if s.fallback_reason else ""
        print(f"stage {s.index} {','.join(s.ops):<18} {s.device:<10} {sorted(s.files)}{fb}")
    for note in res.notes:
        print(f"note: {note}")
    print(
        f"predicted {res.plan.latency_s * 1e3:.1f} ms, {res.plan.usd_per_hour:.3f} USD/h; "
        f"built in {res.build_s:.1f} s"
    )
    return 0
