#!/usr/bin/env bash
# Make this host able to build and run optic's image with podman and no registry; idempotent.
#
# Installs podman, buildah, runc and debootstrap with apt when missing (needs root), then makes the
# base image: Debian bookworm minbase with python3, python3-venv and ca-certificates, imported as
# $OPTIC_TEST_BASE_IMAGE (default localhost/optic-base:test). Skipped when that image exists.
# Settings: OPTIC_DEBIAN_MIRROR (default http://deb.debian.org/debian), CONTAINERS_CONF.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$here/containers.conf}"
base_image="${OPTIC_TEST_BASE_IMAGE:-localhost/optic-base:test}"
mirror="${OPTIC_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
suite=bookworm

missing=()
for tool in podman buildah runc debootstrap; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "prepare.sh: missing ${missing[*]}; run as root or: apt-get install -y podman buildah runc debootstrap" >&2
        exit 1
    fi
    echo "prepare.sh: installing podman buildah runc debootstrap (apt)"
    log="$(mktemp)"
    if ! { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q podman buildah runc debootstrap; } \
        > "$log" 2>&1; then
        tail -n 40 "$log" >&2
        exit 1
    fi
    rm -f "$log"
fi

if podman image exists "$base_image"; then
    echo "prepare.sh: $base_image is there (podman rmi it to rebuild)"
    exit 0
fi

rootfs="$(mktemp -d /var/tmp/optic-rootfs.XXXXXX)"
trap 'rm -rf "$rootfs"' EXIT
echo "prepare.sh: debootstrap $suite into $rootfs"
start=$SECONDS
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates "$suite" "$rootfs" "$mirror" \
    > "$rootfs.log" 2>&1 || { tail -n 40 "$rootfs.log" >&2; rm -f "$rootfs.log"; exit 1; }
rm -f "$rootfs.log"
# Smaller image, and nothing of this host's apt state in it.
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
tar -C "$rootfs" -c . | podman import --quiet --change 'CMD ["/bin/bash"]' - "$base_image" >/dev/null
echo "prepare.sh: imported $base_image in $((SECONDS - start)) s"
