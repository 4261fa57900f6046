#!/bin/bash
# PID 1 of a build's sandbox (tasks/system/sandbox.py); "$@" is the command.
# /run/fai, /var/log/fai and /tmp become private: /tmp a tmpfs, into which
# the directories the command needs that lie under the host's /tmp
# (SANDBOX_KEEP, one per line) are bound back. /var/log/fai is bound to
# SANDBOX_FAI_LOGS when that is set.
set -eu
mkdir -p /run/fai /run/udev /var/log/fai
mount -t tmpfs -o mode=0755 sandbox-run /run/fai
mkdir /run/fai/.host-tmp
mount --bind /tmp /run/fai/.host-tmp
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
"$@"
