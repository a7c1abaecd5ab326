"""How a dead runtime is described (Lambda's wording, after Go's os.ProcessState)."""

from __future__ import annotations

import pytest

from snapfaas.worker.environment import EnvironmentDied


@pytest.mark.parametrize(
    ("status", "words"),
    [
        (0, "Runtime exited without providing a reason"),
        (1, "Runtime exited with error: exit status 1"),
        (137, "Runtime exited with error: signal: killed"),  # the container killed (runc's 128+9)
        (-9, "Runtime exited with error: signal: killed"),  # runc itself killed
        (-11, "Runtime exited with error: signal: segmentation fault"),
        (134, "Runtime exited with error: signal: aborted"),
        (129, "Runtime exited with error: exit status 129"),  # SIGHUP: no word for it here
    ],
)
def test_exit_words(status: int, words: str) -> None:
    assert EnvironmentDied(status, oom=False).describe() == words
