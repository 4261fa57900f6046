#!/bin/bash
# PID 1 of a build's sandbox (tasks/system/sandbox.py); "$@" is the command.
# /run/fai, /var/log/fai and /tmp become private: /tmp a tmpfs, into which
# the directories the command needs that lie under the host's /tmp
# (SANDBOX_KEEP, one per line) are bound back. /var/log/fai is bound to
# SANDBOX_FAI_LOGS when that is set, and SANDBOX_TMPFS becomes a tmpfs (an
# image's tree: tasks/stages/diskassembly.py).
set -eu
# The PID namespace's own /proc where one may be mounted (not in a container,
# whose /proc has masked files): else the one the sandbox started with.
mount -t proc sandbox-proc /proc 2> /dev/null || true
mkdir -p /run/fai /run/udev /var/log/fai
mount -t tmpfs -o mode=0755 sandbox-run /run/fai
mkdir /run/fai/.host-tmp
mount --rbind /tmp /run/fai/.host-tmp  # with what is mounted below it (a container's volumes)
mount -t tmpfs -o mode=1777 sandbox-tmp /tmp
printf '%s\n' "$SANDBOX_KEEP" | while IFS= read -r keep; do
    host=/run/fai/.host-tmp/${keep#/tmp/}
    case $keep in
        /tmp/*) if [ -e "$host" ]; then mkdir -p "$keep"; mount --bind "$host" "$keep"; fi ;;
    esac
done
if [ -n "${SANDBOX_FAI_LOGS:-}" ]; then
    mount --bind "$SANDBOX_FAI_LOGS" /var/log/fai
fi
if [ -n "${SANDBOX_TMPFS:-}" ]; then
    mount -t tmpfs -o mode=0755 sandbox-tree "$SANDBOX_TMPFS"
fi
"$@"
