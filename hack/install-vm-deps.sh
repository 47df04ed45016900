#!/usr/bin/env bash
# Installs what the real-kernel VM tier (hack/vm-node.sh) needs on a fresh Debian bookworm machine:
#   - Debian's kernel and modules (linux-image-amd64; installed, never booted on the host),
#     or with --kernel sid Debian sid's current kernel (below),
#   - QEMU >= 8 for the igb SR-IOV NIC (qemu-system-x86 from bookworm-backports; bookworm's 7.2 has no igb),
#   - libibverbs with the rxe provider (the rdma-probe links it; the VM sees the host's files),
#     plus the headers and libclang that the rdma-sys crate's build needs,
#   - tools the VM uses from the host's files: iproute2, kmod, udev, perftest, rdmacm-utils (rping),
#     iputils-ping, and the CNI plugins of containernetworking-plugins (/usr/lib/cni),
#   - virtme-ng (PyPI) in a private virtualenv.
# Idempotent: a second run only checks and prints what it found. Needs root.
#
#   hack/install-vm-deps.sh                 # install what is missing (kernel: bookworm's 6.1)
#   hack/install-vm-deps.sh --kernel sid    # ... and Debian sid's newest amd64 kernel
#   hack/install-vm-deps.sh --check [--kernel sid]   # exit 1 (and say what) if anything is missing
#
# --kernel sid: the newest linux-binary-<ver>-amd64 that sid offers, with linux-modules-<ver>-amd64
# and linux-base-<ver>-amd64 (config, modules.builtin), fetched through a private apt dir with a sid
# source list (the system's sources, lists and dpkg database stay untouched), unpacked with dpkg -x
# into $CONRDMA_VM_SID_KERNEL_DIR/<ver> (default /opt/conrdma-kernel-sid), depmod'ed there, and
# copied to /lib/modules/<ver> (the image is /lib/modules/<ver>/vmlinuz). The version is recorded in
# $CONRDMA_VM_SID_KERNEL_DIR/version. sid moves: once installed it is kept; CONRDMA_VM_SID_REFRESH=1
# asks sid again and installs its newest kernel if that differs (older ones stay).
# --kernel PATH (a kernel image of your own): no kernel is installed, PATH must be readable.
#
# Environment: CONRDMA_VM_DEPS (default /opt/conrdma-vm) is where the virtme-ng virtualenv goes.
set -euo pipefail

VM_PREFIX=${CONRDMA_VM_DEPS:-/opt/conrdma-vm}
SID_KERNEL_DIR=${CONRDMA_VM_SID_KERNEL_DIR:-/opt/conrdma-kernel-sid}
VNG_VERSION=1.42
QEMU_MIN_MAJOR=8
check_only=0
kernel_choice=default
usage() { sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --check) check_only=1 ;;
    --kernel) [ $# -ge 2 ] || usage; kernel_choice=$2; shift ;;
    --kernel=*) kernel_choice=${1#--kernel=} ;;
    -h|--help) usage ;;
    *) echo "install-vm-deps: unknown argument $1" >&2; usage ;;
  esac
  shift
done
[ -n "$kernel_choice" ] || kernel_choice=default

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

# The sid kernel recorded in $SID_KERNEL_DIR/version, with its image and modules.dep in /lib/modules.
sid_version() { cat "$SID_KERNEL_DIR/version" 2>/dev/null; }
sid_kernel_ok() {
  local v
  v=$(sid_version) && [ -n "$v" ] && [ -r "/lib/modules/$v/vmlinuz" ] && [ -s "/lib/modules/$v/modules.dep" ]
}

# Packages from bookworm itself. iproute2 has `ip` (VF attributes) and `rdma` (rxe links); kmod
# has modprobe and depmod; ibverbs-providers has librxe; ibverbs-utils (ibv_devinfo) helps when
# debugging. In the VM, from the host's files: perftest (ib_write_bw ...), rdmacm-utils (rping),
# iputils-ping, and containernetworking-plugins (bridge, host-local, loopback ... in /usr/lib/cni)
# for pods in their own network namespaces. udev: virtme-ng starts the host's systemd-udevd in the
# VM when it exists; it names the NIC (enp1s0, VFs enp1s0v<i>). Without it the names stay eth<i>
# and the guest's output did not reach console.log (seen with --kernel sid on a machine without
# linux-image-amd64, which pulls udev in through initramfs-tools).
apt_pkgs=(iproute2 kmod udev libibverbs1 ibverbs-providers ibverbs-utils libibverbs-dev librdmacm-dev
          libclang-dev pkg-config python3-venv busybox-static jq perftest rdmacm-utils iputils-ping
          containernetworking-plugins)
missing_apt=()
for p in "${apt_pkgs[@]}"; do pkg_ok "$p" || missing_apt+=("$p"); done
need_sid_kernel=0
case "$kernel_choice" in
  default) kernel_ok || missing_apt+=(linux-image-amd64) ;;
  sid)
    sid_kernel_ok || need_sid_kernel=1
    [ "${CONRDMA_VM_SID_REFRESH:-0}" = 1 ] && [ $check_only = 0 ] && need_sid_kernel=1
    ;;
  /*) [ -r "$kernel_choice" ] || die "--kernel $kernel_choice: no such readable kernel image" ;;
  *) die "--kernel takes default, sid or an absolute path to a kernel image, not '$kernel_choice'" ;;
esac
need_qemu=0; qemu_ok || need_qemu=1
need_vng=0; vng_ok || need_vng=1

if [ $check_only = 1 ]; then
  problems=()
  [ ${#missing_apt[@]} -eq 0 ] || problems+=("packages: ${missing_apt[*]}")
  [ $need_sid_kernel = 0 ] || problems+=("Debian sid's kernel in $SID_KERNEL_DIR and /lib/modules")
  [ $need_qemu = 0 ] || problems+=("qemu-system-x86 >= $QEMU_MIN_MAJOR with the igb device")
  [ $need_vng = 0 ] || problems+=("virtme-ng $VNG_VERSION in $VM_PREFIX/venv")
  if [ ${#problems[@]} -gt 0 ]; then
    say "missing: $(IFS=';'; echo "${problems[*]}") -- run hack/install-vm-deps.sh$([ "$kernel_choice" = sid ] && echo ' --kernel sid')"
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

# --- Debian sid's kernel ------------------------------------------------------------------
# Through a private apt dir (its own source list, lists and cache; the system's stay untouched).
# The image is usr/lib/modules/<ver>/vmlinuz in linux-binary-<ver>-amd64 (no /boot file);
# linux-modules-<ver>-amd64 has the .ko.xz files; linux-base-<ver>-amd64 config, System.map,
# modules.builtin and modules.order (without modules.builtin, modprobe of a built-in fails).
install_sid_kernel() {
  local work
  work=$(mktemp -d)
  # Removed on every exit path of this function (the trap is reset before returning).
  trap 'rm -rf "$work"' EXIT
  chmod 755 "$work" # apt downloads as _apt when it can reach the dir
  mkdir -p "$work/lists/partial" "$work/cache/archives/partial"
  echo "deb http://deb.debian.org/debian sid main" >"$work/sources.list"
  local apt_opts=(-o Dir::Etc::sourcelist="$work/sources.list" -o Dir::Etc::sourceparts=-
                  -o Dir::State::Lists="$work/lists" -o Dir::Cache="$work/cache" -o APT::Get::List-Cleanup=0)
  say "apt-get update (private sid list in $work)"
  apt-get "${apt_opts[@]}" update -qq
  # linux-binary-<ver>-amd64, where <ver> (e.g. 7.2.13+deb14) has no '-': this skips the cloud-amd64,
  # rt-amd64 and unsigned flavours. The newest version wins.
  local names ver
  names=$(apt-cache "${apt_opts[@]}" pkgnames linux-binary-)
  ver=$(sed -n 's/^linux-binary-\([0-9][^-]*\)-amd64$/\1/p' <<<"$names" | sort -V | tail -1)
  [ -n "$ver" ] || die "sid offers no linux-binary-<ver>-amd64 package"
  ver=$ver-amd64
  local pkgs=("linux-binary-$ver" "linux-modules-$ver") p
  local avail
  avail=$(apt-cache "${apt_opts[@]}" pkgnames "linux-")
  grep -qx "linux-modules-$ver" <<<"$avail" || die "sid has linux-binary-$ver but no linux-modules-$ver"
  grep -qx "linux-base-$ver" <<<"$avail" && pkgs+=("linux-base-$ver")
  if sid_kernel_ok && [ "$(sid_version)" = "$ver" ]; then
    say "sid's newest kernel is $ver, installed already"
    rm -rf "$work"; trap - EXIT
    return 0
  fi
  say "apt-get download ${pkgs[*]} (sid)"
  # Into a root-only dir: apt would fall back to root anyway, with a warning.
  (cd "$work" && apt-get "${apt_opts[@]}" -o APT::Sandbox::User=root download "${pkgs[@]}" >/dev/null)
  local dest=$SID_KERNEL_DIR/$ver
  rm -rf "$dest"
  mkdir -p "$dest"
  for p in "${pkgs[@]}"; do
    local deb=("$work/${p}"_*.deb)
    [ -e "${deb[0]}" ] || die "apt-get download $p left no .deb"
    say "unpacking ${deb[0]##*/} into $dest"
    dpkg -x "${deb[0]}" "$dest"
    echo "${deb[0]##*/}" >>"$dest/package"
  done
  local mods=$dest/usr/lib/modules/$ver
  [ -r "$mods/vmlinuz" ] || die "no usr/lib/modules/$ver/vmlinuz in linux-binary-$ver (package layout changed?)"
  depmod -b "$dest/usr" "$ver" || die "depmod -b $dest/usr $ver"
  [ -s "$mods/modules.dep" ] || die "depmod wrote no $mods/modules.dep"
  if [ ! -s "/lib/modules/$ver/modules.dep" ] || [ ! -r "/lib/modules/$ver/vmlinuz" ]; then
    # Copied beside, then renamed: an interrupted copy never looks complete.
    rm -rf "/lib/modules/.$ver.tmp" "/lib/modules/$ver"
    mkdir -p /lib/modules
    cp -a "$mods" "/lib/modules/.$ver.tmp"
    mv "/lib/modules/.$ver.tmp" "/lib/modules/$ver"
  fi
  echo "$ver" >"$SID_KERNEL_DIR/.version.tmp"
  mv "$SID_KERNEL_DIR/.version.tmp" "$SID_KERNEL_DIR/version"
  say "Debian sid kernel $ver: /lib/modules/$ver/vmlinuz"
  rm -rf "$work"
  trap - EXIT
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
if [ $need_sid_kernel = 1 ]; then
  t1=$(date +%s)
  install_sid_kernel
  say "sid kernel checked/installed in $(( $(date +%s) - t1 ))s"
fi

case "$kernel_choice" in
  default)
    kernel_ok || die "no /boot/vmlinuz-* with modules after installing linux-image-amd64"
    kernel_line="kernel: $(ls -1 /boot/vmlinuz-* | sort -V | tail -1)" ;;
  sid)
    sid_kernel_ok || die "Debian sid's kernel is not complete in /lib/modules/$(sid_version)"
    kernel_line="kernel: Debian sid $(sid_version) (/lib/modules/$(sid_version)/vmlinuz, $(tr '\n' ' ' <"$SID_KERNEL_DIR/$(sid_version)/package" 2>/dev/null | sed 's/ $//'))" ;;
  *) kernel_line="kernel: $kernel_choice" ;;
esac
say "$kernel_line; $(qemu-system-x86_64 --version | head -1); vng $("$VM_PREFIX/venv/bin/vng" --version 2>&1 | tail -1)"
