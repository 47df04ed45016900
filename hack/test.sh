#!/usr/bin/env bash
# Runs every ConRDMA test on this machine: unit and integration tests, the end-to-end tests on a
# real containerd 1.7 + runc (driven through CRI), and the real-kernel VM tier.
# Installs what it needs first (hack/install-deps.sh), so it works on a fresh Debian bookworm box.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "hack/test.sh: the end-to-end tests run containerd and runc and need root; re-run with sudo" >&2
  exit 2
fi
bash hack/install-deps.sh
# The e2e tests start the project's own binaries; build them once, then every test target.
cargo build --locked --workspace --bins
cargo test --locked --workspace
# The real-kernel tier: a VM with an SR-IOV NIC (QEMU igb), Soft-RoCE and the rdma cgroup.
results=${CONRDMA_VM_RESULTS:-target/conrdma-vm/results}
rc=0
bash hack/vm-node.sh 'bash test/vm/run.sh' || rc=$?
# End with the VM tier's tally so it is the last word of the run.
grep -h '^vm-tier: ' "$results/guest.log" 2>/dev/null | tail -1 || true
exit "$rc"
