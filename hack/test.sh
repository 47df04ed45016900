#!/usr/bin/env bash
# Runs every ConRDMA test on this machine: unit and integration tests, the end-to-end tests on a
# real containerd + runc (driven through CRI) against both containerd lines -- 2.x (Debian sid,
# everything) and then 1.7 (Debian trixie, the host e2e targets) -- and the real-kernel VM tier.
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

# which_containerd LINE: the containerd binary the harness picks for CONRDMA_CONTAINERD=LINE
# (prefixes as in test/src/deps.rs), and its --version.
which_containerd() {
  local prefix version
  case "$1" in
    1.7) prefix=${CONRDMA_DEPS:-/opt/conrdma-deps} ;;
    *) prefix=${CONRDMA_DEPS2:-/opt/conrdma-deps-2} ;;
  esac
  version=$("$prefix/usr/bin/containerd" --version) # captured whole: no SIGPIPE under pipefail
  echo "hack/test.sh: CONRDMA_CONTAINERD=$1 -> $prefix/usr/bin/containerd: $version"
}

which_containerd 2.1
CONRDMA_CONTAINERD=2.1 cargo test --locked --workspace
# The shim answers 2.x as a task API v3 shim; `task_api = 2` keeps the v2 path on 2.x working too.
CONRDMA_CONTAINERD=2.1 CONRDMA_SHIM_TASK_API=2 cargo test --locked -p conrdma-e2e --test shim
# The host end-to-end targets again on containerd 1.7 (kept supported alongside 2.x).
which_containerd 1.7
CONRDMA_CONTAINERD=1.7 cargo test --locked -p conrdma-e2e \
  --test nri_plugin --test pod_network --test shim --test conserve --test node_reports --test harness
# A short chaos soak on each line: kill -9 of plugin, shims and containerd amid pod churn, half the
# pods in their own network namespace with their VF moved in; fails on any leaked allocation,
# unreset VF rate, double booking (VF, bandwidth or address) or VF netdev not home (README: "Chaos soak").
target/debug/conrdma-chaos --cycles 60 --seed 1 --containerd 2.1 --pod-network
target/debug/conrdma-chaos --cycles 60 --seed 2 --containerd 1.7 --pod-network
# 30 s per fuzz target (cargo-afl, coverage-guided); fails on any crash or hang.
bash hack/fuzz.sh --smoke
# The real-kernel tier: a VM with an SR-IOV NIC (QEMU igb), Soft-RoCE and the rdma cgroup, on Debian
# sid's current kernel (7.2 today), whose rdma_rxe serves RDMA CM inside pod network namespaces.
results=${CONRDMA_VM_RESULTS:-target/conrdma-vm/results}
results61=${results}-6.1
rc=0
CONRDMA_VM_TIMEOUT=${CONRDMA_VM_TIMEOUT:-900} CONRDMA_VM_RESULTS=$results \
  bash hack/vm-node.sh --kernel sid 'bash test/vm/run.sh' || rc=$?
# Debian's 6.1 only where a test needs it: pods in their own network namespace on a kernel whose
# rdma_rxe cannot serve them must be refused with the reason (test/vm/tests/pod_network.rs).
CONRDMA_VM_RESULTS=$results61 CONRDMA_VM_TEST_FILTER=pod_network:: \
  bash hack/vm-node.sh --no-build 'bash test/vm/run.sh' || rc=$?
# End with the VM tier's tallies so they are the last words of the run.
for r in "$results61" "$results"; do
  grep -h '^vm-tier: ' "$r/guest.log" 2>/dev/null | tail -1 | sed "s|^|[$(grep -h '^kernel_release=' "$r/timings" 2>/dev/null | cut -d= -f2)] |" || true
done
exit "$rc"
