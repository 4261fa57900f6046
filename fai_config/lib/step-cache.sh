# shellcheck shell=bash
# The cell's step cache (tasks/stages/stepcache.py), run with the builder's
# Python; sourced by hooks/instsoft.DEBIAN, hooks/configure.DEBIAN and
# scripts/DEBIAN/20-initramfs, not run.
#   step_cache begin STEP [INPUT...]   prints restored, missing or off
#   step_cache save STEP
step_cache() {
    PYTHONPATH="$IMAGE_TOOLS" "$IMAGE_PYTHON" -m tasks.stages.stepcache "$@"
}
