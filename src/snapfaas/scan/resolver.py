"""Import alias tracking: turn call expressions into fully qualified names.

``import numpy as np; np.random.rand()`` -> ``numpy.random.rand``;
``from random import random as r; r()`` -> ``random.random``;
``s = boto3.Session(); s.get_credentials()`` -> ``boto3.Session().get_credentials`` (a call in the
middle of a chain is written ``()``).

Names defined in the scanned module itself resolve under the ``<module>`` prefix
(``<module>.fetch_token``, ``<module>.Client().connect``), so the analyzer can follow calls into
them. Bindings are flow-sensitive: the analyzer updates scopes as it walks statements in
execution order, so a later rebinding shadows an import from then on. A name bound to something
the resolver cannot follow (a parameter, a loop variable, an arbitrary expression) is opaque and
resolves to None, which also stops it from matching an import of the same name.
"""

from __future__ import annotations

import ast

LOCAL = "<module>"
_UNBOUND = object()


class Scope:
    """One namespace: the module, a class body, a function call, or a comprehension."""

    __slots__ = ("kind", "parent", "bindings", "constants", "globals")

    def __init__(self, kind: str, parent: Scope | None = None) -> None:
        self.kind = kind  # "module" | "class" | "function" | "comprehension"
        self.parent = parent
        self.bindings: dict[str, str | None] = {}
        self.constants: set[str] = set()  # names currently bound to a constant expression
        self.globals: set[str] = set()  # names declared `global` (function scopes)

    @property
    def module(self) -> Scope:
        scope = self
        while scope.parent is not None:
            scope = scope.parent
        return scope

    def _owner(self, name: str) -> Scope:
        return self.module if name in self.globals else self

    def bind(self, name: str, value: str | None, constant: bool = False) -> None:
        owner = self._owner(name)
        owner.bindings[name] = value
        if constant:
            owner.constants.add(name)
        else:
            owner.constants.discard(name)

    def lookup(self, name: str) -> object:
        """The binding of `name` (a qualified name or None), or `_UNBOUND`."""
        scope: Scope | None = self._owner(name)
        while scope is not None:
            if name in scope.bindings:
                return scope.bindings[name]
            scope = scope.parent
        return _UNBOUND

    def is_local(self, name: str) -> bool:
        """Bound in this function/class scope rather than the module (not declared global)."""
        return self.kind != "module" and name not in self.globals and name in self.bindings

    def is_constant(self, name: str) -> bool:
        scope: Scope | None = self._owner(name)
        while scope is not None:
            if name in scope.bindings:
                return name in scope.constants
            scope = scope.parent
        return False


def qualname(node: ast.AST, scope: Scope) -> str | None:
    """The fully qualified name an expression refers to, or None if it cannot be followed."""
    parts: list[str] = []
    while True:
        if isinstance(node, ast.Attribute):
            parts.append("." + node.attr)
            node = node.value
        elif isinstance(node, ast.Call):
            parts.append("()")
            node = node.func
        elif isinstance(node, ast.Name):
            value = scope.lookup(node.id)
            if value is _UNBOUND:
                head = node.id  # a builtin, or a global the module never binds
            elif value is None:
                return None
            else:
                head = value  # type: ignore[assignment]
            break
        else:
            return None
    parts.reverse()
    return head + "".join(parts)


def root_name(node: ast.AST) -> str | None:
    """The name at the bottom of an attribute/subscript/call chain (``a`` in ``a.b[1].c()``)."""
    while True:
        if isinstance(node, (ast.Attribute, ast.Subscript)):
            node = node.value
        elif isinstance(node, ast.Call):
            node = node.func
        elif isinstance(node, ast.Name):
            return node.id
        else:
            return None


def bind_import(node: ast.Import | ast.ImportFrom, scope: Scope) -> None:
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.asname:
                scope.bind(alias.asname, alias.name)
            else:
                top = alias.name.split(".", 1)[0]
                scope.bind(top, top)
        return
    base = "." * (node.level or 0) + (node.module or "")
    for alias in node.names:
        if alias.name == "*":
            continue
        full = f"{base}.{alias.name}" if base and not base.endswith(".") else base + alias.name
        scope.bind(alias.asname or alias.name, full)


def import_table(tree: ast.Module) -> Scope:
    """A module scope holding only the module's top-level imports (flow-insensitive), for
    questions asked before the walk, such as which decorators register hooks."""
    scope = Scope("module")
    stack: list[ast.stmt] = list(tree.body)
    while stack:
        stmt = stack.pop(0)
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            bind_import(stmt, scope)
        elif isinstance(stmt, (ast.If, ast.Try, ast.With)) or type(stmt).__name__ == "TryStar":
            for field in ("body", "orelse", "handlers", "finalbody"):
                for child in getattr(stmt, field, ()):
                    stack.extend(child.body if isinstance(child, ast.ExceptHandler) else [child])
    return scope


def is_constant_expr(node: ast.AST, scope: Scope) -> bool:
    """A value fixed at build time: literals, arithmetic on them, names bound to them."""
    if isinstance(node, ast.Constant):
        return node.value is not None and node.value is not Ellipsis
    if isinstance(node, ast.UnaryOp):
        return is_constant_expr(node.operand, scope)
    if isinstance(node, ast.BinOp):
        return is_constant_expr(node.left, scope) and is_constant_expr(node.right, scope)
    if isinstance(node, (ast.Tuple, ast.List)):
        return bool(node.elts) and all(is_constant_expr(e, scope) for e in node.elts)
    if isinstance(node, ast.JoinedStr):
        return all(is_constant_expr(v.value if isinstance(v, ast.FormattedValue) else v, scope) for v in node.values)
    if isinstance(node, ast.Name):
        return scope.is_constant(node.id)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("int", "float", "str", "bytes", "hash", "abs"):
        return bool(node.args) and all(is_constant_expr(a, scope) for a in node.args)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "encode":
        return is_constant_expr(node.func.value, scope)
    return False
