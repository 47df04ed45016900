#!/usr/bin/env bash
# Builds a tiny busybox image as an OCI image-layout tarball, for `ctr -n k8s.io images import`.
#
#   hack/build-image.sh OUT.tar [NAME]
#
# NAME defaults to localhost/conrdma/busybox:latest and is stored in index.json as the annotation
# io.containerd.image.name. The image's default command never exits (a shell loop that ends cleanly
# on SIGTERM/SIGINT), so the same image serves as the CRI sandbox ("pause") image and as an
# application image whose tests pass their own command.
#
# Offline and deterministic: the same busybox binary gives a byte-identical tarball (fixed mtimes,
# owners, modes and entry order). Needs bash, GNU tar, sha256sum and /bin/busybox (busybox-static;
# BUSYBOX overrides the path). It must be a static binary: nothing else goes into the rootfs.
set -euo pipefail

usage() { echo "usage: $0 OUT.tar [NAME]" >&2; exit 2; }
[ $# -ge 1 ] && [ $# -le 2 ] || usage
out=$1
name=${2:-localhost/conrdma/busybox:latest}
busybox=${BUSYBOX:-/bin/busybox}

[ -x "$busybox" ] || { echo "build-image: $busybox missing (apt-get install busybox-static)" >&2; exit 1; }
if command -v file >/dev/null && ! file -L "$busybox" | grep -q 'statically linked'; then
  echo "build-image: $busybox is not statically linked (use busybox-static)" >&2
  exit 1
fi

case "$(uname -m)" in
  x86_64) arch=amd64 ;;
  aarch64) arch=arm64 ;;
  armv7l) arch=arm ;;
  ppc64le) arch=ppc64le ;;
  s390x) arch=s390x ;;
  riscv64) arch=riscv64 ;;
  *) echo "build-image: unsupported machine $(uname -m)" >&2; exit 1 ;;
esac

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
umask 022

# --- rootfs -------------------------------------------------------------------------------
root=$work/rootfs
mkdir -p "$root"
for d in bin sbin usr/bin usr/sbin etc dev proc sys root run var var/run var/log tmp; do
  mkdir -p "$root/$d"
done
chmod 1777 "$root/tmp"
chmod 0700 "$root/root"
install -m 0755 "$busybox" "$root/bin/busybox"
# One absolute symlink per applet, at the path busybox itself suggests (resolved inside the rootfs).
"$busybox" --list-full | LC_ALL=C sort | while read -r applet; do
  [ -n "$applet" ] || continue
  [ "$applet" = bin/busybox ] && continue
  mkdir -p "$root/$(dirname "$applet")"
  ln -sf /bin/busybox "$root/$applet"
done
[ -e "$root/bin/sh" ] || ln -s /bin/busybox "$root/bin/sh"
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
chmod 0644 "$root/etc/passwd" "$root/etc/group"

# Deterministic tar: sorted names, fixed owner and mtime, no atime/ctime headers.
det_tar() { # det_tar OUT DIR
  (cd "$2" && LC_ALL=C tar --sort=name --format=gnu --mtime=@0 --owner=0 --group=0 --numeric-owner \
    -cf "$1" $(LC_ALL=C ls -A))
}

# --- blobs --------------------------------------------------------------------------------
layout=$work/layout
blobs=$layout/blobs/sha256
mkdir -p "$blobs"

det_tar "$work/layer.tar" "$root"
layer_digest=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
layer_size=$(stat -c %s "$work/layer.tar")
mv "$work/layer.tar" "$blobs/$layer_digest"

put_blob() { # put_blob FILE -> prints "digest size"
  local d s
  d=$(sha256sum "$1" | cut -d' ' -f1)
  s=$(stat -c %s "$1")
  mv "$1" "$blobs/$d"
  echo "$d $s"
}

pause_cmd="trap 'exit 0' TERM INT; while :; do sleep 2147483647 & wait \$!; done"
# JSON strings below only need escaping of the pause command's double quotes (it has none).
cat >"$work/config.json" <<EOF
{"architecture":"$arch","os":"linux","config":{"Env":["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["/bin/sh","-c","$pause_cmd"],"WorkingDir":"/","StopSignal":"SIGTERM"},"rootfs":{"type":"layers","diff_ids":["sha256:$layer_digest"]},"history":[{"created":"1970-01-01T00:00:00Z","created_by":"hack/build-image.sh"}],"created":"1970-01-01T00:00:00Z"}
EOF
read -r config_digest config_size < <(put_blob "$work/config.json")

cat >"$work/manifest.json" <<EOF
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:$config_digest","size":$config_size},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:$layer_digest","size":$layer_size}]}
EOF
read -r manifest_digest manifest_size < <(put_blob "$work/manifest.json")

tag=${name##*/}
case "$tag" in *:*) tag=${tag##*:} ;; *) tag=latest ;; esac
cat >"$layout/index.json" <<EOF
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:$manifest_digest","size":$manifest_size,"platform":{"architecture":"$arch","os":"linux"},"annotations":{"io.containerd.image.name":"$name","org.opencontainers.image.ref.name":"$tag"}}]}
EOF
echo '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"
find "$layout" -type d -exec chmod 0755 {} +
find "$layout" -type f -exec chmod 0644 {} +

mkdir -p "$(dirname "$out")"
tmp_out=$(mktemp "$(dirname "$out")/.build-image.XXXXXX")
det_tar "$tmp_out" "$layout"
chmod 0644 "$tmp_out"
mv -f "$tmp_out" "$out"
echo "build-image: wrote $out ($name, manifest sha256:$manifest_digest)"
