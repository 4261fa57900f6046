#!/bin/bash
# base-upgrade.sh ROOT SOURCE... (tasks/stages/base.py), with BASE_PACKAGES
# and BASE_SELECTIONS (one image's own packages per line) in the environment.
# Run in the sandbox once debootstrap is done: the release's other suites
# (updates, security) are added, the base is upgraded from them, and the
# packages every image gets are installed with apt (debootstrap's --include
# cannot configure packages such as libpam-systemd, which need /proc). apt and
# dpkg need /proc; policy-rc.d keeps upgraded daemons from starting on the
# build host. The sources, the package lists and apt's caches made from
# them stay together: a build's `apt-get update` (FAI's updatebase) then
# finds the indexes unchanged unless the archive moved on, instead of
# fetching and decompressing them again, and its first apt command finds the
# caches valid instead of building them again (apt does when sources.list is
# newer than they are; under qemu-user that takes most of a minute, so FAI's
# hooks/repository.DEBIAN leaves these same sources untouched). The finished
# image's sources are written by scripts/LAST/10-apt-sources and its lists
# emptied by scripts/LAST/90-clean.
# The mounts end with the sandbox whatever happens, before the tarball is made.
set -eu
root=$1; shift
# In the sandbox's user namespace (tasks/system/userns.py): the build's /proc and
# /dev bound with all below them (a container refuses a fresh proc, and a /dev
# whose submounts would be uncovered), /dev/pts among them for apt's terminal log.
mount --rbind /proc "$root/proc"
mount --rbind /dev "$root/dev"
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
apt_install() {
    DEBIAN_FRONTEND=noninteractive chroot "$root" apt-get -y --no-install-recommends \
        -o Dpkg::Options::=--force-confold install "$@"
}
read -r -a packages <<< "$BASE_PACKAGES"
if [ ${#packages[@]} -gt 0 ]; then
    echo "I: Installing the packages every image gets"
    apt_install "${packages[@]}"
fi
# What apt would install for every image's own selection alike (the kernel's
# dependencies) is installed once here, and marked as installed automatically
# as each image's apt would mark it (a package an image names, its own apt
# marks manual when it installs it). Should apt not resolve a selection (a
# package missing from the archive: that image's build fails by itself), the
# base shares nothing more: what it adds must be what every image would have.
shared_dependencies() {
    local selection names count=0 failed=0
    while IFS= read -r selection; do
        read -r -a names <<< "$selection"
        count=$((count + 1))
        if ! chroot "$root" apt-get -s --no-install-recommends install "${names[@]}" > "$root/tmp/selection.$count"; then
            echo "W: apt does not resolve one image's selection ($selection): the base shares no more" >&2
            failed=1
        fi
    done <<< "$BASE_SELECTIONS"
    if [ "$count" -gt 0 ] && [ "$failed" = 0 ]; then
        for ((n = 1; n <= count; n++)); do
            awk '/^Inst / { print $2 }' "$root/tmp/selection.$n" | sort -u
        done | sort | uniq -c | awk -v images="$count" '$1 == images { print $2 }'
    fi
    rm -f "$root"/tmp/selection.*
}
if [ -n "${BASE_SELECTIONS:-}" ]; then
    mapfile -t shared < <(shared_dependencies)
    if [ ${#shared[@]} -gt 0 ]; then
        echo "I: Installing what every image installs alike: ${shared[*]}"
        apt_install "${shared[@]}"
        chroot "$root" apt-mark auto "${shared[@]}" > /dev/null
    fi
fi
rm -f "$root/usr/sbin/policy-rc.d"
