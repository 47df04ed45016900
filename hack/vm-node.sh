#!/usr/bin/env bash
# Boots a ConRDMA node VM on Debian's own kernel and runs COMMAND in it, as root:
#
#   sudo hack/vm-node.sh [--no-install] [--no-build] [--kernel default|sid|PATH] 'COMMAND'
#   sudo hack/vm-node.sh 'bash test/vm/run.sh'        # the real-kernel test tier
#   sudo hack/vm-node.sh --kernel sid 'bash test/vm/run.sh'   # ... on Debian sid's current kernel
#
# The VM (virtme-ng, QEMU software emulation) sees the host's files read-only, this checkout
# included, and has a real SR-IOV NIC: QEMU's igb (Intel 82576) on a PCIe root port. Before
# COMMAND runs, hack/vm/node-setup.sh loads igb/igbvf/rdma_rxe, creates VFs, binds a Soft-RoCE
# device to each VF netdev, enables the rdma cgroup controller and prepares /run (tmpfs) for
# containerd. COMMAND runs in the checkout with:
#   CONRDMA_VM_NODE=1, CONRDMA_VM_NODE_FACTS (JSON: PF, VFs, rxe and uverbs names, from sysfs),
#   CONRDMA_VM_STAGE (host-built binaries, test executables and the pod image; see hack/vm/stage.sh),
#   CONRDMA_BIN_DIR=$CONRDMA_VM_STAGE/bin, CONRDMA_E2E_TMPDIR=/run/conrdma-e2e,
#   CONRDMA_VM_RESULTS (read-write, shared with the host), and every CONRDMA_* variable of the caller.
#
# Results on the host, in $CONRDMA_VM_RESULTS (default target/conrdma-vm/results, emptied first):
#   console.log (all output), guest.log, node.json, dmesg.log, timings, exit-code, e2e/ (logs).
# Exit code: COMMAND's; 70 node setup failed; 71 the VM ended without a result; 124 time limit.
#
# Before booting it installs what is missing (hack/install-deps.sh, hack/install-vm-deps.sh;
# --no-install skips) and stages the workspace's binaries (hack/vm/stage.sh; --no-build skips).
# Kernel (--kernel, or CONRDMA_VM_KERNEL): default = bookworm's (the newest /boot/vmlinuz-* with
# modules, from linux-image-amd64); sid = Debian sid's newest amd64 kernel, installed by
# `hack/install-vm-deps.sh --kernel sid` into /lib/modules/<ver>/vmlinuz; PATH = that image (its
# modules must be in /lib/modules/<its version>).
# Knobs: CONRDMA_VM_TIMEOUT (seconds for the VM, default 480), CONRDMA_VM_VFS (VFs, default 4, max 7),
# CONRDMA_VM_MEMORY (default 2G), CONRDMA_VM_CPUS (default 2), CONRDMA_VM_DIR (default target/conrdma-vm).
# One VM at a time per checkout (a lock): QEMU's software emulation wants both cores.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
say() { echo "vm-node: $*" >&2; }
die() { say "error: $1"; exit "${2:-1}"; }
usage() { sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

install=1 build=1
kernel_choice=${CONRDMA_VM_KERNEL:-default}
while [ $# -gt 0 ]; do
  case "$1" in
    --no-install) install=0 ;;
    --no-build) build=0 ;;
    --kernel) [ $# -ge 2 ] || usage; kernel_choice=$2; shift ;;
    --kernel=*) kernel_choice=${1#--kernel=} ;;
    -h|--help) usage ;;
    --) shift; break ;;
    -*) say "unknown option $1"; usage ;;
    *) break ;;
  esac
  shift
done
[ $# -eq 1 ] || usage
command=$1

[ "$(id -u)" = 0 ] || die "run as root (installs packages; the VM runs containerd and loads modules)" 2
case "$kernel_choice" in
  default|sid) ;;
  /*) ;;
  *) die "--kernel (CONRDMA_VM_KERNEL) takes default, sid or an absolute path to a kernel image, not '$kernel_choice'" 2 ;;
esac
t0=$(date +%s.%N)
secs() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.1f", b - a}'; }

vmdir=${CONRDMA_VM_DIR:-$repo/target/conrdma-vm}
stage=$vmdir/stage
results=${CONRDMA_VM_RESULTS:-$vmdir/results}
timeout_s=${CONRDMA_VM_TIMEOUT:-480}
mkdir -p "$vmdir"
exec 9>"$vmdir/lock"
flock -w 900 9 || die "another hack/vm-node.sh holds $vmdir/lock"

if [ $install = 1 ]; then
  bash "$repo/hack/install-deps.sh" >/dev/null
  bash "$repo/hack/install-vm-deps.sh" --kernel "$kernel_choice"
else
  bash "$repo/hack/install-vm-deps.sh" --check --kernel "$kernel_choice"
fi
t_installed=$(date +%s.%N)
if [ $build = 1 ]; then
  bash "$repo/hack/vm/stage.sh" "$stage"
elif [ ! -f "$stage/manifest" ]; then
  say "warning: --no-build and nothing staged in $stage: COMMAND gets no project binaries"
fi
t_staged=$(date +%s.%N)

kernel=""
case "$kernel_choice" in
  default)
    for k in $(ls -1 /boot/vmlinuz-* 2>/dev/null | sort -V -r); do
      [ -d "/lib/modules/${k#/boot/vmlinuz-}/kernel" ] && { kernel=$k; break; }
    done
    [ -n "$kernel" ] || die "no kernel with modules in /boot (hack/install-vm-deps.sh installs linux-image-amd64)"
    kernel_release=${kernel#/boot/vmlinuz-} ;;
  sid)
    kernel_release=$(cat "${CONRDMA_VM_SID_KERNEL_DIR:-/opt/conrdma-kernel-sid}/version" 2>/dev/null) ||
      die "Debian sid's kernel is not installed (hack/install-vm-deps.sh --kernel sid)"
    kernel=/lib/modules/$kernel_release/vmlinuz ;;
  *)
    kernel=$kernel_choice
    kernel_release=$(file -bL "$kernel" 2>/dev/null | sed -n 's/.*, version \([^ ]*\) .*/\1/p')
    [ -n "$kernel_release" ] || kernel_release="?" ;;
esac
[ -r "$kernel" ] || die "kernel image $kernel not readable"
vng=${CONRDMA_VM_DEPS:-/opt/conrdma-vm}/venv/bin/vng

# Fresh results dir; the host path is also the guest path.
rm -rf "$results"
mkdir -p "$results"
printf '%s\n' "$command" >"$results/.command"
{
  q() { printf 'export %s=%q\n' "$1" "$2"; }
  # Every CONRDMA_* of the caller first, then the ones this script decides.
  while IFS='=' read -r k _; do
    case "$k" in CONRDMA_VM_RESULTS|CONRDMA_VM_STAGE|CONRDMA_VM_CHECKOUT) continue ;; esac
    q "$k" "${!k}"
  done < <(env | grep -E '^CONRDMA_[A-Z0-9_]*=' || true)
  q CONRDMA_VM_STAGE "$stage"
  q CONRDMA_VM_CHECKOUT "$repo"
  q CONRDMA_VM_VFS "${CONRDMA_VM_VFS:-4}"
  # The VM node runs the containerd line nodes run today unless the caller picks another.
  q CONRDMA_CONTAINERD "${CONRDMA_CONTAINERD:-2.1}"
  [ -d "$stage/bin" ] && q CONRDMA_BIN_DIR "${CONRDMA_BIN_DIR:-$stage/bin}"
  q RUST_BACKTRACE "${RUST_BACKTRACE:-1}"
  q RUST_LOG "${RUST_LOG:-info}"
} >"$results/.guest-env"

# igb needs a PCIe slot for SR-IOV; its network side is a hub port with nothing else on it, so the
# VM has no way out. KVM is off on purpose: QEMU's KVM path aborts on these machines.
qemu_opts="-device pcie-root-port,id=rp0,slot=1 -netdev hubport,id=n0,hubid=0 -device igb,netdev=n0,bus=rp0"
vng_args=(--run "$kernel" --disable-microvm --disable-kvm --force-9p
          --memory "${CONRDMA_VM_MEMORY:-2G}" --cpus "${CONRDMA_VM_CPUS:-2}"
          --rwdir "$results" --cwd "$repo" --qemu-opts="$qemu_opts"
          -- "bash $repo/hack/vm/guest.sh $results")
say "booting kernel $kernel_release ($kernel_choice: $kernel) (QEMU TCG, $(qemu-system-x86_64 --version | head -1 | awk '{print $4}')), time limit ${timeout_s}s; log: $results/console.log"

# `timeout` runs vng in its own process group, so on expiry the whole group (vng, qemu) is killed.
# The pid is that group's id: anything left in it afterwards is ours to stop.
t_boot=$(date +%s.%N)
set +e
PATH=$(dirname "$vng"):$PATH timeout --kill-after=15 "$timeout_s" "$vng" "${vng_args[@]}" </dev/null \
  > >(tee "$results/console.log") 2>&1 &
vm_pid=$!
trap 'kill -TERM -- -$vm_pid 2>/dev/null; sleep 2; kill -KILL -- -$vm_pid 2>/dev/null; exit 130' INT TERM
wait "$vm_pid"
vng_rc=$?
set -e
trap - INT TERM
# After a time-out, QEMU may still be shutting down on the TERM it got: a few seconds' grace.
for _ in 1 2 3 4 5 6 7 8 9 10; do pgrep -g "$vm_pid" >/dev/null 2>&1 || break; sleep 0.5; done
if pgrep -g "$vm_pid" >/dev/null 2>&1; then
  say "killing leftover processes of the VM (process group $vm_pid): $(pgrep -g "$vm_pid" | tr '\n' ' ')"
  kill -KILL -- "-$vm_pid" 2>/dev/null || true
fi
t_end=$(date +%s.%N)
sleep 0.2 # let tee finish console.log

# --- outcome -------------------------------------------------------------------------------------
val() { local v; v=$(sed -n "s/^$1=//p" "$results/timings" 2>/dev/null | tail -1); echo "${v:-?}"; }
boot="?"
[ "$(val guest_start_epoch)" != "?" ] && boot=$(secs "$t_boot" "$(val guest_start_epoch)")
summary="kernel $(val kernel_release) ($kernel_choice), install/check $(secs "$t0" "$t_installed")s, build/stage $(secs "$t_installed" "$t_staged")s, boot ${boot}s (kernel uptime $(val kernel_uptime_at_start)s), node setup $(val setup_secs)s, command $(val command_secs)s, VM total $(secs "$t_boot" "$t_end")s, all $(secs "$t0" "$t_end")s"
{
  echo "host_kernel_image=$kernel"
  echo "host_boot_to_guest_secs=$boot"
  echo "host_vm_secs=$(secs "$t_boot" "$t_end")"
  echo "host_total_secs=$(secs "$t0" "$t_end")"
} >>"$results/timings"

if [ "$vng_rc" = 124 ] || [ "$vng_rc" = 137 ]; then
  say "FAILED: time limit of ${timeout_s}s reached (CONRDMA_VM_TIMEOUT); last output:"
  tail -n 30 "$results/console.log" >&2 || true
  say "$summary"
  exit 124
fi
if [ ! -s "$results/exit-code" ]; then
  say "FAILED: the VM ended (vng exit $vng_rc) without a result from the guest; last output:"
  tail -n 30 "$results/console.log" >&2 || true
  say "$summary"
  exit 71
fi
rc=$(cat "$results/exit-code")
if [ "$rc" = 70 ] && grep -q 'node setup FAILED' "$results/guest.log" 2>/dev/null; then
  say "FAILED: node setup in the VM: $(grep 'node-setup: FAILED' "$results/guest.log" | tail -1)"
  say "$summary"
  exit 70
fi
say "COMMAND exited $rc; $summary"
say "results in $results"
exit "$rc"
