"""`snapfaas scan` rules over the fixture corpus (tests/fixtures/scan): every `# expect:` line is
reported, every `# ok:` line is not, per rule; plus aliasing, init scopes, hooks, ignore comments,
parse errors, packages, and precision/recall over the whole corpus."""

from __future__ import annotations

import dataclasses
import io
import re
import zipfile
from pathlib import Path

import pytest

from snapfaas.scan import RULES, Severity, scan_paths, scan_source, scan_zip
from snapfaas.scan.findings import ScanResult

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "tests" / "fixtures" / "scan"
DOCS = ROOT / "docs" / "scan-rules.md"
RULE_IDS = [rule.id for rule in RULES]
ANNOTATION = re.compile(r"#\s*(expect|ok):\s*([A-Z0-9_(), a-z]+)")
RULE_TOKEN = re.compile(r"(SNAP\d{3})(?:\((\w+)\))?")

Key = tuple[str, int, str]  # (path relative to the corpus, line, rule)


@dataclasses.dataclass
class Corpus:
    expected: set[Key]
    negatives: set[Key]
    severities: dict[Key, str]
    result: ScanResult

    @property
    def actual(self) -> set[Key]:
        return {(_rel(f.path), f.line, f.rule) for f in self.result.findings if f.rule != "SNAP000"}


def _rel(path: str) -> str:
    return Path(path).resolve().relative_to(CORPUS).as_posix()


def read_annotations() -> tuple[set[Key], set[Key], dict[Key, str]]:
    """`# expect: SNAP001, SNAP004(info)` and `# ok: SNAP002` comments of the corpus (test-side
    bookkeeping only; the scanner itself never reads source with regexes)."""
    expected: set[Key] = set()
    negatives: set[Key] = set()
    severities: dict[Key, str] = {}
    for path in sorted(CORPUS.glob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for kind, body in ANNOTATION.findall(line):
                for rule, severity in RULE_TOKEN.findall(body.split("  (")[0]):
                    key = (path.name, number, rule)
                    (expected if kind == "expect" else negatives).add(key)
                    if severity:
                        severities[key] = severity
    return expected, negatives, severities


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    expected, negatives, severities = read_annotations()
    return Corpus(expected, negatives, severities, scan_paths([CORPUS]))


def findings_of(source: str) -> list[tuple[int, str]]:
    return [(f.line, f.rule) for f in scan_source(source, "m.py").findings]


# -- the corpus, rule by rule ----------------------------------------------------------------
@pytest.mark.parametrize("rule", RULE_IDS)
def test_corpus_has_three_true_positives_and_two_true_negatives(corpus: Corpus, rule: str) -> None:
    positives = [k for k in corpus.expected if k[2] == rule]
    negatives = [k for k in corpus.negatives if k[2] == rule]
    assert len(positives) >= 3, positives
    assert len(negatives) >= 2, negatives


@pytest.mark.parametrize("rule", RULE_IDS)
def test_rule_reports_exactly_the_expected_lines(corpus: Corpus, rule: str) -> None:
    expected = {k for k in corpus.expected if k[2] == rule}
    actual = {k for k in corpus.actual if k[2] == rule}
    assert sorted(expected - actual) == [], "missed (false negatives)"
    assert sorted(actual - expected) == [], "unexpected (false positives)"
    assert sorted(actual & {k for k in corpus.negatives if k[2] == rule}) == [], "reported on an `ok` line"


def test_pinned_severities(corpus: Corpus) -> None:
    reported = {(_rel(f.path), f.line, f.rule): str(f.severity) for f in corpus.result.findings}
    assert corpus.severities, "the corpus pins some severities"
    for key, severity in corpus.severities.items():
        assert reported.get(key) == severity, key


def test_precision_and_recall_on_the_corpus(corpus: Corpus, capsys: pytest.CaptureFixture[str]) -> None:
    expected, actual = corpus.expected, corpus.actual
    true_positives = len(expected & actual)
    precision = true_positives / len(actual) if actual else 1.0
    recall = true_positives / len(expected) if expected else 1.0
    lines = [f"scan corpus: {len(expected)} expected findings, {len(actual)} reported, {true_positives} correct; "
             f"{len(corpus.negatives)} true-negative lines; {corpus.result.files} files in {corpus.result.seconds:.3f} s",
             f"scan corpus: precision {precision:.3f}  recall {recall:.3f}"]
    for rule in RULE_IDS:
        exp = {k for k in expected if k[2] == rule}
        act = {k for k in actual if k[2] == rule}
        tp = len(exp & act)
        lines.append(f"  {rule}: tp={tp} fp={len(act - exp)} fn={len(exp - act)} "
                     f"tn_lines={len([k for k in corpus.negatives if k[2] == rule])}")
    with capsys.disabled():
        print("\n" + "\n".join(lines))
    assert precision >= 0.95 and recall >= 0.95, lines


# -- aliasing and name resolution ------------------------------------------------------------
@pytest.mark.parametrize(("source", "api"), [
    ("import numpy as np\nX = np.random.rand(3)\n", "numpy.random.rand()"),
    ("from random import random as r\nX = r()\n", "random.random()"),
    ("import numpy.random as npr\nX = npr.default_rng()\n", "numpy.random.default_rng()"),
    ("from numpy import random as nr\nX = nr.choice([1])\n", "numpy.random.choice()"),
    ("import datetime as dt\nX = dt.datetime.now(dt.timezone.utc)\n", "datetime.datetime.now()"),
    ("from datetime import datetime\nX = datetime.utcnow()\n", "datetime.datetime.utcnow()"),
    ("import uuid\nmake = uuid.uuid4\nX = make()\n", "uuid.uuid4()"),
    ("import http.client\nC = http.client.HTTPSConnection('h')\n", "http.client.HTTPSConnection()"),
    ("import boto3\ns = boto3.Session()\nC = s.get_credentials()\n", "boto3.Session().get_credentials()"),
    ("def f():\n    import uuid as u\n    return u.uuid1()\nX = f()\n", "uuid.uuid1()"),
])
def test_calls_resolve_through_aliases(source: str, api: str) -> None:
    result = scan_source(source)
    assert [f.api for f in result.findings] == [api]


@pytest.mark.parametrize("source", [
    "import random\nrandom = object()\nX = random.random()\n",  # rebinding shadows the import
    "def handler(event, random):\n    return random.random()\n",  # a parameter, and not init
    "import numpy as np\nnp = None\nX = np.random.rand() if np else 0\n",
    "X = uuid4()\n",  # never imported: not the uuid module's
    "import time\nclass Clock:\n    def time(self):\n        return 1\nclock = Clock()\nX = clock.time()\n",
])
def test_unresolvable_or_shadowed_names_are_not_reported(source: str) -> None:
    assert findings_of(source) == []


def test_nested_attribute_access_and_chains() -> None:
    source = (
        "import boto3, datetime\n"
        "class App:\n"
        "    def __init__(self):\n"
        "        self.clients = {'s3': boto3.resource('s3').Bucket('b')}\n"
        "        self.started = datetime.datetime.now().astimezone().isoformat()\n"
        "APP = App()\n"
    )
    assert findings_of(source) == [(4, "SNAP005"), (5, "SNAP003")]


# -- init scopes -------------------------------------------------------------------------------
def test_main_guard_and_handler_bodies_are_not_init() -> None:
    source = (
        "import uuid\n"
        "def handler(event, context):\n"
        "    return uuid.uuid4()\n"
        "if __name__ == '__main__':\n"
        "    ID = uuid.uuid4()\n"
        "if '__main__' == __name__:\n"
        "    ID = uuid.uuid4()\n"
    )
    assert findings_of(source) == []


def test_functions_called_at_init_are_followed_transitively() -> None:
    source = (
        "import time\n"
        "def a():\n    return b()\n"
        "def b():\n    return time.time()\n"
        "def c():\n    return time.time()\n"
        "T = a()\n"
    )
    assert findings_of(source) == [(5, "SNAP003")]


def test_values_that_never_reach_state_are_not_reported() -> None:
    source = (
        "import time, uuid\n"
        "print('booting', uuid.uuid4())\n"
        "def timed():\n"
        "    t0 = time.perf_counter()\n"
        "    print(time.perf_counter() - t0)\n"
        "timed()\n"
    )
    assert findings_of(source) == []


def test_a_local_that_flows_into_a_global_carries_the_finding() -> None:
    source = (
        "import uuid\n"
        "IDS = []\n"
        "def remember():\n"
        "    value = uuid.uuid4()\n"
        "    copy = value\n"
        "    IDS.append(copy)\n"
        "remember()\n"
    )
    [finding] = scan_source(source).findings
    assert (finding.line, finding.rule, finding.targets) == (4, "SNAP001", frozenset({"IDS"}))


def test_finding_fields() -> None:
    [finding] = scan_source("import uuid\n\nINSTANCE = str(uuid.uuid4())\n", "pkg/app.py").findings
    assert finding.rule == "SNAP001" and finding.severity is Severity.ERROR
    assert (finding.path, finding.line, finding.col) == ("pkg/app.py", 3, 16)
    assert finding.code == "INSTANCE = str(uuid.uuid4())"
    assert finding.scope == "module level" and finding.targets == {"INSTANCE"}
    assert "uuid.uuid4()" in finding.message
    assert finding.definition.why and "register_after_restore" in finding.definition.fix


def test_columns_count_characters_not_bytes() -> None:
    [finding] = scan_source("import uuid\nNAME = 'é€'; ID = uuid.uuid4()\n").findings
    assert finding.col == len("NAME = 'é€'; ID = ") + 1


# -- after-restore hooks and ignore comments ---------------------------------------------------
def test_hooks_suppress_or_downgrade(corpus: Corpus) -> None:
    hooks = {f.line: f for f in corpus.result.suppressed if f.path.endswith("hooks.py")}
    reasons = {f.rule: f.suppressed for f in hooks.values()}
    assert reasons["SNAP001"] == "re-created by after-restore hook new_identity() (line 16)"
    assert reasons["SNAP004"] == "re-created by after-restore hook connect() (line 25)"
    assert reasons["SNAP002"] == "re-created by after-restore hook reseed() (line 37)"
    assert reasons["SNAP003"].startswith("re-created by after-restore hook lambda")
    [downgraded] = [f for f in corpus.result.findings if f.path.endswith("hooks.py") and f.rule == "SNAP004"]
    assert downgraded.severity is Severity.INFO and downgraded.original_severity is Severity.ERROR
    assert "refresh_http()" in (downgraded.note or "")


def test_hook_registered_by_call_with_a_module_function() -> None:
    source = (
        "import time\n"
        "from snapshot_restore_py import register_after_restore\n"
        "STARTED = time.time()\n"
        "def restart():\n"
        "    global STARTED\n"
        "    STARTED = time.time()\n"
        "register_after_restore(restart)\n"
    )
    result = scan_source(source)
    assert result.findings == [] and [f.rule for f in result.suppressed] == ["SNAP003"]


def test_a_hook_for_other_state_does_not_hide_a_finding() -> None:
    source = (
        "import uuid, snapshot_restore_py\n"
        "A = uuid.uuid4()\n"
        "B = uuid.uuid4()\n"
        "@snapshot_restore_py.register_after_restore\n"
        "def fresh():\n"
        "    global A\n"
        "    A = uuid.uuid4()\n"
    )
    assert findings_of(source) == [(3, "SNAP001")]


def test_ignore_comments(corpus: Corpus) -> None:
    ignored = sorted((f.line, f.rule) for f in corpus.result.suppressed if f.path.endswith("ignore_comments.py"))
    assert ignored == [(5, "SNAP001"), (7, "SNAP003"), (10, "SNAP001"), (12, "SNAP001")]
    assert all(f.suppressed and f.suppressed.startswith("ignore comment")
               for f in corpus.result.suppressed if f.path.endswith("ignore_comments.py"))


# -- robustness ----------------------------------------------------------------------------------
def test_syntax_errors_are_info_findings(corpus: Corpus) -> None:
    [error] = [f for f in corpus.result.findings if f.rule == "SNAP000"]
    assert error.path.endswith("errors/syntax_error.py") and error.severity is Severity.INFO
    assert error.kind == "parse-error" and "syntax error" in error.message


@pytest.mark.parametrize("data", [
    b"x = 1\n\x00\n",  # null byte
    b"\xff\xfe\x00broken",  # not UTF-8, no coding cookie
    b"# -*- coding: no-such-codec -*-\nx = 1\n",
    b"x = " + b"-" * 50_000 + b"1\n",  # deeper than the recursion limit
    b"x = (" * 300 + b"1" + b")" * 300 + b"\n",
])
def test_hostile_files_never_crash_the_scan(tmp_path: Path, data: bytes) -> None:
    (tmp_path / "bad.py").write_bytes(data)
    (tmp_path / "good.py").write_text("import uuid\nID = uuid.uuid4()\n")
    result = scan_paths([tmp_path])
    assert result.files == 2
    assert [f.rule for f in result.findings if f.path.endswith("good.py")] == ["SNAP001"]
    assert all(f.rule == "SNAP000" for f in result.findings if f.path.endswith("bad.py"))


def test_unreadable_file_is_reported(tmp_path: Path) -> None:
    target = tmp_path / "gone.py"
    target.symlink_to(tmp_path / "missing.py")
    [finding] = scan_paths([tmp_path]).findings
    assert finding.rule == "SNAP000" and "unreadable" in finding.message


def test_directories_skip_caches_and_hidden_dirs(tmp_path: Path) -> None:
    for rel in ("app.py", "__pycache__/x.py", ".venv/lib/y.py", "pkg/mod.py", "pkg/data.txt"):
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("import time\nT = time.time()\n")
    result = scan_paths([tmp_path])
    assert sorted(Path(f.path).relative_to(tmp_path).as_posix() for f in result.findings) == ["app.py", "pkg/mod.py"]


def _zip(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return buf.getvalue()


def test_zip_packages_skip_vendored_distributions() -> None:
    package = _zip({
        "app.py": "import uuid\nID = uuid.uuid4()\n",
        "lib/helpers.py": "import time\nT = time.time()\n",
        "vendor_pkg/__init__.py": "import random\nR = random.random()\n",
        "vendor_pkg-1.0.dist-info/RECORD": "vendor_pkg/__init__.py,sha256=x,10\nvendor_pkg-1.0.dist-info/RECORD,,\n",
        "__pycache__/app.cpython-312.py": "import uuid\nX = uuid.uuid4()\n",
        "README.md": "import uuid\n",
    })
    result = scan_zip(package)
    assert sorted((f.path, f.rule) for f in result.findings) == [("app.py", "SNAP001"), ("lib/helpers.py", "SNAP003")]
    assert result.files == 2
    everything = scan_zip(package, include_deps=True)
    assert ("vendor_pkg/__init__.py", "SNAP002") in {(f.path, f.rule) for f in everything.findings}


def test_broken_zip_is_a_parse_error_finding() -> None:
    [finding] = scan_zip(b"not a zip").findings
    assert finding.rule == "SNAP000" and finding.path == "<zip>"


def test_zip_given_as_a_path(tmp_path: Path) -> None:
    (tmp_path / "pkg.zip").write_bytes(_zip({"app.py": "import uuid\nID = uuid.uuid4()\n"}))
    [finding] = scan_paths([tmp_path / "pkg.zip"]).findings
    assert finding.path == f"{(tmp_path / 'pkg.zip').as_posix()}!/app.py"


# -- documentation -----------------------------------------------------------------------------
@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_rule_is_documented_with_a_bad_and_a_good_example(rule) -> None:  # type: ignore[no-untyped-def]
    docs = DOCS.read_text()
    assert f"### {rule.id} {rule.name}" in docs
    assert f"```python\n{rule.bad}```" in docs and f"```python\n{rule.good}```" in docs
    assert rule.why in docs and rule.fix in docs
    assert rule.id in {f.rule for f in scan_source(rule.bad, "bad.py").findings}
    assert rule.id not in {f.rule for f in scan_source(rule.good, "good.py").findings}
