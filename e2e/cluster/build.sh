#!/usr/bin/env bash
# Builds the local control plane's binaries from their Go modules into a cache outside the
# repository, keyed by every version and `go version`; a second run with the same key is a
# no-op. Prints the binary folder on its last line. See docs/testing.md and KUBERNETES.md.
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.37.2}
ETCD_VERSION=${ETCD_VERSION:-v3.6.16}
KWOK_VERSION=${KWOK_VERSION:-v0.8.0}
HELM_VERSION=${HELM_VERSION:-v4.3.2}
CACHE=${SHARDWRIGHT_CACHE:-$HOME/.cache/shardwright}

export GOMODCACHE=${GOMODCACHE:-$CACHE/go/mod}
export GOCACHE=${GOCACHE:-$CACHE/go/build}
export GOFLAGS=-buildvcs=false
export CGO_ENABLED=0

GO_VERSION=$(go env GOVERSION)
KEY="k8s-${K8S_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}_helm-${HELM_VERSION}_${GO_VERSION}"
BIN="$CACHE/cluster/$KEY/bin"
TOOLS=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok helm)
# The Argo CD and Flux CRDs that tests/cluster/test_gitops.py installs: a cache and key of
# their own (gitops_crds.sh), so they never change this key.
bash "$(dirname "${BASH_SOURCE[0]}")/gitops_crds.sh" >/dev/null

complete() {
  for t in "${TOOLS[@]}"; do [[ -x "$BIN/$t" ]] || return 1; done
  [[ -d "$BIN/../kwok-stages" ]]
}
if complete; then echo "$BIN"; exit 0; fi

mkdir -p "$BIN"
exec 9>"$BIN/../build.lock"
flock 9  # one build per key at a time; a second waits, then finds it complete
if complete; then echo "$BIN"; exit 0; fi
WORK=$(mktemp -d "$CACHE/cluster/build.XXXXXX")
# The go command's module chatter goes to a log; a failure prints its tail.
GOLOG="$CACHE/cluster/$KEY/build.log"
exec 3>&2 2>>"$GOLOG"
trap 'status=$?; rm -rf "$WORK"; if [[ $status != 0 ]]; then tail -40 "$GOLOG" >&3; fi' EXIT
log() { echo "[build $(date -u +%H:%M:%S)] $*" >&3; }

# A throwaway module whose replace lines pin every staging module of k8s.io/kubernetes to its
# published version: `go install pkg@version` refuses modules that carry replace lines.
build_kubernetes() {
  local dir="$WORK/kubernetes" minor=${K8S_VERSION#v1.} staging
  minor=${minor%%.*}
  staging="v0.${K8S_VERSION#v1.}"
  mkdir -p "$dir" && cd "$dir"
  local gomod
  gomod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  {
    echo "module shardwright.local/kubernetes-build"
    echo "go $(awk '/^go /{print $2}' "$gomod")"
    awk '/=> \.\/staging\/src\// {print "replace " $1 " => " $1 " '"$staging"'"}' "$gomod"
  } > go.mod
  local date; date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  local ld="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ld+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$date"
  done
  log "kubernetes $K8S_VERSION: resolving modules"
  local cmds=(kube-apiserver kube-controller-manager kube-scheduler kubectl) tools=()
  for cmd in "${cmds[@]}"; do tools+=("k8s.io/kubernetes/cmd/$cmd@$K8S_VERSION"); done
  go get -tool "${tools[@]}" >/dev/null
  for cmd in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
    [[ -x "$BIN/$cmd" ]] && continue
    log "building $cmd"
    go build -trimpath -ldflags "$ld" -o "$BIN/$cmd.tmp" "k8s.io/kubernetes/cmd/$cmd"
    mv "$BIN/$cmd.tmp" "$BIN/$cmd"
  done
}

# etcd's server module has replace lines too: the same wrapper trick, with `go get -tool`.
build_etcd() {
  [[ -x "$BIN/etcd" ]] && return
  local dir="$WORK/etcd"; mkdir -p "$dir" && cd "$dir"
  go mod init shardwright.local/etcd-build >/dev/null 2>&1
  log "etcd $ETCD_VERSION"
  go get -tool "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >/dev/null
  go build -trimpath -ldflags "-s -w" -o "$BIN/etcd.tmp" go.etcd.io/etcd/server/v3
  mv "$BIN/etcd.tmp" "$BIN/etcd"
}

build_plain() {  # name package@version package [ldflags]
  [[ -x "$BIN/$1" ]] && return
  local dir="$WORK/$1"; mkdir -p "$dir" && cd "$dir"
  go mod init "shardwright.local/$1-build" >/dev/null 2>&1
  log "$1 ${2#*@}"
  go get -tool "$2" >/dev/null
  go build -trimpath -ldflags "-s -w ${4:-}" -o "$BIN/$1.tmp" "$3"
  mv "$BIN/$1.tmp" "$BIN/$1"
}

build_etcd
build_plain kwok "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION" sigs.k8s.io/kwok/cmd/kwok
build_plain helm "helm.sh/helm/v4/cmd/helm@$HELM_VERSION" helm.sh/helm/v4/cmd/helm \
  "-X helm.sh/helm/v4/internal/version.version=$HELM_VERSION"
build_kubernetes
# KWOK's stage files ship in its module; kwok alone says "no stages found" without them.
if [[ ! -d "$BIN/../kwok-stages" ]]; then
  cp -r "$GOMODCACHE/sigs.k8s.io/kwok@$KWOK_VERSION/kustomize/stage" "$BIN/../kwok-stages.tmp"
  chmod -R u+w "$BIN/../kwok-stages.tmp" && mv "$BIN/../kwok-stages.tmp" "$BIN/../kwok-stages"
fi
complete || { echo "build incomplete in $BIN" >&3; exit 1; }
log "done"
echo "$BIN"
