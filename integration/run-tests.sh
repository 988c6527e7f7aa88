#!/usr/bin/env bash
# The test command of the README: installs what the tests need (as root),
# then runs every test: unit, property, sample and interoperability tests
# (openssl, xmllint, Python email), then the end-to-end scripts on real
# Postfix, Redis and clamd in a network namespace with only loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
bash integration/deps.sh
cargo test --all-targets --locked "$@"
bash integration/selftest.sh
# The benchmark harness is not run here (integration/bench/run.sh --quick takes ~45-60 s and
# measures rather than tests); its scripts are syntax-checked, its load clients
# (examples/) are built by `cargo test --all-targets` above.
for f in integration/bench/*.sh; do bash -n "$f"; done
# End to end on real Postfix (SASL), Redis and clamd: the access point.
bash integration/e2e-access.sh
# End to end: the reception point with the providers' index from slapd and from LDIF.
bash integration/e2e-reception.sh
# End to end: two providers in two network namespaces (access, reception,
# delivery over LMTP, receipts, 12 h / 24 h notices with short timers).
bash integration/e2e-two-providers.sh
# End to end: the message log under SIGKILL in the middle of 1000 submissions.
bash integration/e2e-crash.sh
# End to end: the Redis state store behind Sentinel, a SENTINEL FAILOVER and a SIGKILL of the
# primary in the middle of the load: no record lost, no accettazione twice.
bash integration/e2e-sentinel.sh
# End to end: the configuration reloaded six times (SIGHUP, `pec-milter reload`; a changed file, a
# broken one, a key that does not match) in the middle of 1000 submissions: 0 failed, the bad files
# refused, the changed settings in force after.
bash integration/e2e-reload.sh
# End to end: the fault matrix (issue 16), quick version: SIGKILL, Redis, clamd, slapd, the
# reinjection listener, the HSM token and the log's disk, each during a load of submissions and
# inbound envelopes; nothing accepted is lost (the full version: integration/faults.sh).
bash integration/faults.sh --quick
# End to end: the provider key in SoftHSM2 (PKCS#11), hsm-check, token removed and restored.
bash integration/e2e-hsm.sh
# End to end behind Sendmail 8.17 with the shipped .mc snippet: the reception role, receipts
# through the milter-free reinjection daemon, 4xx when the milter is down.
bash integration/e2e-sendmail.sh
# End to end: the daemon's diagnostics ([logging] json on stderr, syslog to a test socket), the
# milter on OpenDKIM's socket forms (local:/PATH with socket_mode / socket_group, inet:PORT@HOST),
# the warning about clamd's StreamMaxLength with Debian's clamd.conf.
bash integration/e2e-logging.sh
# The Debian package (cargo deb): installed on this machine, the daemon run as its unit would, purged.
bash integration/e2e-package.sh
# The Vagrant rig (vagrant/: A on Postfix, B on Sendmail) as far as it goes without a VM: vagrant
# validate, identities.sh, provision.sh's dry run for A and B checked against the shipped files
# (sendmail -bt on B's sendmail.cf), each provider's pec-milter run from those files.
bash integration/e2e-vagrant.sh
