# shellcheck shell=bash
# The build host's programs standing in for a foreign image's while a step of
# the build runs; sourced by hooks/instsoft.DEBIAN, hooks/configure.DEBIAN and
# scripts/DEBIAN/20-initramfs, not run.
#
# A foreign image (arm64 on an amd64 host) runs under qemu-user, where every
# program the build starts in it pays for its translation (about 0.1
# CPU-second a start) and then runs several times slower than natively. A
# program that only reads and writes data can run as the host's own copy:
# bind-mounted, read-only, over the image's, with the host's libraries beside.
# Nothing may appear at the image's top level (mkinitramfs links every /lib*
# it finds into the initramfs), where ldconfig looks, or where an initramfs
# hook looks for libraries (trixie's udev hook copies /usr/lib/*/libkmod.so.*,
# whatever its architecture), so the host's loader goes to $STAND_IN_LOADER and
# its libraries to $STAND_IN_LIBS, and each copy is told so by patchelf (its
# ELF interpreter, and a DT_RPATH, which the loader follows for every library
# the program loads). Where the host's own version is not the image's, the
# image's own package built for the host (its twin, tasks/stages/twins.py)
# stands in, with the image's versions of its libraries beside it in
# $STAND_IN_TWIN. What was mounted and made is listed in $STAND_IN_STATE,
# so that a later step can undo it (stand_ins_end); the build's mount
# namespace ends the mounts in any case.

HOST_LIBS=/usr/lib/x86_64-linux-gnu
HOST_LOADER=/lib64/ld-linux-x86-64.so.2
STAND_IN_LIBS=/usr/libexec/native-libs
STAND_IN_LOADER=/usr/libexec/ld-native.so
STAND_IN_TWIN=/usr/libexec/native-twin
STAND_IN_STATE=/tmp/image-stand-ins # /tmp is the build's own (tasks/system/sandbox.py)

# True when host programs can stand in for the image's (a foreign image, a
# layout this knows); the host's libraries and loader are then in place.
stand_ins_begin() {
    if [ "$(dpkg --print-architecture)" != amd64 ] || [ "$($ROOTCMD dpkg --print-architecture)" = amd64 ] ||
        [ ! -e "$HOST_LOADER" ] || [ -e "$target$STAND_IN_LIBS" ] || [ -e "$target$STAND_IN_LOADER" ] ||
        [ -e "$target$STAND_IN_TWIN" ] || [ -e "$STAND_IN_STATE" ]; then
        return 1
    fi
    if ! command -v patchelf > /dev/null; then
        echo "stand-ins: patchelf is not installed (tools/setup-host): everything stays emulated"
        return 1
    fi
    mkdir -p "$STAND_IN_STATE/copies"
    : > "$STAND_IN_STATE/mounted"
    : > "$STAND_IN_STATE/created"
    _stand_in_bind "$HOST_LIBS" "$STAND_IN_LIBS"
    _stand_in_bind "$HOST_LOADER" "$STAND_IN_LOADER"
    # The host's C library, run in the image through the host's loader: every copy will run.
    if ! $ROOTCMD "$STAND_IN_LOADER" "$STAND_IN_LIBS/libc.so.6" > /dev/null; then
        echo "stand-ins: the host's loader does not run in the image: everything stays emulated"
        stand_ins_end
        return 1
    fi
}

# stand_in HOST_PATH [IMAGE_PATH]: the host's program stands in at IMAGE_PATH
# (default: the same path). A path the image lacks is made for it and removed
# afterwards; where the image has another program there, it stays emulated.
stand_in() {
    local source=$1 inside=${2:-$1}
    _stand_in_may_go "$source" "$inside" || return 0
    _stand_in_copy "$source" "$inside" "$STAND_IN_LOADER" "$STAND_IN_LIBS"
}

# stand_ins_twin PACKAGE...: the twin of the image's versions of those of
# PACKAGE... it has (and of the libraries they load) is in place at
# $STAND_IN_TWIN; false, saying why, when there is none.
stand_ins_twin() {
    local line root
    [ -n "${IMAGE_TWINS:-}" ] || return 1
    line=$(PYTHONPATH="$IMAGE_TOOLS" "$IMAGE_PYTHON" -m tasks.stages.twins root "$@") || return 1
    read -r root TWIN_LOADER TWIN_LIBS <<< "$line"
    _stand_in_bind "$root" "$STAND_IN_TWIN"
}

# stand_in_twin PATH [IMAGE_PATH]: the twin's program PATH stands in at
# IMAGE_PATH (default: PATH), as stand_in does; nothing happens when the twin
# has no PATH. A release whose packages still install
# into /bin and /lib (bookworm: the image merges them into /usr) has PATH
# without its /usr.
stand_in_twin() {
    local source=$target$STAND_IN_TWIN$1 inside=${2:-$1} dirs=() dir
    _stand_in_may_go "$1" "$inside" || return 0
    [ -e "$source" ] || source=$target$STAND_IN_TWIN${1#/usr}
    IFS=: read -ra dirs <<< "$TWIN_LIBS"
    local rpath=""
    for dir in "${dirs[@]}"; do rpath=${rpath:+$rpath:}$STAND_IN_TWIN/$dir; done
    _stand_in_copy "$source" "$inside" "$STAND_IN_TWIN/$TWIN_LOADER" "$rpath"
}

# PATH IMAGE_PATH: true when a program stands in at IMAGE_PATH for the image's
# PATH: the same path, or one the image lacks (not even as a link, which a bind
# mount would follow to another program, or through which the mount point
# would be made elsewhere).
_stand_in_may_go() {
    [ "$2" = "$1" ] || { [ ! -e "$target$2" ] && [ ! -L "$target$2" ]; }
}

_stand_in_copy() {  # SOURCE IMAGE_PATH LOADER RPATH: a copy of SOURCE, its loader and libraries at LOADER and RPATH in the image, bound at IMAGE_PATH
    local source=$1 inside=$2 copy
    if [ ! -x "$source" ]; then
        return 0
    fi
    copy=$STAND_IN_STATE/copies/${inside##*/}
    cp "$source" "$copy"
    if ! patchelf --set-interpreter "$3" --force-rpath --set-rpath "$4" "$copy"; then
        echo "stand-ins: patchelf cannot rewrite $source: it stays emulated"
        return 0
    fi
    _stand_in_bind "$copy" "$inside"
}

# stand_in_same_version PACKAGE PATH: stand in only where the host has the very
# version of PACKAGE that the image has (a program whose output goes into the
# image, or whose behaviour could change between versions).
stand_in_same_version() {
    _stand_in_if_same "$1" "$2" _whole_version
}

# stand_in_same_series PACKAGE PATH: stand in where the host's version of
# PACKAGE is of the image's upstream series (1.21.22 for 1.21.23, not 1.22.1):
# a program whose output does not depend on its version, and whose options do
# not change within a series.
stand_in_same_series() {
    _stand_in_if_same "$1" "$2" _version_series
}

_stand_in_if_same() {  # PACKAGE PATH FUNCTION: stand in when FUNCTION makes the same of both versions
    local host image
    host=$(_package_version "$1")
    # shellcheck disable=SC2086 # ROOTCMD is a command and its arguments
    image=$(_package_version "$1" $ROOTCMD)
    if [ -n "$host" ] && [ "$("$3" "$host")" = "$("$3" "$image")" ]; then
        stand_in "$2"
    fi
}

_whole_version() { echo "$1"; }
_version_series() { echo "${1%.*}"; }

# Everything unmounted and removed, in the reverse order.
stand_ins_end() {
    [ -d "$STAND_IN_STATE" ] || return 0
    local inside
    tac "$STAND_IN_STATE/mounted" | while read -r inside; do umount "$inside"; done
    tac "$STAND_IN_STATE/created" | while read -r inside; do rm -d "$inside" 2>/dev/null || rm -f "$inside"; done
    rm -rf "$STAND_IN_STATE"
}

_stand_in_bind() {  # SOURCE IMAGE_PATH: read-only, so nothing writes through to the host
    local source=$1 inside=$target$2
    if [ ! -e "$inside" ]; then
        if [ -d "$source" ]; then mkdir "$inside"; else : > "$inside"; fi
        echo "$inside" >> "$STAND_IN_STATE/created"
    fi
    mount --bind "$source" "$inside"
    echo "$inside" >> "$STAND_IN_STATE/mounted"
    mount -o remount,bind,ro "$inside"
}

_package_version() {  # PACKAGE [COMMAND...]: its version there (no command: the host's)
    local package=$1
    shift
    # shellcheck disable=SC2016 # dpkg-query's own ${Version}, not the shell's
    "$@" dpkg-query -W -f '${Version}' "$package" 2>/dev/null || true
}
