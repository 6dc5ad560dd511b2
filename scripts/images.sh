#!/usr/bin/env bash
# OCI images of anchorpipe-ingest and anchorpipe-operator, built without a container
# engine: the release binary, exactly the shared libraries it links (the GNU target is
# the only one this toolchain has, so no static binary), a passwd/group naming the
# non-root user 65532, and nothing else — no shell, no package manager. Built with
# umoci (Debian's package, installed if missing), reproducibly: file times, the config's
# creation time and the layer order come from the last commit, so the same commit and
# the same build give the same digests.
#
#   scripts/images.sh              build both binaries (release) and both images
#   scripts/images.sh --no-build   package the release binaries already built
#   scripts/images.sh --verify     also unpack each image and run its entrypoint from
#                                  the image's own files, as the image's user (chroot)
#
# Output, in $IMAGES_DIR (default: <cargo target dir>/images):
#   anchorpipe-<name>-<appVersion>.oci.tar   an OCI image layout as a tarball, which
#       `docker load`, `podman load`, `kind load image-archive`, `skopeo copy
#       oci-archive:…` and `crane push` accept; tagged <appVersion> and named
#       docker.io/library/anchorpipe-<name>:<appVersion> for engines that want a name
#   anchorpipe-<name>-<appVersion>.digest    the manifest digest (sha256:…)
# The file set comes from scripts/image-rootfs.sh, which the Dockerfiles
# (ingest/Dockerfile, operator/Dockerfile) run too, so those who build with Docker get
# the same files.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

log() { printf '[images %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

build=1
verify=0
for arg in "$@"; do
    case "$arg" in
        --no-build) build=0 ;;
        --verify) verify=1 ;;
        *) echo "unknown argument: $arg" >&2; exit 2 ;;
    esac
done

if ! command -v umoci >/dev/null 2>&1; then
    log "installing umoci (apt)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends umoci >/dev/null
fi

VERSION="$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\} *$/\1/p' charts/anchorpipe/Chart.yaml)"
[ -n "$VERSION" ] || { echo "no appVersion in charts/anchorpipe/Chart.yaml" >&2; exit 1; }
EPOCH="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}"
CREATED="$(date -u -d "@$EPOCH" +%Y-%m-%dT%H:%M:%SZ)"
REVISION="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
OUT="${IMAGES_DIR:-$TARGET_DIR/images}"
mkdir -p "$OUT"

if [ "$build" = 1 ]; then
    log "building release binaries"
    cargo build --release --locked -p anchorpipe-ingest -p anchorpipe-operator
fi

build_image() {
    local name="$1" binary="$TARGET_DIR/release/$1"
    [ -x "$binary" ] || { echo "$binary is missing; run without --no-build" >&2; exit 1; }
    local work; work="$(mktemp -d)"
    local layout="$work/layout" bundle="$work/bundle"
    umoci init --layout "$layout"
    umoci new --image "$layout:$VERSION"
    # The layer is the difference between an empty unpacked image and the staged files
    # (`umoci repack`, whose layer tarballs end properly; `umoci insert`'s lack the
    # end-of-archive blocks that GNU tar expects).
    umoci unpack --image "$layout:$VERSION" "$bundle" >/dev/null
    SOURCE_DATE_EPOCH="$EPOCH" scripts/image-rootfs.sh "$binary" "$bundle/rootfs"
    umoci repack --image "$layout:$VERSION" --history.created "$CREATED" \
        --history.created_by "scripts/images.sh $name" "$bundle"
    rm -rf "$bundle"
    umoci config --image "$layout:$VERSION" --created "$CREATED" --no-history \
        --config.user 65532:65532 \
        --config.entrypoint "/usr/local/bin/$name" \
        --config.workingdir / \
        --config.env PATH=/usr/local/bin \
        --config.label "org.opencontainers.image.title=$name" \
        --config.label "org.opencontainers.image.version=$VERSION" \
        --config.label "org.opencontainers.image.revision=$REVISION"
    umoci gc --layout "$layout"
    # Engines that import by name read it from the index annotations.
    python3 - "$layout/index.json" "$name" "$VERSION" <<'EOF'
import json, sys
path, name, version = sys.argv[1:]
with open(path) as f:
    index = json.load(f)
for manifest in index["manifests"]:
    annotations = manifest.setdefault("annotations", {})
    annotations["org.opencontainers.image.ref.name"] = version
    annotations["io.containerd.image.name"] = f"docker.io/library/{name}:{version}"
with open(path, "w") as f:
    json.dump(index, f, separators=(",", ":"), sort_keys=True)
EOF
    find "$layout" -exec touch -h -d "@$EPOCH" {} +
    local archive="$OUT/$name-$VERSION.oci.tar"
    tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$EPOCH" \
        -C "$layout" -cf "$archive" .
    local digest
    digest="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["manifests"][0]["digest"])' "$layout/index.json")"
    echo "$digest" >"$OUT/$name-$VERSION.digest"
    log "$name:$VERSION  $digest  $(du -k "$archive" | cut -f1) KiB  ($archive)"
    if [ "$verify" = 1 ]; then
        verify_image "$layout" "$name" "$work/verify"
    fi
    rm -rf "$work"
}

# Unpacks the image and runs its entrypoint (`--version`) from the image's own files
# only, as the user its config names.
verify_image() {
    local layout="$1" name="$2" bundle="$3"
    umoci unpack --image "$layout:$VERSION" "$bundle" >/dev/null
    local user entrypoint
    user="$(python3 -c 'import json,sys; u=json.load(open(sys.argv[1]))["process"]["user"]; print("%d:%d" % (u["uid"], u["gid"]))' "$bundle/config.json")"
    entrypoint="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["process"]["args"][0])' "$bundle/config.json")"
    [ "$user" = "65532:65532" ] || { echo "$name: image user is $user, not 65532:65532" >&2; exit 1; }
    local printed
    printed="$(chroot --userspec="$user" "$bundle/rootfs" "$entrypoint" --version)"
    [ "$printed" = "$name $VERSION" ] || { echo "$name: entrypoint printed '$printed'" >&2; exit 1; }
    log "$name: entrypoint $entrypoint ran from the image as $user: $printed"
}

for name in anchorpipe-ingest anchorpipe-operator; do
    build_image "$name"
done
