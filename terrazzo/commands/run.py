"""`terrazzo run`: run a bundle's stages one after another in this process (no servers)."""

from __future__ import annotations

import argparse
from typing import Any

ALLOW_UNSIGNED_HELP = (
    "run a bundle that is unsigned or whose signature no trusted key verifies: its native code "
    "runs unverified (prints a warning)"
)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "run",
        help="run a .tzb bundle in-process on given or random inputs; optional benchmark",
        description="Loads every stage (the planned device's build when present, else the host-CPU "
        "build, said so) and runs them in order. Inputs not given get random data of the right "
        "shape and dtype. The bundle's signature must verify with a trusted key (see --trust) "
        "before any of its code loads.",
    )
    p.add_argument("bundle", metavar="BUNDLE", help=".tzb file")
    p.add_argument(
        "--input", action="append", default=[], metavar="NAME=FILE.npy", help="an input array"
    )
    p.add_argument("-o", "--output", metavar="OUT.npz", help="write the outputs to this .npz")
    p.add_argument(
        "--benchmark", type=int, default=0, metavar="N", help="time N runs after warm-up"
    )
    p.add_argument("--warmup", type=int, default=3, help="warm-up runs before timing (default 3)")
    p.add_argument("--seed", type=int, default=0, help="seed for random inputs (default 0)")
    from terrazzo.commands._common import add_trust_arguments

    add_trust_arguments(p, ALLOW_UNSIGNED_HELP)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument(
        "--shape",
        action="append",
        default=[],
        metavar="NAME=DIMS",
        help="shape of a random input of a dynamic-shape bundle, e.g. x=3x16 (repeatable; "
        "default: the shape the bundle was planned at)",
    )
    t = p.add_argument_group("LLM bundles (compiled from a Hugging Face directory)")
    t.add_argument("--prompt", help="text prompt: generate text (greedy unless --temperature)")
    t.add_argument("--chat", action="store_true", help="wrap --prompt in the chat template")
    t.add_argument("--max-tokens", type=int, default=16, help="tokens to generate (default 16)")
    t.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default)")
    t.add_argument("--top-p", type=float, default=1.0)
    t.add_argument("--top-k", type=int, default=0)
    t.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.set_defaults(func=run)


def _run_llm(args: argparse.Namespace, b: Any) -> int:
    """Text in, text out through the bundle's prefill and decode stages (``runtime.llm_text``)."""
    import time

    from terrazzo.commands._common import print_json
    from terrazzo.errors import TerrazzoError
    from terrazzo.runtime.llm_text import SamplingParams, open_generator

    if args.prompt is None:
        raise TerrazzoError(f"{args.bundle} is an LLM bundle: give --prompt TEXT")
    if args.max_tokens < 1:
        raise TerrazzoError(f"--max-tokens {args.max_tokens}: must be at least 1")
    gen = open_generator(b)
    ids = (
        gen.encode_chat([{"role": "user", "content": args.prompt}])
        if args.chat
        else gen.encode(args.prompt)
    )
    params = SamplingParams(args.max_tokens, args.temperature, args.top_p, args.top_k,
                            args.seed, tuple(args.stop))  # fmt: skip
    t0 = time.perf_counter()
    if not args.json:  # stream the text as it is generated
        import sys

        for _, delta in gen.stream_text(ids, params):
            sys.stdout.write(delta)
            sys.stdout.flush()
        sys.stdout.write("\n")
        return 0
    toks, text, reason = gen.generate(ids, params)
    dt = time.perf_counter() - t0
    result = {"name": b.name, "prompt_tokens": len(ids), "token_ids": toks, "text": text,
              "finish_reason": reason, "seconds": dt,
              "tokens_per_s": len(toks) / dt if dt > 0 else 0.0}  # fmt: skip
    print_json(result)
    return 0


def _load_inputs(items: list[str], specs: Any) -> dict[str, Any]:
    from pathlib import Path

    import numpy as np

    from terrazzo.errors import TerrazzoError

    known = {s.name: s for s in specs}
    out = {}
    for item in items:
        name, sep, file = item.partition("=")
        if not sep or not name or not file:
            raise TerrazzoError(f"--input {item!r}: expected NAME=FILE.npy")
        if name not in known:
            raise TerrazzoError(
                f"--input {name!r}: the model has no such input; inputs: {', '.join(known)}"
            )
        p = Path(file)
        if not p.is_file():
            raise TerrazzoError(f"--input {name}: file {file!r} does not exist")
        try:
            arr = np.load(p, allow_pickle=False)
        except ValueError as e:
            raise TerrazzoError(f"--input {name}: {file!r} is not a .npy array ({e})") from e
        spec = known[name]
        bad = spec.shape_error(arr.shape)
        if bad:
            raise TerrazzoError(f"--input {name}: {bad}")
        out[name] = arr.astype(spec.dtype, copy=False)
    return out


def _concrete_specs(bundle: Any, shape_args: list[str], given: dict[str, Any]) -> list[Any]:
    """The bundle's input specs with symbolic dimensions fixed: by ``--shape``, by the sizes
    of ``--input`` arrays, else at the shape the bundle was planned at."""
    from terrazzo.errors import TerrazzoError
    from terrazzo.ir.shapes import parse_shape_args

    declared = parse_shape_args(shape_args, "--shape")
    known = {s.name: s for s in bundle.inputs}
    sizes: dict[str, int] = dict((bundle.manifest.get("plan") or {}).get("plan_shape") or {})
    bound: dict[str, int] = {}
    arrays = {n: tuple(a.shape) for n, a in given.items()}
    for name, dims in declared.items():
        if name not in known:
            raise TerrazzoError(
                f"--shape {name!r}: the model has no such input; inputs: {', '.join(known)}"
            )
        if any(isinstance(d, tuple) for d in dims):
            raise TerrazzoError(f"--shape {name}: give sizes, not ranges, to run")
        bad = known[name].shape_error(dims)  # type: ignore[arg-type]
        if bad:
            raise TerrazzoError(f"--shape {name}: {bad}")
        arrays[name] = tuple(int(d) for d in dims)  # type: ignore[arg-type]
    for name, shape in arrays.items():
        spec = known[name]
        for sym, d in zip(spec.dims, shape, strict=False):
            if sym.isidentifier():
                bound[sym] = int(d)
    sizes.update(bound)
    out = []
    for s in bundle.inputs:
        if s.name in arrays:
            from terrazzo.ir import TensorSpec

            out.append(TensorSpec(s.name, s.dtype, arrays[s.name]))
        elif s.is_dynamic:
            syms = [d for d in s.dims if d]
            fallback = {k: lo for k, (lo, _) in zip(s.dims, s.bounds, strict=True) if k}
            out.append(s.with_sizes({**fallback, **sizes} if syms else sizes))
        else:
            out.append(s)
    return out


def _agent_runner(args: argparse.Namespace, trust: Any) -> tuple[Any, list[dict[str, Any]]]:
    """An agent bundle runs its whole worker graph in this process (tools, LLM phases, models)."""
    from terrazzo.runtime.agent_plan import LocalAgent, agent_serving_plan

    plan = agent_serving_plan(args.bundle, trust_key=trust)
    local = LocalAgent(plan)
    names = [t.name for t in plan.outputs]

    def run_once(feeds: dict[str, Any]) -> dict[str, Any]:
        env = local(feeds)
        return {n: env[n] for n in names}

    stages = [
        {"index": s.index, "device": s.device, "ran_on": "cpu", "note": s.fallback_reason}
        for s in plan.stages
    ]
    return run_once, stages


def run(args: argparse.Namespace) -> int:
    import logging
    import time

    import numpy as np

    from terrazzo.bundle import open_bundle, random_inputs
    from terrazzo.commands._common import print_json, warn_unverified

    # The notes of stages running off their planned device are printed below, not logged twice.
    logging.getLogger("terrazzo.bundle").setLevel(logging.ERROR)
    with open_bundle(args.bundle, args.trust, allow_unsigned=args.allow_unsigned) as b:
        warn_unverified("run", args.bundle, b.signed, b.signature_verified)
        if (b.plan_json or {}).get("llm") or args.prompt is not None:
            return _run_llm(args, b)
        given = _load_inputs(args.input, b.inputs)
        random_names = [s.name for s in b.inputs if s.name not in given]
        specs = _concrete_specs(b, args.shape, given)
        inputs = {
            **random_inputs(tuple(s for s in specs if s.name in random_names), args.seed),
            **given,
        }
        if b.plan_json and "agent" in b.plan_json:
            run_once, stages = _agent_runner(args, b.worker_trust())
        else:
            runners = b.load_stages()

            def run_once(feeds: dict[str, Any]) -> dict[str, Any]:
                return dict(b.run(feeds, runners))

            stages = [
                {"index": r.index, "device": r.device, "ran_on": r.ran_on, "note": r.note}
                for r in runners
            ]
        outputs = run_once(inputs)
        result: dict[str, Any] = {
            "name": b.name,
            "random_inputs": random_names,
            "stages": stages,
            "outputs": {
                k: {
                    "shape": list(v.shape),
                    "dtype": str(v.dtype),
                    "mean": float(np.mean(v)) if v.size else 0.0,
                    "min": float(np.min(v)) if v.size else 0.0,
                    "max": float(np.max(v)) if v.size else 0.0,
                }  # fmt: skip
                for k, v in outputs.items()
            },
        }
        if args.benchmark > 0:
            for _ in range(max(0, args.warmup)):
                run_once(inputs)
            times = []
            for _ in range(args.benchmark):
                t0 = time.perf_counter()
                run_once(inputs)
                times.append((time.perf_counter() - t0) * 1e3)
            result["runs"] = args.benchmark
            result["latency_ms_p50"] = float(np.percentile(times, 50))
            result["latency_ms_p90"] = float(np.percentile(times, 90))
            result["latency_ms_min"] = float(min(times))
        if args.output:
            np.savez(args.output, **outputs)
            result["output_file"] = args.output
    if args.json:
        print_json(result)
        return 0
    for s in result["stages"]:
        print(
            f"stage {s['index']} ({s['device']}) on {s['ran_on']}"
            + (f"  — {s['note']}" if s["note"] else "")
        )
    if random_names:
        print(f"random inputs: {', '.join(random_names)}")
    for k, v in result["outputs"].items():
        print(
            f"output {k}: {v['dtype']}{v['shape']} mean {v['mean']:.6g} min {v['min']:.6g} max {v['max']:.6g}"
        )
    if args.benchmark > 0:
        print(f"latency over {args.benchmark} runs: p50 {result['latency_ms_p50']:.3f} ms, "
              f"p90 {result['latency_ms_p90']:.3f} ms, min {result['latency_ms_min']:.3f} ms")  # fmt: skip
    if args.output:
        print(f"outputs written to {args.output}")
    return 0
