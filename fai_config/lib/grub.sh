# shellcheck shell=bash
# GRUB for the image's disk; sourced by scripts/DEBIAN/40-grub, not run. Needs lib/disk.sh.
#
# The result is what grub-install gives on a running instance, where the
# grub-cloud packages' triggers (or grub-efi's postinst) run it again on
# every GRUB or shim update: the ESP is mounted at /boot/efi there. Here
# there is no disk device to install to: the image is a directory and its
# disk a file (hooks/partition.DEBIAN). So what grub-install would write into
# the tree is written here with the image's own GRUB, the ESP (a FAT image
# of its own) is filled with mtools, and the builder writes the BIOS boot
# code into the disk as bytes (tasks/stages/diskassembly.py).

export MTOOLS_SKIP_CHECK=1

# BIOS boot: what `grub-install --target=i386-pc --modules="ext2 part_gpt"` puts
# into /boot/grub for a GPT disk whose root is partition 1, byte for byte:
# the modules and their lists, boot.img, and core.img (which finds
# /boot/grub on the partition it was loaded from), GRUB's translations and
# font, and an empty environment block.
install_grub_bios() {
    local lib=$target/usr/lib/grub/i386-pc dir=$target/boot/grub/i386-pc list mo lang
    mkdir -p "$dir" "$target/boot/grub/locale" "$target/boot/grub/fonts"
    install --mode=0644 "$lib"/*.mod "$lib"/efiemu*.o "$lib/modinfo.sh" "$lib/boot.img" "$dir/"
    for list in command crypto fs moddep partmap parttool terminal video; do
        [ ! -f "$lib/$list.lst" ] || install --mode=0644 "$lib/$list.lst" "$dir/"
    done
    $ROOTCMD grub-mkimage --format=i386-pc --output=/boot/grub/i386-pc/core.img \
        --prefix='(,gpt1)/boot/grub' ext2 part_gpt biosdisk
    for mo in "$target"/usr/share/locale/*/LC_MESSAGES/grub.mo; do
        lang=${mo%/LC_MESSAGES/grub.mo}
        cp "$mo" "$target/boot/grub/locale/${lang##*/}.mo"
    done
    cp "$target/usr/share/grub/unicode.pf2" "$target/boot/grub/fonts/"
    [ -f "$target/boot/grub/grubenv" ] || $ROOTCMD grub-editenv /boot/grub/grubenv create
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
    mmd -i "$ESP_IMAGE" ::/EFI ::/EFI/debian ::/EFI/BOOT
    mcopy -i "$ESP_IMAGE" "$shim/shim$efi.efi.signed" "::/EFI/debian/shim$efi.efi"
    mcopy -i "$ESP_IMAGE" "$grub/grub$efi.efi.signed" "::/EFI/debian/grub$efi.efi"
    mcopy -i "$ESP_IMAGE" "$shim/mm$efi.efi.signed" "::/EFI/debian/mm$efi.efi"
    mcopy -i "$ESP_IMAGE" "$shim/fb$efi.efi.signed" "::/EFI/debian/fb$efi.efi"
    mcopy -i "$ESP_IMAGE" "$shim/BOOT$EFI.CSV" "::/EFI/debian/BOOT$EFI.CSV"
    mcopy -i "$ESP_IMAGE" "$stub" ::/EFI/debian/grub.cfg
    mcopy -i "$ESP_IMAGE" "$shim/shim$efi.efi.signed" "::/EFI/BOOT/BOOT$EFI.EFI"
    mcopy -i "$ESP_IMAGE" "$grub/grub$efi.efi.signed" "::/EFI/BOOT/grub$efi.efi"
    mcopy -i "$ESP_IMAGE" "$shim/mm$efi.efi.signed" "::/EFI/BOOT/mm$efi.efi"
    rm -f "$stub"
    # Modules for grub.cfg's insmod lines when Secure Boot is off.
    mkdir -p "$target/boot/grub/$platform"
    cp -a "$target/usr/lib/grub/$platform/." "$target/boot/grub/$platform/"
}

# grub.cfg, one for BIOS and UEFI: the kernel finds its root by PARTUUID
# (files/etc/default/grub.d/10_cloud.cfg). update-grub asks grub-probe about
# the device / is on; the tree is on none, so a stand-in answers for the disk
# it will be: ext4 (GRUB's ext2) with the build's UUID in GPT partition 1.
write_grub_cfg() {
    local probe=/tmp/image-grub-probe   # /tmp is the build's own (tasks/system/sandbox.py)
    cat > "$probe" <<PROBE
#!/bin/sh
target=
while [ \$# -gt 0 ]; do
    case \$1 in
        --target=*) target=\${1#--target=} ;;
        -t|--target) target=\$2; shift ;;
    esac
    shift
done
case \$target in
    device) echo /dev/image-root ;;
    disk) echo /dev/image-disk ;;
    drive) echo '(hd0,gpt1)' ;;
    fs) echo ext2 ;;
    fs_uuid) echo $FSUUID_ROOT ;;
    partuuid) echo $PARTUUID_ROOT ;;
    partmap) echo gpt ;;
    gpt_parttype) echo $IMAGE_ROOT_PARTITION_TYPE ;;
    abstraction|compatibility_hint|hints_string|cryptodisk_uuid|msdos_parttype) ;;
    *) echo "grub-probe (the image build's stand-in): no answer for --target=\$target" >&2; exit 1 ;;
esac
PROBE
    chmod 0755 "$probe"
    mount --bind "$probe" "$target/usr/sbin/grub-probe"
    # GRUB's 10_linux boots by PARTUUID only when /dev/disk/by-partuuid names
    # it: a small tmpfs there does, over the build's /dev (the host's, bound).
    mkdir -p "$target/dev/disk"
    mount -t tmpfs -o mode=0755,size=64k image-build-disk "$target/dev/disk"
    mkdir "$target/dev/disk/by-partuuid" "$target/dev/disk/by-uuid"
    ln -s ../../null "$target/dev/disk/by-partuuid/$PARTUUID_ROOT"
    ln -s ../../null "$target/dev/disk/by-uuid/$FSUUID_ROOT"
    local status=0
    $ROOTCMD update-grub || status=$?
    umount "$target/dev/disk" "$target/usr/sbin/grub-probe"
    rm -f "$probe"
    [ "$status" = 0 ] || return "$status"
    local cfg=$target/boot/grub/grub.cfg
    if grep -q 'root=/dev/' "$cfg" || ! grep -q "root=PARTUUID=$PARTUUID_ROOT" "$cfg"; then
        echo "ERROR: $cfg does not find the root file system by PARTUUID $PARTUUID_ROOT:" >&2
        grep -n 'linux\s' "$cfg" >&2
        return 1
    fi
}
