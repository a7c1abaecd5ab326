"""Request ids are what str(uuid.uuid4()) gives for the same random bytes."""

from __future__ import annotations

import os
import uuid
from unittest import mock

from snapfaas import request_ids


def test_same_text_as_uuid4_for_the_same_bytes() -> None:
    samples = [bytes(16), b"\xff" * 16, bytes(range(16))] + [os.urandom(16) for _ in range(500)]
    for raw in samples:
        with mock.patch("snapfaas.request_ids.os.urandom", return_value=raw):
            assert request_ids.new() == str(uuid.UUID(bytes=raw, version=4))


def test_fresh_version_4_ids() -> None:
    ids = {request_ids.new() for _ in range(1000)}
    assert len(ids) == 1000
    for text in ids:
        parsed = uuid.UUID(text)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122 and str(parsed) == text
