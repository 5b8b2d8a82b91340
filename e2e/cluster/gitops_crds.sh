#!/usr/bin/env bash
# Fetches the CRDs of Argo CD (Application) and Flux (GitRepository, Kustomization,
# HelmRelease) from the tools' own Go modules into a cache outside the repository, keyed by
# every version, so tests/cluster/test_gitops.py can check examples/gitops/ against the
# schemas the real tools install. A no-op when that folder is complete. Prints the folder on
# its last line. Its own cache key: the Kubernetes binaries of build.sh are not touched.
#
# Argo CD, source-controller and kustomize-controller ship their CRD YAML in their modules.
# helm-controller's module is not served by the Go module proxy (403), only its api module:
# the HelmRelease CRD is generated from it with the controller-gen version every shipped
# Flux CRD names, as upstream's `make manifests` does. First, that controller-gen must
# reproduce kustomize-controller's shipped CRD from kustomize-controller/api byte for byte.
set -euo pipefail

ARGOCD_VERSION=${ARGOCD_VERSION:-v3.5.8}              # v3.6 needs Go 1.27
FLUX_SOURCE_VERSION=${FLUX_SOURCE_VERSION:-v1.9.6}    # source-, kustomize- and helm-controller of one Flux release
FLUX_KUSTOMIZE_VERSION=${FLUX_KUSTOMIZE_VERSION:-v1.9.6}
FLUX_HELM_VERSION=${FLUX_HELM_VERSION:-v1.6.5}
CONTROLLER_GEN_VERSION=${CONTROLLER_GEN_VERSION:-v0.21.0}  # the controller-gen.kubebuilder.io/version of those CRDs
CACHE=${SHARDWRIGHT_CACHE:-$HOME/.cache/shardwright}

export GOMODCACHE=${GOMODCACHE:-$CACHE/go/mod}
export GOCACHE=${GOCACHE:-$CACHE/go/build}
export GOFLAGS=-buildvcs=false
export CGO_ENABLED=0

KEY="argocd-${ARGOCD_VERSION}_source-${FLUX_SOURCE_VERSION}_kustomize-${FLUX_KUSTOMIZE_VERSION}_helm-${FLUX_HELM_VERSION}_controller-gen-${CONTROLLER_GEN_VERSION}"
OUT="$CACHE/gitops-crds/$KEY"
FILES=(application-crd.yaml source.toolkit.fluxcd.io_gitrepositories.yaml
       kustomize.toolkit.fluxcd.io_kustomizations.yaml helm.toolkit.fluxcd.io_helmreleases.yaml)

complete() {
  for f in "${FILES[@]}"; do [[ -s "$OUT/$f" ]] || return 1; done
}
# One fetch per key at a time: a second caller waits for the lock, then finds it complete.
mkdir -p "$CACHE/gitops-crds" && exec 9>"$CACHE/gitops-crds/$KEY.lock" && flock 9
if complete; then echo "$OUT"; exit 0; fi

WORK=$(mktemp -d "$CACHE/gitops-crds/build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
log() { echo "[gitops-crds $(date -u +%H:%M:%S)] $*" >&2; }

module_dir() {  # module@version: its folder in the module cache, downloaded first
  go mod download -json "$1" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d.get("Dir") or sys.exit(d.get("Error")))'
}

generate() {  # api-module@version output-folder: controller-gen over a writable copy, as `cd api; make manifests`
  local src="$WORK/src-${1//[\/@]/_}"
  cp -r "$(module_dir "$1")" "$src" && chmod -R u+w "$src"
  (cd "$src" && "$WORK/controller-gen" crd:crdVersions=v1 paths=./... output:crd:artifacts:config="$2")
}

log "argo-cd $ARGOCD_VERSION, source-controller $FLUX_SOURCE_VERSION, kustomize-controller $FLUX_KUSTOMIZE_VERSION"
mkdir -p "$WORK/out"
cp "$(module_dir "github.com/argoproj/argo-cd/v3@$ARGOCD_VERSION")/manifests/crds/application-crd.yaml" "$WORK/out/"
cp "$(module_dir "github.com/fluxcd/source-controller@$FLUX_SOURCE_VERSION")/config/crd/bases/source.toolkit.fluxcd.io_gitrepositories.yaml" "$WORK/out/"
shipped="$(module_dir "github.com/fluxcd/kustomize-controller@$FLUX_KUSTOMIZE_VERSION")/config/crd/bases/kustomize.toolkit.fluxcd.io_kustomizations.yaml"
cp "$shipped" "$WORK/out/"

log "controller-gen $CONTROLLER_GEN_VERSION"
(mkdir -p "$WORK/cg" && cd "$WORK/cg" && go mod init shardwright.local/controller-gen >/dev/null 2>&1 &&
  go get -tool "sigs.k8s.io/controller-tools/cmd/controller-gen@$CONTROLLER_GEN_VERSION" >/dev/null 2>&1 &&
  go build -trimpath -ldflags "-s -w" -o "$WORK/controller-gen" sigs.k8s.io/controller-tools/cmd/controller-gen)
generate "github.com/fluxcd/kustomize-controller/api@$FLUX_KUSTOMIZE_VERSION" "$WORK/check"
cmp "$WORK/check/kustomize.toolkit.fluxcd.io_kustomizations.yaml" "$shipped" ||
  { log "controller-gen $CONTROLLER_GEN_VERSION does not reproduce kustomize-controller's shipped CRD"; exit 1; }
log "helm-controller/api $FLUX_HELM_VERSION: generating the HelmRelease CRD"
generate "github.com/fluxcd/helm-controller/api@$FLUX_HELM_VERSION" "$WORK/out"

mkdir -p "$OUT"
for f in "${FILES[@]}"; do mv "$WORK/out/$f" "$OUT/$f"; done
complete || { log "incomplete: $OUT"; exit 1; }
echo "$OUT"
