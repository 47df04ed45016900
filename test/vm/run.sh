#!/usr/bin/env bash
# The real-kernel test tier, inside the VM node:
#
#   sudo hack/vm-node.sh 'bash test/vm/run.sh'            # from the host
#   CONRDMA_VM_TEST_FILTER=discovery sudo -E hack/vm-node.sh 'bash test/vm/run.sh'   # a subset
#
# Runs every staged in-VM test executable (package conrdma-vm-tests, built on the host by
# hack/vm/stage.sh) with its ignored tests included, one test at a time (containerd, the PF and
# both cores are shared). Each executable's output goes to $CONRDMA_VM_RESULTS/test-<name>.log too.
# Skipped tests (e.g. the shim drafts) are listed at the end with their reasons.
set -uo pipefail

if [ "${CONRDMA_VM_NODE:-}" != 1 ]; then
  echo "test/vm/run.sh runs inside the VM node: sudo hack/vm-node.sh 'bash test/vm/run.sh'" >&2
  exit 2
fi
stage=${CONRDMA_VM_STAGE:?}
results=${CONRDMA_VM_RESULTS:?}
filter=${CONRDMA_VM_TEST_FILTER:-}

shopt -s nullglob
tests=("$stage"/tests/*)
if [ ${#tests[@]} -eq 0 ]; then
  echo "test/vm/run.sh: no test executables in $stage/tests (hack/vm/stage.sh stages them)" >&2
  exit 1
fi

failed=0
for t in "${tests[@]}"; do
  name=$(basename "$t")
  echo "=== conrdma-vm-tests: $name"
  # shellcheck disable=SC2086
  "$t" --include-ignored --test-threads=1 $filter 2>&1 | tee "$results/test-$name.log"
  rc=${PIPESTATUS[0]}
  [ "$rc" = 0 ] || failed=1
done

if [ -s "$results/skipped.txt" ]; then
  echo "=== skipped, with reasons:"
  sed 's/^VM-SKIP /  /' "$results/skipped.txt"
fi
exit $failed
