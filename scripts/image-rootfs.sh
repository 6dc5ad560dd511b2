#!/usr/bin/env bash
# The root filesystem of an anchorpipe image, for scripts/images.sh and the Dockerfiles:
# the binary at /usr/local/bin, exactly the shared libraries it links at the paths the
# dynamic loader looks them up by, a passwd/group naming the non-root user 65532, and an
# empty /tmp. Every file's time is SOURCE_DATE_EPOCH (default 0), so the same binary
# gives the same layer.
#
#   scripts/image-rootfs.sh <binary> <rootfs dir>
set -euo pipefail
binary="$1"
rootfs="$2"
epoch="${SOURCE_DATE_EPOCH:-0}"

mkdir -p "$rootfs/usr/local/bin" "$rootfs/etc" "$rootfs/tmp"
chmod 1777 "$rootfs/tmp"
install -m 0755 "$binary" "$rootfs/usr/local/bin/"
for lib in $(ldd "$binary" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'); do
    mkdir -p "$rootfs$(dirname "$lib")"
    install -m 0755 "$(readlink -f "$lib")" "$rootfs$lib"
done
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' \
    >"$rootfs/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$rootfs/etc/group"
chmod 0644 "$rootfs/etc/passwd" "$rootfs/etc/group"
find "$rootfs" -exec touch -h -d "@$epoch" {} +
