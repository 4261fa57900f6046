# shellcheck shell=bash
# FAI's logs stay on the build host (the builder keeps them beside the image);
# none of them belongs in the image.
skiptask savelog
