#!/usr/bin/env bash
# Make a local base image for the Dockerfile where no registry image can be pulled (CI, this
# project's machines): a minimal Debian with python3 + venv made by debootstrap, imported into
# podman. Installs podman, runc and debootstrap from the Debian packages if missing. Idempotent:
# an existing image is kept. Prints the image name on stdout (everything else goes to stderr).
#
# Usage: bash scripts/container-base.sh [IMAGE]   (default localhost/idle-supervisor-base:bookworm)
set -euo pipefail
IMAGE="${1:-localhost/idle-supervisor-base:bookworm}"
SUITE=bookworm   # Debian 12: python3 is 3.11, the version the product is tested on
log() { echo "container-base: $*" >&2; }

need=()
for tool in podman runc debootstrap; do command -v "$tool" >/dev/null || need+=("$tool"); done
if [ "${#need[@]}" -gt 0 ]; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    log "installing ${need[*]}"
    $SUDO apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq podman runc debootstrap >&2
fi

if podman image exists "$IMAGE"; then
    log "$IMAGE already there"
    echo "$IMAGE"
    exit 0
fi

root=$(mktemp -d /tmp/idle-supervisor-rootfs-XXXXXX)
trap 'rm -rf "$root"' EXIT
# The mirror apt already uses on this machine, so no host is named here.
mirror=$(apt-get indextargets --format '$(REPO_URI)' 2>/dev/null | grep -m1 -E '^https?://' || true)
log "debootstrap $SUITE into $root${mirror:+ from $mirror}"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    "$SUITE" "$root" ${mirror:+"$mirror"} >&2
tar -C "$root" -c . | podman import - "$IMAGE" >&2
log "imported $IMAGE"
echo "$IMAGE"
