#!/usr/bin/env bash
# First process of the VM node's command line (started by hack/vm-node.sh through virtme-ng).
#
#   hack/vm/guest.sh RESULTS_DIR
#
# RESULTS_DIR is the host directory shared read-write (--rwdir), at the same path as on the host.
# It holds .guest-env (variables to export), .command (the COMMAND to run); this script writes
# guest.log (everything below), timings, dmesg.log, node.json and exit-code there.
# Exit codes: COMMAND's own, or 70 when the node setup failed (then COMMAND did not run).
set -uo pipefail

results=${1:?usage: guest.sh RESULTS_DIR}
t_start=$(date +%s.%N)
read -r kernel_uptime _ </proc/uptime
export PATH=/opt/conrdma-deps-2/usr/bin:/opt/conrdma-deps/usr/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# shellcheck disable=SC1091
. "$results/.guest-env"
here=$(cd "$(dirname "$0")" && pwd)

exec > >(tee -a "$results/guest.log") 2>&1
tee_pid=$!
secs_since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b - a}'; }
finish() { # finish CODE: logs and timings out, then leave (virtme-ng powers off)
  dmesg >"$results/dmesg.log" 2>&1 || true
  # Instance dirs of the e2e harness (CONRDMA_E2E_KEEP=1): their logs and configs, not the rootfs.
  if [ -d /run/conrdma-e2e ]; then
    (cd /run/conrdma-e2e && find . -maxdepth 2 -type f \( -name '*.log' -o -name '*.toml' \) -print0 |
      tar --null -T - -cf - 2>/dev/null) | (mkdir -p "$results/e2e" && tar -xf - -C "$results/e2e") || true
  fi
  echo "$1" >"$results/exit-code"
  # Let tee write the last lines before the VM powers off.
  exec 1>&- 2>&-
  wait "$tee_pid" 2>/dev/null
  sync
  exit "$1"
}

{
  echo "guest_start_epoch=$t_start"
  echo "kernel_uptime_at_start=$kernel_uptime"
  echo "kernel_release=$(uname -r)"
} >"$results/timings"
echo "vm-node: guest up (kernel uptime ${kernel_uptime}s), kernel $(uname -r) ($(uname -v)), $(nproc) CPUs"

t_setup=$(date +%s.%N)
if ! CONRDMA_VM_NODE_FACTS=/run/conrdma-vm/node.json bash "$here/node-setup.sh"; then
  echo "setup_secs=$(secs_since "$t_setup")" >>"$results/timings"
  echo "vm-node: node setup FAILED; COMMAND not run"
  finish 70
fi
cp /run/conrdma-vm/node.json "$results/node.json"
echo "setup_secs=$(secs_since "$t_setup")" >>"$results/timings"

export CONRDMA_VM_NODE=1 CONRDMA_VM_NODE_FACTS=/run/conrdma-vm/node.json CONRDMA_VM_RESULTS="$results"
export CONRDMA_E2E_TMPDIR=/run/conrdma-e2e CONRDMA_E2E_KEEP=1
cd "$CONRDMA_VM_CHECKOUT"
t_cmd=$(date +%s.%N)
echo "vm-node: running: $(cat "$results/.command")"
bash -c "$(cat "$results/.command")"
rc=$?
echo "command_secs=$(secs_since "$t_cmd")" >>"$results/timings"
echo "vm-node: COMMAND exited $rc"
finish "$rc"
