"""``terrazzo tco simulate``: serve a request trace on a P::D fleet in the discrete-event simulator.

Registered by ``commands/tco.py`` beside ``tco study``. With ``--study`` it checks the study's
analytical plans (best pair per cell) against the simulator instead.
"""

from __future__ import annotations

import argparse
from typing import Any


def register_simulate(sub: Any) -> None:
    s = sub.add_parser(
        "simulate",
        help="simulate a prefill::decode fleet serving a request trace (TTFT/TBT percentiles, SLA, $/1M tokens)",
        description="Discrete-event simulation of a P::D fleet: arrivals (Poisson, uniform, Gamma "
        "bursts or a trace file), prefill batching under a token budget, KV transfer over the "
        "network, continuous batching on decode instances with a KV-capacity limit. Iteration "
        "times come from the analytical phase model (terrazzo.costmodel.llm).",
    )
    s.add_argument("--model", default="llama3-70b", help="model preset (default llama3-70b)")
    s.add_argument("--precision", default="fp16", choices=["fp16", "bf16", "fp8"])
    s.add_argument("--prefill", default="h100", help="prefill DEVICE[:INSTANCES] (default h100:1)")
    s.add_argument("--decode", default="h100", help="decode DEVICE[:INSTANCES] (default h100:1)")
    s.add_argument("--prefill-tp", type=int, help="TP degree of a prefill instance (default: smallest that fits)")  # fmt: skip
    s.add_argument("--decode-tp", type=int, help="TP degree of a decode instance (default: smallest that fits)")  # fmt: skip
    s.add_argument("--prefill-batch", type=int, default=256, help="prompts per prefill batch (default 256)")  # fmt: skip
    s.add_argument("--prefill-tokens", type=int, default=65536, help="prefill token budget per batch (default 65536)")  # fmt: skip
    s.add_argument("--decode-batch", type=int, default=1024, help="sequences per decode batch (default 1024)")  # fmt: skip
    s.add_argument(
        "--trace",
        default="synthetic:azure-conv-2023",
        help="synthetic:azure-conv-2023 | synthetic:azure-code-2023 | fixed:ISL/OSL | a CSV/JSONL file",
    )
    s.add_argument(
        "--rate", type=float, default=1.0, help="synthetic arrivals per second (default 1)"
    )
    s.add_argument("--duration", type=float, default=600.0, help="synthetic trace length in seconds (default 600)")  # fmt: skip
    s.add_argument("--arrival", default="poisson", help="poisson | uniform | gamma:CV (default poisson)")  # fmt: skip
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--ttft", help="TTFT bound for SLA attainment, e.g. 2s or 250ms")
    s.add_argument("--tbt", help="TBT bound for SLA attainment, e.g. 100ms")
    s.add_argument("--profile", default="paper-2025", help="catalog profile: paper-2025, datasheet or a YAML path")  # fmt: skip
    s.add_argument("--pricing", choices=["capex", "cloud"], default="capex")
    s.add_argument(
        "--study",
        action="store_true",
        help="check the fleet study's plans (best pair per cell) against the simulator instead",
    )
    s.add_argument("--models", default="llama3-8b,llama3-70b", help="--study: model presets")
    s.add_argument("--pairs", help="--study: extra P::D pairs to check, comma-separated")
    s.add_argument("--utilisation", type=float, default=0.8, help="--study: load of the latency run (default 0.8)")  # fmt: skip
    s.add_argument("--max-requests", type=int, default=150_000, help="--study: requests per run (cap)")  # fmt: skip
    s.add_argument("--headroom", action="store_true", help="--study: bisect the load at which 99%% meet the SLA")  # fmt: skip
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=run_simulate)


def _pool_arg(text: str, flag: str) -> tuple[str, int]:
    from terrazzo.errors import TerrazzoError

    name, _, count = text.partition(":")
    try:
        n = int(count) if count else 1
    except ValueError:
        n = 0
    if not name or n < 1:
        raise TerrazzoError(f"{flag} {text!r}: expected DEVICE[:INSTANCES], e.g. h100:2")
    return name.strip(), n


def run_simulate(args: argparse.Namespace) -> int:
    from terrazzo.costmodel.catalog import load_catalog
    from terrazzo.costmodel.tco import TCOOptions
    from terrazzo.errors import TerrazzoError

    tco = TCOOptions(pricing=args.pricing)
    catalog = load_catalog(args.profile)
    try:
        datasheet = load_catalog("datasheet")
    except TerrazzoError:
        datasheet = None
    if args.study:
        return _run_study(args, catalog, datasheet, tco)
    return _run_one(args, catalog, datasheet, tco)


def _run_one(args: argparse.Namespace, catalog: Any, datasheet: Any, tco: Any) -> int:
    import math

    from terrazzo.commands._common import print_json
    from terrazzo.costmodel import llm
    from terrazzo.costmodel.llm_sim import FleetSpec, PhasePool, SimOptions, simulate
    from terrazzo.costmodel.tco import usd_per_hour
    from terrazzo.costmodel.traces import trace_from_spec
    from terrazzo.errors import TerrazzoError
    from terrazzo.placement import parse_duration_s
    from terrazzo.report import phases
    from terrazzo.report.study import arch_of

    if not (args.rate > 0 and math.isfinite(args.rate)):
        raise TerrazzoError(f"--rate must be > 0 requests/s, found {args.rate}")
    if not (args.duration > 0 and math.isfinite(args.duration)):
        raise TerrazzoError(f"--duration must be > 0 s, found {args.duration}")
    cfg = arch_of(args.model)
    n_req = max(1, round(args.rate * args.duration))
    trace = trace_from_spec(args.trace, n_req, args.rate, args.arrival, args.seed)
    longest = max(r.input_tokens + r.output_tokens for r in trace)

    def pool(text: str, flag: str, tp: int | None, batch: int, tokens: int, ctx: int) -> PhasePool:
        name, n = _pool_arg(text, flag)
        spec = catalog[name]
        ds = datasheet.get(name) if datasheet is not None and name in datasheet else None
        dev = phases.phase_device(spec, ds).spec
        if tp is None:
            tp = llm.min_tp(cfg, dev, ctx, 1, args.precision)
        try:
            price = usd_per_hour(spec, tco)
        except TerrazzoError:
            price = 0.0
        return PhasePool(dev, n, tp, batch, tokens, price)

    longest_prompt = max(r.input_tokens for r in trace)
    fleet = FleetSpec(
        cfg,
        args.precision,
        pool(
            args.prefill,
            "--prefill",
            args.prefill_tp,
            args.prefill_batch,
            args.prefill_tokens,
            longest_prompt,
        ),  # fmt: skip
        pool(
            args.decode, "--decode", args.decode_tp, args.decode_batch, args.prefill_tokens, longest
        ),  # fmt: skip
    )
    opts = SimOptions(
        ttft_s=parse_duration_s(args.ttft) if args.ttft else None,
        tbt_s=parse_duration_s(args.tbt) if args.tbt else None,
    )
    res = simulate(fleet, trace, opts)
    fleet_json = {
        "model": cfg.name,
        "precision": args.precision,
        "prefill": {
            "device": fleet.prefill.device.name,
            "instances": fleet.prefill.instances,
            "tp": fleet.prefill.tp,
        },  # fmt: skip
        "decode": {
            "device": fleet.decode.device.name,
            "instances": fleet.decode.instances,
            "tp": fleet.decode.tp,
        },  # fmt: skip
        "trace": args.trace,
        "profile": str(args.profile),
        "pricing": args.pricing,
    }
    if args.json:
        print_json({"fleet": fleet_json, **res.to_json()})
        return 0
    _print_one(fleet_json, res, opts)
    return 0


def _ms(x: float) -> str:
    return f"{x * 1e3:.1f} ms"


def _print_one(fleet: dict[str, Any], res: Any, opts: Any) -> None:
    p, d = fleet["prefill"], fleet["decode"]
    print(
        f"{fleet['model']} {fleet['precision']}: prefill {p['instances']}x({p['tp']}x{p['device']}) :: "
        f"decode {d['instances']}x({d['tp']}x{d['device']}), trace {fleet['trace']}"
    )
    print(f"  requests        {res.completed}/{res.requests} in {res.makespan_s:.1f} s (window {res.window_s:.1f} s)")  # fmt: skip
    print(f"  offered         {res.offered_requests_per_s:.2f} req/s")
    print(f"  throughput      {res.throughput_tokens_per_s:.1f} output tokens/s ({res.input_tokens_per_s:.0f} input tokens/s)")  # fmt: skip
    print(f"  TTFT p50 / p99  {_ms(res.ttft_p50_s)} / {_ms(res.ttft_p99_s)} (queue mean {_ms(res.queue_mean_s)})")  # fmt: skip
    print(f"  TBT  p50 / p99  {_ms(res.tbt_p50_s)} / {_ms(res.tbt_p99_s)} (per-token gap p99 {_ms(res.itl_p99_s)})")  # fmt: skip
    if res.sla_attainment is not None:
        bounds = ", ".join(
            f"{k} ≤ {_ms(v)}"
            for k, v in (("TTFT", opts.ttft_s), ("TBT", opts.tbt_s))
            if v is not None
        )
        print(f"  SLA attainment  {res.sla_attainment:.1%} ({bounds})")
    print(f"  decode batch    mean {res.mean_decode_batch:.1f}, max {res.max_decode_batch}; prefill batch max {res.max_prefill_batch}")  # fmt: skip
    print(f"  busy            prefill {res.prefill_utilisation:.0%}, decode {res.decode_utilisation:.0%}")  # fmt: skip
    if res.usd_per_million_tokens is not None:
        print(f"  cost            ${res.usd_per_hour:.2f}/h, ${res.usd_per_million_tokens:.3f} per 1M output tokens ({fleet['pricing']}, {fleet['profile']})")  # fmt: skip


def _run_study(args: argparse.Namespace, catalog: Any, datasheet: Any, tco: Any) -> int:
    from terrazzo.commands._common import print_json
    from terrazzo.placement import parse_duration_s
    from terrazzo.report.sim_check import check_study
    from terrazzo.report.study import StudyOptions, run_study

    opts = StudyOptions(
        models=tuple(m.strip() for m in args.models.split(",") if m.strip()),
        ttft_s=parse_duration_s(args.ttft) if args.ttft else 0.250,
        tbt_s=parse_duration_s(args.tbt) if args.tbt else 0.020,
        tco=tco,
    )
    result = run_study(catalog, opts, datasheet=datasheet, profile=str(args.profile))
    pairs = tuple(p.strip() for p in args.pairs.split(",")) if args.pairs else None
    checks = check_study(
        result, catalog, datasheet, pairs=pairs, utilisation=args.utilisation,
        max_requests=args.max_requests, headroom=args.headroom,
    )  # fmt: skip
    if args.json:
        print_json([c.to_json() for c in checks])
        return 0
    from terrazzo.report.sim_check import print_checks

    print_checks(checks)
    return 0
