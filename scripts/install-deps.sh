#!/usr/bin/env bash
# Installs the system packages etl's demo, tests and CI need, when they are missing.
#
#   scripts/install-deps.sh [--dry-run] [demo|test|ci]
#
#   demo  PostgreSQL server + client, MariaDB server + client, openssl (services.sh makes a
#         test certificate with it)                                          (make demo)
#   test  demo + python3 with pyarrow (the tests read staged Parquet with it) (make test)
#   ci    test + make                                                        (.ci/run)
#
# A machine that has everything installs nothing and prints one line. Otherwise, as root
# with apt-get: `apt-get install` of what is missing, with the packaged services kept from
# starting (they would take ports 5432/3306; scripts/services.sh runs its own instances);
# pyarrow comes from PyPI (Debian 12 has no python3-pyarrow). Not root: prints the sudo
# command to run and exits 1. No apt-get: lists the packages and exits 1.
# --dry-run (or ETL_DEPS_DRY_RUN=1): prints what it would install and exits 0.
# Detection looks on PATH and in the packages' own folders: ETL_DEPS_SYSTEM_DIRS (default
# "/usr/sbin /sbin /usr/local/sbin") and ETL_DEPS_PG_LIB/*/bin (default /usr/lib/postgresql).
# Pointing PATH and both at empty folders shows the "missing" path on a complete machine.
set -euo pipefail

prog=install-deps
die() { echo "$prog: error: $*" >&2; exit 1; }

dry_run=${ETL_DEPS_DRY_RUN:-0}
target=test
for arg in "$@"; do
    case $arg in
    --dry-run) dry_run=1 ;;
    demo | test | ci) target=$arg ;;
    -h | --help) sed -n '2,20p' "$0"; exit 0 ;;
    *) die "unknown argument '$arg' (usage: $0 [--dry-run] [demo|test|ci])" ;;
    esac
done

# Folders the packages install into that are not always on PATH (sbin for a non-root
# user, PostgreSQL's versioned bindir on Debian).
read -r -a system_dirs <<<"${ETL_DEPS_SYSTEM_DIRS-/usr/sbin /sbin /usr/local/sbin}"
pg_lib_glob=${ETL_DEPS_PG_LIB-/usr/lib/postgresql}

# ------------------------------------------------------------------ detection

have() {
    local d
    command -v "$1" >/dev/null 2>&1 && return 0
    for d in "${system_dirs[@]}"; do
        [[ -x $d/$1 ]] && return 0
    done
    return 1
}

# What scripts/services.sh needs of PostgreSQL: pg_ctl, initdb and pg_isready in one bindir.
have_pg_server() {
    local d
    for d in "$pg_lib_glob"/*/bin; do
        [[ -x $d/pg_ctl && -x $d/initdb && -x $d/pg_isready ]] && return 0
    done
    have pg_ctl && have initdb && have pg_isready
}

# mariadbd (or mysqld) and the datadir initialiser that services.sh runs.
have_mariadb_server() {
    { have mariadbd || have mysqld; } && { have mariadb-install-db || have mysql_install_db; }
}

have_mariadb_client() {
    { have mariadb || have mysql; } && { have mariadb-admin || have mysqladmin; }
}

have_pyarrow() {
    have python3 && python3 -c "import pyarrow" >/dev/null 2>&1
}

missing=()     # Debian packages
need_pyarrow=0
have_pg_server || missing+=(postgresql)
have psql || missing+=(postgresql-client)
have_mariadb_server || missing+=(mariadb-server)
have_mariadb_client || missing+=(mariadb-client)
have openssl || missing+=(openssl)
if [[ $target != demo ]]; then
    if ! have python3; then
        missing+=(python3 python3-pip)
    elif ! python3 -m pip --version >/dev/null 2>&1 && ! have_pyarrow; then
        missing+=(python3-pip)
    fi
    have_pyarrow || need_pyarrow=1
fi
if [[ $target == ci ]]; then
    have make || missing+=(make)
fi

# The Rust toolchain cannot come from apt (too old) and is not installed here.
if ! command -v "${CARGO:-cargo}" >/dev/null 2>&1; then
    if [[ -x ${CARGO_HOME:-$HOME/.cargo}/bin/cargo ]]; then
        echo "$prog: note: cargo is in ${CARGO_HOME:-$HOME/.cargo}/bin, which is not on PATH" >&2
    else
        echo "$prog: note: cargo not found; install the Rust toolchain with rustup" >&2
    fi
fi

if [[ ${#missing[@]} -eq 0 && $need_pyarrow -eq 0 ]]; then
    echo "$prog: everything '$target' needs is installed"
    exit 0
fi

what=("${missing[@]}")
[[ $need_pyarrow -eq 1 ]] && what+=("pyarrow (PyPI)")
echo "$prog: missing for '$target': ${what[*]}"

self=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
apt_line="apt-get install -y --no-install-recommends ${missing[*]}"
pip_line="python3 -m pip install pyarrow"

if [[ $dry_run == 1 ]]; then
    [[ ${#missing[@]} -gt 0 ]] && echo "$prog: would run: apt-get update && $apt_line (services kept from starting)"
    [[ $need_pyarrow -eq 1 ]] && echo "$prog: would run: $pip_line"
    exit 0
fi

# ------------------------------------------------------------------ apt-get

if [[ ${#missing[@]} -gt 0 ]]; then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "$prog: apt-get not found. Install these packages (Debian names) with your" >&2
        echo "  system's package manager, then run this again: ${missing[*]}" >&2
        [[ $need_pyarrow -eq 1 ]] && echo "  and pyarrow: $pip_line" >&2
        exit 1
    fi
    if [[ $(id -u) -ne 0 ]]; then
        echo "$prog: installing packages needs root. Run:" >&2
        echo "  sudo $self $target" >&2
        echo "(or by hand: sudo apt-get update && sudo $apt_line)" >&2
        exit 1
    fi

    # Keep apt from starting the packaged services (a postgresql cluster on 5432, mariadb
    # on 3306): policy-rc.d exiting 101 = "action forbidden". An existing policy-rc.d
    # (e.g. Docker's) is put back afterwards.
    policy=/usr/sbin/policy-rc.d
    policy_backup=""
    restore_policy() {
        rm -f "$policy"
        if [[ -n $policy_backup ]]; then mv -f "$policy_backup" "$policy"; fi
    }
    if [[ -e $policy ]]; then
        policy_backup=$(mktemp /usr/sbin/policy-rc.d.etl-backup.XXXXXX)
        cp -p "$policy" "$policy_backup"
    fi
    trap restore_policy EXIT
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 0755 "$policy"

    export DEBIAN_FRONTEND=noninteractive
    echo "$prog: apt-get update && $apt_line"
    apt-get update -qq </dev/null || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null \
        || die "apt-get install ${missing[*]} failed"

    restore_policy
    trap - EXIT
fi

# ------------------------------------------------------------------ pyarrow

if [[ $need_pyarrow -eq 1 ]] && ! have_pyarrow; then
    echo "$prog: $pip_line"
    pip=(python3 -m pip install --quiet --disable-pip-version-check pyarrow)
    pip_err=$(mktemp)
    # A system Python (PEP 668) refuses plain pip installs; the tests only need the module
    # importable by python3, so say so explicitly then.
    if ! "${pip[@]}" </dev/null 2>"$pip_err"; then
        if grep -q externally-managed "$pip_err"; then
            "${pip[@]}" --break-system-packages </dev/null 2>"$pip_err" || {
                cat "$pip_err" >&2
                rm -f "$pip_err"
                die "pip could not install pyarrow"
            }
        else
            cat "$pip_err" >&2
            rm -f "$pip_err"
            die "pip could not install pyarrow (not root? try: $pip_line --user)"
        fi
    fi
    rm -f "$pip_err"
    have_pyarrow || die "pyarrow installed but python3 cannot import it"
fi

echo "$prog: installed what '$target' needs"
