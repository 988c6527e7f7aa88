#!/usr/bin/env bash
# integration/e2e-sendmail.sh — pec-milter behind a real Sendmail 8.17, configured with the
# shipped snippet milter-conf/sendmail/pec-milter.mc.snippet (INPUT_MAIL_FILTER on
# inet:8891@127.0.0.1 with F=T, the milter-free reinjection daemon on 127.0.0.1:10025, the
# macros). Sendmail is unpacked under /opt/sendmail by integration/deps.sh (its packages
# conflict with postfix). It runs in the rig's network namespace (only lo) and UTS namespace
# (hostname mx.pec.test: with an unqualified name it sleeps 60 s at start), its config and
# queue under /var/lib (sendmail refuses world-writable path components such as /tmp), and
# relays everything to an smtp-sink on 127.0.0.2:2527 that keeps each message (127.0.0.1
# would be "local" to sendmail, which then ignores the smart host).
#
# We are provider A (pec.demo.test); provider B (pec.other.test) is made with init-demo and
# listed in the providers' index (LDIF). Scenarios, with no AUTH (another provider's MTA):
#   (1) B's busta di trasporto for mario -> relayed unchanged (B's signature still verifies),
#       and our signed presa-in-carico for B's mailReceipt, reinjected through Sendmail's
#       milter-free port 10025 and relayed too (it verifies against our CA)
#   (2) ordinary mail for mario -> a busta di anomalia (X-Trasporto: errore, our signature, the
#       received message inside)
#   (3) pec-milter stopped -> Sendmail answers 4xx (F=T: never pass unchecked mail off), nothing
#       relayed
# Not covered here: the access point (it needs an SMTP AUTH holder, i.e. Cyrus SASL in
# Sendmail; the Postfix end-to-end tests cover it).
# Env: PEC_MILTER_BIN (default target/debug/pec-milter), KEEP=1. Needs root.
set -uo pipefail
. "$(dirname "$0")/lib.sh"

BIN=$(pec_milter_bin)
SM=/opt/sendmail
SMBIN=$SM/usr/libexec/sendmail/sendmail
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
printf '\n[delivery]\nlisten = ""\noutbox = "%s/outbox"\n\n[timers]\nenabled = false\n' "$D" >> "$D/pec-milter.toml"
CA=$D/demo/ca.pem

# ------------------------------------------------------------------ Sendmail

sendmail_cf() {
  printf '127.0.0.1 localhost mx.pec.test\n' > "$SD/hosts"
  printf 'hosts files\naliases files\n' > "$SD/service.switch"
  printf 'postmaster: root\n' > "$SD/aliases"
  {
    cat <<EOF
divert(-1)dnl
divert(0)dnl
include(\`$SM/usr/share/sendmail/cf/m4/cf.m4')dnl
VERSIONID(\`pec-milter e2e')dnl
OSTYPE(\`linux')dnl
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
define(\`SMART_HOST', \`[127.0.0.2]')dnl
define(\`RELAY_MAILER_ARGS', \`TCP \$h 2527')dnl
define(\`ESMTP_MAILER_ARGS', \`TCP \$h 2527')dnl
FEATURE(\`nocanonify')dnl
FEATURE(\`accept_unresolvable_domains')dnl
FEATURE(\`promiscuous_relay')dnl
FEATURE(\`no_default_msa')dnl
DAEMON_OPTIONS(\`Port=2526, Addr=127.0.0.1, Name=MTA')dnl
EOF
    # the shipped snippet, unchanged
    cat "$RIG_ROOT/milter-conf/sendmail/pec-milter.mc.snippet"
    printf "MAILER(\`local')dnl\nMAILER(\`smtp')dnl\n"
  } > "$SD/sendmail.mc"
  m4 "$SD/sendmail.mc" > "$SD/sendmail.cf" 2>"$SD/m4.err" || { cat "$SD/m4.err" >&2; return 1; }
  # the alias database; with the host's unqualified name sendmail would sleep 60 s first
  ip netns exec "$RIG_NETNS" unshare --uts sh -c \
    "hostname mx.pec.test; exec $SMBIN -C $SD/sendmail.cf -bi" >/dev/null
}
ok "sendmail.cf from the shipped snippet (m4)" sendmail_cf || exit 1
ok "the snippet's milter and reinjection daemon are in sendmail.cf" \
  grep -q '^Xpec-milter, S=inet:8891@127.0.0.1, F=T' "$SD/sendmail.cf"

sendmail_up() {
  ip netns exec "$RIG_NETNS" unshare --uts sh -c \
    "hostname mx.pec.test; exec $SMBIN -C $SD/sendmail.cf -bd -q10s" >"$SD/start.log" 2>&1 || return 1
  wait_port 127.0.0.1 2526 15 && wait_port 127.0.0.1 10025 15
}
# sendmail_down: stops the daemon (the pid on the first line of its pid file; TERM, KILL after
# 10 s); 0 only when it is gone and nothing listens on 2526 and 10025 any more.
sendmail_down() {
  local rc=0
  _kill_pidfile "$SD/sendmail.pid" 10 || rc=1
  wait_closed 127.0.0.1 2526 5 || rc=1
  wait_closed 127.0.0.1 10025 5 || rc=1
  return "$rc"
}
# a simple command (not a function) in the background: $! is smtp-sink itself
ip netns exec "$RIG_NETNS" smtp-sink -u nobody -d "$SINK/%H%M%S." 127.0.0.2:2527 64 >"$W/sink.out" 2>&1 &
echo $! > "$W/sink.pid"; rig_defer _kill_pidfile "$W/sink.pid" 5
ok "smtp-sink (smart host, keeps each message) on 127.0.0.2:2527" wait_port 127.0.0.2 2527 10 || exit 1
ok "pec-milter (reception role, index from LDIF) on inet:127.0.0.1:8891" pec_milter_up "$D" "$D/pec-milter.toml" || exit 1
ok "Sendmail 8.17 daemon on 127.0.0.1:2526 (MTA) and :10025 (reinjection, no milter)" sendmail_up || exit 1
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

# ------------------------------------------------------------------ (1) B's envelope

ORIG=$W/orig.eml
printf 'From: <luigi.verdi@pec.other.test>\r\nTo: <%s>\r\nSubject: via Sendmail\r\nMessage-ID: <sm.%s@client.pec.other.test>\r\nDate: Mon, 01 Dec 2025 10:00:00 +0100\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nDa B a mario, attraverso Sendmail.\r\n' \
  "$MARIO" "$$" > "$ORIG"
"$BIN" envelope --key "$B/provider.key" --cert "$B/provider.crt" --gestore 'Beta PEC S.p.A.' \
  --domain pec.other.test --certified pec.demo.test --id "opec.sm.$$@pec.other.test" "$ORIG" > "$W/busta.eml" ||
  die "pec-milter envelope"
ok "(1) B's envelope: Sendmail answers 250" swaks_plain 2526 posta-certificata@pec.other.test "$MARIO" \
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
ok "(2) ordinary mail: Sendmail answers 250" swaks_plain 2526 someone@other.example "$MARIO" \
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
fail "(3) Sendmail does not accept the message (F=T)" --code 23 swaks_plain 2526 someone@other.example "$MARIO" \
  --body "Milter assente."
out=$(swaks_plain 2526 someone@other.example "$MARIO" --body "Milter assente." 2>&1)
ok "(3) ... with a 4xx" grep -qE '<\*\* 4[0-9][0-9]|<- 4[0-9][0-9]' <<< "$out"
sleep 1
ok "(3) nothing relayed" test "$(sink_count)" -eq "$before"

fail "no panic in pec-milter's log" grep -q 'panicked' "$D/pec-milter.log"
_log "e2e-sendmail took $(rig_elapsed "$T0") s"
rig_finish
