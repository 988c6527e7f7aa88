#!/usr/bin/env bash
# integration/e2e-access.sh — access-point scenarios of pec-milter through a real Postfix:
# for each state backend (embedded, redis), a netns with only lo, Postfix (SASL submission
# with smtpd_milters = pec-milter, milter-free reinjection on 10025, Maildirs), redis, clamd
# and `pec-milter run --config` written by write_config. Then:
#   (1) mario.rossi -> anna.bianchi: anna gets one signed posta-certificata envelope carrying
#       the original, mario one signed accettazione listing anna
#   (2) forged X-Ricevuta / X-Trasporto headers do not survive at the envelope's top level
#   (3) EICAR attached: non-accettazione (X-VerificaSicurezza: errore), nothing to anna,
#       the original quarantined
#   (4) cittadino (upr) may write to upa holders only: -> mario (upa1) refused with a
#       non-accettazione, -> anna (upa) accepted
#   (5) redis only: redis down -> 4xx at end of DATA and nothing delivered; redis back, the
#       very same message (same Message-ID) -> exactly one envelope and one accettazione
#   (7) a login sends only as itself: cittadino (a holder of our domain) and anna (a login of
#       another domain) sending as mario -> 553 5.7.1 at MAIL, nothing signed, nothing relayed.
#       The submission service has Postfix's own check as shipped (reject_sender_login_mismatch):
#       it runs at RCPT (smtpd_delay_reject = yes), after the milter's MAIL stage, so the 553 at
#       MAIL is pec-milter's alone, and Postfix's check must not have fired (selftest (s) tests
#       Postfix's check alone, with no milter)
#   (H) issue 16: hostile submissions of the corpus (tests/fixtures/hostile, role level in
#       tests/hostile.rs) by mario, authenticated, through the submission service. Each gives the
#       outcome PEC-RULES defines, signed, exactly one notice to mario (never an accettazione and
#       a non-accettazione both), nothing unsigned to anna; after each, pec-milter's pid is alive
#       and a normal submission still gets its envelope and accettazione:
#       (Hm) an unclosed multipart boundary: no formal check covers MIME (§7.4) -> accettazione,
#            the envelope carries the original byte for byte
#       (Hj) raw 8-bit/0xFF Subject and 8-bit junk in header values -> accettazione, the envelope
#            verifies and keeps the raw bytes; the same with a NUL in a header value, (Hn) a NUL
#            inside the Message-ID, (H0) a NUL in the body -> refused at the end of DATA by the
#            shipped submission cleanup (550 5.7.1, message_reject_characters = \0): the milter
#            protocol would cut a header value at the NUL, so nothing is certified, no receipt,
#            nothing to anna, pec-milter records nothing for it
#       (Hl) a 900 KB one-word Subject line (Postfix passes pec-milter only its start, 60 000
#            bytes on this rig) and (Hb) a 1 200-character body line: a line over 998 characters
#            (RFC 5322 2.1.1) cannot cross an MTA intact (Postfix's smtp_line_length_limit breaks
#            it, and the envelope's signature with it) -> signed non-accettazione naming the
#            line's length, nothing to anna, no header line of ours over 998 characters, no panic
#       (Hf) X-Trasporto: posta-certificata, X-VerificaSicurezza, X-Mittente, a forged
#            X-Riferimento-Message-ID; (Hr) a fake accettazione (X-Ricevuta): none survives at the
#            envelope's top level nor in the carried original; the one X-Trasporto is ours and
#            X-Riferimento-Message-ID the holder's own Message-ID
#       (Hd) From: in another domain than MAIL FROM (the login owns MAIL FROM, so no 553):
#            §7.4 reverse path = From: -> signed non-accettazione naming it, without the
#            original, nothing to anna; the same address with the domain in capitals is the same
#            address -> accettazione
#   (6) embedded only: a 30 MB 8-bit original through the spool -> the envelope verifies and
#       carries it byte for byte, the spool directory is empty afterwards
#   (9) embedded only: the message log on a 2 MiB tmpfs, filled (and its file closed by
#       SIGUSR1, so that the next record needs a new file): a submission gets 4xx, nothing
#       signed or sent; with room again the MTA's retry gives one envelope, one accettazione,
#       one record, and `log verify` passes
#   (8) embedded only: holders kept in LDAP. slapd holds uid=mrossi (mail: mario's address);
#       pec-milter has [holders.ldap], Postfix the shipped "#ldap-holders:" submission variant
#       (pec-sender-login-ldap.cf). mrossi as mario -> envelope + accettazione; mrossi as
#       cittadino -> 553 5.7.1 at MAIL from pec-milter; slapd stopped -> 451 4.3.0 at MAIL from
#       pec-milter (cannot tell who owns the sender), nothing signed, nothing relayed
# Env: BACKENDS="embedded redis" (default), PEC_MILTER_BIN (default target/debug/pec-milter),
# KEEP=1 keeps the work dir. Prints "N passed, N failed" last; exit 1 if anything failed.
set -uo pipefail
. "$(dirname "$0")/lib.sh"

BIN=$(pec_milter_bin)
rig_begin pece2e
T0=$EPOCHREALTIME
# The daemon must exist and have `run`: fail cleanly otherwise.
need_pec_milter run

# ------------------------------------------------------------------ helpers
# (lib.sh: inspect_get, kind_is, verify_ok, cms_ok, postacert_body_has, hdr_is, hdr_absent,
# quarantine_count_is, no_pids_in_netns; they trust $CA, set per backend below)

# holders_ldif: the holders' directory of (8): uid=mrossi owns mario's address.
holders_ldif() {
  printf 'dn: o=postacert\nobjectClass: organization\no: postacert\n\n'
  printf 'dn: ou=holders,o=postacert\nobjectClass: organizationalUnit\nou: holders\n\n'
  printf 'dn: uid=mrossi,ou=holders,o=postacert\nobjectClass: inetOrgPerson\nuid: mrossi\n'
  printf 'cn: Mario Rossi\nsn: Rossi\nmail: %s\n' "$MARIO"
}
# holders_search_has FILTER LINE: an anonymous search of the holders (in the netns) prints LINE.
holders_search_has() {
  ns_exec ldapsearch -x -LLL -o ldif-wrap=no -H "ldap://127.0.0.1:$RIG_LDAP_PORT" \
    -b ou=holders,o=postacert "$1" | grep -qixF "$2"
}

destinatari_has() { inspect_get "$1" '" ".join(x["address"] for x in d["daticert"]["destinatari"])' | tr ' ' '\n' | grep -qx "$2"; }

# hostile_eml FIXTURE OUT TOK: a holder input of tests/fixtures/hostile/ for this rig, its other
# bytes unchanged: its addresses (mario@pec.acme.test, anna@pec.other.test) become $MARIO and
# $ANNA, TOK is appended to its Subject and goes into each @client.example msgid (each
# submission its own: a NUL inside one stays where it was).
hostile_eml() {
  python3 - "$RIG_ROOT/tests/fixtures/hostile/$1" "$2" "$MARIO" "$ANNA" "$3" <<'PY'
import re, sys
src, out, mario, anna, tok = sys.argv[1:6]
d = open(src, "rb").read()
d = d.replace(b"mario@pec.acme.test", mario.encode()).replace(b"anna@pec.other.test", anna.encode())
d = d.replace(b"@client.example>", b"." + tok.encode() + b"@client.example>")
d = re.sub(rb"(?im)^(Subject:[^\r\n]*)", lambda m: m.group(1) + b" " + tok.encode(), d, count=1)
open(out, "wb").write(d)
PY
}
# hdr_add FILE FIELD...: inserts each FIELD (raw bytes, printf %b escapes: \xff, \x00) as a
# header line of FILE, before its From: line.
hdr_add() {
  local f=$1 h; shift
  for h in "$@"; do
    python3 -c 'import sys; p, h = sys.argv[1], sys.argv[2].encode("latin-1").decode("unicode_escape").encode("latin-1")
d = open(p, "rb").read(); i = d.find(b"From:"); open(p, "wb").write(d[:i] + h + b"\r\n" + d[i:])' "$f" "$h" || return 1
  done
}
# body_carried ORIGINAL ENVELOPE: the body of ORIGINAL (after its header) is in ENVELOPE byte for
# byte (line ends aside).
body_carried() {
  python3 -c '
import sys
orig = open(sys.argv[1], "rb").read().replace(b"\r\n", b"\n").split(b"\n\n", 1)[1]
env = open(sys.argv[2], "rb").read().replace(b"\r\n", b"\n")
sys.exit(0 if orig.rstrip(b"\n") in env else 1)' "$1" "$2"
}
# bytes_in FILE HEX: FILE holds the bytes HEX (e.g. "43697474e0": raw, not re-encoded).
bytes_in() { python3 -c 'import sys; sys.exit(0 if bytes.fromhex(sys.argv[2]) in open(sys.argv[1], "rb").read() else 1)' "$1" "$2"; }
# postacert_fields ENVELOPE: the header fields of the message carried as postacert.eml, one
# "Name: value" a line (prints "no postacert.eml" and fails when there is none).
postacert_fields() {
  python3 - "$1" <<'PY'
import email, sys
from email import policy
m = email.message_from_binary_file(open(sys.argv[1], "rb"), policy=policy.compat32)
for part in m.walk():
    if part.get_content_type() == "message/rfc822":
        p = part.get_payload()
        inner = p[0] if isinstance(p, list) else email.message_from_string(p)
        for k, v in inner.items():
            print("%s: %s" % (k, " ".join(str(v).split())))
        sys.exit(0)
print("no postacert.eml", file=sys.stderr); sys.exit(1)
PY
}
# postacert_lacks ENVELOPE NAME...: the carried original has none of the fields NAME.
postacert_lacks() {
  local env=$1 fields n; shift
  fields=$(postacert_fields "$env") || return 2
  printf '%s\n' "$fields"
  for n in "$@"; do ! grep -qi "^$n:" <<<"$fields" || { echo "postacert.eml has $n"; return 1; }; done
}
# postacert_field_is ENVELOPE NAME VALUE: every NAME field of the carried original is VALUE
# (and there is one at least).
postacert_field_is() {
  local v; v=$(postacert_fields "$1" | grep -i "^$2:" | sed 's/^[^:]*: //' | sort -u)
  echo "postacert.eml $2: $v"; [ "$v" = "$3" ]
}
# notice_text_has FILE STRING: a text part of the signed notice FILE (transfer encoding decoded)
# has STRING.
notice_text_has() {
  python3 - "$1" "$2" <<'PY'
import email, sys
from email import policy
m = email.message_from_binary_file(open(sys.argv[1], "rb"), policy=policy.compat32)
for part in m.walk():
    if part.get_content_maintype() == "text":
        t = part.get_payload(decode=True) or b""
        cs = part.get_content_charset() or "utf-8"
        if sys.argv[2] in t.decode(cs, "replace"):
            sys.exit(0)
print("not in any text part", file=sys.stderr); sys.exit(1)
PY
}
# header_lines_within FILE N: no line of FILE's top-level header block is longer than N
# characters (CR excluded).
header_lines_within() {
  awk -v n="$2" '{ sub(/\r$/, "") } /^$/ { exit } length($0) > n { print "line " NR ": " length($0) " characters"; bad = 1 }
    END { exit bad }' "$1"
}
# signed_envelope_with FILE TOKEN: FILE is a posta-certificata that verifies, its postacert.eml
# body has TOKEN.
signed_envelope_with() { verify_ok "$1" && kind_is "$1" posta-certificata && postacert_body_has "$1" "$2"; }
# still_serving TAG: run_backend's pec-milter is alive, and a normal submission mario -> anna
# still gets one signed envelope and one accettazione (uses run_backend's locals: BACKEND, DIR,
# O, MARIO_MD, ANNA_MD).
still_serving() {
  local tag=$1 tok=$1-next-$RANDOM$RANDOM env rcpt pid
  pid=$(cat "$DIR/pec-milter.pid")
  ok "[$BACKEND] ($tag) pec-milter still running (pid $pid)" kill -0 "$pid"
  mark "$MARIO_MD" "$ANNA_MD"
  swaks_submit "$MARIO" "$MARIO_PW" "$MARIO" "$ANNA" --header "Subject: after $tag $tok" \
    --body "normal body-$tok" > "$O/$tag-next.txt" 2>&1
  ok "[$BACKEND] ($tag) next normal submission: 250" eod_is "$O/$tag-next.txt" '^<- +250 '
  ok "[$BACKEND] ($tag) next: anna gets exactly one message" expect_new "$ANNA_MD" 1
  ok "[$BACKEND] ($tag) next: mario gets exactly one message" expect_new "$MARIO_MD" 1
  env=$(new_files "$ANNA_MD" | head -1) rcpt=$(new_files "$MARIO_MD" | head -1)
  if [ -n "$env" ] && [ -n "$rcpt" ]; then
    ok "[$BACKEND] ($tag) next: a signed envelope carrying it" signed_envelope_with "$env" "body-$tok"
    ok "[$BACKEND] ($tag) next: an accettazione" kind_is "$rcpt" accettazione
  else
    fail "[$BACKEND] ($tag) next: envelope and accettazione (missing)"
  fi
}

# ------------------------------------------------------------------ one backend

run_backend() {
  local BACKEND=$1
  local DIR=$RIG_BASE/$BACKEND
  PF=$DIR/pf CA=$DIR/demo/ca.pem
  local MB=$PF/vmail
  local MARIO_MD=$MB/pec.demo.test/mario.rossi CITT_MD=$MB/pec.demo.test/cittadino
  local ANNA_MD=$MB/pec.other.test/anna.bianchi
  local O=$DIR/out TOK
  mkdir -p "$O"
  echo "# ==== backend: $BACKEND"

  # (8) embedded: holders in LDAP, for pec-milter and for Postfix's second line
  local HL_URL=ldap://127.0.0.1:$RIG_LDAP_PORT HL_BASE=ou=holders,o=postacert MROSSI_PW=mr-$RANDOM$RANDOM
  local -a PF_LDAP=()
  if [ "$BACKEND" = embedded ]; then
    holders_ldif > "$DIR/holders.ldif"
    ok "[$BACKEND] slapd up with the holders (uid=mrossi)" slapd_up "$DIR/slapd" "$RIG_LDAP_PORT" "$DIR/holders.ldif" || return 1
    PF_LDAP=(HOLDERS_LDAP="$HL_URL $HL_BASE" SASL_USERS="$RIG_SASL_USERS mrossi:$MROSSI_PW")
  fi
  ok "[$BACKEND] postfix instance with pec-milter on submission" \
    pf_instance "$PF" MILTERS="inet:127.0.0.1:$RIG_MILTER_PORT" "${PF_LDAP[@]}" || return 1
  ok "[$BACKEND] postfix up" pf_up "$PF" || return 1
  ok "[$BACKEND] clamd up" clamd_up "$DIR/clamd" "$RIG_CLAMD_PORT" || return 1
  if [ "$BACKEND" = redis ]; then ok "[$BACKEND] redis up" redis_up "$DIR/redis" "$RIG_REDIS_PORT" || return 1; fi
  if [ "$BACKEND" = embedded ]; then
    HOLDERS_LDAP_URL=$HL_URL HOLDERS_LDAP_BASE=$HL_BASE \
      ok "[$BACKEND] config written (with [holders.ldap])" write_config "$DIR" "$BACKEND" || return 1
  else
    ok "[$BACKEND] config written" write_config "$DIR" "$BACKEND" || return 1
  fi
  if [ "$BACKEND" = embedded ]; then
    # (9): the message log on a small filesystem of its own, to fill it
    mkdir -p "$DIR/log"
    ok "[$BACKEND] the message log's directory on a 2 MiB tmpfs" mount -t tmpfs -o size=2m pectestlog "$DIR/log" || return 1
    rig_defer umount "$DIR/log"
  fi
  ok "[$BACKEND] pec-milter run --config listens" pec_milter_up "$DIR" "$DIR/pec-milter.toml" || return 1
  ok "[$BACKEND] demo CA created by init_demo ($CA)" test -s "$CA" || return 1

  # ---- (1) mario.rossi -> anna.bianchi
  TOK=s1-$BACKEND-$RANDOM$RANDOM
  mark "$MARIO_MD" "$ANNA_MD"
  swaks_submit "$MARIO" "$MARIO_PW" "$MARIO" "$ANNA" --header "Subject: scenario 1 $TOK" \
    --body "original body body-$TOK" > "$O/1.txt" 2>&1
  ok "[$BACKEND] (1) submission accepted (250 at end of DATA)" eod_is "$O/1.txt" '^<- +250 '
  ok "[$BACKEND] (1) anna gets exactly one message" expect_new "$ANNA_MD" 1
  ok "[$BACKEND] (1) mario gets exactly one message" expect_new "$MARIO_MD" 1
  local ENV RCPT
  ENV=$(new_files "$ANNA_MD" | head -1) RCPT=$(new_files "$MARIO_MD" | head -1)
  if [ -n "$ENV" ]; then
    ok "[$BACKEND] (1) envelope: pec-milter verify accepts it" verify_ok "$ENV"
    ok "[$BACKEND] (1) envelope: inspect kind = posta-certificata" kind_is "$ENV" posta-certificata
    ok "[$BACKEND] (1) envelope: openssl cms -verify accepts it" cms_ok "$ENV"
    ok "[$BACKEND] (1) envelope: X-Trasporto: posta-certificata" hdr_is "$ENV" X-Trasporto posta-certificata
    ok "[$BACKEND] (1) envelope: postacert.eml carries the original body" postacert_body_has "$ENV" "body-$TOK"
  else
    fail "[$BACKEND] (1) envelope checks (no envelope)"
  fi
  if [ -n "$RCPT" ]; then
    ok "[$BACKEND] (1) receipt: inspect kind = accettazione" kind_is "$RCPT" accettazione
    ok "[$BACKEND] (1) receipt: pec-milter verify accepts it" verify_ok "$RCPT"
    ok "[$BACKEND] (1) receipt: openssl cms -verify accepts it" cms_ok "$RCPT"
    ok "[$BACKEND] (1) receipt: daticert destinatari lists $ANNA" destinatari_has "$RCPT" "$ANNA"
  else
    fail "[$BACKEND] (1) receipt checks (no receipt)"
  fi

  # ---- (2) forged X-Ricevuta / X-Trasporto
  TOK=s2-$BACKEND-$RANDOM$RANDOM
  mark "$MARIO_MD" "$ANNA_MD"
  swaks_submit "$MARIO" "$MARIO_PW" "$MARIO" "$ANNA" --header "Subject: scenario 2 $TOK" \
    --add-header "X-Ricevuta: accettazione" --add-header "X-Trasporto: errore" \
    --body "forged headers body-$TOK" > "$O/2.txt" 2>&1
  ok "[$BACKEND] (2) anna gets exactly one message" expect_new "$ANNA_MD" 1
  ok "[$BACKEND] (2) mario gets exactly one message" expect_new "$MARIO_MD" 1
  ENV=$(new_files "$ANNA_MD" | head -1) RCPT=$(new_files "$MARIO_MD" | head -1)
  if [ -n "$ENV" ]; then
    ok "[$BACKEND] (2) envelope top level: X-Trasporto is posta-certificata only" hdr_is "$ENV" X-Trasporto posta-certificata
    ok "[$BACKEND] (2) envelope top level: no X-Ricevuta" hdr_absent "$ENV" X-Ricevuta
    ok "[$BACKEND] (2) envelope: inspect kind = posta-certificata" kind_is "$ENV" posta-certificata
  else
    fail "[$BACKEND] (2) envelope checks (no envelope)"
  fi
  if [ -n "$RCPT" ]; then
    ok "[$BACKEND] (2) mario's only new message is the accettazione (X-Ricevuta)" hdr_is "$RCPT" X-Ricevuta accettazione
    ok "[$BACKEND] (2) it is an accettazione" kind_is "$RCPT" accettazione
    ok "[$BACKEND] (2) signature valid" verify_ok "$RCPT"
  else
    fail "[$BACKEND] (2) receipt checks (no receipt)"
  fi

  # ---- (3) EICAR attached
  TOK=s3-$BACKEND-$RANDOM$RANDOM
  mark "$MARIO_MD" "$ANNA_MD"
  {
    printf 'From: <%s>\r\nTo: <%s>\r\nSubject: scenario 3 %s\r\nMessage-ID: <%s@pec.demo.test>\r\n' "$MARIO" "$ANNA" "$TOK" "$TOK"
    printf 'Date: %s\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b-%s"\r\n\r\n' "$(LC_ALL=C date -R)" "$TOK"
    printf -- '--b-%s\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nsee the attachment\r\n' "$TOK"
    printf -- '--b-%s\r\nContent-Type: application/octet-stream; name="eicar.com"\r\nContent-Transfer-Encoding: base64\r\n' "$TOK"
    printf 'Content-Disposition: attachment; filename="eicar.com"\r\n\r\n'
    eicar_string | base64 | sed 's/$/\r/'
    printf -- '--b-%s--\r\n' "$TOK"
  } > "$O/3.eml"
  swaks_submit "$MARIO" "$MARIO_PW" "$MARIO" "$ANNA" --data "@$O/3.eml" > "$O/3.txt" 2>&1
  _log "[$BACKEND] (3) end-of-DATA reply: $(eod_reply "$O/3.txt")"
  ok "[$BACKEND] (3) mario gets exactly one message" expect_new "$MARIO_MD" 1
  ok "[$BACKEND] (3) nothing reaches anna" expect_new "$ANNA_MD" 0
  RCPT=$(new_files "$MARIO_MD" | head -1)
  if [ -n "$RCPT" ]; then
    ok "[$BACKEND] (3) it is a non-accettazione" kind_is "$RCPT" non-accettazione
    ok "[$BACKEND] (3) X-VerificaSicurezza: errore" hdr_is "$RCPT" X-VerificaSicurezza errore
    ok "[$BACKEND] (3) signature valid" verify_ok "$RCPT"
  else
    fail "[$BACKEND] (3) non-accettazione checks (no message)"
  fi
  ok "[$BACKEND] (3) quarantine holds one file" quarantine_count_is "$DIR/quarantine" 1

  # ---- (4) holder classes: cittadino is upr, mario upa1 (default_class), anna upa (@pec.other.test)
  TOK=s4-$BACKEND-$RANDOM$RANDOM
  mark "$CITT_MD" "$MARIO_MD" "$ANNA_MD"
  swaks_submit "$CITTADINO" "$CITTADINO_PW" "$CITTADINO" "$MARIO" --header "Subject: scenario 4a $TOK" \
    --body "upr to upa1 body-$TOK" > "$O/4a.txt" 2>&1
  _log "[$BACKEND] (4a) end-of-DATA reply: $(eod_reply "$O/4a.txt")"
  ok "[$BACKEND] (4a) cittadino (upr) -> mario (upa1): cittadino gets exactly one message" expect_new "$CITT_MD" 1
  ok "[$BACKEND] (4a) mario gets nothing" expect_new "$MARIO_MD" 0
  RCPT=$(new_files "$CITT_MD" | head -1)
  if [ -n "$RCPT" ]; then
    ok "[$BACKEND] (4a) it is a non-accettazione" kind_is "$RCPT" non-accettazione
    ok "[$BACKEND] (4a) signature valid" verify_ok "$RCPT"
  else
    fail "[$BACKEND] (4a) non-accettazione checks (no message)"
  fi
  mark "$CITT_MD" "$ANNA_MD"
  swaks_submit "$CITTADINO" "$CITTADINO_PW" "$CITTADINO" "$ANNA" --header "Subject: scenario 4b $TOK" \
    --body "upr to upa body-$TOK" > "$O/4b.txt" 2>&1
  ok "[$BACKEND] (4b) cittadino (upr) -> anna (upa): anna gets exactly one message" expect_new "$ANNA_MD" 1
  ok "[$BACKEND] (4b) cittadino gets exactly one message" expect_new "$CITT_MD" 1
  ENV=$(new_files "$ANNA_MD" | head -1) RCPT=$(new_files "$CITT_MD" | head -1)
  [ -n "$ENV" ] && ok "[$BACKEND] (4b) anna's is a posta-certificata" kind_is "$ENV" posta-certificata
  [ -n "$RCPT" ] && ok "[$BACKEND] (4b) cittadino's is an accettazione" kind_is "$RCPT" accettazione

  # ---- (7) the sender belongs to the login: 553 at MAIL, nothing signed, nothing relayed.
  # Postfix's second line (reject_sender_login_mismatch, as shipped) is on this listener too;
  # it answers at RCPT, after pec-milter's MAIL stage: the refusal at MAIL is pec-milter's.
  TOK=s7-$BACKEND-$RANDOM$RANDOM
  mark "$CITT_MD" "$MARIO_MD" "$ANNA_MD"
  ok "[$BACKEND] (7) submission has Postfix's sender-login check too (as shipped)" bash -c \
    "postconf -c $PF/etc -P | grep -qxF '127.0.0.1:$RIG_SUBMIT_PORT/inet/smtpd_sender_restrictions = reject_sender_login_mismatch'"
  local who pw login
  for who in cittadino anna; do
    if [ $who = cittadino ]; then pw=$CITTADINO_PW; login=$CITTADINO; else pw=$ANNA_PW; login=$ANNA; fi
    swaks_submit "$login" "$pw" "$MARIO" "$ANNA" --header "Subject: scenario 7 $who $TOK" \
      --body "not mine $TOK" > "$O/7-$who.txt" 2>&1
    ok "[$BACKEND] (7) $who logged in sending as mario: 553 5.7.1 at MAIL" \
      grep -qE '^<\*\* +553 5\.7\.1 PEC: the login .* may not send as ' "$O/7-$who.txt"
    ok "[$BACKEND] (7) $who: pec-milter logged login and sender" \
      grep -qE "login=$login sender=$MARIO.*does not own the sender address|does not own the sender address.*login=$login sender=$MARIO" "$DIR/pec-milter.log"
    ok "[$BACKEND] (7) $who: Postfix logged pec-milter's refusal at MAIL (milter-reject)" \
      grep -qF "milter-reject: MAIL from unknown[127.0.0.1]: 553 5.7.1 PEC: the login $login may not send as $MARIO" "$PF/maillog"
    fail "[$BACKEND] (7) $who: Postfix's own check did not answer (pec-milter alone refused)" \
      grep -qF "Sender address rejected: not owned by user $login" "$PF/maillog"
  done
  sleep 1
  ok "[$BACKEND] (7) nothing reaches anna" expect_new "$ANNA_MD" 0
  ok "[$BACKEND] (7) nothing to mario (no receipt)" expect_new "$MARIO_MD" 0
  ok "[$BACKEND] (7) nothing to cittadino" expect_new "$CITT_MD" 0
  ok "[$BACKEND] (7) postfix queue empty (nothing relayed)" pf_queue_empty "$PF" 10

  # ---- (H) issue 16: hostile submissions by an authenticated holder through the submission
  # service (the corpus of tests/fixtures/hostile, asserted at the role level in tests/hostile.rs;
  # the outcomes are PEC-RULES §7.4's: only the formal checks refuse). Each: exactly one signed
  # notice to mario, a signed envelope or nothing for anna; then still_serving.
  local H_MARKERS="X-Trasporto X-Ricevuta X-VerificaSicurezza X-Mittente"

  # (Hm) broken MIME: an unclosed multipart boundary and a base64 part that is not base64. No
  # formal check reads MIME: accettazione, the original carried as it was.
  TOK=Hm-$BACKEND-$RANDOM$RANDOM
  hostile_eml holder-mime-unclosed-boundary.eml "$O/Hm.eml" "$TOK"
  mark "$MARIO_MD" "$ANNA_MD"
  swaks_submit "$MARIO" "$MARIO_PW" "$MARIO" "$ANNA" --data "@$O/Hm.eml" > "$O/Hm.txt" 2>&1
  ok "[$BACKEND] (Hm) unclosed MIME boundary: 250 at end of DATA" eod_is "$O/Hm.txt" '^<- +250 '
  ok "[$BACKEND] (Hm) mario gets exactly one message (one notice, never two)" expect_new "$MARIO_MD" 1
  ok "[$BACKEND] (Hm) anna gets exactly one message" expect_new "$ANNA_MD" 1
  ENV=$(new_files "$ANNA_MD" | head -1) RCPT=$(new_files "$MARIO_MD" | head -1)
  if [ -n "$ENV" ]; then
    ok "[$BACKEND] (Hm) anna's: pec-milter verify accepts it" verify_ok "$ENV"
    ok "[$BACKEND] (Hm) anna's: openssl cms -verify accepts it" cms_ok "$ENV"
    ok "[$BACKEND] (Hm) anna's: inspect kind = posta-certificata" kind_is "$ENV" posta-certificata
    ok "[$BACKEND] (Hm) anna's: X-Trasporto: posta-certificata" hdr_is "$ENV" X-Trasporto posta-certificata
    ok "[$BACKEND] (Hm) the envelope carries the broken body byte for byte" body_carried "$O/Hm.eml" "$ENV"
  else
    fail "[$BACKEND] (Hm) envelope checks (no envelope)"
  fi
  if [ -n "$RCPT" ]; then
    ok "[$BACKEND] (Hm) mario's: an accettazione" kind_is "$RCPT" accettazione
    ok "[$BACKEND] (Hm) mario's: signature valid" verify_ok "$RCPT"
  else
    fail "[$BACKEND] (Hm) receipt checks (no receipt)"
  fi
  still_serving Hm

  # (Hj) a raw ISO-8859-1 / 0xFF Subject and 8-bit junk in header values. Formally correct:
  # accettazione; the carried original keeps the raw bytes (the envelope carries the original
  # unmodified, §2.2).
  TOK=Hj-$BACKEND-$RANDOM$RANDOM
  hostile_eml holder-non-utf8-subject.eml "$O/Hj.eml" "$TOK"
  hdr_add "$O/Hj.eml" 'X-Junk: \x80\x81\x82\x9f\xc0\xc1\xf5\xff'
  mark "$MARIO_MD" "$ANNA_MD"
  swaks_submit "$MARIO" "$MARIO_PW" "$MARIO" "$ANNA" --data "@$O/Hj.eml" > "$O/Hj.txt" 2>&1
  ok "[$BACKEND] (Hj) 8-bit header values, non-UTF-8 Subject: 250 at end of DATA" eod_is "$O/Hj.txt" '^<- +250 '
  ok "[$BACKEND] (Hj) mario gets exactly one message" expect_new "$MARIO_MD" 1
  ok "[$BACKEND] (Hj) anna gets exactly one message" expect_new "$ANNA_MD" 1
  ENV=$(new_files "$ANNA_MD" | head -1) RCPT=$(new_files "$MARIO_MD" | head -1)
  if [ -n "$ENV" ]; then
    ok "[$BACKEND] (Hj) anna's: a posta-certificata that verifies" signed_envelope_with "$ENV" Buongiorno
    ok "[$BACKEND] (Hj) anna's: openssl cms -verify accepts it" cms_ok "$ENV"
    ok "[$BACKEND] (Hj) the carried original keeps the raw Subject bytes" bytes_in "$ENV" "$(printf 'Citt\xe0 \xabprova\xbb \xff' | od -An -tx1 | tr -d ' \n')"
    ok "[$BACKEND] (Hj) ... and the raw 8-bit X-Junk value" bytes_in "$ENV" 8081829fc0c1f5ff
  else
    fail "[$BACKEND] (Hj) envelope checks (no envelope)"
  fi
  if [ -n "$RCPT" ]; then
    ok "[$BACKEND] (Hj) mario's: an accettazione" kind_is "$RCPT" accettazione
    ok "[$BACKEND] (Hj) mario's: signature valid" verify_ok "$RCPT"
    ok "[$BACKEND] (Hj) mario's subject: ACCETTAZIONE: Citt... $TOK" field_is "$RCPT" \
      "d['subject'].startswith('ACCETTAZIONE: Citt') and d['subject'].endswith('$TOK')" True
  else
    fail "[$BACKEND] (Hj) receipt checks (no receipt)"
  fi
  # (Hj NUL) the same with a NUL in a header value, (Hn) a NUL inside the Message-ID, (H0) a NUL
  # in the body: the submission's cleanup refuses the content (550 5.7.1) and skips the milter's
  # end of message: no receipt of any kind, nothing to anna, no record in pec-milter's log
  local hn nacc nnon fx
  for hn in Hj0:holder-non-utf8-subject Hn:holder-nul-in-message-id H0:holder-nul-and-8bit-body; do
    IFS=: read -r hn fx <<<"$hn"
    TOK=$hn-$BACKEND-$RANDOM$RANDOM
    hostile_eml "$fx.eml" "$O/$hn.eml" "$TOK"
    [ "$hn" = Hj0 ] && hdr_add "$O/$hn.eml" 'X-Nul: a\x00b'
    ok "[$BACKEND] ($hn) the message holds a NUL byte" bash -c "tr -d '\\000' < '$O/$hn.eml' | cmp -s - '$O/$hn.eml'; [ \$? = 1 ]"
    nacc=$(pec_milter_log_count "$DIR" 'accettazione: envelope signed') nnon=$(pec_milter_log_count "$DIR" 'non-accettazione')
    mark "$MARIO_MD" "$ANNA_MD"
    swaks_submit "$MARIO" "$MARIO_PW" "$MARIO" "$ANNA" --data "@$O/$hn.eml" > "$O/$hn.txt" 2>&1
    ok "[$BACKEND] ($hn) a NUL in the message: 550 5.7.1 at end of DATA (the submission's cleanup)" \
      eod_is "$O/$hn.txt" '^<\*\* +550 5\.7\.1 '
    sleep 1
    ok "[$BACKEND] ($hn) no receipt to mario" expect_new "$MARIO_MD" 0
    ok "[$BACKEND] ($hn) nothing reaches anna" expect_new "$ANNA_MD" 0
    ok "[$BACKEND] ($hn) pec-milter issued nothing for it (no accettazione, no non-accettazione logged)" \
      test "$(pec_milter_log_count "$DIR" 'accettazione: envelope signed'):$(pec_milter_log_count "$DIR" 'non-accettazione')" = "$nacc:$nnon"
  done
  still_serving Hj

  # (Hl) a 900 KB Subject line, (Hb) a 1 200-character body line: over RFC 5322's 998
  # characters, a line would be broken on the way to another provider (and the signature with
  # it): a non-accettazione naming the length, the original not sent
  local hl
  for hl in Hl Hb; do
    TOK=$hl-$BACKEND-$RANDOM$RANDOM
    python3 - "$O/$hl.eml" "$MARIO" "$ANNA" "$TOK" "$hl" <<'PY'
import sys
path, mario, anna, tok, case = sys.argv[1:6]
with open(path, "wb") as f:
    f.write(("From: <%s>\r\nTo: <%s>\r\nMessage-ID: <%s@pec.demo.test>\r\nMIME-Version: 1.0\r\n"
             "Subject: scenario %s %s " % (mario, anna, tok, case, tok)).encode())
    if case == "Hl":
        f.write(b"x" * (900 * 1024) + b"\r\n")
        f.write(("Content-Type: text/plain; charset=us-ascii\r\n\r\nlong line body-%s\r\n" % tok).encode())
    else:
        f.write(b"\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n")
        f.write(("body-%s\r\n" % tok).encode() + b"y" * 1200 + b"\r\nend\r\n")
PY
    mark "$MARIO_MD" "$ANNA_MD"
    swaks_submit "$MARIO" "$MARIO_PW" "$MARIO" "$ANNA" --data "@$O/$hl.eml" > "$O/$hl.txt" 2>&1
    ok "[$BACKEND] ($hl) a line over 998 characters: 250 at end of DATA (the original discarded, the notice sent)" \
      eod_is "$O/$hl.txt" '^<- +250 '
    ok "[$BACKEND] ($hl) mario gets exactly one message" expect_new "$MARIO_MD" 1
    ok "[$BACKEND] ($hl) nothing reaches anna" expect_new "$ANNA_MD" 0
    ok "[$BACKEND] ($hl) pec-milter logged the non-accettazione and why" \
      grep -qE "non-accettazione: original not sent.*supera il limite di 998|supera il limite di 998.*non-accettazione: original not sent" "$DIR/pec-milter.log"
    RCPT=$(new_files "$MARIO_MD" | head -1)
    if [ -n "$RCPT" ]; then
      ok "[$BACKEND] ($hl) mario's: a non-accettazione" kind_is "$RCPT" non-accettazione
      ok "[$BACKEND] ($hl) mario's: signature valid" verify_ok "$RCPT"
      ok "[$BACKEND] ($hl) mario's: it names the line's length and the limit" \
        notice_text_has "$RCPT" "supera il limite di 998"
      ok "[$BACKEND] ($hl) mario's: without the original (no postacert.eml)" field_is "$RCPT" 'd["postacert"] is None' True
      ok "[$BACKEND] ($hl) mario's header: no line over 998 characters (RFC 5322 2.1.1)" header_lines_within "$RCPT" 998
    else
      fail "[$BACKEND] ($hl) non-accettazione checks (no notice)"
    fi
  done
  [ -n "${RCPT:-}" ] && ok "[$BACKEND] (Hb) mario's: it names the 1 200-character line" \
    notice_text_has "$RCPT" "una riga del messaggio di 1200 caratteri"
  fail "[$BACKEND] (Hl) no panic in pec-milter's log" grep -q 'panicked' "$DIR/pec-milter.log"
  still_serving Hl

  # (Hf) X-Trasporto: posta-certificata, X-VerificaSicurezza: errore, X-Mittente and a forged
  # X-Riferimento-Message-ID; (Hr) a fake accettazione (X-Ricevuta: accettazione): both enveloped
  # as ordinary submissions, no holder's marker at the envelope's top level nor in the carried
  # original (section (2) checks X-Ricevuta / X-Trasporto: errore at the top level only)
  local h fx mid nmark
  for h in Hf:holder-forged-x-trasporto:m.1 Hr:holder-forged-x-ricevuta:m.2; do
    IFS=: read -r h fx mid <<<"$h"
    TOK=$h-$BACKEND-$RANDOM$RANDOM mid="<$mid.$TOK@client.example>"
    hostile_eml "$fx.eml" "$O/$h.eml" "$TOK"
    nmark=$(pec_milter_log_count "$DIR" 'holder wrote PEC marker header fields: removed')
    mark "$MARIO_MD" "$ANNA_MD"
    swaks_submit "$MARIO" "$MARIO_PW" "$MARIO" "$ANNA" --data "@$O/$h.eml" > "$O/$h.txt" 2>&1
    ok "[$BACKEND] ($h) forged markers ($fx): 250 at end of DATA" eod_is "$O/$h.txt" '^<- +250 '
    ok "[$BACKEND] ($h) mario gets exactly one message" expect_new "$MARIO_MD" 1
    ok "[$BACKEND] ($h) anna gets exactly one message" expect_new "$ANNA_MD" 1
    ok "[$BACKEND] ($h) pec-milter logged the markers it removed" bash -c \
      "[ \$(grep -cE 'holder wrote PEC marker header fields: removed' '$DIR/pec-milter.log') -gt $nmark ]"
    ENV=$(new_files "$ANNA_MD" | head -1) RCPT=$(new_files "$MARIO_MD" | head -1)
    if [ -n "$ENV" ]; then
      ok "[$BACKEND] ($h) anna's: a posta-certificata that verifies" signed_envelope_with "$ENV" "$([ $h = Hf ] && echo Buongiorno || echo forged)"
      ok "[$BACKEND] ($h) top level: X-Trasporto is posta-certificata only (ours)" hdr_is "$ENV" X-Trasporto posta-certificata
      ok "[$BACKEND] ($h) top level: no X-Ricevuta" hdr_absent "$ENV" X-Ricevuta
      ok "[$BACKEND] ($h) top level: no X-VerificaSicurezza" hdr_absent "$ENV" X-VerificaSicurezza
      ok "[$BACKEND] ($h) top level: no X-Mittente" hdr_absent "$ENV" X-Mittente
      ok "[$BACKEND] ($h) top level: X-Riferimento-Message-ID is the holder's Message-ID" hdr_is "$ENV" X-Riferimento-Message-ID "$mid"
      ok "[$BACKEND] ($h) carried original: none of $H_MARKERS" postacert_lacks "$ENV" $H_MARKERS
      ok "[$BACKEND] ($h) carried original: X-Riferimento-Message-ID is the holder's Message-ID" postacert_field_is "$ENV" X-Riferimento-Message-ID "$mid"
    else
      fail "[$BACKEND] ($h) envelope checks (no envelope)"
    fi
    if [ -n "$RCPT" ]; then
      ok "[$BACKEND] ($h) mario's: our accettazione (X-Ricevuta: accettazione)" hdr_is "$RCPT" X-Ricevuta accettazione
      ok "[$BACKEND] ($h) mario's: kind accettazione" kind_is "$RCPT" accettazione
      ok "[$BACKEND] ($h) mario's: signature valid" verify_ok "$RCPT"
      ok "[$BACKEND] ($h) mario's: no X-VerificaSicurezza" hdr_absent "$RCPT" X-VerificaSicurezza
      ok "[$BACKEND] ($h) mario's: X-Riferimento-Message-ID is the holder's Message-ID" hdr_is "$RCPT" X-Riferimento-Message-ID "$mid"
    else
      fail "[$BACKEND] ($h) receipt checks (no receipt)"
    fi
  done
  still_serving Hf

  # (Hd) From: in another domain than MAIL FROM. The login owns MAIL FROM (no 553 at MAIL);
  # §7.4 wants the reverse path equal to the From: address: non-accettazione, signed, naming it,
  # without the original, nothing to anna. (Hd2) the same address with its domain in capitals is
  # the same address (domains are case-insensitive): accettazione.
  TOK=Hd-$BACKEND-$RANDOM$RANDOM
  local MARIO_OTHER=${MARIO%@*}@pec.other.test
  {
    printf 'From: Mario Rossi <%s>\r\nTo: <%s>\r\nSubject: scenario Hd %s\r\nMessage-ID: <%s@pec.demo.test>\r\n' "$MARIO_OTHER" "$ANNA" "$TOK" "$TOK"
    printf 'Date: %s\r\n\r\nFrom: of another domain body-%s\r\n' "$(LC_ALL=C date -R)" "$TOK"
  } > "$O/Hd.eml"
  local ndis
  ndis=$(grep -c 'milter-discard' "$PF/maillog")
  mark "$MARIO_MD" "$ANNA_MD"
  swaks_submit "$MARIO" "$MARIO_PW" "$MARIO" "$ANNA" --data "@$O/Hd.eml" > "$O/Hd.txt" 2>&1
  fail "[$BACKEND] (Hd) From: $MARIO_OTHER, MAIL FROM $MARIO: no 553 at MAIL (the login owns MAIL FROM)" \
    grep -qE '^<\*\* +553 ' "$O/Hd.txt"
  ok "[$BACKEND] (Hd) 250 at end of DATA (the original discarded, the notice sent)" eod_is "$O/Hd.txt" '^<- +250 '
  ok "[$BACKEND] (Hd) mario gets exactly one message" expect_new "$MARIO_MD" 1
  ok "[$BACKEND] (Hd) nothing reaches anna" expect_new "$ANNA_MD" 0
  ok "[$BACKEND] (Hd) Postfix logged the discard of the original" bash -c \
    "[ \$(grep -c 'milter-discard' '$PF/maillog') -gt $ndis ]"
  ok "[$BACKEND] (Hd) pec-milter logged the non-accettazione and why" \
    grep -qE "non-accettazione: original not sent.*non corrisponde al mittente SMTP $MARIO|non corrisponde al mittente SMTP $MARIO.*non-accettazione: original not sent" "$DIR/pec-milter.log"
  RCPT=$(new_files "$MARIO_MD" | head -1)
  if [ -n "$RCPT" ]; then
    ok "[$BACKEND] (Hd) mario's: a non-accettazione" kind_is "$RCPT" non-accettazione
    ok "[$BACKEND] (Hd) mario's: signature valid" verify_ok "$RCPT"
    ok "[$BACKEND] (Hd) mario's: openssl cms -verify accepts it" cms_ok "$RCPT"
    ok "[$BACKEND] (Hd) mario's: X-Ricevuta: non-accettazione" hdr_is "$RCPT" X-Ricevuta non-accettazione
    ok "[$BACKEND] (Hd) mario's: no X-VerificaSicurezza (a formal problem, not a virus)" hdr_absent "$RCPT" X-VerificaSicurezza
    ok "[$BACKEND] (Hd) mario's: it names the From: / reverse path mismatch" \
      notice_text_has "$RCPT" "il mittente $MARIO_OTHER (From:) non corrisponde al mittente SMTP $MARIO"
    ok "[$BACKEND] (Hd) mario's: without the original (no postacert.eml)" field_is "$RCPT" 'd["postacert"] is None' True
  else
    fail "[$BACKEND] (Hd) non-accettazione checks (no notice)"
  fi
  TOK=Hd2-$BACKEND-$RANDOM$RANDOM
  {
    printf 'From: Mario Rossi <%s@PEC.DEMO.TEST>\r\nTo: <%s>\r\nSubject: scenario Hd2 %s\r\nMessage-ID: <%s@pec.demo.test>\r\n' "${MARIO%@*}" "$ANNA" "$TOK" "$TOK"
    printf 'Date: %s\r\n\r\nFrom: domain in capitals body-%s\r\n' "$(LC_ALL=C date -R)" "$TOK"
  } > "$O/Hd2.eml"
  mark "$MARIO_MD" "$ANNA_MD"
  swaks_submit "$MARIO" "$MARIO_PW" "$MARIO" "$ANNA" --data "@$O/Hd2.eml" > "$O/Hd2.txt" 2>&1
  ok "[$BACKEND] (Hd2) From: domain in capitals: 250 at end of DATA" eod_is "$O/Hd2.txt" '^<- +250 '
  ok "[$BACKEND] (Hd2) mario gets exactly one message" expect_new "$MARIO_MD" 1
  ok "[$BACKEND] (Hd2) anna gets exactly one message" expect_new "$ANNA_MD" 1
  ENV=$(new_files "$ANNA_MD" | head -1) RCPT=$(new_files "$MARIO_MD" | head -1)
  [ -n "$ENV" ] && ok "[$BACKEND] (Hd2) anna's: a posta-certificata that verifies" signed_envelope_with "$ENV" "body-$TOK"
  [ -n "$RCPT" ] && ok "[$BACKEND] (Hd2) mario's: an accettazione" kind_is "$RCPT" accettazione
  still_serving Hd

  # ---- (5) redis only: the state store is down -> tempfail; back -> exactly once
  if [ "$BACKEND" = redis ]; then
    TOK=s5-$BACKEND-$RANDOM$RANDOM
    {
      printf 'From: <%s>\r\nTo: <%s>\r\nSubject: scenario 5 %s\r\nMessage-ID: <%s@pec.demo.test>\r\n' "$MARIO" "$ANNA" "$TOK" "$TOK"
      printf 'Date: %s\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nsame message twice body-%s\r\n' "$(LC_ALL=C date -R)" "$TOK"
    } > "$O/5.eml"
    ok "[$BACKEND] (5) redis stopped" redis_down "$DIR/redis"
    mark "$MARIO_MD" "$ANNA_MD"
    swaks_submit "$MARIO" "$MARIO_PW" "$MARIO" "$ANNA" --data "@$O/5.eml" > "$O/5a.txt" 2>&1
    ok "[$BACKEND] (5) redis down: 4xx at end of DATA" eod_is "$O/5a.txt" '^<\*\* +4[0-9][0-9] '
    ok "[$BACKEND] (5) redis down: nothing for anna" expect_new "$ANNA_MD" 0
    ok "[$BACKEND] (5) redis down: nothing for mario" expect_new "$MARIO_MD" 0
    ok "[$BACKEND] (5) redis started again on the same port" redis_up "$DIR/redis" "$RIG_REDIS_PORT"
    swaks_submit "$MARIO" "$MARIO_PW" "$MARIO" "$ANNA" --data "@$O/5.eml" > "$O/5b.txt" 2>&1
    ok "[$BACKEND] (5) same message again: accepted (250 at end of DATA)" eod_is "$O/5b.txt" '^<- +250 '
    ok "[$BACKEND] (5) exactly one envelope for anna" expect_new "$ANNA_MD" 1
    ok "[$BACKEND] (5) exactly one message for mario" expect_new "$MARIO_MD" 1
    ENV=$(new_files "$ANNA_MD" | head -1) RCPT=$(new_files "$MARIO_MD" | head -1)
    [ -n "$ENV" ] && ok "[$BACKEND] (5) anna's is a posta-certificata" kind_is "$ENV" posta-certificata
    [ -n "$ENV" ] && ok "[$BACKEND] (5) carrying the original" postacert_body_has "$ENV" "body-$TOK"
    [ -n "$RCPT" ] && ok "[$BACKEND] (5) mario's is an accettazione" kind_is "$RCPT" accettazione
  fi

  # ---- (6) embedded only: a 30 MB original (8-bit text) through the spool: the body goes to
  # disk as Postfix sends it, the envelope is written to a spool file and sent back in 64 KiB
  # pieces. anna's envelope verifies and carries the original byte for byte; nothing is left
  # in the spool directory. The memory high-water mark is logged (BENCHMARKS.md measures it).
  if [ "$BACKEND" = embedded ]; then
    TOK=s6-$BACKEND-$RANDOM$RANDOM
    mark "$MARIO_MD" "$ANNA_MD"
    python3 - "$O/6.eml" "$MARIO" "$ANNA" "$TOK" <<'PY'
import sys
path, mario, anna, tok = sys.argv[1:5]
line = "riga %07d: città, perché, più — un messaggio grande\r\n"
with open(path, "wb") as f:
    f.write(("From: <%s>\r\nTo: <%s>\r\nSubject: scenario 6 %s\r\nMessage-ID: <%s@pec.demo.test>\r\n"
             "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
             "Content-Transfer-Encoding: 8bit\r\n\r\n" % (mario, anna, tok, tok)).encode())
    n = 0
    while f.tell() < 30 * 1024 * 1024:
        f.write((line % n).encode()); n += 1
    f.write(("end-%s\r\n" % tok).encode())
PY
    swaks_submit "$MARIO" "$MARIO_PW" "$MARIO" "$ANNA" --data "@$O/6.eml" > "$O/6.txt" 2>&1
    ok "[$BACKEND] (6) 30 MB submission accepted (250 at end of DATA)" eod_is "$O/6.txt" '^<- +250 '
    ok "[$BACKEND] (6) anna gets exactly one message" expect_new "$ANNA_MD" 1
    ok "[$BACKEND] (6) mario gets exactly one message (accettazione)" expect_new "$MARIO_MD" 1
    ENV=$(new_files "$ANNA_MD" | head -1)
    if [ -n "$ENV" ]; then
      ok "[$BACKEND] (6) envelope: openssl cms -verify accepts it" cms_ok "$ENV"
      ok "[$BACKEND] (6) envelope: inspect kind = posta-certificata" kind_is "$ENV" posta-certificata
      ok "[$BACKEND] (6) envelope carries the 30 MB body byte for byte" python3 -c '
import sys
orig = open(sys.argv[1], "rb").read().split(b"\r\n\r\n", 1)[1].replace(b"\r\n", b"\n")
env = open(sys.argv[2], "rb").read().replace(b"\r\n", b"\n")
sys.exit(0 if orig.rstrip(b"\n") in env else 1)' "$O/6.eml" "$ENV"
    else
      fail "[$BACKEND] (6) envelope checks (no envelope)"
    fi
    ok "[$BACKEND] (6) nothing left in the spool directory" test -z "$(ls -A "$DIR/spool")"
    _log "[$BACKEND] (6) pec-milter $(grep VmHWM "/proc/$(cat "$DIR/pec-milter.pid")/status" | tr -s ' \t' ' ') after the 30 MB message"
  fi

  # ---- (9) embedded only: the message log's disk is full -> 4xx at end of DATA, nothing signed,
  # nothing relayed, no receipt; room again -> the MTA's retry of the same message gives one
  # envelope and one accettazione, and the log verifies
  if [ "$BACKEND" = embedded ]; then
    TOK=s9-$BACKEND-$RANDOM$RANDOM
    {
      printf 'From: <%s>\r\nTo: <%s>\r\nSubject: scenario 9 %s\r\nMessage-ID: <%s@pec.demo.test>\r\n' "$MARIO" "$ANNA" "$TOK" "$TOK"
      printf 'Date: %s\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nlog disk full body-%s\r\n' "$(LC_ALL=C date -R)" "$TOK"
    } > "$O/9.eml"
    dd if=/dev/zero of="$DIR/log/filler" bs=4k >/dev/null 2>&1
    ok "[$BACKEND] (9) the log's filesystem is full" bash -c "[ \$(df --output=avail -B1 '$DIR/log' | tail -1) -lt 4096 ]"
    # the current file's last page may still take a few records: close it (SIGUSR1, as
    # midnight does) so that the next record needs a new file, and there is no room for one
    ok "[$BACKEND] (9) SIGUSR1: the current log file closed" kill -USR1 "$(cat "$DIR/pec-milter.pid")"
    sleep 0.5
    mark "$MARIO_MD" "$ANNA_MD"
    swaks_submit "$MARIO" "$MARIO_PW" "$MARIO" "$ANNA" --data "@$O/9.eml" > "$O/9a.txt" 2>&1
    ok "[$BACKEND] (9) log disk full: 4xx at end of DATA" eod_is "$O/9a.txt" '^<\*\* +4[0-9][0-9] '
    ok "[$BACKEND] (9) pec-milter logged why (the message log: no space left)" grep -qE "temporary failure.*message log.*No space left on device" "$DIR/pec-milter.log"
    ok "[$BACKEND] (9) ... and the dependency's state once: message-log down" bash -c \
      "[ \$(grep -cE 'dependency down.*dependency=\"message-log\"' '$DIR/pec-milter.log') = 1 ]"
    sleep 1
    ok "[$BACKEND] (9) log disk full: nothing for anna" expect_new "$ANNA_MD" 0
    ok "[$BACKEND] (9) log disk full: no accettazione for mario" expect_new "$MARIO_MD" 0
    rm -f "$DIR/log/filler"
    swaks_submit "$MARIO" "$MARIO_PW" "$MARIO" "$ANNA" --data "@$O/9.eml" > "$O/9b.txt" 2>&1
    ok "[$BACKEND] (9) room again, the same message: 250" eod_is "$O/9b.txt" '^<- +250 '
    ok "[$BACKEND] (9) exactly one envelope for anna" expect_new "$ANNA_MD" 1
    ok "[$BACKEND] (9) exactly one accettazione for mario" expect_new "$MARIO_MD" 1
    ok "[$BACKEND] (9) pec-milter logged the message log back" grep -qE 'dependency back.*dependency="message-log"' "$DIR/pec-milter.log"
    ok "[$BACKEND] (9) the log verifies" "$BIN" log verify "$DIR/log"
    ok "[$BACKEND] (9) its accettazione is recorded once" bash -c \
      "[ \$(grep -h 'scenario 9 $TOK' '$DIR'/log/*/*.jsonl | grep -c '\"event\":\"accettazione\"') = 1 ]"
  fi

  # ---- (8) embedded only: holders kept in LDAP. Last: it stops slapd, and Postfix's second line
  # (the unionmap with the ldap table) then answers 451 for every sender.
  if [ "$BACKEND" = embedded ]; then
    TOK=s8-$BACKEND-$RANDOM$RANDOM
    ok "[$BACKEND] (8) ldapsearch: uid=mrossi lists mario's address" holders_search_has '(uid=mrossi)' "mail: $MARIO"
    ok "[$BACKEND] (8) pec-milter asks LDAP for the holders' logins" \
      grep -qF "holders' logins: LDAP" "$DIR/pec-milter.log"
    ok "[$BACKEND] (8) submission: the shipped #ldap-holders: sender-login maps" bash -c \
      "postconf -c $PF/etc -P | grep -qxF '127.0.0.1:$RIG_SUBMIT_PORT/inet/smtpd_sender_login_maps = unionmap:{ldap:\$config_directory/pec-sender-login-ldap.cf,regexp:\$config_directory/pec-sender-login.regexp}'"
    mark "$MARIO_MD" "$ANNA_MD" "$CITT_MD"
    swaks_submit mrossi "$MROSSI_PW" "$MARIO" "$ANNA" --header "Subject: scenario 8 $TOK" \
      --body "sent by login mrossi body-$TOK" > "$O/8a.txt" 2>&1
    ok "[$BACKEND] (8a) login mrossi as mario: accepted (250 at end of DATA)" eod_is "$O/8a.txt" '^<- +250 '
    ok "[$BACKEND] (8a) Postfix: sasl_username=mrossi" grep -qF "sasl_username=mrossi" "$PF/maillog"
    ok "[$BACKEND] (8a) anna gets exactly one message" expect_new "$ANNA_MD" 1
    ok "[$BACKEND] (8a) mario gets exactly one message" expect_new "$MARIO_MD" 1
    ENV=$(new_files "$ANNA_MD" | head -1) RCPT=$(new_files "$MARIO_MD" | head -1)
    [ -n "$ENV" ] && ok "[$BACKEND] (8a) anna's: a posta-certificata that verifies" verify_ok "$ENV"
    [ -n "$ENV" ] && ok "[$BACKEND] (8a) carrying the original" postacert_body_has "$ENV" "body-$TOK"
    [ -n "$RCPT" ] && ok "[$BACKEND] (8a) mario's: an accettazione" kind_is "$RCPT" accettazione
    mark "$MARIO_MD" "$ANNA_MD" "$CITT_MD"
    swaks_submit mrossi "$MROSSI_PW" "$CITTADINO" "$ANNA" --header "Subject: scenario 8b $TOK" \
      --body "not mine $TOK" > "$O/8b.txt" 2>&1
    ok "[$BACKEND] (8b) login mrossi as cittadino (not in its entry): 553 5.7.1 at MAIL" \
      grep -qE '^<\*\* +553 5\.7\.1 PEC: the login mrossi may not send as ' "$O/8b.txt"
    ok "[$BACKEND] (8b) Postfix logged pec-milter's refusal at MAIL" \
      grep -qF "milter-reject: MAIL from unknown[127.0.0.1]: 553 5.7.1 PEC: the login mrossi may not send as $CITTADINO" "$PF/maillog"
    ok "[$BACKEND] (8) slapd stopped" slapd_down "$DIR/slapd"
    swaks_submit mrossi "$MROSSI_PW" "$MARIO" "$ANNA" --header "Subject: scenario 8c $TOK" \
      --body "directory down $TOK" > "$O/8c.txt" 2>&1
    ok "[$BACKEND] (8c) slapd down: 451 4.3.0 at MAIL from pec-milter" \
      grep -qE "^<\*\* +451 4\.3\.0 PEC: cannot check the sender's owner now" "$O/8c.txt"
    ok "[$BACKEND] (8c) pec-milter logged why (login, sender, the LDAP error)" \
      grep -qE "cannot tell whether the login owns the sender.*login=mrossi|login=mrossi.*cannot tell whether the login owns the sender" "$DIR/pec-milter.log"
    sleep 1
    ok "[$BACKEND] (8) nothing more reaches anna" expect_new "$ANNA_MD" 0
    ok "[$BACKEND] (8) nothing more to mario (no receipt)" expect_new "$MARIO_MD" 0
    ok "[$BACKEND] (8) nothing to cittadino" expect_new "$CITT_MD" 0
  fi

  # ---- teardown of this backend (the cleanup stack would do it too; here it is checked)
  ok "[$BACKEND] pec-milter exits 0 on SIGTERM" pec_milter_down "$DIR"
  fail "[$BACKEND] no panic in pec-milter's log" grep -q 'panicked' "$DIR/pec-milter.log"
  ok "[$BACKEND] nothing left in the queue" pf_queue_empty "$PF" 5
  ok "[$BACKEND] postfix stops (master gone, listeners closed)" pf_down "$PF"
  ok "[$BACKEND] clamd stops (process gone, port closed)" clamd_down "$DIR/clamd"
  if [ "$BACKEND" = redis ]; then ok "[$BACKEND] redis stops (process gone, port closed)" redis_down "$DIR/redis"; fi
  ok "[$BACKEND] no process left in the netns" no_pids_in_netns
  return 0
}

for B in ${BACKENDS:-embedded redis}; do
  if ! run_backend "$B"; then
    fail "[$B] setup failed: scenarios skipped"
    pec_milter_down "$RIG_BASE/$B" 2>/dev/null; pf_down "$RIG_BASE/$B/pf"
    clamd_down "$RIG_BASE/$B/clamd"; redis_down "$RIG_BASE/$B/redis"
  fi
done
_log "e2e-access took $(rig_elapsed "$T0") s"
rig_finish
