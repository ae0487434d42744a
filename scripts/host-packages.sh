#!/usr/bin/env bash
# Install the Debian packages the real-node test tier needs on the host (kubelet, kube-proxy,
# containerd and runc run here; images are built here). Installs only what is missing, so a
# second run does nothing and does not touch the network; `apt-get update` runs only when
# something must be installed. Needs root (the tier itself runs as root).
#
#   scripts/host-packages.sh
set -euo pipefail

packages=(
  containernetworking-plugins  # CNI plugins in /usr/lib/cni: bridge, host-local, portmap, loopback
  iptables                     # kube-proxy (iptables mode), the kubelet's KUBE-* chains, CNI bridge ipMasq and portmap
  conntrack                    # to inspect and flush conntrack entries in tests and teardown (kube-proxy itself uses netlink)
  gcc                          # cgo for runc; the static pause binary
  libc6-dev                    # libc.a for `gcc -static` (pause) and the headers cgo needs
  libseccomp-dev               # runc built with the seccomp build tag (cgo against libseccomp)
  pkg-config                   # how runc's cgo finds libseccomp
  mmdebstrap                   # Debian root filesystems for the images the node runs
  buildah                      # building small images without a daemon
  uidmap                       # newuidmap/newgidmap: buildah depends on it (also rootless mmdebstrap)
)
# No OCI runtime for buildah: its RUN steps use chroot isolation (crun cannot run in this
# host's hybrid cgroup layout); the node uses the runc that scripts/node-bins.sh builds.

if [ "$(id -u)" -ne 0 ]; then
  echo "host-packages: must run as root (it installs Debian packages with apt-get): sudo $0" >&2
  exit 1
fi
command -v apt-get >/dev/null || { echo "host-packages: apt-get not found; this script is for Debian" >&2; exit 1; }

missing=()
for p in "${packages[@]}"; do
  [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)" = installed ] || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "host-packages: all ${#packages[@]} packages are installed" >&2
  exit 0
fi

echo "host-packages: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "host-packages: installed ${missing[*]}" >&2
