#!/usr/bin/env bash
# Installs what ConRDMA's builds and end-to-end tests need on a fresh Debian bookworm machine.
# Idempotent: re-running it only checks. Neither containerd line with NRI is in bookworm, so each is
# unpacked from a newer suite's .deb into a private prefix instead of upgrading the system:
#   - containerd 1.7 (Debian trixie) into $CONRDMA_DEPS  (default /opt/conrdma-deps);
#   - containerd 2.x (Debian sid, whatever version sid carries) into $CONRDMA_DEPS2
#     (default /opt/conrdma-deps-2).
# The harness picks one with CONRDMA_CONTAINERD=1.7|2.1 (see test/src/deps.rs). Both run bookworm's
# runc 1.1.5 from apt: trixie's and sid's runc need a newer glibc than bookworm has.
set -euo pipefail

PREFIX=${CONRDMA_DEPS:-/opt/conrdma-deps}
PREFIX2=${CONRDMA_DEPS2:-/opt/conrdma-deps-2}
need_apt=()
command -v protoc >/dev/null || need_apt+=(protobuf-compiler)
command -v runc >/dev/null || need_apt+=(runc)
[ -x /bin/busybox ] || need_apt+=(busybox-static)
command -v jq >/dev/null || need_apt+=(jq)
# Pods with their own network namespace: CNI bridge/host-local/loopback for their eth0, iproute2
# for the stand-in VF netdevs (veth) the pod-network tests create.
[ -x /usr/lib/cni/bridge ] || need_apt+=(containernetworking-plugins)
command -v ip >/dev/null || need_apt+=(iproute2)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "install-deps: apt-get install ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# unpack_containerd SUITE PREFIX: `apt-get download containerd` from Debian SUITE through a private
# apt list (the system's own lists, cache and sources stay untouched) and `dpkg -x` it into PREFIX.
unpack_containerd() {
  local suite=$1 prefix=$2 work
  work=$(mktemp -d)
  # Removed on every exit path of this function (the trap is reset before returning).
  trap 'rm -rf "$work"' EXIT
  chmod 755 "$work" # apt downloads as _apt when it can reach the dir
  mkdir -p "$work/lists/partial" "$work/cache/archives/partial"
  echo "deb http://deb.debian.org/debian $suite main" >"$work/sources.list"
  local apt_opts=(-o Dir::Etc::sourcelist="$work/sources.list" -o Dir::Etc::sourceparts=-
                  -o Dir::State::Lists="$work/lists" -o Dir::Cache="$work/cache" -o APT::Get::List-Cleanup=0)
  apt-get "${apt_opts[@]}" update -qq
  (cd "$work" && apt-get "${apt_opts[@]}" download containerd >/dev/null)
  local debs=("$work"/containerd_*.deb)
  echo "install-deps: unpacking ${debs[0]##*/}"
  mkdir -p "$prefix"
  dpkg -x "${debs[0]}" "$prefix"
  rm -rf "$work"
  trap - EXIT
}

if [ ! -x "$PREFIX/usr/bin/containerd" ]; then
  echo "install-deps: fetching containerd 1.7 from Debian trixie into $PREFIX"
  unpack_containerd trixie "$PREFIX"
fi
if [ ! -x "$PREFIX2/usr/bin/containerd" ]; then
  # sid is rolling: take whatever containerd it carries now (2.1.9 when this was written).
  echo "install-deps: fetching containerd 2.x from Debian sid into $PREFIX2"
  unpack_containerd sid "$PREFIX2"
fi
# Only containerd, ctr and the runc shim are used from the sid package. Its runc (if a later
# package ships one in the prefix) must not shadow bookworm's: the harness looks runc up in $PATH
# only, never in a prefix, so nothing to do but check.
for prefix in "$PREFIX" "$PREFIX2"; do
  for bin in containerd ctr containerd-shim-runc-v2; do
    if [ ! -x "$prefix/usr/bin/$bin" ]; then
      echo "install-deps: $prefix/usr/bin/$bin missing" >&2
      exit 1
    fi
  done
done
# Whole output captured, never piped into an early-exit reader: SIGPIPE under pipefail.
v1=$("$PREFIX/usr/bin/containerd" --version)
v2=$("$PREFIX2/usr/bin/containerd" --version)
echo "install-deps: containerd 1.7 line ($PREFIX): $v1"
echo "install-deps: containerd 2.x line ($PREFIX2): $v2"
runc_version=$(runc --version)
echo "${runc_version%%$'\n'*}"
