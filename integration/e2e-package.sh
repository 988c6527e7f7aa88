#!/usr/bin/env bash
# integration/e2e-package.sh — the Debian package, built and installed on this machine
# (Debian 12; the test machine is the one it goes on, on purpose), then purged.
#   (1) debian/build-deb.sh builds it with cargo-deb (installed into ~/.cargo/bin when
#       missing: `cargo install cargo-deb --locked`, a few minutes the first time); the .deb
#       holds the binary in /usr/sbin (stripped; the symbols in the -dbgsym .ddeb), the
#       conffile, the unit, both manual pages, the MTA snippets, and depends on adduser
#   (2) dpkg -i: the files are in place with their owners and modes, the user and group
#       pec-milter are system ones, the three writable directories are pec-milter's (0750);
#       the snippets under /usr/share/doc/pec-milter/milter-conf/ are the repository's; the
#       conffile is milter-conf/pec-milter.toml with exactly the spool, outbox and log moved
#   (3) `pec-milter check-config` passes on the installed configuration (as root and as the
#       user pec-milter); `systemd-analyze verify` passes on the installed unit, which runs
#       /usr/sbin/pec-milter as pec-milter with the hardening the package promises
#   (4) `man -l` renders both pages without a groff warning (a known line of each), and
#       `man -w` finds them by name
#   (5) the daemon started as the unit would start it (systemd is not PID 1 here): in a
#       network namespace with only lo, in a mount namespace where the file system is
#       read-only but for the unit's ReadWritePaths (ProtectSystem=strict), with a private
#       /tmp and no /home or /root (PrivateTmp, ProtectHome), as pec-milter with no new
#       privileges (setpriv), its ExecStart, Environment= and UMask= read from the
#       installed unit: it creates its demo identity and state where the configuration
#       says, listens on the milter and LMTP ports, answers a milter option negotiation,
#       survives ExecReload's SIGHUP and stops on SIGTERM with status 0
#   (6) dpkg --purge after that run: the package, its files, the spool and the state are
#       gone; what pec-milter wrote in its legal log is kept (with the user), as postrm says
#   (7) installed again and purged at once: nothing is left, not even the user and group
# Refuses to run when pec-milter is installed or its directories or user exist (they are
# not the test's to remove). Env: KEEP=1 keeps the work dir. Needs root.
# Prints "N passed, N failed" last; exit 1 if anything failed.
set -uo pipefail
. "$(dirname "$0")/lib.sh"

T0=$EPOCHREALTIME
rig_begin pecpkg
cd "$RIG_ROOT" || die "cannot cd to $RIG_ROOT"

DIRS=(/var/lib/pec-milter /var/spool/pec-milter /var/log/pec-milter)
UNIT=/usr/lib/systemd/system/pec-milter.service
CONF=/etc/pec-milter/pec-milter.toml
MAN8=/usr/share/man/man8/pec-milter.8.gz
MAN5=/usr/share/man/man5/pec-milter.toml.5.gz
DOC=/usr/share/doc/pec-milter

installed() { dpkg-query -W -f='${db:Status-Status}' pec-milter 2>/dev/null | grep -qx installed; }
known() { dpkg-query -W pec-milter >/dev/null 2>&1; }
if known || [ -e /etc/pec-milter ] || getent passwd pec-milter >/dev/null || getent group pec-milter >/dev/null; then
  die "pec-milter is installed or its user/config exists on this machine: not the test's to remove (dpkg --purge pec-milter)"
fi
for d in "${DIRS[@]}"; do [ -e "$d" ] && die "$d exists: not the test's to remove"; done

# Whatever happens from here, the machine is left as it was found.
pkg_cleanup() {
  if known; then dpkg --purge pec-milter >/dev/null 2>&1; fi
  rm -rf "${DIRS[@]}" /etc/pec-milter
  if getent passwd pec-milter >/dev/null; then deluser --system --quiet pec-milter >/dev/null 2>&1; fi
  if getent group pec-milter >/dev/null; then delgroup --system --quiet pec-milter >/dev/null 2>&1; fi
  return 0
}
rig_defer pkg_cleanup

# ---- (1) build
if ! command -v cargo-deb >/dev/null; then
  PATH=$HOME/.cargo/bin:$PATH
fi
if ! command -v cargo-deb >/dev/null; then
  ok "(1) cargo-deb installed (cargo install cargo-deb --locked)" nice cargo install cargo-deb --locked || rig_finish
fi
T1=$EPOCHREALTIME
rm -f target/debian/pec-milter_*.deb target/debian/pec-milter-dbgsym_*.ddeb
ok "(1) debian/build-deb.sh: cargo deb builds the package" nice bash debian/build-deb.sh || rig_finish
_log "build: $(rig_elapsed "$T1") s"
DEB=$(ls -t target/debian/pec-milter_*.deb 2>/dev/null | head -1)
[ -n "$DEB" ] || die "no target/debian/pec-milter_*.deb"
dpkg-deb -c "$DEB" | awk '{print $6}' | sed 's|^\./|/|' > "$RIG_BASE/contents"
dpkg-deb -f "$DEB" Depends > "$RIG_BASE/depends"
has() { grep -qxF "$1" "$RIG_BASE/contents"; }
ok "(1) the .deb holds the binary in /usr/sbin (as OpenDKIM), none in /usr/bin" \
  bash -c "grep -qx /usr/sbin/pec-milter $RIG_BASE/contents && ! grep -q '^/usr/bin/' $RIG_BASE/contents"
ok "(1) the .deb holds the conffile, the unit and both manual pages (gzipped)" \
  bash -c "$(declare -f has); RIG_BASE=$RIG_BASE; has $CONF && has $UNIT && has $MAN8 && has $MAN5"
ok "(1) the .deb holds the README and every milter-conf/ file under $DOC/milter-conf/" \
  bash -c "$(declare -f has); RIG_BASE=$RIG_BASE; has $DOC/README.md && for f in \$(cd milter-conf && find . -type f | sed 's|^\./||'); do has $DOC/milter-conf/\$f || { echo missing \$f; exit 1; }; done"
ok "(1) it depends on adduser (postinst) and on the libraries the binary links" \
  bash -c "grep -qw adduser $RIG_BASE/depends && grep -qw libc6 $RIG_BASE/depends && grep -qw libssl3 $RIG_BASE/depends"
ok "(1) /etc/pec-milter/pec-milter.toml is a conffile" \
  bash -c "dpkg-deb --ctrl-tarfile $DEB | tar -xOf - ./conffiles | grep -qx $CONF"

# ---- (2) install
ok "(2) dpkg -i installs it" env DEBIAN_FRONTEND=noninteractive dpkg -i "$DEB" || rig_finish
ok "(2) dpkg lists pec-milter as installed" installed
mode_is() { [ "$(stat -c '%U:%G %a' "$1")" = "$2" ] || { echo "$1: $(stat -c '%U:%G %a' "$1"), want $2"; return 1; }; }
ok "(2) /usr/sbin/pec-milter root:root 755, runs" bash -c "$(declare -f mode_is); mode_is /usr/sbin/pec-milter 'root:root 755' && /usr/sbin/pec-milter --version"
ok "(2) ... stripped: its debug symbols are in the -dbgsym .ddeb beside the .deb" \
  bash -c "! readelf -S /usr/sbin/pec-milter | grep -q '\.debug_info' && ls target/debian/pec-milter-dbgsym_*.ddeb"
ok "(2) $CONF root:root 644 in /etc/pec-milter root:root 755" \
  bash -c "$(declare -f mode_is); mode_is $CONF 'root:root 644' && mode_is /etc/pec-milter 'root:root 755'"
ok "(2) the unit, man pages and snippets root:root 644" \
  bash -c "$(declare -f mode_is); for f in $UNIT $MAN8 $MAN5 $DOC/README.md $DOC/milter-conf/postfix/main.cf.snippet; do mode_is \$f 'root:root 644' || exit 1; done"
ok "(2) user pec-milter: a system user (uid < 1000), group pec-milter, home /var/lib/pec-milter, no login shell" \
  bash -c 'IFS=: read -r n _ uid gid _ home shell < <(getent passwd pec-milter) && [ "$uid" -lt 1000 ] && [ "$(getent group pec-milter | cut -d: -f3)" = "$gid" ] && [ "$home" = /var/lib/pec-milter ] && [ "$shell" = /usr/sbin/nologin ]'
for d in "${DIRS[@]}"; do
  ok "(2) $d pec-milter:pec-milter 750" mode_is "$d" 'pec-milter:pec-milter 750'
done
ok "(2) the snippets installed are the repository's" \
  bash -c "for f in \$(cd milter-conf && find . -type f | sed 's|^\./||'); do cmp milter-conf/\$f $DOC/milter-conf/\$f || exit 1; done"
# the conffile: the shipped file, less the header, with exactly the three moves
diff <(grep -v '^#' milter-conf/pec-milter.toml) <(grep -v '^#' "$CONF") > "$RIG_BASE/conf.diff"
ok "(2) the conffile is milter-conf/pec-milter.toml with [spool] dir, [delivery] outbox, [log] dir moved (and nothing else)" \
  bash -c "[ \$(grep -c '^>' $RIG_BASE/conf.diff) = 3 ] && grep -qxF '> dir = \"/var/spool/pec-milter\"' $RIG_BASE/conf.diff && grep -qxF '> outbox = \"/var/spool/pec-milter/outbox\"' $RIG_BASE/conf.diff && grep -qxF '> dir = \"/var/log/pec-milter\"' $RIG_BASE/conf.diff || { cat $RIG_BASE/conf.diff; exit 1; }"

# ---- (3) configuration and unit
ok "(3) pec-milter check-config passes on the installed configuration" /usr/sbin/pec-milter check-config --config "$CONF"
ok "(3) ... and as the user pec-milter (it can read it)" runuser -u pec-milter -- /usr/sbin/pec-milter check-config --config "$CONF"
ok "(3) check-config sees the package's paths" \
  bash -c "/usr/sbin/pec-milter check-config --config $CONF | grep -q '/var/spool/pec-milter/outbox' && /usr/sbin/pec-milter check-config --config $CONF | grep -q '\"/var/log/pec-milter\"'"
ok "(3) systemd-analyze verify passes on the installed unit, silently" \
  bash -c "out=\$(systemd-analyze verify $UNIT 2>&1); rc=\$?; echo \"\$out\"; [ \$rc = 0 ] && [ -z \"\$out\" ]"
unit_get() { sed -n "s/^$1=//p" "$UNIT"; }
ok "(3) the unit: ExecStart /usr/sbin/pec-milter run with the conffile, ExecReload SIGHUP" \
  bash -c "[ \"\$(sed -n 's/^ExecStart=//p' $UNIT)\" = '/usr/sbin/pec-milter run --config $CONF' ] && [ \"\$(sed -n 's/^ExecReload=//p' $UNIT)\" = '/bin/kill -HUP \$MAINPID' ]"
ok "(3) the unit: User/Group pec-milter, ProtectSystem=strict, NoNewPrivileges, PrivateTmp, ReadWritePaths = the three directories" \
  bash -c "for kv in User=pec-milter Group=pec-milter ProtectSystem=strict NoNewPrivileges=yes PrivateTmp=yes 'ReadWritePaths=${DIRS[*]}'; do grep -qxF \"\$kv\" $UNIT || { echo \"no \$kv\"; exit 1; }; done"
ok "(3) the unit is not enabled by the installation (the provider identity comes first)" \
  bash -c "! ls /etc/systemd/system/*.wants/pec-milter.service 2>/dev/null | grep -q ."

# ---- (4) manual pages
man_clean() {   # man_clean FILE: renders with no groff warning
  local w; w=$(MANWIDTH=100 LC_ALL=C.UTF-8 man --warnings -l "$1" 2>&1 >/dev/null)
  [ -z "$w" ] || { echo "$w"; return 1; }
}
ok "(4) man -l pec-milter.8: the run command and its --config default" \
  bash -c "MANWIDTH=200 LC_ALL=C.UTF-8 man -l $MAN8 | grep -A3 'pec-milter run' | grep -q -- '--config' && MANWIDTH=200 LC_ALL=C.UTF-8 man -l $MAN8 | grep -q 'default: /etc/pec-milter/pec-milter.toml'"
ok "(4) man -l pec-milter.8: SIGNALS, SIGHUP reload" bash -c "MANWIDTH=200 LC_ALL=C.UTF-8 man -l $MAN8 | grep -A3 '^SIGNALS' | grep -q 'SIGTERM'"
ok "(4) man -l pec-milter.toml.5: the [reinjection] section with outbox_interval = \"10s\"" \
  bash -c "MANWIDTH=200 LC_ALL=C.UTF-8 man -l $MAN5 | sed -n '/^\[reinjection\]/,/^\[state\]/p' | grep -q 'outbox_interval = \"10s\"'"
ok "(4) man -l pec-milter.toml.5: a commented-out table and key ([signing.pkcs11] pin_file)" \
  bash -c "MANWIDTH=200 LC_ALL=C.UTF-8 man -l $MAN5 | sed -n '/^\[signing.pkcs11\]/,/^\[reinjection\]/p' | grep -q 'pin_file = .*(commented out)'"
ok "(4) both pages render without a groff warning" bash -c "$(declare -f man_clean); man_clean $MAN8 && man_clean $MAN5"
ok "(4) man -w finds pec-milter(8) and pec-milter.toml(5) by name" \
  bash -c "[ \"\$(man -w 8 pec-milter)\" = $MAN8 ] && [ \"\$(man -w 5 pec-milter.toml)\" = $MAN5 ]"

# ---- (5) the daemon as the unit starts it
# UNIT_RUN: the command prefix that runs a command in the rig's netns as the installed unit would
# run its ExecStart: a mount namespace where everything is read-only but ReadWritePaths (and the
# API file systems), a private /tmp and /var/tmp, empty read-only /home and /root, then setpriv
# to User=/Group= with no new privileges, UMask=, a clean environment plus Environment=. With
# UNIT_AS_ROOT=1 in its environment it stays root (to check the sandbox itself). A simple
# command all along (ip netns exec, unshare, sh's exec, setpriv, env: each execs the next), so
# `"${UNIT_RUN[@]}" CMD &` leaves CMD's own pid in $!.
# shellcheck disable=SC2016
UNIT_SANDBOX='
  set -e
  rw=$1 user=$2 group=$3 um=$4 envs=$5; shift 5
  mount -t tmpfs -o mode=1777 tmpfs /tmp            # PrivateTmp
  mount -t tmpfs -o mode=1777 tmpfs /var/tmp
  for h in /home /root /run/user; do                 # ProtectHome
    if [ -d "$h" ]; then mount -t tmpfs -o ro,mode=755 tmpfs "$h"; fi
  done
  for p in $rw; do mount --bind "$p" "$p"; done      # ReadWritePaths, before
  mount -o remount,bind,ro /                         # ProtectSystem=strict
  findmnt -rno TARGET | while read -r m; do
    case $m in /|/proc|/proc/*|/sys|/sys/*|/dev|/dev/*|/tmp|/var/tmp|/home|/root|/run/user) continue ;; esac
    skip=; for p in $rw; do [ "$m" = "$p" ] && skip=1; done
    [ -n "$skip" ] || mount -o remount,bind,ro "$m" 2>/dev/null || true
  done
  umask "${um:-0022}"
  if [ "${UNIT_AS_ROOT:-0}" = 1 ]; then exec "$@"; fi
  exec setpriv --reuid="$user" --regid="$group" --init-groups --no-new-privs \
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 HOME=/var/lib/pec-milter \
    USER="$user" LOGNAME="$user" NO_COLOR=1 $envs "$@"
'
UNIT_RUN=(ip netns exec "$RIG_NETNS" unshare --mount --propagation private -- /bin/sh -c "$UNIT_SANDBOX" unit
          "$(unit_get ReadWritePaths)" "$(unit_get User)" "$(unit_get Group)" "$(unit_get UMask)" "$(unit_get Environment)")
sandbox_ro() {   # as root in the sandbox, creating a file fails with EROFS
  local p out
  for p in /usr/x /etc/pec-milter/x /var/lib/x /var/x /run/x; do
    if out=$(env UNIT_AS_ROOT=1 "${UNIT_RUN[@]}" /bin/sh -c "touch $p" 2>&1); then
      echo "$p writable"; rm -f "$p"; return 1
    fi
    grep -q 'Read-only file system' <<<"$out" || { echo "$p: $out"; return 1; }
  done
}
sandbox_rw() {   # as the daemon: the three directories writable, /tmp private and empty
  "${UNIT_RUN[@]}" /bin/sh -c 'for d in "$@"; do touch "$d/.w" && rm "$d/.w" || exit 1; done; [ -z "$(ls -A /tmp)" ]' sh "${DIRS[@]}"
}
sandbox_user() {
  "${UNIT_RUN[@]}" /bin/sh -c 'grep -qx "NoNewPrivs:[[:space:]]*1" /proc/self/status && [ "$(id -un)" = pec-milter ] && [ "$(umask)" = 0027 ]'
}
ok "(5) the unit's sandbox: /usr, /etc, /var/lib, /var, /run are read-only (even for root)" sandbox_ro
ok "(5) the unit's sandbox: the three ReadWritePaths are writable, /tmp is private" sandbox_rw
ok "(5) the unit's sandbox: user pec-milter, no new privileges, umask 0027" sandbox_user

LOG=$RIG_BASE/daemon.log
read -r -a EXEC <<< "$(unit_get ExecStart)"
"${UNIT_RUN[@]}" "${EXEC[@]}" >"$LOG" 2>&1 &
PID=$!
daemon_down() { if _alive "$PID"; then kill -TERM "$PID"; wait "$PID"; fi; return 0; }
rig_defer daemon_down
ok "(5) the daemon listens on the milter port 127.0.0.1:8891 (the conffile's)" wait_port 127.0.0.1 8891 30
ok "(5) ... and on the delivery point's LMTP port 127.0.0.1:2424 (it greets 220)" \
  bash -c "$(declare -f ns_exec wait_port); RIG_NETNS=$RIG_NETNS; wait_port 127.0.0.1 2424 10 && ns_exec timeout 5 bash -c 'exec 3<>/dev/tcp/127.0.0.1/2424; head -c 3 <&3' | grep -qx 220"
ok "(5) it runs as pec-milter with no new privileges" \
  bash -c "[ \"\$(ps -o user= -p $PID)\" = pec-milter ] && grep -qx 'NoNewPrivs:[[:space:]]*1' /proc/$PID/status"
# SMFIC_OPTNEG: version 6, every action, every protocol step; the answer is an 'O' packet
optneg() {
  ns_exec python3 - <<'PY'
import socket, struct
s = socket.create_connection(("127.0.0.1", 8891), timeout=5)
body = b"O" + struct.pack(">III", 6, 0x1FF, 0x1FFFFF)
s.sendall(struct.pack(">I", len(body)) + body)
n = struct.unpack(">I", s.recv(4))[0]
reply = s.recv(n)
assert reply[:1] == b"O", reply
print("optneg reply: version %d" % struct.unpack(">I", reply[1:5])[0])
PY
}
ok "(5) it answers a milter option negotiation" optneg
ok "(5) it made its demo identity and state where the configuration says, as pec-milter" \
  bash -c "for f in /var/lib/pec-milter/demo/provider.key /var/lib/pec-milter/demo/ca.pem /var/lib/pec-milter/demo/igpec.ldif /var/lib/pec-milter/state; do [ \"\$(stat -c %U \$f)\" = pec-milter ] || { ls -l \$f; exit 1; }; done"
ok "(5) its files follow UMask=0027 (nothing for others)" \
  bash -c "[ -z \"\$(find ${DIRS[*]} -perm -o=r -print -quit)\" ] || { find ${DIRS[*]} -perm -o=r; exit 1; }"
ok "(5) ExecReload (SIGHUP): still running, the reload logged" \
  bash -c "kill -HUP $PID && sleep 1 && kill -0 $PID && grep -q SIGHUP $LOG"
ok "(5) no permission or read-only error in its log" bash -c "! grep -iE 'permission denied|read-only file system|os error 13|os error 30' $LOG"
stopped() { local i; for ((i = 0; i < 150; i++)); do _alive "$PID" || return 0; sleep 0.1; done; return 1; }
kill -TERM "$PID"
ok "(5) SIGTERM (the unit's KillSignal) stops it within 15 s" stopped
wait "$PID"; RC=$?
ok "(5) ... with exit status 0" test "$RC" = 0
ok "(5) the ports are closed" wait_closed 127.0.0.1 8891 5
ok "(5) pec-milter log verify passes on what it wrote" runuser -u pec-milter -- /usr/sbin/pec-milter log verify /var/log/pec-milter
LOGFILES=$(find /var/log/pec-milter -type f | wc -l)
_log "files in /var/log/pec-milter after the run: $LOGFILES"

ok "(5) no process of the user pec-milter is left" bash -c "! pgrep -u pec-milter"

# ---- (6) purge after use
ok "(6) dpkg --purge removes it" dpkg --purge pec-milter
ok "(6) dpkg no longer knows the package" bash -c "! dpkg-query -W pec-milter 2>/dev/null"
ok "(6) binary, conffile, unit, manual pages and docs are gone" \
  bash -c "for f in /usr/sbin/pec-milter /etc/pec-milter $UNIT $MAN8 $MAN5 $DOC; do [ ! -e \$f ] || { echo \"\$f left\"; exit 1; }; done"
ok "(6) the spool and the state are gone" bash -c "[ ! -e /var/spool/pec-milter ] && [ ! -e /var/lib/pec-milter ]"
if [ "$LOGFILES" -gt 0 ]; then
  ok "(6) the legal message log is kept ($LOGFILES files), and the user pec-milter with it" \
    bash -c "[ \$(find /var/log/pec-milter -type f | wc -l) = $LOGFILES ] && getent passwd pec-milter >/dev/null"
else
  ok "(6) nothing was logged: the log directory and the user are gone too" \
    bash -c "[ ! -e /var/log/pec-milter ] && ! getent passwd pec-milter >/dev/null"
fi
pkg_cleanup

# ---- (7) install and purge: nothing left
ok "(7) dpkg -i again" env DEBIAN_FRONTEND=noninteractive dpkg -i "$DEB"
ok "(7) dpkg --purge at once" dpkg --purge pec-milter
ok "(7) nothing left: no file, directory, user or group" \
  bash -c "for f in ${DIRS[*]} /etc/pec-milter /usr/sbin/pec-milter $UNIT $DOC; do [ ! -e \$f ] || { echo \"\$f left\"; exit 1; }; done; ! getent passwd pec-milter && ! getent group pec-milter"

_log "e2e-package: $(rig_elapsed "$T0") s"
rig_finish
