#!/usr/bin/env bash
# Builds the VM tier's pod image: the busybox test image (hack/build-image.sh) plus one more layer
# holding the rdma-probe, rping and ib_write_bw (where the host has them), the shared libraries
# they need, and libibverbs' providers and their driver files, all at the host's paths. Written as an OCI image-layout tarball for `ctr images import`.
#
#   hack/vm/build-probe-image.sh OUT.tar PROBE_BINARY [NAME]
#
# NAME defaults to localhost/conrdma/rdma-probe:latest. Inside the image the probe is
# /usr/local/bin/conrdma-rdma-probe. Deterministic for the same inputs. Needs jq, ldd, GNU tar.
set -euo pipefail

usage() { echo "usage: $0 OUT.tar PROBE_BINARY [NAME]" >&2; exit 2; }
[ $# -ge 2 ] && [ $# -le 3 ] || usage
out=$1
probe=$2
name=${3:-localhost/conrdma/rdma-probe:latest}
here=$(cd "$(dirname "$0")" && pwd)
die() { echo "build-probe-image: $*" >&2; exit 1; }

[ -x "$probe" ] || die "$probe is not an executable"
command -v jq >/dev/null || die "jq missing (hack/install-deps.sh installs it)"
# ldd's output is captured before grep reads it: `ldd | grep -q` under pipefail fails whenever grep
# exits at the match before ldd has written its last line (SIGPIPE), a race that CI lost.
libs=$(ldd "$probe") || die "ldd $probe failed"
grep -q 'libibverbs' <<<"$libs" ||
  die "$probe does not link libibverbs: build it with cargo build -p conrdma-rdma-probe --features verbs"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
umask 022

# --- the extra layer's files -------------------------------------------------------------------
extra=$work/extra
mkdir -p "$extra/usr/local/bin"
install -m 0755 "$probe" "$extra/usr/local/bin/conrdma-rdma-probe"

provider_dir=$(dirname "$(ls /usr/lib/*/libibverbs/librxe-rdmav*.so 2>/dev/null | head -1)")
[ -d "$provider_dir" ] || die "no librxe provider under /usr/lib/*/libibverbs (apt-get install ibverbs-providers)"
[ -d /etc/libibverbs.d ] || die "no /etc/libibverbs.d (apt-get install ibverbs-providers)"

copy_file() { # copy_file HOST_PATH: the file's content at the same path in the layer
  local dst=$extra$1
  [ -e "$dst" ] && return 0
  mkdir -p "$(dirname "$dst")"
  cp -L "$1" "$dst"
  chmod 0644 "$dst"
  case "$1" in *ld-linux*|*.so*) chmod 0755 "$dst" ;; esac
}

# RDMA CM tools for the pod-network tests, where the host has them (rdmacm-utils, perftest):
# rping and ib_write_bw -R between pods, at their host paths.
tools=()
for t in rping ib_write_bw; do
  p=$(command -v "$t" 2>/dev/null) || continue
  mkdir -p "$extra$(dirname "$p")"
  install -m 0755 "$p" "$extra$p"
  tools+=("$p")
done

# The loader and every library of the probe, the tools and each provider (providers are
# dlopen()ed by libibverbs, so ldd of the probe alone misses them and what they link).
objects=("$probe" "${tools[@]}" "$provider_dir"/*.so)
for obj in "${objects[@]}"; do
  ldd "$obj" | awk '/=> \//{print $3} /^[[:space:]]*\/[^ ]*ld-linux/{print $1}' | while read -r lib; do
    copy_file "$lib"
  done
done
for p in "$provider_dir"/*.so; do copy_file "$p"; done
for d in /etc/libibverbs.d/*; do copy_file "$d"; done

# --- base image, then the layer on top ------------------------------------------------------
bash "$here/../build-image.sh" "$work/base.tar" "$name" >/dev/null
layout=$work/layout
mkdir -p "$layout"
tar -xf "$work/base.tar" -C "$layout"
blobs=$layout/blobs/sha256

(cd "$extra" && LC_ALL=C tar --sort=name --format=gnu --mtime=@0 --owner=0 --group=0 --numeric-owner \
  -cf "$work/layer.tar" $(LC_ALL=C ls -A))
layer_digest=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
layer_size=$(stat -c %s "$work/layer.tar")
mv "$work/layer.tar" "$blobs/$layer_digest"

put_json() { # put_json FILE -> "digest size", the file stored as a blob
  local d s
  d=$(sha256sum "$1" | cut -d' ' -f1)
  s=$(stat -c %s "$1")
  mv "$1" "$blobs/$d"
  echo "$d $s"
}

old_manifest=$(jq -r '.manifests[0].digest' "$layout/index.json" | sed 's/^sha256://')
old_config=$(jq -r '.config.digest' "$blobs/$old_manifest" | sed 's/^sha256://')

jq -c --arg d "sha256:$layer_digest" \
  '.rootfs.diff_ids += [$d] | .history += [{"created":"1970-01-01T00:00:00Z","created_by":"hack/vm/build-probe-image.sh"}]' \
  "$blobs/$old_config" >"$work/config.json"
read -r config_digest config_size < <(put_json "$work/config.json")

jq -c --arg cd "sha256:$config_digest" --argjson cs "$config_size" \
  --arg ld "sha256:$layer_digest" --argjson ls "$layer_size" \
  '.config.digest = $cd | .config.size = $cs
   | .layers += [{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":$ld,"size":$ls}]' \
  "$blobs/$old_manifest" >"$work/manifest.json"
read -r manifest_digest manifest_size < <(put_json "$work/manifest.json")
rm -f "$blobs/$old_manifest" "$blobs/$old_config"

jq -c --arg md "sha256:$manifest_digest" --argjson ms "$manifest_size" \
  '.manifests[0].digest = $md | .manifests[0].size = $ms' "$layout/index.json" >"$work/index.json"
mv "$work/index.json" "$layout/index.json"
find "$layout" -type d -exec chmod 0755 {} +
find "$layout" -type f -exec chmod 0644 {} +

mkdir -p "$(dirname "$out")"
tmp_out=$(mktemp "$(dirname "$out")/.build-probe-image.XXXXXX")
(cd "$layout" && LC_ALL=C tar --sort=name --format=gnu --mtime=@0 --owner=0 --group=0 --numeric-owner \
  -cf "$tmp_out" $(LC_ALL=C ls -A))
chmod 0644 "$tmp_out"
mv -f "$tmp_out" "$out"
echo "build-probe-image: wrote $out ($name, manifest sha256:$manifest_digest, extra layer $((layer_size / 1024)) KiB)"
