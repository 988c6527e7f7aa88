#!/usr/bin/env bash
# integration/e2e-sendmail.sh — pec-milter behind a real Sendmail 8.17, configured with the
# shipped snippet milter-conf/sendmail/pec-milter.mc.snippet (INPUT_MAIL_FILTER on
# inet:8891@127.0.0.1 with F=T, the milter-free reinjection daemon on 127.0.0.1:10025, the
# macros, SMTP AUTH PLAIN/LOGIN trusted for relaying and offered only under STARTTLS (AuthOptions
# A p), STARTTLS with the certificate and key of /etc/mail/tls/, the LMTP mailer "peclmtp" and the
# mailertable) and Cyrus SASL configured with the shipped milter-conf/sendmail/Sendmail.conf (plus
# the test's sasldb_path). The test changes one thing in the snippet: the directory
# /etc/mail/tls/ becomes the test's SM_TLS, holding a throwaway self-signed certificate under the
# snippet's file names (see the test-only block). Sendmail is unpacked under /opt/sendmail by
# integration/deps.sh (its packages conflict with postfix). It runs in the rig's network
# namespace (only lo) and UTS namespace (hostname mx.pec.test: with an unqualified name it sleeps
# 60 s at start), its config, maps (MAIL_SETTINGS_DIR), sasldb, certificate and queue under
# /var/lib (sendmail refuses world-writable path components such as /tmp), and relays everything else to an smtp-sink on 127.0.0.2:2527 that
# keeps each message (127.0.0.1 would be "local" to sendmail, which then ignores the smart host).
# Daemons: MTA on 127.0.0.1:2526 (other providers' MTAs), MSA on 127.0.0.1:587 (M=Ea: AUTH
# required), reinject on 127.0.0.1:10025 (the snippet's). Sendmail relays for 127.0.0.1 by itself
# (pec-milter's reinjection, the no-AUTH scenarios); the clients of (4) and (5) connect from
# 127.0.0.3, for which only AUTH (the snippet's TRUST_AUTH_MECH) or relay-domains (pec.demo.test,
# as the snippet tells an admin) lets Sendmail accept.
#
# We are provider A (pec.demo.test); provider B (pec.other.test) is made with init-demo and
# listed in the providers' index (LDIF). Scenarios (1)-(4) run with an empty mailertable (the PEC
# domain's mailboxes on another host, which the smart host stands for); (5) with the mailertable
# line the snippet documents (pec.demo.test -> peclmtp:[127.0.0.1], pec-milter's delivery point).
#   (1) B's busta di trasporto for mario (no AUTH) -> relayed unchanged (B's signature still
#       verifies), and our signed presa-in-carico for B's mailReceipt, reinjected through
#       Sendmail's milter-free port 10025 and relayed too (it verifies against our CA)
#   (2) ordinary mail for mario (no AUTH) -> a busta di anomalia (X-Trasporto: errore, our
#       signature, the received message inside)
#   (3) pec-milter stopped -> Sendmail answers 4xx (F=T: never pass unchecked mail off), nothing
#       relayed; then pec-milter started again for (4) and (5)
#   (4) the access point through Sendmail's submission daemon with Cyrus SASL (sasldb):
#       without STARTTLS, EHLO offers STARTTLS but no AUTH PLAIN/LOGIN, swaks --auth PLAIN gives
#       up (28), an AUTH PLAIN sent all the same with mario's password is refused (5xx) and so is
#       his MAIL (M=a), nothing relayed; with STARTTLS (the snippet's certificate) EHLO offers
#       AUTH PLAIN and LOGIN, and every login below is made under TLS: mario logged in as himself
#       (AUTH PLAIN) -> anna: the signed busta di trasporto relayed to anna, our signed
#       accettazione reinjected through 10025 and relayed to mario; cittadino (another holder,
#       AUTH PLAIN) and anna (a login of another domain, AUTH LOGIN) sending as mario -> 553 5.7.1
#       at MAIL ({auth_authen} reaches pec-milter at MAIL), nothing relayed
#   (5) the delivery point: mailertable -> peclmtp, Sendmail restarted; B's busta di trasporto
#       for mario (no AUTH) -> presa-in-carico relayed to B; Sendmail delivers the envelope over
#       LMTP to pec-milter's delivery point, which stores it unchanged in mario's Maildir
#       (embedded writer) and sends our signed avvenuta-consegna to B's sender (reinjected,
#       relayed); Sendmail's queue empty afterwards
# Env: PEC_MILTER_BIN (default target/debug/pec-milter), KEEP=1. Needs root.
set -uo pipefail
. "$(dirname "$0")/lib.sh"

BIN=$(pec_milter_bin)
SM=/opt/sendmail
SMBIN=$SM/usr/libexec/sendmail/sendmail
MAKEMAP=$SM/usr/libexec/sendmail/makemap
rig_begin pecsm
T0=$EPOCHREALTIME
need_pec_milter
[ -x "$SMBIN" ] || die "$SMBIN not found: run integration/deps.sh (it unpacks Sendmail there)"

W=$RIG_BASE
# sendmail's own files: a root-owned 755 path chain outside /tmp
SD=/var/lib/pec-milter-test/sendmail.$$
mkdir -p "$SD/mqueue" && chmod 755 /var/lib/pec-milter-test "$SD" && chmod 700 "$SD/mqueue" || die "mkdir $SD"
rig_defer rm -rf "$SD"
SINK=$W/sink
mkdir -p "$SINK"
chown nobody "$SINK"

# Test-only values, in one place (what a site sets its own way; the shipped snippet and
# Sendmail.conf are used as they are):
SM_MTA_PORT=2526            # Sendmail's MTA daemon (other providers' MTAs; no AUTH)
SM_SUBMIT_PORT=587          # Sendmail's submission daemon (M=Ea: AUTH required)
SM_SASL=$SD/sasl            # Cyrus SASL: Sendmail.conf (the shipped one + sasldb_path) and sasldb2
SM_SASL_USERS=$RIG_SASL_USERS   # "address:password ..." (mario, cittadino, anna)
OUTSIDE=127.0.0.3           # a client address Sendmail does not relay for by itself
SINK_HOST=127.0.0.2 SINK_PORT=2527   # the smart host (smtp-sink; not 127.0.0.1, "local" to Sendmail)
LMTP_PORT=2424              # pec-milter's [delivery] listen (the snippet's A=TCP $h 2424)
SM_TLS=$SD/tls              # stands for the snippet's /etc/mail/tls/ (sendmail_cf replaces that
                            # directory, and nothing else, in the snippet's text): pec-server.crt,
                            # pec-server.key and pec-ca.crt, a throwaway self-signed certificate
                            # for mx.pec.test (sm_tls); confCACERT_PATH stays /etc/ssl/certs

# ------------------------------------------------------------------ providers and pec-milter

B=$W/b
mkdir -p "$B"
printf '[provider]\nname = "Beta PEC S.p.A."\ndomain = "pec.other.test"\ndomains = ["pec.other.test"]\n[signing]\nkey = "%s/provider.key"\ncert = "%s/provider.crt"\n' \
  "$B" "$B" > "$B/id.toml"
ok "provider B identity (init-demo)" "$BIN" init-demo --config "$B/id.toml" || exit 1
{
  igpec_root_entry
  "$BIN" index-entry --cert "$B/provider.crt" --name "Beta PEC S.p.A." --domains pec.other.test \
    --receipt ricevute@pec.other.test
} > "$W/igpec.ldif" || die "index LDIF"

D=$W/pec
INDEX=ldif INDEX_LDIF=$W/igpec.ldif TRUST="$B/ca.pem" write_config "$D" embedded || die "write_config"
# clamd is covered by the Postfix tests; here the MTA integration is what is tested
awk '/^\[/ { sec = $0 } sec == "[clamd]" && /^enabled *=/ { print "enabled = false"; next } { print }' \
  "$D/pec-milter.toml" > "$D/t" && mv "$D/t" "$D/pec-milter.toml"
# the delivery point (LMTP, embedded Maildir writer): Sendmail delivers to it in (5)
printf '\n[delivery]\nlisten = "inet:127.0.0.1:%s"\nstore = "maildir"\nmaildir = "%s/mail"\noutbox = "%s/outbox"\n\n[timers]\nenabled = false\n' \
  "$LMTP_PORT" "$D" "$D" >> "$D/pec-milter.toml"
MARIO_MD=$D/mail/pec.demo.test/mario.rossi
mkdir -p "$MARIO_MD" "$D/outbox"
CA=$D/demo/ca.pem

# ------------------------------------------------------------------ Sendmail

sendmail_cf() {
  printf '127.0.0.1 localhost mx.pec.test\n' > "$SD/hosts"
  printf 'hosts files\naliases files\n' > "$SD/service.switch"
  printf 'postmaster: root\n' > "$SD/aliases"
  # relay-domains (MAIL_SETTINGS_DIR): our PEC domain, as the snippet tells an admin
  printf 'pec.demo.test\n' > "$SD/relay-domains"
  {
    cat <<EOF
divert(-1)dnl
divert(0)dnl
include(\`$SM/usr/share/sendmail/cf/m4/cf.m4')dnl
VERSIONID(\`pec-milter e2e')dnl
OSTYPE(\`linux')dnl
define(\`MAIL_SETTINGS_DIR', \`$SD/')dnl
define(\`confDOMAIN_NAME', \`mx.pec.test')dnl
define(\`QUEUE_DIR', \`$SD/mqueue')dnl
define(\`STATUS_FILE', \`$SD/sendmail.st')dnl
define(\`ALIAS_FILE', \`$SD/aliases')dnl
define(\`confPID_FILE', \`$SD/sendmail.pid')dnl
define(\`confSERVICE_SWITCH_FILE', \`$SD/service.switch')dnl
define(\`confHOSTS_FILE', \`$SD/hosts')dnl
define(\`confHELP_FILE', \`$SM/etc/mail/helpfile')dnl
define(\`confDONT_PROBE_INTERFACES', \`True')dnl
define(\`confDEF_USER_ID', \`nobody:nogroup')dnl
define(\`SMART_HOST', \`[$SINK_HOST]')dnl
define(\`RELAY_MAILER_ARGS', \`TCP \$h $SINK_PORT')dnl
define(\`ESMTP_MAILER_ARGS', \`TCP \$h $SINK_PORT')dnl
FEATURE(\`nocanonify')dnl
FEATURE(\`accept_unresolvable_domains')dnl
FEATURE(\`no_default_msa')dnl
DAEMON_OPTIONS(\`Port=$SM_MTA_PORT, Addr=127.0.0.1, Name=MTA')dnl
DAEMON_OPTIONS(\`Port=$SM_SUBMIT_PORT, Addr=127.0.0.1, Name=MSA, M=Ea')dnl
EOF
    # the shipped snippet, its /etc/mail/tls/ replaced by $SM_TLS (the test-only block)
    sed "s|/etc/mail/tls/|$SM_TLS/|g" "$RIG_ROOT/milter-conf/sendmail/pec-milter.mc.snippet"
    printf "MAILER(\`local')dnl\nMAILER(\`smtp')dnl\n"
    # Cyrus SASL finds Sendmail.conf here (E: Sendmail puts it in its own environment)
    printf 'LOCAL_CONFIG\nESASL_CONF_PATH=%s\n' "$SM_SASL"
  } > "$SD/sendmail.mc"
  m4 "$SD/sendmail.mc" > "$SD/sendmail.cf" 2>"$SD/m4.err" || { cat "$SD/m4.err" >&2; return 1; }
  [ ! -s "$SD/m4.err" ] || { cat "$SD/m4.err" >&2; return 1; }
  # (1)-(4): no mailertable entry (the PEC domain's mailboxes elsewhere: the smart host)
  : > "$SD/mailertable"
  "$MAKEMAP" -C "$SD/sendmail.cf" hash "$SD/mailertable" < "$SD/mailertable" || return 1
  # the alias database; with the host's unqualified name sendmail would sleep 60 s first
  ip netns exec "$RIG_NETNS" unshare --uts sh -c \
    "hostname mx.pec.test; exec $SMBIN -C $SD/sendmail.cf -bi" >/dev/null
}
# sm_tls: the snippet's STARTTLS files under $SM_TLS (names as shipped): a throwaway self-signed
# certificate for mx.pec.test (P-256, 2 days, as lib.sh's pf_tls), which is also its own CA
# (pec-ca.crt); the key root-only 0600, as the snippet tells an admin (Sendmail refuses more).
sm_tls() {
  mkdir -p "$SM_TLS" && chmod 755 "$SM_TLS" || return 1
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=mx.pec.test" \
    -keyout "$SM_TLS/pec-server.key" -out "$SM_TLS/pec-server.crt" >/dev/null 2>&1 || return 1
  cp "$SM_TLS/pec-server.crt" "$SM_TLS/pec-ca.crt" &&
  chmod 600 "$SM_TLS/pec-server.key" && chmod 644 "$SM_TLS/pec-server.crt" "$SM_TLS/pec-ca.crt"
}
# sasl_setup: Cyrus SASL for Sendmail: the shipped Sendmail.conf as it is, plus the test's
# sasldb_path; the accounts of $SM_SASL_USERS (login = the address, realm = its domain) in a
# root-only sasldb2 (Sendmail refuses a group- or world-readable one).
sasl_setup() {
  local up u
  mkdir -p "$SM_SASL" && chmod 755 "$SM_SASL" || return 1
  { cat "$RIG_ROOT/milter-conf/sendmail/Sendmail.conf"; printf 'sasldb_path: %s/sasldb2\n' "$SM_SASL"; } \
    > "$SM_SASL/Sendmail.conf" || return 1
  rm -f "$SM_SASL"/sasldb2*
  for up in $SM_SASL_USERS; do
    u=${up%%:*}
    printf '%s' "${up#*:}" | saslpasswd2 -f "$SM_SASL/sasldb2" -p -c -u "${u#*@}" "${u%@*}" || return 1
  done
  chown root:root "$SM_SASL/sasldb2" && chmod 600 "$SM_SASL/sasldb2"
}
ok "sendmail.cf from the shipped snippet (m4)" sendmail_cf || exit 1
ok "the snippet's milter and reinjection daemon are in sendmail.cf" \
  grep -q '^Xpec-milter, S=inet:8891@127.0.0.1, F=T' "$SD/sendmail.cf"
ok "the snippet's {auth_authen} at MAIL, AUTH PLAIN LOGIN and LMTP mailer are in sendmail.cf" \
  sh -c 'grep -q "^O Milter.macros.envfrom=.*{auth_authen}" "$1" && grep -q "^O AuthMechanisms=PLAIN LOGIN" "$1" &&
         grep -q "^C{TrustAuthMech}PLAIN LOGIN" "$1" && grep -q "^Kmailertable hash $2/mailertable" "$1" &&
         grep -qE "^Mpeclmtp,[[:space:]]+P=\[IPC\], F=[^,]*z" "$1" && grep -q "A=TCP \$h 2424" "$1"' _ "$SD/sendmail.cf" "$SD"
ok "the snippet's STARTTLS files and AuthOptions A p are in sendmail.cf (files under the test's SM_TLS)" \
  sh -c 'grep -qx "O CACertPath=/etc/ssl/certs" "$1" && grep -qx "O CACertFile=$2/pec-ca.crt" "$1" &&
         grep -qx "O ServerCertFile=$2/pec-server.crt" "$1" && grep -qx "O ServerKeyFile=$2/pec-server.key" "$1" &&
         grep -qx "O AuthOptions=A p" "$1"' _ "$SD/sendmail.cf" "$SM_TLS"
# the snippet's SMTP_MAILER_LL: every SMTP mailer carries lines of 998 characters (Sendmail's
# default 990 would split the lines of 991-998 characters the access point accepts, and the
# envelope's signature with them); the relay mailer keeps its own larger limit
ok "the snippet's line length: L=998 on the smtp, esmtp, smtp8 and dsmtp mailers, relay >= 998" \
  awk '/^M[a-z0-9]+,/ { m = $1 } m != "" && match($0, /L=[0-9]+/) { l[m] = substr($0, RSTART + 2, RLENGTH - 2) + 0 }
       /^[^\t]/ && !/^M/ { m = "" }
       END { ok = l["Msmtp,"] == 998 && l["Mesmtp,"] == 998 && l["Msmtp8,"] == 998 && l["Mdsmtp,"] == 998 && l["Mrelay,"] >= 998
             if (!ok) for (k in l) print k, l[k]; exit !ok }' "$SD/sendmail.cf"
ok "a throwaway self-signed certificate for mx.pec.test as the snippet's pec-server.crt/.key, pec-ca.crt" sm_tls || exit 1
ok "Cyrus SASL for Sendmail: the shipped Sendmail.conf, sasldb with mario, cittadino, anna" sasl_setup || exit 1

sendmail_up() {
  ip netns exec "$RIG_NETNS" unshare --uts sh -c \
    "hostname mx.pec.test; exec $SMBIN -C $SD/sendmail.cf -bd -q10s" >"$SD/start.log" 2>&1 || return 1
  wait_port 127.0.0.1 "$SM_MTA_PORT" 15 && wait_port 127.0.0.1 10025 15 && wait_port 127.0.0.1 "$SM_SUBMIT_PORT" 15
}
# sendmail_down: stops the daemon (the pid on the first line of its pid file; TERM, KILL after
# 10 s); 0 only when it is gone and nothing listens on its ports any more.
sendmail_down() {
  local rc=0
  _kill_pidfile "$SD/sendmail.pid" 10 || rc=1
  wait_closed 127.0.0.1 "$SM_MTA_PORT" 5 || rc=1
  wait_closed 127.0.0.1 10025 5 || rc=1
  wait_closed 127.0.0.1 "$SM_SUBMIT_PORT" 5 || rc=1
  return "$rc"
}
# a simple command (not a function) in the background: $! is smtp-sink itself
ip netns exec "$RIG_NETNS" smtp-sink -u nobody -d "$SINK/%H%M%S." "$SINK_HOST:$SINK_PORT" 64 >"$W/sink.out" 2>&1 &
echo $! > "$W/sink.pid"; rig_defer _kill_pidfile "$W/sink.pid" 5
ok "smtp-sink (smart host, keeps each message) on $SINK_HOST:$SINK_PORT" wait_port "$SINK_HOST" "$SINK_PORT" 10 || exit 1
ok "pec-milter (reception role, index from LDIF) on inet:127.0.0.1:8891" pec_milter_up "$D" "$D/pec-milter.toml" || exit 1
ok "Sendmail 8.17 daemon on 127.0.0.1:$SM_MTA_PORT (MTA) and :10025 (reinjection, no milter)" sendmail_up || exit 1
rig_defer sendmail_down

# ------------------------------------------------------------------ helpers

sink_count() { find "$SINK" -type f | wc -l; }
sink_bytes() { find "$SINK" -type f -printf '%s\n' | awk '{ n += $1 } END { print n + 0 }'; }
# wait_sink N [SECS=30]: until the sink holds N messages, written to their end (smtp-sink
# writes a file as the data arrives: its size must hold still for 0.5 s).
wait_sink() {
  local n=$1 secs=${2:-30} i last=-1 same=0 now
  for ((i = 0; i < secs * 10; i++)); do
    if [ "$(sink_count)" -ge "$n" ]; then
      now=$(sink_bytes)
      if [ "$now" = "$last" ]; then same=$((same + 1)); else same=0; last=$now; fi
      [ "$same" -ge 5 ] && return 0
    fi
    sleep 0.1
  done
  echo "the sink holds $(sink_count) messages ($(sink_bytes) bytes), not $n complete, after ${secs}s" >&2; return 1
}
# sink_with HEADER-REGEX: the newest sink file whose header block matches.
sink_with() {
  local f
  for f in $(ls -t "$SINK"/* 2>/dev/null); do
    awk '/^\r?$/ { exit } { print }' "$f" | grep -qiE "$1" && { echo "$f"; return 0; }
  done
  return 1
}
# as_message FILE OUT: the message as relayed, without smtp-sink's X-* lines and the Received:
# fields Sendmail added in front (the signed part is below them).
as_message() {
  awk 'st == 0 && /^X-(Client-Addr|Client-Proto|Helo-Args|Mail-Args|Rcpt-Args):/ { next }
       st == 0 && /^Received:/ { skip = 1; next } skip && /^[ \t]/ { next } { skip = 0; st = 1; print }' "$1" > "$2"
}
# b_envelope TAG OUT: B's genuine busta di trasporto from luigi.verdi to mario, PEC id
# opec.TAG@pec.other.test, the original's Message-ID <TAG@client.pec.other.test>.
b_envelope() {
  local tag=$1 out=$2
  printf 'From: <luigi.verdi@pec.other.test>\r\nTo: <%s>\r\nSubject: via Sendmail\r\nMessage-ID: <%s@client.pec.other.test>\r\nDate: Mon, 01 Dec 2025 10:00:00 +0100\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nDa B a mario, attraverso Sendmail.\r\n' \
    "$MARIO" "$tag" > "$out.orig" &&
  "$BIN" envelope --key "$B/provider.key" --cert "$B/provider.crt" --gestore 'Beta PEC S.p.A.' \
    --domain pec.other.test --certified pec.demo.test --id "opec.$tag@pec.other.test" "$out.orig" > "$out"
}
# sm_swaks [SWAKS ARGS...]: swaks to Sendmail's submission daemon from $OUTSIDE (only AUTH lets
# Sendmail relay for it), with its output as it is (under TLS "<~ " and " ~> "); swaks' status.
sm_swaks() {
  ns_exec swaks --server "127.0.0.1:$SM_SUBMIT_PORT" --local-interface "$OUTSIDE" \
    --helo client.pec.demo.test --timeout 60 "$@"
}
# sm_submit MECH LOGIN PASSWORD FROM TO [SWAKS ARGS...]: STARTTLS, then SMTP AUTH MECH and the
# message, on Sendmail's submission daemon (sm_swaks); the TLS lines shown as the others (as
# lib.sh's swaks_submit, for eod_is); swaks' exit status.
sm_submit() {
  local mech=$1 user=$2 pw=$3 from=$4 to=$5; shift 5
  sm_swaks --tls --auth "$mech" --auth-user "$user" --auth-password "$pw" --from "$from" --to "$to" "$@" 2>&1 |
    sed -u -e 's/^ ~> / -> /' -e 's/^<~\* /<** /' -e 's/^<~ /<- /'
  return "${PIPESTATUS[0]}"
}
# tls_then_235 SWAKS_OUTPUT: TLS was started before the server accepted the AUTH (235).
tls_then_235() { awk '/^=== TLS started/ { tls = 1 } /^<- +235 / { exit !tls } END { if (!tls) exit 1 }' "$1"; }
# sm_clear_auth LOGIN PASSWORD FROM TO: without STARTTLS, AUTH PLAIN sent all the same (swaks
# sends none the server does not offer), then MAIL and RCPT, from $OUTSIDE; one line a reply,
# "VERB CODE TEXT".
sm_clear_auth() {
  ns_exec python3 - "$OUTSIDE" "$SM_SUBMIT_PORT" "$@" <<'EOF'
import base64, smtplib, sys
src, port, user, pw, frm, to = sys.argv[1:]
s = smtplib.SMTP("127.0.0.1", int(port), local_hostname="client.pec.demo.test",
                 source_address=(src, 0), timeout=60)
s.ehlo()
tok = base64.b64encode(b"\0" + user.encode() + b"\0" + pw.encode()).decode()
for verb, arg in (("AUTH", "PLAIN " + tok), ("MAIL", "FROM:<%s>" % frm), ("RCPT", "TO:<%s>" % to)):
    code, msg = s.docmd(verb, arg)
    print(verb, code, msg.decode().replace("\n", " "))
s.quit()
EOF
}
# sm_received_esmtpsa FILE: Sendmail's Received: field in FILE (a message as relayed) says it
# took the message from $OUTSIDE, authenticated, under TLS ("with ESMTPSA", "version=TLS...").
sm_received_esmtpsa() {
  awk '/^\r?$/ { exit } { sub(/\r$/, "") } /^[ \t]/ { printf " %s", $0; next } NR > 1 { print "" } { printf "%s", $0 }
       END { print "" }' "$1" |
    grep -E "^Received: from [^ ]+ \(\[$OUTSIDE\]\)[[:space:]]+\(authenticated .* with ESMTPSA id .*\(version=TLSv1\.[23] "
}
# sm_queue_empty [SECS=20]: until Sendmail's queue directory holds no file (seen twice).
sm_queue_empty() {
  local secs=${1:-20} i seen=0
  for ((i = 0; i < secs * 10; i++)); do
    if [ -z "$(find "$SD/mqueue" -type f | head -1)" ]; then
      seen=$((seen + 1)); [ "$seen" -ge 2 ] && return 0
    else
      seen=0
    fi
    sleep 0.1
  done
  echo "Sendmail's queue not empty after ${secs}s:" >&2; find "$SD/mqueue" -type f >&2; return 1
}

# ------------------------------------------------------------------ (1) B's envelope

b_envelope "sm.$$" "$W/busta.eml" || die "pec-milter envelope"
ok "(1) B's envelope: Sendmail answers 250" swaks_plain "$SM_MTA_PORT" posta-certificata@pec.other.test "$MARIO" \
  --data "$W/busta.eml"
ok "(1) the envelope and one receipt reach the smart host" wait_sink 2
ENV=$(sink_with '^X-Trasporto: posta-certificata') || fail "(1) envelope relayed"
RIC=$(sink_with '^X-Ricevuta: presa-in-carico') || fail "(1) presa-in-carico relayed"
if [ -n "${ENV:-}" ]; then
  as_message "$ENV" "$W/env.out.eml"
  ok "(1) the envelope relayed unchanged: B's signature verifies" "$BIN" verify --trust "$B/ca.pem" "$W/env.out.eml"
  ok "(1) ... to mario" grep -q "Rcpt-Args: <$MARIO>" "$ENV"
fi
if [ -n "${RIC:-}" ]; then
  as_message "$RIC" "$W/ric.eml"
  ok "(1) presa-in-carico signed by us" "$BIN" verify --trust "$CA" "$W/ric.eml"
  ok "(1) ... to B's mailReceipt" grep -q "Rcpt-Args: <ricevute@pec.other.test>" "$RIC"
  ok "(1) ... injected by pec-milter through the reinjection daemon" \
    grep -q 'receipt injected.*kind=presa-in-carico' "$D/pec-milter.log"
fi

# ------------------------------------------------------------------ (2) ordinary mail

before=$(sink_count)
ok "(2) ordinary mail: Sendmail answers 250" swaks_plain "$SM_MTA_PORT" someone@other.example "$MARIO" \
  --header "Subject: posta ordinaria via Sendmail" --body "Non sono PEC."
ok "(2) one message reaches the smart host" wait_sink $((before + 1))
ANOM=$(sink_with '^X-Trasporto: errore') || fail "(2) busta di anomalia relayed"
if [ -n "${ANOM:-}" ]; then
  as_message "$ANOM" "$W/anom.eml"
  ok "(2) busta di anomalia signed by us" "$BIN" verify --trust "$CA" "$W/anom.eml"
  ok "(2) ... subject ANOMALIA MESSAGGIO" grep -q '^Subject: ANOMALIA MESSAGGIO: posta ordinaria via Sendmail' "$W/anom.eml"
  ok "(2) ... the received message inside" grep -q 'Non sono PEC.' "$W/anom.eml"
fi

# ------------------------------------------------------------------ (3) milter down

ok "(3) pec-milter stopped" pec_milter_down "$D"
before=$(sink_count)
# F=T with the milter unreachable: Sendmail answers 451 4.3.2 at MAIL FROM (swaks exit 23)
fail "(3) Sendmail does not accept the message (F=T)" --code 23 swaks_plain "$SM_MTA_PORT" someone@other.example "$MARIO" \
  --body "Milter assente."
out=$(swaks_plain "$SM_MTA_PORT" someone@other.example "$MARIO" --body "Milter assente." 2>&1)
ok "(3) ... with a 4xx" grep -qE '<\*\* 4[0-9][0-9]|<- 4[0-9][0-9]' <<< "$out"
sleep 1
ok "(3) nothing relayed" test "$(sink_count)" -eq "$before"
ok "(3) pec-milter started again (access, reception and delivery point)" pec_milter_up "$D" "$D/pec-milter.toml" || exit 1

# ------------------------------------------------------------------ (4) the access point (Cyrus SASL)

# without STARTTLS: no PLAIN or LOGIN (AuthOptions p), so nothing is taken from a holder
before=$(sink_count)
ehlo=$(sm_swaks --quit-after EHLO 2>&1)
ok "(4) without STARTTLS the submission daemon offers STARTTLS" grep -qE '^<- +250[- ]STARTTLS$' <<< "$ehlo"
fail "(4) ... but not AUTH PLAIN or LOGIN (the snippet's AuthOptions p)" \
  grep -qE '^<- +250[- ]AUTH( [A-Z0-9-]+)* (PLAIN|LOGIN)( |$)' <<< "$ehlo"
sm_swaks --auth PLAIN --auth-user "$MARIO" --auth-password "$MARIO_PW" --from "$MARIO" --to "$ANNA" \
  --body "in chiaro" > "$W/4-clear.txt" 2>&1; rc=$?
ok "(4) mario with swaks --auth PLAIN, no --tls: swaks gives up, AUTH not offered (exit 28)" \
  sh -c '[ "$1" = 28 ] && grep -q "Host did not advertise authentication" "$2"' _ "$rc" "$W/4-clear.txt"
sm_clear_auth "$MARIO" "$MARIO_PW" "$MARIO" "$ANNA" > "$W/4-clear-raw.txt" 2>&1
ok "(4) AUTH PLAIN sent without STARTTLS, mario's right password: refused (5xx)" \
  grep -qE '^AUTH 5[0-9][0-9] ' "$W/4-clear-raw.txt"
ok "(4) ... and his MAIL refused (the submission daemon's M=a: authentication required)" \
  grep -qE '^MAIL 5[0-9][0-9] ' "$W/4-clear-raw.txt"
sleep 1
ok "(4) nothing relayed without STARTTLS" test "$(sink_count)" -eq "$before"

# with STARTTLS: the snippet's certificate, then AUTH PLAIN and LOGIN
sm_swaks --tls --quit-after TLS --tls-get-peer-cert "$W/peer.pem" > "$W/4-tls.txt" 2>&1
ok "(4) STARTTLS: Sendmail presents the snippet's pec-server.crt (the test's certificate)" \
  sh -c '[ -s "$1" ] && [ "$(openssl x509 -noout -fingerprint -sha256 -in "$1")" = "$(openssl x509 -noout -fingerprint -sha256 -in "$2")" ]' \
  _ "$W/peer.pem" "$SM_TLS/pec-server.crt"
ehlo=$(sm_swaks --tls --quit-after EHLO 2>&1)
ok "(4) after STARTTLS the submission daemon offers AUTH PLAIN and LOGIN (Cyrus SASL)" \
  grep -qE '^<~ +250-AUTH( [A-Z0-9-]+)*( LOGIN( [A-Z0-9-]+)* PLAIN| PLAIN( [A-Z0-9-]+)* LOGIN)' <<< "$ehlo"
TOK=sm4-$$-$RANDOM
before=$(sink_count)
sm_submit PLAIN "$MARIO" "$MARIO_PW" "$MARIO" "$ANNA" --header "Subject: accesso via Sendmail $TOK" \
  --body "Da mario ad anna, attraverso Sendmail: $TOK" > "$W/4-mario.txt" 2>&1
ok "(4) mario: STARTTLS, then AUTH PLAIN accepted (235)" tls_then_235 "$W/4-mario.txt"
ok "(4) mario logged in as himself (AUTH PLAIN) -> anna: Sendmail answers 250" eod_is "$W/4-mario.txt" '^<- +250 '
ok "(4) the envelope and the accettazione reach the smart host" wait_sink $((before + 2))
ENV4=$(sink_with "^Subject: POSTA CERTIFICATA: accesso via Sendmail $TOK") || fail "(4) envelope relayed"
ACC=$(sink_with '^X-Ricevuta: accettazione') || fail "(4) accettazione relayed"
if [ -n "${ENV4:-}" ]; then
  as_message "$ENV4" "$W/env4.eml"
  ok "(4) busta di trasporto signed by us" "$BIN" verify --trust "$CA" "$W/env4.eml"
  ok "(4) ... openssl cms -verify accepts it" cms_ok "$W/env4.eml"
  ok "(4) ... inspect: posta-certificata from mario" field_is "$W/env4.eml" \
    'd["kind"] + " " + d["daticert"]["mittente"]' "posta-certificata $MARIO"
  ok "(4) ... postacert.eml carries the original" postacert_body_has "$W/env4.eml" "$TOK"
  ok "(4) ... to anna" grep -q "Rcpt-Args: <$ANNA>" "$ENV4"
  ok "(4) ... Sendmail's Received: field: taken from $OUTSIDE authenticated and under TLS (ESMTPSA)" \
    sm_received_esmtpsa "$ENV4"
fi
if [ -n "${ACC:-}" ]; then
  as_message "$ACC" "$W/acc.eml"
  ok "(4) accettazione signed by us" "$BIN" verify --trust "$CA" "$W/acc.eml"
  ok "(4) ... for this envelope, listing anna" field_is "$W/acc.eml" \
    'd["kind"] + " " + " ".join(x["address"] for x in d["daticert"]["destinatari"])' "accettazione $ANNA"
  [ -n "${ENV4:-}" ] && ok "(4) ... its identificativo is the envelope's" field_is "$W/acc.eml" \
    'd["daticert"]["identificativo"]' "$(inspect_get "$W/env4.eml" 'd["daticert"]["identificativo"]')"
  ok "(4) ... to mario" grep -q "Rcpt-Args: <$MARIO>" "$ACC"
  ok "(4) ... injected by pec-milter through the reinjection daemon" \
    grep -q 'receipt injected.*kind=accettazione' "$D/pec-milter.log"
fi
# a login sends only as itself: another holder of ours, and a login of another domain
before=$(sink_count)
for who in cittadino anna; do
  case $who in
    cittadino) login=$CITTADINO pw=$CITTADINO_PW mech=PLAIN ;;
    anna) login=$ANNA pw=$ANNA_PW mech=LOGIN ;;
  esac
  sm_submit "$mech" "$login" "$pw" "$MARIO" "$ANNA" --header "Subject: non mio $TOK" \
    --body "not mine $TOK" > "$W/4-$who.txt" 2>&1
  ok "(4) $who: STARTTLS, then AUTH $mech accepted (235)" tls_then_235 "$W/4-$who.txt"
  # Sendmail puts the address in front of the milter's text: "553 5.7.1 <addr>... PEC: ..."
  ok "(4) $who logged in (AUTH $mech) sending as mario: 553 5.7.1 at MAIL" \
    grep -qE "^<\*\* +553 5\.7\.1 (<$MARIO>\.\.\. )?PEC: the login $login may not send as $MARIO\$" "$W/4-$who.txt"
  ok "(4) $who: pec-milter logged login and sender" \
    grep -qE "login=$login sender=$MARIO.*does not own the sender address|does not own the sender address.*login=$login sender=$MARIO" "$D/pec-milter.log"
done
sleep 1
ok "(4) nothing relayed for them" test "$(sink_count)" -eq "$before"

# ------------------------------------------------------------------ (5) the delivery point (LMTP)

# mailertable_lmtp: the mailertable line the snippet documents, then Sendmail restarted on it.
mailertable_lmtp() {
  printf 'pec.demo.test\tpeclmtp:[127.0.0.1]\n' > "$SD/mailertable" &&
  "$MAKEMAP" -C "$SD/sendmail.cf" hash "$SD/mailertable" < "$SD/mailertable" && sendmail_down && sendmail_up
}
ok "(5) mailertable: pec.demo.test -> peclmtp:[127.0.0.1] (makemap), Sendmail restarted" mailertable_lmtp || exit 1
out=$(printf '/parse %s\n' "$MARIO" | ip netns exec "$RIG_NETNS" unshare --uts sh -c \
  "hostname mx.pec.test; exec $SMBIN -C $SD/sendmail.cf -bt" 2>&1)
ok "(5) sendmail -bt: mario resolves to mailer peclmtp, host [127.0.0.1]" \
  grep -qE '^mailer peclmtp, host \[127\.0\.0\.1\], user '"$MARIO"'$' <<< "$out"
ID5=opec.sm5.$$@pec.other.test
b_envelope "sm5.$$" "$W/busta5.eml" || die "pec-milter envelope"
before=$(sink_count)
ok "(5) B's envelope from outside: Sendmail answers 250" swaks_plain "$SM_MTA_PORT" posta-certificata@pec.other.test \
  "$MARIO" --local-interface "$OUTSIDE" --data "$W/busta5.eml"
ok "(5) Sendmail delivers it over LMTP into mario's Maildir (pec-milter's delivery point)" maildir_wait "$MARIO_MD" 1 30
ok "(5) ... the delivery point answered Sendmail 250 for mario (the Maildir writer's reply)" \
  grep -qE "delivery recipient=$MARIO outcome=250 " "$D/pec-milter.log"
STORED=$(maildir_files "$MARIO_MD" | head -1)
if [ -n "$STORED" ]; then
  ok "(5) ... stored unchanged: B's signature verifies" "$BIN" verify --trust "$B/ca.pem" "$STORED"
  ok "(5) ... inspect: B's posta-certificata $ID5" field_is "$STORED" \
    'd["kind"] + " " + d["daticert"]["identificativo"]' "posta-certificata $ID5"
fi
ok "(5) the presa-in-carico and the avvenuta-consegna reach the smart host" wait_sink $((before + 2))
PIC=$(sink_with '^X-Ricevuta: presa-in-carico') || fail "(5) presa-in-carico relayed"
AVV=$(sink_with '^X-Ricevuta: avvenuta-consegna') || fail "(5) avvenuta-consegna relayed"
if [ -n "${PIC:-}" ]; then
  as_message "$PIC" "$W/pic5.eml"
  ok "(5) presa-in-carico signed by us, for $ID5" field_is "$W/pic5.eml" \
    'd["signature"]["status"] + " " + d["kind"] + " " + d["daticert"]["identificativo"]' "valid presa-in-carico $ID5"
  ok "(5) ... to B's mailReceipt" grep -q "Rcpt-Args: <ricevute@pec.other.test>" "$PIC"
fi
if [ -n "${AVV:-}" ]; then
  as_message "$AVV" "$W/avv5.eml"
  ok "(5) avvenuta-consegna signed by us" "$BIN" verify --trust "$CA" "$W/avv5.eml"
  ok "(5) ... openssl cms -verify accepts it" cms_ok "$W/avv5.eml"
  ok "(5) ... for $ID5, consegna = mario" field_is "$W/avv5.eml" \
    'd["kind"] + " " + d["daticert"]["identificativo"] + " " + d["daticert"]["consegna"]' "avvenuta-consegna $ID5 $MARIO"
  ok "(5) ... to B's sender" grep -q "Rcpt-Args: <luigi.verdi@pec.other.test>" "$AVV"
  ok "(5) ... injected by pec-milter's delivery point through the reinjection daemon" \
    grep -qE "receipt injected.*pec_id=$ID5.*kind=avvenuta-consegna|receipt injected.*kind=avvenuta-consegna.*pec_id=$ID5" "$D/pec-milter.log"
fi
ok "(5) mario's Maildir holds only the envelope" test "$(maildir_count "$MARIO_MD")" -eq 1
ok "(5) Sendmail's queue is empty (nothing deferred)" sm_queue_empty 20

fail "no panic in pec-milter's log" grep -q 'panicked' "$D/pec-milter.log"
_log "e2e-sendmail took $(rig_elapsed "$T0") s"
rig_finish
