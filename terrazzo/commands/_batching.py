"""CLI flags of dynamic batching shared by ``terrazzo serve`` and ``terrazzo worker`` (Triton's
``max_batch_size`` + ``dynamic_batching`` model config as flags; see terrazzo.runtime.batcher)."""

from __future__ import annotations

import argparse
from typing import Any


def add_batching_arguments(p: Any, queue_only: bool = False) -> None:
    """Add the batching flags; ``queue_only``: only the priority/queue-policy ones (``serve``
    already declares --max-batch-size, --max-queue-delay-us and --preferred-batch-size)."""
    if not queue_only:
        p.add_argument(
            "--max-batch-size",
            type=int,
            default=0,
            help="merge queued requests into executions of up to N rows when the stage's "
            "dimension 0 is a symbolic batch dimension (default 0: off, as in Triton)",
        )
        p.add_argument(
            "--max-queue-delay-us",
            type=int,
            default=0,
            help="with --max-batch-size: how long a request may wait for a fuller batch, us",
        )
        p.add_argument(
            "--preferred-batch-size",
            type=int,
            action="append",
            default=[],
            metavar="K",
            help="with --max-batch-size: execute at once when K rows can be merged (repeatable)",
        )
    p.add_argument(
        "--priority-levels",
        type=int,
        default=0,
        help="with --max-batch-size: request priority levels (1 highest; a request's "
        "'priority' parameter picks one; default 0: one queue)",
    )
    p.add_argument(
        "--default-queue-timeout-us",
        type=int,
        default=0,
        help="with --max-batch-size: longest wait in the batch queue before REJECT, us "
        "(a request's 'timeout' parameter overrides it; default 0: no limit)",
    )


def batching_from_args(args: argparse.Namespace) -> Any:
    """The ``BatchingOptions`` the flags ask for; a bad value raises ServingError (one line)."""
    from terrazzo.runtime import BatchingOptions

    return BatchingOptions(
        max_batch_size=args.max_batch_size,
        preferred_batch_sizes=tuple(args.preferred_batch_size),
        max_queue_delay_us=args.max_queue_delay_us,
        priority_levels=getattr(args, "priority_levels", 0),
        default_priority_level=0,
        default_queue_timeout_us=getattr(args, "default_queue_timeout_us", 0),
    )
