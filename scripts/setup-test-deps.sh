#!/usr/bin/env bash
# Install everything ferry's test suite needs that is not a Rust crate:
#   * Debian packages (strace, curl, iproute2, nftables, procps, psmisc, postgresql, ...)
#   * a Python venv with tuspy and SeaweedFS (`weed`, for the S3 tests)
#                                   -> tests/interop/.venv
#   * npm packages (tus-js-client, @tus/server, @tus/file-store, uppy,
#     playwright-core)
#                                   -> tests/interop/node_modules
#   * rustus (a tus server, from crates.io) -> tests/interop/.rustus/bin/rustus
#
# Idempotent and fast on re-runs: each step is skipped when it is already
# satisfied (missing Debian packages only; pip only when requirements.txt
# changed; `npm ci` only when package-lock.json changed; rustus only when its
# binary is missing or another version — building it takes ~4 minutes on 2 cores).
#
# Usage: bash scripts/setup-test-deps.sh
# Env:   FERRY_SETUP_PYTHON  interpreter used to create the venv (default: python3)
set -euo pipefail

# Debian packages the tests need. Add to this list (e.g. nginx-light, aria2)
# when a test starts depending on another tool.
APT_PACKAGES=(
  strace
  curl
  iproute2
  nftables
  procps
  psmisc
  # downloads (crates/cli/tests/it/download.rs): third-party clients that fetch from
  # `ferry serve`, and an origin server `ferry download` fetches from.
  aria2
  wget
  nginx-light
  # browser interop (crates/cli/tests/it/browser.rs): headless Chromium driven by
  # playwright-core from tests/interop/browser.mjs (no browser download).
  chromium
  # keep_going.rs runs the client as nobody (setpriv); generated.rs renders man pages.
  util-linux
  groff-base
  # PostgreSQL metadata (--meta postgres://): scripts/postgres.sh starts a throwaway cluster
  # (initdb, pg_ctl) for the tests.
  postgresql
)

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
INTEROP="$ROOT/tests/interop"
VENV="$INTEROP/.venv"
REQUIREMENTS="$INTEROP/requirements.txt"
PY_STAMP="$VENV/.ferry-requirements.sha256"
NPM_LOCK="$INTEROP/package-lock.json"
NPM_STAMP="$INTEROP/node_modules/.ferry-package-lock.sha256"
BASE_PYTHON="${FERRY_SETUP_PYTHON:-python3}"
RUSTUS_VERSION=0.5.10
RUSTUS_ROOT="$INTEROP/.rustus"

log() { printf 'setup-test-deps: %s\n' "$*"; }
die() { printf 'setup-test-deps: ERROR: %s\n' "$*" >&2; exit 1; }

# Quiet a command unless it fails; then show its output.
quiet() {
  local out
  if ! out="$("$@" 2>&1)"; then
    printf '%s\n' "$out" >&2
    return 1
  fi
}

# sha256 of the given files (one combined hex digest).
hash_files() { cat "$@" | sha256sum | cut -d' ' -f1; }

# ---------------------------------------------------------------- apt -------
apt_step() {
  local want=("${APT_PACKAGES[@]}") missing=() pkg
  command -v node >/dev/null 2>&1 || want+=(nodejs)
  command -v npm >/dev/null 2>&1 || want+=(npm)
  for pkg in "${want[@]}"; do
    if [[ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)" != "install ok installed" ]]; then
      missing+=("$pkg")
    fi
  done
  if ((${#missing[@]} == 0)); then
    log "apt: all ${#want[@]} packages present"
    return
  fi
  local sudo=()
  if [[ "$(id -u)" != 0 ]]; then
    command -v sudo >/dev/null 2>&1 || die "apt: need root (or sudo) to install: ${missing[*]}"
    sudo=(sudo)
  fi
  log "apt: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  local apt_opts=(-q -o DPkg::Lock::Timeout=300)
  quiet "${sudo[@]}" apt-get "${apt_opts[@]}" update
  quiet "${sudo[@]}" apt-get "${apt_opts[@]}" install -y --no-install-recommends "${missing[@]}"
}

# ---------------------------------------------------------------- python ----
python_step() {
  [[ -f "$REQUIREMENTS" ]] || die "missing $REQUIREMENTS"
  # A venv whose interpreter no longer runs (e.g. base python removed) is rebuilt.
  if [[ -d "$VENV" ]] && ! "$VENV/bin/python" -c '' >/dev/null 2>&1; then
    log "python: venv at $VENV is broken, recreating"
    rm -rf "$VENV"
  fi
  if [[ ! -x "$VENV/bin/python" ]]; then
    command -v "$BASE_PYTHON" >/dev/null 2>&1 || die "python: '$BASE_PYTHON' not found"
    log "python: creating venv $(realpath --relative-to="$ROOT" "$VENV") ($("$BASE_PYTHON" -V 2>&1))"
    quiet "$BASE_PYTHON" -m venv "$VENV"
  fi
  local want have=""
  want="$(hash_files "$REQUIREMENTS")"
  [[ -f "$PY_STAMP" ]] && have="$(cat "$PY_STAMP")"
  if [[ "$want" == "$have" ]]; then
    log "python: venv up to date ($("$VENV/bin/python" -c 'import importlib.metadata as m; print("tuspy", m.version("tuspy"))'))"
    return
  fi
  log "python: installing requirements.txt into venv"
  rm -f "$PY_STAMP"
  quiet "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input -q \
    -r "$REQUIREMENTS"
  "$VENV/bin/python" -c 'import tusclient.client, tusclient.storage.filestorage' \
    || die "python: tuspy import check failed"
  printf '%s\n' "$want" >"$PY_STAMP"
}

# ---------------------------------------------------------------- node ------
node_step() {
  [[ -f "$NPM_LOCK" ]] || die "missing $NPM_LOCK"
  command -v node >/dev/null 2>&1 || die "node: not found after apt step"
  command -v npm >/dev/null 2>&1 || die "npm: not found after apt step"
  local want have=""
  # node's major version is part of the stamp so a node upgrade re-runs npm ci.
  want="$(hash_files "$NPM_LOCK" "$INTEROP/package.json")-node$(node -p 'process.versions.node.split(".")[0]')"
  [[ -f "$NPM_STAMP" ]] && have="$(cat "$NPM_STAMP")"
  if [[ -d "$INTEROP/node_modules" && "$want" == "$have" ]]; then
    log "node: node_modules up to date ($(node -v), tus-js-client $(node -p 'require("'"$INTEROP"'/node_modules/tus-js-client/package.json").version'))"
    return
  fi
  log "node: npm ci in $(realpath --relative-to="$ROOT" "$INTEROP") ($(node -v), npm $(npm -v))"
  (cd "$INTEROP" && quiet npm ci --no-audit --no-fund --loglevel=error)
  printf '%s\n' "$want" >"$NPM_STAMP"
}

# ---------------------------------------------------------------- rustus ----
rustus_step() {
  local bin="$RUSTUS_ROOT/bin/rustus"
  if [[ -x "$bin" ]] && [[ "$("$bin" --version 2>/dev/null)" == "Rustus $RUSTUS_VERSION" ]]; then
    log "rustus: $RUSTUS_VERSION present"
    return
  fi
  command -v cargo >/dev/null 2>&1 || die "rustus: cargo not found"
  log "rustus: cargo install rustus $RUSTUS_VERSION (takes a few minutes)"
  # A target dir of its own, so neither the workspace's nor a CI CARGO_TARGET_DIR is touched.
  local build
  build="$(mktemp -d)"
  quiet env CARGO_TARGET_DIR="$build" cargo install rustus --locked --force \
    --version "$RUSTUS_VERSION" --root "$RUSTUS_ROOT"
  rm -rf "$build"
  [[ "$("$bin" --version 2>/dev/null)" == "Rustus $RUSTUS_VERSION" ]] \
    || die "rustus: $bin does not run"
}

start=$SECONDS
apt_step
python_step
node_step
rustus_step
log "done in $((SECONDS - start))s"
