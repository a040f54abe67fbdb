#!/usr/bin/env bash
# scripts/dev.sh: the one set-up entry point of mailrelay development.
#
#   scripts/dev.sh run  [twistd plugin args...]   set up, then run the daemon in the foreground:
#                                                 .venv/bin/twistd -n mailrelay "$@"
#   scripts/dev.sh test [pytest args...]          set up with the test tools, then run the tests:
#                                                 .venv/bin/python -m pytest "$@" (default: -q)
#
# Both run from the repository root (relative paths such as `-c etc/mailrelay.toml` and the
# default state_dir "var" are relative to it).
#
# Set-up, written for Debian 12 with Python 3.11; idempotent and silent when nothing is missing:
#   * apt-get installs what is missing (apt-get update first, only then; sudo when not root):
#       redis-server; postgresql (Debian's package: the server binaries in
#       /usr/lib/postgresql/<major>/bin, which mailrelay/pgproc.py finds; the system cluster the
#       package creates and starts is stopped and disabled, as mailrelay runs its own); for `test` also swaks, libnet-ssleay-perl (swaks' TLS), chromium (the
#       status page test runs it headless) and postfix (for smtp-sink; the postfix install is
#       preseeded to "No configuration" and a postfix it started is stopped and disabled, so
#       nothing is left listening on port 25);
#       python3-venv only when `python3 -m venv` fails.
#   * .venv is created with python3.11 (or a python3 >= 3.11) and the project is installed into
#     it, editable and with the test extra:
#       pip install -q -e '.[test]' --config-settings editable_mode=compat
#     ("compat" keeps twisted/plugins/mailrelay_plugin.py visible to twistd); this is redone only
#     when setup.cfg or pyproject.toml changed since the last successful install (stamp file
#     .venv/.mailrelay-install-stamp; delete it to force a reinstall).
set -euo pipefail

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
VENV=$ROOT/.venv
STAMP=$VENV/.mailrelay-install-stamp

say() { printf 'dev.sh: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

usage() {
    cat >&2 <<'USAGE'
usage: scripts/dev.sh run  [twistd plugin args...]   e.g. scripts/dev.sh run -c etc/mailrelay.toml
       scripts/dev.sh test [pytest args...]          e.g. scripts/dev.sh test -x tests/test_config_docs.py
USAGE
    exit 2
}

# An executable on PATH (bash's `command -v` also reports a non-executable file as a last resort).
have() {
    local path
    path=$(command -v "$1" 2>/dev/null) && [ -x "$path" ]
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif have sudo; then
        sudo -- "$@"
    else
        die "root is needed to run: $* (run as root or install sudo)"
    fi
}

# smtp-sink and postfix live in /usr/sbin, which a normal user's PATH may lack; the tests
# look smtp-sink up on PATH, so it stays exported for them.
case ":$PATH:" in
    *:/usr/sbin:*) ;;
    *) PATH=$PATH:/usr/sbin ;;
esac
export PATH

APT_UPDATED=
apt_install() {
    have apt-get || die "missing: $*; there is no apt-get here to install it, please install it yourself"
    say "installing with apt-get: $*"
    if [ -z "$APT_UPDATED" ]; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get -qq update >/dev/null \
            || die "apt-get update failed"
        APT_UPDATED=1
    fi
    # --no-remove: never remove anything to make room (postfix would replace an installed MTA
    # such as exim4); apt-get stops instead, and we say so.
    as_root env DEBIAN_FRONTEND=noninteractive apt-get -y -qq --no-remove \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        install "$@" >/dev/null \
        || die "apt-get install $* failed (if it wanted to remove packages, e.g. another MTA in the way of postfix, install them yourself)"
}

# PostgreSQL's server binaries: on PATH, or where Debian puts them (not on PATH).
have_postgres_server() {
    local dir
    have initdb && have postgres && return 0
    for dir in /usr/lib/postgresql/*/bin; do
        [ -x "$dir/initdb" ] && [ -x "$dir/postgres" ] && return 0
    done
    return 1
}

postgresql_installed() {
    dpkg-query -W -f='${Status}' postgresql 2>/dev/null | grep -q 'install ok installed'
}

postfix_installed() {
    dpkg-query -W -f='${Status}' postfix 2>/dev/null | grep -q 'install ok installed'
}

ensure_system_packages() {
    local verb=$1 missing=() fresh_postfix= fresh_postgresql=
    have redis-server || missing+=(redis-server)
    if ! have_postgres_server; then
        missing+=(postgresql)
        postgresql_installed || fresh_postgresql=1
    fi
    if [ "$verb" = test ]; then
        have swaks || missing+=(swaks)
        # swaks does STARTTLS/implicit TLS through Net::SSLeay, only a Recommends of swaks.
        perl -MNet::SSLeay -e 1 >/dev/null 2>&1 || missing+=(libnet-ssleay-perl)
        # headless Chromium loads the status page in tests/test_status_page.py
        have chromium || missing+=(chromium)
        if ! have smtp-sink; then
            missing+=(postfix)
            if ! postfix_installed; then
                fresh_postfix=1
                # Only smtp-sink is wanted: no questions, no mail system configured.
                printf '%s\n' \
                    'postfix postfix/main_mailer_type select No configuration' \
                    "postfix postfix/mailname string $(hostname -f 2>/dev/null || hostname)" \
                    | as_root debconf-set-selections 2>/dev/null || true
            fi
        fi
    fi
    [ "${#missing[@]}" -eq 0 ] && return 0
    apt_install "${missing[@]}"
    if [ -n "$fresh_postfix" ]; then
        # The package enables postfix and, when it finds a main.cf, starts it (port 25).
        if [ -d /run/systemd/system ]; then
            as_root systemctl disable --now postfix.service >/dev/null 2>&1 || true
        fi
        if as_root postfix status >/dev/null 2>&1; then
            say "stopping the postfix that the package install started"
            as_root postfix stop >/dev/null 2>&1 || true
        fi
    fi
    if [ -n "$fresh_postgresql" ]; then
        # The package creates and starts a system cluster (e.g. 15/main on port 5432); mailrelay
        # runs its own PostgreSQL, so stop and disable that one.
        if [ -d /run/systemd/system ]; then
            as_root systemctl disable --now postgresql.service >/dev/null 2>&1 || true
        fi
        if have pg_lsclusters; then
            local version name rest
            while read -r version name rest; do
                as_root pg_ctlcluster "$version" "$name" stop >/dev/null 2>&1 || true
            done < <(pg_lsclusters --no-header 2>/dev/null)
        fi
    fi
    have_postgres_server || die "PostgreSQL's initdb and postgres are still missing after installing postgresql"
    if [ "$verb" = test ] && ! have smtp-sink; then
        die "smtp-sink is still missing after installing postfix"
    fi
}

python_ok() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; }

find_python() {
    local candidate
    for candidate in python3.11 python3; do
        if have "$candidate" && python_ok "$candidate"; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

ensure_venv() {
    if [ -x "$VENV/bin/python" ] && python_ok "$VENV/bin/python"; then
        return 0
    fi
    local python log
    if ! python=$(find_python); then
        have python3 || apt_install python3 python3-venv
        python=$(find_python) || die "need python3.11 or a python3 >= 3.11 (found: $(python3 --version 2>&1))"
    fi
    say "creating .venv with $python ($("$python" --version 2>&1))"
    rm -f "$STAMP"
    log=$(mktemp)
    if ! "$python" -m venv --clear "$VENV" >"$log" 2>&1; then
        # Debian's python3 has venv without ensurepip until python3-venv is installed.
        apt_install python3-venv
        if ! "$python" -m venv --clear "$VENV" >"$log" 2>&1; then
            cat "$log" >&2
            rm -f "$log"
            die "$python -m venv failed"
        fi
    fi
    rm -f "$log"
    PIP_DISABLE_PIP_VERSION_CHECK=1 "$VENV/bin/python" -m pip install -q --upgrade pip \
        || die "upgrading pip in .venv failed"
}

install_project() {
    local want have_stamp=
    want=$(cd "$ROOT" && sha256sum setup.cfg pyproject.toml)
    [ -f "$STAMP" ] && have_stamp=$(cat "$STAMP")
    [ "$want" = "$have_stamp" ] && return 0
    say "installing mailrelay (editable) and its dependencies into .venv"
    (cd "$ROOT" && PIP_DISABLE_PIP_VERSION_CHECK=1 "$VENV/bin/python" -m pip install -q \
        -e '.[test]' --config-settings editable_mode=compat) \
        || die "pip install -e '.[test]' failed"
    printf '%s\n' "$want" >"$STAMP"
}

setup() {
    ensure_system_packages "$1"
    ensure_venv
    install_project
}

[ $# -ge 1 ] || usage
verb=$1
shift
case "$verb" in
    run)
        setup run
        cd "$ROOT"
        exec .venv/bin/twistd -n mailrelay "$@"
        ;;
    test)
        setup test
        cd "$ROOT"
        [ $# -gt 0 ] || set -- -q
        exec .venv/bin/python -m pytest "$@"
        ;;
    -h | --help | help)
        usage
        ;;
    *)
        say "unknown verb: $verb"
        usage
        ;;
esac
