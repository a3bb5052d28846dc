"""Continuous batching for LLM decode: a paged KV block pool and an engine that steps every
running sequence together, with sequences joining and leaving at every step.

Why: one request at a time leaves a CPU (or GPU) mostly idle at decode, where each step is a
matrix-vector product per layer; stepping ``B`` sequences together turns those into
matrix-matrix products for nearly the same cost, so aggregate tokens/s grows with ``B``.

- :class:`KVBlockPool` holds K and V for all sequences as ``[n_blocks, L, kv, block, hd]``
  arrays (fp32 or fp16). A sequence owns whole blocks, reserved when it joins for its prompt
  plus its token budget (so a running sequence never runs out); block 0 is scratch for the
  padded slots of a batch. Sequences that do not fit wait until blocks are freed.
- :class:`PagedEngine` runs the bundle's batched decode phases (``decode_b{B}``, compiled at
  several batch sizes) with the smallest compiled ``B`` that holds the running sequences. Each
  step writes only the new K/V rows into the pool. The rest of a prompt longer than the
  prefill chunk is fed through steps as forced tokens. Greedy by default; temperature / top-p
  / top-k with a per-request seed; EOS and ``max_tokens`` end a sequence inside the engine.
- Any number of prefill workers can hand a sequence over (:meth:`PagedEngine.join` takes the
  prefill's K/V and logits), so one decode engine batches requests from all of them.
- :func:`batch_decode_runner` is the decode worker's runner (``terrazzo.runtime.worker``): a
  small op protocol (join / poll / cancel / stats) over the worker's ModelInfer, with the
  engine stepping in its own thread. :class:`RemoteBatchDecode` is the client side.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from terrazzo.errors import ServingError

Phase = Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]

OP_JOIN, OP_POLL, OP_CANCEL, OP_STATS, OP_POLL_ALL, OP_CALIBRATE = 0, 1, 2, 3, 4, 5
CLIENT_SHIFT = 24  # a session id is (client id << 24) | the client's counter
RUNNER_INPUTS = ("op", "session", "k_cache", "v_cache", "length", "logits", "rest", "params")
RUNNER_OUTPUTS = ("tokens", "done", "info")


def _aligned_zeros(shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """Zeros on a 64-byte boundary (what a compiled stage can take without a copy)."""
    dt = np.dtype(dtype)
    n = int(np.prod(shape)) * dt.itemsize
    raw = np.zeros(n + 64, np.uint8)
    off = (-raw.ctypes.data) % 64
    return raw[off : off + n].view(dt).reshape(shape)


class KVBlockPool:
    """K and V pools of ``n_blocks`` blocks; block 0 is never handed out (batch padding)."""

    def __init__(self, shape: Sequence[int], dtype: str = "float32") -> None:
        self.shape = tuple(int(x) for x in shape)  # [n_blocks, L, kv, block, hd]
        self.k = _aligned_zeros(self.shape, dtype)
        self.v = _aligned_zeros(self.shape, dtype)
        self.block = self.shape[3]
        self._free = list(range(self.shape[0] - 1, 0, -1))

    @property
    def n_free(self) -> int:
        return len(self._free)

    @property
    def capacity(self) -> int:
        """Blocks a sequence can ever hold (all but the scratch block)."""
        return self.shape[0] - 1

    def alloc(self, n: int) -> list[int] | None:
        """``n`` blocks, or None (nothing taken) when fewer are free."""
        if n > len(self._free):
            return None
        return [self._free.pop() for _ in range(n)]

    def free(self, blocks: Sequence[int]) -> None:
        self._free.extend(reversed(blocks))

    def write_prefix(self, blocks: Sequence[int], k: np.ndarray, v: np.ndarray, n: int) -> None:
        """Copy the first ``n`` positions of a contiguous ``[L, kv, S, hd]`` cache into blocks."""
        b = self.block
        for i, blk in enumerate(blocks):
            lo, hi = i * b, min(n, (i + 1) * b)
            if lo >= hi:
                break
            self.k[blk, :, :, : hi - lo] = k[:, :, lo:hi]
            self.v[blk, :, :, : hi - lo] = v[:, :, lo:hi]


@dataclass(frozen=True, slots=True)
class Sampling:
    """What the engine needs of a request's sampling parameters."""

    max_tokens: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    ignore_eos: bool = False

    def to_array(self) -> np.ndarray:
        seed = -1.0 if self.seed is None else float(self.seed)
        return np.array([self.max_tokens, self.temperature, self.top_p, self.top_k, seed,
                         float(self.ignore_eos)], np.float64)  # fmt: skip

    @staticmethod
    def from_array(a: np.ndarray) -> Sampling:
        a = np.asarray(a, np.float64).reshape(-1)
        return Sampling(int(a[0]), float(a[1]), float(a[2]), int(a[3]),
                        None if a[4] < 0 else int(a[4]), bool(a[5]))  # fmt: skip


class SamplingLike(Protocol):
    """The sampling knobs ``choose`` reads (``Sampling`` here, ``llm_text.SamplingParams``)."""

    @property
    def temperature(self) -> float: ...
    @property
    def top_p(self) -> float: ...
    @property
    def top_k(self) -> int: ...


def choose(logits: np.ndarray, p: SamplingLike, rng: np.random.Generator) -> int:
    """The next token: argmax when ``temperature == 0``, else top-k / top-p sampling."""
    if p.temperature <= 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / p.temperature
    if 0 < p.top_k < z.shape[0]:
        kth = np.partition(z, -p.top_k)[-p.top_k]
        z = np.where(z < kth, -np.inf, z)
    probs = np.exp(z - np.max(z))
    probs /= probs.sum()
    if p.top_p < 1.0:
        order = np.argsort(-probs)
        cum = np.cumsum(probs[order])
        keep = order[: int(np.searchsorted(cum, p.top_p) + 1)]
        mask = np.zeros_like(probs)
        mask[keep] = probs[keep]
        probs = mask / mask.sum()
    return int(rng.choice(probs.shape[0], p=probs))


@dataclass(slots=True)
class _Seq:
    sid: int
    params: Sampling
    pos: int  # tokens in the cache
    forced: deque[int]  # prompt tokens still to feed
    budget: int  # tokens still to generate
    rng: np.random.Generator
    blocks: list[int] = field(default_factory=list)
    next_token: int = -1
    out: list[int] = field(default_factory=list)
    done: bool = False
    t_join: float = 0.0
    pending: tuple[np.ndarray, np.ndarray, int] | None = None  # KV not yet in the pool
    first_logits: np.ndarray | None = None


class PagedEngine:
    """Continuous batching over a :class:`KVBlockPool` (see the module doc).

    Args:
        phases: batch size → the compiled batched decode phase for it.
        pool: the KV pool the phases were compiled for.
        max_len: the context; ``eos``: the EOS ids.
    """

    def __init__(
        self, phases: Mapping[int, Phase], pool: KVBlockPool, max_len: int, eos: Sequence[int]
    ) -> None:
        if not phases:
            raise ServingError("no batched decode phases (compile with --decode-batches)")
        self.phases = dict(sorted(phases.items()))
        self.buckets = tuple(self.phases)
        self.pool = pool
        for ph in self.phases.values():  # compiled stages read the pool in place, no copy
            share = getattr(ph, "share_input", None)
            if share is not None:
                share("k_pool", pool.k)
                share("v_pool", pool.v)
        self.max_len = int(max_len)
        self.eos = {int(x) for x in eos}
        self.per_seq = -(-self.max_len // pool.block)
        self._seqs: dict[int, _Seq] = {}
        self._waiting: deque[_Seq] = deque()
        self._running: list[_Seq] = []
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stop = False
        self.steps = 0
        self.step_s: dict[int, list[float]] = {b: [] for b in self.buckets}
        self.tokens_out = 0
        self.calibrated: dict[int, float] = {}

    # -- requests ------------------------------------------------------------------------
    def join(
        self,
        sid: int,
        k: np.ndarray,
        v: np.ndarray,
        length: int,
        logits: np.ndarray,
        rest: Sequence[int],
        params: Sampling,
    ) -> None:
        """Hand a prefilled sequence over: its cache ``[L, kv, S, hd]`` holding ``length``
        positions, the logits after them, and prompt tokens ``rest`` still to feed."""
        total = length + len(rest)
        budget = min(int(params.max_tokens), self.max_len - total)
        if budget < 1 or total >= self.max_len:
            raise ServingError(
                f"the prompt has {total} tokens; the bundle's context (max_len) is {self.max_len}"
            )
        need = -(-(total + budget) // self.pool.block)
        if need > self.pool.capacity:
            raise ServingError(f"the KV pool holds {self.pool.capacity} blocks; {need} needed")
        seq = _Seq(sid, params, length, deque(int(t) for t in rest), budget,
                   np.random.default_rng(params.seed), t_join=time.perf_counter())  # fmt: skip
        seq.pending = (np.asarray(k), np.asarray(v), int(length))
        seq.first_logits = np.asarray(logits).reshape(-1)
        with self._cv:
            if sid in self._seqs:
                raise ServingError(f"decode session {sid} already exists")
            self._seqs[sid] = seq
            self._waiting.append(seq)
            self._cv.notify_all()

    def poll(self, sid: int, timeout: float = 30.0) -> tuple[list[int], bool]:
        """New tokens of ``sid`` since the last poll (waits for at least one) and whether the
        sequence has finished; a finished sequence is forgotten once polled empty."""
        end = time.monotonic() + timeout
        with self._cv:
            while True:
                seq = self._seqs.get(sid)
                if seq is None:
                    raise ServingError(f"decode session {sid} is unknown")
                if seq.out or seq.done:
                    toks, seq.out = seq.out, []
                    if seq.done:
                        del self._seqs[sid]
                    return toks, seq.done
                left = end - time.monotonic()
                if left <= 0:
                    return [], False
                self._cv.wait(left)

    def poll_all(self, client: int, timeout: float = 30.0) -> dict[int, tuple[list[int], bool]]:
        """:meth:`poll` for every session of ``client`` with news, in one call (waits for
        one): one round trip per step for a whole front, however many streams it has."""
        end = time.monotonic() + timeout
        with self._cv:
            while True:
                got: dict[int, tuple[list[int], bool]] = {}
                for sid, seq in list(self._seqs.items()):
                    if sid >> CLIENT_SHIFT == client and (seq.out or seq.done):
                        got[sid], seq.out = (seq.out, seq.done), []
                        if seq.done:
                            del self._seqs[sid]
                if got:
                    return got
                left = end - time.monotonic()
                if left <= 0:
                    return {}
                self._cv.wait(left)

    def cancel(self, sid: int) -> None:
        """End ``sid`` now (e.g. a stop string matched); its blocks are freed at the next step."""
        with self._cv:
            seq = self._seqs.pop(sid, None)
            if seq is not None:
                seq.done = True
                if seq in self._waiting:
                    self._waiting.remove(seq)
                if seq.blocks and seq not in self._running:
                    self.pool.free(seq.blocks)
                    seq.blocks = []
                self._cv.notify_all()

    # -- stepping ------------------------------------------------------------------------
    def _admit(self) -> None:
        """Move waiting sequences into the batch while blocks and the largest bucket allow."""
        while self._waiting and len(self._running) < self.buckets[-1]:
            seq = self._waiting[0]
            total = seq.pos + len(seq.forced) + seq.budget
            blocks = self.pool.alloc(-(-total // self.pool.block))
            if blocks is None:
                return
            self._waiting.popleft()
            seq.blocks = blocks
            assert seq.pending is not None and seq.first_logits is not None
            k, v, n = seq.pending
            self.pool.write_prefix(blocks, k, v, n)
            seq.pending = None
            if seq.forced:
                seq.next_token = seq.forced.popleft()
            else:
                self._emit(seq, seq.first_logits)
            seq.first_logits = None
            if not seq.done:
                self._running.append(seq)

    def _emit(self, seq: _Seq, logits: np.ndarray) -> None:
        tok = choose(logits, seq.params, seq.rng)
        seq.out.append(tok)
        seq.budget -= 1
        self.tokens_out += 1
        seq.next_token = tok
        if seq.budget <= 0 or (tok in self.eos and not seq.params.ignore_eos):
            seq.done = True

    def bucket(self, n: int) -> int:
        """The smallest compiled batch size holding ``n`` sequences."""
        return next((b for b in self.buckets if b >= n), self.buckets[-1])

    def step(self) -> int:
        """Admit waiting sequences, run one decode step for the batch, retire finished ones.
        Returns the number of sequences stepped."""
        with self._cv:
            self._admit()
            batch = [s for s in self._running if not s.done][: self.buckets[-1]]
            self._retire()
            self._cv.notify_all()
        if not batch:
            return 0
        b = self.bucket(len(batch))
        tokens = np.zeros((b,), np.int64)
        pos = np.zeros((b,), np.int64)
        table = np.zeros((b, self.per_seq), np.int64)
        for i, s in enumerate(batch):
            tokens[i], pos[i] = s.next_token, s.pos
            table[i, : len(s.blocks)] = s.blocks
        t0 = time.perf_counter()
        out = self.phases[b]({"tokens": tokens, "pos": pos, "k_pool": self.pool.k,
                              "v_pool": self.pool.v, "block_table": table})  # fmt: skip
        self.step_s[b].append(time.perf_counter() - t0)
        self.steps += 1
        logits, k_new, v_new = (np.asarray(out[n]) for n in ("logits", "k_new", "v_new"))
        blk = self.pool.block
        with self._cv:
            for i, s in enumerate(batch):
                if s.done:  # cancelled while stepping
                    continue
                row, slot = s.blocks[s.pos // blk], s.pos % blk
                self.pool.k[row, :, :, slot] = k_new[i]
                self.pool.v[row, :, :, slot] = v_new[i]
                s.pos += 1
                if s.forced:
                    s.next_token = s.forced.popleft()
                else:
                    self._emit(s, logits[i])
            self._retire()
            self._cv.notify_all()
        return len(batch)

    def _retire(self) -> None:
        keep = []
        for s in self._running:
            if s.done:
                self.pool.free(s.blocks)
                s.blocks = []
            else:
                keep.append(s)
        self._running = keep

    def active(self) -> int:
        with self._cv:
            return len(self._running) + len(self._waiting)

    def run_until_idle(self) -> None:
        """Step until no sequence is running or waiting (in-process use and tests)."""
        while self.active():
            if not self.step() and self._waiting:
                raise ServingError("a waiting sequence can never fit the KV pool")

    def start(self) -> None:
        """Step in a background thread whenever there is work."""

        def loop() -> None:
            while not self._stop:
                with self._cv:
                    while not self._stop and not (self._running or self._waiting):
                        self._cv.wait(0.5)
                if not self._stop:
                    self.step()

        self._thread = threading.Thread(target=loop, daemon=True, name="tz-llm-batch")
        self._thread.start()

    def stop(self) -> None:
        self._stop = True
        with self._cv:
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(5)

    def calibrate(self, repeat: int = 15) -> dict[int, float]:
        """Time each compiled batch size alone on this host (a full batch at half the
        context; the median of ``repeat`` calls after a warm-up): the phase term of
        ``llm_predict``'s step period. Run before serving (it uses the pool's scratch block)."""
        out: dict[int, float] = {}
        for b, phase in self.phases.items():
            args = {"tokens": np.ones((b,), np.int64),
                    "pos": np.full((b,), self.max_len // 2, np.int64),
                    "k_pool": self.pool.k, "v_pool": self.pool.v,
                    "block_table": np.zeros((b, self.per_seq), np.int64)}  # fmt: skip
            for _ in range(3):  # warm: first calls fault pages in and fill caches
                phase(args)
            ts = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                phase(args)
                ts.append(time.perf_counter() - t0)
            out[b] = float(np.median(ts))
        self.calibrated = out
        return out

    def stats(self) -> dict[str, Any]:
        """Steps, tokens, and per-bucket step time (mean, p99) in seconds."""
        per = {}
        for b, xs in self.step_s.items():
            if xs:
                a = np.asarray(xs[-2000:])
                per[str(b)] = {"steps": len(xs), "mean_s": float(a.mean()),
                               "p99_s": float(np.percentile(a, 99))}  # fmt: skip
        return {"steps": self.steps, "tokens": self.tokens_out, "buckets": list(self.buckets),
                "free_blocks": self.pool.n_free, "per_bucket": per,
                "calibrated_step_s": {str(b): t for b, t in self.calibrated.items()}}  # fmt: skip


def engine_from_llm(llm: Mapping[str, Any], load: Callable[[int], Phase]) -> PagedEngine:
    """A :class:`PagedEngine` over an LLM bundle's ``decode_batch`` stages (``load(index)``)."""
    cfg = llm["config"]
    kv = llm.get("kv") or {}
    stages = (llm.get("stages") or {}).get("decode_batch") or {}
    if not stages:
        raise ServingError(
            "the bundle has no batched decode stages (compile with --decode-batches)"
        )
    shape = (int(kv["n_blocks"]), int(cfg["n_layers"]), int(cfg["n_kv_heads"]),
             int(kv["block"]), int(cfg.get("attn_head_dim") or cfg["d_model"] // cfg["n_heads"]))  # fmt: skip
    pool = KVBlockPool(shape, str(kv.get("dtype", "float32")))
    phases = {int(b): load(int(i)) for b, i in stages.items()}
    return PagedEngine(phases, pool, int(cfg["max_len"]), llm.get("eos_token_ids") or ())


# -- the decode worker ---------------------------------------------------------------------
def batch_decode_runner(path: str, trust_key: Any = None) -> Callable[..., dict[str, np.ndarray]]:
    """The decode worker's runner: a :class:`PagedEngine` stepping in a thread, driven by ops.

    Inputs (all sent every call; unused ones empty): ``op`` (join 0, poll 1, cancel 2,
    stats 3), ``session``, and for join ``k_cache``/``v_cache``/``length``/``logits``/``rest``
    (prompt tokens still to feed)/``params`` (:meth:`Sampling.to_array`). Outputs ``tokens``
    (new token ids), ``done`` and ``info`` (stats JSON as uint8 bytes). Calls may run
    concurrently (``concurrent``): a poll waits without holding the worker.
    """
    from terrazzo.bundle import open_bundle

    if isinstance(trust_key, Mapping) and "hex" in trust_key:
        trust_key = bytes.fromhex(trust_key["hex"])
    bundle = open_bundle(path, trust_key=trust_key)
    llm = (bundle.plan_json or {})["llm"]
    engine = engine_from_llm(llm, bundle.load_stage)
    engine.start()  # calibrated by OP_CALIBRATE once every worker is up (a quiet moment)
    return engine_ops(engine)


def engine_ops(engine: PagedEngine) -> Callable[..., dict[str, np.ndarray]]:
    """The op protocol of :func:`batch_decode_runner` over a running ``engine``."""
    none = np.zeros((0,), np.int64)

    def run(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        op = int(np.asarray(values["op"]).reshape(-1)[0])
        sid = int(np.asarray(values["session"]).reshape(-1)[0])
        toks, done, info = none, False, b""
        if op == OP_JOIN:
            engine.join(sid, values["k_cache"], values["v_cache"],
                        int(np.asarray(values["length"]).reshape(-1)[0]),
                        values["logits"], [int(t) for t in np.asarray(values["rest"]).reshape(-1)],
                        Sampling.from_array(values["params"]))  # fmt: skip
        elif op == OP_POLL:
            got, done = engine.poll(sid)
            toks = np.asarray(got, np.int64)
        elif op == OP_POLL_ALL:  # session = the client id
            info = json.dumps({str(k): v for k, v in engine.poll_all(sid).items()}).encode()
        elif op == OP_CANCEL:
            engine.cancel(sid)
        elif op == OP_CALIBRATE:
            if engine.active():
                raise ServingError("calibrate only while no sequence runs")
            info = json.dumps(engine.calibrate()).encode()
        elif op == OP_STATS:
            info = json.dumps(engine.stats()).encode()
        else:
            raise ServingError(f"unknown batch-decode op {op}")
        return {"tokens": toks, "done": np.array([int(done)], np.int64),
                "info": np.frombuffer(info, np.uint8).copy()}  # fmt: skip

    run.concurrent = True  # type: ignore[attr-defined]
    run.engine = engine  # type: ignore[attr-defined]
    return run


class RemoteBatchDecode:
    """Client of a :func:`batch_decode_runner` worker (or of the runner itself, in process):
    join a prefilled sequence, then read its tokens. One poller thread per client fetches the
    news of all its sessions in one call per step (``OP_POLL_ALL``) and hands them to each
    session's queue, so the round trips do not grow with the number of streams."""

    def __init__(self, call: Phase) -> None:
        import os
        import queue

        self.call = call
        self.client = int.from_bytes(os.urandom(4), "little") & 0x3FFFFFFF
        self._next = 0
        self._lock = threading.Lock()
        self._queues: dict[int, queue.Queue[tuple[list[int], bool] | BaseException]] = {}
        self._poller: threading.Thread | None = None

    def _op(self, op: int, sid: int, **extra: np.ndarray) -> Mapping[str, np.ndarray]:
        empty_f, empty_i = np.zeros((0,), np.float32), np.zeros((0,), np.int64)
        values: dict[str, np.ndarray] = {"op": np.array([op], np.int64),
                  "session": np.array([sid], np.int64),
                  "k_cache": empty_f, "v_cache": empty_f, "length": np.array([0], np.int64),
                  "logits": empty_f, "rest": empty_i,
                  "params": np.zeros((6,), np.float64), **extra}  # fmt: skip
        return self.call(values)

    def new_session(self) -> int:
        import queue

        with self._lock:
            self._next += 1
            sid = (self.client << CLIENT_SHIFT) | self._next
            self._queues[sid] = queue.Queue()
            return sid

    def join(self, sid: int, k: np.ndarray, v: np.ndarray, length: int, logits: np.ndarray,
             rest: Sequence[int], params: Sampling) -> None:  # fmt: skip
        self._op(OP_JOIN, sid, k_cache=np.asarray(k), v_cache=np.asarray(v),
                 length=np.array([length], np.int64), logits=np.asarray(logits, np.float32),
                 rest=np.asarray(list(rest), np.int64).reshape(-1),
                 params=params.to_array())  # fmt: skip
        with self._lock:
            if self._poller is None or not self._poller.is_alive():
                self._poller = threading.Thread(target=self._poll_loop, daemon=True,
                                                name="tz-llm-poll")  # fmt: skip
                self._poller.start()

    def _poll_loop(self) -> None:
        while True:
            with self._lock:
                if not self._queues:
                    self._poller = None
                    return
            try:
                out = self._op(OP_POLL_ALL, self.client)
                news = json.loads(bytes(np.asarray(out["info"], np.uint8)).decode() or "{}")
            except Exception as e:  # the worker failed: every waiting stream hears it
                with self._lock:
                    for q in self._queues.values():
                        q.put(e)
                    self._queues.clear()
                    self._poller = None
                return
            with self._lock:
                for k, (toks, done) in news.items():
                    dest = self._queues.get(int(k))
                    if dest is not None:
                        dest.put((list(toks), bool(done)))

    def poll(self, sid: int) -> tuple[list[int], bool]:
        """The next tokens of ``sid`` (waits for them) and whether it has finished."""
        with self._lock:
            q = self._queues.get(sid)
        if q is None:
            raise ServingError(f"decode session {sid} is not running")
        item = q.get(timeout=120)
        if isinstance(item, BaseException):
            raise ServingError(f"decode worker: {item}")
        toks, done = item
        while not done and not q.empty():  # several steps arrived: take them together
            more = q.get_nowait()
            if isinstance(more, BaseException):
                raise ServingError(f"decode worker: {more}")
            toks, done = toks + more[0], more[1]
        if done:
            with self._lock:
                self._queues.pop(sid, None)
        return toks, done

    def cancel(self, sid: int) -> None:
        with self._lock:
            self._queues.pop(sid, None)
        self._op(OP_CANCEL, sid)

    def ping(self) -> None:
        """One round trip to the decode worker that does nothing (a cancel of no session)."""
        self._op(OP_CANCEL, 0)

    def in_flight(self) -> int:
        """Sequences of this client still being decoded (joined, not finished or cancelled)."""
        with self._lock:
            return len(self._queues)

    def calibrate(self) -> dict[str, float]:
        """Time each compiled batch size on the decode worker now (nothing may be running)."""
        out = self._op(OP_CALIBRATE, 0)
        return dict(json.loads(bytes(np.asarray(out["info"], np.uint8)).decode() or "{}"))

    def stats(self) -> dict[str, Any]:
        out = self._op(OP_STATS, 0)
        return dict(json.loads(bytes(np.asarray(out["info"], np.uint8)).decode() or "{}"))
