#!/usr/bin/env bash
# Host side of the VM tier: builds what the VM runs and copies it into a stage directory, so the
# VM sees one consistent set of binaries even while other builds rewrite target/ (cargo cannot
# build quickly inside the VM: build here, run there).
#
#   hack/vm/stage.sh STAGE_DIR
#
# STAGE_DIR gets:
#   bin/        every binary of the workspace (cargo build --workspace --bins) and the rdma-probe
#               built with libibverbs (--features verbs); tests point CONRDMA_BIN_DIR here
#   tests/      the in-VM test executables (package conrdma-vm-tests), by target name
#   images/rdma-probe.tar   the pod image: busybox + the probe and its libraries (build-probe-image.sh)
#   manifest    what was staged, one "kind name path" line each
set -euo pipefail

[ $# -eq 1 ] || { echo "usage: $0 STAGE_DIR" >&2; exit 2; }
stage=$1
repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"
say() { echo "vm-stage: $*" >&2; }
die() { say "error: $*"; exit 1; }
command -v cargo >/dev/null || die "cargo not found: the VM tier runs binaries built on the host"
command -v jq >/dev/null || die "jq missing (hack/install-deps.sh installs it)"

mkdir -p "$stage/bin" "$stage/tests" "$stage/images"
json=$(mktemp)
trap 'rm -f "$json"' EXIT

# cargo writes its progress to stderr and the JSON artifacts to stdout.
executables() { jq -r 'select(.reason == "compiler-artifact" and .executable != null)
                       | "\(.target.kind[0]) \(.target.name) \(.executable)"' "$json"; }

say "cargo build --workspace --bins"
cargo build --workspace --bins --message-format=json-render-diagnostics >"$json" || die "cargo build --workspace --bins failed"
bins=$(executables)
say "cargo build -p conrdma-rdma-probe --features verbs"
cargo build -p conrdma-rdma-probe --features verbs --message-format=json-render-diagnostics >"$json" ||
  die "building the rdma-probe with libibverbs failed (hack/install-vm-deps.sh installs libibverbs-dev, librdmacm-dev, libclang-dev)"
probe=$(executables | awk '$2 == "conrdma-rdma-probe" {print $3}')
[ -n "$probe" ] || die "cargo reported no conrdma-rdma-probe executable"
say "cargo test -p conrdma-vm-tests --no-run"
cargo test -p conrdma-vm-tests --no-run --message-format=json-render-diagnostics >"$json" || die "building the in-VM tests failed"
tests=$(executables | awk '$1 == "test"')
[ -n "$tests" ] || die "cargo reported no test executables for conrdma-vm-tests"

: >"$stage/manifest.new"
copy() { # copy KIND NAME SRC DST
  # Only when changed: the debug binaries are large, and most runs change few of them.
  if ! cmp -s "$3" "$4"; then
    cp -f "$3" "$4.tmp" && mv -f "$4.tmp" "$4"
  fi
  echo "$1 $2 $4" >>"$stage/manifest.new"
}
while read -r kind name path; do
  [ "$kind" = bin ] || continue
  [ "$name" = conrdma-rdma-probe ] && continue # the stub; the verbs build is staged below
  copy bin "$name" "$path" "$stage/bin/$name"
done <<<"$bins"
copy bin conrdma-rdma-probe "$probe" "$stage/bin/conrdma-rdma-probe"
while read -r kind name path; do
  copy test "$name" "$path" "$stage/tests/$name"
done <<<"$tests"

img=$stage/images/rdma-probe.tar
if [ ! -e "$img" ] || [ "$stage/bin/conrdma-rdma-probe" -nt "$img" ] ||
   [ "$repo/hack/vm/build-probe-image.sh" -nt "$img" ] || [ "$repo/hack/build-image.sh" -nt "$img" ]; then
  bash "$repo/hack/vm/build-probe-image.sh" "$img" "$stage/bin/conrdma-rdma-probe" >&2
fi
echo "image rdma-probe $img" >>"$stage/manifest.new"
mv -f "$stage/manifest.new" "$stage/manifest"
say "staged $(grep -c . "$stage/manifest") items in $stage"
