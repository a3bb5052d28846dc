"""``terrazzo serve``: serve a .tzb bundle (or a model repository directory of them) over KServe v2
gRPC with one worker process per stage replica."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import signal
import sys
import threading
import time
from typing import Any

from terrazzo.errors import ServingError


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve a .tzb bundle over KServe v2 gRPC (stock tritonclient works)",
        description="Start the gateway and one worker per stage replica (local processes on "
        "loopback, or Ray actors with --ray) and serve until Ctrl-C / SIGTERM, which drains "
        "in-flight requests.",
    )
    p.add_argument(
        "bundle",
        help="path of the .tzb bundle (signature and hashes verified before any worker loads it), "
        "or a model repository directory: DIR/<model>/<version>/model.tzb (or DIR/<model>.tzb)",
    )
    p.add_argument(
        "--model-control-mode",
        choices=("none", "explicit", "poll"),
        default="none",
        help="repository only: none (load all at start), explicit (--load-model and the "
        "load/unload RPCs), poll (rescan every --repository-poll-secs)",
    )
    p.add_argument(
        "--load-model",
        action="append",
        default=[],
        metavar="NAME",
        help="repository, explicit mode: load this model at start (repeatable; '*': all)",
    )
    p.add_argument(
        "--repository-poll-secs",
        type=float,
        default=15.0,
        help="repository, poll mode: seconds between rescans (default 15)",
    )
    p.add_argument(
        "--version-policy",
        default="latest:1",
        metavar="latest[:N]|all|specific:V1,V2",
        help="repository: versions served of a model without its own config.json "
        "(default latest:1)",
    )
    p.add_argument("--port", type=int, default=8001, help="gRPC port of the gateway (default 8001)")
    # --- adapt: the self-optimising runtime (terrazzo.runtime.adapt, docs/adaptive.md)
    p.add_argument(
        "--adapt",
        default=None,
        metavar="POLICY.yaml",
        help="re-plan placement and replicas while serving, under this policy (SLA, budget, "
        "interval, hysteresis, max changes/hour, fleet); decisions go to its decision_log",
    )
    p.add_argument(
        "--http-port",
        type=int,
        default=None,
        help="KServe v2 HTTP/REST port (default 8000 as Triton, any free port when --port is 0; "
        "-1: no HTTP endpoint)",
    )
    p.add_argument(
        "--metrics-port", type=int, default=8002, help="Prometheus /metrics port (default 8002)"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument(
        "--replicas", type=int, default=None, help="replicas per stage (default: the plan's)"
    )
    p.add_argument(
        "--token", default=None, help="require 'authorization: Bearer TOKEN' on inference RPCs"
    )
    p.add_argument("--tls-cert", default=None, help="PEM certificate chain: serve TLS")
    p.add_argument("--tls-key", default=None, help="PEM private key for --tls-cert")
    p.add_argument(
        "--tls-ca", default=None, help="PEM CA: require client certificates it signed (mTLS)"
    )
    p.add_argument(
        "--ray",
        default=None,
        metavar="HOST:PORT|local",
        help="place workers as Ray actors on the cluster at HOST:PORT (or ray://HOST:PORT; "
        "each actor declares 1 CPU, its GPU and memory, and devclass_<name>), or 'local': "
        "start a cluster here and stop it on exit",
    )
    p.add_argument(
        "--timeout", type=float, default=30.0, help="server-side default request timeout, s"
    )
    p.add_argument("--max-message-mib", type=int, default=256, help="max gRPC message size, MiB")
    p.add_argument(
        "--max-queue",
        type=int,
        default=256,
        help="requests in flight per model before RESOURCE_EXHAUSTED (default 256)",
    )
    p.add_argument(
        "--max-inflight-mib",
        type=int,
        default=1024,
        help="request bytes in flight per model before RESOURCE_EXHAUSTED, MiB (default 1024)",
    )
    p.add_argument(
        "--max-rpcs",
        type=int,
        default=256,
        help="concurrent gRPC calls incl. open streams; beyond: RESOURCE_EXHAUSTED (default 256)",
    )
    p.add_argument(
        "--stage-timeout",
        type=float,
        default=None,
        help="server-side deadline of one stage call, s (default: 10x the bundle's SLA "
        "latency within [1, 30] s; 30 s without an SLA)",
    )
    p.add_argument(
        "--max-restarts",
        type=int,
        default=5,
        help="failed worker restarts in a row before giving up on it (default 5)",
    )
    p.add_argument(
        "--internal-tls",
        action="store_true",
        help="mTLS between gateway and local workers (always on with --ray)",
    )
    from terrazzo.commands._common import add_trust_arguments

    add_trust_arguments(
        p,
        "serve a bundle that is unsigned or whose signature no trusted key verifies: its native "
        "code runs unverified in every worker (prints a warning)",
    )
    p.add_argument(
        "--worker",
        action="append",
        default=[],
        metavar="STAGE=HOST:PORT",
        help="use a worker started elsewhere (`terrazzo worker`, e.g. a Kubernetes pod) for one "
        "replica of STAGE instead of starting local processes; repeat per replica. The shared "
        "internal token comes from $TERRAZZO_INTERNAL_TOKEN",
    )
    # --- dynamic batching (terrazzo.runtime.batcher) ---
    p.add_argument(
        "--max-batch-size",
        type=int,
        default=0,
        help="merge queued requests into executions of up to N rows on every stage whose "
        "dimension 0 is a symbolic batch dimension (default 0: off, as in Triton; turn it on "
        "only for models whose batch rows are independent)",
    )
    p.add_argument(
        "--max-queue-delay-us",
        type=int,
        default=0,
        help="with --max-batch-size: how long a request may wait for a fuller batch, us "
        "(default 0: run what is queued as soon as the stage is free)",
    )
    p.add_argument(
        "--preferred-batch-size",
        type=int,
        action="append",
        default=[],
        metavar="K",
        help="with --max-batch-size: execute at once when a batch of K rows can be formed "
        "(repeatable)",
    )
    from terrazzo.commands._batching import add_batching_arguments

    add_batching_arguments(p, queue_only=True)
    p.add_argument(
        "--stage-in-gateway",
        action="store_true",
        help="single-stage models: run the stage inside the gateway process (no worker hop; "
        "no worker isolation or restarts)",
    )
    # --- hfllm: OpenAI-compatible HTTP front for LLM bundles (terrazzo.runtime.openai_front)
    p.add_argument(
        "--openai-port", type=int, default=None, metavar="N",
        help="LLM bundles: serve /v1/completions and /v1/chat/completions on this HTTP port",
    )  # fmt: skip
    p.add_argument(
        "--generate-grpc-port", type=int, default=None, metavar="M",
        help="with --openai-port: KServe v2 generate over gRPC (decoupled stream, one response "
        "per token) on this port",
    )  # fmt: skip
    p.add_argument(
        "--prefill-workers", type=int, default=1, metavar="N",
        help="with --openai-port: N prefill worker processes (round robin) feeding the one "
        "continuous-batching decode worker (default 1)",
    )  # fmt: skip
    # --- end hfllm
    p.set_defaults(func=run)


def _http_port(args: argparse.Namespace) -> int | None:
    """--http-port, defaulting to Triton's 8000 (a free port when the gRPC port is 0); -1: off."""
    if args.http_port is None:
        return 0 if args.port == 0 else 8000
    return None if args.http_port < 0 else args.http_port


def _describe(server: Any) -> str:
    lines = []
    for row in server.workers():
        where = f"{row['where']} at {row['address']}"
        target = str(row["target"])
        note = ""
        if row["fallback_reason"]:
            note = f"  [fallback: {row['fallback_reason']}]"
        elif not row["device"].lower().startswith("cpu") and not shutil.which("nvidia-smi"):
            note = f"  [planned device {row['device']} absent here: running the host CPU build]"
        lines.append(
            f"  {row['worker']:<12} device {row['device']:<14} target {target:<10} {where}{note}"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    n_prefill = getattr(args, "prefill_workers", 1)  # hfllm: checked before anything starts
    if n_prefill < 1 or (n_prefill != 1 and getattr(args, "openai_port", None) is None):
        raise ServingError(f"--prefill-workers {n_prefill}: needs N >= 1 and --openai-port (LLM "
                           "bundles)")  # fmt: skip
    if getattr(args, "openai_port", None) is not None:  # hfllm: LLM bundles over OpenAI HTTP
        from terrazzo.runtime.openai_front import run_until_signal

        return run_until_signal(
            args.bundle, args.openai_port, args.host, args.trust, args.allow_unsigned,
            getattr(args, "generate_grpc_port", None),
            prefill_workers=getattr(args, "prefill_workers", 1),
        )  # fmt: skip
    from terrazzo.runtime import TLSOptions, serve

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    access = logging.getLogger("terrazzo.runtime.access")
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    access.propagate = False
    runtime_log = logging.getLogger("terrazzo.runtime")  # restarts, give-ups, swept temp dirs
    runtime_log.addHandler(handler)
    runtime_log.setLevel(logging.WARNING)
    runtime_log.propagate = False

    tls = None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            raise ServingError("--tls-cert and --tls-key go together")
        tls = TLSOptions.from_files(args.tls_cert, args.tls_key, args.tls_ca)
    elif args.tls_ca:
        raise ServingError("--tls-ca needs --tls-cert and --tls-key")
    from pathlib import Path

    from terrazzo.bundle import check_bundle
    from terrazzo.commands._common import warn_unverified
    from terrazzo.runtime.server import ServeOptions

    adapt_policy = None
    if getattr(args, "adapt", None):  # --- adapt: a bad policy file is refused before any start
        from terrazzo.runtime.adapt import load_policy

        adapt_policy = load_policy(args.adapt)
    if Path(args.bundle).is_dir():
        if adapt_policy is not None:
            raise ServingError("--adapt serves one bundle; it does not apply to a repository")
        return _run_repository(args, tls)

    limits = {
        "max_queue": args.max_queue,
        "max_inflight_bytes": args.max_inflight_mib << 20,
        "max_rpcs": args.max_rpcs,
        "stage_timeout_s": args.stage_timeout,
        "max_restarts": args.max_restarts,
    }
    ServeOptions(**limits)  # a bad limit: one line, before the bundle is even opened
    from terrazzo.commands._batching import batching_from_args

    batching = batching_from_args(args)  # dynamic batching; a bad value: one line, here

    # Signature and every hash, before anything is extracted or started; the workers then
    # trust exactly the key that verified here (or run unverified with --allow-unsigned).
    checked = check_bundle(args.bundle, args.trust, allow_unsigned=args.allow_unsigned)
    warn_unverified("serve", args.bundle, checked.signed, checked.signer is not None)
    if (checked.manifest.get("plan") or {}).get("kind") == "llm":  # hfllm
        raise ServingError(
            f"{args.bundle} is an LLM bundle (from a Hugging Face directory): serve it with "
            "--openai-port N"
        )
    trust_key = (
        {"keys": [checked.signer.raw.hex()]}
        if checked.signer is not None
        else {"keys": [], "allow_unsigned": True}
    )
    static: dict[str, Any] = {}
    if args.worker:
        from terrazzo.commands.worker import internal_token
        from terrazzo.runtime.static_launcher import parse_worker_flags

        if args.ray:
            raise ServingError("--worker and --ray exclude each other")
        static = {
            "static_workers": parse_worker_flags(args.worker),
            "worker_token": internal_token(),
        }
    t0 = time.perf_counter()
    server = serve(
        args.bundle,
        args.port,
        metrics_port=args.metrics_port,
        http_port=_http_port(args),
        replicas=args.replicas,
        token=args.token,
        tls=tls,
        ray_address=args.ray,
        trust_key=trust_key,
        allow_unsigned=checked.signer is None,
        host=args.host,
        default_timeout_s=args.timeout,
        max_message_bytes=args.max_message_mib << 20,
        max_queue=args.max_queue,
        max_inflight_bytes=args.max_inflight_mib << 20,
        max_rpcs=args.max_rpcs,
        stage_timeout_s=args.stage_timeout,
        max_restarts=args.max_restarts,
        internal_tls=args.internal_tls,
        batching=batching,  # dynamic batching
        stage_in_gateway=args.stage_in_gateway,
        **static,
    )
    ready_s = time.perf_counter() - t0
    if adapt_policy is not None:  # --- adapt
        from terrazzo.runtime.adapt.serve import attach

        try:
            attach(server, adapt_policy)
        except BaseException:
            server.stop(drain_timeout_s=0)
            raise
        print(f"adapting under {args.adapt} (mode {adapt_policy.mode})")
    print(
        f"serving model {server.plan.model_name!r} on {args.host}:{server.port} "
        f"({'TLS' if tls else 'plaintext'}{', mTLS' if tls and tls.client_ca else ''}"
        f"{', token auth' if args.token else ''}); ready in {ready_s:.1f} s"
    )
    if server.http_port is not None:
        print(f"KServe v2 HTTP on {'https' if tls else 'http'}://{args.host}:{server.http_port}/v2")
    if server.metrics_port is not None:
        print(f"metrics on http://{args.host}:{server.metrics_port}/metrics")
    print("workers:\n" + _describe(server))

    stopping = threading.Event()

    def _on_signal(signum: int, _frame: Any) -> None:
        if not stopping.is_set():
            stopping.set()
            print(
                f"received {signal.Signals(signum).name}: draining {server.gateway.inflight()} "
                "in-flight requests",
                flush=True,
            )
            threading.Thread(target=server.stop, daemon=True).start()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    # handlers first: a supervisor may send SIGTERM as soon as it reads the ready line
    print("ready (Ctrl-C or SIGTERM drains in-flight requests and stops)", flush=True)
    server.wait()
    server.stop()  # waits for the draining stop started by the signal handler
    print(json.dumps({"event": "stopped", "model": server.plan.model_name}), flush=True)
    return 0


def _run_repository(args: argparse.Namespace, tls: Any) -> int:
    """Serve every bundle of a model repository directory behind one gRPC endpoint."""
    from terrazzo.runtime.repository import VersionPolicy, serve_repository
    from terrazzo.runtime.server import ServeOptions

    if args.worker:
        raise ServingError("--worker serves one bundle; it does not apply to a repository")
    policy = VersionPolicy.parse_cli(args.version_policy)
    if args.load_model and args.model_control_mode != "explicit":
        raise ServingError("--load-model needs --model-control-mode explicit")
    opts = ServeOptions(
        host=args.host,
        port=args.port,
        metrics_port=args.metrics_port,
        http_port=_http_port(args),
        replicas=args.replicas,
        token=args.token,
        tls=tls,
        ray_address=args.ray,
        default_timeout_s=args.timeout,
        max_message_bytes=args.max_message_mib << 20,
        max_queue=args.max_queue,
        max_inflight_bytes=args.max_inflight_mib << 20,
        max_rpcs=args.max_rpcs,
        stage_timeout_s=args.stage_timeout,
        max_restarts=args.max_restarts,
        internal_tls=args.internal_tls or bool(args.ray),
    )
    from terrazzo.commands._batching import batching_from_args

    batching = batching_from_args(args)  # the default of models without their own config.json
    t0 = time.perf_counter()
    repo = serve_repository(
        args.bundle,
        opts,
        control_mode=args.model_control_mode,
        load_models=tuple(args.load_model),
        poll_secs=args.repository_poll_secs,
        default_policy=policy,
        trust_key=args.trust,
        allow_unsigned=args.allow_unsigned,
        model_options={
            **({"batching": batching} if batching.enabled else {}),
            **({"stage_in_gateway": True} if args.stage_in_gateway else {}),
        },
    )
    loaded = repo.loaded()
    print(
        f"serving repository {args.bundle} ({args.model_control_mode} model control) on "
        f"{args.host}:{repo.port}: "
        + (", ".join(f"{n} v{','.join(map(str, v))}" for n, v in loaded.items()) or "no model")
        + f"; ready in {time.perf_counter() - t0:.1f} s"
    )
    if repo.http_port is not None:
        print(f"KServe v2 HTTP on {'https' if tls else 'http'}://{args.host}:{repo.http_port}/v2")
    if repo.metrics_port is not None:
        print(f"metrics on http://{args.host}:{repo.metrics_port}/metrics")
    stopping = threading.Event()

    def _on_signal(signum: int, _frame: Any) -> None:
        if not stopping.is_set():
            stopping.set()
            print(f"received {signal.Signals(signum).name}: draining", flush=True)
            threading.Thread(target=repo.stop, daemon=True).start()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    print("ready (Ctrl-C or SIGTERM drains in-flight requests and stops)", flush=True)
    repo.wait()
    repo.stop()
    print(json.dumps({"event": "stopped", "repository": args.bundle}), flush=True)
    return 0
