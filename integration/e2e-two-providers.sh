#!/usr/bin/env bash
# integration/e2e-two-providers.sh — two PEC providers end to end, each in its own network namespace,
# joined by a veth pair (10.99.0.1/24 in pecA<pid>, 10.99.0.2/24 in pecB<pid>; no other route,
# no DNS: Postfix next hops are [ip]:port literals, default_transport = error:).
#
#   A "Demo PEC S.p.A." pec.demo.test   netns pecA<pid>  Postfix: 587 (SASL + milter), 10025
#     (reinjection), 10.99.0.1:25 (inbound, milter), pec.other.test -> smtp:[10.99.0.2]:25,
#     virtual_transport = lmtp:inet:127.0.0.1:2424 (pec-milter's delivery point, Maildir A/mail);
#     pec-milter A with Redis state, clamd A.
#     A's Postfix also hosts posta.demo.test, a plain (non-PEC) domain not in the index, delivered
#     by Postfix's own virtual(8) (transport_maps "posta.demo.test virtual:") to A/pf/vmail.
#   B "Beta PEC S.p.A." pec.other.test  netns pecB<pid>  the same mirrored (10.99.0.2:25,
#     pec.demo.test -> smtp:[10.99.0.1]:25), embedded state, clamd B; B's delivery point stores
#     through Dovecot LMTP ([delivery] store = "lmtp", 127.0.0.1:24 in B's netns; mail in
#     B/dovecot/mail/<dom>/<user>/Maildir; piena@pec.other.test has a 2K quota) — so one
#     provider runs with Dovecot LMTP, the other with the embedded Maildir writer.
#   One providers' index LDIF lists A and B (identities made by `pec-milter init-demo`, entries by
#   `pec-milter index-entry`); both trust both demo CAs, and the CA of R, a third demo identity
#   that no index lists (scenario 8). Timers shortened (first/last/interval below).
#
# Scenarios:
#   (1) mario (AUTH on A) -> anna@B: mario gets accettazione then avvenuta-consegna (completa,
#       postacert present); A's mailReceipt box gets B's presa-in-carico; anna's Maildir at B has
#       the envelope; every message verifies with openssl cms -verify -purpose any -CAfile <signer CA>;
#       the body has a 998-character line (RFC 5322's most; one more is a non-accettazione,
#       e2e-access (Hb)), which reaches B whole through A's Postfix (smtp_line_length_limit 998)
#   (2) X-TipoRicevuta: breve / sintetica (with an attachment) -> the busta carries the header, the
#       consegna has daticert <ricevuta tipo=...>, breve without the attachment bytes, sintetica no postacert
#   (3) unknown recipient at B (no mailbox directory) -> errore-consegna, errore no-dest, and nothing
#       else: B's delivery point answers 250 "not stored ... errore-consegna issued" to B's Postfix,
#       so no DSN comes back to A as a busta di anomalia (mario is told once)
#   (4) B's Postfix stopped -> preavviso, then the final notice (both preavviso-errore-consegna,
#       signed by A, no original, different texts, not before [timers] first / last);
#       B back, A's queue flushed -> anna gets it once, mario one late consegna, no further notice
#   (5) mailbox over quota at B (Dovecot 552 5.2.2) -> errore-consegna, errore altro, errore-esteso
#       with 5.2.2, and nothing else (no bounce, nothing stored)
#   (6) one message to anna (certified) and esterno@posta.demo.test (external: not in the index):
#       the external one gets the busta (signed by A); anna gets it, mario accettazione + one
#       consegna and no 12 h / 24 h notice at all until [timers] last + 2 s after the submission
#   (7) two pec-milter processes on A sharing A's Redis (a second one, A2, with milter 8892 and
#       delivery 2425), B's Postfix stopped -> mario gets exactly one preavviso and one final
#       notice (distinct Message-IDs), 2 "signed and queued" log lines in all over both logs, and the
#       process that did not send the preavviso logged it as already sent; B back, A2 stopped
#   (9) holder to holder at A (mario -> luigi): accettazione, A's own presa in carico to its
#       mailReceipt, the envelope in luigi's Maildir, avvenuta consegna: full processing
#   (8) forged envelopes handed straight to B's delivery point (LMTP 127.0.0.1:2424 in B's netns,
#       past B's reception point): (8a) a genuine envelope of A's with its smime.p7s part
#       stripped, (8b) an envelope as A signed by R's key (R's CA trusted, R in no index),
#       (8c) an envelope signed by A's own key (valid, chain to A's CA, A listed in the index)
#       but as pec.other.test, for a sender at pec.other.test (anna writing to herself): a
#       domain the index assigns to B, not to A ->
#       each is stored in anna's Maildir as a busta di anomalia signed by B (X-Trasporto:
#       errore, X-VerificaSicurezza: errore, Subject ANOMALIA MESSAGGIO: ..., its text says
#       why), no avvenuta-consegna (nothing at all) reaches mario, A's mailReceipt box or (8c's
#       claimed sender) anna, neither B nor A injects a receipt, and B's log has one line naming
#       the envelope and why ((8c): "il dominio del mittente pec.other.test non è gestito da
#       Demo PEC S.p.A."). The same (8c) case through port 25: e2e-reception.sh (3).
#       (8d) an envelope signed by A with A's own From: domain but a daticert mittente of B's
#       (anna): a listed provider writing on behalf of another provider's holder -> the same
#       outcome, why: "il dominio del mittente pec.other.test (daticert) non è gestito da ..."
#   (11) B's reinjection listener off, mario -> anna 3 MB (completa): B stores it, queues the
#       presa in carico and the avvenuta consegna completa in its state store's outbox, the
#       completa as a synced file in [delivery] outbox named by the entry (not 3 MB in SQLite);
#       mario has only the accettazione; listener back -> B's outbox pass sends both once, the
#       completa verifies and carries the original byte for byte, outbox and file gone
#   (L) the legal message log: A's, A2's and B's chains verify; the holder's extract of (1)
#       across A's and B's logs: accettazione, busta-trasporto (A), presa-in-carico,
#       avvenuta-consegna (B), the two receipts as received at A, with every field, in time
#       order; issued signed (--sign) it passes pec-milter verify and openssl cms -verify;
#       a changed byte is named.
#       The seal: each provider has its own TSA (openssl ts -reply, lib.sh tsa_up); `log seal`
#       (A) and SIGUSR1 (B) close each node's file, its seal (.tsr) passes openssl ts -verify and log verify
#       --tsa-trust --require-seals; with A's TSA stopped mail still flows, the closed file
#       waits (SEAL FAILED logged, --require-seals fails) and is sealed once the TSA is back.
#       Retention: a log file dated 30 months ago (with its seal) and a message quarantined
#       31 months ago are removed by `log retain`, one quarantined 29 months ago and every
#       current file stay
#   (M) metrics and health (issue 17): A and B serve [metrics] listen 127.0.0.1:9187 in their
#       namespaces (curl there). Along the way: A's tracked envelopes while B is down (4), A's
#       outbox depth with the avviso waiting (10b), B's with the presa in carico and the completa
#       waiting and back to 0 (11). At the end: every receipt kind queued and injected equals the
#       "signed and queued" / "receipt injected" lines of that process's log (A: since its
#       restart in (10)); A's accettazioni equal the accettazioni in mario's Maildir since that
#       restart and its access accepts; B's presa-in-carico / rilevazione-virus injected equal
#       those issued by B in A's mailReceipt box, its avvenuta / errore consegna those in mario's;
#       B's delivery anomalies equal its log's (8); reinjection errors equal the "injection
#       failed" lines; A's TSA failures its "SEAL FAILED" lines of (L), B's none; outbox and
#       tracked 0, index and seal age within the run; /health 200 with each configured
#       dependency up. A's clamd stopped: a submission gets 4xx, A's /health turns 503 naming
#       clamd down (B's stays 200); clamd back: still 503 until a call finds it (health is what
#       the calls saw), the next submission is accepted and /health is 200 again
#   (10) an infected envelope (issue 14, "Must show 5"): mario -> anna with a token in the body
#       that only B's clamd knows (clamd_up_token: PEC.Test.Token.NDB), so A accepts it; A's
#       pec-milter restarted first with [timers] first/last 120 s/240 s (no 12 h notice mixes in).
#       (10a) B injects its presa-in-carico, then a rilevazione-virus for anna (both to A's
#       mailReceipt, signed by B), quarantines the envelope, nothing reaches anna; A sends mario
#       the avviso di mancata consegna per virus (signed by A; X-Ricevuta: errore-consegna,
#       X-VerificaSicurezza: errore, errore virus, consegna anna); A's record: anna errore.
#       (10b) the same with A's first injection of the avviso failing: B's mail for A held
#       (defer_transports = smtp) until A's reinjection listener (127.0.0.1:10025 in master.cf)
#       is off (reload; port 25 stays up), then B's queue flushed -> B's presa-in-carico and
#       rilevazione-virus delivered (A answers 250: the avviso is signed and queued in A's
#       outbox, Redis pec:outbox holds it, A's record says errore), mario has nothing; listener
#       back -> A's outbox pass sends exactly one avviso and the outbox is empty
# Env: PEC_MILTER_BIN, KEEP=1, RIG_TIMING=1, T_FIRST/T_LAST/T_INTERVAL (default 4s/8s/1s, whole
# seconds), STRICT=0 (a check wrapped in known_bug prints KNOWN BUG and does not count; none is now).
# lib.sh: RIG_DEFER_NS=1, pf_instance INBOUND= and VTRANSPORT=, dovecot_up; for (10) clamd_up_token,
# pf_service_off/on, pf_defer_transports, pf_queue_count_is, log_since. Takes ~4 min.
# Needs curl (the metrics endpoint, (M)).
# Needs Dovecot LMTP (integration/deps.sh: dovecot-lmtpd).
# Prints "N passed, N failed" last; exit 1 if anything failed. Needs root.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
RIG_DEFER_NS=1          # deferred *_down run in the namespace they were started in
# the timers' debug events ("notice already sent", module roles::tracking) are what scenario 7 reads
export PEC_MILTER_LOG=${PEC_MILTER_LOG:-info,pec_milter::roles::tracking=debug}

BIN=$(pec_milter_bin)
rig_begin pecA
T0=$EPOCHREALTIME
NSA=$RIG_NETNS
netns_up "pecB$$" || die "cannot create network namespace pecB$$"
NSB=$RIG_NETNS
RIG_NETNS=$NSA
need_pec_milter

IPA=10.99.0.1 IPB=10.99.0.2
VA=vpa$$ VB=vpb$$
T_FIRST=${T_FIRST:-4s} T_LAST=${T_LAST:-8s} T_INTERVAL=${T_INTERVAL:-1s}
A_NAME="Demo PEC S.p.A."  B_NAME="Beta PEC S.p.A."
A_DOM=pec.demo.test       B_DOM=pec.other.test
A_RIC=ricevute@$A_DOM     B_RIC=ricevute@$B_DOM
NOBODY=nessuno@$B_DOM
FULL=piena@$B_DOM                 # a Dovecot user at B with a 2K quota (scenario 5)
EXT_DOM=posta.demo.test EXT=esterno@posta.demo.test   # a plain (non-PEC) domain of A's Postfix (scenario 6)
DOVECOT_PORT=24
A=$RIG_BASE/A B=$RIG_BASE/B LDIF=$RIG_BASE/igpec.ldif O=$RIG_BASE/out
CAA=$A/demo/ca.pem CAB=$B/demo/ca.pem
R=$RIG_BASE/R CAR=$RIG_BASE/R/ca.pem   # a third identity: its CA trusted by A and B, in no index (8)
VTOK=PEC-TEST-VIRUS-TOKEN-$$-$RANDOM$RANDOM-$RANDOM   # only B's clamd has a signature for it (10)
mkdir -p "$O"

inA() { local RIG_NETNS=$NSA; "$@"; }
inB() { local RIG_NETNS=$NSB; "$@"; }

# ------------------------------------------------------------------ helpers
# (lib.sh: inspect_get and field_is, trusting $CA = both providers' CAs; cms_ok FILE CAFILE;
# hdr_is; known_bug)
CA=$RIG_BASE/both-ca.pem

# kinds_since MAILDIR: kinds of the new files since mark, in delivery order (file<TAB>kind)
kinds_since() { local f; for f in $(new_files "$1"); do printf '%s\t%s\n' "$f" "$(inspect_get "$f" 'd["kind"]')"; done; }
# wait_kinds MAILDIR N KIND [SECS=30]: until N new files of KIND; sets FOUND (their paths, oldest first)
FOUND=
wait_kinds() {
  local m=$1 n=$2 k=$3 secs=${4:-30} t=$EPOCHREALTIME have
  while :; do
    FOUND=$(kinds_since "$m" | awk -F'\t' -v k="$k" '$2 == k { print $1 }')
    have=$(printf '%s' "$FOUND" | grep -c . || true)
    [ "$have" -ge "$n" ] && { echo "$have x $k after $(rig_elapsed "$t") s"; return 0; }
    if awk -v a="$t" -v b="$EPOCHREALTIME" -v s="$secs" 'BEGIN { exit !(b - a > s) }'; then
      echo "after ${secs}s: $have x $k in $m; new files:" >&2; kinds_since "$m" >&2; return 1
    fi
    sleep 0.3
  done
}
count_kind() { kinds_since "$1" | awk -F'\t' -v k="$2" '$2 == k' | grep -c . || true; }
count_is() { local n; n=$(count_kind "$1" "$2"); echo "$n x $2"; [ "$n" -eq "$3" ]; }
new_count_is() { local n; n=$(new_files "$1" | grep -c . || true); echo "$n new in $1"; kinds_since "$1"; [ "$n" -eq "$2" ]; }
counts_are() {   # counts_are MAILDIR KIND N [KIND N...]: exact counts of new files per kind
  local m=$1; shift
  while [ $# -ge 2 ]; do count_is "$m" "$1" "$2" || return 1; shift 2; done
}
text_of() {      # text_of FILE: the first readable text/plain part, decoded
  python3 - "$1" <<'PY'
import email, sys
from email import policy
m = email.message_from_binary_file(open(sys.argv[1], 'rb'), policy=policy.compat32)
for part in m.walk():
    if part.get_content_type() == 'text/plain' and part.get_filename() is None:
        print(part.get_payload(decode=True).decode(part.get_content_charset() or 'latin-1', 'replace'))
        break
PY
}
texts_differ() { ! cmp -s <(text_of "$1") <(text_of "$2") || { text_of "$1"; return 1; }; }
# not_before FILE START SECS: FILE (its Maildir mtime) arrived at least SECS after START in
# whole seconds: the PEC transaction time (Date:, daticert, the timers' origin) has
# one-second precision, so a submission at 12.8 s counts from 12 s.
not_before() {
  local d; d=$(awk -v a="$2" -v b="$(stat -c %.3Y "$1")" 'BEGIN { printf "%.2f", b - int(a) }')
  echo "arrived $d s after the submission second (timer ${3}s)"
  awk -v d="$d" -v s="$3" 'BEGIN { exit !(d >= s - 0.05) }'
}
first_is() { local k; k=$(kinds_since "$1" | head -1 | cut -f2); echo "first: $k"; [ "$k" = "$2" ]; }

# The operations endpoint of each provider ([metrics] listen, (M)), reached inside its namespace.
METRICS_PORT=9187
# scrape P PATH [OUT]: GET PATH on P's (A or B) endpoint; the body on stdout (or in OUT, the HTTP
# status on stdout)
scrape() {
  local ns=$NSA; [ "$1" = B ] && ns=$NSB
  if [ -n "${3:-}" ]; then
    ip netns exec "$ns" curl -sS --max-time 5 -o "$3" -w '%{http_code}' "http://127.0.0.1:$METRICS_PORT$2"
  else
    ip netns exec "$ns" curl -sS --max-time 5 "http://127.0.0.1:$METRICS_PORT$2"
  fi
}
# metric P SERIES: the value of SERIES, written as exposed (name{label="v",...}), in P's /metrics
# (awk reads it all: curl must not meet a closed pipe)
metric() { scrape "$1" /metrics | awk -v s="$2" '$1 == s && !f { v = $2; f = 1 } END { if (f) print v; exit !f }'; }
# metric_in P SERIES LO HI [SECS=0]: LO <= value <= HI, now or within SECS
metric_in() {
  local v= i
  for ((i = 0; i <= ${5:-0} * 5; i++)); do
    v=$(metric "$1" "$2") && awk -v v="$v" -v a="$3" -v b="$4" 'BEGIN { exit !(v >= a && v <= b) }' &&
      { echo "$1: $2 = $v"; return 0; }
    sleep 0.2
  done
  echo "$1: $2 = ${v:-absent}, expected $3..$4"; return 1
}
# metric_is P SERIES N [SECS=0]: the value is N
metric_is() { metric_in "$1" "$2" "$3" "$3" "${4:-0}"; }

# config DIR NAME DOMAIN STATE: write_config + [provider] for NAME/DOMAIN + [delivery] + [timers]
config() {   # optional 5th arg: "lmtp HOST:PORT" (Dovecot) instead of the Maildir writer
  local D=$1 name=$2 dom=$3 state=$4 store=${5:-maildir} store_line
  INDEX=ldif INDEX_LDIF=$LDIF TRUST="$CAA $CAB $CAR" write_config "$D" "$state" || return 1
  sed -i -e "s/^name = \"Demo PEC S.p.A.\"/name = \"$name\"/" -e "s/^domain = \"pec.demo.test\"/domain = \"$dom\"/" \
    -e "s/^domains = \[\"pec.demo.test\"\]/domains = [\"$dom\"]/" "$D/pec-milter.toml"
  mkdir -p "$D/mail" "$D/outbox"
  if [ "$store" = maildir ]; then store_line=$(printf 'store = "maildir"\nmaildir = "%s"' "$D/mail")
  else store_line=$(printf 'store = "lmtp"\nlmtp = "%s"' "${store#lmtp }"); fi
  cat >> "$D/pec-milter.toml" <<EOF

[delivery]
listen = "inet:127.0.0.1:2424"
$store_line
max_size = "100MB"
outbox = "$D/outbox"
timeout = "60s"

[timers]
enabled = true
first = "$T_FIRST"
last = "$T_LAST"
interval = "$T_INTERVAL"

[metrics]
listen = "127.0.0.1:$METRICS_PORT"
EOF
  # what waits in the outbox (scenarios 10b, 11) leaves within seconds: the outbox pass every
  # second for entries queued 6 s ago (outbox_grace must exceed the injection timeout)
  sed -i -e '/^\[reinjection\]/,/^\[/{s/^timeout = .*/timeout = "5s"\noutbox_interval = "1s"\noutbox_grace = "6s"/}' \
    "$D/pec-milter.toml"
  grep -q '^outbox_grace = "6s"' "$D/pec-milter.toml" &&
  "$BIN" check-config --config "$D/pec-milter.toml" >/dev/null && "$BIN" init-demo --config "$D/pec-milter.toml"
}

# _veth_del: deletes the veth pair (from A's side: B's end goes with it); 0 once neither end is
# left (in the namespaces or on the host).
_veth_del() {
  ip -n "$NSA" link del "$VA" 2>/dev/null || ip link del "$VA" 2>/dev/null
  ! ip -n "$NSA" link show "$VA" >/dev/null 2>&1 && ! ip -n "$NSB" link show "$VB" >/dev/null 2>&1 &&
    ! ip link show "$VA" >/dev/null 2>&1
}
veth_up() {
  rig_defer _veth_del
  ip link add "$VA" type veth peer name "$VB" || return 1
  ip link set "$VA" netns "$NSA" && ip link set "$VB" netns "$NSB" || return 1
  ip -n "$NSA" addr add $IPA/24 dev "$VA" && ip -n "$NSB" addr add $IPB/24 dev "$VB" || return 1
  ip -n "$NSA" link set "$VA" up && ip -n "$NSB" link set "$VB" up
}
no_default_route() { [ -z "$(ip -n "$NSA" route show default)" ] && [ -z "$(ip -n "$NSB" route show default)" ]; }

# rogue_identity: R, a provider identity (key, certificate, ca.pem in $R) made by init-demo, as
# pec.demo.test; its CA goes into both trust stores, its certificate into no index.
rogue_identity() {
  mkdir -p "$R" && cat > "$R/id.toml" <<EOF
[provider]
name = "$A_NAME"
domain = "$A_DOM"
domains = ["$A_DOM"]
[signing]
key = "$R/provider.key"
cert = "$R/provider.crt"
EOF
  "$BIN" init-demo --config "$R/id.toml" 2>&1 && test -s "$R/provider.key" && test -s "$CAR"
}

# ------------------------------------------------------------------ setup
ok "veth pair $IPA ($NSA) <-> $IPB ($NSB)" veth_up || exit 1
ok "R: a third identity (init-demo), its CA trusted by A and B, in no index" rogue_identity || exit 1
ok "no default route in either namespace" no_default_route
# each provider seals its message log with its own TSA (a real RFC 3161 responder on its loopback)
TSAA=$RIG_BASE/tsaA TSAB=$RIG_BASE/tsaB
ok "A: its TSA's PKI (openssl ts)" tsa_pki "$TSAA" || exit 1
ok "B: its TSA's PKI (openssl ts)" tsa_pki "$TSAB" || exit 1
LOG_TSA_URL=http://127.0.0.1:$RIG_TSA_PORT/ LOG_TSA_TRUST=$TSAA/tsa-ca.pem \
  ok "A: config + identity (init-demo)" config "$A" "$A_NAME" "$A_DOM" redis || exit 1
LOG_TSA_URL=http://127.0.0.1:$RIG_TSA_PORT/ LOG_TSA_TRUST=$TSAB/tsa-ca.pem \
  ok "B: config + identity (init-demo)" config "$B" "$B_NAME" "$B_DOM" embedded "lmtp 127.0.0.1:$DOVECOT_PORT" || exit 1
cat "$CAA" "$CAB" > "$CA"
rm -f "$LDIF"
{
  igpec_root_entry
  "$BIN" index-entry --cert "$A/demo/provider.crt" --name "$A_NAME" --domains "$A_DOM" --receipt "$A_RIC"
  "$BIN" index-entry --cert "$B/demo/provider.crt" --name "$B_NAME" --domains "$B_DOM" --receipt "$B_RIC"
} > "$LDIF"
ok "index LDIF lists A and B" test "$(grep -c '^dn: providerName=' "$LDIF")" -eq 2 || exit 1

# mailboxes of the delivery points (unknown users have none): A = embedded Maildir writer,
# B = Dovecot LMTP (users from DOVECOT_USERS; Dovecot creates the Maildir on first delivery)
MARIO_MD=$A/mail/$A_DOM/mario.rossi  ARIC_MD=$A/mail/$A_DOM/ricevute
ANNA_MD=$B/dovecot/mail/$B_DOM/anna.bianchi/Maildir  BRIC_MD=$B/dovecot/mail/$B_DOM/ricevute/Maildir
FULL_MD=$B/dovecot/mail/$B_DOM/piena/Maildir
EXT_MD=$A/pf/vmail/$EXT_DOM/esterno
LUIGI=luigi.verdi@$A_DOM  LUIGI_MD=$A/mail/$A_DOM/luigi.verdi   # a second holder at A (9)
mkdir -p "$MARIO_MD" "$ARIC_MD" "$LUIGI_MD" "$A/mail/$A_DOM/posta-certificata"

# A's Postfix also hosts EXT_DOM, a plain domain not in the providers' index, delivered by
# Postfix's own virtual(8) (transport_maps), never through pec-milter's delivery point
ok "A: postfix instance" inA pf_instance "$A/pf" HOST=mx.$A_DOM DOMAINS="$A_DOM $EXT_DOM" USERS="$MARIO $A_RIC $EXT" \
  SASL_USERS="$MARIO:$MARIO_PW" MILTERS=inet:127.0.0.1:$RIG_MILTER_PORT INBOUND=$IPA:25 \
  TRANSPORT="$B_DOM smtp:[$IPB]:25
$EXT_DOM virtual:" VTRANSPORT=lmtp:inet:127.0.0.1:2424 || exit 1
ok "B: postfix instance" inB pf_instance "$B/pf" HOST=mx.$B_DOM DOMAINS=$B_DOM USERS="$ANNA $B_RIC" \
  SASL_USERS="$ANNA:anna-pw" MILTERS=inet:127.0.0.1:$RIG_MILTER_PORT INBOUND=$IPB:25 \
  TRANSPORT="$A_DOM smtp:[$IPA]:25" VTRANSPORT=lmtp:inet:127.0.0.1:2424 || exit 1
ok "A: redis up" inA redis_up "$A/redis" "$RIG_REDIS_PORT" || exit 1
ok "A: clamd up" inA clamd_up "$A/clamd" "$RIG_CLAMD_PORT" || exit 1
ok "B: clamd up, with PEC.Test.Token.NDB (a \"virus\" A's clamd does not know: scenario 10)" \
  inB clamd_up_token "$B/clamd" "$RIG_CLAMD_PORT" "$VTOK" || exit 1
DOVECOT_USERS="$ANNA $B_RIC posta-certificata@$B_DOM $FULL=2K" \
  ok "B: dovecot LMTP up on 127.0.0.1:$DOVECOT_PORT (B's mailbox store)" inB dovecot_up "$B/dovecot" "$DOVECOT_PORT" || exit 1
ok "A: pec-milter up" inA pec_milter_up "$A" "$A/pec-milter.toml" || exit 1
ok "A: TSA up on 127.0.0.1:$RIG_TSA_PORT" inA tsa_up "$TSAA" "$RIG_TSA_PORT" || exit 1
ok "B: TSA up on 127.0.0.1:$RIG_TSA_PORT" inB tsa_up "$TSAB" "$RIG_TSA_PORT" || exit 1
ok "B: pec-milter up" inB pec_milter_up "$B" "$B/pec-milter.toml" || exit 1
ok "A: postfix up" inA pf_up "$A/pf" || exit 1
ok "B: postfix up" inB pf_up "$B/pf" || exit 1
ok "A reaches B:25 over the veth" inA wait_port $IPB 25 5
ok "B reaches A:25 over the veth" inB wait_port $IPA 25 5
ok "A: delivery point listens on 2424" inA wait_port 127.0.0.1 2424 5
ok "B: delivery point listens on 2424" inB wait_port 127.0.0.1 2424 5
_log "up after $(rig_elapsed "$T0") s"

submit() {   # submit OUT SUBJECT TO [SWAKS ARGS...]
  local out=$1 subj=$2 to=$3; shift 3
  inA swaks_submit "$MARIO" "$MARIO_PW" "$MARIO" "$to" --header "Subject: $subj" --body "${BODY:-body of $subj}" "$@" > "$out" 2>&1
}
eod_250() { grep -qE '^<- +250 .*(queued|Ok)' "$1" || { cat "$1"; return 1; }; }

# ------------------------------------------------------------------ (1)
TS=$EPOCHREALTIME TOK=s1-$RANDOM S1_SUBJ="scenario 1 $TOK"
mark "$MARIO_MD" "$ARIC_MD" "$ANNA_MD" "$BRIC_MD"
# the body has a line of 998 characters, the most RFC 5322 allows and the access point accepts:
# A's Postfix relays it to B unbroken (smtp_line_length_limit, 998 by default), so the
# envelope's signature holds at B
LONG998=$(printf 'z%.0s' $(seq 998))
BODY=$(printf 'body of scenario 1 %s\n%s\nend' "$TOK" "$LONG998") submit "$O/1.txt" "scenario 1 $TOK" "$ANNA"
ok "(1) submission accepted" eod_250 "$O/1.txt"
ok "(1) mario gets the accettazione" wait_kinds "$MARIO_MD" 1 accettazione 20; ACC=$FOUND
ok "(1) anna's Maildir at B gets the envelope" wait_kinds "$ANNA_MD" 1 posta-certificata 20; ENV=$FOUND
ok "(1) mario gets avvenuta-consegna" wait_kinds "$MARIO_MD" 1 avvenuta-consegna 20; CONS=$FOUND
_log "(1) consegna after $(rig_elapsed "$TS") s"
ok "(1) A's mailReceipt box gets B's presa-in-carico" wait_kinds "$ARIC_MD" 1 presa-in-carico 20; PIC=$FOUND
ok "(1) accettazione came first" first_is "$MARIO_MD" accettazione
if [ -n "$ACC" ]; then
  ok "(1) accettazione: openssl cms -verify with A's CA" cms_ok "$ACC" "$CAA"
fi
if [ -n "$ENV" ]; then
  ok "(1) envelope: openssl cms -verify with A's CA" cms_ok "$ENV" "$CAA"
  ok "(1) envelope: subject carries the token" bash -c "grep -q '$TOK' '$ENV'"
  ok "(1) envelope: X-TipoRicevuta: completa (default)" hdr_is "$ENV" X-TipoRicevuta completa
  # (one line of its own; Dovecot keeps its Maildir files with bare LF)
  ok "(1) envelope: the 998-character line arrived whole at B (a line of its own)" \
    grep -qaE "^${LONG998}"$'\r'"?\$" "$ENV"
fi
if [ -n "$CONS" ]; then
  ok "(1) consegna: openssl cms -verify with B's CA" cms_ok "$CONS" "$CAB"
  ok "(1) consegna: daticert <ricevuta tipo=\"completa\">" field_is "$CONS" 'd["daticert"]["ricevuta"]' completa
  ok "(1) consegna: postacert present" field_is "$CONS" 'd["postacert"] is not None' True
  ok "(1) consegna: gestore-emittente is B" field_is "$CONS" 'd["daticert"]["gestore_emittente"]' "$B_NAME"
  ok "(1) consegna: consegna = anna" field_is "$CONS" 'd["daticert"]["consegna"]' "$ANNA"
fi
if [ -n "$PIC" ]; then
  ok "(1) presa-in-carico: openssl cms -verify with B's CA" cms_ok "$PIC" "$CAB"
fi
ok "(1) nothing else for mario" new_count_is "$MARIO_MD" 2
ok "(1) nothing in Postfix's vmail at A" bash -c "[ -z \"\$(find '$A/pf/vmail' -type f)\" ]"
ok "(1) A's queue drains" pf_queue_empty "$A/pf" 20
ok "(1) B's queue drains" pf_queue_empty "$B/pf" 20

# ------------------------------------------------------------------ (2)
# X-TipoRicevuta is a header of the submitted message and of the busta (PEC-RULES §2.1); the
# receipt carries the variant in daticert.xml (<ricevuta tipo="..."/>), not as a header
# (the real Aruba avvenuta-consegna has none). breve: attachments replaced by their hash.
ATT=$O/att.txt
printf 'attachment-token-%s-%s\n' "$RANDOM$RANDOM" "$$" > "$ATT"
ATT64=$(base64 -w0 < "$ATT")
for T in breve sintetica; do
  TOK=s2$T-$RANDOM
  mark "$MARIO_MD" "$ANNA_MD"
  submit "$O/2$T.txt" "scenario 2 $T $TOK" "$ANNA" --add-header "X-TipoRicevuta: $T" --attach "$ATT"
  ok "(2 $T) submission accepted" eod_250 "$O/2$T.txt"
  ok "(2 $T) anna gets the envelope" wait_kinds "$ANNA_MD" 1 posta-certificata 20; ENV=$FOUND
  ok "(2 $T) mario gets avvenuta-consegna" wait_kinds "$MARIO_MD" 1 avvenuta-consegna 20; CONS=$FOUND
  if [ -n "$ENV" ]; then
    ok "(2 $T) envelope: X-TipoRicevuta: $T" hdr_is "$ENV" X-TipoRicevuta "$T"
    ok "(2 $T) envelope carries the attachment" grep -qF "$ATT64" "$ENV"
  fi
  if [ -n "$CONS" ]; then
    ok "(2 $T) consegna: daticert <ricevuta tipo=\"$T\">" field_is "$CONS" 'd["daticert"]["ricevuta"]' "$T"
    ok "(2 $T) consegna: openssl cms -verify with B's CA" cms_ok "$CONS" "$CAB"
    fail "(2 $T) consegna: the attachment's content is not in it" grep -qF "$ATT64" "$CONS"
    if [ "$T" = sintetica ]; then
      ok "(2 $T) consegna: no postacert" field_is "$CONS" 'd["postacert"] is None' True
    else
      ok "(2 $T) consegna: postacert present (attachments hashed)" field_is "$CONS" 'd["postacert"] is not None' True
    fi
  fi
done

# ------------------------------------------------------------------ (3)
TOK=s3-$RANDOM TS=$EPOCHREALTIME
mark "$MARIO_MD"
submit "$O/3.txt" "scenario 3 $TOK" "$NOBODY"
ok "(3) submission accepted" eod_250 "$O/3.txt"
ok "(3) mario gets the accettazione" wait_kinds "$MARIO_MD" 1 accettazione 20
ok "(3) mario gets errore-consegna" wait_kinds "$MARIO_MD" 1 errore-consegna 20; ERR=$FOUND
_log "(3) errore-consegna after $(rig_elapsed "$TS") s"
if [ -n "$ERR" ]; then
  ok "(3) errore-consegna: errore no-dest" field_is "$ERR" 'd["daticert"]["errore"]' no-dest
  ok "(3) errore-consegna: openssl cms -verify with B's CA" cms_ok "$ERR" "$CAB"
fi
sleep 2
ok "(3) exactly one accettazione and one errore-consegna" counts_are "$MARIO_MD" accettazione 1 errore-consegna 1
# B's delivery point answers 550 5.1.1 to B's Postfix, which also bounces a plain DSN (from <>)
# to mario; A's reception point turns it into a busta di anomalia: mario is told twice.
ok "(3) nothing else for mario (no anomaly wrapping B's Postfix DSN)" new_count_is "$MARIO_MD" 2

# ------------------------------------------------------------------ (4)
TOK=s4-$RANDOM TS=$EPOCHREALTIME
ok "(4) B's postfix stopped" inB pf_down "$B/pf"
ok "(4) B:25 closed" inA wait_closed $IPB 25 10
mark "$MARIO_MD" "$ANNA_MD"
TS4=$EPOCHREALTIME
submit "$O/4.txt" "scenario 4 $TOK" "$ANNA"
ok "(4) submission accepted" eod_250 "$O/4.txt"
ok "(4) mario gets the accettazione" wait_kinds "$MARIO_MD" 1 accettazione 20
ok "(4) A's /metrics: the envelope is tracked (its notices pending)" metric_in A pec_milter_tracked_envelopes 1 1000
ok "(4) mario gets preavviso and final notice (2 x preavviso-errore-consegna)" \
  wait_kinds "$MARIO_MD" 2 preavviso-errore-consegna 40; NOTICES=$FOUND
_log "(4) both notices after $(rig_elapsed "$TS") s"
for f in $NOTICES; do
  ok "(4) notice ${f##*/}: openssl cms -verify with A's CA" cms_ok "$f" "$CAA"
  _log "(4) notice: errore=$(inspect_get "$f" 'd["daticert"]["errore"]') subject=$(inspect_get "$f" 'd["subject"]')"
done
if [ -n "$NOTICES" ]; then
  N1=$(echo "$NOTICES" | sed -n 1p) N2=$(echo "$NOTICES" | sed -n 2p)
  ok "(4) notice 1: the original is not included (no postacert)" field_is "$N1" 'd["postacert"] is None' True
  ok "(4) notice 2: the original is not included (no postacert)" field_is "$N2" 'd["postacert"] is None' True
  ok "(4) notices: first (12 h) and final (24 h) texts differ" texts_differ "$N1" "$N2"
  ok "(4) preavviso not before [timers] first ($T_FIRST) after the submission" not_before "$N1" "$TS4" "${T_FIRST%s}"
  ok "(4) final notice not before [timers] last ($T_LAST) after the submission" not_before "$N2" "$TS4" "${T_LAST%s}"
fi
ok "(4) B's postfix back" inB pf_up "$B/pf"
ok "(4) A's queue flushed" inA ns_exec postqueue -c "$A/pf/etc" -f
ok "(4) anna gets the envelope once B is back" wait_kinds "$ANNA_MD" 1 posta-certificata 60
ok "(4) mario gets the (late) avvenuta-consegna" wait_kinds "$MARIO_MD" 1 avvenuta-consegna 30
sleep "$(( ${T_LAST%s} + 2 ))"
ok "(4) still exactly 2 notices (nothing sent twice)" count_is "$MARIO_MD" preavviso-errore-consegna 2
ok "(4) anna got the envelope once" new_count_is "$ANNA_MD" 1
ok "(4) exactly one accettazione" count_is "$MARIO_MD" accettazione 1
ok "(4) exactly one avvenuta-consegna" count_is "$MARIO_MD" avvenuta-consegna 1

# ------------------------------------------------------------------ (5)
# FULL is a Dovecot user at B with a 2K quota: any envelope is larger, Dovecot answers
# 552 5.2.2 (permanent) -> errore-consegna "altro", the store's reply in errore-esteso.
TOK=s5-$RANDOM TS=$EPOCHREALTIME
mark "$MARIO_MD" "$FULL_MD"
submit "$O/5.txt" "scenario 5 $TOK" "$FULL"
ok "(5) submission accepted" eod_250 "$O/5.txt"
ok "(5) mario gets the accettazione" wait_kinds "$MARIO_MD" 1 accettazione 20
ok "(5) mario gets errore-consegna (mailbox over quota)" wait_kinds "$MARIO_MD" 1 errore-consegna 20; ERR=$FOUND
_log "(5) errore-consegna after $(rig_elapsed "$TS") s"
if [ -n "$ERR" ]; then
  ok "(5) errore-consegna: errore altro" field_is "$ERR" 'd["daticert"]["errore"]' altro
  ok "(5) errore-consegna: errore-esteso mentions 5.2.2" field_is "$ERR" '"5.2.2" in (d["daticert"]["errore_esteso"] or "")' True
  _log "(5) errore-esteso: $(inspect_get "$ERR" 'd["daticert"]["errore_esteso"]')"
  ok "(5) errore-consegna: openssl cms -verify with B's CA" cms_ok "$ERR" "$CAB"
fi
sleep 2
ok "(5) exactly one accettazione and one errore-consegna" counts_are "$MARIO_MD" accettazione 1 errore-consegna 1
ok "(5) nothing else for mario" new_count_is "$MARIO_MD" 2
ok "(5) nothing stored in the full mailbox" new_count_is "$FULL_MD" 0
ok "(5) B's queue drains (no bounce pending)" pf_queue_empty "$B/pf" 20

# ------------------------------------------------------------------ (6)
# One message to a certified recipient (anna at B) and an external one (EXT, a plain domain of
# A's own Postfix, not in the providers' index, delivered by virtual(8)): the external one gets the
# busta; the 12 h / 24 h tracking covers certified recipients only, and anna's consegna comes, so
# no notice at all until [timers] last + 2 s.
TOK=s6-$RANDOM TS6=$EPOCHREALTIME
mark "$MARIO_MD" "$ANNA_MD" "$EXT_MD"
submit "$O/6.txt" "scenario 6 $TOK" "$ANNA,$EXT"
ok "(6) submission accepted" eod_250 "$O/6.txt"
ok "(6) mario gets the accettazione" wait_kinds "$MARIO_MD" 1 accettazione 20; ACC=$FOUND
if [ -n "$ACC" ]; then
  ok "(6) accettazione: anna certificato, esterno@ esterno" field_is "$ACC" \
    'sorted((x["address"], x["tipo"]) for x in d["daticert"]["destinatari"])' \
    "[('$ANNA', 'certificato'), ('$EXT', 'esterno')]"
fi
ok "(6) anna gets the envelope" wait_kinds "$ANNA_MD" 1 posta-certificata 20
ok "(6) the external recipient gets the envelope" wait_kinds "$EXT_MD" 1 posta-certificata 20; XENV=$FOUND
if [ -n "$XENV" ]; then
  ok "(6) external envelope: openssl cms -verify with A's CA" cms_ok "$XENV" "$CAA"
  ok "(6) external envelope: subject carries the token" grep -q "$TOK" "$XENV"
fi
ok "(6) mario gets avvenuta-consegna (anna)" wait_kinds "$MARIO_MD" 1 avvenuta-consegna 20; CONS=$FOUND
if [ -n "$CONS" ]; then
  ok "(6) consegna: consegna = anna" field_is "$CONS" 'd["daticert"]["consegna"]' "$ANNA"
fi
LEFT=$(awk -v a="$TS6" -v b="$EPOCHREALTIME" -v s="$(( ${T_LAST%s} + 2 ))" 'BEGIN { r = s - (b - a); printf "%.2f", (r > 0 ? r : 0) }')
_log "(6) all in after $(rig_elapsed "$TS6") s; waiting $LEFT s more ([timers] last + 2 s)"
sleep "$LEFT"
ok "(6) no preavviso-errore-consegna until [timers] last + 2 s" count_is "$MARIO_MD" preavviso-errore-consegna 0
ok "(6) exactly accettazione + one avvenuta-consegna, nothing else" counts_are "$MARIO_MD" accettazione 1 avvenuta-consegna 1
ok "(6) nothing else for mario" new_count_is "$MARIO_MD" 2
ok "(6) the external recipient got it once" new_count_is "$EXT_MD" 1
ok "(6) A's queue drains" pf_queue_empty "$A/pf" 20

# ------------------------------------------------------------------ (7)
# Two pec-milter processes on A sharing A's one Redis (issue "Must show 5"): a second one (A2)
# with a copy of A's config, only the listen addresses (milter 8892, delivery 2425), the
# spool and the message log (its own node, A2) differing; same [state] Redis, same [timers], same key/cert. Both run the 12 h / 24 h
# timers over the shared state: with B's Postfix stopped each notice is still sent exactly once.
A2=$RIG_BASE/A2
a2_config() {
  mkdir -p "$A2/spool" &&
  sed -e '/^\[milter\]/,/^\[/s#^listen = "inet:127.0.0.1:[0-9]*"#listen = "inet:127.0.0.1:8892"#' \
      -e '/^\[delivery\]/,/^\[/s#^listen = "inet:127.0.0.1:2424"#listen = "inet:127.0.0.1:2425"#' \
      -e '/^\[spool\]/,/^\[/s#^dir = .*#dir = "'"$A2/spool"'"#' \
      -e '/^\[log\]/,/^\[/s#^dir = .*#dir = "'"$A2/log"'"#' \
      -e '/^\[log\]/,/^\[/s#^node = .*#node = "A2"#' \
      -e '/^\[metrics\]/,/^\[/s#^listen = .*#listen = "127.0.0.1:9188"#' "$A/pec-milter.toml" > "$A2/pec-milter.toml" &&
  grep -q '127.0.0.1:8892' "$A2/pec-milter.toml" && grep -q '127.0.0.1:2425' "$A2/pec-milter.toml" &&
  grep -q '^listen = "127.0.0.1:9188"' "$A2/pec-milter.toml" &&
  "$BIN" check-config --config "$A2/pec-milter.toml" >/dev/null
}
# notices_logged MSGID...: "preavviso-errore-consegna signed and queued" lines (one per notice
# built) for these Message-IDs in the part of A's and A2's logs written since LOGMARK (sum; per log on stdout)
notices_logged() {
  local d n tot=0 id re=
  for id in "$@"; do id=${id#<}; id=${id%>}; re="$re${re:+|}$(printf '%s' "$id" | sed 's/[.[\*^$+?(){}|]/\\&/g')"; done
  for d in "$A" "$A2"; do
    n=$(tail -n +"$(( ${LOGMARK[$d]:-0} + 1 ))" "$d/pec-milter.log" | grep 'preavviso-errore-consegna signed and queued' | grep -cE "$re" || true)
    echo "${d##*/}: $n"; tot=$((tot + n))
  done
  echo "total: $tot"; [ "$tot" -eq 2 ]
}
# notice_keys D: the store marker keys of the notices D built since LOGMARK (one a line)
notice_keys() {
  tail -n +"$(( ${LOGMARK[$1]:-0} + 1 ))" "$1/pec-milter.log" | grep 'preavviso-errore-consegna signed and queued' |
    grep -o 'key=[^ ]*' | sed 's/^key=//'
}
# met_by_other WHICH: the notice WHICH (first|last) injected by one process since LOGMARK was met
# by the other one too, which logged it as already sent or being sent ("already sent" /
# "another node") for the same marker key and did not send it: both timer loops found the same
# notice due on the shared Redis and only one sent it. Prints who sent and who skipped.
met_by_other() {
  local d o key found=0
  for d in "$A" "$A2"; do
    if [ "$d" = "$A" ]; then o=$A2; else o=$A; fi
    while read -r key; do
      case $key in *":$1") ;; *) continue ;; esac
      found=1
      echo "${d##*/} sent $key"
      tail -n +"$(( ${LOGMARK[$o]:-0} + 1 ))" "$o/pec-milter.log" | grep -F "key=$key" |
        grep -qE 'already sent|another node' || { echo "${o##*/} never met it"; return 1; }
      echo "${o##*/} met it and skipped it"
    done < <(notice_keys "$d")
  done
  [ "$found" -eq 1 ]
}
declare -A LOGMARK
TOK=s7-$RANDOM
mkdir -p "$A2"
ok "(7) A2: config = A's with milter 8892, delivery 2425, own spool" a2_config
ok "(7) A2: second pec-milter up in A's namespace (same Redis, same [timers])" inA pec_milter_up "$A2" "$A2/pec-milter.toml"
ok "(7) A2: delivery point listens on 2425" inA wait_port 127.0.0.1 2425 5
ok "(7) A: first pec-milter still listening on 8891" inA wait_port 127.0.0.1 "$RIG_MILTER_PORT" 5
ok "(7) B's postfix stopped" inB pf_down "$B/pf"
ok "(7) B:25 closed" inA wait_closed $IPB 25 10
mark "$MARIO_MD" "$ANNA_MD"
LOGMARK[$A]=$(wc -l < "$A/pec-milter.log") LOGMARK[$A2]=$(wc -l < "$A2/pec-milter.log")
TS7=$EPOCHREALTIME
submit "$O/7.txt" "scenario 7 $TOK" "$ANNA"
ok "(7) submission accepted" eod_250 "$O/7.txt"
ok "(7) mario gets the accettazione" wait_kinds "$MARIO_MD" 1 accettazione 20
ok "(7) mario gets preavviso and final notice (2 x preavviso-errore-consegna)" \
  wait_kinds "$MARIO_MD" 2 preavviso-errore-consegna 40; NOTICES=$FOUND
LEFT=$(awk -v a="$TS7" -v b="$EPOCHREALTIME" -v s="$(( ${T_LAST%s} + 3 ))" 'BEGIN { r = s - (b - a); printf "%.2f", (r > 0 ? r : 0) }')
_log "(7) both notices after $(rig_elapsed "$TS7") s; waiting $LEFT s more ([timers] last + 3 s)"
sleep "$LEFT"
ok "(7) exactly 2 x preavviso-errore-consegna with two timer processes (one preavviso, one final)" \
  count_is "$MARIO_MD" preavviso-errore-consegna 2
if [ -n "$NOTICES" ]; then
  N1=$(echo "$NOTICES" | sed -n 1p) N2=$(echo "$NOTICES" | sed -n 2p)
  M1=$(hdr_get "$N1" Message-ID) M2=$(hdr_get "$N2" Message-ID)
  _log "(7) notice Message-IDs: $M1 $M2"
  ok "(7) the two notices have distinct Message-IDs" test -n "$M1" -a -n "$M2" -a "$M1" != "$M2"
  ok "(7) notice 1 (preavviso) and notice 2 (final) texts differ" texts_differ "$N1" "$N2"
  ok "(7) preavviso not before [timers] first ($T_FIRST)" not_before "$N1" "$TS7" "${T_FIRST%s}"
  ok "(7) final notice not before [timers] last ($T_LAST)" not_before "$N2" "$TS7" "${T_LAST%s}"
  ok "(7) A + A2 logs: 2 notices built (signed and queued) in all for these Message-IDs" notices_logged "$M1" "$M2"
  _log "(7) injected per log: $(notices_logged "$M1" "$M2" | tr '\n' ' ')"
  # The preavviso stays due (confirmed marker) for [timers] last - first on every pass of both
  # processes, so the one that did not send it meets it: contention proven on the real rig. The
  # final notice is only met by both when their passes fall within one injection; reported only.
  ok "(7) the preavviso was due on both processes, sent by one, skipped by the other" met_by_other first
  _log "(7) preavviso: $(met_by_other first | tr '\n' ' ')"
  _log "(7) final notice: $(met_by_other last | tr '\n' ' ')"
fi
ok "(7) B's postfix back" inB pf_up "$B/pf"
ok "(7) A's queue flushed" inA ns_exec postqueue -c "$A/pf/etc" -f
ok "(7) anna gets the envelope once B is back" wait_kinds "$ANNA_MD" 1 posta-certificata 60
ok "(7) mario gets the (late) avvenuta-consegna" wait_kinds "$MARIO_MD" 1 avvenuta-consegna 30
ok "(7) A2: second pec-milter stopped (exit 0)" inA pec_milter_down "$A2"
# the timers log nothing on a pass without notices; A2's timer task shows at its shutdown
ok "(7) A and A2 both ran on the Redis state" bash -c "grep -q 'pec-milter ready.*state=Redis' '$A/pec-milter.log' && grep -q 'pec-milter ready.*state=Redis' '$A2/pec-milter.log'"
ok "(7) A2's timer task ran (\"timers: stopped\" at its shutdown)" grep -q 'timers: stopped' "$A2/pec-milter.log"
ok "(7) still exactly 2 notices" count_is "$MARIO_MD" preavviso-errore-consegna 2
ok "(7) A's queue drains" pf_queue_empty "$A/pf" 20

# ------------------------------------------------------------------ (8)
# B's delivery point receipts only genuine envelopes: it verifies what carries PEC marker fields
# as the reception point does. Three forged envelopes go straight to its LMTP port, past B's
# reception point (as a compromised or misrouted hop would hand them over).
# orig8 OUT TOKEN [FROM=$MARIO]: FROM's message to anna (CRLF).
orig8() {
  { printf 'From: <%s>\r\nTo: <%s>\r\nSubject: scenario 8 %s\r\n' "${3:-$MARIO}" "$ANNA" "$2"
    printf 'Message-ID: <%s@client.test>\r\nDate: %s\r\nMIME-Version: 1.0\r\n' "$2" "$(LC_ALL=C date -R)"
    printf 'Content-Type: text/plain; charset=us-ascii\r\n\r\nbody of scenario 8 %s\r\n' "$2"; } > "$1"
}
# env8 OUT ORIG KEYDIR ID [DOMAIN=$A_DOM]: the busta di trasporto of ORIG as provider A (From:
# posta-certificata@DOMAIN), signed with the key and certificate in KEYDIR, PEC id ID.
env8() {
  "$BIN" envelope --key "$3/provider.key" --cert "$3/provider.crt" --gestore "$A_NAME" --domain "${5:-$A_DOM}" \
    --certified "$A_DOM,$B_DOM" --id "$4" "$2" > "$1" && [ -s "$1" ]
}
# forged_logged ID STRING: B's log has the delivery point's warning for PEC id ID, its reason
# containing STRING.
forged_logged() {
  local l; l=$(grep -F 'not a genuine PEC message' "$B/pec-milter.log" | grep -F "pec_id=$1")
  echo "$l"; [ -n "$l" ] && printf '%s' "$l" | grep -qF -- "$2"
}
# receipt_logged ID [LOG=B's]: the log shows a receipt injected for PEC id ID.
receipt_logged() { grep -F 'receipt injected' "${2:-$B/pec-milter.log}" | grep -qF "pec_id=$1"; }
# index_entry SHA1: the index LDIF's entry whose providerCertificateHash is SHA1 (hex, any
# case): prints "providerName<TAB>managedDomains..."; 1 when there is none.
index_entry() {
  awk -v h="$(printf '%s' "$1" | tr 'a-z' 'A-Z')" 'BEGIN { RS = "" }
    { name = ""; doms = ""; hit = 0; n = split($0, L, "\n")
      for (i = 1; i <= n; i++) {
        if (L[i] ~ /^providerName: /) name = substr(L[i], 15)
        if (L[i] ~ /^managedDomains: /) doms = doms " " substr(L[i], 17)
        if (L[i] ~ /^providerCertificateHash: /) hit = (toupper(substr(L[i], 26)) == h) }
      if (h != "" && hit) { print name "\t" substr(doms, 2); found = 1 } }
    END { exit !found }' "$LDIF"
}
# signer_sha1 SIGNED: SHA-1 of the certificate that signed SIGNED (pec-milter inspect).
signer_sha1() { inspect_get "$1" 'd["signature"]["signer_sha1"]'; }
# cert_sha1 CERT: SHA-1 of the PEM certificate CERT, hex.
cert_sha1() { openssl x509 -in "$1" -noout -fingerprint -sha1 | sed -e 's/.*=//' -e 's/://g'; }
# entry_is SHA1 NAME: the index lists the certificate SHA1, as provider NAME.
entry_is() {
  local e; e=$(index_entry "$1") || { echo "no entry of $LDIF has hash '$1'"; return 1; }
  echo "$e"; [ "${e%%$'\t'*}" = "$2" ]
}
# entry_serves SHA1 DOMAIN: the index entry of the certificate SHA1 lists DOMAIN in its
# managedDomains (1 when it does not; 2 when no entry has that certificate).
entry_serves() {
  local e; e=$(index_entry "$1") || { echo "no entry of $LDIF has hash '$1'"; return 2; }
  echo "$e"; [[ " ${e#*$'\t'} " == *" $2 "* ]]
}
# text_has FILE STRING: the first readable text/plain part of FILE (decoded) contains STRING.
text_has() { local t; t=$(text_of "$1"); printf '%s\n' "$t"; printf '%s' "$t" | grep -qF -- "$2"; }
for CASE in a b c d; do
  # (8a), (8b) claim A's domain (sender mario); (8c) B's: From: posta-certificata@$B_DOM (the
  # domain verify_pec checks against the signer's managedDomains, RFC 6109 §7) and sender anna;
  # (8d) A's own From: domain, but a daticert mittente of B's (anna): A writing on behalf of
  # another provider's holder
  DOM8=$A_DOM FROM8=$MARIO
  [ "$CASE" = c ] && DOM8=$B_DOM FROM8=$ANNA
  [ "$CASE" = d ] && FROM8=$ANNA
  TOK=s8$CASE-$RANDOM ID8=opec.s8$CASE.$RANDOM$RANDOM@$DOM8
  orig8 "$O/8$CASE.orig" "$TOK" "$FROM8"
  if [ "$CASE" = a ]; then
    WHAT="A's genuine envelope, smime.p7s stripped" WHY='firma non valida'
    ok "(8a) a genuine envelope of A's (pec-milter envelope, A's key)" env8 "$O/8a.signed" "$O/8a.orig" "$A/demo" "$ID8"
    ok "(8a) it verifies before its signature part is stripped" cms_ok "$O/8a.signed" "$CAA"
    ok "(8a) smime.p7s stripped" strip_signature "$O/8a.signed" "$O/8a.env"
    fail "(8a) the stripped envelope no longer verifies" verify_ok "$O/8a.env"
  elif [ "$CASE" = b ]; then
    WHAT="an envelope signed by R (trusted CA, in no index)" WHY="nell'indice dei gestori"
    ok "(8b) an envelope as A signed by R's key" env8 "$O/8b.env" "$O/8b.orig" "$R" "$ID8"
    ok "(8b) its signature and chain hold (R's CA)" cms_ok "$O/8b.env" "$CAR"
  elif [ "$CASE" = c ]; then
    WHAT="an envelope signed by A (listed) as $B_DOM" WHY="il dominio del mittente $B_DOM non è gestito da $A_NAME"
    ok "(8c) an envelope from anna as $B_DOM signed by A's key" env8 "$O/8c.env" "$O/8c.orig" "$A/demo" "$ID8" "$B_DOM"
    ok "(8c) its signature and chain hold (A's CA)" cms_ok "$O/8c.env" "$CAA"
    ok "(8c) pec-milter verify accepts its signature and chain" verify_ok "$O/8c.env"
    S8=$(signer_sha1 "$O/8c.env")
    ok "(8c) its signer is A's certificate" test -n "$S8" -a "$S8" = "$(cert_sha1 "$A/demo/provider.crt")"
    ok "(8c) the index lists it, as A" entry_is "$S8" "$A_NAME"
    fail "(8c) A's index entry does not serve $B_DOM" entry_serves "$S8" "$B_DOM"
    ok "(8c) B's index entry does" entry_serves "$(cert_sha1 "$B/demo/provider.crt")" "$B_DOM"
    ok "(8c) From: ... <posta-certificata@$B_DOM>" field_is "$O/8c.env" 'd["from"]' "\"Per conto di: $ANNA\" <posta-certificata@$B_DOM>"
    ok "(8c) daticert mittente $ANNA" field_is "$O/8c.env" 'd["daticert"]["mittente"]' "$ANNA"
  elif [ "$CASE" = d ]; then
    WHAT="an envelope signed by A (listed) as $A_DOM for B's holder anna" WHY="il dominio del mittente $B_DOM (daticert) non è gestito da $A_NAME"
    ok "(8d) an envelope from anna as $A_DOM signed by A's key" env8 "$O/8d.env" "$O/8d.orig" "$A/demo" "$ID8"
    ok "(8d) its signature and chain hold (A's CA)" cms_ok "$O/8d.env" "$CAA"
    ok "(8d) From: ... <posta-certificata@$A_DOM> (a domain A serves)" field_is "$O/8d.env" 'd["from"]' "\"Per conto di: $ANNA\" <posta-certificata@$A_DOM>"
    ok "(8d) daticert mittente $ANNA (B's)" field_is "$O/8d.env" 'd["daticert"]["mittente"]' "$ANNA"
  fi
  mark "$MARIO_MD" "$ARIC_MD" "$ANNA_MD"
  ok "(8$CASE) $WHAT straight to B's delivery point (LMTP 2424): 250" \
    inB lmtp_send 2424 "posta-certificata@$DOM8" "$ANNA" "$O/8$CASE.env"
  ok "(8$CASE) anna's Maildir gets a busta di anomalia" wait_kinds "$ANNA_MD" 1 errore 20; AN=$FOUND
  if [ -n "$AN" ]; then
    ok "(8$CASE) anomaly: X-Trasporto: errore" hdr_is "$AN" X-Trasporto errore
    ok "(8$CASE) anomaly: X-VerificaSicurezza: errore" hdr_is "$AN" X-VerificaSicurezza errore
    ok "(8$CASE) anomaly: Subject: ANOMALIA MESSAGGIO: ..." hdr_is "$AN" Subject "ANOMALIA MESSAGGIO: POSTA CERTIFICATA: scenario 8 $TOK"
    ok "(8$CASE) anomaly: its text says why ($WHY)" text_has "$AN" "$WHY"
    ok "(8$CASE) anomaly: openssl cms -verify with B's CA (signed by B)" cms_ok "$AN" "$CAB"
    ok "(8$CASE) anomaly: carries the forged envelope" field_is "$AN" 'd["postacert"]["subject"]' "POSTA CERTIFICATA: scenario 8 $TOK"
  fi
  ok "(8$CASE) anna got nothing else (not the forged envelope itself)" new_count_is "$ANNA_MD" 1
  ok "(8$CASE) B's log names the envelope and why ($WHY)" forged_logged "$ID8" "$WHY"
  # a receipt signed by B's delivery point would reach the sender within a second or two (mario:
  # B's reinjection, A's inbound, A's delivery point; (8c)'s anna: B's reinjection, B's delivery
  # point): wait, and let both queues drain
  sleep 4
  ok "(8$CASE) B's queue drains" pf_queue_empty "$B/pf" 20
  ok "(8$CASE) A's queue drains" pf_queue_empty "$A/pf" 20
  fail "(8$CASE) B injected no receipt for it" receipt_logged "$ID8"
  fail "(8$CASE) A injected no receipt for it" receipt_logged "$ID8" "$A/pec-milter.log"
  ok "(8$CASE) no avvenuta-consegna reaches mario" count_is "$MARIO_MD" avvenuta-consegna 0
  ok "(8$CASE) nothing at all reaches mario" new_count_is "$MARIO_MD" 0
  ok "(8$CASE) nothing reaches A's mailReceipt box" new_count_is "$ARIC_MD" 0
  # (8c)'s daticert mittente is anna: a receipt about it would come back to her Maildir at B
  ok "(8$CASE) no avvenuta-consegna reaches anna" count_is "$ANNA_MD" avvenuta-consegna 0
  ok "(8$CASE) anna still has the busta di anomalia only" new_count_is "$ANNA_MD" 1
done

# ------------------------------------------------------------------ (9)
# Holder to holder in one domain (PEC-RULES §1.1: full processing even so): mario -> luigi,
# both at A. The envelope never passes A's port 25; the reception point takes it in charge
# at the end of mario's submission: accettazione, presa in carico (to A's own mailReceipt),
# then the delivery point's avvenuta consegna.
TOK=s9-$RANDOM
mark "$MARIO_MD" "$ARIC_MD" "$LUIGI_MD" "$ANNA_MD"
submit "$O/9.txt" "scenario 9 $TOK" "$LUIGI"
ok "(9) submission accepted" eod_250 "$O/9.txt"
ok "(9) mario gets the accettazione" wait_kinds "$MARIO_MD" 1 accettazione 20; ACC=$FOUND
ok "(9) luigi gets the envelope" wait_kinds "$LUIGI_MD" 1 posta-certificata 20; ENV=$FOUND
ok "(9) A's mailReceipt box gets A's presa-in-carico" wait_kinds "$ARIC_MD" 1 presa-in-carico 20; PIC=$FOUND
ok "(9) mario gets avvenuta-consegna" wait_kinds "$MARIO_MD" 1 avvenuta-consegna 20; CONS=$FOUND
ok "(9) accettazione came first" first_is "$MARIO_MD" accettazione
if [ -n "$ENV" ]; then
  ok "(9) envelope: openssl cms -verify with A's CA" cms_ok "$ENV" "$CAA"
  ok "(9) envelope: subject carries the token" bash -c "grep -q '$TOK' '$ENV'"
fi
if [ -n "$PIC" ]; then
  ok "(9) presa-in-carico: openssl cms -verify with A's CA" cms_ok "$PIC" "$CAA"
  ok "(9) presa-in-carico: gestore-emittente is A" field_is "$PIC" 'd["daticert"]["gestore_emittente"]' "$A_NAME"
  ok "(9) presa-in-carico: about this envelope" bash -c "grep -q '$TOK' '$PIC'"
fi
if [ -n "$CONS" ]; then
  ok "(9) consegna: openssl cms -verify with A's CA" cms_ok "$CONS" "$CAA"
  ok "(9) consegna: consegna = luigi" field_is "$CONS" 'd["daticert"]["consegna"]' "$LUIGI"
fi
sleep 2
ok "(9) exactly accettazione and avvenuta-consegna for mario" counts_are "$MARIO_MD" accettazione 1 avvenuta-consegna 1
ok "(9) nothing else for mario" new_count_is "$MARIO_MD" 2
ok "(9) one presa-in-carico in A's mailReceipt box" new_count_is "$ARIC_MD" 1
ok "(9) luigi got the envelope once" new_count_is "$LUIGI_MD" 1
ok "(9) nothing went to B" new_count_is "$ANNA_MD" 0
ok "(9) A's queue drains" pf_queue_empty "$A/pf" 20

# ------------------------------------------------------------------ (10)
# An infected envelope from A's holder reaches B (issue 14, "Must show 5"). The "virus" is
# VTOK in the body: B's clamd has a signature for it (clamd_up_token), A's has none, so A
# accepts the submission. The envelope is correct (PEC-RULES §7.3): B sends its presa in carico
# first, then a rilevazione-virus for anna, both to A's mailReceipt; B quarantines the envelope
# and nothing reaches anna. A's reception point turns the rilevazione-virus into the avviso di
# mancata consegna per virus to mario (PEC-RULES §2.11), injected before A's record changes.
# (10b) the same, A's FIRST injection of the avviso failing: B's mail for A is held in B's queue
# (defer_transports = smtp) until A's reinjection listener (its Postfix's 127.0.0.1:10025
# service, A's [reinjection] address) is taken away (master.cf, reload; port 25 keeps running);
# B's queue flushed -> A answers the rilevazione-virus 4xx, B defers it, nothing for mario,
# A's record unchanged; listener back, queues flushed -> exactly one avviso.
# (10b) outlasts T_FIRST: A's pec-milter is restarted with [timers] first / last = 120 s /
# 240 s, so that no 12 h / 24 h notice (scenarios 4 and 7) mixes in.
a_config10() {
  sed -e '/^\[timers\]/,/^\[/{s/^first = .*/first = "120s"/;s/^last = .*/last = "240s"/}' \
    "$A/pec-milter.toml" > "$A/pec-milter-10.toml" &&
  grep -q '^first = "120s"' "$A/pec-milter-10.toml" && grep -q '^last = "240s"' "$A/pec-milter-10.toml" &&
  "$BIN" check-config --config "$A/pec-milter-10.toml" >/dev/null
}
# text_has FILE STRING: the first text/plain part of FILE (text_of) contains STRING
text_has() { local t; t=$(text_of "$1"); printf '%s\n' "$t" | head -3; [[ $t == *"$2"* ]]; }
# token_file OUT: a file holding VTOK (for the clamd pre-checks)
token_file() { printf 'some text\n%s\nmore text\n' "$VTOK" > "$1"; }
# clamd_says_ok / clamd_finds: what the clamd of the current namespace answers for FILE
clamd_says_ok() { local r; r=$(clamd_instream "$1"); echo "$r"; [ "$r" = "stream: OK" ]; }
clamd_finds() { local r; r=$(clamd_instream "$1"); echo "$r"; [[ $r == *"PEC.Test.Token.NDB"*FOUND* ]]; }
# a_status ID: the status(es) of anna in A's record of envelope ID (Redis key pec:env:ID)
a_status() {
  inA ns_exec redis-cli -p "$RIG_REDIS_PORT" --raw GET "pec:env:$1" | python3 -c '
import json, sys
d = json.load(sys.stdin)
print(" ".join(r["status"] for r in d["recipients"] if r["address"].lower() == sys.argv[1].lower()))' "$ANNA"
}
# a_status_in ID "S1 S2...": anna's status in A's record of ID is one of S1 S2...
a_status_in() { local s; s=$(a_status "$1"); echo "A's record of $1: anna is \"$s\""; [ -n "$s" ] && [[ " $2 " == *" $s "* ]]; }
# b_receipts_are ID "KIND...": the receipts B's log shows injected for PEC id ID, in order
b_receipts_are() {
  local k
  k=$(grep -F 'receipt injected' "$B/pec-milter.log" | grep -F "pec_id=$1" | grep -o 'kind=[^ ]*' | sed 's/^kind=//' | tr '\n' ' ')
  echo "B injected for $1: ${k% }"; [ "${k% }" = "$2" ]
}
# a_outbox_is N: A's outbox (the Redis set pec:outbox) holds N entries
a_outbox_is() { local n; n=$(inA ns_exec redis-cli -p "$RIG_REDIS_PORT" --raw ZCARD pec:outbox); echo "A's outbox: $n"; [ "$n" = "$1" ]; }
# a_avvisi_since LINE ID: "receipt injected" lines of kind errore-consegna for ID in A's log past LINE
a_avvisi_since() { log_since "$A/pec-milter.log" "$1" | grep -F 'receipt injected' | grep -F "pec_id=$2" | grep -c 'kind=errore-consegna' || true; }
a_avvisi_is() { local n; n=$(a_avvisi_since "$1" "$2"); echo "A injected $n errore-consegna for $2"; [ "$n" -eq "$3" ]; }
# wait_log FILE LINE ERE [SECS=20]: until FILE past line LINE has a line matching ERE (printed)
wait_log() {
  local i
  for ((i = 0; i < ${4:-20} * 5; i++)); do
    log_since "$1" "$2" | grep -E -- "$3" && return 0
    sleep 0.2
  done
  echo "no line matching '$3' in $1 after ${4:-20}s; its new lines:" >&2; log_since "$1" "$2" | tail -n 15 >&2
  return 1
}
# quarantined_at_b ID [SECS=20]: until exactly one file of B's quarantine names PEC id ID
quarantined_at_b() {
  local i n
  for ((i = 0; i < ${2:-20} * 5; i++)); do
    n=$(grep -rlF -- "$1" "$B/quarantine" 2>/dev/null | grep -c . || true)
    [ "$n" -ge 1 ] && { grep -rlF -- "$1" "$B/quarantine"; [ "$n" -eq 1 ]; return; }
    sleep 0.2
  done
  echo "no file in $B/quarantine names $1" >&2; return 1
}
token_file "$O/10.token"
ok "(10) A's clamd does not know the token (stream: OK)" inA clamd_says_ok "$O/10.token"
ok "(10) B's clamd finds it (PEC.Test.Token.NDB)" inB clamd_finds "$O/10.token"
ok "(10) A: config with [timers] first 120s / last 240s" a_config10
ok "(10) A: pec-milter stopped" inA pec_milter_down "$A"
ok "(10) A: pec-milter up again with the longer timers" inA pec_milter_up "$A" "$A/pec-milter-10.toml"
A_UP_MARIO=$(maildir_count "$MARIO_MD")   # (M): what mario had when this A started
for CASE in a b; do
  P="(10$CASE)" TOK=s10$CASE-$RANDOM
  mark "$MARIO_MD" "$ARIC_MD" "$ANNA_MD" "$BRIC_MD"
  QN=$(find "$B/quarantine" -type f | wc -l)
  BLOG=$(wc -l < "$B/pf/maillog") ALOG=$(wc -l < "$A/pf/maillog") AMLOG=$(wc -l < "$A/pec-milter.log")
  if [ "$CASE" = b ]; then
    ok "$P B holds its mail for A (defer_transports = smtp, reload)" inB pf_defer_transports "$B/pf" smtp
  fi
  inA swaks_submit "$MARIO" "$MARIO_PW" "$MARIO" "$ANNA" --header "Subject: scenario 10$CASE $TOK" \
    --body "body of scenario 10$CASE $TOK: $VTOK" > "$O/10$CASE.txt" 2>&1
  ok "$P submission accepted (A's clamd finds nothing)" eod_250 "$O/10$CASE.txt"
  ok "$P mario gets the accettazione" wait_kinds "$MARIO_MD" 1 accettazione 20; ACC=$FOUND
  ID10=
  [ -n "$ACC" ] && ID10=$(inspect_get "$ACC" 'd["daticert"]["identificativo"]')
  _log "$P PEC id: $ID10"
  ok "$P B quarantines the envelope (one file names its PEC id)" quarantined_at_b "${ID10:-no-id}" 20
  if [ "$CASE" = b ]; then
    ok "$P B's presa-in-carico and rilevazione-virus wait in B's queue" pf_queue_count_is "$B/pf" 2 20
    ok "$P A's reinjection listener taken away (master.cf 127.0.0.1:$RIG_REINJECT_PORT/inet off, reload)" \
      inA pf_service_off "$A/pf" "127.0.0.1:$RIG_REINJECT_PORT/inet"
    ok "$P A's port 25 still listens (B reaches $IPA:25)" inB wait_port $IPA 25 5
    ok "$P B's queue flushed: its mail for A goes now" inB ns_exec postqueue -c "$B/pf/etc" -f
    ok "$P A's mailReceipt box gets B's presa-in-carico (A's port 25 works)" wait_kinds "$ARIC_MD" 1 presa-in-carico 20
    ok "$P A takes B's rilevazione-virus (delivered to A's mailReceipt box)" wait_kinds "$ARIC_MD" 1 rilevazione-virus 20
    ok "$P A signed the avviso and queued it in its outbox (log)" \
      wait_log "$A/pec-milter.log" "$AMLOG" "receipt signed and queued.*pec_id=$ID10.*kind=errore-consegna" 10
    ok "$P A could not inject it: it stays in the outbox (log)" \
      wait_log "$A/pec-milter.log" "$AMLOG" "injection failed: the message stays in the outbox.*pec_id=$ID10 kind=errore-consegna" 10
    ok "$P A's outbox (Redis pec:outbox) holds it" a_outbox_is 1
    ok "$P A's /metrics: outbox depth 1" metric_is A pec_milter_outbox_messages 1
    ok "$P B's queue drains (nothing deferred: A answered 250)" pf_queue_empty "$B/pf" 20
    sleep 2
    ok "$P mario has no notice while A cannot inject it (the accettazione only)" new_count_is "$MARIO_MD" 1
    ok "$P A injected no avviso" a_avvisi_is "$AMLOG" "$ID10" 0
    ok "$P A's record: anna errore already (the avviso is safe in the outbox)" a_status_in "$ID10" errore
    ok "$P A's reinjection listener back (reload)" inA pf_service_on "$A/pf"
    ok "$P A's outbox pass sends the avviso (log)" \
      wait_log "$A/pec-milter.log" "$AMLOG" "receipt injected \(outbox pass.*pec_id=$ID10 kind=errore-consegna" 30
    ok "$P A's outbox is empty" a_outbox_is 0
    ok "$P A's /metrics: outbox depth 0" metric_is A pec_milter_outbox_messages 0
    ok "$P B's hold lifted (defer_transports removed, reload)" inB pf_defer_transports "$B/pf"
    ok "$P B's queue flushed" inB ns_exec postqueue -c "$B/pf/etc" -f
    ok "$P A's queue flushed" inA ns_exec postqueue -c "$A/pf/etc" -f
  fi
  ok "$P A's mailReceipt box gets B's presa-in-carico" wait_kinds "$ARIC_MD" 1 presa-in-carico 20; PIC=$FOUND
  ok "$P A's mailReceipt box gets B's rilevazione-virus" wait_kinds "$ARIC_MD" 1 rilevazione-virus 30; RV=$FOUND
  ok "$P mario gets the avviso di mancata consegna per virus" wait_kinds "$MARIO_MD" 1 errore-consegna 30; AV=$FOUND
  ok "$P B injected a presa-in-carico, then a rilevazione-virus (once each)" \
    b_receipts_are "$ID10" "presa-in-carico rilevazione-virus"
  if [ -n "$PIC" ]; then
    ok "$P presa-in-carico: openssl cms -verify with B's CA" cms_ok "$PIC" "$CAB"
    ok "$P presa-in-carico: about this envelope" field_is "$PIC" 'd["daticert"]["identificativo"]' "$ID10"
    ok "$P presa-in-carico: gestore-emittente is B" field_is "$PIC" 'd["daticert"]["gestore_emittente"]' "$B_NAME"
  fi
  if [ -n "$RV" ]; then
    ok "$P rilevazione-virus: openssl cms -verify with B's CA" cms_ok "$RV" "$CAB"
    ok "$P rilevazione-virus: about this envelope" field_is "$RV" 'd["daticert"]["identificativo"]' "$ID10"
    ok "$P rilevazione-virus: consegna = anna" field_is "$RV" 'd["daticert"]["consegna"]' "$ANNA"
    ok "$P rilevazione-virus: errore virus" field_is "$RV" 'd["daticert"]["errore"]' virus
    ok "$P rilevazione-virus: gestore-emittente is B" field_is "$RV" 'd["daticert"]["gestore_emittente"]' "$B_NAME"
    _log "$P rilevazione-virus: errore-esteso $(inspect_get "$RV" 'd["daticert"]["errore_esteso"]')"
  fi
  if [ -n "$AV" ]; then
    ok "$P avviso: openssl cms -verify with A's CA" cms_ok "$AV" "$CAA"
    ok "$P avviso: X-Ricevuta: errore-consegna" hdr_is "$AV" X-Ricevuta errore-consegna
    ok "$P avviso: X-VerificaSicurezza: errore" hdr_is "$AV" X-VerificaSicurezza errore
    ok "$P avviso: daticert errore = virus" field_is "$AV" 'd["daticert"]["errore"]' virus
    ok "$P avviso: consegna = anna" field_is "$AV" 'd["daticert"]["consegna"]' "$ANNA"
    ok "$P avviso: about this envelope" field_is "$AV" 'd["daticert"]["identificativo"]' "$ID10"
    ok "$P avviso: gestore-emittente is A" field_is "$AV" 'd["daticert"]["gestore_emittente"]' "$A_NAME"
    ok "$P avviso: errore-esteso names B's finding (PEC.Test.Token)" \
      field_is "$AV" '"PEC.Test.Token" in (d["daticert"]["errore_esteso"] or "")' True
    ok "$P avviso: subject AVVISO DI MANCATA CONSEGNA PER VIRUS" \
      field_is "$AV" 'd["subject"].startswith("AVVISO DI MANCATA CONSEGNA PER VIRUS: ")' True
    ok "$P avviso: text \"Avviso di mancata consegna per virus\"" text_has "$AV" "Avviso di mancata consegna per virus"
    ok "$P avviso: the original is not included (no postacert)" field_is "$AV" 'd["postacert"] is None' True
  fi
  sleep 3
  ok "$P mario: exactly accettazione + one avviso, no consegna" \
    counts_are "$MARIO_MD" accettazione 1 errore-consegna 1 avvenuta-consegna 0
  ok "$P nothing else for mario" new_count_is "$MARIO_MD" 2
  ok "$P A injected exactly one avviso for it" a_avvisi_is "$AMLOG" "$ID10" 1
  ok "$P A's mailReceipt box: the presa-in-carico and one rilevazione-virus" \
    counts_are "$ARIC_MD" presa-in-carico 1 rilevazione-virus 1
  ok "$P nothing else in A's mailReceipt box" new_count_is "$ARIC_MD" 2
  ok "$P nothing reaches anna" new_count_is "$ANNA_MD" 0
  ok "$P nothing in B's mailReceipt box" new_count_is "$BRIC_MD" 0
  ok "$P B's quarantine: one file more" quarantine_count_is "$B/quarantine" $((QN + 1))
  ok "$P A's record: anna errore" a_status_in "$ID10" errore
  ok "$P B's queue drains" pf_queue_empty "$B/pf" 20
  ok "$P A's queue drains" pf_queue_empty "$A/pf" 20
done

# ------------------------------------------------------------------ (11)
# A large avvenuta consegna completa waits in B's outbox (issue 16): B's reinjection listener
# is taken away, mario sends anna a 3 MB message (completa: the receipt carries it whole). B
# stores it in anna's mailbox, signs the receipt and queues it in the same write that marks it
# issued: the entry in B's state store (embedded SQLite) names a synced file in B's
# [delivery] outbox instead of holding 3 MB; B's presa in carico waits there too (inline).
# Mario has only the accettazione; listener back -> B's outbox pass sends both, once, the
# completa verifies and carries the original byte for byte, the file is gone, the outbox empty.
P="(11)" TOK=s11-$RANDOM
mark "$MARIO_MD" "$ANNA_MD" "$ARIC_MD"
BMLOG=$(wc -l < "$B/pec-milter.log")
python3 - "$O/11.eml" "$MARIO" "$ANNA" "$TOK" <<'PY'
import base64, os, sys
path, mario, anna, tok = sys.argv[1:5]
blob = base64.encodebytes(os.urandom(3 * 1024 * 1024)).replace(b"\n", b"\r\n")
with open(path, "wb") as f:
    f.write(("From: <%s>\r\nTo: <%s>\r\nSubject: scenario 11 %s\r\nMessage-ID: <%s@pec.demo.test>\r\n"
             "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b-%s\"\r\n\r\n"
             "--b-%s\r\nContent-Type: text/plain\r\n\r\nsee the attachment %s\r\n"
             "--b-%s\r\nContent-Type: application/octet-stream; name=\"big.bin\"\r\n"
             "Content-Transfer-Encoding: base64\r\n\r\n" % (mario, anna, tok, tok, tok, tok, tok, tok)).encode())
    f.write(blob)
    f.write(("--b-%s--\r\n" % tok).encode())
PY
b_outbox_rows() { sqlite3 "$B/state/state.sqlite" "SELECT count(*) FROM outbox${1:+ WHERE $1}"; }
b_outbox_is() { local n; n=$(b_outbox_rows "${2:-}"); echo "B's outbox: $n${2:+ ($2)}"; [ "$n" = "$1" ]; }
b_msg_files_are() { local n; n=$(find "$B/outbox" -name '*.msg' | wc -l); echo "B's outbox directory: $n .msg"; [ "$n" -eq "$1" ]; }
ok "$P B's reinjection listener taken away (master.cf, reload)" \
  inB pf_service_off "$B/pf" "127.0.0.1:$RIG_REINJECT_PORT/inet"
inA swaks_submit "$MARIO" "$MARIO_PW" "$MARIO" "$ANNA" --data "@$O/11.eml" > "$O/11.txt" 2>&1
ok "$P 3 MB submission accepted" eod_250 "$O/11.txt"
ok "$P mario gets the accettazione" wait_kinds "$MARIO_MD" 1 accettazione 20; ACC=$FOUND
ID11=
[ -n "$ACC" ] && ID11=$(inspect_get "$ACC" 'd["daticert"]["identificativo"]' "$CAA")
ok "$P anna's mailbox at B gets the envelope" wait_kinds "$ANNA_MD" 1 posta-certificata 30
ok "$P B signed the completa and queued it as a file (log: large=true)" \
  wait_log "$B/pec-milter.log" "$BMLOG" "receipt signed and queued pec_id=${ID11:-none} .*kind=avvenuta-consegna.*large=true" 20
ok "$P B's outbox holds the presa in carico and the completa" b_outbox_is 2
ok "$P B's /metrics: outbox depth 2" metric_is B pec_milter_outbox_messages 2
ok "$P one entry names a file (the completa), not its bytes" \
  b_outbox_is 1 "CAST(entry AS TEXT) LIKE '%\"file\":%' AND length(entry) < 4096"
ok "$P B's outbox directory holds that one file (over 3 MB)" bash -c \
  "f=\$(find '$B/outbox' -name '*.msg'); echo \"\$f\"; [ \$(printf '%s\n' \"\$f\" | grep -c .) -eq 1 ] && [ \$(stat -c %s \"\$f\") -gt 3000000 ]"
sleep 2
ok "$P mario has only the accettazione while B cannot inject" new_count_is "$MARIO_MD" 1
ok "$P B's reinjection listener back (reload)" inB pf_service_on "$B/pf"
ok "$P mario gets the avvenuta-consegna" wait_kinds "$MARIO_MD" 1 avvenuta-consegna 40; AC=$FOUND
ok "$P A's mailReceipt box gets B's presa-in-carico" wait_kinds "$ARIC_MD" 1 presa-in-carico 40
if [ -n "$AC" ]; then
  ok "$P completa: openssl cms -verify with B's CA" cms_ok "$AC" "$CAB"
  ok "$P completa: about this envelope" field_is "$AC" 'd["daticert"]["identificativo"]' "${ID11:-none}"
  ok "$P completa: ricevuta tipo completa" field_is "$AC" 'd["daticert"]["ricevuta"]' completa
  ok "$P completa: postacert carries the original byte for byte" python3 - "$AC" "$O/11.eml" <<'PY'
import email, sys
from email import policy
m = email.message_from_binary_file(open(sys.argv[1], "rb"), policy=policy.compat32)
orig = open(sys.argv[2], "rb").read()
want = orig[orig.index(b"\r\n--b-"):]  # the body from the first boundary on
for part in m.walk():
    if part.get_content_type() == "message/rfc822" or part.get_filename() == "postacert.eml":
        p = part.get_payload()
        inner = p[0] if isinstance(p, list) else email.message_from_string(p)
        raw = inner.as_bytes() if hasattr(inner, "as_bytes") else bytes(inner)
        raw = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        print("postacert: %d bytes, original body: %d bytes" % (len(raw), len(want)))
        sys.exit(0 if want in raw else 1)
sys.exit("no postacert")
PY
fi
ok "$P B's outbox pass sent them (log)" \
  wait_log "$B/pec-milter.log" "$BMLOG" "receipt injected \\(outbox pass.*pec_id=${ID11:-none} kind=avvenuta-consegna" 10
ok "$P B's outbox is empty" b_outbox_is 0
ok "$P B's /metrics: outbox depth 0" metric_is B pec_milter_outbox_messages 0
ok "$P the file is gone" b_msg_files_are 0
sleep 2
ok "$P mario: accettazione + one avvenuta-consegna, nothing else" \
  counts_are "$MARIO_MD" accettazione 1 avvenuta-consegna 1
ok "$P nothing else for mario" new_count_is "$MARIO_MD" 2
b_kinds_sorted() { grep -F 'receipt injected' "$B/pec-milter.log" | grep -F "pec_id=$1" | grep -o 'kind=[^ ]*' | sed 's/^kind=//' | sort | tr '\n' ' '; }
ok "$P B injected one presa-in-carico and one avvenuta-consegna (in either order)" bash -c \
  "k='$(b_kinds_sorted "${ID11:-none}")'; echo \"B injected: \$k\"; [ \"\$k\" = 'avvenuta-consegna presa-in-carico ' ]"

# ------------------------------------------------------------------ (L)
# The legal message log (issue 15): every node's chain verifies after all of the above (A's
# pec-milter was restarted in between: its chain continues); the holder's extract of (1)
# across A's and B's logs lists accettazione (A), presa in carico and avvenuta consegna (B),
# in time order, with every field; one changed byte is found and named.
LOGS=("$A/log" "$A2/log" "$B/log")
ok "(L) log verify: A's, A2's and B's chains hold" "$BIN" log verify "${LOGS[@]}"
ok "(L) extract of (1) (mario -> anna, today, its subject), JSON" bash -c \
  "'$BIN' log extract --sender '$MARIO' --recipient '$ANNA' --date \"\$(TZ=Europe/Rome date +%F)\" --subject '$S1_SUBJ' --json ${LOGS[*]} > '$O/L.json'"
ok "(L) extract of (1): accettazione, busta (A), presa-in-carico, avvenuta-consegna (B) and both as received at A, in time order, every field" \
  python3 - "$O/L.json" "$MARIO" "$ANNA" "$S1_SUBJ" "$A_NAME" "$B_NAME" <<'PY'
import json, sys
recs = json.load(open(sys.argv[1])); mario, anna, subj, a_name, b_name = sys.argv[2:7]
seen = [(r["event"], r["node"], r["outcome"]) for r in recs]
print(seen)
# at A: what it issued, then B's receipts as received; at B: what B issued
assert [(e, o) for e, n, o in seen if n == "A" and e != "ricevuta-ricevuta"] == [("accettazione", "ok"), ("busta-trasporto", "ok")], seen
assert sorted(o for e, n, o in seen if n == "A" and e == "ricevuta-ricevuta") == ["avvenuta-consegna", "presa-in-carico"], seen
assert [e for e, n, o in seen if n == "B"] == ["presa-in-carico", "avvenuta-consegna"], seen
for r in recs:
    assert r["sender"] == mario and r["subject"] == subj, r
    assert [(d["address"], d["tipo"]) for d in r["recipients"]] == [(anna, "certificato")], r
    assert r["pec_id"] == recs[0]["pec_id"] and r["pec_id"].endswith("@pec.demo.test"), r
    assert r["msgid"] and r["local"] and r["hash"] and r["prev"], r
    # the sending provider: A for what concerns A's envelope, B for the receipts B signed
    assert r["provider"] == (b_name if r["event"] == "ricevuta-ricevuta" else a_name), r
    assert r["related"], r
cons = [r for r in recs if r["event"] == "avvenuta-consegna"][0]
assert cons["about"] == anna and cons["outcome"] == "completa", cons
times = [r["time"] for r in recs]
assert times == sorted(times), times
PY
ok "(L) extract as text names the events" bash -c \
  "'$BIN' log extract --sender '$MARIO' --recipient '$ANNA' --date \"\$(TZ=Europe/Rome date +%F)\" --subject '$S1_SUBJ' ${LOGS[*]} | grep -c -E '^[0-9-]+T[^ ]+  (accettazione|presa-in-carico|avvenuta-consegna)\$' | grep -qx 3"
ok "(L) the extract issued signed (--sign, A's key, to mario)" bash -c \
  "'$BIN' log extract --sender '$MARIO' --recipient '$ANNA' --date \"\$(TZ=Europe/Rome date +%F)\" --subject '$S1_SUBJ' --sign --config '$A/pec-milter.toml' ${LOGS[*]} > '$O/Lsigned.eml'"
ok "(L) ... pec-milter verify accepts it (A's CA)" "$BIN" verify --trust "$CAA" "$O/Lsigned.eml"
ok "(L) ... openssl cms -verify accepts it (A's CA)" cms_ok "$O/Lsigned.eml" "$CAA"
ok "(L) ... it carries the events, to mario" python3 - "$O/Lsigned.eml" "$MARIO" <<'PY'
import email, sys
m = email.message_from_binary_file(open(sys.argv[1], "rb"))
assert m["To"] == "<%s>" % sys.argv[2], m["To"]
text = [p for p in m.walk() if p.get_content_type() == "text/plain"][0].get_payload(decode=True).decode()
for e in ("accettazione", "presa-in-carico", "avvenuta-consegna"):
    assert "  " + e + "\n" in text, e
print(m["Subject"])
PY
rm -rf "$O/Lcopy"; cp -a "$B/log" "$O/Lcopy"
LF=$(ls "$O"/Lcopy/*/*.jsonl | head -1)
sed -i '2s/pec.demo.test/pec.demO.test/' "$LF"
fail "(L) one byte changed in a copy of B's log: log verify fails (exit 1)" "$BIN" log verify "$O/Lcopy"
ok "(L) ... and names the file and line" bash -c "'$BIN' log verify '$O/Lcopy' 2>&1 | grep -qF '${LF##*/}:2: its hash does not match'"

# The daily seal: `log seal` / SIGUSR1 closes each node's current file now (as midnight does); its TSA
# timestamps it; openssl ts -verify accepts each reply against its file.
# seal_wait DIR N: DIR (a node's log) holds N seals (.tsr) within 40 s
seal_wait() {
  local i n
  for ((i = 0; i < 400; i++)); do
    n=$(find "$1" -name '*.tsr' | wc -l); [ "$n" -ge "$2" ] && { echo "$n seals"; return 0; }
    sleep 0.1
  done
  echo "$(find "$1" -name '*.tsr' | wc -l) seals after 40 s, expected $2"; return 1
}
# seals_verify DIR TSADIR: every seal of DIR passes openssl ts -verify against its file
seals_verify() {
  local t n=0
  for t in $(find "$1" -name '*.tsr'); do tsa_verify "$t" "${t%.tsr}" "$2" || return 1; n=$((n + 1)); done
  echo "$n verified"; [ "$n" -gt 0 ]
}
# A: `log seal` (it signals the daemon named in the log's lock, waits for the seal); B: the
# signal itself
ok "(L) log seal --config A: A's current file closed and sealed by A's pec-milter" bash -c \
  "'$BIN' log seal --config '$A/pec-milter.toml' | tee '$O/Lseal.txt'; grep -q '^sealed .*\.tsr\$' '$O/Lseal.txt' && grep -q 'by pec-milter, pid $(cat "$A/pec-milter.pid")' '$O/Lseal.txt'"
ok "(L) SIGUSR1 to B's pec-milter" kill -USR1 "$(cat "$B/pec-milter.pid")"
ok "(L) A's closed file sealed" seal_wait "$A/log" 1
ok "(L) B's closed file sealed" seal_wait "$B/log" 1
ok "(L) openssl ts -verify accepts A's seal against its file (A's TSA CA)" seals_verify "$A/log" "$TSAA"
ok "(L) openssl ts -verify accepts B's seal against its file (B's TSA CA)" seals_verify "$B/log" "$TSAB"
ok "(L) log verify --tsa-trust --require-seals: A" "$BIN" log verify --tsa-trust "$TSAA/tsa-ca.pem" --require-seals "$A/log"
ok "(L) log verify --tsa-trust --require-seals: B" "$BIN" log verify --tsa-trust "$TSAB/tsa-ca.pem" --require-seals "$B/log"
fail "(L) B's seal does not verify with A's TSA CA (the trust is checked)" \
  "$BIN" log verify --tsa-trust "$TSAA/tsa-ca.pem" --require-seals "$B/log"
# The TSA down: mail still flows, the closed file waits, the seal is made once it is back.
ok "(L) A's TSA stopped" inA tsa_down "$TSAA"
TOK=sL-$RANDOM
mark "$MARIO_MD" "$ANNA_MD"
submit "$O/L.txt" "scenario L $TOK" "$ANNA"
ok "(L) TSA down: a submission is accepted" eod_250 "$O/L.txt"
ok "(L) TSA down: mario gets the accettazione" wait_kinds "$MARIO_MD" 1 accettazione 20
ok "(L) TSA down: anna gets the envelope" wait_kinds "$ANNA_MD" 1 posta-certificata 20
fail "(L) TSA down: log seal --wait 3 closes A's file but reports it unsealed (exit 1)" \
  "$BIN" log seal --config "$A/pec-milter.toml" --wait 3
ok "(L) A logs the failed seal, loudly" bash -c "sleep 2; grep -q 'SEAL FAILED' '$A/pec-milter.log'"
fail "(L) TSA down: log verify --require-seals fails on A's unsealed closed file" \
  "$BIN" log verify --tsa-trust "$TSAA/tsa-ca.pem" --require-seals "$A/log"
ok "(L) A's TSA up again" inA tsa_up "$TSAA" "$RIG_TSA_PORT"
ok "(L) the waiting file is sealed once the TSA is back" seal_wait "$A/log" 2
ok "(L) openssl ts -verify accepts both of A's seals" seals_verify "$A/log" "$TSAA"
ok "(L) log verify --tsa-trust --require-seals: A again" "$BIN" log verify --tsa-trust "$TSAA/tsa-ca.pem" --require-seals "$A/log"
# Retention (30 months): files with old dates made here go, nothing younger does.
OLDF=$A/log/A/000000_2024-06-06.jsonl
printf '{}\n' > "$OLDF"; printf 'x' > "$OLDF.tsr"
mkdir -p "$A/quarantine"; printf 'old' > "$A/quarantine/old-test.eml"; printf 'young' > "$A/quarantine/young-test.eml"
touch -d "$(date -d '-31 months' +%F)" "$A/quarantine/old-test.eml"
touch -d "$(date -d '-29 months' +%F)" "$A/quarantine/young-test.eml"
NLOG=$(find "$A/log/A" -name '0000[0-9][1-9]_*' | wc -l)
ok "(L) log retain --dry-run lists the old file, its seal and the old quarantined message" bash -c \
  "'$BIN' log retain --config '$A/pec-milter.toml' --dry-run > '$O/Lret.txt' 2>&1; cat '$O/Lret.txt'; [ \$(grep -c '^would remove' '$O/Lret.txt') = 3 ] && grep -q 'old-test.eml' '$O/Lret.txt' && [ -e '$OLDF' ]"
ok "(L) log retain removes exactly those three" bash -c \
  "'$BIN' log retain --config '$A/pec-milter.toml' | tee /dev/stderr | [ \$(grep -c '^removed') = 3 ]"
ok "(L) ... the old ones are gone" bash -c "[ ! -e '$OLDF' ] && [ ! -e '$OLDF.tsr' ] && [ ! -e '$A/quarantine/old-test.eml' ]"
ok "(L) ... nothing younger went (the 29-month message, every current log file)" bash -c \
  "[ -e '$A/quarantine/young-test.eml' ] && [ \$(find '$A/log/A' -name '0000[0-9][1-9]_*' | wc -l) = $NLOG ]"
ok "(L) A's chain still verifies" "$BIN" log verify --tsa-trust "$TSAA/tsa-ca.pem" --require-seals "$A/log"

# ------------------------------------------------------------------ (M)
# Metrics and health (issue 17). Each provider's operations endpoint ([metrics] listen, curl in
# its namespace) against what the script and the logs know: A counts since its restart in (10)
# (a new process), B since the start. Receipts in flight from (L) are waited for (queues drained,
# counts compared until they agree, 20 s at most).
P="(M)"
# log_from_start D: D's pec-milter log from its last start ("pec-milter ready") on
log_from_start() {
  local n; n=$(grep -n 'pec-milter ready' "$1/pec-milter.log" | tail -1 | cut -d: -f1)
  tail -n +"${n:-1}" "$1/pec-milter.log"
}
# logged D STAGE KIND: that process's log lines for receipts of KIND at STAGE (queued: "... signed
# and queued", the timers' "timers: KIND signed and queued"; injected: "receipt injected")
logged() {
  if [ "$2" = queued ]; then
    log_from_start "$1" | grep -E "signed and queued" | grep -cE "kind=$3( |\$)|timers: $3 signed and queued" || true
  else
    log_from_start "$1" | grep -F 'receipt injected' | grep -cE "kind=$3( |\$)" || true
  fi
}
RKINDS="accettazione non-accettazione presa-in-carico avvenuta-consegna errore-consegna preavviso-errore-consegna rilevazione-virus"
# receipts_match_log P D: for every kind and stage, P's pec_milter_receipts_total equals D's log
# lines (prints each pair); tried again for 20 s while they differ
receipts_match_log() {
  local i k st m l out bad
  for ((i = 0; i < 40; i++)); do
    out= bad=0
    for k in $RKINDS; do
      for st in queued injected; do
        m=$(metric "$1" "pec_milter_receipts_total{kind=\"$k\",stage=\"$st\"}") || m=absent
        l=$(logged "$2" "$st" "$k")
        out+="$k $st: metric $m, log $l"$'\n'
        [ "$m" = "$l" ] || bad=1
      done
    done
    [ "$bad" = 0 ] && break
    sleep 0.5
  done
  printf '%s' "$out"; [ "$bad" = 0 ]
}
# issued FILE...: "kind<TAB>gestore-emittente" of each message (one pec-milter inspect --json)
issued() {
  [ $# -gt 0 ] || return 0
  "$BIN" inspect --json "$@" 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    if line.strip():
        d = json.loads(line)
        print("%s\t%s" % (d.get("kind"), (d.get("daticert") or {}).get("gestore_emittente") or "-"))'
}
# issued_count MAILDIR KIND GESTORE [FROM=0]: messages of KIND issued by GESTORE in MAILDIR (past
# its first FROM files)
issued_count() {
  # shellcheck disable=SC2046
  issued $(maildir_files "$1" | tail -n +"$(( ${4:-0} + 1 ))") | awk -F'\t' -v k="$2" -v g="$3" '$1 == k && $2 == g' | wc -l
}
# metric_is_count P SERIES MAILDIR KIND GESTORE [FROM]: the metric equals that count (20 s to agree)
metric_is_count() {
  local i m n
  for ((i = 0; i < 40; i++)); do
    m=$(metric "$1" "$2") || m=absent
    n=$(issued_count "$3" "$4" "$5" "${6:-0}")
    [ "$m" = "$n" ] && [ "$n" -gt 0 ] && { echo "$1: $2 = $m = $4 by $5 in $3"; return 0; }
    sleep 0.5
  done
  echo "$1: $2 = $m, but $n x $4 by $5 in $3"; return 1
}
# health_is P CODE [DEP STATE...]: P's /health answers CODE, each DEP in STATE (JSON body printed)
health_is() {
  local p=$1 want=$2 code; shift 2
  code=$(scrape "$p" /health "$O/M-health-$p.json") || return 1
  cat "$O/M-health-$p.json"; echo "HTTP $code"
  [ "$code" = "$want" ] && python3 - "$O/M-health-$p.json" "$@" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
want = sys.argv[2:]
for dep, state in zip(want[::2], want[1::2]):
    got = d["dependencies"].get(dep, {}).get("state")
    assert got == state, (dep, got, state)
assert d["status"] == ("up" if all(v["state"] != "down" for v in d["dependencies"].values()) else "down"), d
PY
}
ALL_UP="state-store up clamd up index up signing-key up reinjection up message-log up tsa up"
ok "$P A's queue drains" pf_queue_empty "$A/pf" 30
ok "$P B's queue drains" pf_queue_empty "$B/pf" 30
ok "$P A: /metrics in the Prometheus text format (0.0.4)" bash -c \
  "ip netns exec '$NSA' curl -sS -D - -o /dev/null http://127.0.0.1:$METRICS_PORT/metrics | grep -qi '^content-type: text/plain; version=0.0.4'"
ok "$P A: build_info names the version" metric_is A "pec_milter_build_info{version=\"$("$BIN" --version | awk '{ print $2 }')\"}" 1
ok "$P A: every receipt kind queued and injected = A's log lines since its restart" receipts_match_log A "$A"
ok "$P B: every receipt kind queued and injected = B's log lines" receipts_match_log B "$B"
N_ACC=$(issued_count "$MARIO_MD" accettazione "$A_NAME" "$A_UP_MARIO")
_log "$P accettazioni in mario's Maildir since A's restart: $N_ACC"
ok "$P A: accettazione queued = those in mario's Maildir since A's restart (> 0)" metric_is_count A \
  'pec_milter_receipts_total{kind="accettazione",stage="queued"}' "$MARIO_MD" accettazione "$A_NAME" "$A_UP_MARIO"
ok "$P A: accettazione injected = the same" metric_is_count A \
  'pec_milter_receipts_total{kind="accettazione",stage="injected"}' "$MARIO_MD" accettazione "$A_NAME" "$A_UP_MARIO"
ok "$P A: access accepts = its accettazioni" metric_is A 'pec_milter_messages_total{role="access",outcome="accept"}' "$N_ACC"
ok "$P A: access end-of-message latencies timed, one per answer at least" metric_in A \
  'pec_milter_eom_duration_seconds_count{role="access"}' "$N_ACC" 100000
ok "$P B: presa-in-carico injected = B's in A's mailReceipt box" metric_is_count B \
  'pec_milter_receipts_total{kind="presa-in-carico",stage="injected"}' "$ARIC_MD" presa-in-carico "$B_NAME"
ok "$P B: rilevazione-virus injected = B's in A's mailReceipt box" metric_is_count B \
  'pec_milter_receipts_total{kind="rilevazione-virus",stage="injected"}' "$ARIC_MD" rilevazione-virus "$B_NAME"
ok "$P B: avvenuta-consegna injected = B's in mario's Maildir" metric_is_count B \
  'pec_milter_receipts_total{kind="avvenuta-consegna",stage="injected"}' "$MARIO_MD" avvenuta-consegna "$B_NAME"
ok "$P B: errore-consegna injected = B's in mario's Maildir" metric_is_count B \
  'pec_milter_receipts_total{kind="errore-consegna",stage="injected"}' "$MARIO_MD" errore-consegna "$B_NAME"
N_AN=$(grep -c 'not a genuine PEC message: stored as a busta di anomalia' "$B/pec-milter.log" || true)
ok "$P B: delivery anomalies = the forged envelopes its log names ((8): $N_AN)" metric_is B \
  'pec_milter_messages_total{role="delivery",outcome="anomaly"}' "$N_AN"
ok "$P B: (8) made 4 of them" test "$N_AN" -eq 4
ok "$P B: genuine PEC taken at its reception point" metric_in B 'pec_milter_messages_total{role="reception",outcome="accept"}' 1 100000
ok "$P B: its delivery point timed" metric_in B 'pec_milter_eom_duration_seconds_count{role="delivery"}' 1 100000
N_IF=$(log_from_start "$B" | grep -c 'injection failed' || true)
ok "$P B: reinjection errors = its \"injection failed\" lines ((11): $N_IF)" metric_is B \
  'pec_milter_dependency_errors_total{dependency="reinjection"}' "$N_IF"
N_IF=$(log_from_start "$A" | grep -c 'injection failed' || true)
ok "$P A: reinjection errors = its \"injection failed\" lines since its restart ((10b): $N_IF)" metric_is A \
  'pec_milter_dependency_errors_total{dependency="reinjection"}' "$N_IF"
N_SF=$(log_from_start "$A" | grep -c 'SEAL FAILED' || true)
ok "$P A: TSA failures = its \"SEAL FAILED\" lines ((L): $N_SF)" metric_is A pec_milter_tsa_failures_total "$N_SF"
ok "$P A: ... at least one" test "$N_SF" -ge 1
ok "$P B: no TSA failure" metric_is B pec_milter_tsa_failures_total 0
ok "$P A: no closed log file waits for its seal" metric_is A pec_milter_log_unsealed_files 0
ok "$P A: the last good seal pass is recent (< 120 s)" metric_in A pec_milter_log_seal_age_seconds 0 120
ok "$P B: the last good seal pass is recent (< 120 s)" metric_in B pec_milter_log_seal_age_seconds 0 120
RUN=$(awk -v a="$T0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%d", b - a + 1 }')
ok "$P A: the index copy is as old as A's process at most" metric_in A pec_milter_index_age_seconds 0 "$RUN"
ok "$P B: the index copy is as old as the run at most" metric_in B pec_milter_index_age_seconds 0 "$RUN"
ok "$P A: outbox empty" metric_is A pec_milter_outbox_messages 0
ok "$P B: outbox empty" metric_is B pec_milter_outbox_messages 0
ok "$P A: nothing tracked (every recipient has its outcome)" metric_is A pec_milter_tracked_envelopes 0
ok "$P B: nothing tracked" metric_is B pec_milter_tracked_envelopes 0
# shellcheck disable=SC2086
ok "$P A: /health 200, every dependency its configuration uses up" health_is A 200 $ALL_UP
# shellcheck disable=SC2086
ok "$P B: /health 200, every dependency its configuration uses up" health_is B 200 $ALL_UP
ok "$P A: /nothing is 404" bash -c "[ \"\$(ip netns exec '$NSA' curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:$METRICS_PORT/nothing)\" = 404 ]"
# A's clamd stopped: the next submission finds it down (4xx), and so does /health
CLAMD_ERR=$(metric A 'pec_milter_dependency_errors_total{dependency="clamd"}')
TEMPF=$(metric A 'pec_milter_messages_total{role="access",outcome="tempfail"}')
ok "$P A's clamd stopped" inA clamd_down "$A/clamd"
ok "$P ... /health still 200: nothing called clamd yet" health_is A 200 clamd up
TOK=sM-$RANDOM
mark "$MARIO_MD"
submit "$O/M1.txt" "scenario M $TOK" "$ANNA"
ok "$P clamd down: the submission gets 4xx at end of DATA" eod_is "$O/M1.txt" '^<\*\* +4[0-9][0-9] '
ok "$P clamd down: A's /health 503, clamd down" health_is A 503 clamd down state-store up signing-key up
ok "$P ... its reason says why" python3 -c "import json,sys; r=json.load(open('$O/M-health-A.json'))['dependencies']['clamd']; print(r); sys.exit(not r.get('reason') or not r.get('since'))"
ok "$P ... B's /health still 200" health_is B 200 clamd up
ok "$P ... A's clamd errors counted" metric_is A 'pec_milter_dependency_errors_total{dependency="clamd"}' "$((CLAMD_ERR + 1))"
ok "$P ... and clamd shown down" metric_is A 'pec_milter_dependency_up{dependency="clamd"}' 0
ok "$P ... the 4xx counted as an access tempfail" metric_is A 'pec_milter_messages_total{role="access",outcome="tempfail"}' "$((TEMPF + 1))"
ok "$P A's clamd back" inA clamd_up "$A/clamd" "$RIG_CLAMD_PORT"
ok "$P ... /health still 503 until a call finds clamd again" health_is A 503 clamd down
submit "$O/M2.txt" "scenario M $TOK" "$ANNA"
ok "$P clamd back: a submission is accepted again" eod_250 "$O/M2.txt"
# shellcheck disable=SC2086
ok "$P clamd back: A's /health 200 again, every dependency up" health_is A 200 $ALL_UP
ok "$P ... and clamd shown up" metric_is A 'pec_milter_dependency_up{dependency="clamd"}' 1
ok "$P ... mario gets its accettazione, and A counted it" wait_kinds "$MARIO_MD" 1 accettazione 20
ok "$P ... access accepts one more" metric_is A 'pec_milter_messages_total{role="access",outcome="accept"}' "$((N_ACC + 1))"
ok "$P A's queue drains" pf_queue_empty "$A/pf" 30

_log "total $(rig_elapsed "$T0") s"
rig_finish
