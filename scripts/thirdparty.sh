#!/usr/bin/env bash
# Third-party pieces the tests install into the local control plane, taken from their Go modules
# on the Go module proxy and cached by version outside the repo:
#   scripts/thirdparty.sh crds      -> prints a folder with the KubeRay and Karpenter CRDs
#   scripts/thirdparty.sh kuberay   -> prints the path of a kuberay-operator binary built from source
#   scripts/thirdparty.sh helm      -> prints the path of a helm binary built from its module
#   scripts/thirdparty.sh kwok      -> prints a folder with kwok and its node/pod stage files
#   scripts/thirdparty.sh karpenter-kwok -> prints a folder with Karpenter's KWOK-provider controller
#                                       and its CRDs (NodePool, NodeClaim, KWOKNodeClass)
#   scripts/thirdparty.sh kueue     -> prints a folder with the Kueue controller and its CRDs
set -euo pipefail

KUBERAY_VERSION="${KUBERAY_VERSION:-1.5.0}"
KARPENTER_VERSION="${KARPENTER_VERSION:-1.15.0}"
HELM_VERSION="${HELM_VERSION:-4.3.1}"
KWOK_VERSION="${KWOK_VERSION:-0.8.0}"
# Karpenter's KWOK provider is a whole Karpenter controller; 1.14.1 is the newest whose go.mod
# this machine's Go (1.26.8) accepts (1.14.3 and 1.15.0 ask for 1.26.9+).
KARPENTER_KWOK_VERSION="${KARPENTER_KWOK_VERSION:-1.14.1}"
KUEUE_VERSION="${KUEUE_VERSION:-0.17.0}"
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

# go install PACKAGE@VERSION into DIR (the modules have no replace directives).
install_into() {  # DIR PACKAGE@VERSION WHAT
  echo "thirdparty: building $3 (minutes, once)" >&2
  mkdir -p "$1"
  GOBIN="$1" GOFLAGS= go install -trimpath -ldflags "-s -w" "$2"
}

kwok() {
  local dir="$CACHE_ROOT/bin/kwok-$KWOK_VERSION" stage="kustomize/stage"
  [ -x "$dir/kwok" ] || install_into "$dir" "sigs.k8s.io/kwok/cmd/kwok@v$KWOK_VERSION" "kwok v$KWOK_VERSION"
  # The standalone binary runs no stage unless given some: the "fast" node, pod and volume
  # stages, and the default StorageClass the volume stages bind PVCs of.
  local files=(
    node/fast/node-initialize.yaml node/heartbeat/node-heartbeat.yaml
    pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml
    volume/fast/pvc-provision.yaml volume/fast/pv-bind.yaml volume/fast/pv-delete.yaml
    volume/fast/pvc-delete.yaml volume/fast/storage-class.yaml
  )
  local f missing=()
  for f in "${files[@]}"; do [ -f "$dir/$(basename "$f")" ] || missing+=("$stage/$f"); done
  [ ${#missing[@]} -eq 0 ] || extract "sigs.k8s.io/kwok@v$KWOK_VERSION" "$dir" "${missing[@]}"
  echo "$dir"
}

karpenter_kwok() {
  local dir="$CACHE_ROOT/bin/karpenter-kwok-$KARPENTER_KWOK_VERSION"
  if [ ! -f "$dir/.complete" ]; then
    install_into "$dir" "sigs.k8s.io/karpenter/kwok@v$KARPENTER_KWOK_VERSION" \
      "Karpenter's KWOK provider v$KARPENTER_KWOK_VERSION"
    mv "$dir/kwok" "$dir/karpenter-kwok"
    extract "sigs.k8s.io/karpenter@v$KARPENTER_KWOK_VERSION" "$dir" \
      kwok/charts/crds/karpenter.sh_nodepools.yaml kwok/charts/crds/karpenter.sh_nodeclaims.yaml \
      kwok/charts/crds/karpenter.sh_nodeoverlays.yaml \
      kwok/apis/crds/karpenter.kwok.sh_kwoknodeclasses.yaml
    touch "$dir/.complete"
  fi
  echo "$dir"
}

kueue() {
  local dir="$CACHE_ROOT/bin/kueue-$KUEUE_VERSION"
  if [ ! -f "$dir/.complete" ]; then
    install_into "$dir" "sigs.k8s.io/kueue/cmd/kueue@v$KUEUE_VERSION" "Kueue v$KUEUE_VERSION"
    local zip; zip="$(module_zip "sigs.k8s.io/kueue@v$KUEUE_VERSION")"
    mkdir -p "$dir/crds"
    unzip -j -o -q "$zip" "sigs.k8s.io/kueue@v$KUEUE_VERSION/config/components/crd/bases/*.yaml" -d "$dir/crds"
    touch "$dir/.complete"
  fi
  echo "$dir"
}

case "${1:-}" in
  crds) crds ;;
  kuberay) kuberay ;;
  helm) helm ;;
  kwok) kwok ;;
  karpenter-kwok) karpenter_kwok ;;
  kueue) kueue ;;
  *) echo "usage: $0 crds|kuberay|helm|kwok|karpenter-kwok|kueue" >&2; exit 2 ;;
esac
