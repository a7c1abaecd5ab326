"""`snapfaas bench template`'s probe forks a real initialized function process (the stdlib one,
run by this interpreter) and reads the children's memory."""

import sys

from snapfaas.bench import template


def test_the_fork_probe_measures_every_clone():
    figures = template.measure(sys.executable, "stdlib", runs=3)
    assert len(figures["samples"]) == 3
    for sample in figures["samples"]:
        assert 0 < sample["fork_ms"] <= sample["first_invoke_ms"]
        assert sample["child_private_kib"] > 0  # the child wrote to its copy-on-write heap
    assert figures["mappings"] > 10 and figures["parent_rss_mib"] > 1


def test_a_broken_function_names_itself(monkeypatch, tmp_path):
    broken = tmp_path / "app.py"
    broken.write_text("raise ImportError('no such library')\n")
    monkeypatch.setattr(template, "_app", lambda name: broken)
    try:
        template.measure(sys.executable, "torch", runs=1)
    except RuntimeError as exc:
        assert "fork probe of torch failed" in str(exc) and "no such library" in str(exc)
    else:
        raise AssertionError("a failing probe must raise")


def test_markdown_names_the_baseline():
    result = {"time": "t", "runs": 3, "functions": {
        "stdlib": {"mappings": 60, "parent_rss_mib": 18.0, "fork_ms": 0.5, "first_invoke_ms": 1.0,
                   "child_private_mib": 0.5, "fork_vs_stdlib": 1.0},
        "torch": {"mappings": 340, "parent_rss_mib": 224.0, "fork_ms": 5.0, "first_invoke_ms": 9.0,
                  "child_private_mib": 1.8, "fork_vs_stdlib": 10.0}}}
    text = template.markdown(result)
    assert "| torch | 340 | 224.0 MiB | 5.0 ms | 9.0 ms | 1.8 MiB | 10.0x |" in text
    assert "baseline" in text
