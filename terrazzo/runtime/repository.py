"""Model repository: every bundle of a directory behind ONE KServe v2 / Triton gRPC endpoint.

Layout (Triton's): ``DIR/<model>/<version>/model.tzb`` with positive integer versions. For
convenience a flat ``DIR/<model>.tzb`` is version 1 of ``<model>`` (a directory of the same
name wins). The model is served under its directory name and version, whatever name the bundle
was compiled with.

Version policy (Triton's semantics): ``latest`` N (default N = 1), ``all``, or ``specific``
versions. Per model in an optional ``DIR/<model>/config.json`` in the JSON form of Triton's
``version_policy``::

    {"version_policy": {"latest": {"num_versions": 2}}}
    {"version_policy": {"all": {}}}
    {"version_policy": {"specific": {"versions": [1, 3]}}}

or for every model without one by ``--version-policy latest:N|all|specific:1,3``. The same file
may set the model's dynamic batching in Triton's JSON form (``terrazzo.runtime.batch_config``)::

    {"max_batch_size": 8, "dynamic_batching": {"preferred_batch_size": [4, 8],
     "max_queue_delay_microseconds": 500, "priority_levels": 2,
     "default_queue_policy": {"timeout_action": "REJECT", "default_timeout_microseconds": 0}}}

which overrides the server-wide ``--max-batch-size`` flags for that model.

Model control (Triton's ``--model-control-mode``): ``none`` loads every model at start and
refuses load/unload; ``explicit`` loads the ``--load-model`` names at start (``*``: all) and
then whatever RepositoryModelLoad asks for (RepositoryModelUnload stops it); ``poll`` rescans
every ``poll_secs``, loading new models/versions, unloading removed ones and reloading a bundle
whose file changed, and refuses load/unload.

Each loaded version is a ``Server`` of its own (its own stage workers, supervisor and
admission limits) without a port; this front dispatches every RPC by ``model_name`` /
``model_version`` (empty version: the highest loaded), so loading or unloading one model starts
or drains and stops only that model's workers. A newly loaded version serves only once all its
workers are up; an unloaded one leaves the dispatch table first, then drains.

Bad input: an unknown model or version answers NOT_FOUND; a bundle that fails verification
fails its load with the verifier's one line (FAILED_PRECONDITION from RepositoryModelLoad, a log
line at start and while polling) and every other model keeps serving; a malformed config.json
answers INVALID_ARGUMENT naming the field.

HTTP: with ``opts.http_port`` the KServe v2 HTTP/REST front (``terrazzo.runtime.http_front``)
serves this same dispatcher, so every model of the directory answers on both ports.

Metrics: each loaded version keeps its own registry; ``opts.metrics_port`` serves their union
(families merged by name, every sample labelled with its ``model`` and ``version``).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc

from terrazzo import __version__
from terrazzo.errors import ServingError
from terrazzo.runtime.batch_config import BATCHING_FIELDS, batching_from_config
from terrazzo.runtime.batcher import BatchingOptions
from terrazzo.runtime.gateway import (
    EXTENSIONS,
    Gateway,
    HealthService,
    InferError,
    ProtocolMixin,
    ServerSettings,
    SharedMemoryRegistry,
)
from terrazzo.runtime.plan import ServingPlan
from terrazzo.runtime.protos import grpc_service_pb2 as pb
from terrazzo.runtime.protos import grpc_service_pb2_grpc as pb_grpc
from terrazzo.runtime.server import ServeOptions, Server, serve, start_grpc

log = logging.getLogger("terrazzo.runtime")

CONTROL_MODES = ("none", "explicit", "poll")
BUNDLE = "model.tzb"


class ConfigError(ServingError):
    """A malformed model config.json or version policy; the message names the field."""


@dataclass(frozen=True, slots=True)
class VersionPolicy:
    """Which versions of a model to serve: ``latest`` (``num``), ``all`` or ``specific``."""

    kind: str = "latest"
    num: int = 1
    versions: tuple[int, ...] = ()

    def select(self, available: list[int]) -> list[int]:
        ordered = sorted(available)
        if self.kind == "all":
            return ordered
        if self.kind == "specific":
            return [v for v in ordered if v in self.versions]
        return ordered[-self.num :]

    @staticmethod
    def parse_cli(text: str) -> VersionPolicy:
        """``latest[:N]``, ``all`` or ``specific:V1,V2``."""
        kind, _, arg = text.partition(":")
        try:
            if kind == "latest":
                return _checked(VersionPolicy("latest", int(arg) if arg else 1), "--version-policy")
            if kind == "all" and not arg:
                return VersionPolicy("all")
            if kind == "specific" and arg:
                versions = tuple(int(v) for v in arg.split(","))
                return _checked(VersionPolicy("specific", versions=versions), "--version-policy")
        except ValueError:
            pass
        raise ConfigError(
            f"--version-policy must be latest[:N], all or specific:V1,V2; got {text!r}"
        )

    @staticmethod
    def from_json(obj: Any, where: str) -> VersionPolicy:
        """Triton's JSON ``version_policy``; ConfigError names the malformed field."""
        field = f"{where}: version_policy"
        if not isinstance(obj, dict) or len(obj) != 1:
            raise ConfigError(f"{field} must be an object with one of latest, all, specific")
        ((kind, body),) = obj.items()
        if not isinstance(body, dict):
            raise ConfigError(f"{field}.{kind} must be an object")
        if kind == "all":
            return VersionPolicy("all")
        if kind == "latest":
            n = body.get("num_versions", 1)
            if not isinstance(n, int) or isinstance(n, bool):
                raise ConfigError(f"{field}.latest.num_versions must be an integer, got {n!r}")
            return _checked(VersionPolicy("latest", n), f"{field}.latest.num_versions")
        if kind == "specific":
            vs = body.get("versions")
            if not isinstance(vs, list) or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in vs
            ):
                raise ConfigError(f"{field}.specific.versions must be a list of integers")
            return _checked(VersionPolicy("specific", versions=tuple(vs)), f"{field}.specific")
        raise ConfigError(f"{field} has unknown kind {kind!r} (latest, all or specific)")


def _checked(p: VersionPolicy, field: str) -> VersionPolicy:
    if p.kind == "latest" and p.num < 1:
        raise ConfigError(f"{field} must be >= 1, got {p.num}")
    if p.kind == "specific" and (not p.versions or min(p.versions) < 1):
        raise ConfigError(f"{field} needs positive versions, got {list(p.versions)}")
    return p


def scan(root: Path) -> dict[str, dict[int, Path]]:
    """Models found under ``root``: name -> version -> bundle path."""
    found: dict[str, dict[int, Path]] = {}
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            versions = {
                int(v.name): v / BUNDLE
                for v in entry.iterdir()
                if v.is_dir() and v.name.isdigit() and int(v.name) > 0 and (v / BUNDLE).is_file()
            }
            if versions:
                found[entry.name] = versions
        elif entry.suffix == ".tzb" and entry.is_file():
            found.setdefault(entry.stem, {1: entry})
    return found


def read_policy(root: Path, name: str, default: VersionPolicy) -> VersionPolicy:
    """The version policy of ``name``: its config.json's, else ``default``."""
    cfg = root / name / "config.json"
    if not cfg.is_file():
        return default
    try:
        text = cfg.read_text()
    except OSError as e:
        raise ConfigError(f"{name}/config.json: cannot read ({e.strerror})") from None
    return parse_config(text, name, f"{name}/config.json", default)


def parse_config(text: str, name: str, where: str, default: VersionPolicy) -> VersionPolicy:
    """A model config in JSON (config.json, or the ``config`` of a load request)."""
    try:
        obj = json.loads(text)
    except ValueError as e:
        raise ConfigError(f"{where}: not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"{where}: must be a JSON object")
    unknown = sorted(set(obj) - {"name", "version_policy", *BATCHING_FIELDS})
    if unknown:
        raise ConfigError(f"{where}: unknown field {unknown[0]!r}")
    if "name" in obj and obj["name"] != name:
        raise ConfigError(f"{where}: name {obj['name']!r} differs from the model's {name!r}")
    batching_from_config(obj, where)  # a malformed batching field fails here, naming it
    if "version_policy" not in obj:
        return default
    return VersionPolicy.from_json(obj["version_policy"], where)


def read_batching(root: Path, name: str, config: str | None) -> BatchingOptions | None:
    """The dynamic batching of ``name`` from ``config`` (a load request's) or its config.json;
    None when neither names any (the server-wide default applies). Called after
    ``parse_config`` accepted the same text."""
    where = "load config"
    if config is None:
        cfg = root / name / "config.json"
        if not cfg.is_file():
            return None
        config, where = cfg.read_text(), f"{name}/config.json"
    return batching_from_config(json.loads(config), where)


@dataclass(slots=True)
class _Loaded:
    server: Server
    path: Path
    mtime: float
    batching: BatchingOptions | None = None  # its config.json's (a change reloads it)


class ModelRepository(ProtocolMixin, pb_grpc.GRPCInferenceServiceServicer):
    """Serves a model repository directory over one gRPC endpoint (see the module docstring)."""

    def __init__(
        self,
        root: str | Path,
        opts: ServeOptions,
        *,
        control_mode: str = "none",
        load_models: tuple[str, ...] = (),
        poll_secs: float = 15.0,
        default_policy: VersionPolicy = VersionPolicy(),
        trust_key: Any = None,
        allow_unsigned: bool = False,
        model_options: dict[str, Any] | None = None,
    ):
        self.root = Path(root)
        if not self.root.is_dir():
            raise ServingError(f"model repository {str(root)!r} is not a directory")
        if control_mode not in CONTROL_MODES:
            raise ServingError(
                f"--model-control-mode must be one of {', '.join(CONTROL_MODES)}; "
                f"got {control_mode!r}"
            )
        if not poll_secs > 0:
            raise ServingError(f"--repository-poll-secs must be > 0, got {poll_secs!r}")
        self.opts = opts
        self.control_mode = control_mode
        self.load_models = load_models
        self.poll_secs = poll_secs
        self.default_policy = default_policy
        self.trust_key = trust_key
        self.allow_unsigned = allow_unsigned
        self.model_options = dict(model_options or {})
        self.shm = SharedMemoryRegistry()
        self.settings = ServerSettings.defaults()
        self.draining = threading.Event()
        self._lock = threading.Lock()  # guards _models and _reasons (the dispatch table)
        self._model_locks: dict[str, threading.Lock] = {}
        self._models: dict[str, dict[int, _Loaded]] = {}
        self._reasons: dict[str, str] = {}  # model -> why it is not loaded (last failure)
        self._stop = threading.Event()
        self._stop_lock = threading.Lock()
        self._stopped = False
        self._grpc: grpc.Server | None = None
        self._poller: threading.Thread | None = None
        self._metrics_http: Any = None
        self._http: Any = None
        self.port = 0
        self.metrics_port: int | None = None
        self.http_port: int | None = None

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> ModelRepository:
        """Load the initial models (a failure is logged; the others serve) and listen."""
        on_disk = scan(self.root)
        if self.control_mode == "explicit":
            names = list(on_disk) if "*" in self.load_models else list(self.load_models)
            missing = [n for n in names if n not in on_disk]
            if missing:
                raise ServingError(f"--load-model {missing[0]!r}: no such model in {self.root}")
        else:
            names = list(on_disk)
        for name in names:
            try:
                self.load(name)
            except (InferError, ServingError) as e:
                log.error("model %s not loaded: %s", name, e)
        self._grpc, self.port = start_grpc(self, HealthService(self), self.opts)  # type: ignore[arg-type]
        if self.opts.http_port is not None:  # KServe v2 HTTP/REST over this same dispatcher
            from terrazzo.runtime.http_front import HTTPFront

            self._http = HTTPFront(
                self,  # type: ignore[arg-type]
                self.opts.host,
                self.opts.http_port,
                token=self.opts.token,
                tls=self.opts.tls,
                max_body_bytes=self.opts.max_message_bytes,
                max_connections=self.opts.max_rpcs,
            )
            self.http_port = self._http.port
        if self.opts.metrics_port is not None:
            from prometheus_client import CollectorRegistry, start_http_server

            registry = CollectorRegistry(auto_describe=False)
            registry.register(_MergedMetrics(self))  # type: ignore[arg-type]
            try:
                self._metrics_http, _ = start_http_server(
                    self.opts.metrics_port, addr=self.opts.host, registry=registry
                )
            except OSError as e:
                raise ServingError(
                    f"cannot serve /metrics on port {self.opts.metrics_port}: {e}"
                ) from e
            self.metrics_port = self._metrics_http.server_port
        if self.control_mode == "poll":
            self._poller = threading.Thread(target=self._poll, name="tz-repo-poll", daemon=True)
            self._poller.start()
        return self

    def stop(self, drain_timeout_s: float | None = None) -> None:
        """Refuse new requests, drain and stop every model, close the endpoint (idempotent)."""
        with self._stop_lock:  # a second caller waits for the first stop to finish
            if not self._stopped:
                self._stop_now(drain_timeout_s)
                self._stopped = True

    def _stop_now(self, drain_timeout_s: float | None) -> None:
        self.draining.set()
        self._stop.set()
        with self._lock:
            loaded = [m for versions in self._models.values() for m in versions.values()]
            self._models.clear()
        for m in loaded:
            m.server.stop(drain_timeout_s)
        if self._grpc is not None:
            self._grpc.stop(1.0).wait()
        if self._http is not None:
            self._http.stop()
        if self._poller is not None:
            self._poller.join(timeout=5)
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()
        self.shm.close()

    def __enter__(self) -> ModelRepository:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait(self) -> None:
        while not self._stop.wait(0.5):
            pass

    # -- loading -------------------------------------------------------------------------
    def _model_lock(self, name: str) -> threading.Lock:
        with self._lock:
            return self._model_locks.setdefault(name, threading.Lock())

    def servers(self) -> list[tuple[str, int, Server]]:
        """(model, version, Server) of every loaded version."""
        with self._lock:
            return [
                (n, v, m.server)
                for n, vs in sorted(self._models.items())
                for v, m in sorted(vs.items())
            ]

    def loaded(self) -> dict[str, list[int]]:
        with self._lock:
            return {n: sorted(v) for n, v in self._models.items() if v}

    def load(self, name: str, config: str | None = None) -> list[int]:
        """(Re)load ``name`` by its version policy (``config``: a JSON model config that
        overrides config.json for this load); returns the versions now served.

        New versions start before the table changes; versions the policy drops leave the
        table, then drain. Raises InferError (NOT_FOUND, INVALID_ARGUMENT, FAILED_PRECONDITION).
        """
        with self._model_lock(name):
            on_disk = scan(self.root).get(name)
            if not on_disk:
                raise InferError(
                    grpc.StatusCode.NOT_FOUND, f"no model named {name!r} in {self.root}"
                )
            try:
                policy = (
                    read_policy(self.root, name, self.default_policy)
                    if config is None
                    else parse_config(config, name, "load config", self.default_policy)
                )
                batching = read_batching(self.root, name, config)
            except ConfigError as e:
                self._reasons[name] = str(e)
                raise InferError(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None
            wanted = policy.select(list(on_disk))
            if not wanted:
                raise InferError(
                    grpc.StatusCode.NOT_FOUND,
                    f"model {name!r}: no version on disk matches its version policy",
                )
            with self._lock:
                current = dict(self._models.get(name, {}))
            started: dict[int, _Loaded] = {}
            try:
                for v in wanted:
                    path = on_disk[v]
                    mtime = path.stat().st_mtime
                    have = current.get(v)
                    if (
                        have is not None
                        and have.path == path
                        and have.mtime == mtime
                        and have.batching == batching
                    ):
                        continue
                    started[v] = _Loaded(
                        self._start_version(name, v, path, batching), path, mtime, batching
                    )
            except InferError as e:
                for m in started.values():
                    m.server.stop(0)
                self._reasons[name] = str(e)
                raise
            keep = {v: current[v] for v in wanted if v in current and v not in started}
            with self._lock:
                self._models[name] = {**keep, **started}
                self._reasons.pop(name, None)
            for v, m in current.items():
                if v not in keep:
                    m.server.gateway.drain_reason = f"model {name!r} version {v} was replaced"
                    m.server.stop()
            return sorted(wanted)

    def _start_version(
        self, name: str, version: int, path: Path, batching: BatchingOptions | None = None
    ) -> Server:
        try:
            plan = ServingPlan.from_bundle(
                path, trust_key=self.trust_key, allow_unsigned=self.allow_unsigned
            )
        except Exception as e:  # BundleError and friends: the verifier's one line
            raise InferError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"model {name!r} version {version}: {str(e).splitlines()[0] if str(e) else e}",
            ) from None
        plan = replace(plan, model_name=name, version=str(version))
        o = self.opts
        options = dict(self.model_options)
        if batching is not None:  # the model's config.json wins over the server-wide flags
            options["batching"] = batching
        if options.get("stage_in_gateway") and len(plan.stages) != 1:
            options.pop("stage_in_gateway")  # multi-stage models keep their workers
        try:
            return serve(
                plan,
                listen=False,
                shm_registry=self.shm,
                server_settings=self.settings,
                replicas=o.replicas,
                token=None,
                ray_address=o.ray_address,
                default_timeout_s=o.default_timeout_s,
                max_message_bytes=o.max_message_bytes,
                max_queue=o.max_queue,
                max_inflight_bytes=o.max_inflight_bytes,
                stage_timeout_s=o.stage_timeout_s,
                max_restarts=o.max_restarts,
                internal_tls=o.internal_tls,
                **options,
            )
        except ServingError as e:
            raise InferError(
                grpc.StatusCode.FAILED_PRECONDITION, f"model {name!r} version {version}: {e}"
            ) from None

    def unload(self, name: str) -> None:
        """Take every version of ``name`` out of the table, then drain and stop its workers."""
        with self._model_lock(name):
            with self._lock:
                gone = self._models.pop(name, None)
            if not gone:
                raise InferError(grpc.StatusCode.NOT_FOUND, f"model {name!r} is not loaded")
            for v, m in gone.items():
                m.server.gateway.drain_reason = f"model {name!r} version {v} is being unloaded"
                m.server.stop()

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_secs):
            on_disk = scan(self.root)
            for name in on_disk:
                try:
                    self.load(name)
                except InferError as e:
                    log.error("model %s not (re)loaded: %s", name, e)
            for name in [n for n in self.loaded() if n not in on_disk]:
                try:
                    self.unload(name)
                except InferError:
                    pass

    # -- dispatch ------------------------------------------------------------------------
    def gateway(self, name: str, version: str = "") -> Gateway:
        """The gateway serving ``name``/``version`` (empty: the highest loaded) or NOT_FOUND."""
        with self._lock:
            versions = self._models.get(name)
            if versions and not version:
                return versions[max(versions)].server.gateway
            if versions and version.isdigit() and int(version) in versions:
                return versions[int(version)].server.gateway
        raise InferError(
            grpc.StatusCode.NOT_FOUND,
            f"unknown model {name!r}" + (f" version {version!r}" if version else ""),
        )

    def _gw(self, name: str, version: str, context) -> Gateway:
        try:
            return self.gateway(name, version)
        except InferError as e:
            context.abort(e.code, str(e))
            raise  # unreachable: abort raises

    def server_ready(self) -> bool:
        with self._lock:
            servers = [m.server for vs in self._models.values() for m in vs.values()]
        return not self.draining.is_set() and all(s.gateway.model_ready() for s in servers)

    # -- RPCs ----------------------------------------------------------------------------
    def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)  # type: ignore[attr-defined]

    def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.server_ready())  # type: ignore[attr-defined]

    def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(  # type: ignore[attr-defined]
            name="terrazzo",
            version=__version__,
            extensions=["model_repository", "model_repository(unload_dependents)", *EXTENSIONS],
        )

    def ModelReady(self, request, context):
        try:
            gw = self.gateway(request.name, request.version)
        except InferError:
            return pb.ModelReadyResponse(ready=False)  # type: ignore[attr-defined]
        return pb.ModelReadyResponse(ready=gw.model_ready() and not self.draining.is_set())  # type: ignore[attr-defined]

    def ModelMetadata(self, request, context):
        gw = self._gw(request.name, request.version, context)
        resp = gw.ModelMetadata(pb.ModelMetadataRequest(name=gw.plan.model_name), context)  # type: ignore[attr-defined]
        if not request.version:
            del resp.versions[:]
            resp.versions.extend(str(v) for v in self.loaded().get(request.name, []))
        return resp

    def ModelConfig(self, request, context):
        gw = self._gw(request.name, request.version, context)
        return gw.ModelConfig(pb.ModelConfigRequest(name=gw.plan.model_name), context)  # type: ignore[attr-defined]

    def ModelStatistics(self, request, context):
        resp = pb.ModelStatisticsResponse()  # type: ignore[attr-defined]
        if request.name:
            gws = [self._gw(request.name, request.version, context)]
            if not request.version:
                with self._lock:
                    gws = [
                        m.server.gateway
                        for _, m in sorted(self._models.get(request.name, {}).items())
                    ]
        else:
            with self._lock:
                gws = [
                    m.server.gateway
                    for _, vs in sorted(self._models.items())
                    for _, m in sorted(vs.items())
                ]
        for gw in gws:
            gw.model_statistics(resp.model_stats.add())
        return resp

    def ModelInfer(self, request, context):
        try:
            return self.gateway(request.model_name, request.model_version).infer(request, context)
        except InferError as e:
            context.abort(e.code, str(e))

    def ModelStreamInfer(self, request_iterator, context) -> Iterator[Any]:
        for request in request_iterator:
            try:
                gw = self.gateway(request.model_name, request.model_version)
                yield pb.ModelStreamInferResponse(infer_response=gw.infer(request, context))  # type: ignore[attr-defined]
            except InferError as e:
                yield pb.ModelStreamInferResponse(error_message=f"{e.code.name}: {e}")  # type: ignore[attr-defined]

    def RepositoryIndex(self, request, context):
        resp = pb.RepositoryIndexResponse()  # type: ignore[attr-defined]
        loaded = self.loaded()
        for name, versions in scan(self.root).items():
            for v in sorted(versions):
                if v in loaded.get(name, []):
                    resp.models.add(name=name, version=str(v), state="READY")
                elif not request.ready:
                    reason = self._reasons.get(name, "")
                    resp.models.add(name=name, version=str(v), state="UNAVAILABLE", reason=reason)
        return resp

    def _control(self, context, what: str) -> None:
        if self.control_mode != "explicit":
            context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"explicit model {what} is not allowed in model control mode "
                f"{self.control_mode!r} (serve with --model-control-mode explicit)",
            )

    def RepositoryModelLoad(self, request, context):
        self._control(context, "load")
        t0 = time.monotonic()
        p = request.parameters.get("config")
        config = p.string_param if p is not None and p.HasField("string_param") else None
        try:
            versions = self.load(request.model_name, config)
        except InferError as e:
            context.abort(e.code, str(e))
        log.warning(
            "model %s loaded (versions %s) in %.1f s",
            request.model_name,
            versions,
            time.monotonic() - t0,
        )
        return pb.RepositoryModelLoadResponse()  # type: ignore[attr-defined]

    def RepositoryModelUnload(self, request, context):
        self._control(context, "unload")
        try:
            self.unload(request.model_name)
        except InferError as e:
            context.abort(e.code, str(e))
        return pb.RepositoryModelUnloadResponse()  # type: ignore[attr-defined]


class _MergedMetrics:
    """A prometheus collector over every loaded model's registry (see the module docstring)."""

    def __init__(self, repo: ModelRepository):
        self.repo = repo

    def collect(self) -> Iterator[Any]:
        from prometheus_client.metrics_core import Metric

        families: dict[str, Any] = {}
        for name, version, server in self.repo.servers():
            for fam in server.metrics.registry.collect():
                merged = families.get(fam.name)
                if merged is None:
                    merged = families[fam.name] = Metric(
                        fam.name, fam.documentation, fam.type, fam.unit
                    )
                for sample in fam.samples:
                    labels = {"model": name, **sample.labels, "version": str(version)}
                    merged.samples.append(sample._replace(labels=labels))
        yield from families.values()


def serve_repository(root: str | Path, opts: ServeOptions, **kwargs: Any) -> ModelRepository:
    """Start serving a model repository directory; see ``ModelRepository`` for ``kwargs``."""
    repo = ModelRepository(root, opts, **kwargs)
    try:
        repo.start()
    except BaseException:
        repo.stop(drain_timeout_s=0)
        raise
    return repo
