"""Which fingerprints restored copies of one snapshot share that they should not (pure logic of
``snapfaas snapstart verify``).

Input: the fingerprints (`snapfaas.runtime.inspection`, plus the handler's response) of N >= 2
copies restored from the snapshot, and of two independent on-demand inits of the same version
(the references). Contract of `compare`:

- a ``state`` fingerprint (an RNG state, fresh OpenSSL output) identical in every restored copy
  is a finding: the copies will draw the same numbers;
- a ``value`` fingerprint (a module global, the response) identical in every restored copy is
  a finding only if the two references differ on it: it comes from entropy, the clock or
  per-environment credentials, so each environment should have had its own, and the snapshot
  made them one. A value the references agree on (a constant, a configuration string) is
  identical everywhere by design and is never a finding;
- a fingerprint some restored copy lacks is not compared.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

Fingerprints = Mapping[str, Mapping[str, Any]]

ADVICE = {
    "random-state": "re-seed in an after-restore hook (random.seed(os.urandom(32))) or draw from secrets/os.urandom",
    "numpy-random-state": "create generators after restore (numpy.random.default_rng() in the handler or an after-restore hook)",
    "numpy-generator": "create the Generator after restore (in the handler or an after-restore hook)",
    "openssl": "feed OpenSSL fresh entropy in an after-restore hook (ssl.RAND_add / RAND_add on cryptography's OpenSSL)",
    "uuid": "generate it in the handler or an after-restore hook",
    "timestamp": "take the time in the handler (a time captured at init is the snapshot's)",
    "credential": "read credentials per invoke (boto3 refreshes them from the container endpoint); never keep init's",
    "response": "the handler returns the same entropy-derived result in every restored copy",
    "value": "compute it after restore (in the handler or an after-restore hook)",
}


@dataclasses.dataclass(frozen=True)
class Finding:
    name: str  # e.g. "app.TOKEN", "random (global state)", "response"
    kind: str  # random-state, numpy-random-state, numpy-generator, openssl, uuid, timestamp, credential, response, value
    category: str  # "state" or "value"
    detail: str

    def to_json(self) -> dict[str, str]:
        return {"Name": self.name, "Kind": self.kind, "Category": self.category, "Detail": self.detail}


def compare(restored: Sequence[Fingerprints], references: Sequence[Fingerprints]) -> list[Finding]:
    """The findings (see the module docstring), sorted by category (states first), then name."""
    if len(restored) < 2:
        raise ValueError("comparing needs at least 2 restored copies")
    findings = []
    for name, first in restored[0].items():
        digests = [copy.get(name, {}).get("digest") for copy in restored]
        if None in digests or len(set(digests)) != 1:
            continue
        kind, category = str(first.get("kind", "value")), str(first.get("category", "value"))
        advice = ADVICE.get(kind, ADVICE["value"])
        if category == "state":
            findings.append(Finding(name, kind, category, f"identical in all {len(restored)} restored copies; {advice}"))
            continue
        reference_digests = [ref.get(name, {}).get("digest") for ref in references]
        if len(reference_digests) >= 2 and None not in reference_digests and len(set(reference_digests)) > 1:
            findings.append(Finding(name, kind, category,
                                    f"differs between independent inits but is identical in all {len(restored)} "
                                    f"restored copies (captured at init); {advice}"))
    return sorted(findings, key=lambda f: (f.category != "state", f.name))
