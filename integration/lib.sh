# shellcheck shell=bash
# integration/lib.sh — the end-to-end test rig of pec-milter. Source it from a test script:
#
#   . "$(dirname "$0")/lib.sh"
#   rig_begin pecst                # netns "pecst<pid>" with only lo, base dir, EXIT trap (cleanup + summary)
#   pf_instance "$RIG_BASE/pf" MILTERS=inet:127.0.0.1:8891 && pf_up "$RIG_BASE/pf"
#   ok "some check" cmd args...     # counts passes / failures
#   rig_finish                      # tears everything down, prints "N passed, N failed", exits 0/1
#
# Debian 12, root, no systemd, no syslog (see integration/deps.sh for the packages).
# Every daemon runs inside a network namespace that has only `lo`, so nothing can leave the
# machine even if some component tried DNS: the namespace's /etc/resolv.conf points to
# 127.0.0.1 (nothing listens on 53 there) and there is no route but loopback.
# Every *_up registers its *_down with the rig's cleanup stack, run by the EXIT trap even when
# the script fails or is interrupted. Every *_down is idempotent, and returns 0 only when what it
# stops is really gone (its process exited, its ports closed), so `ok "x stops" x_down DIR` checks.
#
# Functions (details above each one):
#   rig_begin PREFIX | rig_finish | rig_defer CMD... | rig_cleanup | die MSG | ns_exec CMD...
#   netns_up NAME | netns_down NAME
#   pf_instance DIR [KEY=VALUE...] | pf_up DIR | pf_down DIR
#   pf_common_main_cf DIR | pf_debian_services | pf_shipped_files DIR | pf_listen DIR INBOUND SUBMIT REINJECT
#   pf_sasl DIR "ADDR:PW..." | pf_tls DIR HOST | pf_spool_check DIR
#                                                     (the pieces of pf_instance, for bench/run.sh too;
#                                                     the Postfix TEST-ONLY VALUES block says what differs
#                                                     from milter-conf/postfix/ as shipped)
#   redis_up DIR PORT | redis_down DIR
#   clamd_up DIR PORT | clamd_down DIR | clamd_instream FILE [PORT] | eicar_string
#   need_pec_milter [SUBCOMMAND...] | pec_milter_up DIR CONFIG | pec_milter_down DIR
#   slapd_up DIR PORT LDIF | slapd_down DIR          (providers' index, o=postacert)
#   igpec_root_entry | ldap_providers PORT [ATTRS...]
#   write_config DIR [embedded|redis]                (env INDEX=ldap|ldif ... adds [index]/[reception])
#   pec_milter_hup DIR | pec_milter_log_count DIR ERE
#   wait_port HOST PORT [SECS] | wait_closed HOST PORT [SECS]
#   maildir_wait MAILDIR COUNT [SECS] | maildir_count MAILDIR | maildir_files MAILDIR | pf_queue_empty DIR
#   swaks_submit USER PASS FROM TO [SWAKS ARGS...] | swaks_plain PORT FROM TO [SWAKS ARGS...]
#   hdr_block FILE | hdr_get FILE NAME | hdr_is FILE NAME VALUE | hdr_absent FILE NAME
#   inspect_get FILE PYEXPR [TRUST] | kind_is FILE KIND | field_is FILE PYEXPR VALUE
#   verify_ok FILE | cms_ok FILE [CAFILE] | postacert_body_has ENVELOPE TOKEN
#   quarantine_count_is DIR N | no_pids_in_netns
#   tsa_pki DIR | tsa_up DIR PORT | tsa_down DIR | tsa_stamp_file FILE DIR PORT OUT | tsa_verify REPLY FILE DIR | tsa_post PORT BODY OUT [CTYPE [METHOD]]
#   ok NAME CMD... | fail NAME [--code N] [CMD...] | known_bug NAME CMD... | pass NAME | summary

RIG_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# Fixed ports: every namespace has its own loopback, so the standard ports are free there.
: "${RIG_SMTP_PORT:=25}"          # MX listener (the shipped smtp service): no AUTH, smtpd_milters (reception)
: "${RIG_SUBMIT_PORT:=587}"       # submission listener: STARTTLS, SASL AUTH, smtpd_milters (access point)
: "${RIG_REINJECT_PORT:=10025}"   # milter-free reinjection listener (pec-milter's receipts)
: "${RIG_MILTER_PORT:=8891}"      # pec-milter
: "${RIG_REDIS_PORT:=6379}"
: "${RIG_CLAMD_PORT:=3310}"
: "${RIG_LDAP_PORT:=389}"         # slapd holding the providers' index (e2e-reception)

# Test identities. SASL login = the full address (Cyrus realm = the domain).
MARIO=mario.rossi@pec.demo.test        MARIO_PW=mario-pw
CITTADINO=cittadino@pec.demo.test      CITTADINO_PW=cittadino-pw
ANNA=anna.bianchi@pec.other.test      ANNA_PW=anna-pw
: "${RIG_DOMAINS:=pec.demo.test pec.other.test}"
: "${RIG_USERS:=$MARIO $CITTADINO $ANNA}"
: "${RIG_SASL_USERS:=$MARIO:$MARIO_PW $CITTADINO:$CITTADINO_PW $ANNA:$ANNA_PW}"

RIG_PASSED=0 RIG_FAILED=0 RIG_FINISHED=0
RIG_CLEANUP=()
RIG_NETNS=${RIG_NETNS:-}
RIG_BASE=${RIG_BASE:-}

_log() { printf '# %s\n' "$*"; }

# rig_elapsed START: seconds since START (a $EPOCHREALTIME value), 2 decimals.
rig_elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }'; }

# die MSG: records a failure and exits (the EXIT trap tears down and prints the summary).
die() { printf 'FAIL - %s\n' "$*"; RIG_FAILED=$((RIG_FAILED + 1)); exit 1; }

# ns_exec CMD...: run CMD inside the rig's network namespace (refuses to run without one).
ns_exec() {
  [ -n "$RIG_NETNS" ] || { echo "ns_exec: no network namespace (call netns_up/rig_begin first)" >&2; return 2; }
  ip netns exec "$RIG_NETNS" "$@"
}

# ---------------------------------------------------------------- cleanup and assertions

# rig_defer CMD...: push CMD on the cleanup stack (run last-in first-out by rig_cleanup).
# With RIG_DEFER_NS=1 (several namespaces in one script), CMD runs with the RIG_NETNS that was
# current when it was deferred.
rig_defer() {
  if [ "${RIG_DEFER_NS:-0}" = 1 ] && [ -n "$RIG_NETNS" ]; then
    RIG_CLEANUP+=("RIG_NETNS=$(printf '%q' "$RIG_NETNS") $(printf '%q ' "$@")")
  else
    RIG_CLEANUP+=("$(printf '%q ' "$@")")
  fi
}

rig_cleanup() {
  local i
  for ((i = ${#RIG_CLEANUP[@]} - 1; i >= 0; i--)); do
    eval "${RIG_CLEANUP[i]}" || true
  done
  RIG_CLEANUP=()
}

_rig_on_exit() {
  local code=$1
  trap - EXIT INT TERM HUP
  set +e
  if [ "$RIG_FINISHED" = 0 ]; then
    if [ "$code" != 0 ] && [ "$RIG_FAILED" = 0 ]; then
      printf 'FAIL - script aborted (exit %s)\n' "$code"
      RIG_FAILED=$((RIG_FAILED + 1))
    fi
    rig_cleanup
    summary
    exit $?
  fi
  exit "$code"
}

# rig_begin PREFIX: base dir (RIG_BASE, under /tmp unless set), netns PREFIX<pid> (only lo),
# EXIT/INT/TERM trap that cleans up and prints the summary. Call once per test script.
rig_begin() {
  local prefix=${1:-pecit}
  if [ "${PEC_SKIP_INTEGRATION:-0}" = 1 ]; then echo "PEC_SKIP_INTEGRATION=1: skipping $0"; exit 0; fi
  [ "$(id -u)" = 0 ] || { echo "the integration rig needs root (network namespaces, postfix); PEC_SKIP_INTEGRATION=1 skips it" >&2; exit 1; }
  trap '_rig_on_exit $?' EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  trap 'exit 129' HUP
  if [ -z "$RIG_BASE" ]; then
    RIG_BASE=$(mktemp -d "/tmp/$prefix.XXXXXX")
    rig_defer _rig_rm_base "$RIG_BASE"
  fi
  mkdir -p "$RIG_BASE"; chmod 755 "$RIG_BASE"   # virtual(8) (uid 65534) and postfix must traverse it
  netns_up "$prefix$$" || die "cannot create network namespace $prefix$$"
}

_rig_rm_base() {
  if [ "${KEEP:-0}" = 1 ]; then _log "KEEP=1: leaving $1"; return; fi
  if [ "$RIG_FAILED" != 0 ]; then _rig_dump_logs "$1"; fi
  rm -rf "$1"
}

# On failure, show the tail of every daemon log before the base dir goes away.
_rig_dump_logs() {
  local f
  while IFS= read -r f; do
    printf '# ---- %s (last 25 lines)\n' "${f#"$1"/}"
    tail -n 25 "$f" | sed 's/^/#   /'
  done < <(find "$1" -maxdepth 3 -type f \( -name maillog -o -name '*.log' \) 2>/dev/null | sort)
}

# rig_finish: cleanup, then the summary line; exits 0 when nothing failed, else 1.
rig_finish() {
  trap - EXIT INT TERM HUP
  rig_cleanup
  summary
  exit $?
}

# ok NAME CMD...: passes when CMD exits 0. Output of CMD is shown only on failure.
# RIG_TIMING=1 appends each check's duration.
# Returns CMD's status. CMD runs in the current shell (functions may set globals).
ok() {
  local name=$1; shift
  local out rc t=$EPOCHREALTIME
  out=$(mktemp)
  "$@" >"$out" 2>&1; rc=$?
  [ "${RIG_TIMING:-0}" = 1 ] && name="$name [$(rig_elapsed "$t") s]"
  if [ "$rc" = 0 ]; then
    printf 'ok - %s\n' "$name"; RIG_PASSED=$((RIG_PASSED + 1))
  else
    printf 'FAIL - %s (exit %s: %s)\n' "$name" "$rc" "$*"
    tail -n 20 "$out" | sed 's/^/#   /'
    RIG_FAILED=$((RIG_FAILED + 1))
  fi
  rm -f "$out"
  return "$rc"
}

# fail NAME CMD...          : a negative assertion: passes when CMD exits 1 exactly (grep found
#                             nothing, test or [ was false, a function returned 1). Any other
#                             status is a failure: 0, but also 2 (grep's own error, e.g. a missing
#                             file), 124 (timeout), 126/127 (cannot run / command not found), 128+N
#                             (killed by signal N): a check that could not run proves nothing.
# fail NAME --code N CMD... : passes when CMD exits N exactly, for a command whose refusal has a
#                             status of its own (swaks: 24 no RCPT accepted, 28 AUTH refused, ...;
#                             getent: 2 key not found). Output of CMD is shown only on failure.
# fail NAME                 : with no command, records a failure (use after your own check).
fail() {
  local name=$1 want=1; shift
  if [ $# = 0 ]; then
    printf 'FAIL - %s\n' "$name"; RIG_FAILED=$((RIG_FAILED + 1)); return 1
  fi
  if [ "$1" = --code ]; then
    if [ $# -lt 3 ] || ! [[ $2 =~ ^[0-9]+$ ]]; then
      printf 'FAIL - %s (fail: --code needs a number and a command: %s)\n' "$name" "$*"
      RIG_FAILED=$((RIG_FAILED + 1)); return 1
    fi
    want=$2; shift 2
  fi
  local out rc t=$EPOCHREALTIME
  out=$(mktemp)
  "$@" >"$out" 2>&1; rc=$?
  [ "${RIG_TIMING:-0}" = 1 ] && name="$name [$(rig_elapsed "$t") s]"
  if [ "$rc" = "$want" ]; then
    printf 'ok - %s\n' "$name"; RIG_PASSED=$((RIG_PASSED + 1)); rm -f "$out"; return 0
  fi
  printf 'FAIL - %s (expected exit %s, got exit %s: %s)\n' "$name" "$want" "$rc" "$*"
  tail -n 20 "$out" | sed 's/^/#   /'
  RIG_FAILED=$((RIG_FAILED + 1)); rm -f "$out"; return 1
}

# known_bug NAME CMD...: a check of the documented behaviour that pec-milter does not meet yet.
# With STRICT=1 (the default) it is `ok NAME CMD...`. With STRICT=0 it passes when CMD passes
# and, when CMD fails, prints "KNOWN BUG - NAME", counts nothing and adds 1 to KNOWN_BUGS_SEEN.
KNOWN_BUGS_SEEN=0
known_bug() {
  if [ "${STRICT:-1}" = 1 ]; then ok "$@"; return; fi
  local name=$1; shift
  local out; out=$(mktemp)
  if "$@" >"$out" 2>&1; then
    pass "$name (known bug fixed? remove known_bug)"
  else
    printf 'KNOWN BUG - %s (%s)\n' "$name" "$*"; tail -n 5 "$out" | sed 's/^/#   /'
    KNOWN_BUGS_SEEN=$((KNOWN_BUGS_SEEN + 1))
  fi
  rm -f "$out"
  return 0
}

# pass NAME: records a pass.
pass() { printf 'ok - %s\n' "$1"; RIG_PASSED=$((RIG_PASSED + 1)); }

# summary: prints exactly "N passed, N failed" on its own line; returns 1 if any failed.
summary() {
  RIG_FINISHED=1
  printf '%s passed, %s failed\n' "$RIG_PASSED" "$RIG_FAILED"
  [ "$RIG_FAILED" = 0 ]
}

# ---------------------------------------------------------------- network namespace

# netns_up NAME: (re)creates namespace NAME with only `lo` (up), its own /etc/hosts and a
# resolv.conf pointing to 127.0.0.1 (bind-mounted by `ip netns exec`). Removes a stale one.
# Sets RIG_NETNS=NAME and registers netns_down.
netns_up() {
  local ns=$1
  if _netns_exists "$ns"; then netns_down "$ns" || return 1; fi
  mkdir -p "/etc/netns/$ns"
  printf '127.0.0.1\tlocalhost mx.pec.demo.test mx.pec.test\n::1\tlocalhost\n' > "/etc/netns/$ns/hosts"
  printf 'nameserver 127.0.0.1\noptions timeout:1 attempts:1\n' > "/etc/netns/$ns/resolv.conf"
  ip netns add "$ns" || return 1
  ip -n "$ns" link set lo up || return 1
  RIG_NETNS=$ns
  rig_defer netns_down "$ns"
}

# netns_down NAME: kills (by pid) anything still running in NAME (TERM, then KILL after 1 s),
# deletes it and /etc/netns/NAME. Returns 0 only when no process is left in it and its name is
# gone (a process that survives SIGKILL keeps the namespace alive, nameless).
netns_down() {
  local ns=$1 pids p i rc=0
  if _netns_exists "$ns"; then
    pids=$(ip netns pids "$ns" 2>/dev/null)
    if [ -n "$pids" ]; then
      _log "netns_down $ns: left-over processes: $(for p in $pids; do printf '%s(%s) ' "$p" "$(cat /proc/"$p"/comm 2>/dev/null)"; done)"
      for p in $pids; do kill -TERM "$p" 2>/dev/null; done
      for ((i = 0; i < 20; i++)); do [ -z "$(ip netns pids "$ns" 2>/dev/null)" ] && break; sleep 0.05; done
      for p in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$p" 2>/dev/null; done
      for ((i = 0; i < 40; i++)); do [ -z "$(ip netns pids "$ns" 2>/dev/null)" ] && break; sleep 0.05; done
      pids=$(ip netns pids "$ns" 2>/dev/null)
      if [ -n "$pids" ]; then echo "netns_down $ns: processes survive SIGKILL: $pids" >&2; rc=1; fi
    fi
    ip netns del "$ns" || rc=1
    if _netns_exists "$ns"; then echo "netns_down $ns: still listed by ip netns list" >&2; rc=1; fi
  fi
  rm -rf "/etc/netns/$ns"
  if [ "$RIG_NETNS" = "$ns" ]; then RIG_NETNS=; fi
  return "$rc"
}

# _netns_exists NAME: `ip netns list` lists NAME.
_netns_exists() { ip netns list | awk '{print $1}' | grep -qx -- "$1"; }

# ---------------------------------------------------------------- waiting

# wait_port HOST PORT [SECS=10]: until a TCP connect to HOST:PORT (inside the netns) succeeds.
wait_port() {
  local host=$1 port=$2 secs=${3:-10} i
  for ((i = 0; i < secs * 20; i++)); do
    ns_exec bash -c "exec 3<>/dev/tcp/$host/$port" 2>/dev/null && return 0
    sleep 0.05
  done
  echo "wait_port: nothing listens on $host:$port after ${secs}s" >&2
  return 1
}

# wait_closed HOST PORT [SECS=10]: until nothing listens on HOST:PORT any more.
wait_closed() {
  local host=$1 port=$2 secs=${3:-10} i
  for ((i = 0; i < secs * 20; i++)); do
    ns_exec bash -c "exec 3<>/dev/tcp/$host/$port" 2>/dev/null || return 0
    sleep 0.05
  done
  echo "wait_closed: $host:$port still open after ${secs}s" >&2
  return 1
}

# _alive PID: the process exists and is not a zombie (daemons are re-parented to PID 1,
# which may reap them late; a zombie already released its ports and files).
# The state is read once: a process reaped between a test of the file and its reading used to
# count as alive (empty state), and `_alive ""` read /proc/stat.
_alive() {
  local st
  [ -n "$1" ] || return 1
  st=$(awk '{ sub(/^.*\) /, ""); print $1 }' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$st" ] && [ "$st" != Z ]
}

# _stop_pid PID [SECS=10] [WHAT]: TERM PID, wait up to SECS, then KILL and wait 2 s more.
# Returns 0 once PID is gone (or was not running), 1 when it survives SIGKILL.
_stop_pid() {
  local pid=$1 secs=${2:-10} what=${3:-process} i
  _alive "$pid" || return 0
  kill -TERM "$pid" 2>/dev/null
  for ((i = 0; i < secs * 20; i++)); do _alive "$pid" || return 0; sleep 0.05; done
  _log "$what: pid $pid ignored SIGTERM for ${secs}s; killing"
  kill -KILL "$pid" 2>/dev/null
  for ((i = 0; i < 40; i++)); do _alive "$pid" || return 0; sleep 0.05; done
  echo "$what: pid $pid still running after SIGKILL" >&2
  return 1
}

# _kill_pidfile FILE [SECS=10]: _stop_pid on the pid of FILE's first line, then removes FILE.
# Returns 0 when that process is gone (or FILE names none), 1 when it is still running (FILE kept).
_kill_pidfile() {
  local f=$1 secs=${2:-10} pid
  [ -s "$f" ] || return 0
  pid=$(head -n 1 "$f" | tr -d ' \t')
  _stop_pid "$pid" "$secs" "$f" || return 1
  rm -f "$f"
}

# _daemon_down DIR NAME [SECS=10]: stops the daemon of DIR/NAME.pid (_kill_pidfile) and, when
# DIR/NAME.port exists and the rig has a namespace, waits (5 s) until nothing listens on
# 127.0.0.1:PORT there. Returns 0 only when the process is gone and the port closed.
_daemon_down() {
  local D=$1 name=$2 rc=0
  _kill_pidfile "$D/$name.pid" "${3:-10}" || rc=1
  if [ -s "$D/$name.port" ] && [ -n "$RIG_NETNS" ]; then
    wait_closed 127.0.0.1 "$(cat "$D/$name.port")" 5 || rc=1
  fi
  return "$rc"
}

# _wait_listening NAME PID PORT LOG...: until PID (a daemon just started in the background)
# accepts connections on 127.0.0.1:PORT in the netns (10 s). Fails, with the tail of LOG..., when
# PID exits first or after 10 s.
_wait_listening() {
  local name=$1 pid=$2 port=$3 i; shift 3
  for ((i = 0; i < 200; i++)); do
    if ! _alive "$pid"; then
      echo "${name}_up: $name exited at start; log:" >&2; tail -n 20 "$@" >&2; return 1
    fi
    ns_exec bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" 2>/dev/null && return 0
    sleep 0.05
  done
  echo "${name}_up: not listening on 127.0.0.1:$port after 10s; log:" >&2; tail -n 20 "$@" >&2
  return 1
}

# ---------------------------------------------------------------- Postfix

# ================================================================ Postfix: TEST-ONLY VALUES
# Every test Postfix is built from milter-conf/postfix/ AS SHIPPED — main.cf.snippet and
# master.cf.snippet appended to the instance's main.cf and master.cf, pec-sender-login.regexp
# copied unchanged into its config directory — plus what this block says, and nothing else.
# An admin who copies the snippets gets the system the tests ran. Each value below exists
# only because a test instance runs as a throwaway next to others, in a network namespace
# without DNS, without a root-owned /etc/postfix and without syslog (its comment says which);
# (a) is the complete list of shipped settings a test changes. integration/selftest.sh
# compares a test instance's `postconf -n`, `postconf -M` and `postconf -P` with the
# snippets and fails on any difference this block does not name.
#
# (a) The shipped settings a test changes, applied with postconf on the copy (pf_instance keys):
#     - master.cf, `postconf -F -e NAME/inet/service=ADDR`: the listen address of each shipped
#       smtpd service (the namespace's loopback or veth; see _pf_services);
#     - master.cf, `postconf -P -e`: smtpd_milters of the smtp and submission services and
#       main.cf non_smtpd_milters = MILTERS, the milter address (the e2e scripts pass the
#       shipped one, inet:127.0.0.1:$RIG_MILTER_PORT; selftest none: it runs no milter);
#     - main.cf, `postconf -e`: virtual_mailbox_domains = DOMAINS (the test identities'
#       domains) and virtual_transport = VTRANSPORT (where mail is delivered: virtual(8)
#       Maildirs in DIR/vmail for the scripts that run no delivery point, else the shipped
#       lmtp:inet:127.0.0.1:2424).
RIG_PF_SHIPPED=$RIG_ROOT/milter-conf/postfix
RIG_PF_MAIN_OVERRIDES="non_smtpd_milters virtual_mailbox_domains virtual_transport"
RIG_PF_MASTER_OVERRIDES="smtpd_milters"
#     - holders kept in LDAP (pf_instance HOLDERS_LDAP="URL BASE", e2e-access.sh): the
#       submission service's smtpd_sender_login_maps becomes the shipped "#ldap-holders:" line of
#       master.cf.snippet, and pec-sender-login-ldap.cf gets server_host = URL and search_base
#       = BASE (pf_holders_ldap). selftest.sh builds no such instance.
# _pf_services INBOUND SUBMIT REINJECT: "shipped-service/type test-listen-address", one a line.
# pec-cleanup/unix (the submission port's cleanup(8)) is no listener: it stays as shipped.
_pf_services() { printf '%s\n' "smtp/inet $1" "submission/inet $2" "pec-cleanup/unix pec-cleanup" "127.0.0.1:10025/inet $3"; }
#
# (b) main.cf lines the snippet does not set, standing in for the admin's own main.cf
#     (pf_common_main_cf, and pf_instance's _pf_site_main_cf for its keys). Never a setting of
#     the snippet: a second assignment would override it (and postconf warns).
# (c) master.cf: Postfix's own services, as in Debian's master.cf but unchrooted
#     (pf_debian_services): a test queue directory has no copies of /etc files.
# (d) Files: a Cyrus sasldb with the test accounts (pf_sasl) and a throwaway self-signed
#     certificate for the submission service's TLS (pf_tls), both in DIR.

# pf_common_main_cf DIR: the test-only main.cf lines every test instance in DIR has (see (b)).
pf_common_main_cf() {
  cat <<EOF
# ---- test-only (integration/lib.sh pf_common_main_cf): instance in $1, no DNS, no syslog
# as in Debian's main.cf
compatibility_level = 3.6
# the instance's own queue and data directories (not /var/spool/postfix, /var/lib/postfix)
queue_directory = $1/spool
data_directory = $1/data
# no syslog in the test: postlogd writes the log here (the prefix must be whitelisted)
maillog_file = $1/maillog
maillog_file_prefixes = $1
# the namespace has IPv4 loopback (and veths) only
inet_protocols = ipv4
# no DNS in the namespace: next hops are literal [ip]:port (transport_maps), never looked up
smtp_dns_support_level = disabled
smtp_host_lookup = native
lmtp_host_lookup = native
smtpd_peername_lookup = no
transport_maps = texthash:$1/etc/transport
# no /etc/aliases
alias_maps =
alias_database =
# SASL (Postfix's default Cyrus, service "smtpd"): the instance's smtpd.conf and sasldb (pf_sasl)
cyrus_sasl_config_path = $1/etc/sasl
# logins are full addresses: no realm appended
smtpd_sasl_local_domain =
# the certificate of the submission service's TLS: a throwaway self-signed one (pf_tls)
smtpd_tls_cert_file = $1/etc/tls/cert.pem
smtpd_tls_key_file = $1/etc/tls/key.pem
# tests provoke errors on purpose: no 1 s tarpit after each one
smtpd_error_sleep_time = 0s
EOF
}

# _pf_site_main_cf DIR: pf_common_main_cf, then the lines that depend on pf_instance's keys
# (HOST, DOMAINS, MYNETWORKS, the listen addresses; read from pf_instance's scope).
_pf_site_main_cf() {
  local ips ip
  ips=$(for ip in "${INBOUND%:*}" "${SUBMIT%:*}" "${REINJECT%:*}"; do echo "$ip"; done | awk '!seen[$0]++' | paste -sd, | sed 's/,/, /g')
  pf_common_main_cf "$1"
  cat <<EOF
# ---- test-only (integration/lib.sh pf_instance): names, addresses, Maildirs
myhostname = $HOST
mydomain = ${DOMAINS%% *}
myorigin = \$mydomain
mydestination = localhost
# only the addresses of this instance's listeners (several instances may share a namespace)
inet_interfaces = $ips
mynetworks = $MYNETWORKS
# nothing leaves the test: a domain without a transport_maps next hop is refused (no DNS)
default_transport = error:5.7.1 outbound mail disabled in test instance
relay_transport = error:5.7.1 outbound mail disabled in test instance
recipient_delimiter = +
# virtual(8) Maildirs (VTRANSPORT=virtual): one per address under DIR/vmail, as uid 65534
# (texthash: virtual(8) refuses regexp \$1); the catch-all lists every address, as the
# shipped configuration (no virtual_mailbox_maps) does
virtual_mailbox_base = $1/vmail
virtual_mailbox_maps = texthash:$1/etc/vmailbox
virtual_uid_maps = static:65534
virtual_gid_maps = static:65534
EOF
}

# pf_debian_services: Postfix's own master.cf services (Debian's master.cf, see (c)), unchrooted.
pf_debian_services() {
  cat <<'EOF'
# ---- test-only (integration/lib.sh pf_debian_services): Postfix's own services as in
# Debian's master.cf, unchrooted (a test queue directory has no copies of /etc files)
# service type  private unpriv chroot wakeup maxproc command
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
EOF
}
# ============================================================ end of Postfix test-only values

# pf_instance DIR [KEY=VALUE...]: writes (does not start) a Postfix instance in DIR, built from
# milter-conf/postfix/ as shipped plus the test-only values above:
#   INBOUND=127.0.0.1:25     listen address of the shipped smtp service (port 25: no AUTH,
#                            smtpd_milters=$MILTERS, the reception point; mail for DOMAINS
#                            only), e.g. 10.99.0.1:25 on a veth (e2e-two-providers)
#   SUBMIT=127.0.0.1:587     listen address of the shipped submission service (STARTTLS
#                            required, SASL AUTH, sender-login check, smtpd_milters=$MILTERS)
#   REINJECT=127.0.0.1:10025 listen address of the shipped milter-free reinjection service
#   MILTERS=                 the milter address of smtp, submission and non_smtpd_milters
#                            (as shipped: inet:127.0.0.1:8891; empty: no milter anywhere)
#   HOST=mx.pec.demo.test    myhostname
#   DOMAINS="pec.demo.test pec.other.test"   virtual_mailbox_domains
#   USERS="a@dom ..."        addresses with their own Maildir DIR/vmail/DOM/LOCAL/ (others: .../catchall/)
#   SASL_USERS="addr:pw ..." SASL accounts (Cyrus sasldb DIR/sasl/sasldb2; login = full address,
#                            or a bare login, e.g. mrossi:pw, in realm HOST)
#   HOLDERS_LDAP="URL BASE"  the shipped "#ldap-holders:" submission variant (holders in LDAP;
#                            pf_holders_ldap); empty: the shipped regexp map alone
#   MYNETWORKS=127.0.0.1/32  mynetworks (the shipped services set their own relay rules:
#                            only the reinjection listener lets loopback relay)
#   TRANSPORT="dom smtp:[ip]:port"   optional transport_maps lines (literal next hops only)
#   VTRANSPORT=virtual       virtual_transport: virtual(8) Maildirs, or the shipped
#                            lmtp:inet:127.0.0.1:2424 (pec-milter's delivery point)
# Non-local domains go to default_transport = error: (nothing leaves, no DNS).
# Start: pf_up DIR; stop: pf_down DIR. Log: DIR/maillog.
pf_instance() {
  local D SUBMIT REINJECT HOST DOMAINS USERS SASL_USERS MILTERS MYNETWORKS TRANSPORT INBOUND VTRANSPORT HOLDERS_LDAP kv
  D=$(realpath -m "$1"); shift
  SUBMIT=127.0.0.1:$RIG_SUBMIT_PORT REINJECT=127.0.0.1:$RIG_REINJECT_PORT INBOUND=127.0.0.1:$RIG_SMTP_PORT
  HOST=mx.pec.demo.test DOMAINS=$RIG_DOMAINS USERS=$RIG_USERS SASL_USERS=$RIG_SASL_USERS MILTERS=
  MYNETWORKS=127.0.0.1/32 TRANSPORT= VTRANSPORT=virtual HOLDERS_LDAP=
  for kv in "$@"; do
    case ${kv%%=*} in
      SUBMIT|REINJECT|HOST|DOMAINS|USERS|SASL_USERS|MILTERS|MYNETWORKS|TRANSPORT|INBOUND|VTRANSPORT|HOLDERS_LDAP) printf -v "${kv%%=*}" '%s' "${kv#*=}" ;;
      *) echo "pf_instance: unknown key ${kv%%=*}" >&2; return 2 ;;
    esac
  done
  [ -n "$INBOUND" ] || INBOUND=127.0.0.1:$RIG_SMTP_PORT

  mkdir -p "$D"/etc/sasl "$D"/spool "$D"/data "$D"/vmail || return 1
  chmod 755 "$D" "$D"/etc "$D"/etc/sasl
  chown postfix:postfix "$D"/data
  chown 65534:65534 "$D"/vmail     # virtual(8) delivers as nobody (uid >= virtual_minimum_uid)

  # the admin's main.cf (here: test-only lines), then the shipped snippet appended as it is
  { _pf_site_main_cf "$D"; echo; cat "$RIG_PF_SHIPPED/main.cf.snippet"; } > "$D"/etc/main.cf || return 1
  # Debian's services (unchrooted), then the shipped services appended as they are
  { pf_debian_services; echo; cat "$RIG_PF_SHIPPED/master.cf.snippet"; } > "$D"/etc/master.cf || return 1
  pf_shipped_files "$D" || return 1
  # (a): the only changes to the shipped settings
  postconf -c "$D/etc" -e "non_smtpd_milters = $MILTERS" "virtual_mailbox_domains = $DOMAINS" \
    "virtual_transport = $VTRANSPORT" || return 1
  postconf -c "$D/etc" -P -e "smtp/inet/smtpd_milters=$MILTERS" "submission/inet/smtpd_milters=$MILTERS" || return 1
  if [ -n "$HOLDERS_LDAP" ]; then pf_holders_ldap "$D" $HOLDERS_LDAP || return 1; fi
  pf_listen "$D" "$INBOUND" "$SUBMIT" "$REINJECT" || return 1

  local u dom
  {
    for u in $USERS; do echo "$u ${u#*@}/${u%@*}/"; done
    for dom in $DOMAINS; do echo "@$dom $dom/catchall/"; done
  } > "$D"/etc/vmailbox
  printf '%s\n' "$TRANSPORT" > "$D"/etc/transport

  pf_sasl "$D" "$SASL_USERS" "$HOST" || return 1
  pf_tls "$D" "$HOST" || return 1
  pf_spool_check "$D"
}

# pf_shipped_files DIR: the shipped map files, copied unchanged into the instance's config
# directory (the snippets name them as $config_directory/FILE).
pf_shipped_files() {
  install -o root -g root -m 644 "$RIG_PF_SHIPPED/pec-sender-login.regexp" "$1/etc/pec-sender-login.regexp"
  install -o root -g root -m 644 "$RIG_PF_SHIPPED/pec-sender-login-ldap.cf" "$1/etc/pec-sender-login-ldap.cf"
}

# pf_holders_ldap DIR URL BASE: the shipped "#ldap-holders:" variant of the submission service
# (holders kept in LDAP; see (a)): its smtpd_sender_login_maps line, read from
# master.cf.snippet as shipped, and pec-sender-login-ldap.cf with server_host = URL and
# search_base = BASE.
pf_holders_ldap() {
  local D=$1 url=$2 base=$3 maps
  postconf -c "$D/etc" -m | grep -qx ldap || { echo "pf_holders_ldap: Postfix has no ldap table (integration/deps.sh installs postfix-ldap)" >&2; return 1; }
  maps=$(sed -n 's/^ *#ldap-holders: -o smtpd_sender_login_maps=//p' "$RIG_PF_SHIPPED/master.cf.snippet")
  [ -n "$maps" ] || { echo "pf_holders_ldap: no #ldap-holders: line in master.cf.snippet" >&2; return 1; }
  sed -i -e "s|^server_host = .*|server_host = $url|" -e "s|^search_base = .*|search_base = $base|" \
    "$D/etc/pec-sender-login-ldap.cf" || return 1
  postconf -c "$D/etc" -P -e "submission/inet/smtpd_sender_login_maps=$maps"
}

# pf_listen DIR INBOUND SUBMIT REINJECT: gives each shipped smtpd service of DIR/etc/master.cf
# its test listen address (postconf -F -e NAME/inet/service=ADDR); an empty address deletes
# that service (bench/run.sh keeps only the reinjection listener).
pf_listen() {
  local D=$1 svc addr
  while read -r svc addr; do
    if [ -z "$addr" ]; then
      postconf -c "$D/etc" -M -X "$svc" || return 1
    elif [ "${svc%/*}" != "$addr" ]; then
      postconf -c "$D/etc" -F -e "$svc/service=$addr" || return 1
    fi
  done < <(_pf_services "$2" "$3" "$4")
}

# pf_sasl DIR "ADDR:PW ..." HOST: Cyrus SASL for the smtpd listeners of the instance in DIR:
# DIR/etc/sasl/smtpd.conf (auxprop, sasldb, PLAIN LOGIN) and the accounts in DIR/sasl/sasldb2
# (login = the full address, realm = its domain; a bare login in realm HOST).
pf_sasl() {
  local D=$1 up u realm
  mkdir -p "$D"/etc/sasl || return 1
  # smtpd (user postfix, not chrooted) reads $D/etc/sasl/smtpd.conf and the sasldb.
  cat > "$D"/etc/sasl/smtpd.conf <<EOF
pwcheck_method: auxprop
auxprop_plugin: sasldb
sasldb_path: $D/sasl/sasldb2
mech_list: PLAIN LOGIN
EOF
  # sasldb2 (Berkeley DB) outside etc/: postfix check wants etc/ owned by root; smtpd
  # (user postfix) only reads it, so root:postfix 0640.
  mkdir -p "$D"/sasl; chmod 755 "$D"/sasl
  rm -f "$D"/sasl/sasldb2*
  for up in $2; do
    u=${up%%:*}
    # a login that is not an address (holders in LDAP) is in the server's realm, myhostname
    if [ "${u#*@}" = "$u" ]; then realm=$3; else realm=${u#*@}; fi
    printf '%s' "${up#*:}" | saslpasswd2 -f "$D"/sasl/sasldb2 -p -c -u "$realm" "${u%@*}" || return 1
  done
  if [ -e "$D"/sasl/sasldb2 ]; then chown root:postfix "$D"/sasl/sasldb2; chmod 640 "$D"/sasl/sasldb2; fi
}

# pf_tls DIR HOST: a throwaway self-signed certificate for HOST (P-256, 2 days) in DIR/etc/tls
# (smtpd reads the key as root, before dropping privileges: root-only 0600).
pf_tls() {
  local D=$1
  mkdir -p "$D"/etc/tls && chmod 755 "$D"/etc/tls || return 1
  [ -s "$D"/etc/tls/cert.pem ] && [ -s "$D"/etc/tls/key.pem ] && return 0
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=$2" \
    -keyout "$D"/etc/tls/key.pem -out "$D"/etc/tls/cert.pem >/dev/null 2>&1 || return 1
  chmod 600 "$D"/etc/tls/key.pem; chmod 644 "$D"/etc/tls/cert.pem
}

# pf_spool_check DIR: the queue directories of the instance in DIR (whose etc/main.cf and
# etc/master.cf are written), then `postfix check`.
pf_spool_check() {
  local D=$1
  # queue directories as postfix-files wants them: `postfix check` would create them too, but
  # its post-install create-missing costs ~2 s; this costs nothing
  local q
  for q in active bounce corrupt defer deferred flush hold incoming private saved trace; do
    install -d -o postfix -g root -m 700 "$D/spool/$q"
  done
  install -d -o postfix -g postdrop -m 730 "$D/spool/maildrop"
  install -d -o postfix -g postdrop -m 710 "$D/spool/public"
  install -d -o root -g root -m 755 "$D/spool/pid"
  chmod 755 "$D/spool"; chmod 700 "$D/data"
  # Postfix re-reads a main.cf younger than ~2 s in a 300 ms loop until it stops changing
  # (2.1 s per fresh instance): backdate the files we just wrote.
  touch -d '-10 seconds' "$D"/etc/main.cf "$D"/etc/master.cf
  # postfix prints errors to stderr only on a tty (else to a maillog that does not exist yet):
  # on failure, run it again under script(1) (which costs ~1 s, so not on the happy path).
  if ! ns_exec postfix -c "$D/etc" check >/dev/null 2>&1; then
    ns_exec script -qec "postfix -c $D/etc check" /dev/null >&2
    echo "postfix check failed for $D" >&2; return 1
  fi
}

# pf_up DIR: starts the instance in the netns, waits for every inet listener; registers pf_down.
pf_up() {
  local D sub rein
  D=$(realpath -m "$1")
  rig_defer pf_down "$D"
  if ! ns_exec postfix -c "$D/etc" start >/dev/null 2>&1; then
    ns_exec script -qec "postfix -c $D/etc check" /dev/null >&2
    echo "pf_up: postfix start failed ($D); see $D/maillog" >&2; return 1
  fi
  sub=$(_pf_listeners "$D")
  for rein in $sub; do wait_port "${rein%:*}" "${rein##*:}" 10 || return 1; done
}

# _pf_listeners DIR: the ip:port of every inet listener in the master.cf of the instance in DIR.
_pf_listeners() { postconf -c "$1/etc" -M 2>/dev/null | awk '$2 == "inet" && $1 ~ /:/ {print $1}'; }

# pf_down DIR: stops the instance (postfix stop; after 10 s abort, then KILL of the master) and
# waits for its master to exit and every inet listener of its master.cf to close (5 s each).
# Returns 0 only when the master is gone and the listeners are closed.
pf_down() {
  local D=$1 pidf pid i l rc=0
  D=$(realpath -m "$D")
  pidf=$D/spool/pid/master.pid
  if [ -s "$pidf" ]; then pid=$(tr -d ' ' < "$pidf"); else pid=; fi
  if _alive "$pid"; then
    ns_exec postfix -c "$D/etc" stop >/dev/null 2>&1
    for ((i = 0; i < 200; i++)); do _alive "$pid" || break; sleep 0.05; done
    if _alive "$pid"; then
      _log "pf_down $D: master $pid still running 10 s after postfix stop; aborting"
      ns_exec postfix -c "$D/etc" abort >/dev/null 2>&1
      sleep 0.5
      kill -KILL "$pid" 2>/dev/null
      for ((i = 0; i < 40; i++)); do _alive "$pid" || break; sleep 0.05; done
      if _alive "$pid"; then echo "pf_down: master $pid of $D survives SIGKILL" >&2; return 1; fi
    fi
  fi
  if [ -n "$RIG_NETNS" ]; then
    for l in $(_pf_listeners "$D"); do wait_closed "${l%:*}" "${l##*:}" 5 || rc=1; done
  fi
  return "$rc"
}

# ---------------------------------------------------------------- Redis

# redis_up DIR PORT: redis-server on 127.0.0.1:PORT in the netns, no persistence; registers redis_down.
redis_up() {
  local D=$1 port=$2
  mkdir -p "$D"
  rig_defer redis_down "$D"
  ns_exec redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$D" \
    --daemonize yes --pidfile "$D/redis.pid" --logfile "$D/redis.log" || return 1
  echo "$port" > "$D/redis.port"
  wait_port 127.0.0.1 "$port" 10
}

# redis_down DIR: stops it and waits until its port is closed (0 only when both are true).
redis_down() { _daemon_down "$1" redis; }

# ---------------------------------------------------------------- clamd

# eicar_string: prints the 68-byte EICAR test string (no newline).
eicar_string() { printf '%s' 'X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*'; }

# clamd_up DIR PORT: clamd on 127.0.0.1:PORT in the netns with a local signature DB only
# (EICAR as .hdb md5 and .ndb body signature: matches inside decoded MIME too; no freshclam).
# Runs as root (no User line). Config DIR/clamd.conf (clamdscan --config-file=...). Registers clamd_down.
clamd_up() {
  local D=$1 port=$2
  mkdir -p "$D/db"
  eicar_string > "$D/eicar.com"
  echo "$(md5sum < "$D/eicar.com" | cut -d' ' -f1):$(stat -c %s "$D/eicar.com"):PEC.Test.EICAR.HDB" > "$D/db/pectest.hdb"
  echo "PEC.Test.EICAR.NDB:0:*:$(printf '%s' 'EICAR-STANDARD-ANTIVIRUS-TEST-FILE' | od -An -tx1 | tr -d ' \n')" > "$D/db/pectest.ndb"
  cat > "$D/clamd.conf" <<EOF
Foreground no
LogFile $D/clamd.log
LogTime yes
PidFile $D/clamd.pid
DatabaseDirectory $D/db
TCPSocket $port
TCPAddr 127.0.0.1
StreamMaxLength 200M
MaxScanSize 400M
MaxFileSize 200M
SelfCheck 0
EOF
  rig_defer clamd_down "$D"
  echo "$port" > "$D/clamd.port"
  ns_exec clamd --config-file="$D/clamd.conf" || return 1
  wait_port 127.0.0.1 "$port" 30
}

# clamd_instream FILE [PORT]: scans FILE with a raw zINSTREAM over bash /dev/tcp (what a milter
# does: 4-byte big-endian chunk length + data, a zero length ends); prints clamd's answer,
# e.g. "stream: PEC.Test.EICAR.NDB.UNOFFICIAL FOUND" or "stream: OK".
clamd_instream() {
  local f=$1 port=${2:-$RIG_CLAMD_PORT}
  ns_exec bash -c '
    exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 2
    hex=$(printf "%08x" "$(stat -c %s "$2")")
    { printf "zINSTREAM\0"
      printf "\\x${hex:0:2}\\x${hex:2:2}\\x${hex:4:2}\\x${hex:6:2}"
      cat "$2"
      printf "\0\0\0\0"; } >&3
    tr "\0" "\n" <&3' _ "$port" "$f"
}

# clamd_down DIR: stops it and waits until its port is closed (0 only when both are true).
clamd_down() { _daemon_down "$1" clamd; }

# ---------------------------------------------------------------- pec-milter

pec_milter_bin() {
  local b=${PEC_MILTER_BIN:-target/debug/pec-milter}
  case $b in /*) ;; */*) b=$RIG_ROOT/$b ;; *) b=$(command -v "$b" || echo "$b") ;; esac
  printf '%s' "$b"
}

# need_pec_milter [SUBCOMMAND...]: dies (one failure, then the summary) unless the pec-milter
# binary (pec_milter_bin) is built and has each SUBCOMMAND (`BIN SUBCOMMAND --help` runs).
need_pec_milter() {
  local bin sub
  bin=$(pec_milter_bin)
  [ -x "$bin" ] || die "pec-milter binary $bin not found: build it first (cargo build)"
  for sub in "$@"; do
    "$bin" "$sub" --help >/dev/null 2>&1 || die "$bin has no \`$sub\` subcommand (not built yet?)"
  done
}

# pec_milter_up DIR CONFIG: starts `${PEC_MILTER_BIN:-target/debug/pec-milter} run --config CONFIG`
# in the netns, in the background (stderr+stdout to DIR/pec-milter.log, pid in DIR/pec-milter.pid),
# waits for the `[milter] listen` address of CONFIG (any form: _listen_target). Registers
# pec_milter_down.
pec_milter_up() {
  local D=$1 cfg=$2 bin listen target pid i
  bin=$(pec_milter_bin)
  [ -x "$bin" ] || { echo "pec_milter_up: $bin not found or not executable (cargo build first)" >&2; return 1; }
  if ! "$bin" run --help >/dev/null 2>&1; then
    echo "pec_milter_up: $bin has no \`run\` subcommand (the daemon is not built yet)" >&2; return 1
  fi
  mkdir -p "$D"
  listen=$(sed -n '/^\[milter\]/,/^\[/s/^[[:space:]]*listen[[:space:]]*=[[:space:]]*"\(.*\)".*/\1/p' "$cfg" | head -1)
  listen=${listen:-inet:127.0.0.1:8891}
  target=$(_listen_target "$listen") || { echo "pec_milter_up: cannot parse listen = $listen" >&2; return 1; }
  [ -n "$RIG_NETNS" ] || { echo "pec_milter_up: no network namespace" >&2; return 2; }
  # not through the ns_exec function: a backgrounded function is a subshell, and $! would be
  # that shell's pid. A simple command is forked and exec'd, and `ip netns exec` execs too,
  # so $! is pec-milter's own pid. NO_COLOR: plain log lines in the file.
  NO_COLOR=1 ip netns exec "$RIG_NETNS" "$bin" run --config "$cfg" >>"$D/pec-milter.log" 2>&1 &
  pid=$!
  echo "$pid" > "$D/pec-milter.pid"
  echo "$listen" > "$D/pec-milter.listen"
  rig_defer pec_milter_down "$D"
  for ((i = 0; i < 300; i++)); do
    if ! _alive "$pid"; then
      wait "$pid"; echo "pec_milter_up: pec-milter exited with status $? at start; log:" >&2
      tail -n 20 "$D/pec-milter.log" >&2; rm -f "$D/pec-milter.pid"; return 1
    fi
    case $target in
      tcp\ *) local th tp; read -r _ th tp <<<"$target"
              ns_exec bash -c "exec 3<>/dev/tcp/$th/$tp" 2>/dev/null && return 0 ;;
      # connectable, not just present: a stale socket of a killed process is there already
      unix\ *) [ -S "${target#unix }" ] && python3 -c 'import socket, sys; socket.socket(socket.AF_UNIX).connect(sys.argv[1])' "${target#unix }" 2>/dev/null && return 0 ;;
    esac
    sleep 0.05
  done
  echo "pec_milter_up: not listening on $listen after 15s; log:" >&2; tail -n 20 "$D/pec-milter.log" >&2
  return 1
}

# pec_milter_down DIR: stops the pec-milter started by pec_milter_up DIR: SIGTERM, waits up to
# 15 s. Returns 0 only for a real stop: it was running, it is a child of this shell (so that its
# exit status is known), it exited with status 0 on the signal, and its inet listen address is
# closed. Returns 1 when it had exited before (whatever the status), exited non-zero (127: a
# command that could not run), ignored SIGTERM (KILLed after 15 s), or is not a child of this
# shell. With no pid file (nothing started, or already stopped) only the listen address is
# checked. What happened is written to DIR/pec-milter.exit (the status, `killed`, ...).
pec_milter_down() {
  local D=$1 pid ppid i rc listen hp
  if [ -s "$D/pec-milter.pid" ]; then
    pid=$(cat "$D/pec-milter.pid"); rm -f "$D/pec-milter.pid"
    if ! _alive "$pid"; then
      wait "$pid" 2>/dev/null; rc=$?
      echo "exited-before:$rc" > "$D/pec-milter.exit"
      echo "pec_milter_down: pec-milter (pid $pid) was not running any more (wait: status $rc)" >&2
      return 1
    fi
    ppid=$(awk '{ sub(/^.*\) /, ""); print $2 }' "/proc/$pid/stat" 2>/dev/null)
    kill -TERM "$pid" 2>/dev/null
    for ((i = 0; i < 300; i++)); do _alive "$pid" || break; sleep 0.05; done
    if _alive "$pid"; then
      echo "pec_milter_down: still running 15 s after SIGTERM; killing" >&2
      kill -KILL "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; echo killed > "$D/pec-milter.exit"; return 1
    fi
    if [ "$ppid" != "$BASHPID" ]; then
      echo unknown > "$D/pec-milter.exit"
      echo "pec_milter_down: pid $pid stopped, but it is not a child of this shell: exit status unknown" >&2
      return 1
    fi
    wait "$pid" 2>/dev/null; rc=$?
    echo "$rc" > "$D/pec-milter.exit"
    if [ "$rc" != 0 ]; then echo "pec_milter_down: pec-milter exited with status $rc" >&2; return 1; fi
  fi
  listen=$(cat "$D/pec-milter.listen" 2>/dev/null)
  hp=$(_listen_target "$listen" 2>/dev/null)
  case $hp in
    tcp\ *) local th tp; read -r _ th tp <<<"$hp"
            if [ -n "$RIG_NETNS" ]; then wait_closed "$th" "$tp" 5 || return 1; fi ;;
  esac
  return 0
}

# _listen_target SPEC: where a client reaches pec-milter's [milter] listen SPEC, as "tcp HOST
# PORT" or "unix PATH". Every form pec-milter takes: inet:HOST:PORT, inet:[ADDR]:PORT,
# inet:PORT@HOST, inet:PORT@[ADDR], inet:PORT (reached on 127.0.0.1), the same with inet6:
# (inet6:PORT on ::1), unix:/PATH, local:/PATH. Returns 1 for anything else.
_listen_target() {
  local s=$1 rest host port
  case $s in
    unix:/*|local:/*) printf 'unix %s\n' "${s#*:}"; return 0 ;;
    inet6:*) rest=${s#inet6:} ;;
    inet:*) rest=${s#inet:} ;;
    *) return 1 ;;
  esac
  if [[ $rest == *@* ]]; then port=${rest%%@*} host=${rest#*@}
  elif [[ $rest =~ ^[0-9]+$ ]]; then port=$rest host=
  else port=${rest##*:} host=${rest%:*}
  fi
  host=${host#[}; host=${host%]}
  if [ -z "$host" ]; then
    if [ "${s%%:*}" = inet6 ]; then host=::1; else host=127.0.0.1; fi
  fi
  [[ $port =~ ^[0-9]+$ ]] || return 1
  printf 'tcp %s %s\n' "$host" "$port"
}

# write_config DIR [embedded|redis]: writes DIR/pec-milter.toml (format of milter-conf/pec-milter.toml)
# with every path under DIR: demo key/cert in DIR/demo (init_demo: ca.pem is expected there too),
# state DIR/state, spool DIR/spool, quarantine DIR/quarantine; milter on 127.0.0.1:$RIG_MILTER_PORT,
# reinjection 127.0.0.1:$RIG_REINJECT_PORT, clamd tcp:127.0.0.1:$RIG_CLAMD_PORT,
# redis://127.0.0.1:$RIG_REDIS_PORT/0. Holders: cittadino is upr, @pec.other.test upa, others upa1.
# Optional, from the environment (e.g. `INDEX=ldif INDEX_LDIF=/x.ldif write_config DIR`); unset = as before,
# no [index] section (the reception point is off) and no [reception] section:
#   INDEX=ldap|ldif|none   appends [index] source = ... and a [reception] section
#   INDEX_URL              [index] url (default ldap://127.0.0.1:$RIG_LDAP_PORT), base o=postacert
#   INDEX_LDIF             [index] ldif (default DIR/igpec.ldif)
#   INDEX_REFRESH          [index] refresh (default "24h"); INDEX_TIMEOUT (default "10s")
#   INDEX_SIGNED_BY="a.pem"  [index] signed_by (default none: INDEX_LDIF is a plain LDIF; set, it
#                          names the signed .p7m and these PEM files are its signer's anchors)
#   TRUST="a.pem b.pem"    [reception] trust (default DIR/demo/ca.pem); CRLS="x.pem ..." (default none)
#   FETCH_CRLS=true|false  [reception] fetch_crls (default false: the real samples' certificates
#                          name distribution points on the Internet, which the rig cannot reach;
#                          crl_cache is D/crl, D the instance directory)
#   VERIFY_AT=now|signing-time   [reception] verify_at (default now)
#   ORDINARY=anomaly|reject      [reception] ordinary_mail (default anomaly)
#   CERTIFIED="d1 d2"      [recipients] certified_domains (default "pec.demo.test pec.other.test")
#   HOLDERS_LDAP_URL, HOLDERS_LDAP_BASE   appends [holders.ldap] (filter (uid=%s), attribute mail, no cache)
#   LOG_NODE               [log] node (default: the name of DIR); [log] dir is always DIR/log
#   LOG_TSA_URL, LOG_TSA_TRUST   [log] tsa_url and tsa_trust (one PEM), seal_retry "1s"
#   METRICS_LISTEN         appends [metrics] listen = METRICS_LISTEN (the /metrics and /health
#                          endpoint, e.g. 127.0.0.1:9187 in the netns; default: no [metrics], off)
write_config() {
  local D=$1 backend=${2:-embedded}
  case $backend in embedded|redis) ;; *) echo "write_config: backend must be embedded or redis" >&2; return 2 ;; esac
  case ${INDEX:-} in ''|none|ldap|ldif) ;; *) echo "write_config: INDEX must be ldap, ldif or none" >&2; return 2 ;; esac
  case ${VERIFY_AT:-now} in now|signing-time) ;; *) echo "write_config: VERIFY_AT must be now or signing-time" >&2; return 2 ;; esac
  case ${ORDINARY:-anomaly} in anomaly|reject) ;; *) echo "write_config: ORDINARY must be anomaly or reject" >&2; return 2 ;; esac
  D=$(realpath -m "$D")
  local certified=${CERTIFIED-pec.demo.test pec.other.test}
  mkdir -p "$D/demo" "$D/state" "$D/spool" "$D/quarantine"
  cat > "$D/pec-milter.toml" <<EOF
# written by integration/lib.sh write_config ($backend)
[milter]
listen = "inet:127.0.0.1:$RIG_MILTER_PORT"
workers = 2

[provider]
name = "Demo PEC S.p.A."
domain = "pec.demo.test"
domains = ["pec.demo.test"]
digest = "sha256"

[signing]
backend = "pem"
key = "$D/demo/provider.key"
cert = "$D/demo/provider.crt"
init_demo = true

[reinjection]
address = "127.0.0.1:$RIG_REINJECT_PORT"
helo = "localhost"
timeout = "30s"

[state]
backend = "$backend"
path = "$D/state"
url = "redis://127.0.0.1:$RIG_REDIS_PORT/0"
retention = "30d"

[clamd]
address = "tcp:127.0.0.1:$RIG_CLAMD_PORT"
enabled = true
timeout = "60s"

[quarantine]
dir = "$D/quarantine"

[spool]
dir = "$D/spool"
memory_limit = "1MB"

[limits]
max_recipients = 500
max_product = "100MB"

[recipients]
certified_domains = [$(_toml_list $certified)]

[holders]
default_class = "upa1"
upa = ["@pec.other.test"]
upa1 = []
upr = ["$CITTADINO"]

[log]
dir = "$D/log"
node = "${LOG_NODE:-${D##*/}}"
${LOG_TSA_URL:+tsa_url = \"$LOG_TSA_URL\"}
${LOG_TSA_URL:+tsa_trust = [\"$LOG_TSA_TRUST\"]}
${LOG_TSA_URL:+seal_retry = \"1s\"}
EOF
  if [ -n "${HOLDERS_LDAP_URL:-}" ]; then
    # no cache here, so that e2e-access (8c) sees the directory go away at once
    cat >> "$D/pec-milter.toml" <<EOF

[holders.ldap]
url = "$HOLDERS_LDAP_URL"
base = "$HOLDERS_LDAP_BASE"
filter = "(uid=%s)"
attribute = "mail"
timeout = "5s"
cache = "0s"
EOF
  fi
  if [ -n "${METRICS_LISTEN:-}" ]; then
    printf '\n[metrics]\nlisten = "%s"\n' "$METRICS_LISTEN" >> "$D/pec-milter.toml"
  fi
  [ -n "${INDEX:-}" ] || return 0
  local trust=${TRUST-$D/demo/ca.pem}
  cat >> "$D/pec-milter.toml" <<EOF

[index]
source = "$INDEX"
ldif = "${INDEX_LDIF:-$D/igpec.ldif}"
url = "${INDEX_URL:-ldap://127.0.0.1:$RIG_LDAP_PORT}"
base = "o=postacert"
refresh = "${INDEX_REFRESH:-24h}"
timeout = "${INDEX_TIMEOUT:-10s}"
${INDEX_SIGNED_BY:+signed_by = [$(_toml_list $INDEX_SIGNED_BY)]}

[reception]
trust = [$(_toml_list $trust)]
crls = [$(_toml_list ${CRLS:-})]
ordinary_mail = "${ORDINARY:-anomaly}"
verify_at = "${VERIFY_AT:-now}"
fetch_crls = ${FETCH_CRLS:-false}
crl_cache = "$D/crl"
EOF
}

# _toml_list WORD...: "a", "b" (TOML string array items; no quoting of quotes: test paths only).
_toml_list() {
  local w sep=
  for w in "$@"; do printf '%s"%s"' "$sep" "$w"; sep=', '; done
}

# pec_milter_hup DIR: SIGHUP to the pec-milter started by pec_milter_up DIR (reloads the index).
pec_milter_hup() {
  [ -s "$1/pec-milter.pid" ] || { echo "pec_milter_hup: no pid file in $1" >&2; return 1; }
  kill -HUP "$(cat "$1/pec-milter.pid")"
}

# pec_milter_log_count DIR ERE: how many lines of DIR/pec-milter.log match ERE (0 when none).
pec_milter_log_count() { local n; n=$(grep -cE -- "$2" "$1/pec-milter.log" 2>/dev/null); echo "${n:-0}"; }

# ---------------------------------------------------------------- Maildirs

# maildir_files MAILDIR: delivered files (new/ then cur/), oldest first, one path per line.
maildir_files() {
  local m=$1
  ls -1tr "$m"/new/* "$m"/cur/* 2>/dev/null || true
}

# maildir_count MAILDIR: number of delivered files.
maildir_count() { maildir_files "$1" | grep -c . || true; }

# maildir_wait MAILDIR COUNT [SECS=20]: until MAILDIR/new has COUNT files (fails if it has more,
# or fewer after SECS).
maildir_wait() {
  local m=$1 want=$2 secs=${3:-20} n i
  for ((i = 0; i < secs * 10; i++)); do
    n=$(find "$m/new" -maxdepth 1 -type f 2>/dev/null | wc -l)
    [ "$n" -eq "$want" ] && return 0
    [ "$n" -gt "$want" ] && { echo "maildir_wait: $m/new has $n files, expected $want" >&2; return 1; }
    sleep 0.1
  done
  echo "maildir_wait: $m/new has $n files after ${secs}s, expected $want" >&2
  return 1
}

# mark MAILDIR...: remembers the current counts; new_files MAILDIR: files arrived since;
# expect_new MAILDIR N: waits for N new files, then (after the queue of the instance in $PF
# drained) exactly N.
declare -gA MARK
mark() { local m; for m in "$@"; do MARK[$m]=$(maildir_count "$m"); done; }
new_files() { maildir_files "$1" | tail -n +"$(( ${MARK[$1]:-0} + 1 ))"; }
expect_new() {
  local m=$1 n=$2
  maildir_wait "$m" $(( ${MARK[$m]:-0} + n )) 30 || return 1
  pf_queue_empty "$PF" 30 || return 1
  local have=$(( $(maildir_count "$m") - ${MARK[$m]:-0} ))
  [ "$have" -eq "$n" ] || { echo "expected $n new messages in $m, got $have" >&2; return 1; }
}

# eod_reply SWAKS_OUTPUT: the server's reply to the end of DATA (the line after " -> .");
# eod_is SWAKS_OUTPUT ERE: it matches ERE.
eod_reply() { awk 'dot && /^<(-|\*\*) / { print; exit } /^ -> \.$/ { dot = 1 }' "$1"; }
eod_is() { local r; r=$(eod_reply "$1"); echo "end-of-DATA reply: $r"; [[ $r =~ $2 ]]; }

# pf_queue_empty DIR [SECS=20]: until the instance's queue (incoming, active, deferred, hold,
# maildrop) is empty, seen twice 0.2 s apart. Fails if mail stays (e.g. deferred).
pf_queue_empty() {
  local D=$1 secs=${2:-20} i seen=0
  for ((i = 0; i < secs * 10; i++)); do
    if [ -z "$(find "$D"/spool/incoming "$D"/spool/active "$D"/spool/deferred "$D"/spool/hold "$D"/spool/maildrop -type f 2>/dev/null | head -1)" ]; then
      seen=$((seen + 1)); [ "$seen" -ge 2 ] && return 0
    else
      seen=0
    fi
    sleep 0.1
  done
  echo "pf_queue_empty: queue of $D not empty after ${secs}s:" >&2
  find "$D"/spool/incoming "$D"/spool/active "$D"/spool/deferred "$D"/spool/hold "$D"/spool/maildrop -type f >&2
  return 1
}

# hdr_block FILE: the top-level header block (unfolded lines kept as they are, CR stripped).
hdr_block() { sed -e 's/\r$//' "$1" | sed '/^$/q'; }

# hdr_get FILE NAME: values of header NAME in the top-level block (unfolded), one per line.
hdr_get() {
  hdr_block "$1" | awk -v n="$(printf '%s' "$2" | tr 'A-Z' 'a-z')" '
    /^[ \t]/ { if (cur != "") cur = cur " " substr($0, 2); next }
    { if (cur != "") print cur; cur = ""
      i = index($0, ":"); if (i && tolower(substr($0, 1, i - 1)) == n) { cur = substr($0, i + 1); sub(/^[ \t]+/, "", cur) } }
    END { if (cur != "") print cur }'
}

# hdr_is FILE NAME VALUE: the top-level header NAME is VALUE (one field). hdr_absent FILE NAME:
# there is none. Both print what they found (shown when the check fails).
hdr_is() { local v; v=$(hdr_get "$1" "$2"); echo "$2: $v"; [ "$v" = "$3" ]; }
hdr_absent() { local v; v=$(hdr_get "$1" "$2"); echo "$2: $v"; [ -z "$v" ]; }

# ---------------------------------------------------------------- PEC messages (pec-milter, openssl, Python)

# inspect_get FILE PYEXPR [TRUST=$CA]: PYEXPR evaluated on `d`, the object that
# `pec-milter inspect --json --trust TRUST FILE` prints (its first line when it prints several,
# the first item when it is a list). TRUST is a PEM file of trust anchors; $CA is the script's.
inspect_get() {
  "$(pec_milter_bin)" inspect --json --trust "${3:-$CA}" "$1" | python3 -c '
import json, sys
t = sys.stdin.read().strip()
try:
    d = json.loads(t)
except ValueError:
    d = json.loads(t.splitlines()[0])
if isinstance(d, list):
    d = d[0]
print(eval(sys.argv[1]))' "$2"
}
# kind_is FILE KIND: inspect's kind (posta-certificata, accettazione, ...) is KIND.
kind_is() { local k; k=$(inspect_get "$1" 'd["kind"]'); echo "kind: $k"; [ "$k" = "$2" ]; }
# field_is FILE PYEXPR VALUE: inspect_get FILE PYEXPR prints VALUE.
field_is() { local v; v=$(inspect_get "$1" "$2"); echo "$2 = $v"; [ "$v" = "$3" ]; }
# verify_ok FILE: `pec-milter verify --trust $CA FILE` accepts it.
verify_ok() { "$(pec_milter_bin)" verify --trust "$CA" "$1"; }
# cms_ok FILE [CAFILE=$CA]: `openssl cms -verify` accepts the S/MIME signature and its chain to CAFILE.
cms_ok() { openssl cms -verify -purpose any -CAfile "${2:-$CA}" -in "$1" -out /dev/null; }

# postacert_body_has ENVELOPE TOKEN: the message carried as postacert.eml (message/rfc822) has
# TOKEN in its body (any leaf part, transfer encoding decoded).
postacert_body_has() {
  python3 - "$1" "$2" <<'EOF'
import email, sys
from email import policy
m = email.message_from_binary_file(open(sys.argv[1], 'rb'), policy=policy.compat32)
for part in m.walk():
    if part.get_filename() == 'postacert.eml' or part.get_content_type() == 'message/rfc822':
        p = part.get_payload()
        inner = p[0] if isinstance(p, list) else email.message_from_string(p)
        for q in inner.walk():
            if not q.is_multipart() and sys.argv[2].encode() in (q.get_payload(decode=True) or b''):
                sys.exit(0)
        print("postacert.eml found, token not in its body", file=sys.stderr); sys.exit(1)
print("no postacert.eml part", file=sys.stderr); sys.exit(1)
EOF
}

# quarantine_count_is DIR N: DIR (a quarantine directory) holds N files.
quarantine_count_is() { local n; n=$(find "$1" -type f | wc -l); echo "quarantine: $n files"; [ "$n" -eq "$2" ]; }

# no_pids_in_netns: no process is left in the rig's namespace.
no_pids_in_netns() { local p; p=$(ip netns pids "$RIG_NETNS"); [ -z "$p" ] || { echo "left in $RIG_NETNS: $p"; return 1; }; }

# ---------------------------------------------------------------- SMTP clients (swaks, in the netns)

# swaks_submit USER PASS FROM TO [SWAKS ARGS...]: STARTTLS then AUTH PLAIN on the submission
# port (as shipped, it requires TLS before anything else), no DNS (--server is an IP literal,
# and it runs in the netns). swaks marks the lines it exchanges inside TLS with "~" (" ~> ",
# "<~  ", "<~* "): they are printed with the plain-text marks (" -> ", "<-  ", "<** "), so
# that every transcript reads the same with or without TLS ("=== TLS started ..." shows that
# it was on). stdout and stderr both go through that filter; swaks' exit status is returned.
swaks_submit() {
  local user=$1 pw=$2 from=$3 to=$4; shift 4
  ns_exec swaks --server "127.0.0.1:$RIG_SUBMIT_PORT" --helo client.pec.demo.test --tls \
    --auth PLAIN --auth-user "$user" --auth-password "$pw" \
    --from "$from" --to "$to" --timeout 60 "$@" 2>&1 |
    sed -u -e 's/^ ~> / -> /' -e 's/^<~\* /<** /' -e 's/^<~ /<- /'
  return "${PIPESTATUS[0]}"
}

# swaks_plain PORT FROM TO [SWAKS ARGS...]: no AUTH (e.g. the reinjection port, or
# --local-interface 127.0.0.2 to be outside mynetworks).
swaks_plain() {
  local port=$1 from=$2 to=$3; shift 3
  ns_exec swaks --server "127.0.0.1:$port" --helo client.pec.demo.test \
    --from "$from" --to "$to" --timeout 60 "$@"
}

# ---------------------------------------------------------------- OpenLDAP slapd (providers' index)

# slapd_up DIR PORT LDIF: an OpenLDAP server holding a providers' index (suffix o=postacert, schema
# integration/ldap/igpec.schema, config DIR/slapd.conf from integration/ldap/slapd.conf.template,
# mdb database in DIR/db) on ldap://127.0.0.1:PORT in the netns. LDIF is loaded with slapadd before
# the start: the o=postacert root first, parents before their providerUnit children, and no
# `version: 1` line (slapadd refuses it). Anonymous reads; writes as cn=admin,o=postacert / secret.
# Runs in the foreground (-d stats: no syslog here) in the background of this shell; log
# DIR/slapd.log, pid DIR/slapd.pid. Registers slapd_down.
slapd_up() {
  local D=$1 port=$2 ldif=$3 bin out pid
  D=$(realpath -m "$D")
  bin=$(command -v slapd || echo /usr/sbin/slapd)
  [ -x "$bin" ] || { echo "slapd_up: slapd not installed (integration/deps.sh installs slapd ldap-utils)" >&2; return 1; }
  [ -r "$ldif" ] || { echo "slapd_up: cannot read $ldif" >&2; return 1; }
  [ -n "$RIG_NETNS" ] || { echo "slapd_up: no network namespace" >&2; return 2; }
  mkdir -p "$D/db" || return 1
  sed -e "s#@DIR@#$D#g" -e "s#@SCHEMA@#$RIG_ROOT/integration/ldap/igpec.schema#g" \
    "$RIG_ROOT/integration/ldap/slapd.conf.template" > "$D/slapd.conf" || return 1
  if ! out=$("${bin%/*}/slaptest" -u -f "$D/slapd.conf" 2>&1); then
    echo "slapd_up: slaptest failed for $D/slapd.conf: $out" >&2; return 1
  fi
  if ! out=$("${bin%/*}/slapadd" -f "$D/slapd.conf" -l "$ldif" 2>&1); then
    echo "slapd_up: slapadd of $ldif failed: $out" >&2; return 1
  fi
  echo "$port" > "$D/slapd.port"
  # a simple command, not ns_exec: $! must be slapd's own pid (ip netns exec execs)
  ip netns exec "$RIG_NETNS" "$bin" -f "$D/slapd.conf" -h "ldap://127.0.0.1:$port/" -d stats \
    >>"$D/slapd.log" 2>&1 &
  pid=$!
  echo "$pid" > "$D/slapd.pid"
  rig_defer slapd_down "$D"
  _wait_listening slapd "$pid" "$port" "$D/slapd.log" && return 0
  _alive "$pid" || rm -f "$D/slapd.pid"
  return 1
}

# slapd_down DIR: stops it (TERM, then KILL after 10 s) and waits until its port is closed
# (0 only when both are true).
slapd_down() { _daemon_down "$1" slapd; }

# igpec_root_entry: the `dn: o=postacert` root entry of a providers' index LDIF (PEC-RULES §5.3,
# without LDIFLocationURL), followed by a blank line. slapadd needs it before the provider entries;
# `pec-milter index-entry` prints provider entries only. Build an index with
#   { igpec_root_entry; pec-milter index-entry ...; pec-milter index-entry ...; } > igpec.ldif
igpec_root_entry() {
  printf 'dn: o=postacert\nobjectClass: top\nobjectClass: organization\no: postacert\n'
  printf 'description: Base root for the PEC providers directory\n\n'
}

# ldap_providers PORT [ATTRS...]: anonymous ldapsearch (inside the netns) of every provider entry
# under o=postacert on ldap://127.0.0.1:PORT; LDIF on stdout (default attribute: providerName).
ldap_providers() {
  local port=$1; shift
  [ $# -gt 0 ] || set -- providerName
  ns_exec ldapsearch -x -LLL -o ldif-wrap=no -H "ldap://127.0.0.1:$port" -b o=postacert \
    '(objectClass=provider)' "$@"
}

# ---------------------------------------------------------------- Dovecot LMTP (mailbox store)

# dovecot_up DIR PORT: a Dovecot LMTP server (the delivery point's mailbox store) on
# lmtp 127.0.0.1:PORT in the netns and on the unix socket DIR/run/lmtp (mode 0666). Users come
# from a passwd-file userdb (unknown users get `550 5.1.1`): ${DOVECOT_USERS:-$RIG_USERS}, each
# `addr` or `addr=QUOTA` (e.g. `full@pec.demo.test=2K`: quota plugin, Maildir++ backend, over
# quota `552 5.2.2`). Mail of user@dom in DIR/mail/dom/user/Maildir (owned by 65534). Runs in the
# foreground (-F) in the background of this shell; config DIR/dovecot.conf, log DIR/dovecot.log,
# pid DIR/dovecot.pid. Registers dovecot_down.
dovecot_up() {
  local D=$1 port=$2 bin u addr quota pid
  D=$(realpath -m "$D")
  bin=$(command -v dovecot || echo /usr/sbin/dovecot)
  if [ ! -x "$bin" ] || [ ! -x /usr/lib/dovecot/lmtp ]; then
    echo "dovecot_up: Dovecot LMTP not installed (integration/deps.sh installs dovecot-lmtpd)" >&2; return 1
  fi
  [ -n "$RIG_NETNS" ] || { echo "dovecot_up: no network namespace" >&2; return 2; }
  mkdir -p "$D/mail" "$D/run" || return 1
  chmod 755 "$D"; chown 65534:65534 "$D/mail"   # the lmtp process delivers as uid 65534
  : > "$D/users"
  for u in ${DOVECOT_USERS:-$RIG_USERS}; do
    addr=${u%%=*} quota=
    if [ "$addr" != "$u" ]; then quota="userdb_quota_rule=*:storage=${u#*=}"; fi
    printf '%s::65534:65534::%s::%s\n' "$addr" "$D/mail/${addr#*@}/${addr%@*}" "$quota" >> "$D/users"
  done
  cat > "$D/dovecot.conf" <<EOC
base_dir = $D/run
state_dir = $D/state
log_path = $D/dovecot.log
protocols = lmtp
listen = 127.0.0.1
ssl = no
mail_location = maildir:~/Maildir
first_valid_uid = 100
mail_plugins = quota
passdb {
  driver = static
  args = nopassword=y
}
userdb {
  driver = passwd-file
  args = $D/users
}
plugin {
  quota = maildir:User quota
}
service lmtp {
  inet_listener lmtp {
    address = 127.0.0.1
    port = $port
  }
  unix_listener lmtp {
    mode = 0666
  }
}
EOC
  if ! "$bin" -c "$D/dovecot.conf" -n >/dev/null 2>"$D/dovecot.check"; then
    echo "dovecot_up: bad config $D/dovecot.conf:" >&2; cat "$D/dovecot.check" >&2; return 1
  fi
  echo "$port" > "$D/dovecot.port"
  # a simple command, not ns_exec: $! must be dovecot's own pid (ip netns exec execs)
  ip netns exec "$RIG_NETNS" "$bin" -F -c "$D/dovecot.conf" </dev/null >>"$D/dovecot.out" 2>&1 &
  pid=$!
  echo "$pid" > "$D/dovecot.pid"
  rig_defer dovecot_down "$D"
  _wait_listening dovecot "$pid" "$port" "$D/dovecot.out" "$D/dovecot.log" && return 0
  _alive "$pid" || rm -f "$D/dovecot.pid"
  return 1
}

# dovecot_down DIR: stops it (TERM, then KILL after 10 s; Dovecot takes ~1 s to stop its
# children) and waits until its port is closed (0 only when both are true).
dovecot_down() { _daemon_down "$1" dovecot; }

# ---------------------------------------------------------------- LMTP client, forged envelopes

# lmtp_send PORT FROM TO FILE: hands FILE to the LMTP server on 127.0.0.1:PORT in the rig's
# namespace, as Postfix's lmtp client would but past every milter (Python's smtplib.LMTP: LHLO,
# MAIL FROM, one RCPT TO, DATA; CRLF line ends, dot-stuffed). Prints the server's reply to the
# data; 0 when it is 2xx, 1 when it is 4xx/5xx, 2 when no session could be made.
lmtp_send() {
  ns_exec python3 - "$@" <<'PY'
import smtplib, sys
port, frm, to, path = sys.argv[1:5]
data = open(path, 'rb').read()
try:
    s = smtplib.LMTP('127.0.0.1', int(port), timeout=60)
    s.ehlo_or_helo_if_needed()
    code, msg = s.mail(frm)
    if code != 250:
        print('MAIL FROM: %d %s' % (code, msg.decode(errors='replace'))); sys.exit(1)
    code, msg = s.rcpt(to)
    if code not in (250, 251):
        print('RCPT TO: %d %s' % (code, msg.decode(errors='replace'))); sys.exit(1)
    code, msg = s.data(data)
    print('DATA: %d %s' % (code, msg.decode(errors='replace')))
    s.quit()
except (OSError, smtplib.SMTPException) as e:
    print('lmtp_send: %r' % (e,), file=sys.stderr); sys.exit(2)
sys.exit(0 if 200 <= code < 300 else 1)
PY
}

# strip_signature IN OUT: OUT is the S/MIME message IN (multipart/signed) without its signature
# part (smime.p7s): the signed content is kept byte for byte, then the closing delimiter. Fails
# when IN is not multipart/signed with two parts.
strip_signature() {
  python3 - "$1" "$2" <<'PY'
import email, sys
raw = open(sys.argv[1], 'rb').read()
m = email.message_from_bytes(raw)
if m.get_content_type() != 'multipart/signed' or not m.get_boundary():
    sys.exit('strip_signature: %s is not multipart/signed' % sys.argv[1])
b = m.get_boundary().encode()
nl = b'\r\n' if b'\r\n' in raw else b'\n'
delim = nl + b'--' + b + nl
cut = raw.rfind(delim)
if cut < 0 or cut == raw.find(delim):   # the opening delimiter only: one part
    sys.exit('strip_signature: %s has no signature part' % sys.argv[1])
open(sys.argv[2], 'wb').write(raw[:cut] + nl + b'--' + b + b'--' + nl)
PY
}

# ---- e2e-reception receipt scenario
# (issue 14, "Must show 3": a receipt about a recipient its signer does not serve changes nothing)

# receipt_as OUT IDDIR GESTORE DOMAIN RECEIPT-ARGS...: `pec-milter receipt` signed with the
# identity in IDDIR (provider.key, provider.crt) as provider DOMAIN; OUT is the message.
receipt_as() {
  local out=$1 d=$2 g=$3 dom=$4; shift 4
  "$(pec_milter_bin)" receipt --key "$d/provider.key" --cert "$d/provider.crt" --gestore "$g" \
    --domain "$dom" "$@" > "$out" && [ -s "$out" ]
}

# timers_config IN OUT FIRST LAST INTERVAL: OUT is the pec-milter configuration IN (which has no
# [timers] section) with [timers] first / last / interval (e.g. 8s 12s 1s).
timers_config() {
  grep -q '^\[timers\]' "$1" && { echo "timers_config: $1 already has [timers]" >&2; return 1; }
  { cat "$1"; printf '\n[timers]\nenabled = true\nfirst = "%s"\nlast = "%s"\ninterval = "%s"\n' "$3" "$4" "$5"; } > "$2"
  "$(pec_milter_bin)" check-config --config "$2" > /dev/null
}

# notices_of MAILDIR ID: the new files (since mark) of MAILDIR that are 12 h / 24 h notices
# (preavviso-errore-consegna) about the PEC id ID, one "WHICH RECIPIENT" line each, sorted;
# WHICH is first or last (from the notice's Message-ID, preavviso.<first|last>.<...>).
notices_of() {
  local f
  for f in $(new_files "$1"); do
    inspect_get "$f" '" ".join([d["message_id"].strip("<>").split(".")[1], d["daticert"]["consegna"] or "-"]) if d["kind"] == "preavviso-errore-consegna" and d["daticert"] and d["daticert"]["identificativo"] == "'"$2"'" else ""' 2>/dev/null
  done | grep . | sort
}
# notices_are MAILDIR ID WORDS [SECS=0]: `notices_of MAILDIR ID`, joined by spaces, is WORDS (e.g.
# "first a@x last a@x"), waiting up to SECS for it; the notices found go to stdout.
notices_are() {
  local t=$EPOCHREALTIME v
  while :; do
    v=$(notices_of "$1" "$2" | tr '\n' ' '); v=${v% }
    [ "$v" = "$3" ] && { echo "notices about $2: $v (after $(rig_elapsed "$t") s)"; return 0; }
    awk -v a="$t" -v b="$EPOCHREALTIME" -v s="${4:-0}" 'BEGIN { exit !(b - a >= s) }' && break
    sleep 0.5
  done
  echo "notices about $2: '$v', expected '$3'" >&2; return 1
}

# log_line_has DIR STRING...: one line of DIR/pec-milter.log contains every STRING (fixed strings).
log_line_has() {
  local d=$1; shift
  python3 - "$d/pec-milter.log" "$@" <<'PY'
import sys
need = sys.argv[2:]
for line in open(sys.argv[1], errors='replace'):
    if all(s in line for s in need):
        print(line.rstrip()); sys.exit(0)
print("no line of %s has all of %r" % (sys.argv[1], need), file=sys.stderr); sys.exit(1)
PY
}

# ---- e2e-two-providers virus scenario
# Helpers of e2e-two-providers.sh (10): a virus only one provider's clamd knows, a Postfix
# service taken away and given back while the rest of the instance keeps running, a transport
# held in the queue.

# clamd_up_token DIR PORT TOKEN: clamd_up DIR PORT with one more test signature,
# PEC.Test.Token.NDB (DIR/db/pectest-token.ndb, an NDB body signature for any file type)
# matching the string TOKEN: a "virus" this clamd finds and another rig's clamd does not know.
# clamd_up itself is unchanged (it writes the EICAR signatures next to this file).
clamd_up_token() {
  local D=$1 port=$2 tok=${3:-}
  [ "${#tok}" -ge 16 ] || { echo "clamd_up_token: TOKEN must be at least 16 characters" >&2; return 2; }
  mkdir -p "$D/db" || return 1
  echo "PEC.Test.Token.NDB:0:*:$(printf '%s' "$tok" | od -An -tx1 | tr -d ' \n')" > "$D/db/pectest-token.ndb" || return 1
  clamd_up "$D" "$port"
}

# _pf_reload DIR: postfix reload of the instance in DIR (in the netns), its config files
# backdated first (Postfix waits for a main.cf/master.cf younger than ~2 s to settle).
_pf_reload() {
  touch -d '-10 seconds' "$1"/etc/main.cf "$1"/etc/master.cf
  ns_exec postfix -c "$1/etc" reload >/dev/null 2>&1 || {
    ns_exec script -qec "postfix -c $1/etc reload" /dev/null >&2; return 1; }
}

# pf_service_off DIR NAME/TYPE: takes one master.cf service of the running instance in DIR away
# (postconf -M#, a copy of master.cf kept as master.cf.on), reloads, and for an inet service
# named HOST:PORT waits until nothing listens there. The other services keep running.
# pf_service_on DIR: master.cf.on back, reload, waits for every inet listener.
pf_service_off() {
  local D svc=$2 addr
  D=$(realpath -m "$1")
  [ -e "$D/etc/master.cf.on" ] || cp -p "$D/etc/master.cf" "$D/etc/master.cf.on" || return 1
  postconf -c "$D/etc" -M# "$svc" || return 1
  [ -z "$(postconf -c "$D/etc" -M "$svc" 2>/dev/null)" ] || { echo "pf_service_off: $svc still in master.cf" >&2; return 1; }
  _pf_reload "$D" || return 1
  addr=${svc%/*}
  case $svc in *:*/inet) wait_closed "${addr%:*}" "${addr##*:}" 10 ;; esac
}
pf_service_on() {
  local D l
  D=$(realpath -m "$1")
  [ -e "$D/etc/master.cf.on" ] || { echo "pf_service_on: no master.cf.on in $D/etc" >&2; return 1; }
  mv -f "$D/etc/master.cf.on" "$D/etc/master.cf" || return 1
  _pf_reload "$D" || return 1
  for l in $(_pf_listeners "$D"); do wait_port "${l%:*}" "${l##*:}" 10 || return 1; done
}

# pf_defer_transports DIR [TRANSPORT...]: main.cf defer_transports of the running instance in DIR
# (mail for those transports stays in the deferred queue until postqueue -f), then reload;
# with no TRANSPORT the setting is removed (the shipped default).
pf_defer_transports() {
  local D
  D=$(realpath -m "$1"); shift
  if [ $# -gt 0 ]; then postconf -c "$D/etc" -e "defer_transports = $*" || return 1
  else postconf -c "$D/etc" -X defer_transports || return 1; fi
  _pf_reload "$D"
}

# pf_queue_count_is DIR N [SECS=20]: until the instance's queue (incoming, active, deferred, hold,
# maildrop) holds exactly N messages, seen twice 0.2 s apart.
pf_queue_count_is() {
  local D=$1 n=$2 secs=${3:-20} i seen=0 have
  for ((i = 0; i < secs * 10; i++)); do
    have=$(find "$D"/spool/incoming "$D"/spool/active "$D"/spool/deferred "$D"/spool/hold "$D"/spool/maildrop -type f 2>/dev/null | wc -l)
    if [ "$have" -eq "$n" ]; then seen=$((seen + 1)); [ "$seen" -ge 2 ] && { echo "$have in the queue of $D"; return 0; }
    else seen=0; fi
    sleep 0.1
  done
  echo "pf_queue_count_is: $have (not $n) in the queue of $D after ${secs}s" >&2
  return 1
}

# log_since FILE LINE: FILE from line LINE + 1 on (LINE = its line count at an earlier moment).
log_since() { tail -n +"$(( $2 + 1 ))" "$1" 2>/dev/null; }

# ---- RFC 3161 TSA (openssl ts behind a small HTTP handler)
# A real Time Stamping Authority for the tests that stamp files (the legal log's daily seal):
# `openssl ts -reply` does the RFC 3161 work, a Python stdlib HTTP/1.1 server in the rig's
# namespace carries it (RFC 3161 §3.4: POST application/timestamp-query, answer
# application/timestamp-reply). Its PKI is a throwaway root and one TSA certificate (EKU
# timeStamping, critical, as RFC 3161 §2.3 requires), RSA-2048: every verifier knows it.
# Verify a reply (TimeStampResp) with
#   openssl ts -verify -in REPLY -data FILE -CAfile DIR/tsa-ca.pem -untrusted DIR/tsa.pem
# (a bare TimeStampToken: add -token_in; print one: openssl ts -reply -in REPLY -text).
: "${RIG_TSA_PORT:=3161}"   # inside the namespace, like the other fixed ports

# tsa_pki DIR: once (kept while its certificate has more than an hour to live), a TSA root
# (DIR/tsa-ca.pem, .key), the TSA certificate it issues (DIR/tsa.pem, DIR/tsa.key; 2 days), the
# chain for replies (DIR/tsa-chain.pem: the root), the serial file DIR/tsaserial and DIR/tsa.cnf,
# whose [tsa] section makes `openssl ts -reply -config DIR/tsa.cnf -queryfile Q -out R` work.
# A fresh set is proven on a sample (query, reply, `openssl ts -verify -queryfile`) before use.
tsa_pki() {
  local D out s
  D=$(realpath -m "$1")
  mkdir -p "$D" || return 1
  if [ -s "$D/tsa.cnf" ] && [ -s "$D/tsa-ca.key" ] && [ -s "$D/tsa.key" ] && [ -s "$D/tsa-chain.pem" ] &&
     openssl x509 -checkend 3600 -noout -in "$D/tsa.pem" >/dev/null 2>&1 &&
     openssl verify -CAfile "$D/tsa-ca.pem" "$D/tsa.pem" >/dev/null 2>&1; then
    return 0
  fi
  # openssl prints key-generation progress on stderr: shown only when a step fails
  out=$(openssl req -x509 -newkey rsa:2048 -nodes -keyout "$D/tsa-ca.key" -out "$D/tsa-ca.pem" -days 2 \
          -subj "/O=pec-milter tests/CN=pec-milter test TSA root" \
          -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
          -addext subjectKeyIdentifier=hash 2>&1) || { echo "tsa_pki: root CA: $out" >&2; return 1; }
  cat > "$D/tsa-ext.cnf" <<EOF
[tsa_ext]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = critical,timeStamping
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF
  out=$(openssl req -new -newkey rsa:2048 -nodes -keyout "$D/tsa.key" -out "$D/tsa.csr" \
          -subj "/O=pec-milter tests/CN=pec-milter test TSA" 2>&1) || { echo "tsa_pki: TSA key: $out" >&2; return 1; }
  out=$(openssl x509 -req -in "$D/tsa.csr" -CA "$D/tsa-ca.pem" -CAkey "$D/tsa-ca.key" -days 2 \
          -set_serial "0x$(openssl rand -hex 8)" -extfile "$D/tsa-ext.cnf" -extensions tsa_ext \
          -out "$D/tsa.pem" 2>&1) || { echo "tsa_pki: TSA certificate: $out" >&2; return 1; }
  chmod 600 "$D/tsa-ca.key" "$D/tsa.key"
  cp "$D/tsa-ca.pem" "$D/tsa-chain.pem"
  # kept across tsa_down/tsa_up: the serial numbers of one TSA never repeat
  [ -s "$D/tsaserial" ] || echo 01 > "$D/tsaserial"
  # signer_digest is not in the brief's list but OpenSSL 3.0 refuses to sign without it
  cat > "$D/tsa.cnf" <<EOF
# integration/lib.sh tsa_pki: the test TSA of $D (openssl ts -reply -config $D/tsa.cnf)
[tsa]
default_tsa = tsa_config1

[tsa_config1]
serial = $D/tsaserial
crypto_device = builtin
signer_cert = $D/tsa.pem
signer_key = $D/tsa.key
signer_digest = sha256
certs = $D/tsa-chain.pem
default_policy = 1.2.3.4.1
other_policies = 1.2.3.4.5.6, 1.2.3.4.5.7
digests = sha256, sha384, sha512
accuracy = secs:1
ordering = yes
tsa_name = yes
ess_cert_id_chain = no
ess_cert_id_alg = sha256
EOF
  s=$D/pki-sample
  mkdir -p "$s" && echo "tsa_pki sample $EPOCHREALTIME" > "$s/data" || return 1
  out=$( { openssl ts -query -data "$s/data" -sha256 -cert -out "$s/q.tsq" &&
           openssl ts -reply -config "$D/tsa.cnf" -queryfile "$s/q.tsq" -out "$s/r.tsr" &&
           openssl ts -verify -in "$s/r.tsr" -queryfile "$s/q.tsq" -CAfile "$D/tsa-ca.pem" -untrusted "$D/tsa.pem"; } 2>&1) ||
    { echo "tsa_pki: the sample reply does not verify: $out" >&2; rm -f "$D/tsa.cnf"; return 1; }
}

# tsa_up DIR PORT: the TSA of DIR (tsa_pki DIR first, if needed) on http://127.0.0.1:PORT/ in the
# netns: POST / with Content-Type application/timestamp-query -> 200 application/timestamp-reply
# (DER TimeStampResp; a query openssl refuses gets a "rejection" reply, 200 as RFC 3161 wants);
# another content type 400, another method 405, another path 404, no Content-Length 411, a body
# over 64 KiB 413, openssl failing 500. One line per request in DIR/tsa.log (time, client,
# method, path, bytes in, status, bytes out, PKIStatus or error); the server's own stderr in
# DIR/tsa.out; pid DIR/tsa.pid, port DIR/tsa.port. Registers tsa_down. Refuses (1) while the
# TSA of DIR still runs; after tsa_down it starts again on the same port (SO_REUSEADDR).
tsa_up() {
  local D port=$2 py pid
  D=$(realpath -m "$1")
  [ -n "$RIG_NETNS" ] || { echo "tsa_up: no network namespace" >&2; return 2; }
  [[ $port =~ ^[0-9]+$ ]] || { echo "tsa_up: bad port '$port'" >&2; return 2; }
  if [ -s "$D/tsa.pid" ] && _alive "$(cat "$D/tsa.pid")"; then
    echo "tsa_up: the TSA of $D already runs (pid $(cat "$D/tsa.pid"))" >&2; return 1
  fi
  tsa_pki "$D" || return 1
  cat > "$D/tsa-server.py" <<'PY'
# integration/lib.sh tsa_up: RFC 3161 over HTTP, each query answered by `openssl ts -reply`.
import http.server, os, signal, subprocess, sys, tempfile, threading, time

D, PORT = sys.argv[1], int(sys.argv[2])
CNF, LOG = os.path.join(D, 'tsa.cnf'), os.path.join(D, 'tsa.log')
MAX = 64 * 1024                    # a TimeStampReq is ~100 bytes: anything this big is not one
SIGN = threading.Lock()            # openssl ts reads and rewrites the serial file unlocked:
                                   # two at once could issue the same serial number
LOGW = threading.Lock()
PKISTATUS = ['granted', 'grantedWithMods', 'rejection', 'waiting', 'revocationWarning',
             'revocationNotification']

def der_len(b, i):                 # (length, index after it) of the DER length at b[i]
    n = b[i]
    if n < 0x80:
        return n, i + 1
    k = n & 0x7f
    return int.from_bytes(b[i + 1:i + 1 + k], 'big'), i + 1 + k

def pki_status(r):                 # TimeStampResp ::= SEQUENCE { status PKIStatusInfo ::= SEQUENCE { INTEGER ...
    try:
        assert r[0] == 0x30
        _, i = der_len(r, 1)
        assert r[i] == 0x30
        _, i = der_len(r, i + 1)
        assert r[i] == 0x02
        n, i = der_len(r, i + 1)
        v = int.from_bytes(r[i:i + n], 'big')
        return PKISTATUS[v] if v < len(PKISTATUS) else 'status-%d' % v
    except (AssertionError, IndexError):
        return 'unparsable-reply'

class TSA(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'  # keep-alive, as real TSA clients expect; every answer has a length
    server_version = 'pec-milter-test-tsa/1'

    def log_request(self, code='-', size='-'):
        pass                       # tsa.log has our own line; malformed requests still reach stderr

    def answer(self, status, body, ctype='text/plain', n_in=0, note=''):
        if isinstance(body, str):
            body = (body + '\n').encode()
        self.send_response(status)
        self.send_header('Content-Type', ctype)
        self.send_header('Content-Length', str(len(body)))
        if status == 405:
            self.send_header('Allow', 'POST')
        if status != 200:
            self.close_connection = True
            self.send_header('Connection', 'close')
        self.end_headers()
        if self.command == 'HEAD':
            body = b''
        self.wfile.write(body)
        line = '%s %s %s %s in=%d status=%d out=%d %s' % (
            time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()), self.client_address[0],
            self.command, self.path, n_in, status, len(body), note)
        with LOGW, open(LOG, 'a') as f:
            f.write(line.rstrip() + '\n')

    def body(self, required=True):
        # the whole body is read even for a refusal: unread bytes left in the socket make
        # the kernel reset the connection, and the client would lose our answer
        n = self.headers.get('Content-Length')
        if n is None and not required:
            return b'', 200
        if n is None or not n.strip().isdigit():
            return None, 411
        n = int(n)
        if n > MAX:
            return None, 413
        data = self.rfile.read(n)
        return data, (200 if len(data) == n else 400)

    def refuse(self):
        data, st = self.body(required=False)
        n_in = len(data or b'')
        if st != 200:
            return self.answer(st, 'bad request body', n_in=n_in)
        if self.path != '/':
            return self.answer(404, 'no such path: POST /', n_in=n_in)
        self.answer(405, 'POST only', n_in=n_in)

    do_GET = do_HEAD = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = refuse

    def do_POST(self):
        data, st = self.body()
        n_in = len(data or b'')
        if st != 200:
            return self.answer(st, {411: 'Content-Length required', 413: 'query too large'}.get(st, 'short body'), n_in=n_in)
        if self.path != '/':
            return self.answer(404, 'no such path: POST /', n_in=n_in)
        ctype = (self.headers.get('Content-Type') or '').split(';')[0].strip().lower()
        if ctype != 'application/timestamp-query':
            return self.answer(400, 'Content-Type must be application/timestamp-query', n_in=n_in,
                               note='content-type=%r' % ctype)
        with tempfile.TemporaryDirectory(dir=D, prefix='req.') as t:
            q, r = os.path.join(t, 'q.tsq'), os.path.join(t, 'r.tsr')
            with open(q, 'wb') as f:
                f.write(data)
            try:
                with SIGN:
                    p = subprocess.run(['openssl', 'ts', '-reply', '-config', CNF, '-queryfile', q, '-out', r],
                                       stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
                rc, err = p.returncode, p.stderr.decode(errors='replace')
            except (OSError, subprocess.TimeoutExpired) as e:
                rc, err = -1, repr(e)
            reply = open(r, 'rb').read() if rc == 0 and os.path.exists(r) else b''
        if not reply:
            last = [l for l in err.splitlines() if l.strip()][-1:] or ['no reply written']
            return self.answer(500, 'openssl ts -reply failed', n_in=n_in,
                               note='openssl exit %s: %s' % (rc, last[0]))
        self.answer(200, reply, 'application/timestamp-reply', n_in=n_in, note=pki_status(reply))

def stop(signum, frame):
    raise SystemExit(0)            # exit 0 on SIGTERM: a clean stop, no "Terminated" job report

signal.signal(signal.SIGTERM, stop)
srv = http.server.ThreadingHTTPServer(('127.0.0.1', PORT), TSA)   # allow_reuse_address: up again at once
print('tsa: pid %d listening on 127.0.0.1:%d' % (os.getpid(), PORT), file=sys.stderr, flush=True)
try:
    srv.serve_forever()
finally:
    srv.server_close()
    print('tsa: pid %d stopped' % os.getpid(), file=sys.stderr, flush=True)
PY
  echo "$port" > "$D/tsa.port"
  # the interpreter itself, not a pyenv-style shim (a script that execs it): a simple
  # command, not ns_exec, and `ip netns exec` execs, so $! is the server's own pid
  py=$(python3 -c 'import sys; print(sys.executable)') || return 1
  ip netns exec "$RIG_NETNS" "$py" "$D/tsa-server.py" "$D" "$port" </dev/null >>"$D/tsa.out" 2>&1 &
  pid=$!
  echo "$pid" > "$D/tsa.pid"
  rig_defer tsa_down "$D"
  _wait_listening tsa "$pid" "$port" "$D/tsa.out" && return 0
  _alive "$pid" || rm -f "$D/tsa.pid"
  return 1
}

# tsa_down DIR: stops the TSA of DIR (TERM, then KILL after 10 s) and waits until its port is
# closed; 0 only when both are true (nothing started, or already stopped: 0 once the port is closed).
tsa_down() {
  local pid
  pid=$(cat "$1/tsa.pid" 2>/dev/null)
  _daemon_down "$1" tsa || return 1
  # reaped when it is a child of this shell (tsa_up ran here): no zombie left behind
  if [ -n "$pid" ]; then wait "$pid" 2>/dev/null; fi
  return 0
}

# tsa_post PORT BODY OUT [CONTENT-TYPE [METHOD]]: sends the file BODY (default content type
# application/timestamp-query, method POST) to http://127.0.0.1:PORT/ in the netns (Python
# http.client: no proxy whatever the environment), the answer's body to OUT; prints
# "HTTP STATUS CONTENT-TYPE N bytes". Exit 0 for 200 application/timestamp-reply with a right
# Content-Length, 1 for any other answer, 2 when there is no answer (refused, reset, timeout).
tsa_post() {
  ns_exec python3 - "$@" <<'PY'
import http.client, sys
port, path, out = sys.argv[1:4]
ctype = sys.argv[4] if len(sys.argv) > 4 else 'application/timestamp-query'
method = sys.argv[5] if len(sys.argv) > 5 else 'POST'
body = open(path, 'rb').read()
try:
    c = http.client.HTTPConnection('127.0.0.1', int(port), timeout=60)
    c.request(method, '/', body=body, headers={'Content-Type': ctype})
    r = c.getresponse()
    data = r.read()
    c.close()
except (OSError, http.client.HTTPException) as e:
    print('tsa_post: no answer from 127.0.0.1:%s: %r' % (port, e), file=sys.stderr); sys.exit(2)
open(out, 'wb').write(data)
rt = r.getheader('Content-Type')
print('HTTP %d %s %d bytes' % (r.status, rt, len(data)))
sys.exit(0 if r.status == 200 and rt == 'application/timestamp-reply'
         and r.getheader('Content-Length') == str(len(data)) and data else 1)
PY
}

# tsa_verify REPLY FILE DIR: the RFC 3161 reply REPLY is a granted token, signed by the TSA of DIR
# (chain to DIR/tsa-ca.pem, EKU timeStamping), over the SHA-2 digest of FILE. openssl's status:
# 0 verified, 1 not.
tsa_verify() { openssl ts -verify -in "$1" -data "$2" -CAfile "$3/tsa-ca.pem" -untrusted "$3/tsa.pem"; }

# tsa_stamp_file FILE DIR PORT OUT: stamps FILE at the TSA of DIR on 127.0.0.1:PORT (the responder's
# self-test): a SHA-256 query with nonce and certReq (OUT.tsq), posted with tsa_post, the reply in
# OUT. Exit 0 when the reply answers that query (nonce, imprint: -queryfile) and tsa_verify OUT
# FILE DIR passes; 1 when the TSA answered something else (HTTP error, rejection, a token that
# does not verify); 2 when the TSA did not answer (down: `fail --code 2` checks that); 3 when no
# query could be made (FILE unreadable).
tsa_stamp_file() {
  local f=$1 D=$2 port=$3 out=$4 rc
  [ -r "$f" ] || { echo "tsa_stamp_file: cannot read $f" >&2; return 3; }
  openssl ts -query -data "$f" -sha256 -cert -out "$out.tsq" || return 3
  rm -f "$out"
  tsa_post "$port" "$out.tsq" "$out"; rc=$?
  [ "$rc" = 0 ] || return "$rc"
  openssl ts -verify -in "$out" -queryfile "$out.tsq" -CAfile "$D/tsa-ca.pem" -untrusted "$D/tsa.pem" || return 1
  tsa_verify "$out" "$f" "$D" || return 1
}
