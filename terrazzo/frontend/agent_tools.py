"""HTTP and MCP tools for agent programs: one OpenAPI operation or one MCP tool, with timeouts, retries and errors as values.

A spec node::

    - type: http
      name: calc
      openapi: calc_api.yaml      # OpenAPI 3 document (JSON or YAML): servers, paths, operationId
      operation: evaluate         # the operationId to call
      base_url: ${CALC_URL}       # optional; overrides servers[0].url ($VARS expand in the worker)
      param: expr                 # the parameter that receives the node's input, as text
      result: value               # optional: take this field of a JSON response
      timeout_s: 2
      retries: 2

The document is read when the spec is lowered (``terrazzo ir``/``plan``), so an unknown
operation or parameter is refused there, naming the node and field. At serve time
(``terrazzo.runtime.agent_http``) a GET sends the parameter in the query string and a POST as a
JSON body; a timeout, a connection failure or an HTTP error status is retried ``retries``
times and then becomes the node's value ``"error: ..."`` (text), which a ``branch`` can test
(``{of: text, op: startswith, value: error}``) instead of the request failing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from terrazzo.errors import FrontendError
from terrazzo.frontend.agent_schema import AgentNodeEntry
from terrazzo.frontend.agent_spec import NodeSpecBase
from terrazzo.frontend.kinds import LowerContext, Lowered, NodeKind, register_kind
from terrazzo.ir import TensorType

_METHODS = ("get", "post", "put", "delete", "patch")


class HttpToolNode(NodeSpecBase):
    """Call one operation of an HTTP API described by an OpenAPI document."""

    type: Literal["http"]
    openapi: str = Field(description="OpenAPI 3 document (JSON/YAML), relative to the spec")
    operation: str = Field(description="operationId to call")
    param: str = Field(description="parameter (query) or JSON body field that gets the input")
    base_url: str | None = Field(
        default=None, description="overrides the document's servers[0].url; $VARS expand"
    )
    result: str | None = Field(default=None, description="field of a JSON response to return")
    timeout_s: float = Field(default=5.0, gt=0)
    retries: int = Field(default=1, ge=0, le=10)
    latency_s: float = Field(default=0.1, ge=0, description="expected latency for costing")


class HttpToolEntry(AgentNodeEntry):
    device: str
    method: str
    url: str
    path: str
    param: str
    location: str
    result: str | None = None
    timeout_s: float
    retries: int


def read_operation(doc_path: Path, operation: str, param: str, where: str) -> dict[str, Any]:
    """Find ``operation`` in an OpenAPI document: method, path, server URL and where ``param`` goes.

    Raises:
        FrontendError: unreadable document, unknown operation or parameter (naming the field).
    """
    import yaml

    if not doc_path.is_file():
        raise FrontendError(f"{where} field 'openapi': {doc_path} does not exist")
    try:
        doc = yaml.safe_load(doc_path.read_text())
    except yaml.YAMLError as e:
        raise FrontendError(f"{where} field 'openapi': {doc_path} is not YAML/JSON ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("paths"), dict):
        raise FrontendError(f"{where} field 'openapi': {doc_path} has no 'paths'")
    found = []
    for path, item in doc["paths"].items():
        for method, op in (item or {}).items():
            if method in _METHODS and isinstance(op, dict):
                found.append(op.get("operationId"))
                if op.get("operationId") == operation:
                    return _param_info(doc, path, method, op, param, where)
    raise FrontendError(
        f"{where} field 'operation': {operation!r} is not an operationId of {doc_path.name} "
        f"(found: {', '.join(str(f) for f in found if f) or 'none'})"
    )


def _param_info(
    doc: dict[str, Any], path: str, method: str, op: dict[str, Any], param: str, where: str
) -> dict[str, Any]:
    names = [p.get("name") for p in op.get("parameters", []) if isinstance(p, dict)]
    location = "query" if param in names else None
    body = op.get("requestBody", {}).get("content", {}).get("application/json", {})
    props = body.get("schema", {}).get("properties", {}) if isinstance(body, dict) else {}
    if location is None and param in props:
        location = "json"
    if location is None:
        known = [str(n) for n in names] + list(props)
        raise FrontendError(
            f"{where} field 'param': {param!r} is neither a parameter nor a JSON body field of "
            f"{op.get('operationId')!r} (found: {', '.join(known) or 'none'})"
        )
    servers = doc.get("servers") or [{}]
    return {"method": method.upper(), "path": path, "url": str(servers[0].get("url", "")),
            "location": location}  # fmt: skip


def _lower_http(node: HttpToolNode, cx: LowerContext) -> Lowered:
    info = read_operation((cx.base_dir / node.openapi).resolve(), node.operation, node.param,
                          cx.where)  # fmt: skip
    url = node.base_url or info["url"]
    if not url:
        raise FrontendError(f"{cx.where} field 'base_url': the document names no server")
    attrs = {**info, "url": url, "param": node.param, "result": node.result or "",
             "timeout_s": float(node.timeout_s), "retries": int(node.retries),
             "latency_s": float(node.latency_s)}  # fmt: skip
    return Lowered(attrs, TensorType((-1,), "string"))


def http_entry_fields(attrs: dict[str, Any]) -> dict[str, Any]:
    """The plan.json entry fields of an ``http`` op (its attributes)."""
    keys = ("method", "url", "path", "param", "location", "timeout_s", "retries")
    out = {k: attrs[k] for k in keys}
    out["result"] = attrs.get("result") or None
    return out


register_kind(
    NodeKind(
        "http",
        "tool.http",
        HttpToolNode,
        HttpToolEntry,
        _lower_http,
        op_class="tool",
        cpu_only=True,
    )  # fmt: skip
)


class McpToolNode(NodeSpecBase):
    """Call one tool of an MCP server (JSON-RPC 2.0 ``tools/call`` over streamable HTTP)."""

    type: Literal["mcp"]
    url: str = Field(description="the server's MCP endpoint (http://host:port/mcp); $VARS expand")
    tool: str = Field(description="the tool's name")
    argument: str = Field(description="the tool argument that receives the node's input as text")
    timeout_s: float = Field(default=5.0, gt=0)
    retries: int = Field(default=1, ge=0, le=10)
    latency_s: float = Field(default=0.1, ge=0, description="expected latency for costing")


class McpToolEntry(AgentNodeEntry):
    device: str
    url: str
    tool: str
    argument: str
    timeout_s: float
    retries: int


def _lower_mcp(node: McpToolNode, cx: LowerContext) -> Lowered:
    if not node.url.startswith(("http://", "https://", "$")):
        raise FrontendError(f"{cx.where} field 'url': {node.url!r} is not an http(s) URL")
    attrs = {"url": node.url, "tool": node.tool, "argument": node.argument,
             "timeout_s": float(node.timeout_s), "retries": int(node.retries),
             "latency_s": float(node.latency_s)}  # fmt: skip
    return Lowered(attrs, TensorType((-1,), "string"))


register_kind(
    NodeKind(
        "mcp", "tool.mcp", McpToolNode, McpToolEntry, _lower_mcp, op_class="tool", cpu_only=True
    )  # fmt: skip
)

__all__ = [
    "HttpToolEntry",
    "HttpToolNode",
    "McpToolEntry",
    "McpToolNode",
    "http_entry_fields",
    "read_operation",
]
