#!/usr/bin/env bash
# The test command of the README: installs what the tests need (as root),
# then runs every test (unit, property, sample and interoperability tests
# against openssl, xmllint and Python's email package).
set -euo pipefail
cd "$(dirname "$0")/.."
bash integration/deps.sh
cargo test --all-targets --locked "$@"
bash integration/selftest.sh
