"""SnapStart init: run the handler module's leading imports first, and compile it elsewhere.

Compiling a module allocates and frees memory in proportion to its source, and its code
objects differ in size from one version to the next; a one-line change therefore shifts where
everything allocated afterwards lands, and with it every page that points there. Two measures
keep a version's memory equal to the previous version's wherever the code change does not
reach (the store then shares those chunks; snapshot/determinism.py has the rest):

* **Leading imports first.** A handler module usually starts with its imports (``import
  torch``, ``import numpy as np``), and those build nearly all of the process's memory. They
  run before anything of the handler module is loaded. Measured on the torch reference
  function with a constant appended: 5% of the pages equal to the previous version's without,
  98% with.
* **Compiled in a child.** A forked child parses the module (for its leading imports) and
  compiles it; the parent loads the compiled code (``marshal``) after the leading imports ran,
  so the parse and compile leave nothing behind here. The marshalled code is padded with zeros
  to a multiple of `CODE_QUANTUM` (``marshal.loads`` ignores bytes after the object): the
  parent reads and holds it while the module body runs, and a buffer a few bytes longer than
  the previous version's moved the top of glibc's heap, so everything the body allocated there
  afterwards, and every page pointing at it (the stdlib reference function: ~35,000 words of
  one heap window). Between loading the code and running the module body, an allocation
  barrier (`allocation.barrier`) fills every free block of CPython's small-object allocator,
  so the body's objects start in fresh pools instead of one block further on for each block
  the new code took; and the global dict version counter is moved to a round value
  (`versions.realign`), so the dicts the body changes get the same version tags; again after
  the module is loaded, for what the rest of init changes (a line appended to a module changes
  one dict more at its end).

Semantics: only the module's *leading* statements that are absolute ``import`` / ``from ...
import`` statements run early (after an optional docstring and ``from __future__`` imports),
nothing after the first other statement, and only for a top-level handler module that the
ordinary import would load from ``<task root>/<name>.py`` (``app.handler``, not
``pkg.app.handler``, whose package ``__init__`` runs first). Those statements would have run
first anyway, against the same ``sys.modules``; the module's own import later finds them done.
The code the child compiles is what importlib compiles (same source bytes, file name, flags);
the module's loader is a `SourceFileLoader` that returns it. If an early import raises, the
rest are skipped and nothing is reported here: the module's own import runs the failing
statement again and reports it as Lambda does (``Runtime.ImportModuleError`` etc.). If the
child fails, the module is imported the ordinary way.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO

MAX_SOURCE = 1 << 20  # a bigger handler module is imported the ordinary way
CODE_QUANTUM = 64 << 10  # the marshalled code is padded to a multiple of this (see the module doc)
LENGTH = 4
# The handler module's top-level code object, kept for the process's life. Freed after the
# body ran (as an ordinary import does), its blocks (the code object, its constants and names
# tuples, whose sizes differ between versions) became holes that the rest of init's objects of
# those classes filled, one version's one block off the other's for everything after.
_LOADED: list[object] = []


def leading_imports(source: bytes) -> str:
    """The module's leading absolute import statements, one per line ("" if none or the
    source does not parse)."""
    import ast

    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):  # the real import reports it
        return ""
    lines = []
    for index, node in enumerate(tree.body):
        if index == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            continue  # the docstring
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            continue
        if isinstance(node, ast.Import) or (isinstance(node, ast.ImportFrom) and node.level == 0):
            lines.append(ast.unparse(node))
            continue
        break
    return "\n".join(lines)


def _child(module_path: str, path: str, out: int) -> None:
    """In the forked child: write ``len(statements) || statements || marshalled code`` (all
    empty if the module is not the file at `path`, too big or does not compile)."""
    import importlib.util
    import marshal

    statements, code = b"", b""
    spec = importlib.util.find_spec(module_path)
    if spec is not None and spec.origin == path and os.path.getsize(path) <= MAX_SOURCE:
        with open(path, "rb") as source:
            data = source.read()
        try:
            code = marshal.dumps(compile(data, path, "exec", dont_inherit=True))
            code += bytes(-len(code) % CODE_QUANTUM)
            statements = leading_imports(data).encode()
        except (SyntaxError, ValueError):  # the ordinary import reports it
            code = b""
    view = memoryview(len(statements).to_bytes(LENGTH, "big") + statements + code)
    while view:
        view = view[os.write(out, view):]


def _fork(module_path: str, path: str) -> tuple[int, BinaryIO]:
    """(pid, reading end) of a child running `_child`."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # exit without running any cleanup of the parent's
        status = 1
        try:
            os.close(read_end)
            _child(module_path, path, write_end)
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    return pid, os.fdopen(read_end, "rb")


class _CompiledFinder:
    """A meta path finder for one module whose code is already compiled."""

    def __init__(self, name: str, path: str, code: bytes) -> None:
        self.name, self.path, self.code = name, path, code

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != self.name:
            return None
        import importlib.machinery
        import importlib.util
        import marshal

        from .allocation import barrier
        from .versions import realign

        code = self.code

        class CompiledLoader(importlib.machinery.SourceFileLoader):
            def get_code(self, fullname: str) -> Any:
                loaded = marshal.loads(code)
                _LOADED.append(loaded)  # never freed: see _LOADED
                barrier()  # what the module body allocates no longer depends on the code's size
                realign()  # nor the version tags of the dicts it changes
                return loaded

        return importlib.util.spec_from_file_location(name, self.path, loader=CompiledLoader(name, self.path))


@contextmanager
def prepared(module_path: str, task_root: str) -> Iterator[None]:
    """Run the leading imports of handler module `module_path`; within the block, importing it
    uses the code the child compiled (see the module doc)."""
    import sys

    path = os.path.join(task_root, module_path + ".py")
    if "." in module_path or not os.path.isfile(path):
        yield
        return
    pid, reader = _fork(module_path, path)
    with reader:
        length = int.from_bytes(reader.read(LENGTH), "big")
        statements = reader.read(length).decode()
        try:
            if statements:
                exec(compile(statements, "<snapstart leading imports>", "exec"), {"__name__": "__snapstart_leading_imports__"})
        except Exception:  # reported by the module's own import, which runs the statement again
            pass
        code = reader.read()  # read only now: its size differs between versions
    _, status = os.waitpid(pid, 0)
    finder = _CompiledFinder(module_path, path, code) if code and os.waitstatus_to_exitcode(status) == 0 else None
    if finder is not None:
        sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        if finder is not None:
            sys.meta_path.remove(finder)
            from .versions import realign

            realign()  # the rest of init: dict tags again independent of what the module body changed

