"""The AST walk: find snapshot-unsafe calls in code that runs at init.

Init-time code is what runs while the module is imported, i.e. before the snapshot:

* the module body (including ``if``/``try``/``with``/``for`` blocks), except the body of
  ``if __name__ == "__main__":`` and ``if TYPE_CHECKING:``;
* class bodies, decorators, default argument values, base-class expressions;
* bodies of functions of the same module that init-time code calls, transitively: plain
  functions, classes (their ``__new__``/``__init__``/``__post_init__``), methods reached through
  ``self``, ``cls``, ``super()`` or an instance bound to a module-level name.

Function bodies that are never called at init (handlers, callbacks, thread targets) and lambda
bodies are not init-time. The walk follows execution order so that name bindings (imports,
aliases, assignments) are flow-sensitive, and visits each function at most once per distinct set
of storage targets.

Each finding records the module-level names ("targets") its state is stored in: ``X = f()``
stores into ``X``; ``X.attr = f()`` and ``X.update(f())`` into ``X``; in a function, an assignment
to a ``global`` name into that name, anything else into whatever the call site stores the
function's result in. After-restore hooks registered in the module (decorated with
``snapshot_restore_py.register_after_restore`` or passed to it) are walked the same way to learn
which globals they re-bind or mutate and which APIs they call: a finding whose target a hook
re-binds (or mutates while calling the rule's API) is suppressed; one that a hook only might
re-create is downgraded to info.
"""

from __future__ import annotations

import ast
import dataclasses
import io
import tokenize

from snapfaas.scan import rules as R
from snapfaas.scan.findings import Finding
from snapfaas.scan.resolver import LOCAL, Scope, bind_import, is_constant_expr, qualname, root_name
from snapfaas.scan.rules import Severity

Key = tuple[str, int, int]  # (rule id, line, column) of a finding
MAX_CALL_DEPTH = 40
SNIPPET_CHARS = 160
_COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)
_FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)
# Methods that use their arguments without keeping them (logging, output): ``log.info(time.time())``.
_NON_STORING = frozenset({"debug", "info", "warning", "warn", "error", "exception", "critical", "log", "print",
                          "write", "writelines", "flush", "send", "sendall", "emit", "sleep"})
_FINISHERS = frozenset({"close", "shutdown", "dispose", "wait", "communicate", "join", "terminate", "kill"})


class Frame:
    """Where the walk is: a scope plus what stores made here are attributed to."""

    __slots__ = ("scope", "targets", "where", "prefix", "owner", "self_value", "body", "taint", "collect")

    def __init__(self, scope: Scope, targets: tuple[str, ...], where: str, prefix: str,
                 owner: str | None = None, self_value: str | None = None, body: list[ast.stmt] | None = None,
                 taint: dict[str, set[Key]] | None = None) -> None:
        self.scope = scope
        self.targets = targets  # default storage targets of values computed here
        self.where = where  # for messages
        self.prefix = prefix  # qualified-name prefix of definitions made here
        self.owner = owner  # class whose method this is (for super())
        self.self_value = self_value
        self.body = body if body is not None else []  # the statements of this module/class/function
        # Function frames: the findings whose values each local variable holds, so that a local
        # later stored into a global (``CLIENTS.append(conn)``) carries that target to them.
        self.taint = taint
        self.collect: set[Key] | None = None  # while evaluating a value stored in a local


@dataclasses.dataclass
class Hook:
    qual: str
    node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda
    line: int
    scope: Scope | None = None  # for lambdas: where they were written

    @property
    def label(self) -> str:
        return display(self.qual) + "()" if not self.qual.startswith("<lambda") else "lambda"


@dataclasses.dataclass
class Effects:
    calls: list[str] = dataclasses.field(default_factory=list)
    assigned: set[str] = dataclasses.field(default_factory=set)  # globals re-bound
    touched: set[str] = dataclasses.field(default_factory=set)  # globals mutated or called methods on


def display(qual: str) -> str:
    return qual[len(LOCAL) + 1:] if qual.startswith(LOCAL + ".") else qual


def is_registrar(qual: str | None) -> bool:
    return qual is not None and (qual in R.AFTER_RESTORE or qual.rsplit(".", 1)[-1] == R.HOOK_REGISTRAR_NAME)


def _guard_skips_body(test: ast.expr) -> bool:
    """``if __name__ == "__main__":`` and ``if TYPE_CHECKING:`` bodies do not run at import."""
    if isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq):
        sides = (test.left, test.comparators[0])
        names = [s.id for s in sides if isinstance(s, ast.Name)]
        consts = [s.value for s in sides if isinstance(s, ast.Constant)]
        return names == ["__name__"] and consts == ["__main__"]
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


class ModuleAnalyzer:
    def __init__(self, tree: ast.Module, path: str, text: str) -> None:
        self.tree = tree
        self.path = path
        self.text = text
        self.lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        self.module = Scope("module")
        self.defs: dict[str, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef] = {}
        self.def_scopes: dict[str, Scope] = {}
        self.class_bases: dict[str, list[str]] = {}
        self.hooks: list[Hook] = []
        self.found: dict[Key, Finding] = {}
        self.emitted: list[Key] = []  # every emit, in order (repeats included): what a value produced
        self.consumed: set[int] = set()  # calls already reported as part of an enclosing finding
        self.closed: set[int] = set()  # connection-creating calls whose result is closed again at init
        self.walked: dict[str, set[Key]] = {}  # function -> findings its walk produced (callees included)
        self.stack: list[str] = []
        self.effects: Effects | None = None  # set while collecting what a hook does
        self.statement: ast.stmt | None = None  # the statement being walked (for code snippets)

    # -- entry point -----------------------------------------------------------------------
    def run(self) -> tuple[list[Finding], list[Finding]]:
        """Return (reported, suppressed) findings."""
        self.block(self.tree.body, Frame(self.module, (), "module level", LOCAL + ".", body=self.tree.body))
        # A value that never reaches module-level state (logged, compared, dropped) is harmless.
        kept = (f for f in self.found.values() if f.targets or not R.BY_ID[f.rule].needs_state)
        findings = sorted(kept, key=lambda f: (f.line, f.col, f.rule))
        if not findings:
            return [], []
        self._apply_ignore_comments(findings)
        self._apply_hooks(findings)
        return [f for f in findings if not f.suppressed], [f for f in findings if f.suppressed]

    # -- statements ------------------------------------------------------------------------
    def block(self, body: list[ast.stmt], frame: Frame) -> None:
        for node in body:
            self.stmt(node, frame)

    def stmt(self, node: ast.stmt, frame: Frame) -> None:
        outer, self.statement = self.statement, node
        try:
            self._stmt(node, frame)
        finally:
            self.statement = outer

    def _stmt(self, node: ast.stmt, frame: Frame) -> None:
        t = type(node)
        if t is ast.Expr:
            self.expr(node.value, frame, self._call_targets(node.value, frame))  # type: ignore[attr-defined]
        elif t is ast.Assign:
            value = node.value  # type: ignore[attr-defined]
            if len(node.targets) == 1 and isinstance(node.targets[0], ast.Name) and isinstance(value, ast.Call):  # type: ignore[attr-defined]
                self._note_closed(node.targets[0].id, value, frame)  # type: ignore[attr-defined]
            self.stored(value, node.targets, frame)  # type: ignore[attr-defined]
            for target in node.targets:  # type: ignore[attr-defined]
                self.assign(target, value, frame)
        elif t is ast.AnnAssign or t is ast.AugAssign:
            value = node.value  # type: ignore[attr-defined]
            if value is not None:
                self.stored(value, [node.target], frame)  # type: ignore[attr-defined]
                self.assign(node.target, value if t is ast.AnnAssign else None, frame)  # type: ignore[attr-defined]
        elif t in _FUNCTIONS:
            self.define_function(node, frame)  # type: ignore[arg-type]
        elif t is ast.ClassDef:
            self.define_class(node, frame)  # type: ignore[arg-type]
        elif t is ast.If:
            if _guard_skips_body(node.test):  # type: ignore[attr-defined]
                self.block(node.orelse, frame)  # type: ignore[attr-defined]
                return
            self.expr(node.test, frame, frame.targets)  # type: ignore[attr-defined]
            self.block(node.body, frame)  # type: ignore[attr-defined]
            self.block(node.orelse, frame)  # type: ignore[attr-defined]
        elif t is ast.For or t is ast.AsyncFor:
            self.expr(node.iter, frame, self._store_targets([node.target], frame))  # type: ignore[attr-defined]
            self.assign(node.target, None, frame)  # type: ignore[attr-defined]
            self.block(node.body, frame)  # type: ignore[attr-defined]
            self.block(node.orelse, frame)  # type: ignore[attr-defined]
        elif t is ast.While:
            self.expr(node.test, frame, frame.targets)  # type: ignore[attr-defined]
            self.block(node.body, frame)  # type: ignore[attr-defined]
            self.block(node.orelse, frame)  # type: ignore[attr-defined]
        elif t is ast.With or t is ast.AsyncWith:
            for item in node.items:  # type: ignore[attr-defined]
                store = item.optional_vars
                if isinstance(item.context_expr, ast.Call):
                    self.closed.add(id(item.context_expr))  # closed when the block ends
                if store is not None:
                    self.stored(item.context_expr, [store], frame)
                else:
                    self.expr(item.context_expr, frame, frame.targets)
                if store is not None:
                    self.assign(store, item.context_expr, frame)
            self.block(node.body, frame)  # type: ignore[attr-defined]
        elif t is ast.Try or t.__name__ == "TryStar":
            self.block(node.body, frame)  # type: ignore[attr-defined]
            for handler in node.handlers:  # type: ignore[attr-defined]
                if handler.type is not None:
                    self.expr(handler.type, frame, frame.targets)
                if handler.name:
                    frame.scope.bind(handler.name, None)
                self.block(handler.body, frame)
            self.block(node.orelse, frame)  # type: ignore[attr-defined]
            self.block(node.finalbody, frame)  # type: ignore[attr-defined]
        elif t is ast.Match:
            self.expr(node.subject, frame, frame.targets)  # type: ignore[attr-defined]
            for case in node.cases:  # type: ignore[attr-defined]
                if case.guard is not None:
                    self.expr(case.guard, frame, frame.targets)
                self.block(case.body, frame)
        elif t is ast.Import or t is ast.ImportFrom:
            bind_import(node, frame.scope)  # type: ignore[arg-type]
        elif t is ast.Global:
            frame.scope.globals.update(node.names)  # type: ignore[attr-defined]
        elif t is ast.Return:
            if node.value is not None:  # type: ignore[attr-defined]
                self.expr(node.value, frame, frame.targets)  # type: ignore[attr-defined]
        elif t is ast.Delete or t is ast.Pass or t is ast.Break or t is ast.Continue or t is ast.Nonlocal:
            return
        else:  # Raise, Assert, TypeAlias, ...
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.expr):
                    self.expr(child, frame, frame.targets)

    def _is_global(self, name: str, frame: Frame) -> bool:
        scope = frame.scope
        if scope.kind == "module":
            return True
        if name in scope.globals:
            return True
        if scope.kind == "class":
            return False
        # a function: a name it never bound (parameters and locals are bound) is a global
        s: Scope | None = scope
        while s is not None and s.kind != "module":
            if name in s.bindings:
                return False
            s = s.parent
        return True

    def _store_targets(self, nodes: list[ast.expr], frame: Frame) -> tuple[str, ...]:
        """Module-level names a value stored into `nodes` ends up in."""
        names: list[str] = []
        todo = list(nodes)
        while todo:
            node = todo.pop()
            if isinstance(node, (ast.Tuple, ast.List)):
                todo.extend(node.elts)
                continue
            if isinstance(node, ast.Starred):
                todo.append(node.value)
                continue
            if frame.scope.kind == "class":
                names.extend(frame.targets)
                continue
            name = node.id if isinstance(node, ast.Name) else root_name(node)
            if name is not None and (frame.scope.kind == "module" or name in frame.scope.globals
                                     or (not isinstance(node, ast.Name) and self._is_global(name, frame))):
                names.append(name)
            else:
                names.extend(frame.targets)
            if self.effects is not None and name is not None:
                if isinstance(node, ast.Name):
                    if frame.scope.kind == "module" or name in frame.scope.globals:
                        self.effects.assigned.add(name)
                elif self._is_global(name, frame):
                    self.effects.touched.add(name)
        return tuple(dict.fromkeys(names))

    def _holds_state(self, name: str, frame: Frame) -> bool:
        """Whether a global name holds state (an object) rather than naming a module or function."""
        if not self._is_global(name, frame):
            return False
        value = frame.scope.lookup(name)
        if value is None:
            return True  # bound to something opaque: data
        if not isinstance(value, str):
            return False  # never bound here: a builtin
        return "()" in value or (value.startswith(LOCAL + ".") and isinstance(self.defs.get(value), ast.ClassDef))

    def _call_targets(self, value: ast.expr, frame: Frame) -> tuple[str, ...]:
        """``X.update(...)`` as a statement stores into X."""
        if (isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute) and frame.scope.kind != "class"
                and value.func.attr not in _NON_STORING):
            name = root_name(value.func.value)
            if name is not None and self._holds_state(name, frame):
                return (name,)
        return frame.targets

    def stored(self, value: ast.expr, stores: list[ast.expr], frame: Frame) -> None:
        """Evaluate `value`, which is stored into `stores` (assignment targets)."""
        targets = self._store_targets(stores, frame)
        if frame.taint is None:
            self.expr(value, frame, targets)
            return
        local = [n.id for n in _flatten(stores) if isinstance(n, ast.Name) and n.id not in frame.scope.globals]
        if not local:
            self.expr(value, frame, targets)
            return
        mark, outer = len(self.emitted), frame.collect
        frame.collect = set()
        try:
            self.expr(value, frame, targets)
            held = set(self.emitted[mark:]) | frame.collect
        finally:
            frame.collect = outer
        if outer is not None:
            outer |= held
        for name in local:
            frame.taint[name] = held

    def _attach(self, keys: set[Key], targets: tuple[str, ...]) -> None:
        extra = frozenset(targets)
        for key in keys:
            finding = self.found.get(key)
            if finding is not None and not extra <= finding.targets:
                finding.targets = finding.targets | extra

    def _note_closed(self, name: str, value: ast.Call, frame: Frame) -> None:
        """``s = socket.socket(); ...; s.close()`` (or ``p = Popen(...); p.wait()``) in the same
        body: nothing is left open or running after init."""
        if self.effects is not None:
            return
        qual = qualname(value.func, frame.scope)
        if qual not in R.NETWORK and qual not in R.BACKGROUND:
            return
        for stmt in frame.body:
            for node in ast.walk(stmt):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr in _FINISHERS and isinstance(node.func.value, ast.Name)
                        and node.func.value.id == name):
                    self.closed.add(id(value))
                    return

    def assign(self, target: ast.expr, value: ast.expr | None, frame: Frame) -> None:
        if isinstance(target, ast.Name):
            qual = qualname(value, frame.scope) if isinstance(value, (ast.Name, ast.Attribute, ast.Call)) else None
            frame.scope.bind(target.id, qual, constant=value is not None and is_constant_expr(value, frame.scope))
        elif isinstance(target, (ast.Tuple, ast.List)):
            for elt in target.elts:
                self.assign(elt, None, frame)
        elif isinstance(target, ast.Starred):
            self.assign(target.value, None, frame)

    def define_function(self, node: ast.FunctionDef | ast.AsyncFunctionDef, frame: Frame) -> None:
        qual = frame.prefix + node.name
        targets = (node.name,) if frame.scope.kind == "module" else frame.targets
        for default in [*node.args.defaults, *node.args.kw_defaults]:
            if default is not None:
                self.expr(default, frame, targets)
        decorators = []
        for decorator in node.decorator_list:
            self.expr(decorator, frame, targets)
            decorators.append(qualname(decorator, frame.scope))
        self.defs[qual] = node
        scope = frame.scope
        while scope.kind == "class" and scope.parent is not None:
            scope = scope.parent
        self.def_scopes[qual] = scope
        frame.scope.bind(node.name, qual)
        for dq in decorators:
            if is_registrar(dq):
                if self.effects is None:
                    self.hooks.append(Hook(qual, node, node.lineno))
            elif dq is not None and dq.startswith(LOCAL + ".") and isinstance(self.defs.get(dq), _FUNCTIONS):
                self.run_function(dq, self.defs[dq], targets)  # type: ignore[arg-type]

    def define_class(self, node: ast.ClassDef, frame: Frame) -> None:
        qual = frame.prefix + node.name
        targets = (node.name,) if frame.scope.kind == "module" else frame.targets
        bases = []
        for base in node.bases:
            self.expr(base, frame, targets)
            bases.append(qualname(base, frame.scope))
        for kw in node.keywords:
            self.expr(kw.value, frame, targets)
        for decorator in node.decorator_list:
            self.expr(decorator, frame, targets)
        self.defs[qual] = node
        self.class_bases[qual] = [b for b in bases if b]
        body_frame = Frame(Scope("class", frame.scope), targets, f"class body of {node.name}", qual + ".",
                           owner=qual, body=node.body)
        self.block(node.body, body_frame)
        frame.scope.bind(node.name, qual)

    # -- following calls into the module's own functions -----------------------------------
    def find_method(self, cls: str, name: str, seen: set[str] | None = None) -> str | None:
        seen = seen if seen is not None else set()
        if cls in seen or not isinstance(self.defs.get(cls), ast.ClassDef):
            return None
        seen.add(cls)
        if isinstance(self.defs.get(f"{cls}.{name}"), _FUNCTIONS):
            return f"{cls}.{name}"
        for base in self.class_bases.get(cls, ()):
            found = self.find_method(base, name, seen)
            if found:
                return found
        return None

    def derives_from(self, cls: str, bases: frozenset[str], seen: set[str] | None = None) -> bool:
        seen = seen if seen is not None else set()
        if cls in seen:
            return False
        seen.add(cls)
        for base in self.class_bases.get(cls, ()):
            if base in bases or self.derives_from(base, bases, seen):
                return True
        return False

    def follow(self, qual: str, frame: Frame, targets: tuple[str, ...]) -> None:
        node = self.defs.get(qual)
        if isinstance(node, _FUNCTIONS):
            self.run_function(qual, node, targets)
            return
        if isinstance(node, ast.ClassDef):
            for name in ("__new__", "__init__", "__post_init__"):
                method = self.find_method(qual, name)
                if method:
                    self.run_function(method, self.defs[method], targets, self_value=qual + "()", owner=qual)  # type: ignore[arg-type]
            return
        head, _, name = qual.rpartition(".")
        cls = head[:-2] if head.endswith("()") else head
        method = self.find_method(cls, name)
        if method:
            self.run_function(method, self.defs[method], targets, self_value=cls + "()", owner=cls)  # type: ignore[arg-type]

    def follow_super(self, name: str, frame: Frame, targets: tuple[str, ...]) -> None:
        if frame.owner is None:
            return
        for base in self.class_bases.get(frame.owner, ()):
            method = self.find_method(base, name)
            if method:
                self.run_function(method, self.defs[method], targets, self_value=frame.self_value, owner=base)  # type: ignore[arg-type]
                return

    def run_function(self, qual: str, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda,
                     targets: tuple[str, ...], self_value: str | None = None, owner: str | None = None,
                     parent: Scope | None = None) -> None:
        if qual in self.stack or len(self.stack) >= MAX_CALL_DEPTH:
            return
        memo = qual if self_value is None else f"{qual} self={self_value}"  # `self` decides what self.m() is
        produced = self.walked.get(memo)
        if produced is not None:  # walked before: this call stores the same findings elsewhere too
            self._attach(produced, targets)
            self.emitted.extend(produced)
            return
        self.walked[memo] = set()
        mark = len(self.emitted)
        self.stack.append(qual)
        try:
            scope = Scope("function", parent or self.def_scopes.get(qual, self.module))
            args = node.args
            positional = [*args.posonlyargs, *args.args]
            for arg in [*positional, *args.kwonlyargs, *(a for a in (args.vararg, args.kwarg) if a)]:
                scope.bind(arg.arg, None)
            if isinstance(node, _FUNCTIONS):
                kinds = {qualname(d, self.module) for d in node.decorator_list}
                if positional and self_value and "staticmethod" not in kinds:
                    scope.bind(positional[0].arg, owner if "classmethod" in kinds else self_value)
                body = node.body
                todo: list[ast.AST] = list(body)
                while todo:  # `global` applies to the whole function body
                    item = todo.pop()
                    if isinstance(item, ast.Global):
                        scope.globals.update(item.names)
                    elif not isinstance(item, (*_FUNCTIONS, ast.ClassDef, ast.Lambda)):
                        todo.extend(c for c in ast.iter_child_nodes(item) if isinstance(c, ast.stmt))
                where = f"{display(qual)}() called at init"
                frame = Frame(scope, targets, where, qual + ".", owner=owner, self_value=self_value, body=body,
                              taint={})
                self.block(body, frame)
            else:
                frame = Frame(scope, targets, "lambda called at init", qual + ".", taint={})
                self.expr(node.body, frame, targets)
        finally:
            self.stack.pop()
            self.walked[memo] = set(self.emitted[mark:])

    # -- expressions -----------------------------------------------------------------------
    def expr(self, node: ast.expr, frame: Frame, targets: tuple[str, ...]) -> None:
        t = type(node)
        if t is ast.Name:
            taint = frame.taint
            if taint and node.id in taint:  # type: ignore[attr-defined]
                keys = taint[node.id]  # type: ignore[attr-defined]
                if targets:
                    self._attach(keys, targets)
                if frame.collect is not None:
                    frame.collect |= keys
            return
        if t is ast.Constant:
            return
        if t is ast.Call:
            self.call(node, frame, targets)  # type: ignore[arg-type]
            return
        if t is ast.Lambda:
            for default in [*node.args.defaults, *node.args.kw_defaults]:  # type: ignore[attr-defined]
                if default is not None:
                    self.expr(default, frame, targets)
            return
        if t in _COMPREHENSIONS:
            self.comprehension(node, frame, targets)
            return
        if t is ast.NamedExpr:
            self.stored(node.value, [node.target], frame)  # type: ignore[attr-defined]
            self.assign(node.target, node.value, frame)  # type: ignore[attr-defined]
            return
        if t is ast.Subscript:
            self.subscript(node, frame, targets)  # type: ignore[arg-type]
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.expr):
                self.expr(child, frame, targets)

    def comprehension(self, node: ast.expr, frame: Frame, targets: tuple[str, ...]) -> None:
        generators: list[ast.comprehension] = node.generators  # type: ignore[attr-defined]
        self.expr(generators[0].iter, frame, targets)
        inner = Frame(Scope("comprehension", frame.scope), frame.targets, frame.where, frame.prefix,
                      frame.owner, frame.self_value, frame.body, frame.taint)
        inner.collect = frame.collect
        for i, gen in enumerate(generators):
            if i:
                self.expr(gen.iter, inner, targets)
            self.assign(gen.target, None, inner)
            for cond in gen.ifs:
                self.expr(cond, inner, targets)
        if isinstance(node, ast.DictComp):
            self.expr(node.key, inner, targets)
            self.expr(node.value, inner, targets)
        else:
            self.expr(node.elt, inner, targets)  # type: ignore[attr-defined]

    def subscript(self, node: ast.Subscript, frame: Frame, targets: tuple[str, ...]) -> None:
        if not isinstance(node.ctx, ast.Load):
            return
        mapping = qualname(node.value, frame.scope)
        if mapping not in R.ENV_MAPPINGS:
            return
        if self.effects is not None:
            self.effects.calls.append(mapping)  # type: ignore[arg-type]
            return
        key = node.slice
        if isinstance(key, ast.Constant) and key.value in R.CREDENTIAL_ENV:
            self.emit("SNAP006", node, f"{mapping}[{key.value!r}]", frame, targets)

    def call(self, node: ast.Call, frame: Frame, targets: tuple[str, ...]) -> None:
        func = node.func
        qual = qualname(func, frame.scope)
        if isinstance(func, ast.Attribute) and func.attr in _FINISHERS and isinstance(func.value, ast.Call):
            self.closed.add(id(func.value))  # Popen(...).wait(), socket.socket().close()
        if self.effects is not None:
            if qual:
                self.effects.calls.append(qual)
            if isinstance(func, ast.Attribute):
                root = root_name(func.value)
                if root is not None and self._holds_state(root, frame):
                    self.effects.touched.add(root)
        else:
            if id(node) not in self.consumed:
                self.match(node, qual, frame, targets)
            if is_registrar(qual) and node.args:
                self.register_hook(node.args[0], frame)
        self.expr(func, frame, targets)
        for arg in node.args:
            self.expr(arg, frame, targets)
        for kw in node.keywords:
            self.expr(kw.value, frame, targets)
        if qual is not None:
            if qual.startswith(LOCAL + "."):
                self.follow(qual, frame, targets)
            elif qual.startswith("super()."):
                self.follow_super(qual[len("super()."):], frame, targets)

    def register_hook(self, target: ast.expr, frame: Frame) -> None:
        if isinstance(target, ast.Lambda):
            self.hooks.append(Hook(f"<lambda:{target.lineno}>", target, target.lineno, frame.scope))
            return
        qual = qualname(target, frame.scope)
        node = self.defs.get(qual) if qual else None
        if isinstance(node, _FUNCTIONS):
            self.hooks.append(Hook(qual, node, node.lineno))  # type: ignore[arg-type]

    # -- rules -----------------------------------------------------------------------------
    def match(self, node: ast.Call, qual: str | None, frame: Frame, targets: tuple[str, ...]) -> None:
        rule_id: str | None = None
        if qual is not None:
            rule_id = self._match_api(node, qual, frame)
        if rule_id is None and self._looks_like_secret_fetch(node, qual):
            rule_id = "SNAP007"
        if rule_id is None:
            return
        if qual in R.IN_PLACE and node.args:
            root = root_name(node.args[0])
            if root is not None and self._holds_state(root, frame):
                targets = (*targets, root)
        self.emit(rule_id, node, display(qual or _syntactic_name(node.func) or "call") + "()", frame, targets)
        for inner in ast.walk(node.func):  # the receiver chain is part of this finding
            if isinstance(inner, ast.Call):
                self.consumed.add(id(inner))
        if qual in R.SEEDERS:  # so is the seed: random.Random(os.urandom(16)) is one finding
            for arg in [*node.args, *(kw.value for kw in node.keywords)]:
                self.consumed.update(id(n) for n in ast.walk(arg) if isinstance(n, ast.Call))

    def _match_api(self, node: ast.Call, qual: str, frame: Frame) -> str | None:
        if qual in R.SEEDERS:
            seed = _argument(node, R.SEEDERS[qual])
            if seed is not None and self._fixed_seed(seed, frame):
                return "SNAP009"
        if qual in R.UNIQUE_IDS:
            return "SNAP001"
        if qual in R.RANDOM:
            return "SNAP002"
        if qual in R.TIME:
            return "SNAP003"
        if qual in R.NETWORK:
            if id(node) in self.closed or (qual == "sqlite3.connect" and _in_memory_sqlite(_argument(node, ("database",)))):
                return None
            return "SNAP004"
        root, _, last = qual.rpartition(".")
        if last in R.CREDENTIAL_METHODS and root.split(".", 1)[0] in ("boto3", "botocore"):
            return "SNAP006"
        if qual in R.ENV_READERS:
            key = _argument(node, ("key",))
            if isinstance(key, ast.Constant) and key.value in R.CREDENTIAL_ENV:
                return "SNAP006"
        if qual in R.AWS_CLIENTS:
            return "SNAP005"
        if qual in R.BACKGROUND or (isinstance(self.defs.get(qual), ast.ClassDef)
                                    and self.derives_from(qual, R.BACKGROUND_BASES)):
            return None if id(node) in self.closed else "SNAP008"
        return None

    def _fixed_seed(self, seed: ast.expr, frame: Frame) -> bool:
        clocks = [n for n in ast.walk(seed) if isinstance(n, ast.Call) and qualname(n.func, frame.scope) in R.TIME]
        if clocks:
            self.consumed.update(id(n) for n in clocks)  # reported as part of the seed finding
            return True
        return is_constant_expr(seed, frame.scope)

    @staticmethod
    def _looks_like_secret_fetch(node: ast.Call, qual: str | None) -> bool:
        name = qual or _syntactic_name(node.func, last=True)
        return bool(name) and R.looks_like_secret_fetch(name)  # type: ignore[arg-type]

    def emit(self, rule_id: str, node: ast.expr, api: str, frame: Frame, targets: tuple[str, ...]) -> None:
        line, col = node.lineno, self._column(node.lineno, node.col_offset)
        end_line = node.end_lineno or line
        end_col = self._column(end_line, node.end_col_offset or 0)
        key = (rule_id, line, col)
        self.emitted.append(key)
        existing = self.found.get(key)
        if existing is not None:
            existing.targets = existing.targets | frozenset(targets)
            return
        rule = R.BY_ID[rule_id]
        first = rule.title.split(" ", 1)[0]
        title = rule.title if len(first) > 1 and first.isupper() else rule.title[0].lower() + rule.title[1:]
        self.found[key] = Finding(
            rule=rule_id, severity=rule.severity, path=self.path, line=line, col=col, end_line=end_line,
            end_col=end_col, code=self._snippet(line), message=f"{api} at {frame.where}: {title}", api=api,
            scope=frame.where, targets=frozenset(targets),
        )

    def _column(self, line: int, offset: int) -> int:
        """1-based character column from the AST's UTF-8 byte offset."""
        text = self.lines[line - 1] if 0 < line <= len(self.lines) else ""
        if text.isascii():
            return offset + 1
        return len(text.encode()[:offset].decode(errors="ignore")) + 1

    def _snippet(self, line: int) -> str:
        """The flagged statement if it is on one line (without trailing comments), else the line."""
        text = self.lines[line - 1] if 0 < line <= len(self.lines) else ""
        st = self.statement
        if st is not None and st.lineno == line and st.end_lineno == line and st.end_col_offset is not None:
            raw = text.encode()
            text = raw[st.col_offset:st.end_col_offset].decode(errors="replace")
        text = text.strip()
        return text if len(text) <= SNIPPET_CHARS else text[:SNIPPET_CHARS - 1] + "…"

    # -- suppression -----------------------------------------------------------------------
    def _apply_ignore_comments(self, findings: list[Finding]) -> None:
        if "snapfaas" not in self.text:
            return
        ignores = ignore_comments(self.text)
        if not ignores:
            return
        for finding in findings:
            for line in range(finding.line, finding.end_line + 1):
                wanted = ignores.get(line)
                if wanted and ("*" in wanted or finding.rule in wanted or R.BY_ID[finding.rule].name in wanted):
                    finding.suppressed = f"ignore comment on line {line}"
                    break

    def _apply_hooks(self, findings: list[Finding]) -> None:
        if not self.hooks:
            return
        effects = [(hook, self.hook_effects(hook)) for hook in self.hooks]
        for finding in findings:
            if finding.suppressed:
                continue
            rule = R.BY_ID[finding.rule]
            maybe: Hook | None = None
            api = finding.api.removesuffix("()")
            for hook, eff in effects:
                family = any(rule.in_family(c) for c in eff.calls) or (
                    rule.id == "SNAP007" and any(R.looks_like_secret_fetch(c) for c in eff.calls))
                if finding.targets & eff.assigned or (finding.targets & eff.touched and family):
                    finding.suppressed = f"re-created by after-restore hook {hook.label} (line {hook.line})"
                    break
                # A hook that re-creates a different resource of the same kind (reconnects the
                # database, not this socket) says nothing about this finding's state.
                if api in eff.calls or (family and not finding.targets) or finding.targets & eff.touched:
                    maybe = maybe or hook
            if not finding.suppressed and maybe is not None and finding.severity > Severity.INFO:
                finding.original_severity = finding.severity
                finding.severity = Severity.INFO
                finding.note = (f"downgraded: after-restore hook {maybe.label} (line {maybe.line}) may re-create "
                                "this state; check that it does")

    def hook_effects(self, hook: Hook) -> Effects:
        saved = (self.walked, self.stack, self.effects)
        self.walked, self.stack, self.effects = {}, [], Effects()
        try:
            self.run_function(hook.qual, hook.node, (), parent=hook.scope)
            return self.effects
        finally:
            self.walked, self.stack, self.effects = saved  # type: ignore[assignment]


def _syntactic_name(func: ast.expr, last: bool = False) -> str | None:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        if last:
            return func.attr
        inner = _syntactic_name(func.value)
        return f"{inner}.{func.attr}" if inner else func.attr
    return None


def _flatten(nodes: list[ast.expr]) -> list[ast.expr]:
    out: list[ast.expr] = []
    todo = list(nodes)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Tuple, ast.List)):
            todo.extend(node.elts)
        elif isinstance(node, ast.Starred):
            todo.append(node.value)
        else:
            out.append(node)
    return out


def _argument(node: ast.Call, keywords: tuple[str, ...]) -> ast.expr | None:
    if node.args and not isinstance(node.args[0], ast.Starred):
        return node.args[0]
    for kw in node.keywords:
        if kw.arg in keywords:
            return kw.value
    return None


def _in_memory_sqlite(arg: ast.expr | None) -> bool:
    if not isinstance(arg, ast.Constant) or not isinstance(arg.value, str):
        return False
    value = arg.value
    return value in ("", ":memory:") or value.startswith("file::memory:") or "mode=memory" in value


def ignore_comments(text: str) -> dict[int, set[str]]:
    """``# snapfaas: ignore[SNAP001, SNAP004]`` (or bare ``ignore``: every rule) per line."""
    found: dict[int, set[str]] = {}
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type != tokenize.COMMENT:
                continue
            body = tok.string.lstrip("#").strip()
            if not body.lower().startswith("snapfaas:"):
                continue
            rest = body[len("snapfaas:"):].strip()
            if not rest.lower().startswith("ignore"):
                continue
            rest = rest[len("ignore"):].strip()
            if rest.startswith("[") and "]" in rest:
                ids = {part.strip() for part in rest[1:rest.index("]")].split(",") if part.strip()}
                ids = {i.upper() if i.upper().startswith("SNAP") else i for i in ids}
            else:
                ids = {"*"}
            found.setdefault(tok.start[0], set()).update(ids)
    except (tokenize.TokenError, SyntaxError, ValueError):
        pass
    return found


def parse_error(path: str, exc: BaseException) -> Finding:
    rule = R.PARSE_ERROR
    if isinstance(exc, SyntaxError):
        line, col = exc.lineno or 1, exc.offset or 1
        message = f"not analyzed: syntax error: {exc.msg}"
    else:
        line, col = 1, 1
        message = f"not analyzed: {type(exc).__name__}: {exc}"
    return Finding(rule.id, rule.severity, path, line, max(col, 1), line, max(col, 1), "", message, scope="file")


def analyze_source(text: str, path: str) -> tuple[list[Finding], list[Finding]]:
    """(reported, suppressed) findings of one module's source; never raises."""
    try:
        tree = ast.parse(text, filename=path)
    except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError) as exc:
        return [parse_error(path, exc)], []
    try:
        return ModuleAnalyzer(tree, path, text).run()
    except RecursionError as exc:
        return [parse_error(path, exc)], []
    except Exception as exc:  # an analyzer bug must not stop the scan of other files
        return [parse_error(path, RuntimeError(f"analyzer failed: {type(exc).__name__}: {exc}"))], []
