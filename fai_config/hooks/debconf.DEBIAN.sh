# shellcheck shell=bash
# Nothing is preseeded: every package keeps its default answers, as in
# Debian's own images. (Without a debconf/ directory FAI's task would
# count as failed.)
skiptask debconf
