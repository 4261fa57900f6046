#!/bin/bash
# base-upgrade.sh PHASE ROOT [SOURCE...] (tasks/stages/base.py), once debootstrap
# is done, in the sandbox, one phase at a time:
#   upgrade SOURCE...  the release's other suites (updates, security) are added,
#                      the base upgraded from them, and the packages every image
#                      gets (BASE_PACKAGES) installed with apt (debootstrap's
#                      --include cannot configure packages such as
#                      libpam-systemd, which need /proc)
#   share              what all the images install alike (BASE_SHARED, resolved
#                      by tasks/stages/baseshare.py between the two phases) is
#                      installed and marked as installed automatically, as each
#                      image's own apt would mark it (a package an image names,
#                      its own apt marks manual when it installs it)
# apt and dpkg need /proc; policy-rc.d keeps upgraded daemons from starting on
# the build host. The sources and the package lists stay together: a build's
# `apt-get update` (FAI's updatebase) then finds the indexes unchanged unless
# the archive moved on, instead of fetching and decompressing them again. The
# finished image's sources are written by scripts/LAST/10-apt-sources and its
# lists emptied by scripts/LAST/90-clean.
# The mounts end with the sandbox whatever happens, before the tarball is made.
set -eu
phase=$1 root=$2; shift 2
# In the sandbox's user namespace (tasks/system/userns.py): the build's /proc and
# /dev bound with all below them (a container refuses a fresh proc, and a /dev
# whose submounts would be uncovered), /dev/pts among them for apt's terminal log.
mount --rbind /proc "$root/proc"
mount --rbind /dev "$root/dev"
apt_install() {
    DEBIAN_FRONTEND=noninteractive chroot "$root" apt-get -y --no-install-recommends \
        -o Dpkg::Options::=--force-confold install "$@"
}
case $phase in
upgrade)
    # debootstrap copied these two from the build host, modes and all: the host's
    # modes must not reach the images (systemd-resolved keeps resolv.conf as a backup).
    for file in "$root/etc/resolv.conf" "$root/etc/hostname"; do
        if [ -f "$file" ] && [ ! -L "$file" ]; then chmod 0644 "$file"; fi
    done
    printf '%s\n' "$@" > "$root/etc/apt/sources.list"
    printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"
    chmod 755 "$root/usr/sbin/policy-rc.d"
    echo "I: Updating the package lists"
    chroot "$root" apt-get -o Acquire::Languages=none update
    echo "I: Upgrading from the updates and security suites"
    DEBIAN_FRONTEND=noninteractive chroot "$root" apt-get -y -o Dpkg::Options::=--force-confold dist-upgrade
    read -r -a packages <<< "$BASE_PACKAGES"
    if [ ${#packages[@]} -gt 0 ]; then
        echo "I: Installing the packages every image gets"
        apt_install "${packages[@]}"
    fi
    ;;
share)
    read -r -a shared <<< "$BASE_SHARED"
    if [ ${#shared[@]} -gt 0 ]; then
        # Only what this step installs is marked: a package the base already held keeps its mark.
        # shellcheck disable=SC2016  # dpkg-query's format, not the shell's
        mapfile -t new < <(for name in "${shared[@]}"; do
            chroot "$root" dpkg-query --show --showformat='${db:Status-Status}\n' "$name" 2> /dev/null \
                | grep -qx installed || echo "$name"
        done)
        echo "I: Installing what every image installs alike: ${shared[*]}"
        apt_install "${shared[@]}"
        if [ ${#new[@]} -gt 0 ]; then chroot "$root" apt-mark auto "${new[@]}" > /dev/null; fi
    fi
    rm -f "$root/usr/sbin/policy-rc.d"
    ;;
*)
    echo "base-upgrade.sh: no phase $phase (upgrade or share)" >&2
    exit 2
    ;;
esac
