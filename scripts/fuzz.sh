#!/usr/bin/env bash
# Runs the cargo-fuzz targets (see docs/fuzzing.md) and prints one summary line per target.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# SECONDS: how long each target runs (default 60). TARGET: a target name (`target_parse`) or
# `crate/target` (`egress-guard/target_parse`); default: every target of every crates/*/fuzz.
# Builds use the stable toolchain with RUSTC_BOOTSTRAP=1 (cargo-fuzz passes nightly-only
# sanitizer flags) and one shared target directory, CARGO_TARGET_DIR (default
# target/fuzz-shared), so the fuzz workspaces do not each build their own multi-GB tree.
# Logs go to $CARGO_TARGET_DIR/logs; crash inputs to crates/<crate>/fuzz/artifacts/<target>.
# Run it under `nice -n 10` on a shared machine. Exits 1 if any target found something.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
seconds=60
if [[ $# -gt 0 && $1 =~ ^[0-9]+$ ]]; then
    seconds=$1
    shift
fi
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target/fuzz-shared}"
logs="$CARGO_TARGET_DIR/logs"
mkdir -p "$logs"

# Every crate/target pair.
all=()
for dir in "$root"/crates/*/fuzz; do
    [[ -f $dir/Cargo.toml ]] || continue
    crate="$(basename "$(dirname "$dir")")"
    for file in "$dir"/fuzz_targets/*.rs; do
        all+=("$crate/$(basename "$file" .rs)")
    done
done

selected=()
if [[ $# -eq 0 ]]; then
    selected=("${all[@]}")
else
    for want in "$@"; do
        match=""
        for pair in "${all[@]}"; do
            if [[ $pair == "$want" || ${pair#*/} == "$want" ]]; then
                match=$pair
                selected+=("$pair")
            fi
        done
        if [[ -z $match ]]; then
            echo "fuzz.sh: unknown target '$want'; known: ${all[*]}" >&2
            exit 2
        fi
    done
fi

# "1234567" -> "1,234,567"
commas() { printf '%s' "$1" | rev | sed -E 's/([0-9]{3})/\1,/g; s/,$//' | rev; }

summaries=()
found_any=0
for pair in "${selected[@]}"; do
    crate=${pair%%/*}
    target=${pair#*/}
    log="$logs/$crate-$target.log"
    echo "== $pair: building" >&2
    (cd "$root/crates/$crate" &&
        cargo +stable fuzz build --target-dir "$CARGO_TARGET_DIR" "$target") >"$log" 2>&1 || {
        echo "== $pair: build failed, see $log" >&2
        summaries+=("$(printf '%-36s BUILD FAILED (%s)' "$pair" "$log")")
        found_any=1
        continue
    }
    echo "== $pair: fuzzing for ${seconds}s (log: $log)" >&2
    status=0
    start=$(date +%s)
    (cd "$root/crates/$crate" &&
        cargo +stable fuzz run --target-dir "$CARGO_TARGET_DIR" "$target" -- \
            -max_total_time="$seconds" -print_final_stats=1) >>"$log" 2>&1 || status=$?
    elapsed=$(($(date +%s) - start))

    runs=$(sed -nE 's/^stat::number_of_executed_units: *([0-9]+).*/\1/p' "$log" | tail -n1)
    rate=$(sed -nE 's/^stat::average_exec_per_sec: *([0-9]+).*/\1/p' "$log" | tail -n1)
    if [[ -z $runs ]]; then
        runs=$(sed -nE 's/^Done ([0-9]+) runs.*/\1/p' "$log" | tail -n1)
    fi
    if [[ -z $runs ]]; then
        runs=$(sed -nE 's/^#([0-9]+)[[:space:]].*/\1/p' "$log" | tail -n1)
    fi
    status_line=$(grep -E '^#[0-9]+[[:space:]].*cov: ' "$log" | tail -n1 || true)
    cov=$(sed -nE 's/.*cov: ([0-9]+).*/\1/p' <<<"$status_line")
    ft=$(sed -nE 's/.* ft: ([0-9]+).*/\1/p' <<<"$status_line")
    corp=$(sed -nE 's/.* corp: ([0-9]+).*/\1/p' <<<"$status_line")
    artifacts=$(sed -nE 's/.*Test unit written to (.*)$/\1/p' "$log" | tr '\n' ' ')
    if [[ $status -eq 0 && -z $artifacts ]]; then
        findings="none"
    else
        findings="FOUND (exit $status) ${artifacts:-see $log}"
        found_any=1
    fi
    summaries+=("$(printf '%-36s %4ss  runs %s (%s/s)  cov %s ft %s corpus %s  findings: %s' \
        "$pair" "$elapsed" "$(commas "${runs:-0}")" "$(commas "${rate:-?}")" \
        "${cov:-?}" "${ft:-?}" "${corp:-?}" "$findings")")
    echo "${summaries[-1]}" >&2
done

echo
echo "fuzz summary ($seconds s per target, $(date -u +%Y-%m-%d)):"
printf '%s\n' "${summaries[@]}"
exit "$found_any"
