#!/usr/bin/env bash
# Third-party pieces the tests install into the local control plane, taken from their Go modules
# on the Go module proxy and cached by version outside the repo:
#   scripts/thirdparty.sh crds      -> prints a folder with the KubeRay and Karpenter CRDs
#   scripts/thirdparty.sh kuberay   -> prints the path of a kuberay-operator binary built from source
#   scripts/thirdparty.sh helm      -> prints the path of a helm binary built from its module
set -euo pipefail

KUBERAY_VERSION="${KUBERAY_VERSION:-1.5.0}"
KARPENTER_VERSION="${KARPENTER_VERSION:-1.15.0}"
HELM_VERSION="${HELM_VERSION:-4.3.1}"
CACHE_ROOT="${ALPACA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/alpaca-operator}"
export GOFLAGS="-mod=mod" GOTOOLCHAIN=local

# The module zip, whatever Go version the module asks for (we only read files from it).
module_zip() {
  { go mod download -json "$1" 2>/dev/null || true; } | sed -n 's/.*"Zip": "\(.*\)".*/\1/p'
}

extract() {  # MODULE@VERSION OUTDIR PATH...
  local mod="$1" out="$2"; shift 2
  local zip; zip="$(module_zip "$mod")"
  [ -f "$zip" ] || { echo "thirdparty: could not download $mod from the Go module proxy" >&2; exit 1; }
  for path in "$@"; do
    unzip -p "$zip" "$mod/$path" > "$out/$(basename "$path")"
  done
}

crds() {
  local out="$CACHE_ROOT/crds/kuberay-$KUBERAY_VERSION-karpenter-$KARPENTER_VERSION"
  if [ ! -f "$out/.complete" ]; then
    mkdir -p "$out"
    extract "github.com/ray-project/kuberay/ray-operator@v$KUBERAY_VERSION" "$out" \
      config/crd/bases/ray.io_rayclusters.yaml config/crd/bases/ray.io_rayservices.yaml \
      config/crd/bases/ray.io_rayjobs.yaml
    extract "sigs.k8s.io/karpenter@v$KARPENTER_VERSION" "$out" \
      pkg/apis/crds/karpenter.sh_nodepools.yaml pkg/apis/crds/karpenter.sh_nodeclaims.yaml
    touch "$out/.complete"
  fi
  echo "$out"
}

kuberay() {
  local out="$CACHE_ROOT/bin/kuberay-operator-$KUBERAY_VERSION"
  if [ ! -x "$out" ]; then
    echo "thirdparty: building the KubeRay operator v$KUBERAY_VERSION (minutes, once)" >&2
    local work; work="$(mktemp -d)"
    trap 'rm -rf "$work"' RETURN
    mkdir -p "$(dirname "$out")"
    (
      cd "$work"
      printf 'module alpaca.dev/kuberay-bin\ngo %s\nrequire github.com/ray-project/kuberay/ray-operator v%s\n' \
        "$(go env GOVERSION | sed 's/^go//')" "$KUBERAY_VERSION" > go.mod
      printf '//go:build tools\npackage tools\nimport _ "github.com/ray-project/kuberay/ray-operator"\n' > tools.go
      go mod tidy -e >/dev/null 2>&1 || true
      go build -trimpath -ldflags "-s -w" -o "$out.tmp" github.com/ray-project/kuberay/ray-operator
    )
    mv "$out.tmp" "$out"
  fi
  echo "$out"
}

helm() {
  local dir="$CACHE_ROOT/bin/helm-$HELM_VERSION"
  if [ ! -x "$dir/helm" ]; then
    echo "thirdparty: building helm v$HELM_VERSION (a minute or two, once)" >&2
    mkdir -p "$dir"
    GOBIN="$dir" GOFLAGS= go install -trimpath -ldflags "-s -w" "helm.sh/helm/v${HELM_VERSION%%.*}/cmd/helm@v$HELM_VERSION"
  fi
  echo "$dir/helm"
}

case "${1:-}" in
  crds) crds ;;
  kuberay) kuberay ;;
  helm) helm ;;
  *) echo "usage: $0 crds|kuberay|helm" >&2; exit 2 ;;
esac
