# Helpers for the boot loader scripts and image checks; sourced, not run.
#
# The build host has no udev: inside the chroot, /dev has neither the image's
# disk nor /dev/disk/by-uuid, and without the latter grub-mkconfig writes
# root=/dev/loopNpM, which no booted machine has. disk_devices gives the
# chroot a small /dev of its own with just the disk, its partitions and their
# by-uuid links; grub-mkconfig then writes root=UUID=...

. "$LOGDIR/disk_var.sh"     # BOOT_DEVICE (the whole disk), ROOT_PARTITION (UUID=... with fstabkey:uuid)

ESP_TYPE=c12a7328-f81f-11d2-ba4b-00a0c93ec93b

disk_devices() {
    mountpoint -q "$target/dev" && [ -e "$target/dev/disk/by-uuid" ] && return 0
    local dev=$target/dev part uuid
    mount -t tmpfs -o mode=0755,size=1M image-build-dev "$dev"
    trap 'umount "$target/dev"' EXIT
    cp -a /dev/null /dev/zero /dev/full /dev/random /dev/urandom "$dev/"
    cp -a "$BOOT_DEVICE" "$BOOT_DEVICE"p* "$dev/"
    mkdir -p "$dev/disk/by-uuid"
    for part in "$BOOT_DEVICE"p*; do
        uuid=$(blkid --match-tag UUID --output value "$part" || true)
        if [ -n "$uuid" ]; then
            ln -s "../../${part##*/}" "$dev/disk/by-uuid/$uuid"
        fi
    done
}

# grub.cfg for whichever GRUB boots (BIOS or UEFI): same file, same checks.
write_grub_cfg() {
    disk_devices
    fcopy -M /etc/default/grub.d/50-image.cfg
    $ROOTCMD update-grub
    local cfg=$target/boot/grub/grub.cfg
    if grep -q 'root=/dev/' "$cfg" || ! grep -q 'root=UUID=' "$cfg"; then
        echo "ERROR: $cfg does not find the root file system by UUID:" >&2
        grep -n 'linux\s' "$cfg" >&2
        return 1
    fi
}

root_uuid() {
    case $ROOT_PARTITION in
        UUID=*) echo "${ROOT_PARTITION#UUID=}" ;;
        *) blkid --match-tag UUID --output value "$ROOT_PARTITION" ;;
    esac
}

# The EFI system partition of the image's disk, found by its GPT type.
esp_partition() {
    local part
    for part in "$BOOT_DEVICE"p*; do
        if [ "$(blkid --probe --match-tag PART_ENTRY_TYPE --output value "$part")" = "$ESP_TYPE" ]; then
            echo "$part"
            return 0
        fi
    done
    return 1
}
