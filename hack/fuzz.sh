#!/usr/bin/env bash
# Coverage-guided fuzzing of the parsers with cargo-afl (AFL++), on stable Rust.
#
#   hack/fuzz.sh                  every target for 600 s
#   hack/fuzz.sh --smoke          every target for 30 s (CI)
#   hack/fuzz.sh --seconds N [--jobs J] [target...]
#
# Targets live in fuzz/ (its own workspace, not a member of the root one); seeds in
# fuzz/corpus/<target>/; findings in fuzz/target/afl/<target>/default/{crashes,hangs}/.
# Runs J targets at a time (default 2), then prints one line per target and exits 1 if any target
# found a crash or a hang (or could not run). Reproduce a finding with
#   fuzz/target/release/<target> < fuzz/target/afl/<target>/default/crashes/<file>
# Minimise a corpus with
#   (cd fuzz && cargo afl cmin -i corpus/<t> -o /tmp/<t>.min -- target/release/<t>)
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
FUZZ=$ROOT/fuzz
ALL_TARGETS=(nri_mux nri_create annotations node_config shim_options usage_report extender ledger_file shim_record)
SECONDS_PER_TARGET=600
JOBS=2
TARGETS=()

while [ $# -gt 0 ]; do
    case "$1" in
        --smoke) SECONDS_PER_TARGET=30 ;;
        --seconds) SECONDS_PER_TARGET=${2:?--seconds needs a number}; shift ;;
        --seconds=*) SECONDS_PER_TARGET=${1#*=} ;;
        --jobs) JOBS=${2:?--jobs needs a number}; shift ;;
        --jobs=*) JOBS=${1#*=} ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        -*) echo "fuzz: unknown option $1" >&2; exit 2 ;;
        *) TARGETS+=("$1") ;;
    esac
    shift
done
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=("${ALL_TARGETS[@]}")
for t in "${TARGETS[@]}"; do
    [ -d "$FUZZ/corpus/$t" ] || { echo "fuzz: unknown target $t (no fuzz/corpus/$t)" >&2; exit 2; }
done

# --- tools (idempotent) ---------------------------------------------------------------------------
if ! cargo afl --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-afl"
    # AFL++ is built from source by cargo-afl: it needs a C toolchain and make.
    if ! command -v cc >/dev/null || ! command -v make >/dev/null; then
        if command -v apt-get >/dev/null; then
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq build-essential
        fi
    fi
    cargo install cargo-afl --locked --version 0.18.2
fi
# cargo-afl builds its AFL++ runtime per rustc version on first use; this is a no-op afterwards.
if ! ls "${XDG_DATA_HOME:-$HOME/.local/share}"/afl.rs/rustc-"$(rustc --version | awk '{print $2}')"-*/afl.rs-*/afl/bin/afl-fuzz >/dev/null 2>&1; then
    cargo afl config --build
fi

# AFL++ refuses to start on machines set up for something else unless told it is fine: the core
# pattern pipes to a crash handler (containers), the CPU governor is not "performance", no TTY.
export AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_UI=1 AFL_NO_AFFINITY=1
export AFL_SKIP_CRASHES=1 AFL_IGNORE_SEED_PROBLEMS=1

# --- build ----------------------------------------------------------------------------------------
echo "fuzz: building ${#TARGETS[@]} target(s)"
(cd "$FUZZ" && cargo afl build --release --locked $(printf -- '--bin %s ' "${TARGETS[@]}"))

# --- run ------------------------------------------------------------------------------------------
OUT=$FUZZ/target/afl
mkdir -p "$OUT"

run_one() {
    local t=$1 out=$OUT/$1
    rm -rf "$out"
    # -V: stop after N seconds; the fuzzer's own log goes to a file (it is long).
    (cd "$FUZZ" && cargo afl fuzz -i "corpus/$t" -o "$out" -V "$SECONDS_PER_TARGET" \
        -- "target/release/$t") >"$OUT/$t.log" 2>&1
}

echo "fuzz: ${#TARGETS[@]} target(s), ${SECONDS_PER_TARGET}s each, $JOBS at a time (logs in fuzz/target/afl/)"
declare -A RC=()
start=$(date +%s)
running=()
for t in "${TARGETS[@]}"; do
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do sleep 1; done
    echo "fuzz: $t started"
    run_one "$t" &
    running+=("$!:$t")
done
for r in "${running[@]}"; do
    if wait "${r%%:*}"; then RC[${r#*:}]=0; else RC[${r#*:}]=$?; fi
done

afl_stat() { sed -n "s/^$2 *: *//p" "$1" | head -n1; }

fail=0
for t in "${TARGETS[@]}"; do
    stats=$OUT/$t/default/fuzzer_stats
    if [ ! -f "$stats" ]; then
        echo "fuzz: $t: did not run (exit ${RC[$t]}); last lines of fuzz/target/afl/$t.log:"
        tail -n 15 "$OUT/$t.log" | sed 's/^/    /'
        fail=1
        continue
    fi
    execs=$(afl_stat "$stats" execs_done)
    paths=$(afl_stat "$stats" corpus_count); paths=${paths:-$(afl_stat "$stats" paths_total)}
    crashes=$(afl_stat "$stats" saved_crashes); crashes=${crashes:-$(afl_stat "$stats" unique_crashes)}
    hangs=$(afl_stat "$stats" saved_hangs); hangs=${hangs:-$(afl_stat "$stats" unique_hangs)}
    echo "fuzz: $t: $execs execs, $paths paths, crashes $crashes, hangs $hangs"
    if [ "${crashes:-0}" != 0 ] || [ "${hangs:-0}" != 0 ]; then
        ls "$OUT/$t/default/crashes" "$OUT/$t/default/hangs" 2>/dev/null | grep -v README | sed 's/^/    /' || true
        fail=1
    elif [ "${RC[$t]}" != 0 ]; then
        echo "fuzz: $t: afl-fuzz exited ${RC[$t]} (see fuzz/target/afl/$t.log)"
        fail=1
    fi
done
echo "fuzz: wall time $(( $(date +%s) - start ))s"
exit $fail
