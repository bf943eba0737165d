# Shared by ./scripts/dev and ./scripts/test: make a fresh machine ready, quietly and only once.
# Sourced, not run. Expects to be in the repository root.

# ensure_venv LOCK_FILE: create .venv if missing; when the lock changed since the last install
# (a hash stamp inside .venv), install exactly what it pins: --require-hashes, --no-deps (a lock
# holds every package), then `pip check`. The test suite's lock is the superset of the others, so
# installing it also removes what it no longer holds: the suite runs on the lock and nothing else.
# Each lock is compiled from its *.in ranges by ./scripts/lock (scripts/deps.py).
ensure_venv() {
    local lock="$1"
    local python="${PYTHON:-}"
    if [ -z "$python" ]; then
        if command -v python3.11 >/dev/null 2>&1; then python=python3.11; else python=python3; fi
    fi
    if [ ! -x .venv/bin/python ]; then
        echo "==> creating .venv with $("$python" --version 2>&1)" >&2
        "$python" -m venv .venv
    fi
    local stamp=".venv/.installed-$(basename "$lock")"
    local digest
    digest=$(sha256sum "$lock" | cut -d' ' -f1)
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$digest" ]; then
        echo "==> installing $lock into .venv" >&2
        .venv/bin/python -m pip install --quiet --disable-pip-version-check --require-hashes --no-deps -r "$lock"
        if [ "$lock" = "requirements-dev.txt" ]; then
            .venv/bin/python -m scripts.deps prune "$lock"
        fi
        .venv/bin/python -m pip check --disable-pip-version-check >/dev/null \
            || { .venv/bin/python -m pip check --disable-pip-version-check >&2; return 1; }
        echo "$digest" > "$stamp"
    fi
}

# ensure_apt COMMAND:PACKAGE ...: install each Debian package whose command is missing, when we
# are root on Debian/Ubuntu. Elsewhere, say what is missing and carry on (tests skip with a reason).
ensure_apt() {
    local missing=()
    local pair
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair##*:}")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        echo "==> apt-get install ${missing[*]}" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 \
            || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq "${missing[@]}" >/dev/null; }
    else
        echo "==> missing Debian packages: ${missing[*]} (install them with apt-get as root)" >&2
    fi
}
