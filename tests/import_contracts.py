"""A custom import-linter contract: no package imports another package's private (``_x``) modules.

import-linter's own wildcards replace whole module names only (``terrazzo.*._*`` is refused),
so "every private module of every package" needs this small contract type. It is registered in
pyproject.toml (``[tool.importlinter] contract_types``) and runs in ``make lint`` through
``lint-imports``; ``tests/unit/test_import_contracts.py`` shows it failing on a bad import.
"""

from __future__ import annotations

from typing import Any

from importlinter import Contract, ContractCheck, fields, output
from importlinter.application import contract_utils
from importlinter.application.contract_utils import AlertLevel


def owner_package(module: str, depth: int) -> str | None:
    """The package that owns ``module`` when it is private, else None.

    A module is private when a component below the owner (the first ``depth`` + 1 components,
    e.g. ``terrazzo.bundle``) starts with one underscore: ``terrazzo.bundle._read`` and
    ``terrazzo.runtime.protos._pool`` are private to ``terrazzo.bundle`` / ``terrazzo.runtime``.
    """
    parts = module.split(".")
    if len(parts) <= depth + 1:
        return None
    tail = parts[depth + 1 :]
    if any(p.startswith("_") and not p.startswith("__") for p in tail):
        return ".".join(parts[: depth + 1])
    return None


class PrivateModulesContract(Contract):
    """Private modules of a package are imported only from inside that package.

    Configuration options:
        - containers: the packages whose direct children are "packages" here (``terrazzo``).
        - ignore_imports: import expressions to allow, each with a reason in a comment.
        - unmatched_ignore_imports_alerting: none, warn or error (default error).
    """

    type_name = "private_modules"

    containers = fields.ListField(subfield=fields.StringField())
    ignore_imports = fields.SetField(subfield=fields.ImportExpressionField(), required=False)
    unmatched_ignore_imports_alerting = fields.EnumField(AlertLevel, default=AlertLevel.ERROR)

    def check(self, graph: Any, verbose: bool) -> ContractCheck:
        removal = contract_utils.remove_ignored_imports_and_report(
            graph=graph,
            ignore_imports=self.ignore_imports,  # type: ignore[arg-type]
            unmatched_alerting=self.unmatched_ignore_imports_alerting,  # type: ignore[arg-type]
        )
        illegal: list[tuple[str, str, tuple[int, ...]]] = []
        for container in self.containers:  # type: ignore[attr-defined]
            depth = container.count(".") + 1
            for module in sorted(graph.modules):
                if not module.startswith(container + "."):
                    continue
                owner = owner_package(module, depth)
                if owner is None:
                    continue
                for importer in sorted(graph.find_modules_that_directly_import(module)):
                    if importer == owner or importer.startswith(owner + "."):
                        continue
                    details = graph.get_import_details(importer=importer, imported=module)
                    lines = tuple(d["line_number"] for d in details)
                    illegal.append((importer, module, lines))
        return ContractCheck(
            kept=not illegal,
            warnings=list(removal.warnings),
            ignored_import_count=removal.ignored_import_count,
            metadata={"illegal": illegal},
        )

    def render_broken_contract(self, check: ContractCheck) -> None:
        for importer, imported, lines in check.metadata["illegal"]:
            output.print_error(
                f"- {importer} -> {imported} (l.{', '.join(map(str, lines))}): import it from "
                f"its package's __init__ instead",
                bold=False,
            )
            output.new_line()
