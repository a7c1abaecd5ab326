"""Request ids: random (version 4, RFC 4122 variant) UUIDs in their canonical text form.

`new` gives what ``str(uuid.uuid4())`` gives (16 bytes of ``os.urandom``, the version and
variant bits set, 8-4-4-4-12 lowercase hex) without building a `uuid.UUID` on the way: every API
request gets one, and the object made it ~3x the cost (~10 vs ~3 us on this host).
"""

from __future__ import annotations

import os

_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))  # the version nibble and the variant bits
_SET = (0x4000 << 64) | (0x8000 << 48)  # version 4, variant 10xx (RFC 4122)


def new() -> str:
    """A fresh random request id, ``xxxxxxxx-xxxx-4xxx-[89ab]xxx-xxxxxxxxxxxx``."""
    value = (int.from_bytes(os.urandom(16), "big") & _CLEAR) | _SET
    text = f"{value:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"
