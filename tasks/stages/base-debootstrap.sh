#!/bin/bash
# base-debootstrap.sh ROOT DEBOOTSTRAP_COMMAND... (tasks/stages/base.py): debootstrap
# in the build's user namespace (tasks/system/userns.py), where it may neither make
# device nodes nor, inside a container, mount a fresh /proc. /proc and /sys are
# bound into ROOT first, with all below them (debootstrap then leaves them be), and
# container=lxc has debootstrap bind the device nodes it cannot make. All of it
# ends with the sandbox, before the tarball is made.
set -eu
root=$1; shift
mkdir -p "$root/proc" "$root/sys"
mount --rbind /proc "$root/proc"
mount --rbind /sys "$root/sys"
export container=lxc
exec "$@"
