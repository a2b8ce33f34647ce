#!/usr/bin/env bash
# A permanent single-node Slurm cluster on this machine that SkyPilot can launch on (see docs/local-slurm.md).
#
#   scripts/local-slurm.sh up       install (apt) and start munge, slurmctld, slurmd and a loopback-only sshd;
#                                   create a dedicated unprivileged user and key; write SkyPilot's ~/.slurm/config;
#                                   check it with `sky check slurm`. Safe to run again (idempotent).
#   scripts/local-slurm.sh down     stop every daemon and remove what `up` made (user, keys, config, state dir).
#   scripts/local-slurm.sh status   print daemons, node, queue and the ssh login; exit 1 when not healthy.
#
# Run as root on Debian. Everything `up` makes lives in one state dir, except the user's passwd entry, the
# Host block in ~/.slurm/config and /run/sshd (made only when missing); `down` removes all three. The apt packages
# stay installed (a second `up` is then quick).
#
# Settings (environment):
#   CASCADIA_SLURM_DIR        state dir                                   [/tmp/cascadia-slurm]
#   CASCADIA_SLURM_CLUSTER    Slurm ClusterName = Host alias in ~/.slurm/config = SkyPilot region   [cascadia]
#   CASCADIA_SLURM_USER       the dedicated unprivileged ssh/Slurm user   [cascadia-slurm]
#   CASCADIA_SLURM_CPUS       CPUs the node advertises                    [this machine's, from slurmd -C]
#   CASCADIA_SLURM_PYTHON310  a Python 3.10 interpreter for SkyPilot's runtime venv   [found on this machine]
#   CASCADIA_SLURM_SKY_CONFIG SkyPilot's Slurm config file to add the Host block to  [$HOME/.slurm/config]
#   CASCADIA_SKY              the `sky` command for the final check       [sky on PATH, else <repo>/.venv/bin/sky]
#
# Workarounds this script applies (each explained where it is applied, and in docs/local-slurm.md):
#   1. uv:          SkyPilot's node set-up runs `$HOME/.local/bin/uv -V || curl https://astral.sh/uv/install.sh | sh`
#                   with HOME = a per-cluster home; a Slurm TaskProlog links a local uv (from PyPI) there first.
#   2. Python 3.10: SkyPilot creates its runtime venv with `uv venv --python 3.10` (hard-coded in 0.14) and uv
#                   cannot download one here; a local 3.10 is put on the ssh user's PATH.
#   3. TLS:         uv must trust the system certificate store; sshd hands the user UV_NATIVE_TLS, SSL_CERT_FILE.
set -euo pipefail

STATE=${CASCADIA_SLURM_DIR:-/tmp/cascadia-slurm}
ALIAS=${CASCADIA_SLURM_CLUSTER:-cascadia}
SUSER=${CASCADIA_SLURM_USER:-cascadia-slurm}
PARTITION=local
SKY_SLURM_CONFIG=${CASCADIA_SLURM_SKY_CONFIG:-$HOME/.slurm/config}
REPO=$(cd "$(dirname "$0")/.." && pwd)
PACKAGES=(slurm-wlm munge openssh-server openssh-client rsync socat netcat-openbsd patchelf python3)
CA_FILE=${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}
BEGIN_MARK="# >>> cascadia local-slurm ($ALIAS) >>>"
END_MARK="# <<< cascadia local-slurm ($ALIAS) <<<"

log() { printf '[local-slurm] %s\n' "$*" >&2; }
die() { printf '[local-slurm] error: %s\n' "$*" >&2; exit 1; }

need_root() { [ "$(id -u)" = 0 ] || die "run as root (it installs packages, starts daemons and adds a user)"; }

# A free TCP port on 127.0.0.1 (the kernel picks it).
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

pid_alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# Stop the daemon whose pid file is $1 (TERM, then KILL after 10 s).
stop_pidfile() {
  local pidfile=$1 name=$2 pid i
  pid_alive "$pidfile" || { rm -f "$pidfile"; return 0; }
  pid=$(cat "$pidfile")
  log "stopping $name (pid $pid)"
  kill "$pid" 2>/dev/null || true
  for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
  rm -f "$pidfile"
}

slurm() { SLURM_CONF="$STATE/slurm/slurm.conf" "$@"; }

# --- up: packages --------------------------------------------------------------------------------------------------
install_packages() {
  local missing=() p
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
}

# --- up: the dedicated user and its keys ----------------------------------------------------------------------------
make_user() {
  if ! id "$SUSER" >/dev/null 2>&1; then
    log "adding user $SUSER (home $STATE/home)"
    useradd --create-home --home-dir "$STATE/home" --shell /bin/bash --user-group "$SUSER"
  fi
  # '*' = no password but not locked: sshd (UsePAM no) refuses key logins to a locked ('!') account.
  usermod -p '*' "$SUSER"
  local home=$STATE/home
  install -d -m 700 -o "$SUSER" -g "$SUSER" "$home/.ssh"
  install -d -m 700 "$STATE/client"
  [ -f "$STATE/client/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C "cascadia-local-slurm" -f "$STATE/client/id_ed25519"
  install -m 600 -o "$SUSER" -g "$SUSER" "$STATE/client/id_ed25519.pub" "$home/.ssh/authorized_keys"
  # Login environment. SkyPilot runs every remote command as `bash --login -c ...`, and Debian's /etc/profile resets
  # PATH for login shells, so PATH is (re)set here; srun exports this environment to the tasks on the node.
  # Workaround 2 (Python 3.10): $STATE/bin holds python3.10, which `uv venv --python 3.10` finds on PATH.
  cat >"$home/.bash_profile" <<EOF
# Written by scripts/local-slurm.sh (cascadia local Slurm cluster).
[ -f ~/.profile ] && . ~/.profile
export PATH="$STATE/bin:\$PATH"
EOF
  chown "$SUSER:$SUSER" "$home/.bash_profile"
}

# --- up: uv and Python 3.10 for SkyPilot's node set-up (workarounds 1 and 2) ---------------------------------------
find_python310() {
  local c v
  for c in "${CASCADIA_SLURM_PYTHON310:-}" "$(command -v python3.10 || true)" /usr/bin/python3.10 \
           /usr/local/bin/python3.10 "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.10*/bin/python3.10; do
    [ -n "$c" ] && [ -x "$c" ] || continue
    v=$("$c" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) || continue
    [ "$v" = "3.10" ] && { "$c" -c 'import sys, os; print(os.path.realpath(sys.executable))'; return 0; }
  done
  return 1
}

provide_tools() {
  install -d -m 755 "$STATE/bin"
  # Workaround 1: a uv binary from PyPI (the `uv` wheel ships the static binary), linked into every per-cluster
  # home by the TaskProlog below.
  if [ ! -x "$STATE/uv/bin/uv" ]; then
    log "pip install uv (into $STATE/uv)"
    python3 -m pip install -q --disable-pip-version-check --target "$STATE/uv" uv >/dev/null 2>&1 ||
      python3 -m pip install -q --disable-pip-version-check --break-system-packages --target "$STATE/uv" uv >/dev/null ||
      die "pip install uv failed (needs python3 with pip and access to PyPI)"
  fi
  ln -sfn "$STATE/uv/bin/uv" "$STATE/bin/uv"
  chmod -R a+rX "$STATE/uv"

  # Workaround 2: Python 3.10. SkyPilot 0.14 hard-codes `uv venv --seed <runtime> --python 3.10`
  # (sky/skylet/constants.py, UV_INSTALLATION_COMMANDS); no setting changes it, and uv cannot download a Python
  # offline. uv finds python3.10 on PATH, so $STATE/bin/python3.10 points at a local one. When that one is not
  # readable by the user (pyenv under a mode-700 /root), a copy of its prefix goes into the state dir and the copy's
  # RUNPATH (absolute, pointing at the old prefix) is rewritten to $ORIGIN/../lib so it loads its own libpython.
  local py prefix
  py=$(find_python310) || die "no Python 3.10 found: SkyPilot's runtime venv needs one (uv venv --python 3.10) and \
uv cannot download it offline; install one (e.g. pyenv install 3.10) or set CASCADIA_SLURM_PYTHON310=/path/to/python3.10"
  if runuser -u "$SUSER" -- "$py" -c 'import ssl, sqlite3' 2>/dev/null; then
    ln -sfn "$py" "$STATE/bin/python3.10"
  else
    if [ ! -x "$STATE/python3.10/bin/python3.10" ]; then
      prefix=$("$py" -c 'import sys; print(sys.base_prefix)')
      log "copying Python 3.10 from $prefix (not readable by $SUSER) into $STATE/python3.10"
      rsync -a --exclude 'lib/python3.10/test/' --exclude 'lib/python3.10/site-packages/*' \
        --exclude 'lib/python3.10/config-3.10-*/' --exclude '__pycache__/' "$prefix/" "$STATE/python3.10/"
      if readelf -d "$STATE/python3.10/bin/python3.10" | grep -qE 'RPATH|RUNPATH'; then
        patchelf --set-rpath '$ORIGIN/../lib' "$STATE/python3.10/bin/python3.10"
      fi
      chmod -R a+rX "$STATE/python3.10"
    fi
    ln -sfn "$STATE/python3.10/bin/python3.10" "$STATE/bin/python3.10"
    runuser -u "$SUSER" -- "$STATE/bin/python3.10" -c 'import ssl, sqlite3' ||
      die "the copied Python 3.10 does not run as $SUSER"
  fi
}

# --- up: munge -------------------------------------------------------------------------------------------------------
start_munge() {
  local d=$STATE/munge
  install -d -m 755 -o munge -g munge "$d"
  if [ ! -s "$d/munge.key" ]; then
    runuser -u munge -- mungekey --create --keyfile="$d/munge.key"
    chmod 600 "$d/munge.key"
  fi
  pid_alive "$d/munged.pid" && return 0
  log "starting munged"
  runuser -u munge -- /usr/sbin/munged --socket="$d/munge.socket.2" --key-file="$d/munge.key" \
    --pid-file="$d/munged.pid" --log-file="$d/munged.log" --seed-file="$d/munged.seed"
  munge -n -S "$d/munge.socket.2" | unmunge -S "$d/munge.socket.2" >/dev/null || die "munge self-test failed"
}

# --- up: slurm -------------------------------------------------------------------------------------------------------
write_slurm_conf() {
  local host d=$STATE/slurm cpus mem overrides=""
  host=$(hostname -s)
  install -d -m 755 "$d" "$d/log" "$d/d"    # slurmd's spool holds batch scripts the job's user executes
  install -d -m 700 "$d/ctld"
  # The node's real CPUs and memory, as slurmd itself measures them.
  cpus=$(slurmd -C | sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' | head -1)
  mem=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' | head -1)
  [ -n "$cpus" ] && [ -n "$mem" ] || die "slurmd -C did not report CPUs and RealMemory"
  if [ -n "${CASCADIA_SLURM_CPUS:-}" ] && [ "$CASCADIA_SLURM_CPUS" != "$cpus" ]; then
    cpus=$CASCADIA_SLURM_CPUS
    overrides="SlurmdParameters=config_overrides"   # advertise more CPUs than the hardware has
  fi
  [ -f "$d/ports" ] || printf 'CTLD_PORT=%s\nSLURMD_PORT=%s\n' "$(free_port)" "$(free_port)" >"$d/ports"
  # shellcheck disable=SC1091
  . "$d/ports"
  # Workaround 1 (uv), as a TaskProlog: Slurm runs it as the job's user before every task (srun step) on the node.
  # SkyPilot's node set-up runs `"$HOME/.local/bin"/uv -V || curl -LsSf https://astral.sh/uv/install.sh | sh` with
  # HOME = <user home>/.sky_clusters/<cluster name on cloud> (made by its sbatch script, named like the job);
  # offline the curl fails. The prolog links the local uv there first, so the check passes and nothing downloads.
  cat >"$d/task_prolog.sh.new" <<EOF
#!/bin/sh
# Written by scripts/local-slurm.sh; see docs/local-slurm.md ("uv"). Prints nothing (Slurm reads its stdout).
[ "\$(id -un)" = "$SUSER" ] || exit 0
name=\$(SLURM_CONF="$d/slurm.conf" squeue -h -j "\$SLURM_JOB_ID" -o %j 2>/dev/null) || exit 0
dir="$STATE/home/.sky_clusters/\$name"
if [ -n "\$name" ] && [ -d "\$dir" ] && [ ! -x "\$dir/.local/bin/uv" ]; then
  mkdir -p "\$dir/.local/bin" && ln -sfn "$STATE/bin/uv" "\$dir/.local/bin/uv"
fi
exit 0
EOF
  chmod 755 "$d/task_prolog.sh.new"
  mv "$d/task_prolog.sh.new" "$d/task_prolog.sh"
  cat >"$d/slurm.conf.new" <<EOF
# Written by scripts/local-slurm.sh: one node, this machine, everything on 127.0.0.1.
ClusterName=$ALIAS
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$STATE/munge/munge.socket.2
StateSaveLocation=$d/ctld
SlurmdSpoolDir=$d/d
SlurmctldPidFile=$d/slurmctld.pid
SlurmdPidFile=$d/slurmd.pid
SlurmctldLogFile=$d/log/slurmctld.log
SlurmdLogFile=$d/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
TaskProlog=$d/task_prolog.sh
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=$((mem / cpus))
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MailProg=/bin/true
$overrides
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE DefaultTime=7-00:00:00 State=UP
EOF
  if cmp -s "$d/slurm.conf.new" "$d/slurm.conf"; then
    rm -f "$d/slurm.conf.new"
  else
    mv "$d/slurm.conf.new" "$d/slurm.conf"
    stop_pidfile "$d/slurmd.pid" slurmd      # a changed config takes a restart
    stop_pidfile "$d/slurmctld.pid" slurmctld
  fi
}

start_slurm() {
  local d=$STATE/slurm host state i
  host=$(hostname -s)
  # -f (not only SLURM_CONF) puts the state dir on their command lines, where `down` looks for leftovers.
  pid_alive "$d/slurmctld.pid" || { log "starting slurmctld"; slurm /usr/sbin/slurmctld -f "$d/slurm.conf"; }
  pid_alive "$d/slurmd.pid" || { log "starting slurmd"; slurm /usr/sbin/slurmd -f "$d/slurm.conf"; }
  for i in $(seq 1 60); do
    state=$(slurm sinfo -h -N -n "$host" -o %T 2>/dev/null || true)
    case "$state" in
      idle|mixed|allocated) return 0 ;;
      drain*|down*) slurm scontrol update nodename="$host" state=resume 2>/dev/null || true ;;
    esac
    sleep 0.5
  done
  die "slurm node $host is not ready (state '$state'); see $d/log/slurmctld.log and $d/log/slurmd.log"
}

# --- up: loopback-only sshd ------------------------------------------------------------------------------------------
start_sshd() {
  local d=$STATE/sshd port
  install -d -m 755 "$d"
  [ -f "$d/host_ed25519_key" ] || ssh-keygen -q -t ed25519 -N '' -f "$d/host_ed25519_key"
  [ -f "$d/port" ] || free_port >"$d/port"
  port=$(cat "$d/port")
  # Workaround 3 (TLS) and the Slurm config location: SetEnv hands these to every session (login or not). uv uses
  # its bundled web roots unless told to use the system store, which holds the CA that this network's TLS is signed
  # with. PATH here serves non-login sessions; login ones get it from ~/.bash_profile.
  cat >"$d/sshd_config.new" <<EOF
# Written by scripts/local-slurm.sh: loopback only, one user, key only.
Port $port
ListenAddress 127.0.0.1
HostKey $d/host_ed25519_key
PidFile $d/sshd.pid
AuthorizedKeysFile .ssh/authorized_keys
AllowUsers $SUSER
PermitRootLogin no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PermitUserEnvironment no
X11Forwarding no
MaxSessions 64
SetEnv SLURM_CONF=$STATE/slurm/slurm.conf UV_NATIVE_TLS=true UV_SYSTEM_CERTS=true SSL_CERT_FILE=$CA_FILE PATH=$STATE/bin:/usr/local/bin:/usr/bin:/bin
EOF
  if ! cmp -s "$d/sshd_config.new" "$d/sshd_config"; then
    mv "$d/sshd_config.new" "$d/sshd_config"
    stop_pidfile "$d/sshd.pid" sshd
  else
    rm -f "$d/sshd_config.new"
  fi
  if [ ! -d /run/sshd ]; then                # sshd's privilege-separation dir (Debian's init script makes it)
    install -d -m 755 /run/sshd && touch "$d/made-run-sshd"
  fi
  if ! pid_alive "$d/sshd.pid"; then
    log "starting sshd on 127.0.0.1:$port"
    /usr/sbin/sshd -t -f "$d/sshd_config"
    /usr/sbin/sshd -f "$d/sshd_config" -E "$d/sshd.log"
  fi
}

# --- up: SkyPilot's Slurm config ---------------------------------------------------------------------------------------
write_sky_config() {
  local port block
  port=$(cat "$STATE/sshd/port")
  # ssh_config syntax; SkyPilot reads the Host alias as the Slurm cluster (region) name.
  block="$BEGIN_MARK
Host $ALIAS
    HostName 127.0.0.1
    Port $port
    User $SUSER
    IdentityFile $STATE/client/id_ed25519
    IdentitiesOnly yes
    StrictHostKeyChecking no
    UserKnownHostsFile /dev/null
    LogLevel ERROR
$END_MARK"
  printf '%s\n' "$block" >"$STATE/client/slurm-config"
  remove_sky_config_block
  install -d -m 700 "$(dirname "$SKY_SLURM_CONFIG")"
  printf '%s\n' "$block" >>"$SKY_SLURM_CONFIG"
  chmod 600 "$SKY_SLURM_CONFIG"
  # The login works and the Slurm commands run there (what SkyPilot does first).
  ssh -F "$STATE/client/slurm-config" -o BatchMode=yes -o ConnectTimeout=10 "$ALIAS" \
    'bash --login -c "sinfo -h -o %P && python3.10 -V && uv -V"' >/dev/null ||
    die "ssh $SUSER@127.0.0.1:$port cannot run sinfo/python3.10/uv; see $STATE/sshd/sshd.log"
}

remove_sky_config_block() {
  [ -f "$SKY_SLURM_CONFIG" ] || return 0
  sed -i "\\|^$BEGIN_MARK\$|,\\|^$END_MARK\$|d" "$SKY_SLURM_CONFIG"
  if [ ! -s "$SKY_SLURM_CONFIG" ]; then
    rm -f "$SKY_SLURM_CONFIG"
    rmdir "$(dirname "$SKY_SLURM_CONFIG")" 2>/dev/null || true
  fi
}

# --- up: `sky check slurm` in a throw-away SkyPilot home (its own API server, stopped afterwards) ------------------
sky_check() {
  local sky=${CASCADIA_SKY:-} home out rc=0
  [ -n "$sky" ] || sky=$(command -v sky || true)
  [ -n "$sky" ] || { [ -x "$REPO/.venv/bin/sky" ] && sky=$REPO/.venv/bin/sky; }
  if [ -z "$sky" ]; then
    log "sky not found: skipping \`sky check slurm\` (pip install -e '.[sky]' to check)"
    return 0
  fi
  home=$(mktemp -d "$STATE/skycheck.XXXXXX")
  install -d -m 700 "$home/.slurm"
  cp "$STATE/client/slurm-config" "$home/.slurm/config"
  install -d -m 700 "$home/tmp"
  local env=(env HOME="$home" SKY_RUNTIME_DIR="$home" TMPDIR="$home/tmp" SKYPILOT_DISABLE_USAGE_COLLECTION=1
             SKYPILOT_API_SERVER_LOCAL_PORT="$(free_port)")
  log "sky check slurm"
  out=$("${env[@]}" "$sky" check slurm 2>&1) || rc=$?
  "${env[@]}" "$sky" api stop >/dev/null 2>&1 || true
  rm -rf "$home"
  out=$(sed 's/\x1b\[[0-9;]*m//g' <<<"$out")   # drop colours
  if [ "$rc" -ne 0 ] || ! grep -q "$ALIAS: enabled" <<<"$out"; then
    printf '%s\n' "$out" >&2
    die "sky check slurm did not enable cluster '$ALIAS'"
  fi
  log "sky check slurm: $ALIAS enabled"
}

cmd_up() {
  need_root
  local t0=$SECONDS
  install -d -m 755 "$STATE"
  install_packages
  make_user
  provide_tools
  start_munge
  write_slurm_conf
  start_slurm
  start_sshd
  write_sky_config
  sky_check
  log "up in $((SECONDS - t0)) s: cluster '$ALIAS' (partition $PARTITION), ssh $SUSER@127.0.0.1:$(cat "$STATE/sshd/port"), \
SkyPilot config $SKY_SLURM_CONFIG (copy: $STATE/client/slurm-config)"
}

# --- down ----------------------------------------------------------------------------------------------------------
# SkyPilot clients keep ssh ControlMasters (/tmp/sky_ssh_<user hash>/<name>/%C, ControlPersist 300 s). Close the ones
# connected to this cluster's sshd (ssh expands %C for our host, port and user) and drop control dirs left empty.
close_sky_ssh_masters() {
  local d
  [ -f "$STATE/client/slurm-config" ] || return 0
  for d in /tmp/sky_ssh_*/*/; do
    [ -d "$d" ] || continue
    ssh -F "$STATE/client/slurm-config" -o ControlPath="$d%C" -O exit "$ALIAS" 2>/dev/null || true
    rmdir "$d" 2>/dev/null && rmdir "$(dirname "$d")" 2>/dev/null || true
  done
}

cmd_down() {
  need_root
  local t0=$SECONDS uid="" i
  id "$SUSER" >/dev/null 2>&1 && uid=$(id -u "$SUSER")
  if [ -n "$uid" ] && pid_alive "$STATE/slurm/slurmctld.pid"; then
    slurm scancel -u "$SUSER" 2>/dev/null || true  # SkyPilot's sbatch scripts clean their dirs on the way out
    for i in $(seq 1 60); do
      [ -z "$(slurm squeue -h -u "$SUSER" 2>/dev/null)" ] && break
      sleep 0.5
    done
  fi
  close_sky_ssh_masters
  stop_pidfile "$STATE/sshd/sshd.pid" sshd
  stop_pidfile "$STATE/slurm/slurmd.pid" slurmd
  stop_pidfile "$STATE/slurm/slurmctld.pid" slurmctld
  stop_pidfile "$STATE/munge/munged.pid" munged
  if [ -n "$uid" ]; then
    # Whatever the user still runs (task processes, SkyPilot's skylet and subprocess daemons, ssh sessions): their
    # processes, found by uid, until none is left (10 s at most).
    local pids
    for i in $(seq 1 20); do
      pids=$(live_pids "$uid")
      [ -z "$pids" ] && break
      # shellcheck disable=SC2086
      kill -KILL $pids 2>/dev/null || true
      sleep 0.5
    done
    # Files the user left outside its home: SkyPilot's runtime dirs and uv cache (/tmp/<cluster>, /tmp/uv_cache_<uid>).
    find /tmp /var/tmp /dev/shm -mindepth 1 -maxdepth 1 -uid "$uid" -exec rm -rf {} + 2>/dev/null || true
    log "removing user $SUSER"
    userdel --remove "$SUSER" 2>/dev/null || userdel "$SUSER"
  fi
  remove_sky_config_block
  if [ -f "$STATE/sshd/made-run-sshd" ]; then rmdir /run/sshd 2>/dev/null || true; fi
  rm -rf "$STATE"
  check_clean "$uid"
  log "down in $((SECONDS - t0)) s: clean"
}

# The processes of a uid, zombies left out (they are gone once their parent reaps them).
live_pids() { { ps -u "$1" -o pid=,stat= 2>/dev/null || true; } | awk '$2 !~ /^Z/ {print $1}'; }

# Fails (exit 1) naming whatever `up` made that is still there.
check_clean() {
  local uid=$1 left=()
  [ -e "$STATE" ] && left+=("state dir $STATE")
  id "$SUSER" >/dev/null 2>&1 && left+=("user $SUSER")
  pgrep -f "$STATE/" >/dev/null && left+=("processes: $(pgrep -a -f "$STATE/" | tr '\n' ';')")
  if [ -n "$uid" ]; then
    [ -n "$(live_pids "$uid")" ] && left+=("processes of uid $uid: $(live_pids "$uid" | tr '\n' ' ')")
    [ -n "$(find /tmp /var/tmp /dev/shm -mindepth 1 -maxdepth 1 -uid "$uid" 2>/dev/null)" ] && left+=("files of uid $uid in /tmp")
  fi
  [ -f "$SKY_SLURM_CONFIG" ] && grep -qF "$BEGIN_MARK" "$SKY_SLURM_CONFIG" && left+=("Host block in $SKY_SLURM_CONFIG")
  [ ${#left[@]} -eq 0 ] || die "down left: ${left[*]}"
}

# --- status --------------------------------------------------------------------------------------------------------
cmd_status() {
  local ok=0 name pidfile
  for name in munged:munge/munged.pid slurmctld:slurm/slurmctld.pid slurmd:slurm/slurmd.pid sshd:sshd/sshd.pid; do
    pidfile=$STATE/${name#*:}
    if pid_alive "$pidfile"; then echo "${name%%:*}: running (pid $(cat "$pidfile"))"
    else echo "${name%%:*}: not running"; ok=1; fi
  done
  if id "$SUSER" >/dev/null 2>&1; then echo "user: $SUSER (uid $(id -u "$SUSER"))"; else echo "user: absent"; ok=1; fi
  if [ -f "$STATE/slurm/slurm.conf" ] && pid_alive "$STATE/slurm/slurmctld.pid"; then
    echo "node:"; slurm sinfo -N -o '  %N %T cpus=%c mem=%m partition=%P' || ok=1
    echo "queue:"; slurm squeue -o '  %i %j %u %T %M' || ok=1
  fi
  if [ -f "$STATE/client/slurm-config" ]; then
    if ssh -F "$STATE/client/slurm-config" -o BatchMode=yes -o ConnectTimeout=5 "$ALIAS" true 2>/dev/null; then
      echo "ssh: $SUSER@127.0.0.1:$(cat "$STATE/sshd/port") ok (Host $ALIAS in $SKY_SLURM_CONFIG)"
    else echo "ssh: login fails"; ok=1; fi
  else
    echo "ssh: not configured"; ok=1
  fi
  echo "state dir: $STATE"
  return $ok
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *) echo "usage: $0 up|down|status   (see docs/local-slurm.md)" >&2; exit 2 ;;
esac
