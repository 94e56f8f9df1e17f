#!/usr/bin/env bash
# Installs the appliance into ./.venv; with --dev also the real test peers
# (redis-server, chromium, PostgreSQL, MinIO, stripe-mock). Safe to run again: every step
# checks what is already there and skips it.
set -Eeuo pipefail

usage() {
    cat <<'EOF'
Usage: ./install.sh [--dev | --system] [--help]

  (no flag)  create .venv, install the appliance and any plugins/*/ (editable)
  --dev      also install the dev extras and the test peers:
               redis-server, chromium, postgresql (apt-get; root/sudo)
               minio, stripe-mock       (go install into .tools/bin)
  --system   on-prem install on a Debian/Ubuntu host (root): a system user
             'appliance', /opt/appliance (code), /var/lib/appliance (data),
             /etc/appliance/appliance.env (settings, with a generated root key)
             and systemd units (appliance, and an optional appliance-worker).
             APPLIANCE_SYSTEM_ROOT=/some/dir writes all of it under that
             directory instead (a throwaway root: no user, no systemctl).
  --help     show this help

Running it twice is safe: anything already installed is skipped.
EOF
}

DEV=0
SYSTEM=0
for arg in "$@"; do
    case "$arg" in
        --dev) DEV=1 ;;
        --system) SYSTEM=1 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "install.sh: unknown argument '$arg'" >&2; usage >&2; exit 2 ;;
    esac
done

if [[ $DEV == 1 && $SYSTEM == 1 ]]; then echo "install.sh: --dev and --system do not go together" >&2; exit 2; fi

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
TOOLS_BIN="$ROOT/.tools/bin"
# The stamp records what the last successful pip install was done from, so a
# second run skips pip entirely (editable installs pick up code changes anyway).
STAMP="$VENV/.appliance-install-stamp"

TOTAL=4
if [[ $DEV == 1 ]]; then TOTAL=6; fi
if [[ $SYSTEM == 1 ]]; then TOTAL=6; fi
STEP_NO=0
STEP_NAME="startup"
INSTALLED=()
SKIPPED=()

step() {
    STEP_NO=$((STEP_NO + 1))
    STEP_NAME="$1"
    printf '\n==> [%d/%d] %s\n' "$STEP_NO" "$TOTAL" "$STEP_NAME"
}
note() { printf '    %s\n' "$*"; }
skip() { note "skip: $*"; SKIPPED+=("$*"); }
did() { note "done: $*"; INSTALLED+=("$*"); }
die() {
    printf '\n==> FAILED at [%d/%d] %s\n    reason: %s\n' "$STEP_NO" "$TOTAL" "$STEP_NAME" "$*" >&2
    exit 1
}
on_err() {
    local rc=$? line=$1 cmd=$2
    printf '\n==> FAILED at [%d/%d] %s\n    reason: '%s' exited with status %d (install.sh line %d)\n' \
        "$STEP_NO" "$TOTAL" "$STEP_NAME" "$cmd" "$rc" "$line" >&2
    exit "$rc"
}
trap 'on_err $LINENO "$BASH_COMMAND"' ERR

python_ok() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; }

find_python() {
    local c
    for c in python3.13 python3.12 python3.11 python3; do
        if command -v "$c" >/dev/null 2>&1 && python_ok "$c"; then
            command -v "$c"
            return 0
        fi
    done
    return 1
}

# Hash of everything that decides what pip installs; changes force a reinstall.
install_fingerprint() {
    local mode=$1
    {
        echo "mode=$mode"
        cat pyproject.toml
        for f in plugins/*/pyproject.toml; do
            if [[ -f $f ]]; then echo "$f"; cat "$f"; fi
        done
    } | sha256sum | cut -d' ' -f1
}

pip_is_current() {
    # A --dev install also satisfies a plain run, so accept either stamp then.
    [[ -f $STAMP && -x $VENV/bin/appliance ]] || return 1
    local have
    have="$(cat "$STAMP")"
    [[ $have == "$(install_fingerprint dev)" ]] && return 0
    [[ $DEV == 0 && $have == "$(install_fingerprint base)" ]]
}

# ---------------------------------------------------------------- Python ---
step "Find Python >= 3.11"
PYTHON="$(find_python)" || die "no Python >= 3.11 found (tried python3.13, python3.12, python3.11, python3); install python3.11 or newer"
note "using $PYTHON ($("$PYTHON" -c 'import platform; print(platform.python_version())'))"

if [[ $SYSTEM == 1 ]]; then
    # shellcheck source=deploy/system-install.sh
    source "$ROOT/deploy/system-install.sh"
    system_install
    exit 0
fi

step "Create virtualenv .venv"
if [[ -x $VENV/bin/python ]]; then
    python_ok "$VENV/bin/python" || die ".venv uses Python < 3.11; remove it (rm -rf .venv) and run again"
    skip ".venv already exists"
else
    "$PYTHON" -m venv "$VENV" || die "'$PYTHON -m venv' failed; on Debian install the python3-venv package"
    did "created .venv"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

MODE=base
EXTRAS="."
LABEL="appliance"
if [[ $DEV == 1 ]]; then MODE=dev; EXTRAS=".[dev]"; LABEL="appliance[dev]"; fi
NEED_PIP=1
if pip_is_current; then NEED_PIP=0; fi

step "Upgrade pip"
if [[ $NEED_PIP == 0 ]]; then
    skip "pip (dependencies unchanged since last install)"
else
    before="$("${PIP[@]}" --version | cut -d' ' -f2)"
    "${PIP[@]}" install --quiet --upgrade pip
    after="$("${PIP[@]}" --version | cut -d' ' -f2)"
    if [[ $before == "$after" ]]; then skip "pip $after is already the latest"; else did "pip $before -> $after"; fi
fi

PLUGINS=()
for d in plugins/*/; do
    if [[ -f ${d}pyproject.toml ]]; then PLUGINS+=("${d%/}"); fi
done

step "Install appliance and plugins (pip install -e '$EXTRAS' plugins/*/)"
if [[ $NEED_PIP == 0 ]]; then
    skip "$LABEL and plugins ${PLUGINS[*]} (unchanged since last install)"
else
    rm -f "$STAMP"
    # One resolver run for the package and every plugin, so their pins agree (aiobotocore pins botocore).
    editable=(-e "$EXTRAS")
    for p in "${PLUGINS[@]}"; do editable+=(-e "$p"); done
    "${PIP[@]}" install --quiet "${editable[@]}"
    did "$LABEL (editable)${PLUGINS[*]:+, plugins ${PLUGINS[*]}}"
fi
if [[ $NEED_PIP == 1 ]]; then install_fingerprint "$MODE" >"$STAMP"; fi

# ------------------------------------------------------------ test peers ---
have_cmd() {
    command -v "$1" >/dev/null 2>&1 || [[ -x /usr/sbin/$1 || -x /usr/bin/$1 ]]
}

install_apt_peers() {
    step "Install system test peers (redis-server, chromium, postgresql)"
    local missing=() pkg
    for pkg in redis-server chromium; do
        if have_cmd "$pkg"; then skip "$pkg already installed"; else missing+=("$pkg"); fi
    done
    # Debian's server binaries live off PATH, under /usr/lib/postgresql/<major>/bin.
    if compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null; then
        skip "postgresql already installed"
    else
        missing+=(postgresql)
    fi
    if [[ ${#missing[@]} == 0 ]]; then return 0; fi

    local sudo=()
    if [[ $EUID -ne 0 ]]; then
        command -v sudo >/dev/null 2>&1 \
            || die "need root to install ${missing[*]}; run as root: apt-get install -y ${missing[*]}"
        sudo=(sudo)
    fi
    command -v apt-get >/dev/null 2>&1 \
        || die "apt-get not found; install these with your package manager: ${missing[*]}"
    note "apt-get install ${missing[*]}"
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    for pkg in "${missing[@]}"; do did "$pkg (apt)"; done
}

find_go() {
    if command -v go >/dev/null 2>&1; then command -v go; return 0; fi
    if [[ -x /usr/local/go/bin/go ]]; then echo /usr/local/go/bin/go; return 0; fi
    return 1
}

install_go_peers() {
    step "Install Go test peers (minio, stripe-mock) into .tools/bin"
    mkdir -p "$TOOLS_BIN"
    local name module pinned found go=""
    # name=module=version known to build with this machine's Go: the fallback when @latest needs a
    # newer toolchain than the one installed (as PocketBase's latest release already does).
    for spec in minio=github.com/minio/minio=v0.0.0-20260212201848-7aac2a2c5b7c \
        stripe-mock=github.com/stripe/stripe-mock=v0.203.0; do
        name=${spec%%=*}
        module=${spec#*=}
        pinned=${module#*=}
        module=${module%%=*}
        if [[ -x $TOOLS_BIN/$name ]]; then
            skip "$name already in .tools/bin"
            continue
        fi
        if found="$(command -v "$name" 2>/dev/null)"; then
            ln -sf "$found" "$TOOLS_BIN/$name"
            did "$name found at $found, linked into .tools/bin"
            continue
        fi
        if [[ -z $go ]]; then
            go="$(find_go)" || die "Go is not installed (looked on PATH and /usr/local/go/bin/go); install Go >= 1.22 from https://go.dev/dl/ to build $name"
        fi
        if [[ $name == minio ]]; then note "note: compiling MinIO from source may take several minutes"; fi
        note "$go install $module@latest"
        if GOBIN="$TOOLS_BIN" GOTOOLCHAIN=local "$go" install "$module@latest"; then
            did "$name (go install $module@latest)"
        else
            note "@latest did not build with $("$go" version | cut -d' ' -f3); trying the known-good $pinned"
            GOBIN="$TOOLS_BIN" GOTOOLCHAIN=local "$go" install "$module@$pinned"
            did "$name (go install $module@$pinned)"
        fi
    done
}

if [[ $DEV == 1 ]]; then
    install_apt_peers
    install_go_peers
fi

# --------------------------------------------------------------- summary ---
trap - ERR
printf '\n==> Summary\n'
if [[ ${#INSTALLED[@]} -gt 0 ]]; then
    echo "    installed:"
    printf '      - %s\n' "${INSTALLED[@]}"
else
    echo "    installed: nothing new, everything was already in place"
fi
if [[ ${#SKIPPED[@]} -gt 0 ]]; then
    echo "    already there (skipped):"
    printf '      - %s\n' "${SKIPPED[@]}"
fi
cat <<'EOF'

    run:   .venv/bin/appliance run
    test:  .venv/bin/pytest
EOF
if [[ $DEV == 0 ]]; then echo "    (for tests and their peers: ./install.sh --dev)"; fi
