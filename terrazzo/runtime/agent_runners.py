"""Runner factories for agent stages (LLM prefill/decode phases, tools, retrieval, memory, glue), built by workers from a ``RunnerSpec``.

Every factory returns a callable ``dict[str, np.ndarray] -> dict[str, np.ndarray]``, so the
stock stage worker serves it unchanged. Roles are passed by value name in the kwargs (which
value is the prompt material, which the loop's ``active`` flag, ...), so one factory serves
every iteration of an unrolled loop.

Loop iterations after the first receive ``active`` (int64 ``[1]``): when it is 0 the stage
passes its previous iteration's value through unchanged (``prev``), so the unrolled DAG
always runs to the end and its last values are those of the last iteration that ran.

Byte-level tokenisation glue (``to_tokens``, ``fit_tokens``, ``build_prompt``) lives here too:
float logits over the vocabulary become their argmax bytes, integers become tokens mod 256.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from terrazzo.errors import ServingError

Runner = Any  # Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]

_EMPTY_F32 = np.zeros((0,), np.float32)


# -- glue --------------------------------------------------------------------------------
def to_tokens(x: np.ndarray, vocab: int = 256) -> np.ndarray:
    """Byte-level tokens (int64, 1-D) of a value: argmax over a trailing vocab axis, else ints mod vocab.

    Raises:
        ServingError: a float value without a trailing vocabulary axis.
    """
    a = np.asarray(x)
    if a.dtype.kind in "OSU":  # text: its UTF-8 bytes
        data = b"\n".join(v if isinstance(v, bytes) else str(v).encode() for v in a.reshape(-1))
        return np.frombuffer(data, np.uint8).astype(np.int64)
    if a.dtype.kind == "f":
        if a.ndim == 0 or a.shape[-1] != vocab:
            raise ServingError(
                f"cannot tokenise a float tensor of shape {list(a.shape)}: expected logits with a "
                f"trailing axis of {vocab}"
            )
        return np.argmax(a, axis=-1).reshape(-1).astype(np.int64)
    return np.mod(a.reshape(-1).astype(np.int64), vocab)


def fit_tokens(tokens: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Right-pad with 0 or truncate ``tokens`` to ``prod(shape)`` and reshape (int64)."""
    n = int(np.prod(shape))
    out = np.zeros(n, np.int64)
    t = np.asarray(tokens, np.int64).reshape(-1)[:n]
    out[: t.shape[0]] = t
    return out.reshape(tuple(shape))


def build_prompt(parts: Sequence[np.ndarray], prompt_len: int, vocab: int = 256) -> np.ndarray:
    """Concatenate the tokens of ``parts``; keep the last ``prompt_len``; never empty (``[0]``)."""
    toks = [to_tokens(p, vocab) for p in parts]
    prompt = np.concatenate(toks) if toks else np.zeros(0, np.int64)
    prompt = prompt[-prompt_len:]
    return prompt if prompt.shape[0] else np.zeros(1, np.int64)


def _active(values: Mapping[str, np.ndarray], active: str | None) -> bool:
    return active is None or bool(np.asarray(values[active]).reshape(-1)[0])


def _open_stage(path: str, index: int, trust_key: Any = None) -> Any:
    from terrazzo.bundle import open_bundle

    if isinstance(trust_key, Mapping) and "hex" in trust_key:
        trust_key = bytes.fromhex(trust_key["hex"])
    return open_bundle(path, trust_key=trust_key).load_stage(int(index))


# -- serving concurrent conversations together ------------------------------------------------
class BatchedStage:
    """A model node served at several compiled batch sizes: calls from concurrent conversations
    merge in a ``DynamicBatcher`` (one execution at a time; whatever queued while the stage was
    busy runs together, no added wait), padded to the smallest compiled size that holds them.

    Args:
        stages: batch size → the stage compiled for it (``1`` is the node's own stage).
        name: for messages.
    """

    def __init__(self, stages: Mapping[int, Any], name: str = "model") -> None:
        from terrazzo.runtime.batcher import BatchDimension, BatchingOptions, DynamicBatcher

        self.stages = dict(sorted(stages.items()))
        self.sizes = tuple(self.stages)
        one = self.stages[self.sizes[0]]
        self.inputs = tuple(s.name for s in one.inputs)
        self.outputs = tuple(s.name for s in one.outputs)
        self.specs = {s.name: s for s in one.inputs}
        top = self.sizes[-1]
        self.batcher = DynamicBatcher(self._run_rows, self.inputs, self.outputs,
                                      BatchingOptions(max_batch_size=top),
                                      BatchDimension("batch", 1, top), name)  # fmt: skip
        self.executions: dict[int, int] = {b: 0 for b in self.sizes}

    def _run_rows(self, values: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = int(np.asarray(values[self.inputs[0]]).shape[0])
        b = next((s for s in self.sizes if s >= rows), self.sizes[-1])
        args = {}
        for name in self.inputs:
            a = np.asarray(values[name])
            if a.shape[0] < b:  # pad with zero rows (valid tokens, silent audio): sliced away
                a = np.concatenate([a, np.zeros((b - a.shape[0], *a.shape[1:]), a.dtype)])
            args[name] = a
        self.executions[b] += 1
        out = self.stages[b](args)
        return {n: np.asarray(out[n])[:rows] for n in self.outputs}

    def __call__(self, values: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.batcher.submit({n: values[n] for n in self.inputs}).outputs

    def close(self) -> None:
        self.batcher.close()


def _batched_stage(
    path: str, index: int, batch_stages: Mapping[str, int] | None, trust_key: Any, name: str
) -> Any:
    """The node's stage, or a :class:`BatchedStage` over it and its batch copies."""
    one = _open_stage(path, index, trust_key)
    if not batch_stages:
        return one
    stages = {1: one}
    stages.update({int(b): _open_stage(path, i, trust_key) for b, i in batch_stages.items()})
    return BatchedStage(stages, name)


def _decode_engine(path: str, batched: Mapping[str, Any], trust_key: Any) -> Any:
    """A continuous-batching engine (``runtime.llm_batch``) over the LLM node's batched paged
    decode phases, stepping in its own thread: every conversation's decode joins it."""
    from terrazzo.runtime.llm_batch import engine_from_llm

    llm = {"config": dict(batched["config"]), "kv": dict(batched["kv"]),
           "stages": {"decode_batch": dict(batched["stages"])}, "eos_token_ids": []}  # fmt: skip
    engine = engine_from_llm(llm, lambda i: _open_stage(path, i, trust_key))
    engine.start()
    return engine


def _engine_tokens(
    engine: Any, state: Mapping[str, np.ndarray], n: int, max_new_tokens: int
) -> Any:
    """Join a prefilled sequence to ``engine`` and yield its greedy tokens as they come."""
    from terrazzo.runtime.llm_batch import Sampling

    sid = next(_SESSIONS)
    logits = np.asarray(state["logits"]).reshape(-1)
    engine.join(sid, state["k_cache"], state["v_cache"], n, logits, [],
                Sampling(max_tokens=int(max_new_tokens), ignore_eos=True))  # fmt: skip
    done = False
    while not done:
        toks, done = engine.poll(sid)
        yield from toks


_SESSIONS = itertools.count(1)  # engine session ids of this process (next() is atomic)


# -- LLM phases ----------------------------------------------------------------------------
def llm_prefill(
    path: str,
    index: int,
    parts: Sequence[str],
    out: Mapping[str, str],
    prompt_len: int,
    vocab: int = 256,
    loop: Mapping[str, Any] | None = None,
    trust_key: Any = None,
) -> Runner:
    """Prefill worker: build the prompt from ``parts`` (glue), run the TVM prefill phase.

    Args:
        path / index: the bundle and its prefill stage (a Relax library with the weights inside).
        parts: value names whose tokens, concatenated, make the prompt.
        out: role → value name for ``logits``, ``k_cache``, ``v_cache``, ``length``, ``prompt``
            and, inside a loop, ``active`` and ``iterations``.
        prompt_len: the static prompt length of the phase (prompts are right-padded to it).
        loop: inside a loop after its first iteration: ``{"feedback": value fed back along the
            back edge, "prev_answer": last iteration's answer, "prev_active": its flag,
            "prev_iterations": its count, "search_below": the condition threshold}``;
            ``{"first": True}`` for the first iteration.

    The loop condition (the paper's "the LLM asks for a search"): the previous answer's first
    token is below ``search_below``. When it fails this stage reports ``active = 0`` and sends
    empty caches, so nothing crosses to the decode worker.
    """
    phase = _open_stage(path, index, trust_key)
    loop = dict(loop or {})

    def run(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        res: dict[str, np.ndarray] = {}
        active, count = True, 1
        material = [values[p] for p in parts]
        if "prev_active" in loop:
            prev_ok = bool(np.asarray(values[loop["prev_active"]]).reshape(-1)[0])
            if "condition" in loop:  # the spec's while: on a value of the previous iteration
                from terrazzo.frontend.agent_flow import evaluate

                asks = evaluate(loop["condition"], values[loop["while_on"]])
            else:
                asks = int(np.asarray(values[loop["prev_answer"]]).reshape(-1)[0]) < int(
                    loop["search_below"]
                )
            active = prev_ok and asks
            prev_count = int(np.asarray(values[loop["prev_iterations"]]).reshape(-1)[0])
            count = prev_count + 1 if active else prev_count
            material.append(values[loop["feedback"]])
        if "active" in out:
            res[out["active"]] = np.array([int(active)], np.int64)
            res[out["iterations"]] = np.array([count], np.int64)
        if not active:
            res.update(
                {
                    out["logits"]: _EMPTY_F32,
                    out["k_cache"]: _EMPTY_F32,
                    out["v_cache"]: _EMPTY_F32,
                    out["length"]: np.zeros(1, np.int64),
                    out["prompt"]: np.zeros(0, np.int64),
                }
            )
            return res
        prompt = build_prompt(material, prompt_len, vocab)
        padded = fit_tokens(prompt, (1, prompt_len))
        n = np.array([prompt.shape[0]], np.int64)
        state = phase({"tokens": padded, "length": n})
        res.update(
            {
                out["logits"]: state["logits"],
                out["k_cache"]: state["k_cache"],
                out["v_cache"]: state["v_cache"],
                out["length"]: n,
                out["prompt"]: prompt,
            }
        )
        return res

    return run


def llm_decode(
    path: str,
    index: int,
    inputs: Mapping[str, str],
    output: str,
    max_new_tokens: int,
    active: str | None = None,
    prev: str | None = None,
    trust_key: Any = None,
    batched: Mapping[str, Any] | None = None,
    batching: bool = True,
) -> Runner:
    """Decode worker: take the prefill's logits and KV cache (they arrived over gRPC) and decode greedily.

    Args:
        inputs: role → value name for ``logits``, ``k_cache``, ``v_cache``, ``length``.
        output: name of the answer (int64 ``[max_new_tokens]`` token ids).
        max_new_tokens: tokens generated (the first from the prefill logits).
        active / prev: the loop flag and the previous iteration's answer (pass-through).
        batched: the node's batched paged decode (``{"stages", "kv", "config"}``, compiled with
            ``batch_sizes``): with ``batching`` every call joins one continuous-batching engine,
            so concurrent conversations share decode steps; otherwise each decodes alone.
    """
    from terrazzo.codegen.llm_phases import decode_loop

    engine = _decode_engine(path, batched, trust_key) if batched and batching else None
    phase: Any = _open_stage(path, index, trust_key) if engine is None else None

    def run(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not _active(values, active):
            return {output: np.asarray(values[str(prev)])}
        state = {k: values[inputs[k]] for k in ("logits", "k_cache", "v_cache")}
        n = int(np.asarray(values[inputs["length"]]).reshape(-1)[0])
        if engine is not None:
            toks = list(_engine_tokens(engine, state, n, int(max_new_tokens)))
            return {output: np.array(toks, np.int64)}
        return {output: decode_loop(phase, state, n, int(max_new_tokens))}

    if engine is not None:
        run.concurrent = True  # type: ignore[attr-defined]  # a worker calls it at once
        run.engine = engine  # type: ignore[attr-defined]
    return run


def llm_decode_stream(
    path: str,
    index: int,
    inputs: Mapping[str, str],
    output: str,
    max_new_tokens: int,
    model_index: int,
    model_input: str,
    model_shape: Sequence[int],
    model_outputs: Sequence[str],
    overlap: bool = True,
    trust_key: Any = None,
    batched: Mapping[str, Any] | None = None,
    model_batch_stages: Mapping[str, int] | None = None,
    batching: bool = True,
) -> Runner:
    """Decode and a streamed token model (TTS) in one stage: each chunk of the answer is voiced while the next is decoded.

    A chunk is the model's input length (``prod(model_shape)`` tokens). With ``overlap`` the
    model runs on a helper thread as soon as a chunk is complete (TVM releases the GIL inside
    its kernels, so decode steps and model chunks run at the same time); without it every chunk
    is voiced after decoding ends — the same work in sequence, for comparison. The model's
    value is the chunks' outputs concatenated along the last axis.

    With ``batching`` and the batched builds (``batched``: the LLM's batched paged decode,
    ``model_batch_stages``: the model's batch copies; see ``llm_decode``) concurrent
    conversations share decode steps in one continuous-batching engine and their chunks merge
    into batched model executions; the tokens still stream chunk by chunk.
    """
    from concurrent.futures import ThreadPoolExecutor

    engine = _decode_engine(path, batched, trust_key) if batched and batching else None
    phase: Any = _open_stage(path, index, trust_key) if engine is None else None
    model = _batched_stage(path, model_index, model_batch_stages if batching else None,
                           trust_key, "streamed model")  # fmt: skip
    shape = tuple(int(d) for d in model_shape)
    chunk = int(np.prod(shape))
    pool = ThreadPoolExecutor(
        max_workers=1 if engine is None else 16, thread_name_prefix="tz-stream"
    )
    specs = model.specs if isinstance(model, BatchedStage) else {s.name: s for s in model.inputs}
    dtype = specs[model_input].dtype if model_input in specs else "int64"

    def voice(tokens: list[int]) -> np.ndarray:
        x = fit_tokens(np.array(tokens, np.int64), shape).astype(dtype)
        return np.asarray(next(iter(model({model_input: x}).values())))

    def finish(tokens: list[int], parts: list[Any]) -> dict[str, np.ndarray]:
        """Voice the chunks not voiced while decoding, then join the audio in order."""
        done = len(parts) * chunk
        parts += [
            pool.submit(voice, tokens[j : j + chunk]) for j in range(done, len(tokens), chunk)
        ]
        audio = np.concatenate([f.result() for f in parts], axis=-1)
        out = {output: np.array(tokens, np.int64)}
        out.update({name: audio for name in model_outputs})
        return out

    def run_engine(state: Mapping[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
        tokens: list[int] = []
        parts: list[Any] = []
        for tok in _engine_tokens(engine, state, n, int(max_new_tokens)):
            tokens.append(tok)
            if overlap and len(tokens) % chunk == 0:  # a full chunk: voice it now
                parts.append(pool.submit(voice, tokens[-chunk:]))
        return finish(tokens, parts)

    def run(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        state = {k: values[inputs[k]] for k in ("logits", "k_cache", "v_cache")}
        n = int(np.asarray(values[inputs["length"]]).reshape(-1)[0])
        if engine is not None:
            return run_engine(state, n)
        tokens = [int(np.argmax(state["logits"][0]))]
        k, v = state["k_cache"], state["v_cache"]
        parts: list[Any] = []
        for i in range(int(max_new_tokens) - 1):
            if overlap and len(tokens) % chunk == 0:
                parts.append(pool.submit(voice, tokens[-chunk:]))
            step = phase({"token": np.array([[tokens[-1]]], np.int64),
                          "pos": np.array([n + i], np.int64), "k_cache": k, "v_cache": v})  # fmt: skip
            k, v = step["k_cache"], step["v_cache"]
            tokens.append(int(np.argmax(step["logits"][0])))
        return finish(tokens, parts)  # without overlap no chunk was voiced yet

    if engine is not None or isinstance(model, BatchedStage):
        run.concurrent = True  # type: ignore[attr-defined]  # a worker calls it at once
        run.engine = engine  # type: ignore[attr-defined]
        run.model = model  # type: ignore[attr-defined]
    return run


# -- tools, retrieval, memory ---------------------------------------------------------------
def tool(
    function: str,
    input: str,
    output: str,
    active: str | None = None,
    prev: str | None = None,
    dtype: str | None = None,
) -> Runner:
    """CPU tool: call ``function`` (``module:fn`` or ``path.py:fn``) on one value."""
    from terrazzo.frontend.agent import resolve_callable

    try:
        fn = resolve_callable(function)
    except Exception as e:  # FrontendError or an import failure inside the tool module
        raise ServingError(f"tool {function!r} cannot be loaded: {e}") from e

    def run(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not _active(values, active):
            return {output: np.asarray(values[str(prev)])}
        x: Any = values[input]
        if np.asarray(x).dtype.kind in "OSU":  # text in: the tool gets a str
            from terrazzo.frontend.agent_flow import to_text

            x = to_text(x)
        try:
            y = fn(x)
        except Exception as e:  # errors are values the program can branch on (text tools)
            if dtype != "string":
                raise
            y = f"error: {type(e).__name__}: {e}"
        return {output: _as_value(y, dtype)}

    return run


def retrieve(
    embeddings: str,
    top_k: int,
    input: str,
    output: str,
    active: str | None = None,
    prev: str | None = None,
) -> Runner:
    """CPU retrieval: cosine top-k over the embedding matrix (``.npy`` or ``synthetic:RxD:seed=S``)."""
    from terrazzo.frontend.agent import load_embeddings

    matrix = load_embeddings(embeddings)
    k = min(int(top_k), matrix.shape[0])

    def run(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not _active(values, active):
            return {output: np.asarray(values[str(prev)])}
        q = np.asarray(values[input], np.float32).reshape(-1)
        if q.shape[0] != matrix.shape[1]:
            raise ServingError(
                f"retrieve: query has {q.shape[0]} dims, the embeddings {matrix.shape[1]}"
            )
        scores = matrix @ (q / max(float(np.linalg.norm(q)), 1e-12))
        top = np.argsort(-scores, kind="stable")[:k]
        return {output: top.astype(np.int64)}

    return run


def _store_file(store_dir: str, key: str) -> Path:
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return Path(store_dir) / f"{digest}.npy"


def memory_load(store_dir: str, key: str, output: str, dtype: str = "int32") -> Runner:
    """Read the value last stored under ``key`` (empty before the first store); file-backed, so it is shared by workers."""

    def run(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        f = _store_file(store_dir, key)
        if not f.is_file():
            return {output: np.zeros((0,), dtype)}
        return {output: np.load(f, allow_pickle=False).astype(dtype).reshape(-1)}

    return run


def memory_store(store_dir: str, key: str, input: str, output: str) -> Runner:
    """Store a value under ``key`` (atomic rename) and pass it through."""
    Path(store_dir).mkdir(parents=True, exist_ok=True)

    def run(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        v = np.asarray(values[input])
        f = _store_file(store_dir, key)
        tmp = f.with_name(f"{f.stem}.{os.getpid()}.tmp.npy")
        np.save(tmp, v, allow_pickle=False)
        os.replace(tmp, f)
        return {output: v}

    return run


# -- model nodes ------------------------------------------------------------------------------
def model_stage(
    path: str,
    index: int,
    feeds: Mapping[str, str],
    output: str | Sequence[str],
    vocab: int = 256,
    trust_key: Any = None,
    batch_stages: Mapping[str, int] | None = None,
    batching: bool = True,
) -> Runner:
    """A compiled model node (bundle stage) with glue: integer inputs are fitted to the stage's token shape.

    Args:
        feeds: stage input name → value name.
        output: the value name(s) of the stage's single output (aliases get the same array).
        batch_stages: batch size → the node's copy compiled for it (``batch_sizes``): with
            ``batching``, calls of concurrent conversations merge (:class:`BatchedStage`).
    """
    stage = _batched_stage(path, index, batch_stages if batching else None, trust_key,
                           f"model stage {index}")  # fmt: skip
    specs = stage.specs if isinstance(stage, BatchedStage) else {s.name: s for s in stage.inputs}
    names = [output] if isinstance(output, str) else list(output)

    def run(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = {}
        for name, src in feeds.items():
            spec, v = specs[name], np.asarray(values[src])
            if spec.dtype.startswith("int"):
                v = fit_tokens(to_tokens(v, vocab), spec.shape).astype(spec.dtype)
            args[name] = v
        y = next(iter(stage(args).values()))
        return {name: y for name in names}

    if isinstance(stage, BatchedStage):
        run.concurrent = True  # type: ignore[attr-defined]  # a worker calls it at once
    return run


# -- agent programs: branches, joins, maps, gated stages (terrazzo.frontend.agent_flow) ---------
def _resolve_factory(factory: str) -> Any:
    import importlib

    mod, _, fn = factory.rpartition(":")
    return getattr(importlib.import_module(mod), fn)


def _arm_taken(values: Mapping[str, np.ndarray], gates: Sequence[Sequence[Any]]) -> bool:
    """Every ``(arm value, arm index)`` gate holds: the branch took that arm (a skipped branch: empty)."""
    for name, idx in gates:
        a = np.asarray(values[str(name)]).reshape(-1)
        if a.size == 0 or int(a[0]) != int(idx):
            return False
    return True


def gated(
    factory: str,
    kwargs: Mapping[str, Any],
    gates: Sequence[Sequence[Any]],
    outputs: Sequence[str],
    loop_active: str | None = None,
) -> Runner:
    """A stage inside a branch arm: run ``factory(**kwargs)`` only when its arms were taken.

    Otherwise every output is an empty value (the arm's "did not run" marker, which a ``join``
    and later gated stages read). In a loop iteration that did not run (``loop_active`` is 0)
    the inner runner decides (it passes its previous value through).
    """
    inner = _resolve_factory(factory)(**dict(kwargs))
    empty = {o: np.zeros((0,), np.int64) for o in outputs}

    def run(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        looping = loop_active is not None and not _active(values, loop_active)
        if looping or _arm_taken(values, gates):
            return dict(inner(values))
        return dict(empty)

    return run


def aliased(factory: str, kwargs: Mapping[str, Any], value: str, names: Sequence[str]) -> Runner:
    """Run ``factory(**kwargs)`` and also return its ``value`` under ``names`` (agent outputs)."""
    inner = _resolve_factory(factory)(**dict(kwargs))

    def run(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = dict(inner(values))
        out.update({n: out[value] for n in names})
        return out

    return run


def branch(
    input: str,
    output: str,
    arm_output: str,
    arms: Sequence[Sequence[Any]],
    default_index: int,
    active: str | None = None,
    prev: str | None = None,
    prev_arm: str | None = None,
) -> Runner:
    """Evaluate the arms' conditions in order on the tested value; pass the input through.

    Args:
        input / output: the value tested and passed on (the branch's own value).
        arm_output: int64 ``[1]``: the index of the arm taken (``arms`` order, default last).
        arms: ``[[arm index, condition JSON], ...]`` in test order.
        default_index: the arm taken when no condition holds.
        (a condition's ``node`` names another value to test instead of ``input``)
    """
    from terrazzo.frontend.agent_flow import evaluate

    tests = [(int(i), dict(c)) for i, c in arms]

    def run(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not _active(values, active):
            return {output: np.asarray(values[str(prev)]), arm_output: values[str(prev_arm)]}
        v = values[input]
        pick = int(default_index)
        for idx, cond in tests:
            subject = (
                values[str(cond["node"])] if cond.get("node") and cond["node"] in values else v
            )
            if evaluate(cond, subject):
                pick = idx
                break
        return {output: np.asarray(v), arm_output: np.array([pick], np.int64)}

    return run


def join(
    inputs: Sequence[Sequence[Any]],
    output: str,
    mode: str = "first",
    active: str | None = None,
    prev: str | None = None,
) -> Runner:
    """Fan-in. ``first``: the first input whose arms were taken; ``all``: every produced input merged.

    Args:
        inputs: ``[[value name, [[arm value, arm index], ...]], ...]`` — each input with the
            gates that distinguish it (empty: always produced).
    """
    from terrazzo.frontend.agent_flow import is_text

    def run(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not _active(values, active):
            return {output: np.asarray(values[str(prev)])}
        ran = [np.asarray(values[str(v)]) for v, g in inputs if _arm_taken(values, g)]
        if mode == "first":
            got = next((a for a in ran if a.size), ran[0] if ran else np.zeros((0,), np.int64))
            return {output: got}
        ran = [a for a in ran if a.size]
        if not ran:
            return {output: np.zeros((0,), np.int64)}
        if any(is_text(a) for a in ran):
            from terrazzo.frontend.agent_flow import text_value, to_text

            return {output: text_value([to_text(a) for a in ran])}
        return {output: np.concatenate([a.reshape(-1) for a in ran])}

    return run


def _as_value(result: Any, dtype: str | None) -> np.ndarray:
    """A tool's Python result as a value: text for ``dtype: string`` (str, bytes or a list of them)."""
    from terrazzo.frontend.agent_flow import text_value

    if dtype == "string":
        if isinstance(result, bytes):
            result = result.decode("utf-8", "replace")
        if isinstance(result, str):
            return text_value(result)
        if isinstance(result, np.ndarray) and result.dtype.kind in "OSU":
            return result.astype(object)
        return text_value([str(x) for x in result])
    y = np.asarray(result)
    return y.astype(dtype) if dtype else y


def map_call(
    function: str,
    input: str,
    output: str,
    max_parallel: int = 8,
    dtype: str | None = None,
    active: str | None = None,
    prev: str | None = None,
) -> Runner:
    """Fan-out/fan-in: call ``function`` on every element of the input list concurrently; collect in order.

    A call that raises becomes the text ``"error: <type>: <message>"`` for text outputs (errors
    are values the program can branch on); for tensor outputs the stage fails.
    """
    from concurrent.futures import ThreadPoolExecutor

    from terrazzo.frontend.agent import resolve_callable

    fn = resolve_callable(function)
    pool = ThreadPoolExecutor(max_workers=int(max_parallel), thread_name_prefix="tz-map")

    def call(x: Any) -> Any:
        item = x.decode("utf-8", "replace") if isinstance(x, bytes) else x
        try:
            return fn(item)
        except Exception as e:
            if dtype != "string":
                raise
            return f"error: {type(e).__name__}: {e}"

    def run(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not _active(values, active):
            return {output: np.asarray(values[str(prev)])}
        items = list(np.asarray(values[input]).reshape(-1))
        results = list(pool.map(call, items))
        if dtype == "string":
            return {output: _as_value([str(r) for r in results], dtype)}
        return {output: np.asarray(results).astype(dtype) if dtype else np.asarray(results)}

    return run
