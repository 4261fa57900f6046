#!/bin/bash
# base-upgrade.sh ROOT SOURCE... (tasks/stages/base.py), with BASE_PACKAGES
# in the environment.
# Run in the sandbox once debootstrap is done: the release's other suites
# (updates, security) are added, the base is upgraded from them, and the
# packages every image gets are installed with apt (debootstrap's --include
# cannot configure packages such as libpam-systemd, which need /proc). apt and
# dpkg need /proc; policy-rc.d keeps upgraded daemons from starting on the
# build host. The sources debootstrap wrote are put back afterwards: FAI's
# hooks/repository.DEBIAN writes the build's own. The package lists and
# apt's cache of them stay: a build's `apt-get update` (FAI's updatebase)
# then finds the indexes unchanged unless the archive moved on, instead of
# fetching and decompressing them again (under qemu-user too, for a foreign
# base); the finished image's lists are emptied by scripts/LAST/90-clean.
# The mounts end with the sandbox whatever happens, before the tarball is made.
set -eu
root=$1; shift
mount -t proc proc "$root/proc"
mount -t devpts -o newinstance,ptmxmode=0666 devpts "$root/dev/pts"  # apt's terminal log
cp "$root/etc/apt/sources.list" "$root/etc/apt/sources.list.debootstrap"
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
    DEBIAN_FRONTEND=noninteractive chroot "$root" apt-get -y --no-install-recommends \
        -o Dpkg::Options::=--force-confold install "${packages[@]}"
fi
rm -f "$root/usr/sbin/policy-rc.d"
mv "$root/etc/apt/sources.list.debootstrap" "$root/etc/apt/sources.list"
umount "$root/dev/pts" "$root/proc"
