#!/bin/bash
# install.sh ROOT INPUTS SOURCE... (tasks/builder/image.py), in the build's
# sandbox once debootstrap is done: ROOT becomes the builder image's tree.
#  - the release's other suites are added and ROOT upgraded from them, then
#    the packages of every role of tools/packages installed (BUILDER_PACKAGES);
#  - the project's Python environment, /opt/images/venv, gets the packages
#    INPUTS/requirements.txt lists (the code runs from the checkout, as on a
#    host);
#  - the npm tools are installed from INPUTS/npm (tools/npm: its lock) and
#    their commands linked into the environment's bin;
#  - what only installed and built them (BUILDER_PURGE: npm, a C++ compiler,
#    Node's headers) is purged, and
#    apt's debs and the installers' caches removed (image.py removes the lists).
# pip and npm reach their registries directly (never through the package
# cache's proxy), trusting BUILDER_HOST_CA where the host names one: a file
# bound in for the while, not kept. The mounts end with the sandbox.
set -eu
root=$1 inputs=$2; shift 2
mount --rbind /proc "$root/proc"
mount --rbind /dev "$root/dev"
in_root() { DEBIAN_FRONTEND=noninteractive chroot "$root" "$@"; }
# The tree is archived, then thrown away: dpkg need not sync each file it writes.
unsafe_io=(-o Dpkg::Options::=--force-unsafe-io)
direct() { in_root env -u http_proxy -u HTTP_PROXY "$@"; }

printf '%s\n' "$@" > "$root/etc/apt/sources.list"
printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"  # no daemon starts here
chmod 755 "$root/usr/sbin/policy-rc.d"
echo "I: Updating the package lists"
in_root apt-get -o Acquire::Languages=none update
echo "I: Upgrading from the updates and security suites"
in_root apt-get -y "${unsafe_io[@]}" -o Dpkg::Options::=--force-confold dist-upgrade
read -r -a packages <<< "$BUILDER_PACKAGES"
echo "I: Installing ${packages[*]}"
in_root apt-get -y "${unsafe_io[@]}" --no-install-recommends -o Dpkg::Options::=--force-confold install \
    "${packages[@]}"

ca=()
if [ -n "${BUILDER_HOST_CA:-}" ]; then
    touch "$root/run/host-ca.crt"
    mount --bind "$BUILDER_HOST_CA" "$root/run/host-ca.crt"
    ca=(PIP_CERT=/run/host-ca.crt npm_config_cafile=/run/host-ca.crt NODE_EXTRA_CA_CERTS=/run/host-ca.crt)
fi
echo "I: Making the Python environment"
mkdir -p "$root/opt/images"
cp "$inputs/requirements.txt" "$root/opt/images/requirements.txt"
in_root python3 -m venv /opt/images/venv
direct "${ca[@]}" /opt/images/venv/bin/pip install --no-cache-dir --quiet --requirement /opt/images/requirements.txt

echo "I: Installing the npm tools"
cp -r "$inputs/npm" "$root/opt/images/npm"
direct "${ca[@]}" HOME=/root npm_config_nodedir=/usr sh -c \
    'cd /opt/images/npm && npm ci --no-fund --no-audit --loglevel=error --cache /tmp/npm-cache'
for tool in gitlab-ci-local azurite-blob; do
    ln -s "../../npm/node_modules/.bin/$tool" "$root/opt/images/venv/bin/$tool"
done

echo "I: Removing what only installed and built them"
read -r -a build_only <<< "$BUILDER_PURGE"
in_root apt-get -y "${unsafe_io[@]}" purge --autoremove "${build_only[@]}"
rm -f "$root/usr/sbin/policy-rc.d"
in_root apt-get clean
rm -rf "$root/tmp/npm-cache" "$root/root/.npm" "$root/root/.cache"
if [ ${#ca[@]} -gt 0 ]; then umount "$root/run/host-ca.crt" && rm "$root/run/host-ca.crt"; fi
