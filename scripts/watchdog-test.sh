#!/usr/bin/env bash
# systemd's watchdog for real: boots a minimal Debian tree with systemd as PID 1 in
# systemd-nspawn (its own network namespace: loopback only, mosquitto inside on 127.0.0.1:1883),
# installs the release dockcast binary, systemd/dockcast.service unchanged, the packaged config
# and the package's postinst (the `dockcast` user), then:
#   1. `systemctl start dockcast` returns (READY=1 arrived) and the service stays up over two
#      watchdog periods (WATCHDOG=1 keeps coming);
#   2. `kill -STOP` on its main PID (a hung daemon: no more pings) makes systemd report
#      "Watchdog timeout", kill it and restart it: NRestarts=1, a new MainPID, active again;
#   3. `systemctl stop` (SIGTERM) ends it cleanly: inactive, Result=success, exit status 0.
# The only override is a drop-in with WatchdogSec=3 (the unit's 30 s would make the test slow).
#
# Needs (scripts/setup-deps.sh installs them): systemd-container (systemd-nspawn), debootstrap.
# The Debian tree is debootstrapped once into $WATCHDOG_CACHE (about a minute, from the mirror
# apt already uses) and booted with --volatile=overlay, so runs never change it.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi

CACHE=${WATCHDOG_CACHE:-/var/tmp/dockcast-watchdog}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
WATCHDOG_SEC=3
say() { printf 'watchdog-test: %s\n' "$*" >&2; }
fail() { say "FAIL: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || fail "must run as root (systemd-nspawn, debootstrap)"
for tool in systemd-nspawn debootstrap nsenter apt-get flock; do
    command -v "$tool" >/dev/null 2>&1 || fail "$tool not found; run scripts/setup-deps.sh"
done
started=$(date +%s)

# --- the Debian tree, cached -----------------------------------------------------------------
# The host's release, so the guest's glibc matches the one the binary was built against.
. /etc/os-release
SUITE=${VERSION_CODENAME:?no VERSION_CODENAME in /etc/os-release}
PKGS=systemd,systemd-sysv,dbus,mosquitto,adduser
TREE=$CACHE/root-$SUITE
STAMP="minbase $SUITE $PKGS v1"
mkdir -p "$CACHE"
exec 9>"$CACHE/lock"
flock -w 600 9 || fail "another run holds $CACHE/lock"
if [ "$(cat "$TREE.stamp" 2>/dev/null)" != "$STAMP" ]; then
    rm -rf "$TREE" "$TREE.new" "$TREE.stamp"
    # The mirror apt is configured with (debootstrap's default when apt names none).
    mirror=$(apt-get indextargets --format '$(REPO_URI)' "Release: $SUITE" 'Component: main' \
        'Identifier: Packages' 2>/dev/null | head -n1 || true)
    say "debootstrapping $SUITE ($PKGS) into $TREE"
    t=$(date +%s)
    timeout 900 debootstrap --variant=minbase --include="$PKGS" "$SUITE" "$TREE.new" ${mirror:+"$mirror"} \
        >"$CACHE/debootstrap.log" 2>&1 \
        || fail "debootstrap failed: $(tail -n 5 "$CACHE/debootstrap.log")"
    rm -f "$TREE.new"/var/cache/apt/archives/*.deb
    mv "$TREE.new" "$TREE"
    echo "$STAMP" >"$TREE.stamp"
    say "tree ready in $(( $(date +%s) - t )) s"
fi

# --- the binary ------------------------------------------------------------------------------
say "building dockcast (release)"
cargo build --release --quiet --bin dockcast
BIN=$(realpath "$TARGET_DIR/release/dockcast")
[ -x "$BIN" ] || fail "no $BIN"

# --- what goes into the guest ----------------------------------------------------------------
WORK=$(mktemp -d /tmp/dockcast-watchdog.XXXXXX)
NSPAWN=
LEADER=
cleanup() {
    if [ -n "$NSPAWN" ] && kill -0 "$NSPAWN" 2>/dev/null; then
        [ -n "$LEADER" ] && nsenter -t "$LEADER" -a systemctl poweroff --no-block >/dev/null 2>&1 || true
        for _ in $(seq 1 100); do kill -0 "$NSPAWN" 2>/dev/null || break; sleep 0.1; done
        # nspawn turns SIGTERM into an orderly shutdown of the container.
        kill -0 "$NSPAWN" 2>/dev/null && kill -TERM "$NSPAWN" 2>/dev/null
        for _ in $(seq 1 50); do kill -0 "$NSPAWN" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$NSPAWN" 2>/dev/null && kill -KILL "$NSPAWN" 2>/dev/null
        wait "$NSPAWN" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
mkdir -p "$WORK/stage"
cp systemd/dockcast.service packaging/dockcast.toml packaging/debian/postinst "$WORK/stage/"
# The test's overrides: a short watchdog, and each exit logged (systemd forgets an inactive
# unit's ExecMainStatus when it unloads it).
cat >"$WORK/stage/watchdog-test.conf" <<EOF
[Service]
WatchdogSec=$WATCHDOG_SEC
ExecStopPost=/bin/sh -c 'echo "dockcast-exit: result=\$SERVICE_RESULT code=\$EXIT_CODE status=\$EXIT_STATUS"'
EOF

# --- boot ------------------------------------------------------------------------------------
# --register=no --keep-unit: no machined or systemd on the host needed. --volatile=overlay: the
# guest writes to a tmpfs over the cached tree.
say "booting $SUITE under systemd-nspawn"
systemd-nspawn -q -D "$TREE" --machine="dockcast-wd-$$" --register=no --keep-unit \
    --volatile=overlay --private-network --console=read-only \
    --bind-ro="$BIN:/usr/bin/dockcast" --bind-ro="$WORK/stage:/mnt/stage" -b \
    </dev/null >"$WORK/console.log" 2>&1 &
NSPAWN=$!
# The container's PID 1 is nspawn's child.
for _ in $(seq 1 200); do
    LEADER=$(cat /proc/"$NSPAWN"/task/*/children 2>/dev/null | awk '{print $1; exit}')
    [ -n "$LEADER" ] && break
    kill -0 "$NSPAWN" 2>/dev/null || break
    sleep 0.1
done
[ -n "$LEADER" ] || fail "systemd-nspawn did not start a container: $(tail -n 20 "$WORK/console.log")"
guest() { nsenter -t "$LEADER" -a "$@"; }
prop() { guest systemctl show dockcast -p "$1" --value; }
# "offline" until the guest's systemd answers on its socket, then --wait waits out the boot.
state=
for _ in $(seq 1 120); do
    state=$(guest timeout 60 systemctl is-system-running --wait 2>/dev/null || true)
    case $state in offline | "") sleep 0.5 ;; *) break ;; esac
done
case $state in
    running | degraded) ;;
    *) fail "the guest did not boot (state '$state'): $(tail -n 20 "$WORK/console.log")" ;;
esac
[ "$state" = running ] || say "guest is $state: $(guest systemctl --failed --no-legend --plain | tr '\n' ' ')"
guest timeout 20 sh -c 'until systemctl is-active --quiet mosquitto; do sleep 0.2; done' \
    || fail "mosquitto is not running in the guest"
say "guest up $(( $(date +%s) - started )) s after the start"

# Installed as the package installs it: the unit in /lib/systemd/system, the config as a
# conffile, the postinst (the `dockcast` user); plus the drop-in.
out=$(guest sh -ec '
    install -m 644 /mnt/stage/dockcast.service /lib/systemd/system/dockcast.service
    mkdir -p /etc/systemd/system/dockcast.service.d /etc/dockcast
    install -m 644 /mnt/stage/watchdog-test.conf /etc/systemd/system/dockcast.service.d/
    install -m 644 /mnt/stage/dockcast.toml /etc/dockcast/dockcast.toml
    sh /mnt/stage/postinst configure
    systemctl daemon-reload
' 2>&1) || fail "installing dockcast in the guest failed: $out"

# --- 1. start: READY=1, then the watchdog is fed -----------------------------------------------
t=$(date +%s%N)
guest timeout 60 systemctl start dockcast \
    || fail "systemctl start dockcast: $(guest journalctl -u dockcast --no-pager -n 30)"
say "systemctl start returned (READY=1) after $(( ($(date +%s%N) - t) / 1000000 )) ms;" \
    "status: $(prop StatusText)"
[ "$(prop WatchdogUSec)" = "${WATCHDOG_SEC}s" ] || fail "WatchdogUSec is $(prop WatchdogUSec)"
pid1=$(prop MainPID)
sleep $(( 2 * WATCHDOG_SEC ))
[ "$(prop ActiveState)" = active ] && [ "$(prop MainPID)" = "$pid1" ] && [ "$(prop NRestarts)" = 0 ] \
    || fail "a running dockcast was not left alone for $(( 2 * WATCHDOG_SEC )) s (WATCHDOG=1 missing?):" \
        "$(guest journalctl -u dockcast --no-pager -n 30)"
say "fed the ${WATCHDOG_SEC} s watchdog for $(( 2 * WATCHDOG_SEC )) s: MainPID $pid1, NRestarts=0"

# --- 2. hang it: systemd's watchdog must restart it ----------------------------------------------
# (kill is the shell's: minbase has no procps)
guest sh -c 'kill -STOP "$1"' sh "$pid1"
t=$(date +%s%N)
restarted=0
for _ in $(seq 1 300); do
    if [ "$(prop NRestarts)" -ge 1 ] && [ "$(prop ActiveState)" = active ]; then
        restarted=1
        break
    fi
    sleep 0.1
done
took=$(( ($(date +%s%N) - t) / 1000000 ))
pid2=$(prop MainPID)
nrestarts=$(prop NRestarts)
journal=$(guest journalctl -u dockcast --no-pager -o short-precise)
timeout_line=$(grep -m1 'Watchdog timeout' <<<"$journal" || true)
result_line=$(grep -m1 "Failed with result 'watchdog'" <<<"$journal" || true)
kill_line=$(grep -m1 'with signal SIGABRT' <<<"$journal" || true)
exit_line=$(grep -m1 'dockcast-exit: result=watchdog' <<<"$journal" || true)
restart_line=$(grep -m1 'restart counter is at 1' <<<"$journal" || true)
[ "$restarted" = 1 ] || fail "not restarted within 30 s of SIGSTOP (NRestarts=$nrestarts," \
    "ActiveState=$(prop ActiveState)): $(tail -n 20 <<<"$journal")"
[ -n "$timeout_line" ] || fail "no 'Watchdog timeout' in the journal: $(tail -n 20 <<<"$journal")"
[ -n "$result_line" ] || fail "the service did not fail with result 'watchdog': $(tail -n 20 <<<"$journal")"
[ "$nrestarts" = 1 ] || fail "NRestarts=$nrestarts, expected 1"
[ "$pid2" != "$pid1" ] && [ "$pid2" != 0 ] || fail "MainPID $pid2 after the restart (was $pid1)"
say "restarted ${took} ms after SIGSTOP: NRestarts=$nrestarts, MainPID $pid1 -> $pid2, $(prop ActiveState)" \
    "(READY=1 again), status: $(prop StatusText)"
say "journal: $timeout_line"
say "journal: $kill_line"
say "journal: $exit_line"
say "journal: $result_line"
say "journal: $restart_line"

# --- 3. SIGTERM via systemctl stop: a clean exit ------------------------------------------------
t=$(date +%s%N)
guest timeout 30 systemctl stop dockcast || fail "systemctl stop dockcast failed"
stop_ms=$(( ($(date +%s%N) - t) / 1000000 ))
active=$(prop ActiveState)
journal=$(guest journalctl -u dockcast --no-pager -o short-precise)
# The last exit is the stop's: SIGTERM handled, exit status 0.
stop_line=$(grep 'dockcast-exit:' <<<"$journal" | tail -n1)
grep -q 'dockcast-exit: result=success code=exited status=0$' <<<"$stop_line" && [ "$active" = inactive ] \
    || fail "systemctl stop: ActiveState=$active, last exit '$stop_line' (expected inactive, exited 0):" \
        "$(tail -n 20 <<<"$journal")"
say "systemctl stop took ${stop_ms} ms: ActiveState=$active"
say "journal: $stop_line"

say "PASS: watchdog restart (NRestarts=$nrestarts, \"${timeout_line#* dockcast.service: }\")" \
    "and clean stop (exit status 0), $(( $(date +%s) - started )) s in all"
