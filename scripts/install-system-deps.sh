#!/usr/bin/env bash
# Install snapfaas's system dependencies: runc, CRIU >= 4.1 (4.1.1), and the network tools
# every environment's own network namespace needs (iproute2's `ip`, nftables' `nft`).
#
# Supported: Debian 12 (bookworm) and Debian 13 (trixie). Must run as root.
#
#   scripts/install-system-deps.sh           install what is missing (no-op if all present)
#   scripts/install-system-deps.sh --check   only report; exit 1 if something is missing
#
# runc comes from apt. CRIU 4.1.1 is built from Debian 13's source tarball
#   (criu_4.1.1.orig.tar.xz, fetched with `apt-get source` through a temporary trixie
#   deb-src entry that uses the machine's own Debian mirror) with snapfaas's patches
#   (scripts/criu-patches/*.patch: restores map memory copy-on-write instead of copying
#   it, and tmpfs contents are kept as plain tar) and installed to /usr/local/sbin/criu.
#   Debian 12's own criu 3.17.1 fails `criu check` on these machines; Debian 13's 4.1.1
#   works but lacks the patches. Only a *source* (deb-src) entry is ever added, never
#   trixie binaries (those would upgrade libc6 on Debian 12). Build products are cached in
#   /var/cache/snapfaas/criu-4.1.1 (keyed by the patch set) so reruns are fast.
#
# Note: `criu` prints "Error (criu/util.c): rlimit: Can't setup RLIMIT_NOFILE" on every
# run on these machines; it is harmless and ignored here.

set -euo pipefail

readonly PROG="install-system-deps"
readonly CRIU_VERSION="4.1.1"
readonly CRIU_MIN_MAJOR=4
readonly CRIU_MIN_MINOR=1
readonly CRIU_PREFIX_BIN="/usr/local/sbin/criu"
readonly CACHE_DIR="/var/cache/snapfaas/criu-${CRIU_VERSION}"
# CRIU's kernel-feature cache (/run/criu.kdat) carries its build's time as a magic number
# (SOURCE_DATE_EPOCH, else `date +%s` at make time) and a build ignores another build's cache:
# one fixed time for every build of this version lets a rebuilt or A/B binary share the cache.
readonly CRIU_SOURCE_DATE_EPOCH=1735689600
readonly TMP_SRC_FILE="/etc/apt/sources.list.d/snapfaas-trixie-src.sources"
readonly PATCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/criu-patches"
readonly CRIU_BUILD_DEPS=(
    build-essential gcc make xz-utils dpkg-dev patch
    protobuf-c-compiler libprotobuf-c-dev libprotobuf-dev protobuf-compiler
    python3-protobuf libnl-3-dev libnet1-dev libcap-dev pkg-config libbsd-dev
    libaio-dev uuid-dev
)

export DEBIAN_FRONTEND=noninteractive
# /usr/local/sbin is normally first on root's PATH; make sure it is searched here too.
case ":${PATH}:" in
    *:/usr/local/sbin:*) ;;
    *) PATH="/usr/local/sbin:${PATH}" ;;
esac
case ":${PATH}:" in
    *:/usr/sbin:*) ;;
    *) PATH="${PATH}:/usr/sbin:/sbin" ;;
esac
export PATH

CURRENT_STEP="startup"
APT_UPDATED=0
WORK_TMP=""
RUNC_VERSION=""
CRIU_FOUND_BIN=""
CRIU_FOUND_VERSION=""
TEMP_SRC_ADDED=0
TRIXIE_LISTS_BEFORE=""
DEBIAN_MAJOR=""
DEBIAN_CODENAME=""

log() { echo "${PROG}: $*"; }
warn() { echo "${PROG}: WARNING: $*" >&2; }
die() { echo "${PROG}: ERROR in step '${CURRENT_STEP}': $*" >&2; exit 1; }
step() { CURRENT_STEP="$1"; }

on_exit() {
    local rc=$?
    remove_temp_source_entry
    if [[ -n "${WORK_TMP}" && -d "${WORK_TMP}" ]]; then
        rm -rf -- "${WORK_TMP}"
    fi
    if [[ ${rc} -ne 0 && "${CURRENT_STEP}" != "report" ]]; then
        echo "${PROG}: FAILED (exit ${rc}) during step '${CURRENT_STEP}'" >&2
    fi
    exit "${rc}"
}
trap on_exit EXIT

usage() {
    sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'
}

# ---------------------------------------------------------------------------
# Detection
# ---------------------------------------------------------------------------

detect_debian_version() {
    step "detect-debian-version"
    [[ -r /etc/debian_version ]] || die "/etc/debian_version not found: not a Debian system"
    local v
    v="$(head -n1 /etc/debian_version)"
    case "${v}" in
        13|13.*|trixie/sid|trixie*) DEBIAN_MAJOR=13; DEBIAN_CODENAME=trixie ;;
        12|12.*|bookworm/sid|bookworm*) DEBIAN_MAJOR=12; DEBIAN_CODENAME=bookworm ;;
        *) die "unsupported Debian version '${v}' (need 12/bookworm or 13/trixie)" ;;
    esac
}

# Prints the runc version (e.g. 1.1.5+ds1), or fails.
runc_version() {
    command -v runc >/dev/null 2>&1 || return 1
    local out
    out="$(runc --version 2>/dev/null)" || return 1
    awk '/^runc version/ {print $3; exit}' <<<"${out}" | grep . || return 1
}

# The patch set: "<names> sha:<digest>", e.g. "map-pages-copy-on-write tmpfs-without-gzip
# sha:0123456789ab". A CRIU built from it prints "Patches: snapfaas <patch set>".
patch_set() {
    local names digest
    names="$(cd "${PATCH_DIR}" && ls -1 ./*.patch | sed 's|^\./[0-9]*-||; s|\.patch$||' | tr '\n' ' ')"
    digest="$(cat "${PATCH_DIR}"/*.patch | sha256sum | cut -c1-12)"
    printf '%ssha:%s\n' "${names}" "${digest}"
}

# Succeeds if the criu binary $1 was built with this repository's patch set.
criu_patched_ok() {
    local out
    out="$("$1" --version 2>/dev/null)" || return 1
    grep -qxF "Patches: snapfaas $(patch_set)" <<<"${out}"
}

# Prints the version of the criu binary $1 (e.g. 4.1.1), or fails.
criu_version_of() {
    local bin="$1" out
    [[ -x "${bin}" ]] || return 1
    out="$("${bin}" --version 2>/dev/null)" || return 1
    awk '/^Version:/ {print $2; exit}' <<<"${out}" | grep . || return 1
}

# Succeeds if the version string $1 is >= CRIU_MIN_MAJOR.CRIU_MIN_MINOR.
criu_version_ok() {
    local v="$1" major minor
    major="${v%%.*}"
    minor="${v#*.}"; minor="${minor%%.*}"
    [[ "${major}" =~ ^[0-9]+$ && "${minor}" =~ ^[0-9]+$ ]] || return 1
    (( major > CRIU_MIN_MAJOR || (major == CRIU_MIN_MAJOR && minor >= CRIU_MIN_MINOR) ))
}

# Succeeds if `$1 check` says "Looks good".
criu_check_ok() {
    local bin="$1" out
    out="$("${bin}" check 2>&1 || true)"
    grep -q "Looks good" <<<"${out}"
}

# Finds a working criu (>= 4.1, built with our patch set, and `criu check` passes).
# Sets CRIU_FOUND_BIN/_VERSION.
find_working_criu() {
    local candidates=() c v seen=" "
    c="$(command -v criu 2>/dev/null || true)"
    [[ -n "${c}" ]] && candidates+=("${c}")
    candidates+=("${CRIU_PREFIX_BIN}" /usr/sbin/criu)
    for c in "${candidates[@]}"; do
        [[ "${seen}" == *" ${c} "* ]] && continue
        seen+="${c} "
        v="$(criu_version_of "${c}")" || continue
        criu_version_ok "${v}" || continue
        criu_patched_ok "${c}" || continue
        criu_check_ok "${c}" || continue
        CRIU_FOUND_BIN="${c}"
        CRIU_FOUND_VERSION="${v}"
        return 0
    done
    return 1
}

# Warns if plain `criu` on PATH is not the working binary (runc runs `criu` from PATH).
warn_if_path_criu_differs() {
    local onpath
    onpath="$(command -v criu 2>/dev/null || true)"
    if [[ "${onpath}" != "${CRIU_FOUND_BIN}" ]]; then
        warn "'criu' on PATH is '${onpath:-<none>}', not ${CRIU_FOUND_BIN};" \
             "put $(dirname "${CRIU_FOUND_BIN}") first on PATH (runc runs 'criu' from PATH)"
    fi
}

# Commands the daemon runs, and the Debian packages that provide them.
# fusermount3 comes with libfuse3 (the snapshot view, snapshot/view.py, is a FUSE file system);
# libfuse3-dev + pkg-config let pip build the pyfuse3 binding against it.
readonly TOOL_PACKAGES=(ip:iproute2 nft:nftables setpriv:util-linux fusermount3:fuse3 pkg-config:pkg-config)
readonly LIBRARY_PACKAGES=(fuse3:libfuse3-dev)  # pkg-config module : Debian package

tools_present() {
    local entry
    for entry in "${TOOL_PACKAGES[@]}"; do
        command -v "${entry%%:*}" >/dev/null 2>&1 || return 1
    done
    for entry in "${LIBRARY_PACKAGES[@]}"; do
        pkg-config --exists "${entry%%:*}" 2>/dev/null || return 1
    done
}

install_tools() {
    step "install-tools"
    local entry missing=()
    for entry in "${TOOL_PACKAGES[@]}"; do
        command -v "${entry%%:*}" >/dev/null 2>&1 || missing+=("${entry##*:}")
    done
    for entry in "${LIBRARY_PACKAGES[@]}"; do
        pkg-config --exists "${entry%%:*}" 2>/dev/null || missing+=("${entry##*:}")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    apt_install "${missing[@]}"
}

# PostgreSQL's server (cluster mode's registry and queue; the test suite starts a private cluster
# with initdb/pg_ctl from /usr/lib/postgresql/<major>/bin). Debian's `postgresql` package names the
# distribution's supported major; no cluster of the package's own is created or started.
postgres_present() {
    compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
}

install_postgres() {
    step "install-postgresql"
    postgres_present && return 0
    mkdir -p /etc/postgresql-common
    [[ -e /etc/postgresql-common/createcluster.conf ]] \
        || printf 'create_main_cluster = false\n' >/etc/postgresql-common/createcluster.conf
    apt_install postgresql
    postgres_present || die "postgresql installed but no /usr/lib/postgresql/*/bin/initdb"
}

# Debian's Chromium and its WebDriver: the dashboard's browser tests drive them (Selenium).
browser_present() {
    command -v chromium >/dev/null && command -v chromedriver >/dev/null
}

install_browser() {
    step "install-chromium"
    browser_present && return 0
    apt_install chromium chromium-driver
    browser_present || die "chromium-driver installed but no chromium/chromedriver on PATH"
}

deps_present() {
    RUNC_VERSION="$(runc_version)" || return 1
    find_working_criu || return 1
    tools_present || return 1
    postgres_present || return 1
    browser_present || return 1
}

# ---------------------------------------------------------------------------
# apt helpers
# ---------------------------------------------------------------------------

apt_update() {
    log "apt-get update"
    apt-get update -qq || die "apt-get update failed"
    APT_UPDATED=1
}

# Succeeds if apt knows an install candidate for every package given.
apt_has_candidates() {
    local p cand
    for p in "$@"; do
        cand="$(apt-cache policy "${p}" 2>/dev/null | awk '/Candidate:/ {print $2; exit}')"
        [[ -n "${cand}" && "${cand}" != "(none)" ]] || return 1
    done
}

# Installs the given packages that are not installed yet.
apt_install() {
    local missing=() p
    for p in "$@"; do
        if ! dpkg-query -W -f='${Status}' "${p}" 2>/dev/null | grep -q "install ok installed"; then
            missing+=("${p}")
        fi
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    if [[ ${APT_UPDATED} -eq 0 ]] && ! apt_has_candidates "${missing[@]}"; then
        apt_update
    fi
    log "apt-get install -y ${missing[*]}"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" \
        || die "apt-get install ${missing[*]} failed"
}

# ---------------------------------------------------------------------------
# Install steps
# ---------------------------------------------------------------------------

install_runc() {
    step "install-runc"
    if RUNC_VERSION="$(runc_version)"; then
        log "runc ${RUNC_VERSION} already present"
        return 0
    fi
    apt_install runc
    RUNC_VERSION="$(runc_version)" || die "runc installed but 'runc --version' does not work"
    log "installed runc ${RUNC_VERSION}"
}

install_criu_build_deps() {
    step "install-criu-build-deps"
    apt_install "${CRIU_BUILD_DEPS[@]}"
}

# Prints "URI<TAB>SIGNED_BY" of the machine's main (non-security) binary entry for its own
# release (DEBIAN_CODENAME: bookworm or trixie).
find_debian_mirror() {
    local deb822=/etc/apt/sources.list.d/debian.sources line
    if [[ -r "${deb822}" ]]; then
        line="$(awk -v codename="${DEBIAN_CODENAME}" '
            function flush() {
                if (uri != "" && types ~ /(^| )deb( |$)/ && enabled != "no" &&
                    suites ~ ("(^| )" codename "( |-|$)") && suites !~ /security/ && !done) {
                    print uri "\t" signed; done = 1
                }
                uri = ""; types = ""; suites = ""; signed = ""; enabled = ""
            }
            /^[ \t]*$/ { flush(); next }
            /^#/ { next }
            tolower($1) == "types:"     { $1 = ""; types = $0 }
            tolower($1) == "uris:"      { uri = $2 }
            tolower($1) == "suites:"    { $1 = ""; suites = $0 }
            tolower($1) == "enabled:"   { enabled = tolower($2) }
            tolower($1) == "signed-by:" { signed = (NF >= 2 && $2 ~ /^\//) ? $2 : "" }
            END { flush() }
        ' "${deb822}")"
        if [[ -n "${line}" ]]; then
            printf '%s\n' "${line}"
            return 0
        fi
    fi
    if [[ -r /etc/apt/sources.list ]]; then
        line="$(awk -v codename="${DEBIAN_CODENAME}" '
            /^[ \t]*deb[ \t]/ {
                signed = ""; i = 2
                if ($2 ~ /^\[/) {
                    for (; i <= NF; i++) {
                        if ($i ~ /^\[?signed-by=/) { s = $i; sub(/^\[?signed-by=/, "", s); sub(/\]$/, "", s); signed = s }
                        if ($i ~ /\]$/) { i++; break }
                    }
                }
                uri = $i; suite = $(i + 1)
                if (suite == codename || suite == codename "-updates") { print uri "\t" signed; exit }
            }
        ' /etc/apt/sources.list)"
        if [[ -n "${line}" ]]; then
            printf '%s\n' "${line}"
            return 0
        fi
    fi
    return 1
}

add_temp_source_entry() {
    step "add-trixie-deb-src"
    local mirror uri signed
    mirror="$(find_debian_mirror)" \
        || die "could not find the machine's Debian ${DEBIAN_CODENAME} mirror in /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list"
    uri="${mirror%%$'\t'*}"
    signed="${mirror#*$'\t'}"
    if [[ -z "${signed}" && -r /usr/share/keyrings/debian-archive-keyring.gpg ]]; then
        signed=/usr/share/keyrings/debian-archive-keyring.gpg
    fi
    log "adding temporary deb-src entry (trixie, source only) for mirror ${uri}"
    TRIXIE_LISTS_BEFORE="$(trixie_list_files)"
    TEMP_SRC_ADDED=1
    {
        echo "# Temporary entry written by snapfaas scripts/install-system-deps.sh; removed on exit."
        echo "Types: deb-src"
        echo "URIs: ${uri}"
        echo "Suites: trixie"
        echo "Components: main"
        if [[ -n "${signed}" ]]; then echo "Signed-By: ${signed}"; fi
    } >"${TMP_SRC_FILE}"
}

# apt index files for trixie currently in /var/lib/apt/lists (one name per line).
trixie_list_files() {
    find /var/lib/apt/lists -maxdepth 1 -type f -name '*_dists_trixie_*' -printf '%f\n' 2>/dev/null | sort || true
}

remove_temp_source_entry() {
    if [[ -e "${TMP_SRC_FILE}" ]]; then
        rm -f -- "${TMP_SRC_FILE}"
        echo "${PROG}: removed temporary deb-src entry ${TMP_SRC_FILE}"
    fi
    # Also drop the trixie index files that the temporary entry's update created.
    if [[ ${TEMP_SRC_ADDED} -eq 1 ]]; then
        local f
        while IFS= read -r f; do
            [[ -n "${f}" ]] || continue
            grep -qxF -- "${f}" <<<"${TRIXIE_LISTS_BEFORE}" || rm -f -- "/var/lib/apt/lists/${f}"
        done < <(trixie_list_files)
        TEMP_SRC_ADDED=0
    fi
}

fetch_criu_source() {
    local tarball="${CACHE_DIR}/criu_${CRIU_VERSION}.orig.tar.xz"
    if [[ -s "${tarball}" ]]; then
        log "using cached ${tarball}"
        return 0
    fi
    add_temp_source_entry

    step "apt-update-trixie-src"
    # Refresh only the temporary entry's index (keeps the other lists untouched); if that
    # fails, fall back to a full update. Complaints are tolerated: what matters is whether
    # the tarball arrives.
    log "apt-get update (trixie deb-src only)"
    if ! apt-get update -qq \
            -o Dir::Etc::SourceList="${TMP_SRC_FILE}" \
            -o Dir::Etc::SourceParts=- \
            -o APT::Get::List-Cleanup=0; then
        warn "restricted apt-get update failed; trying a full apt-get update"
        apt-get update -qq || warn "apt-get update reported errors (tolerated)"
    fi

    step "apt-get-source-criu"
    WORK_TMP="$(mktemp -d /tmp/snapfaas-criu-src.XXXXXX)"
    log "apt-get source --download-only criu/trixie (404s for the .dsc/.debian.tar.xz are tolerated: only the orig tarball is used)"
    (
        cd "${WORK_TMP}"
        # The .dsc has been seen to 404 while the orig tarball arrives: do not trust
        # apt's exit code, check for the tarball instead.
        apt-get source --download-only -qq "criu/trixie" || true
        if [[ ! -s "criu_${CRIU_VERSION}.orig.tar.xz" ]]; then
            # Only trixie has a deb-src entry, so the plain name resolves there too.
            apt-get source --download-only -qq criu || true
        fi
    )
    remove_temp_source_entry
    local got="${WORK_TMP}/criu_${CRIU_VERSION}.orig.tar.xz"
    [[ -s "${got}" ]] \
        || die "criu_${CRIU_VERSION}.orig.tar.xz was not downloaded (apt-get source criu/trixie); files: $(ls "${WORK_TMP}" | tr '\n' ' ')"
    xz -t "${got}" || die "downloaded ${got} is corrupt"
    mkdir -p "${CACHE_DIR}"
    mv -f "${got}" "${tarball}"
    rm -rf -- "${WORK_TMP}"; WORK_TMP=""
    log "cached ${tarball}"
}

build_criu() {
    local tarball="${CACHE_DIR}/criu_${CRIU_VERSION}.orig.tar.xz"
    local built="${CACHE_DIR}/criu.bin"
    if [[ -x "${built}" ]] && [[ "$(criu_version_of "${built}" || true)" == "${CRIU_VERSION}" ]] \
            && criu_patched_ok "${built}"; then
        log "using cached build ${built}"
        return 0
    fi
    fetch_criu_source

    step "build-criu"
    local src="${CACHE_DIR}/src" patch
    rm -rf -- "${src}"
    mkdir -p "${src}"
    log "extracting ${tarball}"
    tar -xJf "${tarball}" -C "${src}" --strip-components=1 || die "could not extract ${tarball}"
    for patch in "${PATCH_DIR}"/*.patch; do
        log "applying $(basename "${patch}")"
        patch -d "${src}" -p1 --forward --quiet <"${patch}" || die "$(basename "${patch}") does not apply to criu ${CRIU_VERSION}"
    done
    sed -i "s|@SNAPFAAS_PATCHSET@|$(patch_set)|" "${src}/criu/config.c"
    # NO_GNUTLS: snapfaas never uses CRIU's TLS page server, and not loading GnuTLS (and the
    # eight libraries it pulls in) saves a millisecond on each of the two criu runs per restore.
    log "make -j$(nproc) NO_GNUTLS=1 criu (in ${src})"
    if ! SOURCE_DATE_EPOCH="${CRIU_SOURCE_DATE_EPOCH}" make -C "${src}" -j"$(nproc)" NO_GNUTLS=1 criu >"${CACHE_DIR}/build.log" 2>&1; then
        tail -n 30 "${CACHE_DIR}/build.log" >&2
        die "make criu failed (full log: ${CACHE_DIR}/build.log)"
    fi
    [[ -x "${src}/criu/criu" ]] || die "build finished but ${src}/criu/criu is missing"
    install -m 0755 "${src}/criu/criu" "${built}"
    rm -rf -- "${src}"
    criu_patched_ok "${built}" || die "the built criu does not report the patch set '$(patch_set)'"
    log "built criu $(criu_version_of "${built}" || echo '?') with patches: $(patch_set)"
}

install_criu_binary() {
    step "install-criu-binary"
    install -D -m 0755 "${CACHE_DIR}/criu.bin" "${CRIU_PREFIX_BIN}" \
        || die "could not install ${CRIU_PREFIX_BIN}"
    log "installed ${CRIU_PREFIX_BIN}"
}

install_criu_from_source() {
    install_criu_build_deps
    build_criu
    install_criu_binary
}

install_criu() {
    step "install-criu"
    if find_working_criu; then
        log "criu ${CRIU_FOUND_VERSION} already present at ${CRIU_FOUND_BIN}"
        return 0
    fi
    install_criu_from_source
}

verify() {
    step "verify"
    RUNC_VERSION="$(runc_version)" || die "'runc --version' does not work"
    if ! find_working_criu; then
        local c v
        for c in "$(command -v criu 2>/dev/null || true)" "${CRIU_PREFIX_BIN}"; do
            [[ -n "${c}" && -e "${c}" ]] || continue
            v="$(criu_version_of "${c}" || echo '?')"
            echo "${PROG}: ${c}: version ${v}; '${c} check' says:" >&2
            "${c}" check 2>&1 | sed 's/^/    /' >&2 || true
        done
        die "no criu >= ${CRIU_MIN_MAJOR}.${CRIU_MIN_MINOR} built with the patch set '$(patch_set)' whose 'criu check' says 'Looks good'"
    fi
    log "runc ${RUNC_VERSION}; criu ${CRIU_FOUND_VERSION} at ${CRIU_FOUND_BIN}; criu check: Looks good"
    warn_if_path_criu_differs
}

main() {
    local mode=install
    case "${1:-}" in
        "") ;;
        --check) mode=check ;;
        -h|--help) usage; exit 0 ;;
        *) echo "${PROG}: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac

    step "no-op-check"
    if deps_present; then
        echo "system deps: runc ${RUNC_VERSION}, criu ${CRIU_FOUND_VERSION} already present (criu: ${CRIU_FOUND_BIN})"
        warn_if_path_criu_differs
        exit 0
    fi
    if [[ "${mode}" == check ]]; then
        step "report"
        log "runc: $(runc_version || echo missing)"
        local c v
        for c in "$(command -v criu 2>/dev/null || true)" "${CRIU_PREFIX_BIN}"; do
            [[ -n "${c}" && -e "${c}" ]] || continue
            v="$(criu_version_of "${c}" || echo '?')"
            log "criu at ${c}: version ${v}, check $(criu_check_ok "${c}" && echo ok || echo FAILED)"
        done
        log "missing or not working: need runc and criu >= ${CRIU_MIN_MAJOR}.${CRIU_MIN_MINOR} built with the patch set '$(patch_set)' passing 'criu check'"
        exit 1
    fi

    step "preflight"
    [[ ${EUID} -eq 0 ]] || die "must run as root"
    detect_debian_version
    log "Debian ${DEBIAN_MAJOR} ($(head -n1 /etc/debian_version))"
    install_runc
    install_tools
    install_postgres
    install_browser
    install_criu
    verify
}

main "$@"
