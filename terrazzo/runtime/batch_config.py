"""Runtime: dynamic batching as Triton's model configuration shows it (ModelConfig, config.json) and as the gateway forwards it.

Three things a Triton user expects around ``dynamic_batching`` live here, next to each other so
the JSON a repository reads and the ModelConfig the server reports cannot drift apart:

* ``batching_from_config``: the Triton-style JSON of a model's ``config.json``
  (``max_batch_size`` and ``dynamic_batching`` with ``preferred_batch_size``,
  ``max_queue_delay_microseconds``, ``priority_levels``, ``default_priority_level`` and
  ``default_queue_policy`` {``timeout_action``, ``default_timeout_microseconds``}) as
  ``BatchingOptions``; a malformed field raises ``ConfigError`` naming it.
* ``batched_model_config``: the ModelConfig of a plan with the batching it is served with.
  ``max_batch_size`` is reported only where batching can really happen (every model input and
  output has a symbolic dimension 0, which the stage workers check again per stage), capped by
  the batch range the bundle was compiled for; then dims leave the batch dimension out, as
  Triton's do. Per-stage settings that differ from the
  model's go into ``parameters`` (``stage<k>.max_batch_size``).
* ``forwarded_parameters``: the request parameters a stage worker's batcher obeys
  (``priority``; ``timeout`` in µs, Triton's queue-timeout override), copied from the client's
  request onto every stage call.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from terrazzo.errors import ServingError
from terrazzo.runtime.batcher import BatchingOptions

__all__ = [
    "BATCHING_FIELDS",
    "batched_model_config",
    "batching_from_config",
    "forwarded_parameters",
    "model_batching",
]

# Top-level config.json fields that describe batching (a repository accepts them beside
# ``name`` and ``version_policy``).
BATCHING_FIELDS = ("max_batch_size", "dynamic_batching")
_DYNAMIC_FIELDS = {
    "preferred_batch_size",
    "max_queue_delay_microseconds",
    "priority_levels",
    "default_priority_level",
    "default_queue_policy",
}
_POLICY_FIELDS = {"timeout_action", "default_timeout_microseconds"}
FORWARDED = ("priority", "timeout")


def _int(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ServingError(f"{field} must be an integer >= 0, got {value!r}")
    try:
        n = int(value)  # Triton's JSON writes uint64 fields as strings
    except ValueError:
        raise ServingError(f"{field} must be an integer >= 0, got {value!r}") from None
    if n < 0:
        raise ServingError(f"{field} must be an integer >= 0, got {value!r}")
    return n


def batching_from_config(obj: Mapping[str, Any], where: str) -> BatchingOptions | None:
    """The batching a Triton-style JSON model config asks for (None when it names none).

    Raises:
        ServingError: a malformed field; the message starts with ``where`` and names it.
    """
    from terrazzo.runtime.repository import ConfigError

    if not any(k in obj for k in BATCHING_FIELDS):
        return None
    try:
        mbs = _int(obj.get("max_batch_size", 0), f"{where}: max_batch_size")
        dyn = obj.get("dynamic_batching", {})
        if not isinstance(dyn, Mapping):
            raise ServingError(f"{where}: dynamic_batching must be an object")
        unknown = sorted(set(dyn) - _DYNAMIC_FIELDS)
        if unknown:
            raise ServingError(f"{where}: dynamic_batching has unknown field {unknown[0]!r}")
        if dyn and mbs == 0:
            raise ServingError(f"{where}: dynamic_batching needs max_batch_size > 0")
        preferred = dyn.get("preferred_batch_size", [])
        if not isinstance(preferred, list):
            raise ServingError(f"{where}: dynamic_batching.preferred_batch_size must be a list")
        policy = dyn.get("default_queue_policy", {})
        if not isinstance(policy, Mapping):
            raise ServingError(f"{where}: dynamic_batching.default_queue_policy must be an object")
        unknown = sorted(set(policy) - _POLICY_FIELDS)
        if unknown:
            raise ServingError(
                f"{where}: dynamic_batching.default_queue_policy has unknown field {unknown[0]!r}"
            )
        f = f"{where}: dynamic_batching"
        return BatchingOptions(
            max_batch_size=mbs,
            preferred_batch_sizes=tuple(
                _int(s, f"{f}.preferred_batch_size[{i}]") for i, s in enumerate(preferred)
            ),
            max_queue_delay_us=_int(
                dyn.get("max_queue_delay_microseconds", 0), f"{f}.max_queue_delay_microseconds"
            ),
            priority_levels=_int(dyn.get("priority_levels", 0), f"{f}.priority_levels"),
            default_priority_level=_int(
                dyn.get("default_priority_level", 0), f"{f}.default_priority_level"
            ),
            default_queue_timeout_us=_int(
                policy.get("default_timeout_microseconds", 0),
                f"{f}.default_queue_policy.default_timeout_microseconds",
            ),
            timeout_action=str(policy.get("timeout_action", "REJECT")),
        )
    except ServingError as e:
        msg = str(e)
        raise ConfigError(msg if msg.startswith(where) else f"{where}: {msg}") from None


def model_batching(
    batching: BatchingOptions | Mapping[int, BatchingOptions] | None,
) -> tuple[BatchingOptions | None, dict[int, BatchingOptions]]:
    """(the model-level options, per-stage options) of ``ServeOptions.batching``.

    A single ``BatchingOptions`` applies to every stage; with a per-stage mapping the model
    reports its first stage's (the one that receives the client's batches).
    """
    if batching is None:
        return None, {}
    if isinstance(batching, BatchingOptions):
        return (batching if batching.enabled else None), {}
    stages = {int(k): v for k, v in batching.items()}
    first = stages.get(min(stages)) if stages else None
    return (first if first is not None and first.enabled else None), stages


def _batchable(plan: Any) -> bool:
    tensors = list(plan.inputs) + list(plan.outputs)
    return bool(tensors) and all(len(t.shape) >= 1 and t.shape[0] == -1 for t in tensors)


def batched_model_config(
    plan: Any,
    batching: BatchingOptions | Mapping[int, BatchingOptions] | None,
    active: Mapping[int, bool] | None = None,
) -> Any:
    """Triton ModelConfig of ``plan`` with the dynamic batching it is served with.

    ``active`` (stage index -> whether its worker really batches, as the workers report it):
    when the first stage's worker turned batching off (its signature proves no batch
    dimension), the model reports ``max_batch_size`` 0 and says why in ``parameters``.
    """
    from terrazzo.runtime.gateway import model_config
    from terrazzo.runtime.protos import model_config_pb2 as mc

    model, stages = model_batching(batching)
    first = plan.stages[0].index if plan.stages else 0
    why = ""
    if model is not None and not _batchable(plan):
        why = "off: not every input and output has a symbolic dimension 0"
    elif model is not None and active is not None and not active.get(first, True):
        why = f"off: stage {first}'s signature proves no batch dimension"
    if model is None or why:
        cfg = model_config(plan)
        if why:
            cfg.parameters["batching"].string_value = why
        return cfg
    compiled = [t.bounds[0][1] for t in plan.inputs if t.bounds and t.bounds[0][1] > 0]
    mbs = min([model.max_batch_size, *compiled])  # never more rows than the build accepts
    cfg = model_config(plan, max_batch_size=mbs)
    if compiled and min(compiled) < model.max_batch_size:
        cfg.parameters["max_batch_size_configured"].string_value = str(model.max_batch_size)
    dyn = cfg.dynamic_batching
    dyn.preferred_batch_size.extend(s for s in model.preferred_batch_sizes if s <= mbs)
    dyn.max_queue_delay_microseconds = model.max_queue_delay_us
    dyn.priority_levels = model.priority_levels
    dyn.default_priority_level = model.default_priority_level
    dyn.default_queue_policy.timeout_action = mc.ModelQueuePolicy.TimeoutAction.Value(  # type: ignore[attr-defined]
        model.timeout_action
    )
    dyn.default_queue_policy.default_timeout_microseconds = model.default_queue_timeout_us
    dyn.default_queue_policy.allow_timeout_override = True
    for index, opts in sorted(stages.items()):
        if opts != model:
            cfg.parameters[f"stage{index}.max_batch_size"].string_value = str(opts.max_batch_size)
    return cfg


def forwarded_parameters(request: Any) -> dict[str, int]:
    """``priority`` and ``timeout`` (µs) of a ModelInferRequest, for the stage workers' batchers."""
    out: dict[str, int] = {}
    for key in FORWARDED:
        p = request.parameters.get(key)
        if p is None:
            continue
        kind = p.WhichOneof("parameter_choice")
        if kind in ("int64_param", "uint64_param"):
            value = int(getattr(p, kind))
            if value > 0:
                out[key] = value
    return out
