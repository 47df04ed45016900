#!/usr/bin/env bash
# Installs what the real-kernel VM tier (hack/vm-node.sh) needs on a fresh Debian bookworm machine:
#   - Debian's kernel and modules (linux-image-amd64; installed, never booted on the host),
#   - QEMU >= 8 for the igb SR-IOV NIC (qemu-system-x86 from bookworm-backports; bookworm's 7.2 has no igb),
#   - libibverbs with the rxe provider (the rdma-probe links it; the VM sees the host's files),
#     plus the headers and libclang that the rdma-sys crate's build needs,
#   - virtme-ng (PyPI) in a private virtualenv.
# Idempotent: a second run only checks and prints what it found. Needs root.
#
#   hack/install-vm-deps.sh          # install what is missing
#   hack/install-vm-deps.sh --check  # exit 1 (and say what) if anything is missing, install nothing
#
# Environment: CONRDMA_VM_DEPS (default /opt/conrdma-vm) is where the virtme-ng virtualenv goes.
set -euo pipefail

VM_PREFIX=${CONRDMA_VM_DEPS:-/opt/conrdma-vm}
VNG_VERSION=1.42
QEMU_MIN_MAJOR=8
check_only=0
[ "${1:-}" = --check ] && check_only=1

say() { echo "install-vm-deps: $*" >&2; }
die() { say "error: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (apt-get and /opt need it)"
. /etc/os-release
[ "${VERSION_CODENAME:-}" = bookworm ] || say "warning: written for Debian bookworm, this is ${PRETTY_NAME:-unknown}"

apt_get() {
  # Other sessions may hold the dpkg lock for a while: wait rather than fail.
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 "$@"
}

# --- what is missing --------------------------------------------------------------------
pkg_ok() { [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]; }

kernel_ok() { # a /boot/vmlinuz-* with its modules
  local k
  for k in /boot/vmlinuz-*; do
    [ -e "$k" ] && [ -d "/lib/modules/${k#/boot/vmlinuz-}/kernel" ] && return 0
  done
  return 1
}

qemu_ok() {
  command -v qemu-system-x86_64 >/dev/null || return 1
  local major
  major=$(qemu-system-x86_64 --version | sed -n 's/^QEMU emulator version \([0-9]*\)\..*/\1/p')
  [ -n "$major" ] && [ "$major" -ge "$QEMU_MIN_MAJOR" ] || return 1
  # Captured first: `qemu | grep -q` under pipefail fails when grep exits before qemu is done
  # writing (SIGPIPE), which would read as "no igb".
  local devices
  devices=$(qemu-system-x86_64 -device help 2>/dev/null) || return 1
  grep -q '"igb"' <<<"$devices"
}

vng_ok() { [ -x "$VM_PREFIX/venv/bin/vng" ] && "$VM_PREFIX/venv/bin/vng" --version >/dev/null 2>&1; }

# Packages from bookworm itself. iproute2 has `ip` (VF attributes) and `rdma` (rxe links); kmod
# has modprobe; ibverbs-providers has librxe; ibverbs-utils (ibv_devinfo) helps when debugging.
apt_pkgs=(iproute2 kmod libibverbs1 ibverbs-providers ibverbs-utils libibverbs-dev librdmacm-dev
          libclang-dev pkg-config python3-venv busybox-static jq)
missing_apt=()
for p in "${apt_pkgs[@]}"; do pkg_ok "$p" || missing_apt+=("$p"); done
kernel_ok || missing_apt+=(linux-image-amd64)
need_qemu=0; qemu_ok || need_qemu=1
need_vng=0; vng_ok || need_vng=1

if [ $check_only = 1 ]; then
  problems=()
  [ ${#missing_apt[@]} -eq 0 ] || problems+=("packages: ${missing_apt[*]}")
  [ $need_qemu = 0 ] || problems+=("qemu-system-x86 >= $QEMU_MIN_MAJOR with the igb device")
  [ $need_vng = 0 ] || problems+=("virtme-ng $VNG_VERSION in $VM_PREFIX/venv")
  if [ ${#problems[@]} -gt 0 ]; then
    say "missing: $(IFS=';'; echo "${problems[*]}") -- run hack/install-vm-deps.sh"
    exit 1
  fi
fi

# --- bookworm-backports, for QEMU ---------------------------------------------------------
# The suite is added next to the system's own bookworm entry, with the same mirror and keyring
# (read from the system's sources, so this script names no mirror of its own). Backports are
# pinned low by Debian's Release file: nothing else is upgraded from them.
backports_list=/etc/apt/sources.list.d/conrdma-bookworm-backports.sources
add_backports() {
  [ -e "$backports_list" ] && return 1
  local policy
  policy=$(apt-cache policy 2>/dev/null || true)
  if grep -q 'a=bookworm-backports\|n=bookworm-backports' <<<"$policy"; then
    return 1 # already configured by someone else
  fi
  local uri="" keyring=/usr/share/keyrings/debian-archive-keyring.gpg f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -e "$f" ] || continue
    # The first deb822 stanza whose Suites has plain "bookworm".
    uri=$(awk 'BEGIN{RS=""; FS="\n"} {u=""; s=0; for(i=1;i<=NF;i++){ if($i ~ /^URIs:/){sub(/^URIs:[ \t]*/,"",$i); split($i,a,/[ \t]+/); u=a[1]} if($i ~ /^Suites:/ && $i ~ /[ \t]bookworm([ \t]|$)/) s=1 } if(s && u!=""){print u; exit}}' "$f")
    [ -n "$uri" ] && break
  done
  if [ -z "$uri" ] && [ -e /etc/apt/sources.list ]; then
    uri=$(awk '$1=="deb" { i=2; if($2 ~ /^\[/){ while(i<=NF && $i !~ /\]$/) i++; i++ } if($(i+1)=="bookworm"){print $i; exit} }' /etc/apt/sources.list)
  fi
  [ -n "$uri" ] || die "no bookworm entry in the apt sources to base bookworm-backports on"
  say "adding bookworm-backports ($uri) as $backports_list"
  printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: %s\n' \
    "$uri" "$keyring" >"$backports_list"
  return 0
}

t0=$(date +%s)
updated=0
if [ ${#missing_apt[@]} -gt 0 ] || [ $need_qemu = 1 ]; then
  [ $need_qemu = 1 ] && add_backports || true
  say "apt-get update"
  apt_get update -qq
  updated=1
fi
if [ ${#missing_apt[@]} -gt 0 ]; then
  say "apt-get install ${missing_apt[*]}"
  # The kernel is never booted on the host: skip building its initramfs (virtme-ng makes its own).
  INITRD=No apt_get install -y -qq --no-install-recommends "${missing_apt[@]}" >/dev/null
fi
if [ $need_qemu = 1 ]; then
  say "apt-get install -t bookworm-backports qemu-system-x86"
  apt_get install -y -qq --no-install-recommends -t bookworm-backports qemu-system-x86 >/dev/null
  qemu_ok || die "qemu-system-x86_64 is still older than $QEMU_MIN_MAJOR or has no igb device: $(qemu-system-x86_64 --version | head -1)"
fi
if [ $need_vng = 1 ]; then
  say "pip install virtme-ng==$VNG_VERSION into $VM_PREFIX/venv"
  mkdir -p "$VM_PREFIX"
  # Debian's python3, not whatever python3 is first in PATH: the venv must outlive shells.
  /usr/bin/python3 -m venv "$VM_PREFIX/venv"
  "$VM_PREFIX/venv/bin/pip" install -q --disable-pip-version-check "virtme-ng==$VNG_VERSION"
  vng_ok || die "vng does not run from $VM_PREFIX/venv/bin/vng"
fi
[ $updated = 1 ] && say "installed in $(( $(date +%s) - t0 ))s"

kernel_ok || die "no /boot/vmlinuz-* with modules after installing linux-image-amd64"
say "kernel: $(ls -1 /boot/vmlinuz-* | sort -V | tail -1); $(qemu-system-x86_64 --version | head -1); vng $("$VM_PREFIX/venv/bin/vng" --version 2>&1 | tail -1)"
