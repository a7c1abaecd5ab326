"""This node's name in the cluster's shared state (claims of the event queue, membership).

`--node-id ID` names it; by default a stable id is generated once per data dir into
``<data-dir>/node-id`` (mode 0600), so a restarted node is the same node: it recovers the claims
its previous run left behind instead of waiting for their leases to lapse.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

NODE_ID_FILE = "node-id"
NODE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def check_node_id(value: str) -> str:
    """`value` if it is a valid node id (1-63 letters, digits, ``.``, ``_``, ``-``; starting with
    a letter or digit); ValueError naming the rule otherwise."""
    if not NODE_ID_RE.fullmatch(value):
        raise ValueError(f"not a node id: {value!r} (1-63 letters, digits, '.', '_' or '-', starting with a "
                         "letter or digit)")
    return value


def stable_node_id(data_dir: Path) -> str:
    """The id stored in `data_dir`, created on first use (``node-`` + 12 hex digits)."""
    path = data_dir / NODE_ID_FILE
    try:
        return check_node_id(path.read_text().strip())
    except FileNotFoundError:
        pass
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}; fix or remove the file, or pass --node-id") from exc
    node_id = f"node-{secrets.token_hex(6)}"
    partial = path.with_name(f".{NODE_ID_FILE}.{os.getpid()}")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(node_id + "\n")
        out.flush()
        os.fsync(out.fileno())
    os.replace(partial, path)
    return node_id
