# shellcheck shell=bash
# The image's disk, as hooks/partition.DEBIAN laid it out; sourced, not run.
# $LOGDIR/disk_var.sh gives BOOT_DEVICE (the loop device of the whole
# disk), ROOT_PARTITION, ESP_PARTITION and the UUIDs fstab and GRUB use.

. "$LOGDIR/disk_var.sh"

# The build host has no udev: inside the chroot, /dev has neither the
# image's disk nor /dev/disk/by-*, without which grub-probe cannot map / to
# a partition. chroot_disk_devices gives the chroot a small /dev of its own
# with the disk, its partitions and their by-partuuid and by-uuid links;
# it is unmounted when the calling script exits.
chroot_disk_devices() {
    mountpoint -q "$target/dev" && [ -e "$target/dev/disk/by-partuuid" ] && return 0
    local dev=$target/dev part uuid
    mount -t tmpfs -o mode=0755,size=1M image-build-dev "$dev"
    trap 'umount "$target/dev"' EXIT
    cp -a /dev/null /dev/zero /dev/full /dev/random /dev/urandom "$dev/"
    cp -a "$BOOT_DEVICE" "$BOOT_DEVICE"p* "$dev/"
    mkdir -p "$dev/disk/by-uuid" "$dev/disk/by-partuuid"
    for part in "$BOOT_DEVICE"p*; do
        uuid=$(blkid --probe --match-tag PART_ENTRY_UUID --output value "$part" || true)
        [ -z "$uuid" ] || ln -s "../../${part##*/}" "$dev/disk/by-partuuid/$uuid"
        uuid=$(blkid --probe --match-tag UUID --output value "$part" || true)
        [ -z "$uuid" ] || ln -s "../../${part##*/}" "$dev/disk/by-uuid/$uuid"
    done
}
