#!/usr/bin/env bash
# Installs what ConRDMA's builds and end-to-end tests need on a fresh Debian bookworm machine.
# Idempotent: re-running it only checks. containerd 1.7 (with NRI) is not in bookworm, so its trixie
# .deb is unpacked into a private prefix instead of upgrading the system.
set -euo pipefail

PREFIX=${CONRDMA_DEPS:-/opt/conrdma-deps}
need_apt=()
command -v protoc >/dev/null || need_apt+=(protobuf-compiler)
command -v runc >/dev/null || need_apt+=(runc)
[ -x /bin/busybox ] || need_apt+=(busybox-static)
command -v jq >/dev/null || need_apt+=(jq)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "install-deps: apt-get install ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if [ ! -x "$PREFIX/usr/bin/containerd" ]; then
  echo "install-deps: fetching containerd 1.7 from Debian trixie into $PREFIX"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  mkdir -p "$work/lists/partial" "$work/cache/archives/partial"
  echo "deb http://deb.debian.org/debian trixie main" >"$work/sources.list"
  apt_opts=(-o Dir::Etc::sourcelist="$work/sources.list" -o Dir::Etc::sourceparts=-
            -o Dir::State::Lists="$work/lists" -o Dir::Cache="$work/cache" -o APT::Get::List-Cleanup=0)
  apt-get "${apt_opts[@]}" update -qq
  (cd "$work" && apt-get "${apt_opts[@]}" download containerd >/dev/null)
  mkdir -p "$PREFIX"
  dpkg -x "$work"/containerd_*.deb "$PREFIX"
  # Restore the system's own package lists: the private update must not leak into later apt calls.
  rm -rf "$work"
  trap - EXIT
fi
"$PREFIX/usr/bin/containerd" --version
runc_version=$(runc --version) # whole, not piped to head: SIGPIPE under pipefail
echo "${runc_version%%$'\n'*}"
