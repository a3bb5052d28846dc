"""`terrazzo worker`: serve one stage of a bundle on a fixed port, for a gateway elsewhere.

What a Kubernetes stage pod runs (``terrazzo deploy k8s``); the gateway reaches it with
``terrazzo serve BUNDLE --worker STAGE=HOST:PORT``. Both read the shared internal token from
``$TERRAZZO_INTERNAL_TOKEN`` (a Secret), never from argv.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
from typing import Any

from terrazzo.errors import ServingError

TOKEN_ENV = "TERRAZZO_INTERNAL_TOKEN"


def internal_token() -> str:
    """The gateway↔worker token from ``$TERRAZZO_INTERNAL_TOKEN``.

    Raises:
        ServingError: unset or shorter than 16 characters.
    """
    token = os.environ.get(TOKEN_ENV, "")
    if len(token) < 16:
        raise ServingError(
            f"${TOKEN_ENV} must hold the internal token shared by the gateway and its workers "
            f"(at least 16 characters; {'unset' if not token else 'too short'})"
        )
    return token


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "worker",
        help="serve one stage of a .tzb bundle on a fixed port (for `serve --worker`, Kubernetes)",
        description="Verify the bundle, load one stage and serve it to a gateway started with "
        "`terrazzo serve BUNDLE --worker STAGE=HOST:PORT`. The internal token comes from "
        f"${TOKEN_ENV}. Stops on SIGTERM/Ctrl-C after finishing in-flight calls.",
    )
    p.add_argument("bundle", help="path of the .tzb bundle")
    p.add_argument("--stage", type=int, required=True, help="index of the stage to serve")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=9000, help="port to listen on (default 9000)")
    p.add_argument("--max-message-mib", type=int, default=256, help="max gRPC message size, MiB")
    from terrazzo.commands._batching import add_batching_arguments
    from terrazzo.commands._common import add_trust_arguments

    add_batching_arguments(p)

    add_trust_arguments(
        p,
        "serve a bundle that is unsigned or whose signature no trusted key verifies: its native "
        "code runs unverified (prints a warning)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from terrazzo.runtime import ServingPlan
    from terrazzo.runtime.launcher import WorkerOptions, worker_config
    from terrazzo.runtime.worker import WorkerServer

    token = internal_token()
    from terrazzo.bundle import check_bundle
    from terrazzo.commands._common import warn_unverified

    # Signature and every hash before any stage code loads (see `terrazzo serve`).
    checked = check_bundle(args.bundle, args.trust, allow_unsigned=args.allow_unsigned)
    warn_unverified("worker", args.bundle, checked.signed, checked.signer is not None)
    plan = ServingPlan.from_bundle(
        args.bundle, trust_key=args.trust, allow_unsigned=args.allow_unsigned
    )
    stages = {s.index: s for s in plan.stages}
    if args.stage not in stages:
        raise ServingError(
            f"--stage {args.stage}: the bundle has stages {', '.join(map(str, sorted(stages)))}"
        )
    from terrazzo.commands._batching import batching_from_args

    batching = batching_from_args(args)  # a bad value: one line, before the stage loads
    opts = WorkerOptions(
        token=token,
        max_message_bytes=args.max_message_mib << 20,
        batching={"*": batching.to_json()} if batching.enabled else None,
    )
    config = dict(worker_config(stages[args.stage], opts, args.host), port=args.port)
    try:
        server = WorkerServer(config)
    except RuntimeError as e:
        raise ServingError(str(e)) from None
    port = server.start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    print(
        f"worker: model {plan.model_name!r} stage {args.stage} "
        f"({stages[args.stage].device}) serving on {args.host}:{port}",
        flush=True,
    )
    done.wait()
    server.stop(5.0)
    return 0
