#!/usr/bin/env bash
# integration/e2e-hsm.sh — the provider key in an HSM (SoftHSM2 over PKCS#11), end to end through
# a real Postfix (SASL submission, smtpd_milters = pec-milter), clamd and the embedded state store,
# in a network namespace with only lo:
#   (0) a SoftHSM2 token with an RSA-2048 key GENERATED INSIDE it (pkcs11-tool --keypairgen), a
#       CSR signed by the token key (openssl -engine pkcs11), a certificate from the rig's test CA
#       (subject/SAN as the demo certificate), written into the token
#   (1) `pec-milter hsm-check` passes; with a wrong PIN, a missing module, a missing key it exits 1
#       and names the cause; `pec-milter run` refuses to start with the wrong PIN
#   (2) the access scenario 1 signed by the token: mario -> anna, one envelope and one accettazione,
#       both accepted by `openssl cms -verify`, their signer is the token's certificate
#   (3) the token removed while mail flows: 4xx at end of DATA, nothing delivered; the token back:
#       the same messages sent again go through, exactly once, all signed by the token's key
#   (4) a wrong PIN in pin_file when the sessions must log in again (token gone, then back):
#       451 naming CKR_PIN_INCORRECT, the refused PIN tried once; pin_file fixed: 250, no restart
# Env: PEC_MILTER_BIN (default target/debug/pec-milter), KEEP=1 keeps the work dir.
# Prints "N passed, N failed" last; exit 1 if anything failed.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/softhsm.sh"

BIN=$(pec_milter_bin)
rig_begin pechsm
T0=$EPOCHREALTIME
need_pec_milter hsm-check
[ -r "$HSM_MODULE" ] || die "$HSM_MODULE missing: integration/deps.sh installs softhsm2"
for t in softhsm2-util pkcs11-tool; do command -v "$t" >/dev/null || die "$t missing (integration/deps.sh)"; done

DIR=$RIG_BASE/hsm PF=$DIR/pf CA=$DIR/demo/ca.pem O=$DIR/out
MB=$PF/vmail MARIO_MD=$MB/pec.demo.test/mario.rossi ANNA_MD=$MB/pec.other.test/anna.bianchi
LABEL=pec-demo ORG="Demo PEC S.p.A."
mkdir -p "$O" "$DIR/demo"

# ------------------------------------------------------------------ helpers
# (lib.sh: inspect_get, kind_is, verify_ok, cms_ok; they trust $CA, the rig's test CA)
# signer_is_hsm FILE: the signature's signer certificate is the token's (SHA-1 of its DER).
signer_is_hsm() { [ "$(inspect_get "$1" 'd["signature"]["signer_sha1"]')" = "$HSM_SHA1" ]; }
# check_cmd EXPECT_EXIT ERE CMD...: CMD exits EXPECT_EXIT and its output matches ERE.
check_cmd() {
  local want=$1 ere=$2 out rc; shift 2
  out=$("$@" 2>&1); rc=$?
  echo "$out"
  [ "$rc" = "$want" ] || { echo "exit $rc, expected $want" >&2; return 1; }
  grep -qE -- "$ere" <<<"$out"
}
# message FILE N TOKEN: a submission from mario to anna.
message() {
  printf 'From: <%s>\r\nTo: <%s>\r\nSubject: hsm %s %s\r\nMessage-ID: <%s.%s@pec.demo.test>\r\n' "$MARIO" "$ANNA" "$2" "$3" "$2" "$3" > "$1"
  printf 'Date: %s\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nsigned in the HSM body-%s-%s\r\n' "$(LC_ALL=C date -R)" "$2" "$3" >> "$1"
}
all_signed_by_hsm() { local f; for f in $(maildir_files "$1"); do cms_ok "$f" >/dev/null 2>&1 && signer_is_hsm "$f" || { echo "not signed by the token: $f" >&2; return 1; }; done; }

# ------------------------------------------------------------------ (0) the token
ok "(0) SoftHSM2 token directory" hsm_env "$DIR/softhsm" || rig_finish
ok "(0) token $LABEL initialised" hsm_token "$LABEL"
ok "(0) RSA-2048 key pair generated inside the token" check_cmd 0 'never extractable' hsm_keygen "$LABEL"
ok "(0) test CA" hsm_test_ca "$DIR/demo" "$ORG"
ok "(0) CSR signed by the token key, certificate issued and written into the token" \
  hsm_issue_cert "$DIR/demo" "$LABEL" "$ORG" pec.demo.test
ok "(0) the certificate's SAN is posta-certificata@pec.demo.test" \
  check_cmd 0 'email:posta-certificata@pec.demo.test' openssl x509 -in "$DIR/demo/hsm-provider.crt" -noout -ext subjectAltName
ok "(0) the token lists the private key and the certificate (id 01)" \
  check_cmd 0 'Certificate Object' pkcs11-tool --module "$HSM_MODULE" --token-label "$LABEL" --login --pin "$HSM_PIN" --list-objects
HSM_SHA1=$(openssl x509 -in "$DIR/demo/hsm-provider.crt" -noout -fingerprint -sha1 | sed 's/.*=//; s/://g')
printf '%s\n' "$HSM_PIN" > "$DIR/pin"; chmod 600 "$DIR/pin"
printf '0000\n' > "$DIR/wrong-pin"; chmod 600 "$DIR/wrong-pin"

# ------------------------------------------------------------------ (1) hsm-check and start-up
ok "config written (pkcs11 backend)" write_config "$DIR" embedded
ok "config switched to [signing] backend = \"pkcs11\"" hsm_config "$DIR/pec-milter.toml" "$DIR/pin" "$LABEL"
ok "check-config accepts it and does not show the PIN" \
  bash -c "out=\$('$BIN' check-config --config '$DIR/pec-milter.toml') && grep -q Pkcs11 <<<\"\$out\" && ! grep -qF -- '$HSM_PIN' <<<\"\$out\""
ok "(1) hsm-check: OK, test signature verified with the certificate's key" \
  check_cmd 0 "verified with the certificate's public key" "$BIN" hsm-check --config "$DIR/pec-milter.toml"
sed "s#^pin_file = .*#pin_file = \"$DIR/wrong-pin\"#" "$DIR/pec-milter.toml" > "$DIR/wrong-pin.toml"
sed "s#^module = .*#module = \"/usr/lib/softhsm/libsofthsm2-missing.so\"#" "$DIR/pec-milter.toml" > "$DIR/no-module.toml"
sed "s#^key_label = .*#key_label = \"no-such-key\"#" "$DIR/pec-milter.toml" > "$DIR/no-key.toml"
ok "(1) hsm-check, wrong PIN: exit 1, CKR_PIN_INCORRECT" check_cmd 1 'wrong PIN.*CKR_PIN_INCORRECT' "$BIN" hsm-check --config "$DIR/wrong-pin.toml"
ok "(1) hsm-check, missing module: exit 1, module not found" check_cmd 1 'libsofthsm2-missing.so not found' "$BIN" hsm-check --config "$DIR/no-module.toml"
ok "(1) hsm-check, missing key: exit 1, no private key" check_cmd 1 'no private key with label "no-such-key"' "$BIN" hsm-check --config "$DIR/no-key.toml"
fail "(1) hsm-check output never contains the PIN" grep -rqF -- "$HSM_PIN" <("$BIN" hsm-check --config "$DIR/pec-milter.toml" 2>&1)
ok "(1) run with the wrong PIN: refuses to start, names CKR_PIN_INCORRECT" \
  check_cmd 2 "CKR_PIN_INCORRECT" ns_exec timeout 20 "$BIN" run --config "$DIR/wrong-pin.toml"

# ------------------------------------------------------------------ (2) access scenario 1 with the HSM key
ok "postfix instance with pec-milter on submission" pf_instance "$PF" MILTERS="inet:127.0.0.1:$RIG_MILTER_PORT" || rig_finish
ok "postfix up" pf_up "$PF" || rig_finish
ok "clamd up" clamd_up "$DIR/clamd" "$RIG_CLAMD_PORT" || rig_finish
ok "pec-milter run (pkcs11 backend) listens" pec_milter_up "$DIR" "$DIR/pec-milter.toml" || rig_finish
ok "its log: sessions logged in, test signature verified" grep -q 'PKCS#11 key ready' "$DIR/pec-milter.log"
fail "no demo PEM key was created" test -e "$DIR/demo/provider.key"

TOK=s1-$RANDOM$RANDOM
mark "$MARIO_MD" "$ANNA_MD"
swaks_submit "$MARIO" "$MARIO_PW" "$MARIO" "$ANNA" --header "Subject: hsm scenario 1 $TOK" \
  --body "original body body-$TOK" > "$O/1.txt" 2>&1
ok "(2) submission accepted (250 at end of DATA)" eod_is "$O/1.txt" '^<- +250 '
ok "(2) anna gets exactly one message" expect_new "$ANNA_MD" 1
ok "(2) mario gets exactly one message" expect_new "$MARIO_MD" 1
ENV=$(new_files "$ANNA_MD" | head -1) RCPT=$(new_files "$MARIO_MD" | head -1)
if [ -n "$ENV" ] && [ -n "$RCPT" ]; then
  ok "(2) envelope: inspect kind = posta-certificata" kind_is "$ENV" posta-certificata
  ok "(2) envelope: openssl cms -verify accepts it" cms_ok "$ENV"
  ok "(2) envelope: pec-milter verify accepts it" verify_ok "$ENV"
  ok "(2) envelope: signed with the token's certificate" signer_is_hsm "$ENV"
  ok "(2) receipt: inspect kind = accettazione" kind_is "$RCPT" accettazione
  ok "(2) receipt: openssl cms -verify accepts it" cms_ok "$RCPT"
  ok "(2) receipt: signed with the token's certificate" signer_is_hsm "$RCPT"
else
  fail "(2) envelope and receipt checks (missing: envelope '${ENV}' receipt '${RCPT}')"
fi

# ------------------------------------------------------------------ (3) the token goes away and comes back
message "$O/3a.eml" a "$TOK"; message "$O/3b.eml" b "$TOK"
ok "(3) token files backed up" hsm_backup "$LABEL" "$DIR/token-backup"
ok "(3) token removed (softhsm2-util --delete-token)" hsm_delete "$LABEL"
mark "$MARIO_MD" "$ANNA_MD"
swaks_submit "$MARIO" "$MARIO_PW" "$MARIO" "$ANNA" --data "@$O/3a.eml" > "$O/3a-gone.txt" 2>&1
swaks_submit "$MARIO" "$MARIO_PW" "$MARIO" "$ANNA" --data "@$O/3b.eml" > "$O/3b-gone.txt" 2>&1
ok "(3) token gone: message a gets 451 at end of DATA" eod_is "$O/3a-gone.txt" '^<\*\* +451 '
ok "(3) token gone: message b gets 451 at end of DATA" eod_is "$O/3b-gone.txt" '^<\*\* +451 '
ok "(3) token gone: nothing for anna" expect_new "$ANNA_MD" 0
ok "(3) token gone: nothing for mario" expect_new "$MARIO_MD" 0
ok "(3) the log names the cause (no token labelled $LABEL)" grep -q "no token labelled" "$DIR/pec-milter.log"
ok "(3) token restored (same files, same key)" hsm_restore "$LABEL" "$DIR/token-backup"
sleep 1   # past the re-initialisation interval (0.5 s)
swaks_submit "$MARIO" "$MARIO_PW" "$MARIO" "$ANNA" --data "@$O/3a.eml" > "$O/3a-back.txt" 2>&1
swaks_submit "$MARIO" "$MARIO_PW" "$MARIO" "$ANNA" --data "@$O/3b.eml" > "$O/3b-back.txt" 2>&1
ok "(3) token back: message a sent again, 250" eod_is "$O/3a-back.txt" '^<- +250 '
ok "(3) token back: message b sent again, 250" eod_is "$O/3b-back.txt" '^<- +250 '
ok "(3) token back: anna gets exactly two envelopes" expect_new "$ANNA_MD" 2
ok "(3) token back: mario gets exactly two accettazioni" expect_new "$MARIO_MD" 2
ok "(3) the log: library re-initialised, token found" grep -q 're-initialised: token found' "$DIR/pec-milter.log"
n=0; for f in $(new_files "$ANNA_MD"); do n=$((n + 1)); ok "(3) re-sent message $n reached anna as a posta-certificata" kind_is "$f" posta-certificata; done
ok "(3) every message anna holds is signed by the token (openssl cms -verify + signer)" all_signed_by_hsm "$ANNA_MD"
ok "(3) every message mario holds is signed by the token (openssl cms -verify + signer)" all_signed_by_hsm "$MARIO_MD"

# ------------------------------------------------------------------ (4) a wrong PIN at re-login
# The sessions stay logged in while the token is there; they must log in again after it comes
# back. With a wrong PIN in pin_file meanwhile: 451 naming the cause, the wrong PIN tried once;
# pin_file corrected: mail goes through again, no restart.
# (SoftHSM2 keeps live sessions working when a token is deleted and restored with nothing
# signed in between: the library must first have seen it gone.)
message "$O/4.eml" 4 "$TOK"
printf '0000\n' > "$DIR/pin"
mark "$MARIO_MD" "$ANNA_MD"
ok "(4) token removed" hsm_delete "$LABEL"
swaks_submit "$MARIO" "$MARIO_PW" "$MARIO" "$ANNA" --data "@$O/4.eml" > "$O/4-gone.txt" 2>&1
ok "(4) token gone: 451 at end of DATA" eod_is "$O/4-gone.txt" '^<\*\* +451 '
ok "(4) token restored, with a wrong PIN in pin_file now" hsm_restore "$LABEL" "$DIR/token-backup"
sleep 1
swaks_submit "$MARIO" "$MARIO_PW" "$MARIO" "$ANNA" --data "@$O/4.eml" > "$O/4-wrong.txt" 2>&1
swaks_submit "$MARIO" "$MARIO_PW" "$MARIO" "$ANNA" --data "@$O/4.eml" > "$O/4-wrong2.txt" 2>&1
ok "(4) wrong PIN: 451 at end of DATA" eod_is "$O/4-wrong.txt" '^<\*\* +451 '
ok "(4) wrong PIN, MTA retry: 451 again" eod_is "$O/4-wrong2.txt" '^<\*\* +451 '
ok "(4) wrong PIN: nothing for anna" expect_new "$ANNA_MD" 0
ok "(4) wrong PIN: nothing for mario" expect_new "$MARIO_MD" 0
ok "(4) the log names CKR_PIN_INCORRECT" grep -q 'CKR_PIN_INCORRECT' "$DIR/pec-milter.log"
ok "(4) the refused PIN was tried once, not at every retry" \
  bash -c "[ \$(grep -c 'HSM login refused: wrong PIN' '$DIR/pec-milter.log') = 1 ]"
printf '%s\n' "$HSM_PIN" > "$DIR/pin"
swaks_submit "$MARIO" "$MARIO_PW" "$MARIO" "$ANNA" --data "@$O/4.eml" > "$O/4-fixed.txt" 2>&1
ok "(4) pin_file fixed, no restart: 250" eod_is "$O/4-fixed.txt" '^<- +250 '
ok "(4) exactly one envelope for anna" expect_new "$ANNA_MD" 1
ok "(4) exactly one accettazione for mario" expect_new "$MARIO_MD" 1
ENV=$(new_files "$ANNA_MD" | head -1)
if [ -n "$ENV" ]; then
  ok "(4) envelope: openssl cms -verify accepts it" cms_ok "$ENV"
  ok "(4) envelope: signed with the token's certificate" signer_is_hsm "$ENV"
fi

# ------------------------------------------------------------------ teardown
ok "pec-milter exits 0 on SIGTERM" pec_milter_down "$DIR"
fail "no panic in pec-milter's log" grep -q 'panicked' "$DIR/pec-milter.log"
fail "the PIN is not in pec-milter's log" grep -qF -- "$HSM_PIN" "$DIR/pec-milter.log"
ok "nothing left in the queue" pf_queue_empty "$PF" 5
_log "e2e-hsm took $(rig_elapsed "$T0") s"
rig_finish
