#!/usr/bin/env bash
# The main job: a local ConRDMA node on a simulated SR-IOV NIC (2 PFs x 8 VFs at 100Gbps), an
# isolated containerd with NRI (2.x from Debian sid by default, what nodes run; `--containerd 1.7`
# for 1.7 from trixie), the ConRDMA NRI plugin and runtime shim, and a demo pod that asks for
# bandwidth; prints what the pod got (devices, env, allocation, the VF's rate). Extra arguments go
# to conrdma-local-node (e.g. --hold to keep the node up for crictl, --bandwidth 10Gbps,
# --containerd 1.7|2.1; CONRDMA_CONTAINERD in the environment picks the line too).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "hack/demo.sh: containerd and runc need root; re-run with sudo" >&2
  exit 2
fi
bash hack/install-deps.sh >/dev/null
cargo build --locked --quiet --workspace --bins
exec target/debug/conrdma-local-node "$@"
