#!/usr/bin/env bash
# Installs what switchboard's demo and tests need and that cargo cannot fetch:
# etcd (etcd-server), etcdctl (etcd-client) and protoc (protobuf-compiler), from Debian's packages.
# With --browser, also Chromium (package chromium), for the dashboard's browser test; with --go,
# Go with grpc-go and etcd's client (golang-go, golang-google-grpc-dev, golang-etcd-server-dev),
# for the Go conformance peer of the interop tests. The demo needs neither.
set -euo pipefail

browser=false
go=false
for arg in "$@"; do
  case "$arg" in
    --browser) browser=true ;;
    --go) go=true ;;
    *) echo "setup: unknown option $arg (known: --browser, --go)" >&2; exit 2 ;;
  esac
done

missing=()
command -v etcd >/dev/null 2>&1 || [ -x /usr/bin/etcd ] || [ -n "${ETCD_BIN:-}" ] || missing+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || [ -x /usr/bin/etcdctl ] || [ -n "${ETCDCTL_BIN:-}" ] || missing+=(etcd-client)
command -v protoc >/dev/null 2>&1 || [ -n "${PROTOC:-}" ] || missing+=(protobuf-compiler)
# protoc's well-known types (google/protobuf/*.proto) come in libprotobuf-dev, a package that
# protobuf-compiler only recommends: without it etcd-client's build fails on descriptor.proto.
[ -n "${PROTOC_INCLUDE:-}" ] || [ -f /usr/include/google/protobuf/descriptor.proto ] || missing+=(libprotobuf-dev)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
if $browser && [ -z "${CHROME_BIN:-}" ] && ! command -v chromium >/dev/null 2>&1 \
  && ! command -v chromium-browser >/dev/null 2>&1; then
  missing+=(chromium)
fi
if $go; then
  command -v go >/dev/null 2>&1 || missing+=(golang-go)
  # Debian's Go library packages put their sources here (bookworm: grpc-go 1.33, etcd 3.4).
  [ -d /usr/share/gocode/src/google.golang.org/grpc/health ] || missing+=(golang-google-grpc-dev)
  [ -d /usr/share/gocode/src/go.etcd.io/etcd/clientv3/naming/resolver ] || missing+=(golang-etcd-server-dev)
fi

if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]} from Debian's packages"
  if [ "$(id -u)" -eq 0 ]; then
    sudo=()
  elif command -v sudo >/dev/null 2>&1; then
    sudo=(sudo)
  else
    echo "setup: not root and no sudo: run 'apt-get install ${missing[*]}' as root, then run this again" >&2
    exit 1
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup: no apt-get here: install ${missing[*]} (etcd 3.4 or newer, etcdctl, protoc, Chromium, Go with grpc-go 1.33 and etcd 3.4's clientv3 in GOPATH) yourself," >&2
    echo "       or point ETCD_BIN / ETCDCTL_BIN / PROTOC / CHROME_BIN at them, then run this again" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  if ! "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null >/dev/null; then
    "${sudo[@]}" apt-get update -q </dev/null >/dev/null
    "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null >/dev/null
  fi
  # Debian starts an etcd service on 2379 after installing etcd-server; nothing here uses it.
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet etcd 2>/dev/null; then
    "${sudo[@]}" systemctl stop etcd || true
  fi
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found: install Rust from https://rustup.rs, then run this again" >&2
  exit 1
fi
