#!/usr/bin/env bash
# Provide the binaries of a real Kubernetes node for the real-node test tier, in ONE folder:
#   kubelet, kube-proxy            (scripts/k8s-bins.sh, same Kubernetes version as the control plane)
#   containerd, ctr, containerd-shim-runc-v2
#   runc                           (with seccomp: cgo against Debian's libseccomp)
#   coredns                        (a slim build: only the plugins a cluster DNS needs)
#   pause                          (static, from build/pause/linux/pause.c of k8s.io/kubernetes)
#   versions                       (KEY=VALUE lines: what the folder holds, e.g. PAUSE_VERSION)
# All are built from the Go module proxy, once per set of versions, into a cache outside the
# repo. The CNI plugins are Debian's (/usr/lib/cni, scripts/host-packages.sh): only checked here.
# Prints the folder on its last line.
#
#   scripts/node-bins.sh
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-1.37.2}"
CONTAINERD_VERSION="${CONTAINERD_VERSION:-2.4.2}"
RUNC_VERSION="${RUNC_VERSION:-1.5.3}"
COREDNS_VERSION="${COREDNS_VERSION:-1.15.0}"
CNI_DIR="${CNI_DIR:-/usr/lib/cni}"
CACHE_ROOT="${ALPACA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/alpaca-operator}"

# CoreDNS plugins compiled in (directory names under plugin/ of the coredns module). The stock
# cluster Corefile uses all of these; `prometheus` is the metrics plugin's directive.
# `bind`: the node tier's CoreDNS answers on the node's address only.
COREDNS_PLUGINS=(kubernetes forward errors health ready cache loop reload loadbalance log hosts metrics bind)
CONTAINERD_TAGS="no_btrfs no_devmapper no_zfs urfave_cli_no_docs"
RUNC_TAGS="seccomp urfave_cli_no_docs"
CNI_PLUGINS=(bridge host-local portmap loopback)
BINS=(kubelet kube-proxy containerd ctr containerd-shim-runc-v2 runc coredns pause)
# The folder is named by the versions and by a hash of what else shapes the binaries (CoreDNS's
# plugins, the build tags): changing either builds a new folder.
RECIPE="$(printf '%s|' "${COREDNS_PLUGINS[@]}" "$CONTAINERD_TAGS" "$RUNC_TAGS" | sha256sum | cut -c1-8)"
OUT="$CACHE_ROOT/node/k8s$K8S_VERSION-containerd$CONTAINERD_VERSION-runc$RUNC_VERSION-coredns$COREDNS_VERSION-$RECIPE"

scripts="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

missing_cni=()
for p in "${CNI_PLUGINS[@]}"; do [ -x "$CNI_DIR/$p" ] || missing_cni+=("$p"); done
if [ ${#missing_cni[@]} -gt 0 ]; then
  echo "node-bins: CNI plugins missing in $CNI_DIR: ${missing_cni[*]}; run scripts/host-packages.sh (as root)" >&2
  exit 1
fi

if [ -f "$OUT/.complete" ]; then
  echo "$OUT"
  exit 0
fi

# --- Cold path. One build at a time per folder; finished binaries are kept in $stage, so an
# interrupted run resumes where it stopped; $OUT appears (by mv) only once everything is there.
mkdir -p "$CACHE_ROOT/node"
exec 9>"$OUT.lock"
if ! flock -n 9; then
  echo "node-bins: another node-bins.sh is building $OUT; waiting" >&2
  flock 9
fi
if [ -f "$OUT/.complete" ]; then
  echo "$OUT"
  exit 0
fi
stage="$OUT.partial"
mkdir -p "$stage"

command -v go >/dev/null || { echo "node-bins: Go is needed to build the node binaries" >&2; exit 1; }
command -v gcc >/dev/null || { echo "node-bins: gcc is needed (runc, pause); run scripts/host-packages.sh (as root)" >&2; exit 1; }
if [ ! -x "$stage/runc" ] && ! pkg-config --exists libseccomp 2>/dev/null; then
  echo "node-bins: libseccomp-dev and pkg-config are needed to build runc; run scripts/host-packages.sh (as root)" >&2
  exit 1
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export GOFLAGS="-mod=mod" GOTOOLCHAIN=local
goversion="$(go env GOVERSION | sed 's/^go//')"

# put SRC NAME: place a finished file in $stage atomically (hard link when possible).
put() {
  ln -f "$1" "$stage/.$2.tmp" 2>/dev/null || cp -f "$1" "$stage/.$2.tmp"
  mv -f "$stage/.$2.tmp" "$stage/$2"
}

# new_module DIR MODULE@VERSION [PACKAGE...]: a throwaway module in DIR (made the current
# directory) that requires MODULE, with a tools.go importing PACKAGE... so that `go mod tidy`
# resolves them with MODULE's own dependency versions.
new_module() {
  local dir="$1" req="$2"; shift 2
  mkdir -p "$dir" && cd "$dir"
  printf 'module alpaca.dev/node-bins\ngo %s\nrequire %s %s\n' "$goversion" "${req%@*}" "${req#*@}" > go.mod
  [ $# -gt 0 ] || return 0
  { printf '//go:build tools\n\npackage tools\n\nimport (\n'; printf '\t_ "%s"\n' "$@"; printf ')\n'; } > tools.go
}
have() {  # NAME...: all are in $stage already
  local b
  for b in "$@"; do [ -x "$stage/$b" ] || return 1; done
}

timed() {  # NAME COMMAND...: run, then report how long it took
  local name="$1" t0=$SECONDS; shift
  echo "node-bins: building $name" >&2
  "$@"
  echo "node-bins: $name done in $((SECONDS - t0)) s" >&2
}

# --- kubelet, kube-proxy: from scripts/k8s-bins.sh (its cache, or KUBEBUILDER_ASSETS).
build_k8s() {
  local dir
  dir="$("$scripts/k8s-bins.sh" --only kubelet proxy | tail -n 1)"
  put "$dir/kubelet" kubelet
  put "$dir/kube-proxy" kube-proxy
}

# --- containerd, ctr (cgo), containerd-shim-runc-v2 (static, no cgo).
build_containerd() {
  local m=github.com/containerd/containerd/v2
  new_module "$work/containerd" "$m@v$CONTAINERD_VERSION" \
    "$m/cmd/containerd" "$m/cmd/ctr" "$m/cmd/containerd-shim-runc-v2"
  go mod tidy >/dev/null 2>&1 || go mod tidy
  local ldflags="-s -w -X $m/version.Version=v$CONTAINERD_VERSION -X $m/version.Package=$m"
  go build -trimpath -tags "$CONTAINERD_TAGS" -ldflags "$ldflags" -o "$work/bin/" "$m/cmd/containerd" "$m/cmd/ctr"
  CGO_ENABLED=0 go build -trimpath -tags "$CONTAINERD_TAGS" -ldflags "$ldflags" -o "$work/bin/" "$m/cmd/containerd-shim-runc-v2"
  put "$work/bin/containerd-shim-runc-v2" containerd-shim-runc-v2
  put "$work/bin/ctr" ctr
  put "$work/bin/containerd" containerd
}

# --- runc with seccomp (cgo; its version comes from the VERSION file it embeds).
build_runc() {
  local m=github.com/opencontainers/runc
  new_module "$work/runc" "$m@v$RUNC_VERSION" "$m"
  go mod tidy >/dev/null 2>&1 || go mod tidy
  CGO_ENABLED=1 go build -trimpath -buildmode=pie -tags "$RUNC_TAGS" -ldflags "-s -w" -o "$work/bin/runc" "$m"
  "$work/bin/runc" --version | grep -q '^libseccomp:' || { echo "node-bins: runc was built without seccomp" >&2; exit 1; }
  put "$work/bin/runc" runc
}

# --- CoreDNS, slim: coremain plus only the plugins above, registered as core/plugin/zplugin.go
# does (blank imports whose init() calls plugin.Register); the directive order stays the one
# compiled into core/dnsserver (zdirectives.go).
build_coredns() {
  local m=github.com/coredns/coredns p
  new_module "$work/coredns" "$m@v$COREDNS_VERSION"
  {
    printf 'package main\n\nimport (\n'
    for p in "${COREDNS_PLUGINS[@]}"; do printf '\t_ "%s/plugin/%s"\n' "$m" "$p"; done
    printf '\n\t"%s/coremain"\n)\n\nfunc main() { coremain.Run() }\n' "$m"
  } > main.go
  go mod tidy >/dev/null 2>&1 || go mod tidy
  CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$work/bin/coredns" .
  local registered
  registered="$("$work/bin/coredns" -plugins)"
  for p in "${COREDNS_PLUGINS[@]}"; do
    [ "$p" = metrics ] && p=prometheus
    grep -qx "$p" <<<"$registered" || { echo "node-bins: coredns lacks plugin $p" >&2; exit 1; }
  done
  put "$work/bin/coredns" coredns
}

# --- pause: the C program Kubernetes builds its pause image from, static.
pause_version() {
  sed -n 's/^TAG ?= *//p' "$(k8s_module_dir)/build/pause/Makefile"
}
k8s_module_dir() {
  (cd "$work" && go mod download -json "k8s.io/kubernetes@v$K8S_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
}
build_pause() {
  local src
  src="$(k8s_module_dir)/build/pause/linux/pause.c"
  [ -f "$src" ] || { echo "node-bins: $src not found" >&2; exit 1; }
  mkdir -p "$work/bin"
  gcc -static -O2 -Wall -DVERSION="v$(pause_version)" -o "$work/bin/pause" "$src"
  strip "$work/bin/pause" 2>/dev/null || true
  put "$work/bin/pause" pause
}

have kubelet kube-proxy || timed "kubelet, kube-proxy v$K8S_VERSION" build_k8s
have containerd ctr containerd-shim-runc-v2 || timed "containerd v$CONTAINERD_VERSION" build_containerd
have runc || timed "runc v$RUNC_VERSION" build_runc
have coredns || timed "coredns v$COREDNS_VERSION (${COREDNS_PLUGINS[*]})" build_coredns
have pause || timed "pause" build_pause

have "${BINS[@]}" || { echo "node-bins: build finished but binaries are missing in $stage" >&2; exit 1; }
cat > "$stage/versions" <<EOF
K8S_VERSION=$K8S_VERSION
CONTAINERD_VERSION=$CONTAINERD_VERSION
RUNC_VERSION=$RUNC_VERSION
COREDNS_VERSION=$COREDNS_VERSION
COREDNS_PLUGINS="${COREDNS_PLUGINS[*]}"
PAUSE_VERSION=$(pause_version)
CNI_DIR=$CNI_DIR
EOF
touch "$stage/.complete"
rm -rf "$OUT"  # a folder without .complete (none is made by this script, but be safe)
mv "$stage" "$OUT"
echo "$OUT"
