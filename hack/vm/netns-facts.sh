#!/usr/bin/env bash
# Establishes, by running the commands and printing them with their outputs, how SR-IOV VF netdevs,
# Soft-RoCE (rxe) devices and network namespaces interact on the VM's kernel (docs/vm-testbed.md,
# "Linux 7.2: VFs and Soft-RoCE in pod network namespaces"). Runs inside the VM node, needs 6 VFs:
#
#   sudo CONRDMA_VM_VFS=6 CONRDMA_VM_TIMEOUT=600 hack/vm-node.sh --no-build --kernel sid 'bash hack/vm/netns-facts.sh'
#   sudo CONRDMA_VM_VFS=6 CONRDMA_VM_TIMEOUT=600 hack/vm-node.sh --no-build 'bash hack/vm/netns-facts.sh'   # 6.1
#
# Output: the guest.log of the results dir. Sections: (a) a VF with a host rxe moved into a netns,
# (b) rxe created inside the netns, (c) the VF moved back, (d1-d3) the netns deleted with the VF
# inside (renamed, not renamed, name taken on the host), (f) RDMA CM (rping, ib_write_bw -R)
# between two netns, (e) exclusive RDMA netns mode. Leaves the VM in a changed state: run it alone.
set -u
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
dm_last=$(dmesg | wc -l)
run() { echo "\$ $*"; "$@" 2>&1; echo "[rc=$?]"; }
sh_() { echo "\$ $1"; bash -c "$1" 2>&1; echo "[rc=$?]"; }
newdmesg() { local n; n=$(dmesg | wc -l); echo "--- dmesg (new lines)"; dmesg | tail -n +$((dm_last + 1)); dm_last=$n; echo "---"; }
uverbs() { echo "--- uverbs (host /sys/class/infiniband_verbs):"; for u in /sys/class/infiniband_verbs/uverbs*; do [ -e "$u/ibdev" ] && echo "  ${u##*/} ibdev=$(cat $u/ibdev) dev=$(cat $u/dev)"; done; echo "--- /dev/infiniband:"; ls -l /dev/infiniband | sed 's/^/  /'; }
state() { # state LABEL
  echo "===== state: $1"
  run rdma system show
  run rdma dev
  run rdma link show
  sh_ "ls /sys/class/infiniband/"
  uverbs
  sh_ "ip -br link"
  sh_ "ip netns list"
  newdmesg
}
inns() { # inns NS LABEL: the view from inside NS
  echo "===== view inside netns $1: $2"
  run ip netns exec "$1" rdma dev
  run ip netns exec "$1" rdma link show
  run ip netns exec "$1" ls /sys/class/infiniband/
  sh_ "ip netns exec $1 sh -c 'for u in /sys/class/infiniband_verbs/uverbs*; do echo \$u \$(cat \$u/ibdev) \$(cat \$u/dev); done'"
  run ip netns exec "$1" ip -br link
}
waitport() { # waitport NS DEV
  local i; for i in $(seq 1 100); do
    ip netns exec "$1" cat /sys/class/infiniband/$2/ports/1/state 2>/dev/null | grep -q ACTIVE && { echo "(port of $2 ACTIVE after $((i/5))s)"; return 0; }
    sleep 0.2; done; echo "(port of $2 not ACTIVE after 20s: $(ip netns exec "$1" cat /sys/class/infiniband/$2/ports/1/state 2>&1))"
}

echo "########## kernel $(uname -r) / $(uname -v); iproute2 $(ip -V)"
[ "${CONRDMA_VM_VFS:-4}" -ge 6 ] || { echo "netns-facts: needs CONRDMA_VM_VFS=6 (has ${CONRDMA_VM_VFS:-4})" >&2; exit 2; }
for n in /sys/class/net/*; do [ -e "$n/device/sriov_totalvfs" ] && { PF=${n##*/}; break; }; done
VF=(); for i in 0 1 2 3 4 5; do VF[$i]=$(ls /sys/class/net/$PF/device/virtfn$i/net/); done
echo "PF=$PF VFs=${VF[*]} (VF i = /sys/class/net/$PF/device/virtfn<i>/net/*)"
sh_ "pgrep -a udevd; dmesg | grep -iE 'renamed|igbvf' | head -20"
state "after node-setup"

echo "########## (a) move a VF with an rxe into a netns"
run ip netns add a
run ip link set ${VF[0]} netns a
sleep 1
state "after ip link set ${VF[0]} netns a"
inns a "after move"

echo "########## (b) rxe created inside the netns (shared mode)"
run ip netns exec a ip link set ${VF[0]} up
run ip netns exec a rdma link add rxa type rxe netdev ${VF[0]}
sleep 1
state "after ip netns exec a rdma link add rxa type rxe netdev ${VF[0]}"
inns a "after rdma link add rxa"
run ip netns exec a ip addr add 10.77.9.1/24 dev ${VF[0]}
waitport a rxa
sh_ "cat /sys/class/infiniband/rxa/ports/1/gid_attrs/ndevs/0 /sys/class/infiniband/rxa/ports/1/gids/0 /sys/class/infiniband/rxa/parent 2>&1; readlink -f /sys/class/infiniband/rxa"
sh_ "ip netns exec a ibv_devices"
sh_ "ibv_devices"
sh_ "ip netns exec a ibv_devinfo -d rxa | head -20"

echo "########## (c) move it back to the host netns"
run ip netns exec a ip link set ${VF[0]} netns 1
sleep 1
state "after ip netns exec a ip link set ${VF[0]} netns 1"
inns a "after moving back"
run ip link set ${VF[0]} up
run rdma link add rxe0 type rxe netdev ${VF[0]}
sleep 1
state "after rdma link add rxe0 type rxe netdev ${VF[0]} (host)"
run ip netns del a

echo "########## (d1) ip netns del with the VF inside, renamed to rdma0, with an rxe inside"
run ip netns add b
run ip link set ${VF[1]} netns b
run ip netns exec b ip link set ${VF[1]} name rdma0
run ip netns exec b ip link set rdma0 up
sh_ "rdma link show | grep -q 'netdev ${VF[1]}' && echo 'host rxe of ${VF[1]} still there' || echo 'no host rxe for ${VF[1]}'"
run ip netns exec b rdma link add rxb type rxe netdev rdma0
sleep 1
state "before ip netns del b"
inns b "before del"
sh_ "ip netns exec b ip -d link show rdma0 | head -3; ip netns exec b readlink /sys/class/net/rdma0/device"
run ip netns del b
sleep 3
state "3 s after ip netns del b"
sh_ "ls -l /sys/bus/pci/devices/0000:01:10.2/net/ 2>&1; ls /sys/class/net/$PF/device/virtfn1/net/"

echo "########## (d2) ip netns del with the VF inside, name kept, rxe inside"
run ip netns add c
run ip link set ${VF[2]} netns c
run ip netns exec c ip link set ${VF[2]} up
sh_ "rdma link show | grep -q 'netdev ${VF[2]}' && echo 'host rxe of ${VF[2]} still there' || echo 'no host rxe for ${VF[2]}'"
run ip netns exec c rdma link add rxc type rxe netdev ${VF[2]}
sleep 1
run ip netns del c
sleep 3
state "3 s after ip netns del c"
sh_ "ls /sys/class/net/$PF/device/virtfn2/net/"

echo "########## (d3) name taken on the way back: VF 2 renamed to rdma0 inside while the host has an rdma0 (VF 1, from d1)"
run ip netns add d
run ip link set "${VF[2]}" netns d
run ip netns exec d ip link set "${VF[2]}" name rdma0
sh_ "ip -br link | grep rdma0"
run ip netns del d
sleep 3
state "3 s after ip netns del d"
sh_ "ls /sys/class/net/$PF/device/virtfn2/net/"

echo "########## (f) two netns, each a VF + in-netns rxe, 10.77.0.1/24 and 10.77.0.2/24"
run ip netns add na
run ip netns add nb
for pair in "na ${VF[3]} rxna 10.77.0.1" "nb ${VF[4]} rxnb 10.77.0.2"; do
  set -- $pair
  hostrxe=$(rdma link show | awk -v n="$2" '$0 ~ "netdev "n"$" || $0 ~ "netdev "n" " {split($2,a,"/"); print a[1]}')
  echo "(host rxe on $2 before move: ${hostrxe:-none})"
  run ip link set "$2" netns "$1"
  hostrxe=$(rdma link show | awk -v n="$2" '$0 ~ "netdev "n"$" || $0 ~ "netdev "n" " {split($2,a,"/"); print a[1]}')
  if [ -n "$hostrxe" ]; then echo "(host rxe $hostrxe still bound to $2 after the move: deleting it)"; run rdma link delete "$hostrxe"; fi
  run ip netns exec "$1" ip link set lo up
  run ip netns exec "$1" ip link set "$2" up
  run ip netns exec "$1" ip addr add "$4/24" dev "$2"
  run ip netns exec "$1" rdma link add "$3" type rxe netdev "$2"
done
waitport na rxna; waitport nb rxnb
state "f: two netns ready"
inns na "f"
run ip netns exec nb ping -c 2 -W 2 10.77.0.1
echo "--- rping"
ip netns exec na timeout 60 rping -s -a 10.77.0.1 -C 3 >/tmp/rping-s.log 2>&1 &
spid=$!
sleep 2
run ip netns exec nb timeout 60 rping -c -a 10.77.0.1 -C 3 -v
wait $spid; echo "[server rc=$?]"; cat /tmp/rping-s.log
echo "--- ib_write_bw -R"
ip netns exec na timeout 120 ib_write_bw -R -d rxna --report_gbits >/tmp/bw-s.log 2>&1 &
spid=$!
sleep 3
run ip netns exec nb timeout 120 ib_write_bw -R -d rxnb --report_gbits 10.77.0.1
wait $spid; echo "[server rc=$?]"; cat /tmp/bw-s.log
newdmesg

echo "########## (e) exclusive mode"
run rdma system set netns exclusive
run rdma system show
for ns in na nb; do run ip netns del $ns; done
sleep 3
run ip netns list
run rdma system set netns exclusive
run rdma system show
state "after rdma system set netns exclusive"
run ip netns add e
run ip netns add e2
run rdma dev set rxe5 netns e
state "after rdma dev set rxe5 netns e"
inns e "after rdma dev set rxe5 netns e"
run ip link set ${VF[5]} netns e
state "after ip link set ${VF[5]} netns e (exclusive)"
inns e "after moving ${VF[5]} in (exclusive)"
run ip netns exec e ip link set ${VF[5]} up
hostrxe=$(rdma link show | awk -v n="${VF[5]}" '$0 ~ "netdev "n" " {split($2,a,"/"); print a[1]}')
[ -n "$hostrxe" ] && run rdma link delete "$hostrxe"
run ip netns exec e rdma link add rxe_e type rxe netdev ${VF[5]}
sleep 1
state "after ip netns exec e rdma link add rxe_e (exclusive)"
inns e "after rdma link add rxe_e (exclusive)"
run ip netns exec e ip addr add 10.77.5.1/24 dev ${VF[5]}
waitport e rxe_e
sh_ "ip netns exec e ibv_devices"
sh_ "ibv_devices"
echo "--- exclusive: host rxe moved into e2 after creation, from the host"
run ip netns exec e2 rdma dev
run rdma dev set rxe_e netns e2
run ip netns exec e ip link set ${VF[5]} netns 1
sleep 1
state "exclusive: after moving ${VF[5]} back to the host"
inns e "exclusive: after moving back"
run ip netns del e
run ip netns del e2
sleep 2
run rdma system set netns shared
run rdma system show
state "end"
