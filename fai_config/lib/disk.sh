# shellcheck shell=bash
# The image's disk, as hooks/partition.DEBIAN laid it out; sourced, not run.
# $LOGDIR/disk_var.sh gives DISK_IMAGE (the disk image file, its partition
# table written, its partitions filled by the builder once FAI is done),
# ESP_IMAGE (the ESP's FAT image) and the UUIDs fstab and GRUB use.

. "$LOGDIR/disk_var.sh"
# The builder's pinned tools (mtools, sfdisk) come first (tasks/system/toolstree.py).
PATH=$IMAGE_TOOLS_BIN:$PATH
