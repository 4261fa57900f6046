# shellcheck shell=bash
# GRUB for the image's disk; sourced by scripts/DEBIAN/40-grub, not run. Needs lib/disk.sh.
#
# The result is what grub-install gives on a running instance, where the
# grub-cloud packages' triggers (or grub-efi's postinst) run it again on
# every GRUB or shim update: the ESP is mounted at /boot/efi there. Here
# the build host may lack vfat, so the ESP is filled with mtools.

export MTOOLS_SKIP_CHECK=1

# BIOS boot: core.img in the BIOS boot partition, modules in /boot/grub/i386-pc.
install_grub_bios() {
    chroot_disk_devices
    $ROOTCMD grub-install --target=i386-pc --boot-directory=/boot --modules="ext2 part_gpt" "$BOOT_DEVICE"
}

# UEFI boot through shim and Debian's signed GRUB (so Secure Boot works):
# EFI/debian/ as grub-install --uefi-secure-boot lays it out, and the
# removable-media path EFI/BOOT/ that a firmware without boot entries
# tries. No fallback (fb*.efi) in EFI/BOOT: shim would run it and reboot.
install_grub_efi() {
    local efi=$1 platform=$2   # x64 x86_64-efi | aa64 arm64-efi
    local EFI=${efi^^} shim=$target/usr/lib/shim grub=$target/usr/lib/grub/$platform-signed
    local file
    for file in "$shim/shim$efi.efi.signed" "$shim/mm$efi.efi.signed" "$shim/fb$efi.efi.signed" \
                "$shim/BOOT$EFI.CSV" "$grub/grub$efi.efi.signed"; do
        [ -f "$file" ] || { echo "ERROR: $file is missing" >&2; return 1; }
    done
    # The signed GRUB reads EFI/debian/grub.cfg, which hands over to the
    # grub.cfg of the root file system.
    local stub
    stub=$(mktemp)
    printf "search.fs_uuid %s root hd0,gpt1\nset prefix=(\$root)'/boot/grub'\nconfigfile \$prefix/grub.cfg\n" \
        "$FSUUID_ROOT" > "$stub"
    mmd -i "$ESP_PARTITION" ::/EFI ::/EFI/debian ::/EFI/BOOT
    mcopy -i "$ESP_PARTITION" "$shim/shim$efi.efi.signed" "::/EFI/debian/shim$efi.efi"
    mcopy -i "$ESP_PARTITION" "$grub/grub$efi.efi.signed" "::/EFI/debian/grub$efi.efi"
    mcopy -i "$ESP_PARTITION" "$shim/mm$efi.efi.signed" "::/EFI/debian/mm$efi.efi"
    mcopy -i "$ESP_PARTITION" "$shim/fb$efi.efi.signed" "::/EFI/debian/fb$efi.efi"
    mcopy -i "$ESP_PARTITION" "$shim/BOOT$EFI.CSV" "::/EFI/debian/BOOT$EFI.CSV"
    mcopy -i "$ESP_PARTITION" "$stub" ::/EFI/debian/grub.cfg
    mcopy -i "$ESP_PARTITION" "$shim/shim$efi.efi.signed" "::/EFI/BOOT/BOOT$EFI.EFI"
    mcopy -i "$ESP_PARTITION" "$grub/grub$efi.efi.signed" "::/EFI/BOOT/grub$efi.efi"
    mcopy -i "$ESP_PARTITION" "$shim/mm$efi.efi.signed" "::/EFI/BOOT/mm$efi.efi"
    rm -f "$stub"
    # Modules for grub.cfg's insmod lines when Secure Boot is off.
    mkdir -p "$target/boot/grub/$platform"
    cp -a "$target/usr/lib/grub/$platform/." "$target/boot/grub/$platform/"
}

# grub.cfg, one for BIOS and UEFI: the kernel finds its root by PARTUUID
# (files/etc/default/grub.d/10_cloud.cfg).
write_grub_cfg() {
    chroot_disk_devices
    $ROOTCMD update-grub
    local cfg=$target/boot/grub/grub.cfg
    if grep -q 'root=/dev/' "$cfg" || ! grep -q "root=PARTUUID=$PARTUUID_ROOT" "$cfg"; then
        echo "ERROR: $cfg does not find the root file system by PARTUUID $PARTUUID_ROOT:" >&2
        grep -n 'linux\s' "$cfg" >&2
        return 1
    fi
}
