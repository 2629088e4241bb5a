#!/usr/bin/env bash
# End-to-end figure for the national publish: builds the release binary, generates a
# national-size intake once (reused on later runs), then runs bench/national.py, which
# publishes it with our pipeline and computes the same results with DuckDB, side by side
# (wall time, peak RSS, targets, correctness cross-check). See bench/national.py's header.
#
# Environment:
#   CARGO_TARGET_DIR  build directory (default $HOME/.cache/nca-portal-target)
#   NCA_BENCH_DIR     work directory for intake, store, outputs (default /tmp/nca-bench)
#   SCHOOLS           primary schools to generate (default 16800)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/nca-portal-target}"

cargo build --release -p nca-pipeline
BIN="$CARGO_TARGET_DIR/release/nca-pipeline"

if ! python3 -c 'import duckdb' 2>/dev/null; then
    pip install --quiet duckdb
fi

WORK="${NCA_BENCH_DIR:-/tmp/nca-bench}"
mkdir -p "$WORK"
if [[ ! -f "$WORK/intake/marks.parquet" ]]; then
    echo "generating intake in $WORK/intake (${SCHOOLS:-16800} schools)"
    start=$(date +%s.%N)
    "$BIN" generate --out "$WORK/intake" --schools "${SCHOOLS:-16800}" --seed 1 --script-pupils 8
    end=$(date +%s.%N)
    awk -v s="$start" -v e="$end" 'BEGIN { printf "generation: %.2f s wall\n", e - s }'
else
    echo "reusing intake $WORK/intake"
fi

python3 bench/national.py --bin "$BIN" --intake "$WORK/intake" --work "$WORK"
