"""The builder image: every tool the project runs, in one OCI image.

Made here from Debian packages, as the bases are (debootstrap, then apt, in
the build's own user namespace), with the project's Python environment and
its npm tools; no Docker daemon and no registry. Its name is the digest of
what goes into it (inputs.py), so it is made again only when one of those
changes. CI jobs run in it (tasks/ci.py), and tools/in-builder runs any
command in it on a host that has only podman.

    inputs.py   what the image is made from, and the name it gets
    image.py    the tree, made and archived (doit builder)
    install.sh  what runs in the tree: packages, Python environment, npm tools
    oci.py      the tree's tarball as an OCI image archive (podman load, skopeo copy)
"""
