#!/usr/bin/env bash
# Turns the freshly booted VM into a ConRDMA node (runs inside the VM, as root, from hack/vm/guest.sh):
#   1. loads the module chain: igb (PF) + igbvf (VFs), ib_core/ib_uverbs, rdma_rxe (Soft-RoCE), rdma_ucm;
#   2. creates CONRDMA_VM_VFS VFs on the igb PF through sriov_numvfs and brings PF and VFs up;
#   3. binds one rxe device to each VF netdev (`rdma link add rxe<i> type rxe netdev <vf netdev>`),
#      and waits for its uverbs char device;
#   4. enables the rdma controller for child cgroups (cgroup v2);
#   5. makes the tmpfs directories containerd needs (/run: the overlays on / break overlayfs).
# Writes what it built to $CONRDMA_VM_NODE_FACTS (default /run/conrdma-vm/node.json), from its own
# reading of sysfs and the `rdma` tool, so tests can check ConRDMA's discovery against it.
set -euo pipefail

NUM_VFS=${CONRDMA_VM_VFS:-4}
FACTS=${CONRDMA_VM_NODE_FACTS:-/run/conrdma-vm/node.json}
t0=$(date +%s.%N)
step() { echo "node-setup: [$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1fs", b - a}')] $*"; }
die() { echo "node-setup: FAILED: $*" >&2; exit 1; }

# udev (when the host has it, virtme-ng runs it in the VM) renames new netdevs (eth0 -> enp1s0,
# eth1 -> enp1s0v0 ...) a moment after they appear: a name read before that is gone when used.
# Wait for its queue to drain before reading names. Without udev the names stay eth<i>.
settle() { if command -v udevadm >/dev/null; then udevadm settle -t 20 >/dev/null 2>&1 || true; fi; }

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
  local secs=$1 what=$2; shift 2
  local end=$(( $(date +%s) + secs ))
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$end" ] || die "timed out after ${secs}s waiting for $what"
    sleep 0.2
  done
}

# --- 1. modules -------------------------------------------------------------------------------
# crc32_generic first where it exists: on 6.1 rdma_rxe fails to init its ICRC ("failed to init crc32
# algorithm err:-2") when no crc32 crypto implementation is loaded yet. Newer kernels (7.x) have no
# crc32_generic module (crc32 is library code, built in) and rdma_rxe does not need it.
if modprobe -n -q crc32_generic 2>/dev/null; then
  modprobe crc32_generic || die "modprobe crc32_generic (modules of $(uname -r) under /lib/modules)"
fi
for m in igb igbvf ib_core ib_uverbs rdma_rxe rdma_ucm; do
  modprobe "$m" || die "modprobe $m (modules of $(uname -r) under /lib/modules)"
done
step "modules loaded: $(lsmod | awk 'NR>1{print $1}' | grep -E '^(igb|igbvf|ib_core|ib_uverbs|rdma_rxe|rdma_ucm|rdma_cm)$' | sort | tr '\n' ' ')"

# --- 2. VFs -----------------------------------------------------------------------------------
settle
pf=""
for n in /sys/class/net/*; do
  [ -e "$n/device/sriov_totalvfs" ] && { pf=${n##*/}; break; }
done
[ -n "$pf" ] || die "no netdev with device/sriov_totalvfs: is the igb NIC on a PCIe root port?"
pfdev=$(readlink -f "/sys/class/net/$pf/device") # the PCI device: stays if the name changes
total=$(cat "$pfdev/sriov_totalvfs")
[ "$NUM_VFS" -le "$total" ] || die "CONRDMA_VM_VFS=$NUM_VFS but $pf has sriov_totalvfs=$total"
ip link set "$pf" up || die "ip link set $pf up"
# igbvf only gets a working mailbox once the PF is up; the PF's link (and speed) comes a moment later.
wait_for 20 "$pf link up (operstate)" grep -qx up "/sys/class/net/$pf/operstate"
echo 0 >"$pfdev/sriov_numvfs"
echo "$NUM_VFS" >"$pfdev/sriov_numvfs" || die "echo $NUM_VFS > $pfdev/sriov_numvfs"
vfs=()
for ((i = 0; i < NUM_VFS; i++)); do
  wait_for 30 "VF $i netdev (igbvf) under $pfdev/virtfn$i/net" test -n "$(ls "$pfdev/virtfn$i/net" 2>/dev/null)"
done
settle
for ((i = 0; i < NUM_VFS; i++)); do
  vfnet=("$pfdev/virtfn$i/net"/*)
  vf=$(basename "${vfnet[0]}")
  vfs+=("$vf")
  ip link set "$vf" up || die "ip link set $vf up (VF $i)"
done
step "PF $pf ($(basename "$(readlink -f "$pfdev")"), speed $(cat "/sys/class/net/$pf/speed" 2>/dev/null || echo ?)) has $NUM_VFS of $total VFs: ${vfs[*]}"

# --- 3. Soft-RoCE on each VF --------------------------------------------------------------------
for ((i = 0; i < NUM_VFS; i++)); do
  rdma link add "rxe$i" type rxe netdev "${vfs[$i]}" || die "rdma link add rxe$i type rxe netdev ${vfs[$i]}"
done
uverbs_of() { # uverbs_of IBDEV -> uverbsN
  local u
  for u in /sys/class/infiniband_verbs/uverbs*; do
    [ "$(cat "$u/ibdev" 2>/dev/null)" = "$1" ] && { echo "${u##*/}"; return 0; }
  done
  return 1
}
for ((i = 0; i < NUM_VFS; i++)); do
  wait_for 20 "uverbs device of rxe$i" uverbs_of "rxe$i"
  u=$(uverbs_of "rxe$i")
  wait_for 20 "/dev/infiniband/$u (devtmpfs)" test -c "/dev/infiniband/$u"
done
wait_for 20 "/dev/infiniband/rdma_cm" test -c /dev/infiniband/rdma_cm
# rxe ports follow their VF netdev's link, which igbvf reports a few seconds after the VF appears
# (its watchdog polls the PF mailbox): wait, so tests start on ACTIVE ports.
for ((i = 0; i < NUM_VFS; i++)); do
  wait_for 60 "rxe$i port ACTIVE (link of ${vfs[$i]})" grep -q ACTIVE "/sys/class/infiniband/rxe$i/ports/1/state"
done
step "rdma links: $(rdma link show | tr '\n' ';')"

# --- 4. cgroup v2 with rdma -------------------------------------------------------------------
grep -qw rdma /sys/fs/cgroup/cgroup.controllers || die "no rdma controller in /sys/fs/cgroup/cgroup.controllers ($(cat /sys/fs/cgroup/cgroup.controllers))"
echo +rdma >/sys/fs/cgroup/cgroup.subtree_control
step "cgroup v2 subtree_control: $(cat /sys/fs/cgroup/cgroup.subtree_control)"

# --- 5. tmpfs dirs ----------------------------------------------------------------------------
mkdir -p /run/conrdma-e2e /run/containerd /run/netns /run/conrdma-vm "$(dirname "$FACTS")"

# --- facts ------------------------------------------------------------------------------------
{
  printf '{"pf":"%s","pf_pci":"%s","speed":"%s","total_vfs":%s,"vfs":[' "$pf" \
    "$(basename "$(readlink -f "$pfdev")")" "$(cat "/sys/class/net/$pf/speed" 2>/dev/null || true)" "$total"
  for ((i = 0; i < NUM_VFS; i++)); do
    u=$(uverbs_of "rxe$i")
    [ "$i" -gt 0 ] && printf ','
    printf '{"index":%d,"pci":"%s","netdev":"%s","rdma":"rxe%d","uverbs":"%s","dev":"%s"}' "$i" \
      "$(basename "$(readlink -f "$pfdev/virtfn$i")")" "${vfs[$i]}" "$i" "$u" "$(cat "/sys/class/infiniband_verbs/$u/dev")"
  done
  printf '],"rdma_cm":"%s"}\n' "$(cat /sys/class/misc/rdma_cm/dev)"
} >"$FACTS"
step "node facts in $FACTS: $(cat "$FACTS")"
