"""``terrazzo llm estimate``/``plan``: predicted tokens/s, TTFT, TBT, batch and TP/PP of an LLM on N devices."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "llm", help="LLM serving estimates (tokens/s, TTFT, TBT) per device class"
    )
    sub = p.add_subparsers(dest="llm_command", metavar="COMMAND")
    s = sub.add_parser(
        "estimate",
        help="predict tokens/s, TTFT, TBT, batch and TP/PP of a model on N devices of one class",
        description="Estimate an aggregated continuous-batching server (vLLM / TensorRT-LLM style) "
        "of --count devices of one class: the TP/PP split and replicas, the largest batch memory "
        "and the latency bounds allow, and the resulting tokens/s. Scenarios follow MLPerf "
        "Inference: offline has no latency bound; server and interactive bound p99 TTFT and TPOT "
        "(defaults: MLPerf's bounds for the model, Llama 2 70B's otherwise).",
    )
    s.add_argument("--model", required=True, help="preset (llama2-70b, llama3.1-8b, llama3.1-70b, "
                   "llama3.1-405b, llama3-8b, llama3-70b) or a Hugging Face model directory")  # fmt: skip
    s.add_argument(
        "--device",
        required=True,
        help="device class of the catalog (h100, h200, b200, mi300x, ...)",
    )
    s.add_argument(
        "--count", type=int, default=8, help="devices in the node serving together (default 8)"
    )
    s.add_argument("--precision", default="fp8", choices=["fp16", "bf16", "fp8", "fp4"])
    s.add_argument("--isl", type=int, required=True, help="input (prompt) tokens per request")
    s.add_argument("--osl", type=int, required=True, help="output tokens per request")
    s.add_argument("--scenario", default="offline", choices=["offline", "server", "interactive"])
    s.add_argument("--ttft-ms", type=float, help="p99 TTFT bound in ms (server/interactive)")
    s.add_argument(
        "--tbt-ms", type=float, help="p99 time between tokens bound in ms (server/interactive)"
    )
    s.add_argument("--tp", type=int, help="pin the tensor-parallel degree")
    s.add_argument("--pp", type=int, help="pin the pipeline-parallel degree")
    s.add_argument("--batch", type=int, help="pin the concurrent sequences per replica")
    s.add_argument(
        "--profile", default="datasheet", help="catalog profile or YAML (default datasheet)"
    )
    s.add_argument("--json", action="store_true", help="print the estimate as JSON")
    s.set_defaults(func=run)
    from terrazzo.commands import _llm_plan

    _llm_plan.register(sub)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run(args: argparse.Namespace) -> int:
    from terrazzo.commands._common import print_json
    from terrazzo.costmodel.catalog import load_catalog
    from terrazzo.costmodel.llm_serving import estimate_serving, resolve_model
    from terrazzo.errors import CostModelError

    if args.scenario == "offline" and (args.ttft_ms is not None or args.tbt_ms is not None):
        raise CostModelError(
            "--ttft-ms/--tbt-ms bound server and interactive scenarios; offline has none"
        )
    cfg = resolve_model(args.model)
    dev = load_catalog(args.profile)[args.device]
    est = estimate_serving(
        cfg, dev, args.count, args.precision, args.isl, args.osl, args.scenario,
        ttft_s=None if args.ttft_ms is None else args.ttft_ms / 1e3,
        tbt_s=None if args.tbt_ms is None else args.tbt_ms / 1e3,
        tp=args.tp, pp=args.pp, batch=args.batch,
    )  # fmt: skip
    if args.json:
        print_json(est.to_json())
        return 0
    bounds = (
        "none (offline)" if est.scenario == "offline"
        else f"TTFT <= {est.ttft_bound_ms:.0f} ms, TBT <= {est.tbt_bound_ms:.1f} ms (p99 bounds read as steady-state)"
    )  # fmt: skip
    lines = [
        f"{est.model} {est.precision} on {est.count} x {est.device}, {est.scenario}, {est.isl} in / {est.osl} out",
        f"  split            TP{est.tp} x PP{est.pp}, {est.replicas} replica(s), batch {est.batch} per replica (limited by {est.binding})",
        f"  tokens/s         {est.tokens_per_s:,.0f} total, {est.tokens_per_s_per_device:,.0f} per device (output tokens)",
        f"  TTFT / TBT       {est.ttft_ms:.1f} ms / {est.tbt_ms:.2f} ms   bounds: {bounds}",
        f"  memory / device  {est.mem_gb_per_device:.1f} GB (weights {est.weights_gb_per_device:.1f} + KV {est.kv_gb_per_device:.1f})",
        f"  efficiency       {est.efficiency_compute:.2f} of peak FLOP/s, {est.efficiency_memory:.2f} of HBM bandwidth ({est.efficiency_source})",
    ]  # fmt: skip
    print("\n".join(lines))
    return 0
