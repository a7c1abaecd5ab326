"""The CRIU engine's pure decisions: what `criu --version` says, and the restore environment."""

from __future__ import annotations

from snapfaas.snapshot import engine

PATCHED = "Version: 4.1.1\nPatches: snapfaas map-pages-copy-on-write tmpfs-without-gzip sha:a94ec56763ee\n"


def test_parse_version_reads_the_version_and_the_patch_names() -> None:
    assert engine.parse_version(PATCHED) == ("4.1.1", ("map-pages-copy-on-write", "tmpfs-without-gzip"))


def test_parse_version_of_a_stock_criu_has_no_patches() -> None:
    assert engine.parse_version("Version: 4.1.1\nGitID: v4.1.1\n") == ("4.1.1", ())
    assert engine.parse_version("criu: command not found") == (None, ())


def test_restore_environ_asks_for_mapping_only_when_wanted_and_supported() -> None:
    patched = engine.CriuStatus(True, "/usr/local/sbin/criu", "4.1.1", None, engine.parse_version(PATCHED)[1])
    stock = engine.CriuStatus(True, "/usr/sbin/criu", "4.1.1")
    assert patched.maps_pages and not stock.maps_pages
    assert engine.restore_environ(patched, "map") == {"CRIU_MAP_PAGES": "1"}
    assert engine.restore_environ(patched, "copy") == {}
    assert engine.restore_environ(stock, "map") == {}
    assert "patches: map-pages-copy-on-write" in patched.describe()
    assert "no snapfaas patches" in stock.describe()


def test_checkpoint_environ_fills_holes_only_for_mapped_restores_of_a_patched_criu() -> None:
    filling = engine.CriuStatus(True, "/usr/local/sbin/criu", "4.1.1", None,
                                (engine.MAP_PAGES_PATCH, engine.FILL_HOLES_PATCH))
    mapping_only = engine.CriuStatus(True, "/usr/local/sbin/criu", "4.1.1", None, (engine.MAP_PAGES_PATCH,))
    assert engine.checkpoint_environ(filling, "map") == {"CRIU_FILL_HOLES": str(engine.FILL_HOLES_PAGES)}
    assert engine.checkpoint_environ(filling, "copy") == {}  # a copying restore gains nothing from it
    assert engine.checkpoint_environ(mapping_only, "map") == {}


def test_snapstart_in_own_network_namespaces_needs_the_netns_patches() -> None:
    stock = engine.CriuStatus(True, "/usr/sbin/criu", "4.1.1", None, ("map-pages-copy-on-write",))
    status = stock.requiring_netns_patches()
    assert not status.available
    assert "external-netns-of-another-userns" in (status.reason or "") and "--sandbox-network host" in (status.reason or "")
    patched = engine.CriuStatus(True, "/usr/local/sbin/criu", "4.1.1", None, engine.EXTERNAL_NETNS_PATCHES)
    assert patched.requiring_netns_patches() is patched
    off = engine.CriuStatus(False, None, None, "disabled with --no-snapstart")
    assert off.requiring_netns_patches() is off


def test_probe_uses_a_criu_given_by_path(tmp_path) -> None:
    """`serve --criu PATH` (a candidate build beside the installed one) probes that binary."""
    fake = tmp_path / "criu-candidate"
    fake.write_text("#!/bin/sh\n"
                    "[ \"$1\" = --version ] && { printf 'Version: 4.1.1\\nPatches: snapfaas map-pages-copy-on-write sha:0\\n'; exit 0; }\n"
                    "[ \"$1\" = check ] && { echo 'Looks good.'; exit 0; }\n"
                    "exit 1\n")
    fake.chmod(0o755)
    status = engine.probe(str(fake))
    assert status.available and status.binary == str(fake) and status.maps_pages
