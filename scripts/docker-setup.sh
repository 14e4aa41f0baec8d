#!/usr/bin/env bash
# Make a fresh Debian machine ready for `timmx ... --isolated` and tests/isolated (run as root):
# install docker.io, debootstrap and docker-registry if missing, start dockerd if it is not
# answering, wait for it, and build the local base image (timmx images base) when it is missing.
# Idempotent.
#
#   PYTHON=.venv/bin/python bash scripts/docker-setup.sh
#
# Environment: PYTHON (default .venv/bin/python), TIMMX_BASE_IMAGE (default timmx-base:bookworm),
# DOCKERD_LOG (default /var/log/dockerd.log), DOCKER_WAIT_S (default 60),
# CA_BUNDLE (default /etc/ssl/certs/ca-certificates.crt, trusted inside the base image).
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
BASE_IMAGE="${TIMMX_BASE_IMAGE:-timmx-base:bookworm}"
DOCKERD_LOG="${DOCKERD_LOG:-/var/log/dockerd.log}"
DOCKER_WAIT_S="${DOCKER_WAIT_S:-60}"
CA_BUNDLE="${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"

say() { echo "docker-setup: $*"; }
die() { echo "docker-setup: error: $*" >&2; exit 1; }

if [ "$(id -u)" -ne 0 ] && ! docker info >/dev/null 2>&1; then
    # Without root nothing can be installed or started: the isolated tests skip (fail in CI).
    [ -z "${CI:-}" ] || die "run as root in CI (it installs packages and starts dockerd)"
    say "not root and no engine answers: the isolated tests will skip"
    exit 0
fi

missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
# A registry on localhost for the tests of `timmx images push/pull` and `build --locked`.
command -v docker-registry >/dev/null 2>&1 || missing+=(docker-registry)
if [ "${#missing[@]}" -gt 0 ] && [ "$(id -u)" -eq 0 ]; then
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if docker info >/dev/null 2>&1; then
    say "the Docker engine is already running"
else
    pid="$(cat /var/run/docker.pid 2>/dev/null || true)"
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && grep -q dockerd "/proc/$pid/comm" 2>/dev/null; then
        say "dockerd (pid $pid) is starting"
    else
        if [ -e /var/run/docker.pid ]; then
            say "removing the stale /var/run/docker.pid"
            rm -f /var/run/docker.pid
        fi
        say "starting dockerd (log: $DOCKERD_LOG)"
        nohup dockerd >>"$DOCKERD_LOG" 2>&1 </dev/null &
    fi
    say "waiting for the engine (at most ${DOCKER_WAIT_S} s)"
    waited=0
    until docker info >/dev/null 2>&1; do
        if [ "$waited" -ge "$DOCKER_WAIT_S" ]; then
            tail -n 20 "$DOCKERD_LOG" >&2 || true
            die "dockerd did not answer within ${DOCKER_WAIT_S} s (see $DOCKERD_LOG)"
        fi
        sleep 1
        waited=$((waited + 1))
    done
    say "the engine answers after ${waited} s"
fi

if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    say "base image $BASE_IMAGE is present"
else
    [ -x "$PYTHON" ] || die "no Python at $PYTHON: set PYTHON to the venv's python"
    ca_args=()
    [ -f "$CA_BUNDLE" ] && ca_args=(--ca-bundle "$CA_BUNDLE")
    say "building the base image $BASE_IMAGE"
    "$PYTHON" -m timmx images base --tag "$BASE_IMAGE" "${ca_args[@]}"
fi
