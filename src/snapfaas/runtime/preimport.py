"""SnapStart init: import the handler module's leading imports before compiling the handler.

Compiling a module allocates and frees memory in proportion to its source; a one-line change
therefore shifts where everything allocated *after* the compile lands (measured: a constant
appended to a torch handler left 5% of the process's pages equal to the previous version's;
with this, 98%). A handler module typically starts with its imports (``import torch``,
``import numpy as np``) and those build nearly all of the process's memory. Running exactly
those statements first, before the handler module is compiled, gives the libraries the same
memory in every version whose imports did not change.

Semantics: only the module's *leading* statements that are absolute ``import`` /
``from ... import`` statements are run early (after an optional docstring and ``from
__future__`` imports), nothing after the first other statement, and only for a top-level
handler module (``app.handler``, not ``pkg.app.handler``, whose package ``__init__`` runs
first). Those statements would have run first anyway, against the same ``sys.modules``; the
handler module's own import later finds them done. The source is parsed in a forked child, so
the parse leaves no trace in this process's memory. If an early import raises, the rest are
skipped and nothing is reported here: the handler module's own import runs the failing
statement again and reports it as Lambda does (``Runtime.ImportModuleError`` etc.).
"""

from __future__ import annotations

import os

MAX_SOURCE = 1 << 20  # a bigger handler module is not parsed for its imports


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


def _read_in_child(path: str) -> str:
    """`leading_imports` of the file at `path`, computed in a forked child."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: parse, write, exit without running any cleanup of the parent's
        code = 1
        try:
            os.close(read_end)
            with open(path, "rb") as source:
                data = source.read(MAX_SOURCE + 1)
            text = leading_imports(data).encode() if len(data) <= MAX_SOURCE else b""
            view = memoryview(text)
            while view:
                view = view[os.write(write_end, view):]
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    chunks = []
    with os.fdopen(read_end, "rb") as reader:
        while chunk := reader.read(65536):
            chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    return b"".join(chunks).decode() if os.waitstatus_to_exitcode(status) == 0 else ""


def run(module_path: str, task_root: str) -> None:
    """Run the leading imports of top-level handler module `module_path` (see the module doc)."""
    if "." in module_path:
        return
    path = os.path.join(task_root, module_path + ".py")
    if not os.path.isfile(path):
        return
    statements = _read_in_child(path)
    if not statements:
        return
    try:
        exec(compile(statements, "<snapstart leading imports>", "exec"), {"__name__": "__snapstart_preimport__"})
    except Exception:  # reported by the handler module's own import, which runs the statement again
        return
