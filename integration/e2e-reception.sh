#!/usr/bin/env bash
# integration/e2e-reception.sh — reception-point scenarios of pec-milter through a real Postfix.
#
# We are provider A ("Demo PEC S.p.A.", pec.demo.test, identity DIR/demo made by init-demo).
# Provider B ("Beta PEC S.p.A.", pec.other.test, DIR/b) and a third identity "Gamma PEC S.p.A."
# (pec.third.test, DIR/c) are made with `pec-milter init-demo`; their envelopes with
# `pec-milter envelope`, delivered without AUTH to the MX listener 127.0.0.1:25 (the shipped
# smtp service, with the milter: the reception point), as another provider's MTA would.
# Receipts are reinjected on 10025 and
# delivered locally: B's mailReceipt ricevute@pec.other.test, Aruba's aruba-ricevute@pec.other.test,
# Gamma's gamma-ricevute@pec.other.test are Maildirs of this Postfix.
# The providers' index lists A, B and Aruba (cert extracted from the real 2014 sample); Gamma
# only after scenario 7 (LDIF run). Trust anchors: A's, B's and Gamma's demo CAs + Baltimore.
#
# Everything runs twice (INDEX_SOURCES="ldap ldif"): index from slapd (IGPEC schema), then from
# the LDIF file holding the same entries. Per run:
#   (1) the index: slapd answers ldapsearch with the 3 providers (ldap) / the file lists them
#       (ldif); pec-milter logs "providers' index loaded ... providers=3"
#   (2) envelope from B -> A's signed presa-in-carico at ricevute@pec.other.test (ricezione =
#       mario, identificativo = the envelope's, To = B's mailReceipt), the envelope delivered to
#       mario unchanged (same body, B's signature verifies); the same bytes sent again: delivered,
#       and no second presa-in-carico; (2m) one transaction to mario and cittadino: one
#       presa-in-carico whose ricezione lists both
#   (3) one byte changed in the signed text / signed by Gamma (trusted CA, not in the index) /
#       From: pec.third.test signed by B -> mario gets a busta di anomalia (kind errore,
#       X-VerificaSicurezza: errore, our signature, the received message carried whole, the
#       reason in its text); no presa-in-carico
#   (4) plain mail from someone@pec.other.test -> anomaly without X-VerificaSicurezza; with
#       ordinary_mail = "reject": 5xx at end of DATA, nothing delivered; (4f) sendmail(1) to a
#       recipient not ours: delivered less the provider-only fields; (4s) the same plain
#       mail through sendmail(1) (non_smtpd_milters) -> an anomaly too
#   (5) envelope from B carrying EICAR -> presa-in-carico (the envelope is correct), then
#       rilevazione-virus at ricevute (consegna = mario), nothing to mario, one file in the
#       quarantine; (5m) two recipients: one presa-in-carico, one rilevazione-virus each
#   (6) the real Aruba envelopes (2014) with verify_at = signing-time -> delivered as is,
#       presa-in-carico at aruba-ricevute; with verify_at = "now" -> anomaly (chain expired)
#   (AP) mario -> anna.bianchi@pec.other.test: the accettazione lists anna as certificato
#       (certified_domains is only pec.demo.test here: the index decides)
#   (R) issue 14, "Must show 3": pec-milter restarted with [timers] first/last/interval =
#       $RX_T_FIRST/$RX_T_LAST/$RX_T_INTERVAL; (AP)'s envelope, never answered, gets anna's preavviso and final
#       notice (the timers run). mario -> anna (B's) and giulia.neri@pec.it (Aruba's in the index:
#       certificato; a local catchall box here, nothing answers for her): B's avvenuta-consegna
#       about giulia, signed with B's key (`pec-milter receipt`), is delivered to mario (genuine,
#       verified) but pec-milter warns that B does not serve her and her record stays as it was:
#       mario still gets her preavviso and final notice; the control, B's avvenuta-consegna about
#       anna, is recorded (log) and no notice about anna follows, also after [timers] last + 2 s
#   (7) ldap: slapd stopped, SIGHUP -> the refresh fails, the last copy stays; an SMTP session
#       open across the SIGHUP completes with 250 and its envelope from B is taken in charge.
#       ldif: Gamma's envelope is an anomaly; Gamma added to the LDIF, SIGHUP while an SMTP
#       session carrying a Gamma envelope is half-way through DATA -> the session completes
#       with 250 and that envelope (and a later one) is taken in charge; the log shows the reload.
#   (4d) with ordinary_mail = "reject", an envelope signed by a provider listed in the index
#       but From: a domain it does not manage still becomes a busta di anomalia (PEC-RULES §4.3:
#       the policy applies to ordinary mail only; this was a bug, now fixed and checked strictly)
#   (4c) ordinary_mail = "reject" still takes a correct envelope in charge
#   (H) (LDIF run) four inputs of the hostile corpus through Postfix: forged markers -> anomaly with
#       X-VerificaSicurezza: errore; broken MIME / 8-bit junk -> anomaly without; no presa in carico
#   (CRL) (LDIF run; issue 18) a CA of our own (openssl(1)) whose two provider certificates,
#       Epsilon's and Zeta's (both added to the index), name http://127.0.0.1:$RIG_CRL_PORT/eps.crl
#       as their CRL distribution point, served in the netns by python3 -m http.server; its CRL
#       revokes Epsilon. pec-milter restarted with fetch_crls = true: the distribution point is
#       learnt from the index and its CRL fetched before any message; Epsilon's envelope -> mario
#       gets a busta di anomalia naming the revocation, nothing at eps-ricevute@; Zeta's ->
#       presa-in-carico at zeta-ricevute@ and delivered. The HTTP server stopped and pec-milter
#       restarted: the copy kept in crl_cache is read back and gives the same two verdicts.
#   (SIDX) (LDIF run; issue 18) the index as published, signed (PEC-RULES §5.1): a CA of our own
#       (openssl(1)) and its "national" signer; the LDIF plus Delta (init-demo identity, listed
#       nowhere else) signed with `openssl cms -sign -nodetach -binary` into igpec.ldif.p7m, which
#       [index] signed_by = that CA names; pec-milter restarted with it and [metrics] listen =
#       127.0.0.1:$RIG_METRICS_PORT. (1) loaded as a signed LDIF; Delta's envelope -> presa-in-carico
#       at delta-ricevute@, delivered to mario as is; Eta's (not listed) -> anomaly. (2) the file
#       replaced by the copy that adds Eta with one byte changed after signing (SIGHUP), by the same
#       copy signed by a look-alike signer (same names, another CA: `pec-milter reload`), by the
#       same LDIF unsigned (SIGHUP): each time the log says the refresh failed and why (the path and
#       the reason), pec_milter_index_signature_failures_total is 1, 2, 3, /health answers 503 with
#       "index" down, and the old copy stays: Delta still taken in charge, Eta still an anomaly.
#       (3) the good signed copy that adds Eta (SIGHUP): loaded with one more provider, Eta's
#       envelope taken in charge, Delta's still; the counter stays 3, /health 200, "index" up.
# Env: INDEX_SOURCES="ldap ldif" (default), STRICT=0 (known bugs do not count; default 1),
# PEC_MILTER_BIN (default target/debug/pec-milter), KEEP=1 keeps the work dir,
# RIG_TIMING=1 times each check, RIG_LDAP_PORT (default 389, inside the netns).
# Prints "N passed, N failed" last; exit 1 if anything failed. Needs root.
set -uo pipefail
. "$(dirname "$0")/lib.sh"

BIN=$(pec_milter_bin)
rig_begin pecrx
T0=$EPOCHREALTIME
need_pec_milter run envelope

FIX=$RIG_ROOT/tests/fixtures
ARUBA1=$FIX/samples/OCA+l10n-italy__l10n_it_pec_messages__message1
ARUBA2=$FIX/samples/OCA+l10n-italy__l10n_it_pec_messages__message2
BALTIMORE=$FIX/roots/Baltimore_CyberTrust_Root.pem

A_NAME="Demo PEC S.p.A."   B_NAME="Beta PEC S.p.A."   C_NAME="Gamma PEC S.p.A."   ARUBA_NAME="ARUBA PEC S.p.A."
B_DOMAIN=pec.other.test    C_DOMAIN=pec.third.test
B_SERVICE=posta-certificata@$B_DOMAIN   C_SERVICE=posta-certificata@$C_DOMAIN
RICEVUTE=ricevute@pec.other.test             # B's mailReceipt
ARUBA_RICEVUTE=aruba-ricevute@pec.other.test # Aruba's mailReceipt (a box we can watch)
GAMMA_RICEVUTE=gamma-ricevute@pec.other.test # Gamma's mailReceipt (scenario 7)
LUIGI=luigi.verdi@pec.other.test             # B's holder, author of the originals
SOMEONE=someone@pec.other.test
EPS_RICEVUTE=eps-ricevute@pec.other.test     # (CRL) Epsilon's mailReceipt (revoked)
ZETA_RICEVUTE=zeta-ricevute@pec.other.test   # (CRL) Zeta's mailReceipt
DELTA_RICEVUTE=delta-ricevute@pec.other.test # (SIDX) Delta's mailReceipt (in the signed index)
ETA_RICEVUTE=eta-ricevute@pec.other.test     # (SIDX) Eta's mailReceipt (added by the good copy)
RX_USERS="$RIG_USERS $RICEVUTE $ARUBA_RICEVUTE $GAMMA_RICEVUTE $EPS_RICEVUTE $ZETA_RICEVUTE"
RX_USERS="$RX_USERS $DELTA_RICEVUTE $ETA_RICEVUTE"
RIG_CRL_PORT=${RIG_CRL_PORT:-8089}           # (CRL) the distribution point, inside the netns
RIG_METRICS_PORT=${RIG_METRICS_PORT:-9187}   # (SIDX) [metrics] listen, inside the netns
GIULIA=giulia.neri@pec.it                    # an Aruba holder: pec.it is Aruba's in the index
RX_DOMAINS="$RIG_DOMAINS pec.it"             # pec.it: a local catchall box here (scenario R)
# scenario (R)'s [timers]: both receipts must be in before first (whole seconds)
RX_T_FIRST=${RX_T_FIRST:-10s} RX_T_LAST=${RX_T_LAST:-14s} RX_T_INTERVAL=${RX_T_INTERVAL:-1s}

# ------------------------------------------------------------------ helpers
# (lib.sh: inspect_get, kind_is, field_is, hdr_is, hdr_absent, postacert_body_has,
# quarantine_count_is, no_pids_in_netns, known_bug; inspect_get trusts $CA, set per run below)

# verify_with PEM FILE [AT]: pec-milter verify --trust PEM [--at AT] FILE
verify_with() { "$BIN" verify --trust "$1" --at "${3:-signing-time}" "$2"; }
hdr_has() { local v; v=$(hdr_get "$1" "$2"); echo "$2: $v"; [[ $v == *"$3"* ]]; }

# body_of FILE: the body (after the first empty line), CR stripped.
body_of() { sed -e 's/\r$//' "$1" | sed '1,/^$/d'; }
# same_body SENT DELIVERED: the delivered message has the sent body byte for byte (line ends aside).
same_body() { cmp <(body_of "$1") <(body_of "$2"); }
# carries_whole DELIVERED SENT: the whole sent message (headers and body) appears in DELIVERED.
carries_whole() {
  python3 - "$1" "$2" <<'EOF'
import sys
d = open(sys.argv[1], 'rb').read().replace(b'\r\n', b'\n')
s = open(sys.argv[2], 'rb').read().replace(b'\r\n', b'\n').rstrip(b'\n')
if s in d:
    sys.exit(0)
print("the sent message (%d bytes) is not carried whole in %s" % (len(s), sys.argv[1]), file=sys.stderr)
sys.exit(1)
EOF
}
# text_has FILE STRING: the readable text/plain part (decoded) contains STRING.
text_has() {
  python3 - "$1" "$2" <<'EOF'
import email, sys
from email import policy
m = email.message_from_binary_file(open(sys.argv[1], 'rb'), policy=policy.compat32)
for part in m.walk():
    if part.get_content_type() == 'text/plain' and part.get_filename() is None:
        t = part.get_payload(decode=True).decode(part.get_content_charset() or 'latin-1', 'replace')
        if sys.argv[2] in t:
            sys.exit(0)
        print(t, file=sys.stderr)
        break
print("text part without %r" % sys.argv[2], file=sys.stderr)
sys.exit(1)
EOF
}
# last_kinds_are MAILDIR N PYEXPR WORDS: PYEXPR on each of the last N files of MAILDIR, sorted,
# joined by spaces, is WORDS.
last_kinds_are() {
  local f v
  v=$(for f in $(maildir_files "$1" | tail -n "$2"); do inspect_get "$f" "$3"; done | sort | tr '\n' ' ')
  echo "got: $v"; [ "$v" = "$4 " ]
}
# list_eq FILE PYEXPR WORDS: the list PYEXPR, joined by spaces, is WORDS.
list_eq() { local v; v=$(inspect_get "$1" "' '.join($2)"); echo "$2 = $v"; [ "$v" = "$3" ]; }
# got_anomaly LABEL [WHAT MAILDIR]...: the verdict "anomaly" on what was just sent to mario:
# mario gets exactly one message, each MAILDIR nothing ("LABEL WHAT"), and that message (E) is a
# busta di anomalia (kind errore). Returns 1, the failure counted, when nothing was delivered:
# `if got_anomaly ...; then` the case's own checks on E; fi.
got_anomaly() {
  local label=$1; shift
  ok "$label mario gets exactly one message" expect_new "$MARIO_MD" 1
  while [ $# -ge 2 ]; do ok "$label $1" expect_new "$2" 0; shift 2; done
  E=$(new_files "$MARIO_MD" | head -1)
  [ -n "$E" ] || { fail "$label anomaly checks (nothing delivered)"; return 1; }
  ok "$label kind errore (busta di anomalia)" kind_is "$E" errore
  return 0
}

# identity DIR NAME DOMAIN: a provider identity (key, cert, ca.pem in DIR) made by init-demo.
identity() {
  local D=$1 name=$2 domain=$3
  mkdir -p "$D"
  cat > "$D/id.toml" <<EOF
[provider]
name = "$name"
domain = "$domain"
domains = ["$domain"]
[signing]
key = "$D/provider.key"
cert = "$D/provider.crt"
EOF
  "$BIN" init-demo --config "$D/id.toml" 2>&1 && test -s "$D/provider.key" && test -s "$D/ca.pem"
}

# original OUT FROM TO SUBJECT BODY: a holder's message (CRLF).
original() {
  {
    printf 'From: <%s>\r\nTo: <%s>\r\nSubject: %s\r\n' "$2" "$3" "$4"
    printf 'Message-ID: <%s.%s@client.test>\r\nDate: %s\r\nMIME-Version: 1.0\r\n' "$RANDOM$RANDOM" "$$" "$(LC_ALL=C date -R)"
    printf 'Content-Type: text/plain; charset=us-ascii\r\n\r\n%s\r\n' "$5"
  } > "$1"
}
# envelope OUT IDDIR GESTORE DOMAIN ORIGINAL ID: the signed busta di trasporto as provider DOMAIN.
envelope() {
  "$BIN" envelope --key "$2/provider.key" --cert "$2/provider.crt" --gestore "$3" --domain "$4" \
    --certified pec.demo.test --id "$6" "$5" > "$1" && [ -s "$1" ]
}
# send FILE MAIL_FROM OUT: an unauthenticated delivery of FILE to mario (another provider's MTA).
# (swaks sends an empty line before the final dot: use send_exact where the bytes matter.)
send() { swaks_plain "$RIG_SMTP_PORT" "$2" "$MARIO" --data "@$1" > "$3" 2>&1; }
# send_exact FILE MAIL_FROM OUT: the same with the raw client smtp_session: exactly FILE's lines
# (CRLF, dot-stuffed) then ".". Transcript in OUT; see session_eod_is.
send_exact() {
  touch "$3.go"
  ip netns exec "$RIG_NETNS" bash -c "$(declare -f smtp_session); smtp_session \"\$@\"" _ \
    "$RIG_SMTP_PORT" "$2" "$MARIO" "$1" "$3.go" > "$3" 2>&1
}
# session_eod_is TRANSCRIPT ERE: the reply to the final dot of a smtp_session matches ERE.
session_eod_is() {
  local r; r=$(awk 'dot && /^S: / { print; exit } /^C: \.$/ { dot = 1 }' "$1")
  echo "end-of-DATA reply: $r"; [[ $r =~ $2 ]]
}

# smtp_session PORT FROM TO FILE GOFILE: a raw SMTP session (run inside the netns) that sends
# EHLO/MAIL/RCPT/DATA and the first half of FILE, prints PAUSED, waits for GOFILE to exist,
# sends the rest and the final dot, QUIT. Transcript on stdout ("C: "/"S: " lines).
smtp_session() {
  local port=$1 from=$2 to=$3 file=$4 go=$5 l n half data
  reply() {
    while IFS= read -r -t 120 l <&3; do
      l=${l%$'\r'}; echo "S: $l"
      [[ $l =~ ^[0-9]{3}( |$) ]] && return 0
    done
    echo "S: (no reply)"; return 1
  }
  say() { printf '%s\r\n' "$1" >&3; echo "C: $1"; }
  exec 3<>"/dev/tcp/127.0.0.1/$port" || exit 2
  reply || exit 3
  say "EHLO mx.pec.other.test"; reply
  say "MAIL FROM:<$from>"; reply
  say "RCPT TO:<$to>"; reply
  say "DATA"; reply
  data=$(mktemp)
  sed -e 's/\r$//' -e 's/^\./../' -e 's/$/\r/' "$file" > "$data"
  n=$(wc -l < "$data"); half=$((n / 2))
  head -n "$half" "$data" >&3
  echo "C: [$half of $n lines sent]"
  echo "PAUSED"
  while [ ! -e "$go" ]; do sleep 0.1; done
  tail -n +"$((half + 1))" "$data" >&3
  echo "C: [remaining $((n - half)) lines sent]"
  rm -f "$data"
  say "."; reply
  say "QUIT"; reply
  exec 3>&-
}
# session_start OUT FILE FROM GOFILE: smtp_session to mario in the background (netns);
# sets SESSION_PID; returns once the session is paused half-way through DATA.
session_start() {
  local out=$1 file=$2 from=$3 go=$4 i
  rm -f "$go"
  ip netns exec "$RIG_NETNS" bash -c "$(declare -f smtp_session); smtp_session \"\$@\"" _ \
    "$RIG_SMTP_PORT" "$from" "$MARIO" "$file" "$go" > "$out" 2>&1 &
  SESSION_PID=$!
  for ((i = 0; i < 300; i++)); do
    grep -q '^PAUSED' "$out" && return 0
    _alive "$SESSION_PID" || break
    sleep 0.05
  done
  echo "session did not reach DATA:" >&2; cat "$out" >&2; return 1
}
# session_finish OUT GOFILE: lets the session go on, waits for it; passes when the final dot got 250.
session_finish() {
  local out=$1 go=$2 i
  touch "$go"
  for ((i = 0; i < 600; i++)); do _alive "$SESSION_PID" || break; sleep 0.05; done
  if _alive "$SESSION_PID"; then kill "$SESSION_PID" 2>/dev/null; echo "session still running after 30 s" >&2; fi
  wait "$SESSION_PID" 2>/dev/null
  cat "$out"
  session_eod_is "$out" '^S: 250 '
}
# log_grows DIR ERE BEFORE [SECS=10]: until pec-milter's log has more than BEFORE lines matching ERE.
log_grows() {
  local i
  for ((i = 0; i < ${4:-10} * 20; i++)); do
    [ "$(pec_milter_log_count "$1" "$2")" -gt "$3" ] && return 0
    sleep 0.05
  done
  echo "pec-milter log: no new line matching /$2/ after ${4:-10}s" >&2; tail -n 5 "$1/pec-milter.log" >&2
  return 1
}
# restart_milter DIR CONFIG: stop pec-milter, start it with CONFIG, wait for its index load.
restart_milter() {
  local before
  pec_milter_down "$1" || return 1
  before=$(pec_milter_log_count "$1" "providers' index loaded")
  pec_milter_up "$1" "$2" || return 1
  log_grows "$1" "providers' index loaded" "$before" 10
}

# crl_pki D URL: with openssl(1), a CA (D/ca.pem) and two provider identities D/eps and D/zeta
# (provider.key, provider.crt: Epsilon on pec.eps.test, Zeta on pec.zeta.test) whose
# certificates name URL as their CRL distribution point; D/www/eps.crl (PEM) revokes Epsilon.
crl_pki() {
  local D=$1 url=$2 n name domain
  mkdir -p "$D/www" || return 1
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$D/ca.key" -out "$D/ca.pem" -days 365 \
    -subj "/C=IT/O=Epsilon Test CA/CN=Epsilon Test CA" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
    2>&1 || return 1
  for n in "eps:Epsilon PEC S.p.A.:pec.eps.test" "zeta:Zeta PEC S.p.A.:pec.zeta.test"; do
    IFS=: read -r n name domain <<< "$n"
    mkdir -p "$D/$n"
    printf '%s\n' "keyUsage = critical, digitalSignature, nonRepudiation" \
      "extendedKeyUsage = emailProtection" "subjectAltName = email:posta-certificata@$domain" \
      "subjectKeyIdentifier = hash" "authorityKeyIdentifier = keyid" \
      "crlDistributionPoints = URI:$url" > "$D/$n/ext.cnf"
    openssl req -newkey rsa:2048 -nodes -keyout "$D/$n/provider.key" -out "$D/$n/provider.csr" \
      -subj "/C=IT/O=$name/CN=Posta Certificata $name" 2>&1 || return 1
    openssl x509 -req -in "$D/$n/provider.csr" -CA "$D/ca.pem" -CAkey "$D/ca.key" -CAcreateserial \
      -days 365 -extfile "$D/$n/ext.cnf" -out "$D/$n/provider.crt" 2>&1 || return 1
  done
  : > "$D/index.txt"; echo 01 > "$D/crlnumber"
  printf '[ ca ]\ndefault_ca = d\n[ d ]\ndatabase = %s/index.txt\ncrlnumber = %s/crlnumber\ndefault_md = sha256\ndefault_crl_days = 7\n' \
    "$D" "$D" > "$D/ca.cnf"
  openssl ca -config "$D/ca.cnf" -keyfile "$D/ca.key" -cert "$D/ca.pem" -revoke "$D/eps/provider.crt" 2>&1 || return 1
  openssl ca -config "$D/ca.cnf" -keyfile "$D/ca.key" -cert "$D/ca.pem" -gencrl -out "$D/www/eps.crl" 2>&1 || return 1
  openssl crl -in "$D/www/eps.crl" -noout -text | grep -q 'Serial Number'
}
# crl_http_up D PORT: python3 -m http.server serving D/www on 127.0.0.1:PORT in the netns;
# sets CRL_HTTP_PID (stopped by crl_http_down, or by the cleanup stack).
crl_http_up() {
  local i
  ip netns exec "$RIG_NETNS" python3 -m http.server "$2" --bind 127.0.0.1 --directory "$1/www" \
    > "$1/http.log" 2>&1 &
  CRL_HTTP_PID=$!
  rig_defer _stop_pid "$CRL_HTTP_PID" 5 "CRL http.server"
  for ((i = 0; i < 200; i++)); do
    ns_exec bash -c "echo > /dev/tcp/127.0.0.1/$2" 2>/dev/null && return 0
    sleep 0.05
  done
  echo "crl_http_up: nothing listens on $2" >&2; cat "$1/http.log" >&2; return 1
}
# crl_http_down PORT: the server stopped, nothing listens on PORT any more.
crl_http_down() {
  _stop_pid "$CRL_HTTP_PID" 5 "CRL http.server" || return 1
  ! ns_exec bash -c "echo > /dev/tcp/127.0.0.1/$1" 2>/dev/null
}

# crl_verdicts TAG: Epsilon's envelope -> an anomaly naming the revocation, nothing at
# eps-ricevute@; Zeta's -> presa-in-carico at zeta-ricevute@, delivered as is.
crl_verdicts() {
  local tag=$1 TOK E R
  TOK=crl-$tag-$RANDOM$RANDOM
  original "$O/$tag-eps.orig" "ettore@pec.eps.test" "$MARIO" "scenario CRL $tag $TOK" "body-$TOK"
  envelope "$O/$tag-eps.env" "$XDIR/eps" "Epsilon PEC S.p.A." pec.eps.test "$O/$tag-eps.orig" "opec.$TOK@pec.eps.test"
  mark "$MARIO_MD" "$EPS_MD"
  send "$O/$tag-eps.env" posta-certificata@pec.eps.test "$O/$tag-eps.txt"
  ok "$P (CRL:$tag) Epsilon (revoked): accepted (250 at end of DATA)" eod_is "$O/$tag-eps.txt" '^<- +250 '
  if got_anomaly "$P (CRL:$tag) Epsilon:" "no presa-in-carico at eps-ricevute@" "$EPS_MD"; then
    ok "$P (CRL:$tag) Epsilon: X-VerificaSicurezza: errore" hdr_is "$E" X-VerificaSicurezza errore
    ok "$P (CRL:$tag) Epsilon: the text names the revocation" text_has "$E" "certificate revoked"
  fi
  TOK=crl-$tag-$RANDOM$RANDOM
  original "$O/$tag-zeta.orig" "zoe@pec.zeta.test" "$MARIO" "scenario CRL $tag $TOK" "body-$TOK"
  envelope "$O/$tag-zeta.env" "$XDIR/zeta" "Zeta PEC S.p.A." pec.zeta.test "$O/$tag-zeta.orig" "opec.$TOK@pec.zeta.test"
  mark "$MARIO_MD" "$ZETA_MD"
  send "$O/$tag-zeta.env" posta-certificata@pec.zeta.test "$O/$tag-zeta.txt"
  ok "$P (CRL:$tag) Zeta (not revoked): presa-in-carico at zeta-ricevute@" expect_new "$ZETA_MD" 1
  ok "$P (CRL:$tag) Zeta: mario gets the envelope" expect_new "$MARIO_MD" 1
  E=$(new_files "$MARIO_MD" | head -1) R=$(new_files "$ZETA_MD" | head -1)
  [ -n "$E" ] && ok "$P (CRL:$tag) Zeta: delivered as is (kind posta-certificata)" kind_is "$E" posta-certificata
  [ -n "$R" ] && ok "$P (CRL:$tag) Zeta: it is a presa-in-carico" kind_is "$R" presa-in-carico
}

# sidx_pki D: with openssl(1), the index's signer: a CA (D/ca.pem) and its "national" signer
# (D/signer.crt, D/signer.key); and a look-alike (D/fake/): another CA and signer with the very
# same subject names, whose signatures do not chain to D/ca.pem.
sidx_pki() {
  local D=$1 d
  for d in "$D" "$D/fake"; do
    mkdir -p "$d" || return 1
    openssl req -x509 -newkey rsa:2048 -nodes -keyout "$d/ca.key" -out "$d/ca.pem" -days 365 \
      -subj "/C=IT/O=IGPEC Test CA/CN=IGPEC Test CA" \
      -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
      2>&1 || return 1
    printf '%s\n' "basicConstraints = critical, CA:FALSE" \
      "keyUsage = critical, digitalSignature, nonRepudiation" "extendedKeyUsage = emailProtection" \
      "subjectKeyIdentifier = hash" "authorityKeyIdentifier = keyid" > "$d/signer.cnf"
    openssl req -newkey rsa:2048 -nodes -keyout "$d/signer.key" -out "$d/signer.csr" \
      -subj "/C=IT/O=Indice dei Gestori PEC (test)/CN=Indice dei Gestori PEC (test)" 2>&1 || return 1
    openssl x509 -req -in "$d/signer.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial \
      -days 365 -extfile "$d/signer.cnf" -out "$d/signer.crt" 2>&1 || return 1
  done
  # the look-alike really is another key with the same names
  [ "$(openssl x509 -in "$D/signer.crt" -noout -subject -issuer)" = \
    "$(openssl x509 -in "$D/fake/signer.crt" -noout -subject -issuer)" ] &&
  ! cmp -s <(openssl x509 -in "$D/ca.pem" -noout -pubkey) <(openssl x509 -in "$D/fake/ca.pem" -noout -pubkey)
}
# sidx_sign SIGNERDIR LDIF OUT: LDIF enveloped in a CMS SignedData (DER, the signer's certificate
# included) as a publisher makes it with openssl(1).
sidx_sign() {
  openssl cms -sign -binary -nodetach -outform DER -in "$2" -signer "$1/signer.crt" \
    -inkey "$1/signer.key" -out "$3" 2>&1 && [ -s "$3" ]
}
# sidx_tamper IN OUT FROM TO: OUT is IN with the one occurrence of FROM (inside the signed content)
# changed to TO (same length: the DER stays well-formed, only the content differs).
sidx_tamper() {
  python3 - "$@" <<'EOF'
import sys
src, dst, a, b = sys.argv[1], sys.argv[2], sys.argv[3].encode(), sys.argv[4].encode()
d = open(src, 'rb').read()
assert len(a) == len(b) and a != b, (a, b)
assert d.count(a) == 1, "%r occurs %d times in %s" % (a, d.count(a), src)
open(dst, 'wb').write(d.replace(a, b))
print("%s: %r -> %r at byte %d" % (dst, a, b, d.index(a)))
EOF
}
# ops_get PATH OUT: GET PATH on pec-milter's [metrics] listen (in the netns) into OUT; prints the
# HTTP status.
ops_get() {
  ns_exec curl -sS --max-time 5 -o "$2" -w '%{http_code}' "http://127.0.0.1:$RIG_METRICS_PORT$1"
}
# metric_is SERIES N: /metrics shows SERIES (as exposed, labels included) with value N.
metric_is() {
  local v
  ops_get /metrics "$O/metrics.txt" > /dev/null || return 2
  v=$(awk -v s="$1" '$1 == s { print $2; exit }' "$O/metrics.txt")
  echo "$1 = ${v:-absent}"; [ "$v" = "$2" ]
}
# index_health_is CODE STATE [REASON]: /health answers CODE, the "index" dependency is in STATE
# (and its reason contains REASON).
index_health_is() {
  local code
  code=$(ops_get /health "$O/health.json") || return 2
  cat "$O/health.json"; echo; echo "HTTP $code"
  [ "$code" = "$1" ] && python3 - "$O/health.json" "$2" "${3:-}" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))["dependencies"].get("index", {})
assert d.get("state") == sys.argv[2], d
assert sys.argv[3] in d.get("reason", ""), d
EOF
}
# pec_verdict TAG IDDIR NAME DOMAIN MAILDIR taken|anomaly: an envelope signed by IDDIR's key as
# provider NAME (From: someone@DOMAIN) to mario. taken: presa-in-carico at MAILDIR (the
# provider's mailReceipt) for its id, and the envelope delivered to mario as is (its signature
# verifies against IDDIR's CA); anomaly: nothing at MAILDIR, mario gets a busta di anomalia
# (kind errore).
pec_verdict() {
  local tag=$1 idd=$2 name=$3 domain=$4 md=$5 want=$6 TOK ID E R
  TOK=${tag//[^A-Za-z0-9-]/-}-$RANDOM$RANDOM ID=opec.$TOK@$domain
  original "$O/$tag.orig" "someone@$domain" "$MARIO" "scenario $tag $TOK" "body-$TOK"
  envelope "$O/$tag.env" "$idd" "$name" "$domain" "$O/$tag.orig" "$ID"
  mark "$MARIO_MD" "$md"
  send "$O/$tag.env" "posta-certificata@$domain" "$O/$tag.txt"
  ok "$P ($tag) $name: accepted (250 at end of DATA)" eod_is "$O/$tag.txt" '^<- +250 '
  if [ "$want" = anomaly ]; then
    got_anomaly "$P ($tag) $name:" "no presa-in-carico at its mailReceipt" "$md"
    return 0
  fi
  ok "$P ($tag) $name: mario gets exactly one message" expect_new "$MARIO_MD" 1
  E=$(new_files "$MARIO_MD" | head -1)
  ok "$P ($tag) $name: presa-in-carico at its mailReceipt" expect_new "$md" 1
  R=$(new_files "$md" | head -1)
  if [ -n "$R" ]; then
    ok "$P ($tag) $name: it is a presa-in-carico for $ID" \
      field_is "$R" 'd["kind"] + " " + d["daticert"]["identificativo"]' "presa-in-carico $ID"
  else
    fail "$P ($tag) $name: presa-in-carico checks (nothing at its mailReceipt)"
  fi
  if [ -n "$E" ]; then
    ok "$P ($tag) $name: delivered as PEC (kind posta-certificata)" kind_is "$E" posta-certificata
    ok "$P ($tag) $name: delivered as is ($name's signature verifies)" verify_with "$idd/ca.pem" "$E"
  else
    fail "$P ($tag) $name: delivery checks (nothing delivered)"
  fi
}
# reload_signals CONFIG PIDFILE: `pec-milter reload --config CONFIG` says it signalled the pid
# of PIDFILE (the daemon pec_milter_up started).
reload_signals() {
  local said
  said=$("$BIN" reload --config "$1" 2>&1); echo "$said"
  [[ $said == *"(pid $(cat "$2"))"* ]]
}
# sidx_refused TAG COPY TRIGGER SAYS REASON N: COPY replaces the signed index, TRIGGER (hup:
# SIGHUP; reload: `pec-milter reload`) asks for a refresh; the log says it failed, keeping the
# previous copy, its error (unquoted: a Display field) starting with SAYS (which names the file)
# and holding REASON; the failure counter is N, /health says "index" down, giving SAYS; Delta
# is still taken in charge, Eta still an anomaly.
sidx_refused() {
  local tag=$1 copy=$2 trigger=$3 says=$4 reason=$5 n=$6 failed
  failed=$(pec_milter_log_count "$DIR" "$REFUSED")
  cp "$copy" "$P7M.new" && mv "$P7M.new" "$P7M"
  ok "$P ($tag) $P7M replaced by ${copy##*/}" cmp "$copy" "$P7M"
  if [ "$trigger" = hup ]; then
    ok "$P ($tag) SIGHUP sent to pec-milter" pec_milter_hup "$DIR"
  else
    ok "$P ($tag) pec-milter reload signals the running daemon (its pid)" \
      reload_signals "$DIR/sidx.toml" "$DIR/pec-milter.pid"
  fi
  ok "$P ($tag) the log: refresh failed, the previous copy kept" log_grows "$DIR" "$REFUSED" "$failed" 20
  ok "$P ($tag) the log says why: error=$says..., $reason" \
    eval 'grep -E "$REFUSED" "$DIR/pec-milter.log" | tail -n 1 | grep -F "error=$says" | grep -F "$reason"'
  ok "$P ($tag) pec_milter_index_signature_failures_total = $n" \
    metric_is pec_milter_index_signature_failures_total "$n"
  ok "$P ($tag) /health: 503, \"index\" down ($says...)" index_health_is 503 down "$says"
  pec_verdict "$tag-delta" "$DDIR" "$D_NAME" "$D_DOMAIN" "$DELTA_MD" taken
  pec_verdict "$tag-eta" "$EDIR" "$E_NAME" "$E_DOMAIN" "$ETA_MD" anomaly
}

# ------------------------------------------------------------------ one index source

run_source() {
  local SRC=$1 TS=$EPOCHREALTIME
  local DIR=$RIG_BASE/$SRC
  PF=$DIR/pf CA=$DIR/demo/ca.pem
  local BDIR=$DIR/b CDIR=$DIR/c BCA=$DIR/b/ca.pem CCA=$DIR/c/ca.pem
  local MB=$PF/vmail
  local MARIO_MD=$MB/pec.demo.test/mario.rossi ANNA_MD=$MB/pec.other.test/anna.bianchi
  local RIC_MD=$MB/pec.other.test/ricevute ARUBA_MD=$MB/pec.other.test/aruba-ricevute
  local GAMMA_MD=$MB/pec.other.test/gamma-ricevute GIULIA_MD=$MB/pec.it/catchall AP_ID=
  local O=$DIR/out LDIF=$DIR/igpec.ldif TOK ID F R E i
  local P="[$SRC]"
  mkdir -p "$O"
  echo "# ==== index source: $SRC"

  # ---- identities, index, configuration variants
  ok "$P provider B identity (init-demo)" identity "$BDIR" "$B_NAME" "$B_DOMAIN" || return 1
  ok "$P third identity Gamma (init-demo)" identity "$CDIR" "$C_NAME" "$C_DOMAIN" || return 1
  ok "$P Aruba signer certificate extracted from the 2014 sample" \
    openssl cms -verify -noverify -in "$ARUBA1" -signer "$DIR/aruba.pem" -out /dev/null || return 1
  local cfg name at ord
  for cfg in main:signing-time:anomaly now:now:anomaly reject:signing-time:reject; do
    IFS=: read -r name at ord <<< "$cfg"
    INDEX=$SRC INDEX_LDIF=$LDIF INDEX_URL="ldap://127.0.0.1:$RIG_LDAP_PORT" \
      TRUST="$DIR/demo/ca.pem $BCA $CCA $BALTIMORE" VERIFY_AT=$at ORDINARY=$ord \
      CERTIFIED=pec.demo.test write_config "$DIR" embedded || return 1
    mv "$DIR/pec-milter.toml" "$DIR/$name.toml"
  done
  ok "$P configuration with short [timers] (scenario R)" \
    timers_config "$DIR/main.toml" "$DIR/timers.toml" "$RX_T_FIRST" "$RX_T_LAST" "$RX_T_INTERVAL" || return 1
  ok "$P configuration checks (check-config)" "$BIN" check-config --config "$DIR/main.toml" || return 1
  ok "$P our identity A (init-demo)" "$BIN" init-demo --config "$DIR/main.toml" || return 1
  rm -f "$LDIF"   # init-demo's ldif run writes a demo LDIF listing A alone: ours replaces it
  {
    igpec_root_entry
    "$BIN" index-entry --cert "$DIR/demo/provider.crt" --name "$A_NAME" --domains pec.demo.test \
      --receipt posta-certificata@pec.demo.test
    "$BIN" index-entry --cert "$BDIR/provider.crt" --name "$B_NAME" --domains "$B_DOMAIN" --receipt "$RICEVUTE"
    "$BIN" index-entry --cert "$DIR/aruba.pem" --name "$ARUBA_NAME" --domains pec.aruba.it,pec.it \
      --receipt "$ARUBA_RICEVUTE"
  } > "$LDIF"
  ok "$P index LDIF written (A, B, Aruba)" test "$(grep -c '^dn: providerName=' "$LDIF")" -eq 3 || return 1

  # ---- daemons
  ok "$P postfix instance with pec-milter on submission" \
    pf_instance "$PF" MILTERS="inet:127.0.0.1:$RIG_MILTER_PORT" USERS="$RX_USERS" DOMAINS="$RX_DOMAINS" || return 1
  ok "$P postfix up" pf_up "$PF" || return 1
  ok "$P clamd up" clamd_up "$DIR/clamd" "$RIG_CLAMD_PORT" || return 1
  if [ "$SRC" = ldap ]; then
    ok "$P slapd up with the IGPEC schema and the index" slapd_up "$DIR/slapd" "$RIG_LDAP_PORT" "$LDIF" || return 1
  fi
  ok "$P pec-milter run --config main.toml listens" pec_milter_up "$DIR" "$DIR/main.toml" || return 1
  ok "$P pec-milter loaded the index" log_grows "$DIR" "providers' index loaded" 0 10 || return 1
  _log "$P up after $(rig_elapsed "$TS") s"

  # ---- (1) the index
  if [ "$SRC" = ldap ]; then
    ldap_providers "$RIG_LDAP_PORT" providerName mailReceipt managedDomains providerCertificateHash > "$O/ldapsearch.txt" 2>&1
    ok "$P (1) ldapsearch lists 3 providers" test "$(grep -c '^dn: ' "$O/ldapsearch.txt")" -eq 3
    for n in "$A_NAME" "$B_NAME" "$ARUBA_NAME"; do
      ok "$P (1) ldapsearch shows providerName: $n" grep -qx "providerName: $n" "$O/ldapsearch.txt"
    done
    ok "$P (1) ldapsearch: B's certificate hash and mailReceipt" bash -c \
      "grep -qix 'providerCertificateHash: $(openssl x509 -in "$BDIR/provider.crt" -noout -fingerprint -sha1 | sed 's/.*=//; s/://g')' '$O/ldapsearch.txt' && grep -qx 'mailReceipt: $RICEVUTE' '$O/ldapsearch.txt'"
    ok "$P (1) ldapsearch: Aruba's certificate hash AAA71BFD..." grep -qix 'providerCertificateHash: AAA71BFD2DBC9FE67AA23C9F33AAF3316DF1AA66' "$O/ldapsearch.txt"
    ok "$P (1) pec-milter loaded it from LDAP (3 providers)" grep -qE "providers' index loaded .*LDAP ldap://127.0.0.1:$RIG_LDAP_PORT.*providers=3" "$DIR/pec-milter.log"
  else
    for n in "$A_NAME" "$B_NAME" "$ARUBA_NAME"; do
      ok "$P (1) the LDIF lists providerName: $n" grep -qx "providerName: $n" "$LDIF"
    done
    ok "$P (1) pec-milter loaded it from the LDIF file (3 providers)" grep -qE "providers' index loaded .*LDIF file $LDIF.*providers=3" "$DIR/pec-milter.log"
  fi

  # ---- (2) a correct envelope from B
  TOK=s2-$SRC-$RANDOM$RANDOM ID=opec.$TOK@$B_DOMAIN
  original "$O/2.orig" "$LUIGI" "$MARIO" "scenario 2 $TOK" "body-$TOK"
  ok "$P (2) B's envelope built (pec-milter envelope)" envelope "$O/2.env" "$BDIR" "$B_NAME" "$B_DOMAIN" "$O/2.orig" "$ID"
  mark "$MARIO_MD" "$RIC_MD"
  send_exact "$O/2.env" "$B_SERVICE" "$O/2.txt"
  ok "$P (2) accepted (250 at end of DATA)" session_eod_is "$O/2.txt" '^S: 250 '
  ok "$P (2) ricevute@ (B's mailReceipt) gets exactly one message" expect_new "$RIC_MD" 1
  ok "$P (2) mario gets exactly one message" expect_new "$MARIO_MD" 1
  R=$(new_files "$RIC_MD" | head -1) E=$(new_files "$MARIO_MD" | head -1)
  if [ -n "$R" ]; then
    ok "$P (2) receipt: kind presa-in-carico" kind_is "$R" presa-in-carico
    ok "$P (2) receipt: X-Ricevuta: presa-in-carico" hdr_is "$R" X-Ricevuta presa-in-carico
    ok "$P (2) receipt: To: $RICEVUTE (B's mailReceipt)" hdr_has "$R" To "$RICEVUTE"
    ok "$P (2) receipt: our signature valid (verify --trust demo/ca.pem)" verify_with "$CA" "$R"
    ok "$P (2) receipt: daticert.ricezione = mario" list_eq "$R" 'd["daticert"]["ricezione"]' "$MARIO"
    ok "$P (2) receipt: identificativo = the envelope's" field_is "$R" 'd["daticert"]["identificativo"]' "$ID"
    ok "$P (2) receipt: gestore-emittente is us" field_is "$R" 'd["daticert"]["gestore_emittente"]' "$A_NAME"
  else
    fail "$P (2) presa-in-carico checks (no receipt)"
  fi
  if [ -n "$E" ]; then
    ok "$P (2) mario's: kind posta-certificata" kind_is "$E" posta-certificata
    ok "$P (2) mario's: B's signature verifies (verify --trust b/ca.pem)" verify_with "$BCA" "$E"
    ok "$P (2) mario's: body unchanged (byte for byte)" same_body "$O/2.env" "$E"
    ok "$P (2) mario's: no X-VerificaSicurezza" hdr_absent "$E" X-VerificaSicurezza
  else
    fail "$P (2) envelope checks (nothing delivered)"
  fi
  # the same bytes again (an MTA retry): delivered again, no second presa-in-carico
  mark "$MARIO_MD" "$RIC_MD"
  send_exact "$O/2.env" "$B_SERVICE" "$O/2r.txt"
  ok "$P (2r) the same envelope again: accepted" session_eod_is "$O/2r.txt" '^S: 250 '
  ok "$P (2r) delivered to mario again" expect_new "$MARIO_MD" 1
  ok "$P (2r) no second presa-in-carico" expect_new "$RIC_MD" 0

  # one transaction, two of our recipients: one presa-in-carico listing both (PEC-RULES §2.6)
  local CITT_MD=$MB/pec.demo.test/cittadino
  TOK=s2m-$SRC-$RANDOM$RANDOM ID=opec.$TOK@$B_DOMAIN
  {
    printf 'From: <%s>\r\nTo: <%s>, <%s>\r\nSubject: scenario 2m %s\r\n' "$LUIGI" "$MARIO" "$CITTADINO" "$TOK"
    printf 'Message-ID: <%s@client.test>\r\nDate: %s\r\n\r\nbody-%s\r\n' "$TOK" "$(LC_ALL=C date -R)" "$TOK"
  } > "$O/2m.orig"
  envelope "$O/2m.env" "$BDIR" "$B_NAME" "$B_DOMAIN" "$O/2m.orig" "$ID"
  mark "$MARIO_MD" "$CITT_MD" "$RIC_MD"
  swaks_plain "$RIG_SMTP_PORT" "$B_SERVICE" "$MARIO,$CITTADINO" --data "@$O/2m.env" > "$O/2m.txt" 2>&1
  ok "$P (2m) two recipients: accepted (250)" eod_is "$O/2m.txt" '^<- +250 '
  ok "$P (2m) mario gets the envelope" expect_new "$MARIO_MD" 1
  ok "$P (2m) cittadino gets the envelope" expect_new "$CITT_MD" 1
  ok "$P (2m) exactly one presa-in-carico" expect_new "$RIC_MD" 1
  R=$(new_files "$RIC_MD" | head -1)
  [ -n "$R" ] && ok "$P (2m) its ricezione lists both recipients" \
    list_eq "$R" 'sorted(d["daticert"]["ricezione"])' "$CITTADINO $MARIO"

  # ---- (3) tampered, unlisted signer, foreign From: domain
  TOK=s3-$SRC-$RANDOM$RANDOM
  original "$O/3.orig" "$LUIGI" "$MARIO" "scenario 3 $TOK" "body-$TOK"
  envelope "$O/3-ok.env" "$BDIR" "$B_NAME" "$B_DOMAIN" "$O/3.orig" "opec.$TOK.a@$B_DOMAIN"
  sed '0,/^Messaggio di posta certificata/s//messaggio di posta certificata/' "$O/3-ok.env" > "$O/3-tampered.env"
  ok "$P (3) tampered: exactly one byte differs" test "$(cmp -l "$O/3-ok.env" "$O/3-tampered.env" | wc -l)" -eq 1
  ok "$P (3) rogue: envelope signed by Gamma's key as pec.other.test" \
    envelope "$O/3-rogue.env" "$CDIR" "$B_NAME" "$B_DOMAIN" "$O/3.orig" "opec.$TOK.r@$B_DOMAIN"
  ok "$P (3) rogue: its signature and chain hold (Gamma's CA is trusted)" verify_with "$CCA" "$O/3-rogue.env"
  ok "$P (3) foreign: envelope signed by B's key as pec.third.test" \
    envelope "$O/3-domain.env" "$BDIR" "$B_NAME" "$C_DOMAIN" "$O/3.orig" "opec.$TOK.d@$C_DOMAIN"
  local what reason
  for what in tampered rogue domain; do
    case $what in
      tampered) reason="firma non valida" F=$B_SERVICE ;;
      rogue) reason="non è nell'indice dei gestori" F=$B_SERVICE ;;
      domain) reason="$C_DOMAIN non è gestito da $B_NAME" F=$C_SERVICE ;;
    esac
    mark "$MARIO_MD" "$RIC_MD" "$GAMMA_MD"
    send "$O/3-$what.env" "$F" "$O/3-$what.txt"
    ok "$P (3:$what) accepted (250 at end of DATA)" eod_is "$O/3-$what.txt" '^<- +250 '
    if got_anomaly "$P (3:$what)" "no presa-in-carico at ricevute@" "$RIC_MD" \
      "nothing at gamma-ricevute@" "$GAMMA_MD"; then
      ok "$P (3:$what) X-Trasporto: errore" hdr_is "$E" X-Trasporto errore
      ok "$P (3:$what) X-VerificaSicurezza: errore" hdr_is "$E" X-VerificaSicurezza errore
      ok "$P (3:$what) our signature valid (verify --trust demo/ca.pem)" verify_with "$CA" "$E"
      ok "$P (3:$what) Subject: ANOMALIA MESSAGGIO: ..." hdr_is "$E" Subject "ANOMALIA MESSAGGIO: POSTA CERTIFICATA: scenario 3 $TOK"
      ok "$P (3:$what) carries the received message whole" carries_whole "$E" "$O/3-$what.env"
      ok "$P (3:$what) postacert.eml is the received envelope" field_is "$E" 'd["postacert"]["subject"]' "POSTA CERTIFICATA: scenario 3 $TOK"
      ok "$P (3:$what) the text says why: $reason" text_has "$E" "$reason"
    fi
  done

  # ---- (H) issue 16: a selection of the hostile corpus (tests/fixtures/hostile, asserted at the
  # role level in tests/hostile.rs) through the real Postfix as another MTA would send it: forged
  # PEC markers (unsigned, garbage signature) -> anomaly with X-VerificaSicurezza: errore; broken
  # MIME and 8-bit junk headers -> anomaly without it (ordinary mail); never a presa in carico.
  # (Once, on the LDIF run: the index source plays no part.)
  if [ "$SRC" = ldif ]; then
    local h sec
    for h in in-forged-x-trasporto-unsigned:errore in-forged-signed-garbage-p7s:errore \
      in-8bit-junk-headers: in-mime-unclosed-boundary:; do
      sec=${h#*:} h=${h%%:*}
      mark "$MARIO_MD" "$RIC_MD"
      send "$RIG_ROOT/tests/fixtures/hostile/$h.eml" "$SOMEONE" "$O/H-$h.txt"
      ok "$P (H:$h) accepted (250 at end of DATA)" eod_is "$O/H-$h.txt" '^<- +250 '
      if got_anomaly "$P (H:$h)" "no presa-in-carico at ricevute@" "$RIC_MD"; then
        ok "$P (H:$h) X-Trasporto: errore" hdr_is "$E" X-Trasporto errore
        if [ -n "$sec" ]; then
          ok "$P (H:$h) X-VerificaSicurezza: errore" hdr_is "$E" X-VerificaSicurezza errore
        else
          ok "$P (H:$h) no X-VerificaSicurezza (ordinary mail)" hdr_absent "$E" X-VerificaSicurezza
        fi
        ok "$P (H:$h) our signature valid" verify_with "$CA" "$E"
      fi
    done
  fi

  # ---- (4a) plain mail
  TOK=s4-$SRC-$RANDOM$RANDOM
  mark "$MARIO_MD" "$RIC_MD"
  swaks_plain "$RIG_SMTP_PORT" "$SOMEONE" "$MARIO" --header "Subject: scenario 4 $TOK" \
    --header "Message-Id: <$TOK@pec.other.test>" --body "plain body-$TOK" > "$O/4a.txt" 2>&1
  ok "$P (4a) plain mail: accepted (250)" eod_is "$O/4a.txt" '^<- +250 '
  if got_anomaly "$P (4a)" "nothing at ricevute@" "$RIC_MD"; then
    ok "$P (4a) no X-VerificaSicurezza" hdr_absent "$E" X-VerificaSicurezza
    ok "$P (4a) our signature valid" verify_with "$CA" "$E"
    ok "$P (4a) From: Per conto di: $SOMEONE" bash -c "grep -qF 'From: \"Per conto di: $SOMEONE\" <posta-certificata@pec.demo.test>' '$E'"
    ok "$P (4a) Message-ID kept" hdr_is "$E" Message-ID "<$TOK@pec.other.test>"
    ok "$P (4a) carries the plain message (its body)" postacert_body_has "$E" "plain body-$TOK"
  fi

  # ---- (4s) the same through sendmail(1) (pickup; non_smtpd_milters as shipped): local
  # submission reaches a PEC mailbox only through the reception point, as port 25 does
  TOK=s4s-$SRC-$RANDOM$RANDOM
  mark "$MARIO_MD" "$RIC_MD"
  printf 'From: <%s>\nTo: <%s>\nSubject: scenario 4s %s\nMessage-Id: <%s@pec.other.test>\n\nlocal body-%s\n' \
    "$SOMEONE" "$MARIO" "$TOK" "$TOK" "$TOK" > "$O/4s.eml"
  ok "$P (4s) sendmail(1) takes a plain message for mario" \
    ns_exec /usr/sbin/sendmail -C "$PF/etc" -f "$SOMEONE" "$MARIO" < "$O/4s.eml"
  if got_anomaly "$P (4s)" "nothing at ricevute@" "$RIC_MD"; then
    ok "$P (4s) our signature valid" verify_with "$CA" "$E"
    ok "$P (4s) carries the local message (its body)" postacert_body_has "$E" "local body-$TOK"
  fi

  # ---- (4f) sendmail(1) to a recipient that is not ours (anna, pec.other.test): not for the
  # reception point, delivered as written, less the fields only a provider writes
  TOK=s4f-$SRC-$RANDOM$RANDOM
  mark "$ANNA_MD" "$MARIO_MD"
  printf 'From: <%s>\nTo: <%s>\nSubject: scenario 4f %s\nX-Ricevuta: avvenuta-consegna\nX-Trasporto: posta-certificata\nX-Mailer: kept-%s\n\nlocal body-%s\n' \
    "$SOMEONE" "$ANNA" "$TOK" "$TOK" "$TOK" > "$O/4f.eml"
  ok "$P (4f) sendmail(1) takes a message with provider-only fields for anna" \
    ns_exec /usr/sbin/sendmail -C "$PF/etc" -f "$SOMEONE" "$ANNA" < "$O/4f.eml"
  ok "$P (4f) anna gets exactly one message" expect_new "$ANNA_MD" 1
  ok "$P (4f) nothing to mario" expect_new "$MARIO_MD" 0
  E=$(new_files "$ANNA_MD" | head -1)
  if [ -n "$E" ]; then
    ok "$P (4f) delivered as written (its body, its own fields)" bash -c "grep -q 'local body-$TOK' '$E' && grep -q 'X-Mailer: kept-$TOK' '$E'"
    ok "$P (4f) no X-Ricevuta" hdr_absent "$E" X-Ricevuta
    ok "$P (4f) no X-Trasporto" hdr_absent "$E" X-Trasporto
  else
    fail "$P (4f) checks (nothing delivered)"
  fi

  # ---- (5) EICAR inside an envelope from B
  TOK=s5-$SRC-$RANDOM$RANDOM ID=opec.$TOK@$B_DOMAIN
  original "$O/5.orig" "$LUIGI" "$MARIO" "scenario 5 $TOK" "$(eicar_string)"
  ok "$P (5) B's envelope carrying EICAR built" envelope "$O/5.env" "$BDIR" "$B_NAME" "$B_DOMAIN" "$O/5.orig" "$ID"
  ok "$P (5) quarantine empty before" quarantine_count_is "$DIR/quarantine" 0
  mark "$MARIO_MD" "$RIC_MD"
  send "$O/5.env" "$B_SERVICE" "$O/5.txt"
  _log "$P (5) end-of-DATA reply: $(eod_reply "$O/5.txt")"
  # an infected envelope is still a correct one (PEC-RULES §7.3): its presa in carico, then
  # the rilevazione-virus
  ok "$P (5) ricevute@ gets exactly two messages" expect_new "$RIC_MD" 2
  ok "$P (5) nothing delivered to mario" expect_new "$MARIO_MD" 0
  ok "$P (5) a presa-in-carico and a rilevazione-virus" \
    last_kinds_are "$RIC_MD" 2 'd["kind"]' "presa-in-carico rilevazione-virus"
  local PIC5=""
  R=""
  for f in $(new_files "$RIC_MD"); do
    case $(inspect_get "$f" 'd["kind"]') in
      presa-in-carico) PIC5=$f ;;
      rilevazione-virus) R=$f ;;
    esac
  done
  if [ -n "$PIC5" ]; then
    ok "$P (5) presa-in-carico: our signature valid" verify_with "$CA" "$PIC5"
    ok "$P (5) presa-in-carico: identificativo = the envelope's" field_is "$PIC5" 'd["daticert"]["identificativo"]' "$ID"
  else
    fail "$P (5) presa-in-carico checks (no receipt)"
  fi
  if [ -n "$R" ]; then
    ok "$P (5) kind rilevazione-virus" kind_is "$R" rilevazione-virus
    ok "$P (5) our signature valid" verify_with "$CA" "$R"
    ok "$P (5) daticert.consegna = mario" field_is "$R" 'd["daticert"]["consegna"]' "$MARIO"
    ok "$P (5) daticert errore = virus" field_is "$R" 'd["daticert"]["errore"]' virus
    ok "$P (5) identificativo = the envelope's" field_is "$R" 'd["daticert"]["identificativo"]' "$ID"
    ok "$P (5) X-Mittente: the original sender" hdr_is "$R" X-Mittente "$LUIGI"
  else
    fail "$P (5) rilevazione-virus checks (no notice)"
  fi
  ok "$P (5) one file in the quarantine" quarantine_count_is "$DIR/quarantine" 1
  ok "$P (5) the quarantined file is the envelope" bash -c "grep -qF 'opec.$TOK@' $DIR/quarantine/*"

  # two recipients: one rilevazione-virus per recipient (PEC-RULES §2.10)
  TOK=s5m-$SRC-$RANDOM$RANDOM ID=opec.$TOK@$B_DOMAIN
  {
    printf 'From: <%s>\r\nTo: <%s>, <%s>\r\nSubject: scenario 5m %s\r\n' "$LUIGI" "$MARIO" "$CITTADINO" "$TOK"
    printf 'Message-ID: <%s@client.test>\r\nDate: %s\r\n\r\n%s\r\n' "$TOK" "$(LC_ALL=C date -R)" "$(eicar_string)"
  } > "$O/5m.orig"
  envelope "$O/5m.env" "$BDIR" "$B_NAME" "$B_DOMAIN" "$O/5m.orig" "$ID"
  mark "$MARIO_MD" "$CITT_MD" "$RIC_MD"
  swaks_plain "$RIG_SMTP_PORT" "$B_SERVICE" "$MARIO,$CITTADINO" --data "@$O/5m.env" > "$O/5m.txt" 2>&1
  ok "$P (5m) two recipients: one presa-in-carico and two rilevazione-virus at ricevute@" expect_new "$RIC_MD" 3
  ok "$P (5m) nothing to mario" expect_new "$MARIO_MD" 0
  ok "$P (5m) nothing to cittadino" expect_new "$CITT_MD" 0
  ok "$P (5m) one rilevazione-virus per recipient (consegna), after one presa-in-carico" \
    last_kinds_are "$RIC_MD" 3 'd["kind"] + ":" + (d["daticert"]["consegna"] or "-")' "presa-in-carico:- rilevazione-virus:$CITTADINO rilevazione-virus:$MARIO"
  ok "$P (5m) the quarantine now holds two envelopes" quarantine_count_is "$DIR/quarantine" 2

  # ---- (6) the real Aruba envelopes, verified at their signing time
  local S AID
  for S in "$ARUBA1" "$ARUBA2"; do
    local sn=${S##*__}
    AID=$(inspect_get "$S" 'd["daticert"]["identificativo"]')
    mark "$MARIO_MD" "$ARUBA_MD"
    send_exact "$S" posta-certificata@pec.aruba.it "$O/6-$sn.txt"
    ok "$P (6:$sn) accepted (250)" session_eod_is "$O/6-$sn.txt" '^S: 250 '
    ok "$P (6:$sn) mario gets exactly one message" expect_new "$MARIO_MD" 1
    ok "$P (6:$sn) aruba-ricevute@ gets exactly one message" expect_new "$ARUBA_MD" 1
    E=$(new_files "$MARIO_MD" | head -1) R=$(new_files "$ARUBA_MD" | head -1)
    if [ -n "$E" ]; then
      ok "$P (6:$sn) mario's: kind posta-certificata" kind_is "$E" posta-certificata
      ok "$P (6:$sn) mario's: delivered as is (same body)" same_body "$S" "$E"
      ok "$P (6:$sn) mario's: Aruba's signature verifies at signing time (Baltimore root)" verify_with "$BALTIMORE" "$E" signing-time
    else
      fail "$P (6:$sn) delivery checks (nothing delivered)"
    fi
    if [ -n "$R" ]; then
      ok "$P (6:$sn) receipt: kind presa-in-carico" kind_is "$R" presa-in-carico
      ok "$P (6:$sn) receipt: our signature valid" verify_with "$CA" "$R"
      ok "$P (6:$sn) receipt: identificativo = $AID" field_is "$R" 'd["daticert"]["identificativo"]' "$AID"
      ok "$P (6:$sn) receipt: ricezione = mario" list_eq "$R" 'd["daticert"]["ricezione"]' "$MARIO"
      ok "$P (6:$sn) receipt: To: $ARUBA_RICEVUTE (Aruba's mailReceipt in the index)" hdr_has "$R" To "$ARUBA_RICEVUTE"
    else
      fail "$P (6:$sn) presa-in-carico checks (no receipt)"
    fi
  done

  # ---- (AP) the access point with the index on
  TOK=ap-$SRC-$RANDOM$RANDOM
  mark "$MARIO_MD" "$ANNA_MD"
  swaks_submit "$MARIO" "$MARIO_PW" "$MARIO" "$ANNA" --header "Subject: access $TOK" \
    --body "access body-$TOK" > "$O/ap.txt" 2>&1
  ok "$P (AP) mario -> anna: accepted (250)" eod_is "$O/ap.txt" '^<- +250 '
  ok "$P (AP) anna gets exactly one message" expect_new "$ANNA_MD" 1
  ok "$P (AP) mario gets exactly one message" expect_new "$MARIO_MD" 1
  E=$(new_files "$ANNA_MD" | head -1) R=$(new_files "$MARIO_MD" | head -1)
  [ -n "$E" ] && ok "$P (AP) anna's: kind posta-certificata" kind_is "$E" posta-certificata
  if [ -n "$R" ]; then
    ok "$P (AP) mario's: kind accettazione" kind_is "$R" accettazione
    ok "$P (AP) accettazione: anna is certificato (pec.other.test is in the index)" \
      list_eq "$R" '[x["address"] + ":" + x["tipo"] for x in d["daticert"]["destinatari"]]' "$ANNA:certificato"
    AP_ID=$(inspect_get "$R" 'd["daticert"]["identificativo"]')
  else
    fail "$P (AP) accettazione checks (no receipt)"
  fi

  # ---- (R) issue 14, "Must show 3": a receipt from B about a recipient B does not serve
  # leaves our record, and so the 12 h / 24 h notices, unchanged
  local RID RT0 WARN="receipt about recipients its signer does not serve: their record is left unchanged"
  mark "$MARIO_MD"
  ok "$P (R) pec-milter restarted with [timers] first/last/interval = $RX_T_FIRST/$RX_T_LAST/$RX_T_INTERVAL" \
    restart_milter "$DIR" "$DIR/timers.toml"
  if [ -n "$AP_ID" ]; then
    ok "$P (R) the timers run: (AP)'s envelope, never answered, gets anna's preavviso and final notice" \
      notices_are "$MARIO_MD" "$AP_ID" "first $ANNA last $ANNA" 30
  else
    fail "$P (R) (AP)'s PEC id unknown: the timers not checked"
  fi
  ok "$P (R) nothing left in the queue before the submission" pf_queue_empty "$PF" 10
  TOK=r-$SRC-$RANDOM$RANDOM
  mark "$MARIO_MD" "$ANNA_MD" "$GIULIA_MD"
  RT0=$EPOCHREALTIME
  swaks_submit "$MARIO" "$MARIO_PW" "$MARIO" "$ANNA,$GIULIA" --header "Subject: receipts $TOK" \
    --body "receipts body-$TOK" > "$O/r.txt" 2>&1
  ok "$P (R) mario -> anna, giulia: accepted (250)" eod_is "$O/r.txt" '^<- +250 '
  ok "$P (R) anna gets the envelope" expect_new "$ANNA_MD" 1
  ok "$P (R) giulia (pec.it, a local box here) gets the envelope" expect_new "$GIULIA_MD" 1
  ok "$P (R) mario gets the accettazione" expect_new "$MARIO_MD" 1
  R=$(new_files "$MARIO_MD" | head -1) RID=
  if [ -n "$R" ]; then
    ok "$P (R) accettazione: both certificato (pec.other.test is B's, pec.it Aruba's)" \
      list_eq "$R" 'sorted(x["address"] + ":" + x["tipo"] for x in d["daticert"]["destinatari"])' "$ANNA:certificato $GIULIA:certificato"
    RID=$(inspect_get "$R" 'd["daticert"]["identificativo"]')
  fi
  if [ -z "$RID" ]; then
    fail "$P (R) receipt checks (no accettazione, PEC id unknown)"
  else
    mark "$MARIO_MD"
    ok "$P (R) B's avvenuta-consegna about giulia built (pec-milter receipt, B's key)" \
      receipt_as "$O/r-giulia.eml" "$BDIR" "$B_NAME" "$B_DOMAIN" --kind avvenuta-consegna --id "$RID" \
      --sender "$MARIO" --recipient "$GIULIA" --subject "receipts $TOK"
    ok "$P (R) B's avvenuta-consegna about anna built (the control)" \
      receipt_as "$O/r-anna.eml" "$BDIR" "$B_NAME" "$B_DOMAIN" --kind avvenuta-consegna --id "$RID" \
      --sender "$MARIO" --recipient "$ANNA" --subject "receipts $TOK"
    ok "$P (R) about giulia: B's signature and chain hold" verify_with "$BCA" "$O/r-giulia.eml"
    local warned updated
    warned=$(pec_milter_log_count "$DIR" "$WARN")
    updated=$(pec_milter_log_count "$DIR" "envelope state updated")
    send "$O/r-giulia.eml" "$B_SERVICE" "$O/r-giulia.txt"
    ok "$P (R) about giulia: accepted (250)" eod_is "$O/r-giulia.txt" '^<- +250 '
    ok "$P (R) about giulia: the log warns that B does not serve her" log_grows "$DIR" "$WARN" "$warned"
    ok "$P (R) about giulia: the warning names giulia, the envelope and B" log_line_has "$DIR" "$WARN" "$GIULIA" "$RID" "$B_NAME"
    fail "$P (R) about giulia: no record update logged" log_line_has "$DIR" "envelope state updated" "$RID"
    send "$O/r-anna.eml" "$B_SERVICE" "$O/r-anna.txt"
    ok "$P (R) about anna: accepted (250)" eod_is "$O/r-anna.txt" '^<- +250 '
    ok "$P (R) about anna: recorded (envelope state updated)" log_grows "$DIR" "envelope state updated" "$updated"
    ok "$P (R) about anna: the update names the envelope and anna" log_line_has "$DIR" "envelope state updated" "$RID" "$ANNA"
    fail "$P (R) about anna: no warning" log_line_has "$DIR" "$WARN" "$RID" "$ANNA"
    _log "$P (R) both receipts in $(rig_elapsed "$RT0") s after the submission"
    ok "$P (R) both receipts in before [timers] first ($RX_T_FIRST)" \
      awk -v a="$RT0" -v b="$EPOCHREALTIME" -v f="${RX_T_FIRST%s}" 'BEGIN { exit !(b - int(a) < f) }'
    ok "$P (R) mario gets both receipts" expect_new "$MARIO_MD" 2
    local f
    for f in $(new_files "$MARIO_MD" | head -2); do
      ok "$P (R) ${f##*/}: an avvenuta-consegna, delivered as is (B's signature verifies)" \
        eval 'kind_is "$f" avvenuta-consegna && verify_with "$BCA" "$f"'
    done
    ok "$P (R) the two delivered are about giulia and anna" \
      last_kinds_are "$MARIO_MD" 2 'd["kind"] + ":" + d["daticert"]["consegna"]' "avvenuta-consegna:$ANNA avvenuta-consegna:$GIULIA"
    # giulia's record unchanged: still "sent", so the preavviso at first and the final notice at
    # last; anna's closed by the control: no notice about her, also after last + 2 s
    ok "$P (R) giulia's record unchanged: mario gets her preavviso and her final notice (none about anna)" \
      notices_are "$MARIO_MD" "$RID" "first $GIULIA last $GIULIA" 40
    local left
    left=$(awk -v a="$RT0" -v b="$EPOCHREALTIME" -v l="${RX_T_LAST%s}" 'BEGIN { s = int(a) + l + 2 - b; printf "%.1f", (s > 0 ? s : 0) }')
    sleep "$left"
    ok "$P (R) [timers] last + 2 s after the submission: still no notice about anna" \
      notices_are "$MARIO_MD" "$RID" "first $GIULIA last $GIULIA"
    R=$(new_files "$MARIO_MD" | tail -1)
    ok "$P (R) the notices are ours (our signature valid)" verify_with "$CA" "$R"
  fi
  ok "$P (R) nothing left in the queue" pf_queue_empty "$PF" 10

  # ---- (6b) verify_at = now: the 2014 chain has expired
  ok "$P (6b) pec-milter restarted with verify_at = now" restart_milter "$DIR" "$DIR/now.toml"
  mark "$MARIO_MD" "$ARUBA_MD"
  send "$ARUBA1" posta-certificata@pec.aruba.it "$O/6b.txt"
  ok "$P (6b) accepted (250)" eod_is "$O/6b.txt" '^<- +250 '
  if got_anomaly "$P (6b)" "no presa-in-carico at aruba-ricevute@" "$ARUBA_MD"; then
    ok "$P (6b) X-VerificaSicurezza: errore" hdr_is "$E" X-VerificaSicurezza errore
    ok "$P (6b) our signature valid" verify_with "$CA" "$E"
    ok "$P (6b) the text says the signature failed" text_has "$E" "firma non valida"
  fi

  # ---- (4b) ordinary_mail = reject
  ok "$P (4b) pec-milter restarted with ordinary_mail = reject" restart_milter "$DIR" "$DIR/reject.toml"
  TOK=s4b-$SRC-$RANDOM$RANDOM
  mark "$MARIO_MD" "$RIC_MD"
  swaks_plain "$RIG_SMTP_PORT" "$SOMEONE" "$MARIO" --header "Subject: scenario 4b $TOK" \
    --body "plain body-$TOK" > "$O/4b.txt" 2>&1
  ok "$P (4b) plain mail: 5xx at end of DATA" eod_is "$O/4b.txt" '^<\*\* +5[0-9][0-9] '
  ok "$P (4b) nothing delivered to mario" expect_new "$MARIO_MD" 0
  ok "$P (4b) nothing at ricevute@" expect_new "$RIC_MD" 0
  # a correct envelope still passes in reject mode
  TOK=s4c-$SRC-$RANDOM$RANDOM
  original "$O/4c.orig" "$LUIGI" "$MARIO" "scenario 4c $TOK" "body-$TOK"
  envelope "$O/4c.env" "$BDIR" "$B_NAME" "$B_DOMAIN" "$O/4c.orig" "opec.$TOK@$B_DOMAIN"
  mark "$MARIO_MD" "$RIC_MD"
  send "$O/4c.env" "$B_SERVICE" "$O/4c.txt"
  ok "$P (4c) reject mode: B's envelope still delivered" expect_new "$MARIO_MD" 1
  ok "$P (4c) reject mode: and taken in charge" expect_new "$RIC_MD" 1

  # signed by a listed provider but not conformant (From: a domain B does not manage): PEC-RULES
  # §4.3 and the README make it a busta di anomalia whatever ordinary_mail says
  mark "$MARIO_MD" "$RIC_MD"
  send_exact "$O/3-domain.env" "$C_SERVICE" "$O/4d.txt"
  _log "$P (4d) end-of-DATA reply: $(awk 'dot && /^S: / { print; exit } /^C: \.$/ { dot = 1 }' "$O/4d.txt")"
  known_bug "$P (4d) reject mode: B-signed envelope From: $C_DOMAIN accepted (250) and delivered to mario as an anomaly" \
    eval 'session_eod_is "$O/4d.txt" "^S: 250 " && expect_new "$MARIO_MD" 1 && kind_is "$(new_files "$MARIO_MD" | head -1)" errore'
  ok "$P (4d) reject mode: no presa-in-carico for it" expect_new "$RIC_MD" 0

  ok "$P pec-milter restarted with main.toml" restart_milter "$DIR" "$DIR/main.toml"

  # ---- (7) the index keeps answering / reloads on SIGHUP
  local hup loaded failed GO=$O/7.go
  if [ "$SRC" = ldap ]; then
    ok "$P (7) slapd stopped" slapd_down "$DIR/slapd"
    fail "$P (7) nothing listens on the LDAP port any more" ns_exec bash -c "exec 3<>/dev/tcp/127.0.0.1/$RIG_LDAP_PORT"
    TOK=s7-$SRC-$RANDOM$RANDOM ID=opec.$TOK@$B_DOMAIN
    original "$O/7.orig" "$LUIGI" "$MARIO" "scenario 7 $TOK" "body-$TOK"
    envelope "$O/7.env" "$BDIR" "$B_NAME" "$B_DOMAIN" "$O/7.orig" "$ID"
    mark "$MARIO_MD" "$RIC_MD"
    ok "$P (7) an SMTP session (B's envelope) paused half-way through DATA" session_start "$O/7.session" "$O/7.env" "$B_SERVICE" "$GO"
    hup=$(pec_milter_log_count "$DIR" "SIGHUP: reloading")
    failed=$(pec_milter_log_count "$DIR" "refresh failed; keeping the previous copy")
    ok "$P (7) SIGHUP sent to pec-milter" pec_milter_hup "$DIR"
    ok "$P (7) the log shows the SIGHUP reload" log_grows "$DIR" "SIGHUP: reloading" "$hup"
    ok "$P (7) the log shows the failed refresh, previous copy kept (with its age)" \
      log_grows "$DIR" "refresh failed; keeping the previous copy.*age_secs" "$failed" 20
    ok "$P (7) the session opened before the SIGHUP completes with 250" session_finish "$O/7.session" "$GO"
    ok "$P (7) presa-in-carico at ricevute@ (index still answering)" expect_new "$RIC_MD" 1
    ok "$P (7) mario gets the envelope" expect_new "$MARIO_MD" 1
    R=$(new_files "$RIC_MD" | head -1)
    [ -n "$R" ] && ok "$P (7) it is a presa-in-carico for $ID" field_is "$R" 'd["kind"] + " " + d["daticert"]["identificativo"]' "presa-in-carico $ID"
    # and a new session after the failed refresh
    TOK=s7b-$SRC-$RANDOM$RANDOM
    original "$O/7b.orig" "$LUIGI" "$MARIO" "scenario 7b $TOK" "body-$TOK"
    envelope "$O/7b.env" "$BDIR" "$B_NAME" "$B_DOMAIN" "$O/7b.orig" "opec.$TOK@$B_DOMAIN"
    mark "$MARIO_MD" "$RIC_MD"
    send "$O/7b.env" "$B_SERVICE" "$O/7b.txt"
    ok "$P (7b) slapd down: another envelope from B still taken in charge" expect_new "$RIC_MD" 1
    ok "$P (7b) and delivered" expect_new "$MARIO_MD" 1
  else
    # before: Gamma is not in the index
    TOK=s7a-$SRC-$RANDOM$RANDOM
    original "$O/7a.orig" "gianni@$C_DOMAIN" "$MARIO" "scenario 7a $TOK" "body-$TOK"
    envelope "$O/7a.env" "$CDIR" "$C_NAME" "$C_DOMAIN" "$O/7a.orig" "opec.$TOK@$C_DOMAIN"
    mark "$MARIO_MD" "$GAMMA_MD"
    send "$O/7a.env" "$C_SERVICE" "$O/7a.txt"
    ok "$P (7a) Gamma not in the index yet: mario gets one message" expect_new "$MARIO_MD" 1
    ok "$P (7a) no presa-in-carico at gamma-ricevute@" expect_new "$GAMMA_MD" 0
    E=$(new_files "$MARIO_MD" | head -1)
    [ -n "$E" ] && ok "$P (7a) it is an anomaly (kind errore)" kind_is "$E" errore
    # a session open across the change and the SIGHUP
    TOK=s7-$SRC-$RANDOM$RANDOM ID=opec.$TOK@$C_DOMAIN
    original "$O/7.orig" "gianni@$C_DOMAIN" "$MARIO" "scenario 7 $TOK" "body-$TOK"
    envelope "$O/7.env" "$CDIR" "$C_NAME" "$C_DOMAIN" "$O/7.orig" "$ID"
    mark "$MARIO_MD" "$GAMMA_MD"
    ok "$P (7) an SMTP session (Gamma's envelope) paused half-way through DATA" session_start "$O/7.session" "$O/7.env" "$C_SERVICE" "$GO"
    {
      cat "$LDIF"
      "$BIN" index-entry --cert "$CDIR/provider.crt" --name "$C_NAME" --domains "$C_DOMAIN" --receipt "$GAMMA_RICEVUTE"
    } > "$LDIF.new" && mv "$LDIF.new" "$LDIF"
    ok "$P (7) Gamma added to the LDIF (4 providers)" test "$(grep -c '^dn: providerName=' "$LDIF")" -eq 4
    hup=$(pec_milter_log_count "$DIR" "SIGHUP: reloading")
    loaded=$(pec_milter_log_count "$DIR" "providers' index loaded .*providers=4")
    ok "$P (7) SIGHUP sent to pec-milter" pec_milter_hup "$DIR"
    ok "$P (7) the log shows the SIGHUP reload" log_grows "$DIR" "SIGHUP: reloading" "$hup"
    ok "$P (7) the log shows the index reloaded with 4 providers" log_grows "$DIR" "providers' index loaded .*providers=4" "$loaded"
    ok "$P (7) the session opened before the SIGHUP completes with 250" session_finish "$O/7.session" "$GO"
    ok "$P (7) Gamma's envelope taken in charge: gamma-ricevute@ gets one message" expect_new "$GAMMA_MD" 1
    ok "$P (7) mario gets Gamma's envelope" expect_new "$MARIO_MD" 1
    R=$(new_files "$GAMMA_MD" | head -1) E=$(new_files "$MARIO_MD" | head -1)
    if [ -n "$R" ]; then
      ok "$P (7) it is a presa-in-carico for $ID" field_is "$R" 'd["kind"] + " " + d["daticert"]["identificativo"]' "presa-in-carico $ID"
      ok "$P (7) our signature valid" verify_with "$CA" "$R"
    fi
    if [ -n "$E" ]; then
      ok "$P (7) mario's: kind posta-certificata" kind_is "$E" posta-certificata
      ok "$P (7) mario's: Gamma's signature verifies" verify_with "$CCA" "$E"
    fi
    # and a new session after the reload
    TOK=s7b-$SRC-$RANDOM$RANDOM
    original "$O/7b.orig" "gianni@$C_DOMAIN" "$MARIO" "scenario 7b $TOK" "body-$TOK"
    envelope "$O/7b.env" "$CDIR" "$C_NAME" "$C_DOMAIN" "$O/7b.orig" "opec.$TOK@$C_DOMAIN"
    mark "$MARIO_MD" "$GAMMA_MD"
    send "$O/7b.env" "$C_SERVICE" "$O/7b.txt"
    ok "$P (7b) another Gamma envelope: taken in charge" expect_new "$GAMMA_MD" 1
    ok "$P (7b) and delivered to mario" expect_new "$MARIO_MD" 1
    E=$(new_files "$MARIO_MD" | head -1)
    [ -n "$E" ] && ok "$P (7b) as is (kind posta-certificata)" kind_is "$E" posta-certificata
  fi

  # ---- (CRL) issue 18: revocation by the CRL distribution point (LDIF run)
  if [ "$SRC" = ldif ]; then
    local XDIR=$DIR/crl-pki EPS_MD=$MB/pec.other.test/eps-ricevute ZETA_MD=$MB/pec.other.test/zeta-ricevute
    local url=http://127.0.0.1:$RIG_CRL_PORT/eps.crl fetched read_back
    if ok "$P (CRL) a CA of our own, Epsilon and Zeta naming $url, a CRL revoking Epsilon" crl_pki "$XDIR" "$url" &&
       ok "$P (CRL) the distribution point served in the netns" crl_http_up "$XDIR" "$RIG_CRL_PORT"; then
      {
        cat "$LDIF"
        "$BIN" index-entry --cert "$XDIR/eps/provider.crt" --name "Epsilon PEC S.p.A." --domains pec.eps.test --receipt "$EPS_RICEVUTE"
        "$BIN" index-entry --cert "$XDIR/zeta/provider.crt" --name "Zeta PEC S.p.A." --domains pec.zeta.test --receipt "$ZETA_RICEVUTE"
      } > "$LDIF.new" && mv "$LDIF.new" "$LDIF"
      INDEX=$SRC INDEX_LDIF=$LDIF TRUST="$DIR/demo/ca.pem $BCA $CCA $BALTIMORE $XDIR/ca.pem" \
        VERIFY_AT=signing-time ORDINARY=anomaly CERTIFIED=pec.demo.test FETCH_CRLS=true \
        write_config "$DIR" embedded && mv "$DIR/pec-milter.toml" "$DIR/crl.toml"
      ok "$P (CRL) configuration with fetch_crls = true checks" "$BIN" check-config --config "$DIR/crl.toml"
      fetched=$(pec_milter_log_count "$DIR" "CRL fetched url=$url")
      ok "$P (CRL) pec-milter restarted with crl.toml" restart_milter "$DIR" "$DIR/crl.toml"
      ok "$P (CRL) the CRL is fetched before any message (learnt from the index)" \
        log_grows "$DIR" "CRL fetched url=$url" "$fetched" 20
      ok "$P (CRL) kept in crl_cache" bash -c "ls '$DIR'/crl/*.crl"
      crl_verdicts live
      ok "$P (CRL) the distribution point stops" crl_http_down "$RIG_CRL_PORT"
      read_back=$(pec_milter_log_count "$DIR" "CRL cache: copy read from disk")
      ok "$P (CRL) pec-milter restarted, the distribution point down" restart_milter "$DIR" "$DIR/crl.toml"
      ok "$P (CRL) the copy kept on disk is read back" log_grows "$DIR" "CRL cache: copy read from disk" "$read_back" 10
      crl_verdicts disk
    else
      fail "$P (CRL) setup failed: scenario skipped"
    fi
  fi

  # ---- (SIDX) issue 18: the index as published, a signed .p7m (LDIF run)
  if [ "$SRC" = ldif ]; then
    local SDIR=$DIR/sidx-pki DDIR=$DIR/delta EDIR=$DIR/eta P7M=$DIR/igpec.ldif.p7m
    local DELTA_MD=$MB/pec.other.test/delta-ricevute ETA_MD=$MB/pec.other.test/eta-ricevute
    local D_NAME="Delta PEC S.p.A." D_DOMAIN=pec.delta.test E_NAME="Eta PEC S.p.A." E_DOMAIN=pec.eta.test
    local REFUSED="providers' index refresh failed; keeping the previous copy" base loaded
    if ok "$P (SIDX) identity Delta (init-demo)" identity "$DDIR" "$D_NAME" "$D_DOMAIN" &&
       ok "$P (SIDX) identity Eta (init-demo)" identity "$EDIR" "$E_NAME" "$E_DOMAIN" &&
       ok "$P (SIDX) the index's CA and signer, and a look-alike (openssl)" sidx_pki "$SDIR"; then
      base=$(grep -c '^dn: providerName=' "$LDIF")
      {
        cat "$LDIF"
        "$BIN" index-entry --cert "$DDIR/provider.crt" --name "$D_NAME" --domains "$D_DOMAIN" --receipt "$DELTA_RICEVUTE"
      } > "$SDIR/v1.ldif"
      {
        cat "$SDIR/v1.ldif"
        "$BIN" index-entry --cert "$EDIR/provider.crt" --name "$E_NAME" --domains "$E_DOMAIN" --receipt "$ETA_RICEVUTE"
      } > "$SDIR/v2.ldif"
      ok "$P (SIDX) v1 lists Delta ($((base + 1)) providers), v2 adds Eta; the plain LDIF lists neither" eval \
        '[ "$(grep -c "^dn: providerName=" "$SDIR/v1.ldif")" -eq $((base + 1)) ] &&
         [ "$(grep -c "^dn: providerName=" "$SDIR/v2.ldif")" -eq $((base + 2)) ] &&
         ! grep -qE "managedDomains: ($D_DOMAIN|$E_DOMAIN)" "$LDIF"'
      ok "$P (SIDX) v1 signed (openssl cms -sign -nodetach)" sidx_sign "$SDIR" "$SDIR/v1.ldif" "$SDIR/v1.p7m"
      ok "$P (SIDX) v2 signed" sidx_sign "$SDIR" "$SDIR/v2.ldif" "$SDIR/v2.p7m"
      ok "$P (SIDX) v2 tampered after signing (Delta's mailReceipt redirected)" \
        sidx_tamper "$SDIR/v2.p7m" "$SDIR/v2-tampered.p7m" "$DELTA_RICEVUTE" "${DELTA_RICEVUTE/ricevute/intruder}"
      ok "$P (SIDX) v2 signed by the look-alike signer" sidx_sign "$SDIR/fake" "$SDIR/v2.ldif" "$SDIR/v2-forged.p7m"
      ok "$P (SIDX) openssl itself: v1 and v2 verify against the CA, the LDIF inside" eval \
        'openssl cms -verify -binary -inform DER -in "$SDIR/v1.p7m" -CAfile "$SDIR/ca.pem" -purpose any | cmp - "$SDIR/v1.ldif" &&
         openssl cms -verify -binary -inform DER -in "$SDIR/v2.p7m" -CAfile "$SDIR/ca.pem" -purpose any | cmp - "$SDIR/v2.ldif"'
      fail "$P (SIDX) openssl itself: the tampered copy does not" --code 4 \
        openssl cms -verify -binary -inform DER -in "$SDIR/v2-tampered.p7m" -CAfile "$SDIR/ca.pem" -purpose any -out /dev/null
      fail "$P (SIDX) openssl itself: the look-alike's does not" --code 4 \
        openssl cms -verify -binary -inform DER -in "$SDIR/v2-forged.p7m" -CAfile "$SDIR/ca.pem" -purpose any -out /dev/null
      cp "$SDIR/v1.p7m" "$P7M"
      INDEX=$SRC INDEX_LDIF=$P7M INDEX_SIGNED_BY=$SDIR/ca.pem METRICS_LISTEN=127.0.0.1:$RIG_METRICS_PORT \
        TRUST="$DIR/demo/ca.pem $BCA $CCA $BALTIMORE $DDIR/ca.pem $EDIR/ca.pem" \
        VERIFY_AT=signing-time ORDINARY=anomaly CERTIFIED=pec.demo.test \
        write_config "$DIR" embedded && mv "$DIR/pec-milter.toml" "$DIR/sidx.toml"
      ok "$P (SIDX) configuration with [index] signed_by and [metrics] listen checks" eval \
        '"$BIN" check-config --config "$DIR/sidx.toml" &&
         grep -qxF "signed_by = [\"$SDIR/ca.pem\"]" "$DIR/sidx.toml" && grep -qxF "ldif = \"$P7M\"" "$DIR/sidx.toml"'
      loaded=$(pec_milter_log_count "$DIR" "providers' index loaded .*signed LDIF file $P7M .*providers=$((base + 1))")
      ok "$P (SIDX) pec-milter restarted with sidx.toml" restart_milter "$DIR" "$DIR/sidx.toml"
      ok "$P (SIDX:1) the signed index loaded at start ($((base + 1)) providers)" \
        log_grows "$DIR" "providers' index loaded .*signed LDIF file $P7M .*providers=$((base + 1))" "$loaded"
      ok "$P (SIDX:1) pec_milter_index_signature_failures_total = 0" \
        metric_is pec_milter_index_signature_failures_total 0
      ok "$P (SIDX:1) /health: 200, \"index\" up" index_health_is 200 up
      pec_verdict SIDX:1-delta "$DDIR" "$D_NAME" "$D_DOMAIN" "$DELTA_MD" taken
      pec_verdict SIDX:1-eta "$EDIR" "$E_NAME" "$E_DOMAIN" "$ETA_MD" anomaly
      sidx_refused SIDX:2-tampered "$SDIR/v2-tampered.p7m" hup "signature of $P7M: " \
        "content digest mismatch" 1
      sidx_refused SIDX:2-forged "$SDIR/v2-forged.p7m" reload \
        "$P7M: the signer does not chain to [index] signed_by (" "certificate verify error" 2
      sidx_refused SIDX:4-plain "$SDIR/v2.ldif" hup \
        "$P7M: a plain LDIF, not signed ([index] signed_by expects the signed .p7m as published)" \
        "a plain LDIF, not signed" 3
      # (3) the good copy that adds Eta
      loaded=$(pec_milter_log_count "$DIR" "providers' index loaded .*signed LDIF file $P7M .*providers=$((base + 2))")
      cp "$SDIR/v2.p7m" "$P7M.new" && mv "$P7M.new" "$P7M"
      ok "$P (SIDX:3) $P7M replaced by the good v2.p7m" cmp "$SDIR/v2.p7m" "$P7M"
      ok "$P (SIDX:3) SIGHUP sent to pec-milter" pec_milter_hup "$DIR"
      ok "$P (SIDX:3) the signed index reloaded with Eta ($((base + 2)) providers)" \
        log_grows "$DIR" "providers' index loaded .*signed LDIF file $P7M .*providers=$((base + 2))" "$loaded" 20
      ok "$P (SIDX:3) pec_milter_index_signature_failures_total still 3" \
        metric_is pec_milter_index_signature_failures_total 3
      ok "$P (SIDX:3) /health: 200, \"index\" up again" index_health_is 200 up
      pec_verdict SIDX:3-eta "$EDIR" "$E_NAME" "$E_DOMAIN" "$ETA_MD" taken
      pec_verdict SIDX:3-delta "$DDIR" "$D_NAME" "$D_DOMAIN" "$DELTA_MD" taken
    else
      fail "$P (SIDX) setup failed: scenario skipped"
    fi
  fi

  # ---- teardown of this run (the cleanup stack would do it too; here it is checked)
  ok "$P pec-milter exits 0 on SIGTERM" pec_milter_down "$DIR"
  fail "$P no panic in pec-milter's log" grep -q 'panicked' "$DIR/pec-milter.log"
  fail "$P no temporary failure in pec-milter's log" grep -q 'reception: temporary failure' "$DIR/pec-milter.log"
  ok "$P nothing left in the queue" pf_queue_empty "$PF" 5
  ok "$P postfix stops (master gone, listeners closed)" pf_down "$PF"
  ok "$P clamd stops (process gone, port closed)" clamd_down "$DIR/clamd"
  ok "$P no process left in the netns" no_pids_in_netns
  _log "$P run took $(rig_elapsed "$TS") s"
  return 0
}

for SRC in ${INDEX_SOURCES:-ldap ldif}; do
  case $SRC in ldap|ldif) ;; *) fail "unknown index source $SRC (ldap or ldif)"; continue ;; esac
  if ! run_source "$SRC"; then
    fail "[$SRC] setup failed: scenarios skipped"
  fi
  pec_milter_down "$RIG_BASE/$SRC" 2>/dev/null; pf_down "$RIG_BASE/$SRC/pf"
  clamd_down "$RIG_BASE/$SRC/clamd"; slapd_down "$RIG_BASE/$SRC/slapd"
done
[ "$KNOWN_BUGS_SEEN" = 0 ] || _log "$KNOWN_BUGS_SEEN check(s) hit a known pec-milter bug (STRICT=1 counts them as failures)"
_log "e2e-reception took $(rig_elapsed "$T0") s"
rig_finish
