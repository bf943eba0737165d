# Shared by ./scripts/dev and ./scripts/test: make a fresh machine ready, quietly and only once.
# Sourced, not run. Expects to be in the repository root.

# requirement_files FILE: FILE and every file it includes with -r, recursively (paths as pip reads them).
requirement_files() {
    local file="$1" include
    echo "$file"
    sed -n 's/^-r[[:space:]]*//p' "$file" | while read -r include; do
        requirement_files "$(dirname "$file")/$include"
    done
}

# ensure_venv REQUIREMENTS_FILE: create .venv if missing; pip install when the file (or a file it
# includes with -r) changed since the last install, tracked by a hash stamp inside .venv. Only
# those files count: editing the test requirements does not make ./scripts/dev reinstall.
ensure_venv() {
    local req="$1"
    local python="${PYTHON:-}"
    if [ -z "$python" ]; then
        if command -v python3.11 >/dev/null 2>&1; then python=python3.11; else python=python3; fi
    fi
    if [ ! -x .venv/bin/python ]; then
        echo "==> creating .venv with $("$python" --version 2>&1)" >&2
        "$python" -m venv .venv
    fi
    local stamp=".venv/.installed-$(basename "$req")"
    local digest
    digest=$(requirement_files "$req" | sort -u | xargs cat | sha256sum | cut -d' ' -f1)
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$digest" ]; then
        echo "==> installing $req into .venv" >&2
        .venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$req"
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
