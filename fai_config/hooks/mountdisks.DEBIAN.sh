# shellcheck shell=bash
# FAI installs into a plain directory (hooks/partition.DEBIAN): nothing is mounted.
skiptask mountdisks
