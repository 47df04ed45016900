#!/usr/bin/env bash
# The real-kernel test tier, inside the VM node:
#
#   sudo hack/vm-node.sh 'bash test/vm/run.sh'                 # from the host
#   sudo CONRDMA_VM_TEST_FILTER=discovery hack/vm-node.sh 'bash test/vm/run.sh'   # names containing it
#   sudo CONRDMA_VM_TEST_FILTER=pod_network:: hack/vm-node.sh ...    # one file (EXECUTABLE::TEST)
#
# Runs each test of every staged in-VM test executable (package conrdma-vm-tests, built on the
# host by hack/vm/stage.sh) on its own, ignored ones included (they are ignored only on development
# machines), one at a time: containerd, the PF and both cores are shared. Prints each test's time;
# all output also goes to $CONRDMA_VM_RESULTS/test-<executable>.log. Tests that skip themselves
# (conrdma_vm_tests::skip, e.g. when a binary is not built) are counted as skipped, with reasons.
# Last line: "vm-tier: N passed, N failed, N skipped".
set -uo pipefail

if [ "${CONRDMA_VM_NODE:-}" != 1 ]; then
  echo "test/vm/run.sh runs inside the VM node: sudo hack/vm-node.sh 'bash test/vm/run.sh'" >&2
  exit 2
fi
stage=${CONRDMA_VM_STAGE:?}
results=${CONRDMA_VM_RESULTS:?}
filter=${CONRDMA_VM_TEST_FILTER:-}

# Which containerd line the harness picks (CONRDMA_CONTAINERD, 2.x unless set), for the record.
case "${CONRDMA_CONTAINERD:-2.1}" in
  1.7) cd_bin=/opt/conrdma-deps/usr/bin/containerd ;;
  *) cd_bin=/opt/conrdma-deps-2/usr/bin/containerd ;;
esac
cd_version=$("$cd_bin" --version 2>&1) || cd_version="not runnable: $cd_version"
echo "vm-tier: CONRDMA_CONTAINERD=${CONRDMA_CONTAINERD:-2.1}: $cd_version"

shopt -s nullglob
executables=("$stage"/tests/*)
if [ ${#executables[@]} -eq 0 ]; then
  echo "test/vm/run.sh: no test executables in $stage/tests (hack/vm/stage.sh stages them)" >&2
  exit 1
fi

skips_of() { local n; n=$(grep -c "^VM-SKIP $1:" "$results/skipped.txt" 2>/dev/null); echo "${n:-0}"; }
passed=0 failed=0 skipped=0 failures=()
for exe in "${executables[@]}"; do
  name=$(basename "$exe")
  log=$results/test-$name.log
  # The filter matches "EXECUTABLE::TEST", so it can pick a whole test file too.
  mapfile -t tests < <("$exe" --list --include-ignored 2>/dev/null | sed -n 's/: test$//p' |
    while read -r t; do case "$name::$t" in *"$filter"*) echo "$t" ;; esac; done)
  echo "=== conrdma-vm-tests/$name: ${#tests[@]} tests"
  for t in "${tests[@]}"; do
    t0=$(date +%s.%N)
    skips_before=$(skips_of "$t")
    echo "--- $t" >>"$log"
    "$exe" --include-ignored --exact "$t" --test-threads=1 >>"$log" 2>&1
    rc=$?
    secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b - a}')
    if [ $rc != 0 ]; then
      failed=$((failed + 1)); failures+=("$name/$t")
      echo "FAIL $t (${secs}s); its output:"
      sed -n "/^--- $t\$/,\$p" "$log" | tail -n +2
    elif [ "$(skips_of "$t")" != "$skips_before" ]; then
      skipped=$((skipped + 1))
      echo "skip $t (${secs}s): $(grep "^VM-SKIP $t:" "$results/skipped.txt" | tail -1 | cut -d: -f2- | sed 's/^ //')"
    else
      passed=$((passed + 1))
      echo "ok   $t (${secs}s)"
    fi
  done
done

[ $failed = 0 ] || printf 'failed: %s\n' "${failures[@]}"
echo "vm-tier: $passed passed, $failed failed, $skipped skipped"
[ $failed = 0 ]
