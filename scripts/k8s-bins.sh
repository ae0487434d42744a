#!/usr/bin/env bash
# Provide kube-apiserver, etcd and kubectl (and, on request, kube-controller-manager,
# kube-scheduler, kubelet and kube-proxy) for the tests and the demo. No registry ships these
# binaries, so:
#   1. if KUBEBUILDER_ASSETS names a folder that has them, use that folder (envtest convention);
#   2. else build them from the Go module proxy, once per version, into a cache outside the repo.
# Prints the folder that holds the binaries on its last line.
#
#   scripts/k8s-bins.sh                    # apiserver, etcd, kubectl
#   scripts/k8s-bins.sh controller-manager scheduler   # also these
#   scripts/k8s-bins.sh --only kubelet proxy           # only these (scripts/node-bins.sh)
# A name X means kube-X, except kubelet, kubectl and etcd (and names already starting kube-).
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-1.37.2}"
ETCD_VERSION="${ETCD_VERSION:-3.7.3}"
CACHE_ROOT="${ALPACA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/alpaca-operator}"
OUT="$CACHE_ROOT/k8s/v$K8S_VERSION-etcd$ETCD_VERSION"

wanted=(kube-apiserver etcd kubectl)
if [ "${1:-}" = --only ]; then
  shift
  [ $# -gt 0 ] || { echo "usage: $0 [--only] [controller-manager|scheduler|kubelet|proxy ...]" >&2; exit 2; }
  wanted=()
fi
wants() {
  local b
  for b in "${wanted[@]}"; do [ "$b" = "$1" ] && return 0; done
  return 1
}
for extra in "$@"; do
  case "$extra" in
    kubelet | kubectl | etcd | kube-*) b="$extra" ;;
    *) b="kube-$extra" ;;
  esac
  wants "$b" || wanted+=("$b")
done

have_all() {
  local dir="$1" b
  for b in "${wanted[@]}"; do [ -x "$dir/$b" ] || return 1; done
}

if [ -n "${KUBEBUILDER_ASSETS:-}" ] && have_all "$KUBEBUILDER_ASSETS"; then
  echo "using KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS" >&2
  echo "$KUBEBUILDER_ASSETS"
  exit 0
fi
if have_all "$OUT"; then
  echo "$OUT"
  exit 0
fi

command -v go >/dev/null || { echo "k8s-bins: Go is needed to build Kubernetes $K8S_VERSION (or set KUBEBUILDER_ASSETS)" >&2; exit 1; }
mkdir -p "$OUT"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export GOFLAGS="-mod=mod" GOTOOLCHAIN=local

# --- Kubernetes: require k8s.io/kubernetes and replace each staging module (v0.0.0 in its
# go.mod) with its published v0.<minor>.<patch>.
k8s_bins=()
for b in "${wanted[@]}"; do
  [ "$b" = etcd ] || [ -x "$OUT/$b" ] || k8s_bins+=("$b")
done
if [ ${#k8s_bins[@]} -gt 0 ]; then
  echo "k8s-bins: building ${k8s_bins[*]} v$K8S_VERSION (minutes, once)" >&2
  mkdir -p "$work/k8s" && cd "$work/k8s"
  gomod="$(go mod download -json "k8s.io/kubernetes@v$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
  staging_version="v0.${K8S_VERSION#1.}"
  {
    echo "module alpaca.dev/k8s-bins"
    echo "go $(go env GOVERSION | sed 's/^go//')"
    echo "require k8s.io/kubernetes v$K8S_VERSION"
    sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#replace \1 => \1 '"$staging_version"'#p' "$gomod"
  } > go.mod
  pkgs=()
  for b in "${k8s_bins[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$b"); done
  printf 'package tools\nimport (\n' > tools.go
  for p in "${pkgs[@]}"; do printf '\t_ "%s"\n' "$p" >> tools.go; done
  printf ')\n' >> tools.go
  sed -i '1i //go:build tools' tools.go
  go mod tidy -e >/dev/null 2>&1 || true
  ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=v$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$(echo "$K8S_VERSION" | cut -d. -f2)"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  go build -trimpath -ldflags "$ldflags" -o "$work/bin/" "${pkgs[@]}"
  for b in "${k8s_bins[@]}"; do mv "$work/bin/$b" "$OUT/$b"; done
fi

# --- etcd: a few-line main around etcdmain, at a version this Kubernetes supports.
if wants etcd && [ ! -x "$OUT/etcd" ]; then
  echo "k8s-bins: building etcd v$ETCD_VERSION" >&2
  mkdir -p "$work/etcd" && cd "$work/etcd"
  cat > go.mod <<GOMOD
module alpaca.dev/etcd
go $(go env GOVERSION | sed 's/^go//')
require go.etcd.io/etcd/server/v3 v$ETCD_VERSION
GOMOD
  cat > main.go <<'GO'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  go mod tidy >/dev/null
  go build -trimpath -ldflags "-s -w -X go.etcd.io/etcd/api/v3/version.Version=$ETCD_VERSION" -o "$OUT/etcd" .
fi

have_all "$OUT" || { echo "k8s-bins: build finished but binaries are missing in $OUT" >&2; exit 1; }
echo "$OUT"
