"""Bundle step 3: run one compiled stage (or the whole bundle) in this process with the TVM VM.

A StageRunner maps input name → array to output name → array. When the stage's planned
device is not present here it runs the host-CPU build and says so in ``note``. Libraries that
export a weight-preparation function (``main_transform_params``, format version 2) have it run
once at load; the prepared weights stay on the device for every call. A stage with static
builds at a few batch sizes (buckets, ``codegen._buckets``) runs a batch of ``n`` rows on the
smallest bucket ``>= n`` (on the CPU), padded with copies of its last row whose outputs are
dropped; a batch above the largest bucket runs on the symbolic build.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from terrazzo.errors import BundleError
from terrazzo.ir import TensorSpec, symbol_conflicts

if TYPE_CHECKING:
    from terrazzo.bundle._read import Bundle, StageInfo

log = logging.getLogger("terrazzo.bundle")


def _cuda_present() -> bool:
    try:
        import tvm

        load_cuda_runtime()
        return bool(tvm.cuda(0).exist)
    except Exception:
        return False


def load_cuda_runtime() -> bool:
    """Load TVM's CUDA runtime library (``libtvm_runtime_cuda``) if it is not loaded yet.

    A full install loads it with its backends; a runtime-only install (no compiler library)
    does not, so the CUDA device would look absent. True when it is loaded.
    """
    import ctypes
    import os

    import tvm.base

    libs = tvm.base._LOADED_LIBS
    if "tvm_runtime_cuda" in libs:
        return True
    path = os.path.join(os.path.dirname(libs["tvm_runtime"]._name), "libtvm_runtime_cuda.so")
    try:
        libs["tvm_runtime_cuda"] = ctypes.CDLL(path, mode=ctypes.RTLD_LOCAL)
    except OSError:
        return False
    return True


# sha256 of CUDA source → the bundle's fatbin for it; shared by every stage of this process.
_FATBINS: dict[str, bytes] = {}
#: How this process's CUDA modules got their code: a bundled fatbin, or nvcc at load time.
FATBIN_STATS: dict[str, int] = {"bundled": 0, "nvcc": 0}


def _install_fatbin_callback(source: str | None, fatbin: bytes | None) -> None:
    """Serve CUDA kernels from bundled fatbins (matched by source hash, else nvcc) at load time."""
    import hashlib

    import tvm_ffi

    if source is not None and fatbin is not None:
        _FATBINS[hashlib.sha256(source.encode()).hexdigest()] = fatbin

    def compile_cuda(code: str, *args: Any) -> bytes:
        hit = _FATBINS.get(hashlib.sha256(str(code).encode()).hexdigest())
        if hit is not None:
            FATBIN_STATS["bundled"] += 1
            return hit
        FATBIN_STATS["nvcc"] += 1
        log.warning("no bundled fatbin for this CUDA source: compiling it with nvcc at load time")
        from tvm.support import nvcc

        from terrazzo.codegen import precise_cuda_math

        with precise_cuda_math():  # IEEE math, as the bundled fatbins are built
            return bytes(nvcc.compile_cuda(code, target_format="fatbin", compiler="nvcc"))

    tvm_ffi.register_global_func("tvm_callback_cuda_compile", compile_cuda, override=True)


#: The weight-preparation function of a stage library (``terrazzo.codegen.lift_weight_prep``).
WEIGHT_PREP_FUNCTION = "main_transform_params"


def _has_function(vm: Any, name: str) -> bool:
    try:
        return bool(vm.module.implements_function(name))
    except Exception:
        try:
            vm[name]
        except Exception:
            return False
        return True


class StageRunner:
    """Callable ``dict[str, np.ndarray] -> dict[str, np.ndarray]`` for one compiled stage.

    Attributes:
        index: stage index (-1 for the whole-model reference).
        device: planned device class.
        ran_on: ``"cpu"`` or ``"cuda"``: where this runner executes.
        note: a sentence when the planned device's build is not the one running (else None).
        inputs / outputs: signatures in call order.
        prepared_weights: True when the library's weight preparation ran at load (the
            weights kept on the device are its outputs).
    """

    #: (name, staging buffer, shape, dtype) per input for ``try_fast``; None: general path.
    _fast_in: tuple[tuple[str, np.ndarray, tuple[int, ...], np.dtype[Any]], ...] | None

    def __init__(
        self,
        library_path: str,
        weights: Mapping[str, np.ndarray],
        weight_order: tuple[str, ...],
        inputs: tuple[TensorSpec, ...],
        outputs: tuple[TensorSpec, ...],
        *,
        index: int = 0,
        device: str = "host",
        ran_on: str = "cpu",
        note: str | None = None,
    ) -> None:
        import tvm
        from tvm.runtime.vm import VirtualMachine

        self.index = index
        self.device = device
        self.ran_on = ran_on
        self.note = note
        self._bundle: Any = None
        self.inputs = inputs
        self.outputs = outputs
        self._dev = tvm.cuda(0) if ran_on == "cuda" else tvm.cpu(0)
        try:
            lib = tvm.runtime.load_module(library_path)
            self._vm = VirtualMachine(lib, self._dev)
            self._fn = self._vm["main"]
        except Exception as e:  # not a TVM Relax library (or built for another runtime)
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise BundleError(
                f"stage {index}: {library_path.rsplit('/', 1)[-1]} is not a loadable TVM "
                f"library: {first}"
            ) from e
        missing = [w for w in weight_order if w not in weights]
        if missing:
            raise BundleError(f"stage {index}: weights missing from the bundle: {missing[:5]}")
        raw = [
            tvm.runtime.tensor(np.asarray(weights[w], order="C"), self._dev) for w in weight_order
        ]
        self.prepared_weights = _has_function(self._vm, WEIGHT_PREP_FUNCTION)
        if self.prepared_weights:
            # Weight-only work (transposes, conv weight layouts) once, here, not per call.
            try:
                prep = self._vm[WEIGHT_PREP_FUNCTION](raw)
            except Exception as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise BundleError(f"stage {index}: weight preparation failed: {first}") from e
            self._weights = [prep] if hasattr(prep, "numpy") else list(prep)
        else:
            self._weights = raw
        # Static builds at a few batch sizes (``attach_buckets``): (size, runner), ascending.
        self._buckets: list[tuple[int, StageRunner]] = []
        #: Calls per bucket size (0: the symbolic build), for reports and tests.
        self.bucket_calls: dict[int, int] = {}
        self._prepare_call_path()

    def attach_buckets(self, buckets: list[tuple[int, StageRunner]]) -> None:
        """Run batches of up to ``max(size)`` rows on these static builds of this stage.

        Each runner is this stage built with dimension 0 of every input and output fixed to
        ``size``. A runner whose prepared weights equal this one's (the weight preparation
        does not depend on the batch) shares them, so buckets cost no weight memory.
        """
        for _, r in buckets:
            if _same_tensors(r._weights, self._weights):
                r._weights = self._weights
                r._refresh_call_args()
        self._buckets = sorted(buckets, key=lambda b: b[0])
        self._fast_in = None  # a batch picks its bucket: the general path

    @property
    def bucket_sizes(self) -> tuple[int, ...]:
        """The batch sizes this stage has static builds for (empty: the symbolic build only)."""
        return tuple(n for n, _ in self._buckets)

    def _prepare_call_path(self) -> None:
        """Everything a call needs, computed once: names, dtypes, shapes, staging buffers.

        On the CPU each input is copied into a staging buffer allocated once (64-byte aligned,
        as TVM's own allocations are; handed to the VM once, through DLPack), so a call costs
        one ``np.copyto`` per input and no allocation; the caller's arrays are never handed to
        compiled code (nothing can write into them, misaligned or read-only ones are fine).
        Results come back through DLPack without a copy when the VM allocated them for this
        call: each keeps its own storage alive, so later calls cannot overwrite it. A result
        that lives in a buffer the VM hands out again (a staging buffer, a weight, a constant,
        a reshape of one) is copied. Which results those are is a property of the program:
        the first two calls copy everything and compare addresses: a result at the same
        address while the first call's result is still alive is such a buffer.
        """
        import tvm_ffi

        self._in_names = tuple(s.name for s in self.inputs)
        self._in_shapes = tuple(tuple(s.shape) for s in self.inputs)
        self._in_dtypes = tuple(np.dtype(s.dtype) for s in self.inputs)
        self._out_names = tuple(s.name for s in self.outputs)
        # Symbolic dimensions: sizes change per call, so no fixed staging buffers.
        self._dynamic = any(s.is_dynamic for s in self.inputs)
        self._zero_copy = self.ran_on == "cpu" and not self._dynamic
        self._staging = [
            _aligned_empty(shape, dtype) for shape, dtype in zip(self._in_shapes, self._in_dtypes, strict=True)
        ] if self._zero_copy else []  # fmt: skip
        self._staging_args = [tvm_ffi.from_dlpack(buf) for buf in self._staging]
        self._copy_out: tuple[bool, ...] | None = None  # decided by the second call
        self._first: tuple[Any, tuple[int, ...]] | None = None  # the first call's results
        self._call_lock = threading.Lock()  # one VM: calls from several threads take turns
        # The fast path (``try_fast``): (name, staging buffer, shape, dtype) per input, for a
        # static CPU stage without buckets; None where every call takes the general path.
        self._fast_in = (
            tuple(zip(self._in_names, self._staging, self._in_shapes, self._in_dtypes, strict=True))
            if self._zero_copy
            else None
        )
        self._single_out = len(self._out_names) == 1
        self._wrapped_out = False  # learned with the copies: one result comes as a tuple
        self._refresh_call_args()

    def _refresh_call_args(self) -> None:
        """The compiled function's arguments as one tuple (staging buffers, then weights)."""
        self._call_args = (*self._staging_args, *self._weights)

    @staticmethod
    def from_bundle(
        bundle: Bundle, info: StageInfo, device: str = "auto", library: str | None = None
    ) -> StageRunner:
        """Load a stage of an opened Bundle (see ``Bundle.load_stage``)."""
        from safetensors.numpy import load_file

        weights: dict[str, np.ndarray] = {}
        if info.index >= 0:
            weights.update(load_file(str(bundle.member_path(info.files["weights"]))))
        else:
            for st in bundle.manifest["stages"]:
                weights.update(load_file(str(bundle.member_path(st["files"]["weights"]))))
        kind = str(info.target.get("kind", "llvm"))
        has_dev = "device" in info.files
        want_device = device == "device" or (device == "auto" and kind == "cuda" and has_dev)
        note = None
        if want_device and kind == "cuda" and has_dev and _cuda_present():
            fatbin = source = None
            if "fatbin" in info.files and "kernels" in info.files:
                fatbin = bundle.member_path(info.files["fatbin"]).read_bytes()
                source = bundle.member_path(info.files["kernels"]).read_text()
            _install_fatbin_callback(source, fatbin)
            lib, ran_on = info.files["device"], "cuda"
        elif device == "device":
            raise BundleError(
                f"stage {info.index}: the {info.device} build ({kind}) cannot run on this machine"
            )
        else:
            lib, ran_on = info.files["host"], "cpu"
            if info.index >= 0 and kind == "llvm" and not info.fallback_reason:
                # a CPU class: this host is a CPU too; its own build (tuned for this CPU) runs
                note = None
                if has_dev:
                    log.info(
                        "stage %d is planned on %s (llvm %s); running the build for this host's "
                        "CPU",
                        info.index,
                        info.device,
                        info.target.get("mcpu", ""),
                    )
            elif info.index >= 0 and (kind != "llvm" or has_dev or info.fallback_reason):
                note = (
                    f"stage {info.index} is planned on {info.device} ({kind}); that device is "
                    "not used here, running the host-CPU build"
                )
                (log.warning if device == "auto" else log.info)(note)
        lib_path = str(bundle.member_path(lib))
        if library is not None:  # another CPU build of this stage (see Bundle.load_stage)
            lib_path = (
                str(bundle.member_path(library.removeprefix("member:")))
                if library.startswith("member:")
                else library
            )
            ran_on, note = "cpu", None
        runner = StageRunner(
            lib_path,
            weights,
            tuple(info.weights),
            tuple(info.inputs),
            tuple(info.outputs),
            index=info.index,
            device=info.device,
            ran_on=ran_on,
            note=note,
        )
        runner._bundle = bundle  # keep the extracted files alive as long as the runner
        if ran_on == "cpu" and info.buckets and info.index >= 0:
            sizes = [int(n) for n in info.buckets["sizes"]]
            runner.attach_buckets([
                (n, StageRunner(
                    str(bundle.member_path(info.files[f"host_b{n}"])), weights, tuple(info.weights),
                    tuple(_fix_batch(t, n) for t in info.inputs),
                    tuple(_fix_batch(t, n) for t in info.outputs),
                    index=info.index, device=info.device, ran_on=ran_on, note=note,
                ))
                for n in sizes
            ])  # fmt: skip
        return runner

    def share_input(self, name: str, array: np.ndarray) -> bool:
        """Use ``array`` itself as input ``name``'s buffer, so passing it costs no copy (the
        LLM decode engine's KV pool, shared by every batch size's stage). False, and nothing
        changed, where the stage copies its inputs anyway (a device or dynamic shapes) or
        ``array`` is not a C-contiguous, 64-byte aligned array of the input's shape and type."""
        import tvm_ffi

        if not self._zero_copy or name not in self._in_names:
            return False
        i = self._in_names.index(name)
        ok = (array.shape == self._in_shapes[i] and array.dtype == self._in_dtypes[i]
              and array.flags.c_contiguous and array.ctypes.data % 64 == 0)  # fmt: skip
        if not ok:
            return False
        self._staging[i] = array
        self._staging_args[i] = tvm_ffi.from_dlpack(array)
        if self._fast_in is not None:
            fast = list(self._fast_in)
            fast[i] = (name, array, self._in_shapes[i], self._in_dtypes[i])
            self._fast_in = tuple(fast)
        self._refresh_call_args()
        return True

    def _checked(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """The inputs in call order, checked against the signature (symbolic dimensions
        against their declared range, and equal symbols equal across inputs)."""
        out = []
        for spec, shape, dtype in zip(self.inputs, self._in_shapes, self._in_dtypes, strict=True):
            try:
                a = inputs[spec.name]
            except KeyError:
                raise BundleError(
                    f"stage {self.index}: input {spec.name!r} was not given"
                ) from None
            if type(a) is not np.ndarray:
                a = np.asarray(a)
            if a.dtype != dtype or (
                a.shape != shape and (not self._dynamic or not spec.accepts_shape(a.shape))
            ):
                bad = spec.shape_error(a.shape) if a.dtype == dtype else None
                raise BundleError(
                    f"stage {self.index}: {bad}"
                    if bad
                    else f"stage {self.index}: input {spec.name!r} must be "
                    f"{spec.dtype}{spec.describe_shape()}, got {a.dtype}{list(a.shape)}"
                )
            out.append(a)
        if self._dynamic:
            clash = symbol_conflicts(
                self.inputs, {s.name: a.shape for s, a in zip(self.inputs, out, strict=True)}
            )
            if clash:
                raise BundleError(f"stage {self.index}: {clash}")
        return out

    def _device_args(self, inputs: Mapping[str, np.ndarray]) -> list[Any]:
        """The inputs checked against the signature and copied to this stage's device."""
        import tvm

        # np.ascontiguousarray turns a 0-d array into shape (1,): reshape it back
        return [
            tvm.runtime.tensor(np.ascontiguousarray(a).reshape(a.shape), self._dev)
            for a in self._checked(inputs)
        ]

    def try_fast(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        """``self(inputs)`` in the common case, else None (then call ``self(inputs)``).

        The common case: a static CPU stage without buckets whose copies are learned (from
        the third call on), given NumPy arrays of exactly the declared dtypes and shapes. It
        does only what a call must: copy each input into its staging buffer, call the compiled
        function with the argument tuple built at load, and hand the results out through
        DLPack (copying those ``_learn_copies`` found aliased). Anything else (a missing
        input, another type, dtype or shape) returns None before the compiled function runs,
        so the general path checks it and raises its usual error.
        """
        fast = self._fast_in
        copy_out = self._copy_out
        if fast is None or copy_out is None:
            return None
        with self._call_lock:
            for name, buf, shape, dtype in fast:
                a = inputs.get(name)
                if type(a) is not np.ndarray or a.shape != shape or a.dtype != dtype:
                    return None
                if a is not buf:  # a shared input (share_input) is already in place
                    np.copyto(buf, a)
            try:
                result = self._fn(*self._call_args)
            except Exception as e:
                raise self._failure(e) from e
            if self._single_out:
                if self._wrapped_out:  # a one-element tuple, not the tensor itself
                    result = result[0]
                if copy_out[0]:
                    return {self._out_names[0]: np.from_dlpack(result).copy()}
                return {self._out_names[0]: np.from_dlpack(result)}
            return {
                name: np.from_dlpack(r).copy() if copy else np.from_dlpack(r)
                for name, r, copy in zip(self._out_names, result, copy_out, strict=True)
            }

    def _failure(self, e: Exception) -> BundleError:
        """A TVM runtime check as one line naming the stage (no traceback)."""
        lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
        return BundleError(
            f"stage {self.index} ({self.device}) failed: {(lines or [type(e).__name__])[-1][:400]}"
        )

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        fast = self.try_fast(inputs) if hasattr(inputs, "get") else None
        if fast is not None:
            return fast
        try:
            return self._call(inputs)
        except BundleError:
            raise
        except Exception as e:  # a TVM runtime check: one line naming the stage, no traceback
            raise self._failure(e) from e

    def _call(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        arrays = self._checked(inputs)
        if self._buckets:
            rows = int(arrays[0].shape[0])  # dimension 0 of every input is the batch
            for size, bucket in self._buckets:
                if size >= rows:
                    self.bucket_calls[size] = self.bucket_calls.get(size, 0) + 1
                    return bucket._run_rows(arrays, rows)
            self.bucket_calls[0] = self.bucket_calls.get(0, 0) + 1
        if not self._zero_copy:
            return self._run_copied(arrays)
        return self._run_staged(arrays)

    def _run_copied(self, arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
        """Run on checked arrays copied to the device (a device, or symbolic shapes)."""
        import tvm

        # np.ascontiguousarray turns a 0-d array into shape (1,): reshape it back
        args = [
            tvm.runtime.tensor(np.ascontiguousarray(a).reshape(a.shape), self._dev) for a in arrays
        ]
        with self._call_lock:
            result = self._fn(*args, *self._weights)
        outs = [result] if hasattr(result, "numpy") else list(result)
        return {n: r.numpy() for n, r in zip(self._out_names, outs, strict=True)}

    def _run_staged(
        self, arrays: list[np.ndarray], rows: int | None = None
    ) -> dict[str, np.ndarray]:
        """Run on checked arrays copied into the staging buffers (see ``_prepare_call_path``).

        With ``rows`` (a bucket: every input and output has this stage's fixed batch at
        dimension 0), the arrays hold ``rows`` rows: the rest of each buffer is filled with
        copies of the last row (valid data: padding never feeds an embedding a stray index),
        and each output is cut to its first ``rows`` rows.
        """
        with self._call_lock:
            for buf, a in zip(self._staging, arrays, strict=True):
                if buf is a:  # a shared input (share_input) is already in place
                    continue
                if rows is None or rows == buf.shape[0]:
                    np.copyto(buf, a)
                else:
                    buf[:rows] = a
                    buf[rows:] = a[rows - 1 : rows]
            result = self._fn(*self._call_args)
            if hasattr(result, "numpy"):
                flat: Any = (result,)
            elif len(self._out_names) == 1:
                flat = (result[0],)
                self._wrapped_out = True
            else:
                flat = list(result)
            copy_out = self._copy_out or self._learn_copies(flat)
            out = {}
            for name, r, copy in zip(self._out_names, flat, copy_out, strict=True):
                v = np.from_dlpack(r)
                if rows is not None and rows != v.shape[0]:
                    v = v[:rows]  # a C-contiguous prefix: the padded rows' results are dropped
                out[name] = v.copy() if copy else v
            return out

    def _run_rows(self, arrays: list[np.ndarray], rows: int) -> dict[str, np.ndarray]:
        """Run a bucket (this runner, its batch fixed) on ``rows`` <= its batch rows."""
        if self._zero_copy:
            return self._run_staged(arrays, rows)
        size = int(self._in_shapes[0][0])  # other dimensions still symbolic: pad copies
        padded = [
            a
            if rows == size
            else np.concatenate([a, np.repeat(a[rows - 1 : rows], size - rows, 0)])
            for a in arrays
        ]
        return {n: v[:rows] for n, v in self._run_copied(padded).items()}

    def _learn_copies(self, flat: Any) -> tuple[bool, ...]:
        """Which results must be copied (see ``_prepare_call_path``); all of them until known."""
        ptrs = tuple(int(r.data_ptr()) for r in flat)
        if self._first is None:
            self._first = (flat, ptrs)  # kept alive until the next call compares addresses
            return (True,) * len(ptrs)
        _, before = self._first
        self._first = None
        self._copy_out = tuple(
            p == q or int(np.prod(r.shape)) == 0 for p, q, r in zip(ptrs, before, flat, strict=True)
        )
        return (True,) * len(ptrs)

    def time_on_device_s(
        self, inputs: Mapping[str, np.ndarray], number: int = 20, repeat: int = 7
    ) -> list[float]:
        """Seconds per call of the compiled function with inputs already on the device.

        What the cost model predicts for a stage: no host↔device copies, no NumPy conversion.
        Timed by TVM's evaluator (it synchronises the device after each batch of ``number``
        calls); returns the ``repeat`` per-call means.
        """
        timer = self._vm.time_evaluator("main", self._dev, number=number, repeat=repeat)
        return [float(r) for r in timer(*self._device_args(inputs), *self._weights).results]


def _fix_batch(spec: TensorSpec, size: int) -> TensorSpec:
    """``spec`` with dimension 0 (the batch symbol) fixed to ``size``; static if nothing else
    is symbolic."""
    shape = (size, *spec.shape[1:])
    if not any(d < 0 for d in shape[1:]):
        return TensorSpec(spec.name, spec.dtype, shape)
    dims = ("", *spec.dims[1:]) if spec.dims else ()
    bounds = ((size, size), *spec.bounds[1:]) if spec.bounds else ()
    return TensorSpec(spec.name, spec.dtype, shape, dims, bounds)


def _same_tensors(a: list[Any], b: list[Any]) -> bool:
    """True when two lists of TVM tensors hold equal shapes, dtypes and bytes."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if x is y:
            continue
        if tuple(x.shape) != tuple(y.shape) or str(x.dtype) != str(y.dtype):
            return False
        if not np.array_equal(x.numpy(), y.numpy()):
            return False
    return True


def _aligned_empty(shape: tuple[int, ...], dtype: np.dtype[Any], align: int = 64) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on an ``align``-byte boundary."""
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + align, np.uint8)
    offset = (-raw.ctypes.data) % align
    return raw[offset : offset + nbytes].view(dtype).reshape(shape)


def run_pipeline(
    runners: list[StageRunner], inputs: Mapping[str, np.ndarray], outputs: tuple[str, ...]
) -> dict[str, np.ndarray]:
    """Run stages one after another, passing values by name; returns the named graph outputs."""
    env: dict[str, np.ndarray] = dict(inputs)
    for r in runners:
        env.update(r({s.name: env[s.name] for s in r.inputs}))
    return {name: env[name] for name in outputs}


def random_inputs(specs: tuple[TensorSpec, ...], seed: int = 0) -> dict[str, np.ndarray]:
    """Random arrays for ``specs``: floats ~ N(0, 1); integers in {0, 1} (valid token ids,
    masks and indices for any vocabulary); booleans fair coins."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for s in specs:
        dt = np.dtype(s.dtype)
        if dt.kind == "f":
            out[s.name] = rng.standard_normal(s.shape).astype(dt)
        elif dt.kind == "b":
            out[s.name] = rng.integers(0, 2, s.shape).astype(bool)
        else:
            out[s.name] = rng.integers(0, 2, s.shape).astype(dt)
    return out
