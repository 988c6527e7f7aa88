# shellcheck shell=bash
# integration/softhsm.sh — a SoftHSM2 token holding the provider key, for the PKCS#11 tests.
# Source it (after lib.sh, or alone: it needs nothing from the rig):
#
#   . "$(dirname "$0")/softhsm.sh"
#   hsm_env DIR                        # DIR/softhsm2.conf + DIR/tokens, exports SOFTHSM2_CONF
#   hsm_token LABEL                    # a new token (SO PIN $HSM_SO_PIN, user PIN $HSM_PIN)
#   hsm_keygen LABEL                   # RSA-2048 key pair GENERATED INSIDE the token (id 01, label pec-sign)
#   hsm_test_ca DIR ORG                # a test CA like `init-demo`'s: DIR/ca.pem, DIR/ca.key
#   hsm_issue_cert DIR LABEL ORG DOMAIN  # CSR signed by the token key (openssl + libengine-pkcs11-openssl),
#                                      # certificate from DIR's CA (subject/SAN as the demo certificate),
#                                      # written to DIR/hsm-provider.crt and into the token (id 01)
#   hsm_config CONFIG PIN_FILE LABEL [POOL]   # switches a write_config config to backend = "pkcs11"
#   hsm_backup LABEL DEST | hsm_delete LABEL | hsm_restore LABEL DEST   # token removal and restore
#
# Tokens are found by label (SoftHSM2 gives each token a random slot id). A key generated in the
# token cannot be exported: to simulate "the token goes away and comes back", hsm_backup copies
# the token's files, hsm_delete runs `softhsm2-util --delete-token`, hsm_restore copies them back.
# A running pec-milter then sees CKR_OBJECT_HANDLE_INVALID / CKR_GENERAL_ERROR and, after a
# C_Finalize + C_Initialize, finds the token again.

: "${HSM_MODULE:=/usr/lib/softhsm/libsofthsm2.so}"
: "${HSM_PIN:=4711-pec}"
: "${HSM_SO_PIN:=12345678}"
: "${HSM_KEY_LABEL:=pec-sign}"
: "${HSM_KEY_ID:=01}"

# hsm_env DIR: SoftHSM2 configuration with its own token directory; exports SOFTHSM2_CONF.
hsm_env() {
  local D=$1
  [ -r "$HSM_MODULE" ] || { echo "hsm_env: $HSM_MODULE missing (integration/deps.sh installs softhsm2)" >&2; return 1; }
  mkdir -p "$D/tokens" || return 1
  printf 'directories.tokendir = %s/tokens\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n' \
    "$D" > "$D/softhsm2.conf"
  export SOFTHSM2_CONF=$D/softhsm2.conf
  HSM_DIR=$D
}

# hsm_token LABEL: initialise a free slot's token with LABEL.
hsm_token() {
  softhsm2-util --init-token --free --label "$1" --so-pin "$HSM_SO_PIN" --pin "$HSM_PIN" >/dev/null
}

# hsm_keygen LABEL: RSA-2048 key pair made by the token (CKA_SENSITIVE, never extractable).
hsm_keygen() {
  pkcs11-tool --module "$HSM_MODULE" --token-label "$1" --login --pin "$HSM_PIN" \
    --keypairgen --key-type rsa:2048 --id "$HSM_KEY_ID" --label "$HSM_KEY_LABEL"
}

# hsm_test_ca DIR ORG: self-signed RSA-2048 CA as crypto::pki makes it (C=IT, O=ORG, CN=ORG Test CA,
# basicConstraints CA critical, keyUsage keyCertSign+cRLSign critical). `init-demo` keeps no CA key,
# so the HSM rig makes its own CA to certify the token's key.
hsm_test_ca() {
  local D=$1 org=$2
  mkdir -p "$D"
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$D/ca.key" -out "$D/ca.pem" -days 3650 -sha256 \
    -subj "/C=IT/O=$org/CN=$org Test CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -addext "subjectKeyIdentifier=hash" 2>/dev/null
}

# hsm_issue_cert DIR LABEL ORG DOMAIN: the provider certificate of the token's key.
hsm_issue_cert() {
  local D=$1 label=$2 org=$3 domain=$4 uri
  uri="pkcs11:token=$label;object=$HSM_KEY_LABEL;type=private;pin-value=$HSM_PIN"
  # The CSR is signed inside the token (the engine goes through p11-kit to SoftHSM2).
  OPENSSL_CONF=/dev/null openssl req -new -engine pkcs11 -keyform engine -key "$uri" -sha256 \
    -subj "/C=IT/O=$org/CN=Posta Certificata $org" -out "$D/hsm-provider.csr" 2>"$D/hsm-csr.err" \
    || { cat "$D/hsm-csr.err" >&2; return 1; }
  openssl req -in "$D/hsm-provider.csr" -noout -verify 2>/dev/null || { echo "hsm_issue_cert: CSR signature invalid" >&2; return 1; }
  cat > "$D/hsm-ext.cnf" <<EOF
keyUsage = critical, digitalSignature, nonRepudiation
extendedKeyUsage = emailProtection
subjectAltName = email:posta-certificata@$domain
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF
  openssl x509 -req -in "$D/hsm-provider.csr" -CA "$D/ca.pem" -CAkey "$D/ca.key" \
    -set_serial "0x4$(openssl rand -hex 15)" -days 3650 -sha256 -extfile "$D/hsm-ext.cnf" \
    -out "$D/hsm-provider.crt" 2>/dev/null || return 1
  openssl x509 -in "$D/hsm-provider.crt" -outform DER -out "$D/hsm-provider.der" || return 1
  pkcs11-tool --module "$HSM_MODULE" --token-label "$label" --login --pin "$HSM_PIN" \
    --write-object "$D/hsm-provider.der" --type cert --id "$HSM_KEY_ID" --label "$HSM_KEY_LABEL" >/dev/null
}

# hsm_config CONFIG PIN_FILE LABEL [POOL=0]: [signing] backend = "pkcs11" (init_demo off) and a
# [signing.pkcs11] table at the end of CONFIG (a file written by lib.sh write_config).
hsm_config() {
  local cfg=$1 pin=$2 label=$3 pool=${4:-0}
  sed -i -e '/^\[signing\]/,/^\[/{s/^backend = "pem"/backend = "pkcs11"/;s/^init_demo = true/init_demo = false/}' "$cfg" || return 1
  cat >> "$cfg" <<EOF

[signing.pkcs11]
module = "$HSM_MODULE"
token_label = "$label"
key_label = "$HSM_KEY_LABEL"
key_id = "$HSM_KEY_ID"
pin_file = "$pin"
pool_size = $pool
EOF
}

# hsm_token_dir LABEL: the token's directory under $HSM_DIR/tokens (SoftHSM2 names it by UUID).
hsm_token_dir() {
  local t
  for t in "$HSM_DIR"/tokens/*/; do
    if [ -f "$t/token.object" ] && grep -qa -- "$1" "$t/token.object"; then printf '%s' "${t%/}"; return 0; fi
  done
  echo "hsm_token_dir: no token $1 in $HSM_DIR/tokens" >&2
  return 1
}

# hsm_backup LABEL DEST: copy the token's files (and remember its directory name in DEST/.name).
hsm_backup() {
  local t
  t=$(hsm_token_dir "$1") || return 1
  rm -rf "$2"; mkdir -p "$2" && cp -a "$t/." "$2/" && basename "$t" > "$2/.name"
}

# hsm_delete LABEL: the token goes away (what a live process sees as a removed token).
hsm_delete() { softhsm2-util --delete-token --token "$1" >/dev/null; }

# hsm_restore LABEL DEST: the same token back (same files, same key).
hsm_restore() {
  local name
  name=$(cat "$2/.name") || return 1
  mkdir -p "$HSM_DIR/tokens/$name" && cp -a "$2/." "$HSM_DIR/tokens/$name/" && rm -f "$HSM_DIR/tokens/$name/.name"
}
