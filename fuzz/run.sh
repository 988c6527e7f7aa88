#!/usr/bin/env bash
# Run the reader fuzz target (coverage-guided, libFuzzer via cargo-fuzz).
# usage: fuzz/run.sh [SECONDS]   (default 600)
# Needs: cargo install cargo-fuzz. The toolchain here is stable; cargo-fuzz
# needs nightly flags, which RUSTC_BOOTSTRAP=1 allows on stable rustc.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-600}
mkdir -p corpus/reader
cp -n ../tests/fixtures/samples/[Obd]* corpus/reader/ 2>/dev/null || true
cp -n ../tests/fixtures/daticert/*.xml corpus/reader/ 2>/dev/null || true
RUSTC_BOOTSTRAP=1 cargo fuzz run reader corpus/reader -- \
  -max_total_time="$secs" -rss_limit_mb=2048 -max_len=262144 -print_final_stats=1
