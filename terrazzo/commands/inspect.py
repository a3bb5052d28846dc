"""`terrazzo inspect`: describe a `.tzb` bundle (validated, hash-checked) without loading any code."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "inspect",
        help="describe a .tzb bundle: signature, stages, targets, fallbacks (never loads code)",
        description="Validates the bundle (names, member types, caps, the signature against the "
        "trusted keys, every sha256) and prints what it holds. No library is loaded or "
        "extracted. An unsigned bundle, or a signature no trusted key verifies, is a failure "
        "(exit 2) unless --allow-unsigned.",
    )
    p.add_argument("bundle", metavar="BUNDLE", help=".tzb file")
    from terrazzo.commands._common import add_trust_arguments

    add_trust_arguments(
        p,
        "describe a bundle that is unsigned or whose signature no trusted key verifies "
        "(inspect loads no code; the signature line says what was found)",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument(
        "--ir",
        action="store_true",
        help="print the placed tz MLIR the bundle was built from (device and stage on every op; "
        "with --json: a placed_ir field)",
    )
    p.set_defaults(func=run)


def describe(manifest: dict[str, Any], bundle_bytes: int) -> dict[str, Any]:
    """The JSON description ``inspect`` prints, built from a manifest only."""
    from terrazzo.codegen import describe_target

    stages = []
    for s in manifest["stages"]:
        stages.append(
            {
                "index": s["index"],
                "device": s["device"],
                "target": s["target"],
                "target_desc": describe_target(s["target"]),
                "fallback_reason": s.get("fallback_reason"),
                "notes": s.get("notes", []),
                "replicas": s.get("replicas", 1),
                "ops": len(s.get("ops", [])),
                "inputs": s["inputs"],
                "outputs": s["outputs"],
                "weight_bytes": s.get("weight_bytes", 0),
                "artifacts": sorted(
                    k for k in s.get("files", {}) if k != "weights" and not k.startswith("host_b")
                ),
                "buckets": s.get("buckets"),
                "predicted_latency_s": s.get("predicted_latency_s"),
            }
        )
    return {
        "name": manifest["model"]["name"],
        "model_sha256": manifest["model"].get("sha256", ""),
        "format_version": manifest["format_version"],
        "versions": manifest.get("versions", {}),
        "inputs": manifest["inputs"],
        "outputs": manifest["outputs"],
        "stages": stages,
        "plan": manifest.get("plan", {}),
        "fleet": manifest.get("fleet", {}),
        "sla": manifest.get("sla", {}),
        "host_target": manifest.get("host_target", {}),
        "has_reference": bool(manifest.get("reference")),
        "tuning_records": manifest.get("tuning", {}).get("count", 0),
        "weight_bytes": manifest.get("weight_bytes", 0),
        "bundle_bytes": bundle_bytes,
        "members": len(manifest["members"]),
    }


def run(args: argparse.Namespace) -> int:
    import os

    from terrazzo.bundle import check_bundle, read_member_text
    from terrazzo.commands._common import print_json, warn_unverified
    from terrazzo.errors import BundleError

    checked = check_bundle(args.bundle, args.trust, allow_unsigned=args.allow_unsigned)
    warn_unverified("inspect", args.bundle, checked.signed, checked.signer is not None)
    try:
        info = describe(checked.manifest, os.path.getsize(args.bundle))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise BundleError(f"member 'manifest.json' is malformed: {type(e).__name__}: {e}") from None
    info["signature"] = checked.describe_signature()
    if args.ir:
        trust = {"keys": [checked.signer.raw.hex()]} if checked.signer is not None else None
        info["placed_ir"] = read_member_text(
            args.bundle, "plan.mlir", trust, allow_unsigned=checked.signer is None
        )
        if not args.json:
            print(info["placed_ir"], end="")
            return 0
    if args.json:
        print_json(info)
        return 0
    from rich.console import Console
    from rich.table import Table

    def sig(specs: list[dict[str, Any]]) -> str:
        from terrazzo.ir import TensorSpec

        return ", ".join(
            f"{t['name']}:{t['dtype']}{TensorSpec.from_json(t).describe_shape()}" for t in specs
        )

    c = Console()
    plan = info["plan"]
    c.print(f"[bold]{info['name']}[/bold]  ({args.bundle}, {info['bundle_bytes'] / 1e6:.2f} MB, "
            f"weights {info['weight_bytes'] / 1e6:.2f} MB, {info['members']} members, signature: {info['signature']})")  # fmt: skip
    from rich.markup import escape

    c.print(escape(f"inputs:  {sig(info['inputs'])}\noutputs: {sig(info['outputs'])}"))
    if plan:
        c.print(f"plan: {plan.get('solver')}, {plan.get('stages')} stages, predicted "
                f"{plan.get('latency_s', 0) * 1e3:.3f} ms, {plan.get('usd_per_hour', 0):.4f} USD/h; "
                f"SLA {info['sla']}")  # fmt: skip
        from terrazzo.commands._common import describe_dynamic

        dyn = describe_dynamic(plan)
        if dyn:
            c.print(dyn)
        llm = plan.get("llm")
        if llm:  # an LLM bundle from a Hugging Face directory
            kvd = "fp16" if llm.get("kv_dtype") == "float16" else "fp32"
            c.print(escape(
                f"llm: compute {llm.get('compute_dtype')} ({llm.get('compute_reason')}); KV pool "
                f"{kvd}, {llm.get('kv_blocks')} blocks x {llm.get('kv_block_tokens')} tokens; "
                f"decode batches {','.join(str(b) for b in llm.get('decode_batches') or []) or 'none'}"
            ))  # fmt: skip
    t = Table()
    for col in ("stage", "device", "target", "ops", "replicas", "artifacts", "weights", "fallback"):
        t.add_column(col)
    for s in info["stages"]:
        fb = s["fallback_reason"] or ""
        if s["notes"]:
            fb = (fb + " " if fb else "") + " ".join(s["notes"])
        t.add_row(str(s["index"]), s["device"], s["target_desc"], str(s["ops"]), str(s["replicas"]),
                  ", ".join(s["artifacts"]), f"{s['weight_bytes'] / 1e6:.2f} MB", fb)  # fmt: skip
    c.print(t)
    for s in info["stages"]:
        line = describe_buckets(s)
        if line:
            c.print(escape(line))
    return 0


def describe_buckets(stage: dict[str, Any]) -> str | None:
    """One line on a stage's static batch builds (None when it has only its symbolic build)."""
    b = stage.get("buckets")
    if not b:
        return None
    sizes = ",".join(str(n) for n in b["sizes"])
    return (
        f"stage {stage['index']}: bucketed: static builds at {b['symbol']}={sizes} (a batch runs "
        f"on the smallest that holds it, padded); above {b['sizes'][-1]}: the symbolic build"
    )
