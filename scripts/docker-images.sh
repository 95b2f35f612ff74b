#!/usr/bin/env bash
# Makes the base images that the Dockerfile and docker-compose.yml build from available to the
# local Docker engine: the official ones (their defaults: rust:1-bookworm, debian:bookworm-slim,
# quay.io/coreos/etcd:v3.5.17) where a registry answers, and where none does, stand-ins built here
# from Debian's packages:
#
#   switchboard/debian:bookworm-slim  a minimal bookworm root (debootstrap --variant=minbase) with
#                                     ca-certificates and curl, which the examples image wants
#   switchboard/rust:bookworm         the same with gcc, libc6-dev, make, pkg-config, protoc and
#                                     protobuf's .proto includes, and this machine's Rust toolchain
#   switchboard/etcd:bookworm         the same with Debian's etcd 3.4 (etcd-server, etcd-client)
#
# Where a build container cannot fetch from crates.io, the crates are vendored into vendor/
# (ignored by git), and the Dockerfile builds from them without a network.
#
# Standard output is the variables that name the images to use, as export lines; what it does
# goes to standard error:
#
#   eval "$(bash scripts/docker-images.sh)"
#   docker compose up --build
#
# Options:
#   --rebuild        build the stand-ins again even where they are present
#   --env-file FILE  also write the export lines to FILE
# Environment:
#   DEBIAN_MIRROR    where debootstrap fetches from (default http://deb.debian.org/debian)
#   PULL_TIMEOUT     seconds a pull may take in all (default 900); a pull that shows no progress
#                    within 20 s is given up, so an unreachable registry costs at most that
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'docker-images: %s\n' "$*" >&2; }
die() {
  say "$*"
  exit 1
}

rebuild=false
env_file=""
while [ $# -gt 0 ]; do
  case "$1" in
    --rebuild) rebuild=true ;;
    --env-file)
      [ $# -ge 2 ] || die "--env-file needs a file name"
      env_file=$2
      shift
      ;;
    -h | --help)
      sed -n '2,/^set -euo pipefail/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
      exit 0
      ;;
    *)
      say "unknown option $1 (known: --rebuild, --env-file FILE)"
      exit 2
      ;;
  esac
  shift
done

mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
pull_timeout=${PULL_TIMEOUT:-900}
pull_quiet_limit=20

# The official images: the defaults that the Dockerfile and the compose file name, read from them
# so that they are written in one place each.
rust_official=$(sed -n 's/^ARG RUST_IMAGE=//p' Dockerfile)
debian_official=$(sed -n 's/^ARG DEBIAN_IMAGE=//p' Dockerfile)
# shellcheck disable=SC2016 # the ${ETCD_IMAGE:-...} to match is the file's text, not this shell's
etcd_official=$(sed -n 's/^ *image: *\${ETCD_IMAGE:-\(.*\)}$/\1/p' docker-compose.yml)
[ -n "$rust_official" ] && [ -n "$debian_official" ] && [ -n "$etcd_official" ] \
  || die "cannot read the default images (ARG RUST_IMAGE=, ARG DEBIAN_IMAGE= in Dockerfile, image: \${ETCD_IMAGE:-...} in docker-compose.yml)"

rust_standin=switchboard/rust:bookworm
debian_standin=switchboard/debian:bookworm-slim
etcd_standin=switchboard/etcd:bookworm

if ! command -v docker >/dev/null 2>&1; then
  die "no docker command: install Docker Engine and Compose (Debian: apt-get install docker.io docker-compose), start it, then run this again"
fi
if ! docker info >/dev/null 2>&1; then
  die "the Docker engine does not answer ('docker info' failed): start it (systemctl start docker), or run this as root or as a member of the docker group, then run this again"
fi

work=""
cleanup() {
  [ -n "$work" ] && [ -d "$work" ] || return 0
  # debootstrap mounts /proc and /sys in the root it makes; an interrupted run can leave them.
  awk -v w="$work/" 'index($2, w) == 1 { print $2 }' /proc/mounts | sort -r \
    | while read -r mount; do umount -l "$mount" || true; done
  rm -rf --one-file-system "$work"
}
trap cleanup EXIT

elapsed() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }
present() { docker image inspect "$1" >/dev/null 2>&1; }

# pull IMAGE: succeeds when the image was pulled. A registry that cannot be reached fails at once
# or shows no progress; either way this gives up within $pull_quiet_limit seconds.
pull() {
  local image=$1 log pid waited=0 status=0
  log=$(mktemp)
  timeout "$pull_timeout" docker pull "$image" >"$log" 2>&1 &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    if [ "$waited" -ge "$pull_quiet_limit" ] \
      && ! grep -qE 'Pulling from|Pulling fs layer|Waiting|Downloading|Already exists|Digest:' "$log"; then
      echo "no progress in ${pull_quiet_limit} s" >>"$log"
      kill "$pid" 2>/dev/null || true
    fi
    sleep 1
    waited=$((waited + 1))
  done
  wait "$pid" || status=$?
  [ "$status" -eq 0 ] || say "  cannot pull $image: $(tail -n 1 "$log")"
  rm -f "$log"
  return "$status"
}

# What building stand-ins needs: root (debootstrap makes device nodes and chroots), debootstrap
# and Debian's archive keyring (installed here with apt-get if missing), a temporary directory.
stand_in_tools_ready=false
need_stand_in_tools() {
  $stand_in_tools_ready && return 0
  if [ "$(id -u)" -ne 0 ]; then
    die "building stand-in images needs root (debootstrap makes a Debian root): run 'sudo bash scripts/docker-images.sh'"
  fi
  PATH=$PATH:/usr/sbin:/sbin
  local missing=()
  command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
  [ -f /usr/share/keyrings/debian-archive-keyring.gpg ] || missing+=(debian-archive-keyring)
  if [ ${#missing[@]} -gt 0 ]; then
    command -v apt-get >/dev/null 2>&1 \
      || die "no ${missing[*]} and no apt-get to install them: install debootstrap and Debian's archive keyring yourself, then run this again"
    say "installing ${missing[*]} from Debian's packages"
    export DEBIAN_FRONTEND=noninteractive
    local apt=(apt-get -o DPkg::Lock::Timeout=300 -y -q)
    if ! "${apt[@]}" install --no-install-recommends "${missing[@]}" </dev/null >/dev/null; then
      if ! { "${apt[@]}" update </dev/null >/dev/null \
        && "${apt[@]}" install --no-install-recommends "${missing[@]}" </dev/null >/dev/null; }; then
        die "could not install ${missing[*]}: run 'apt-get update && apt-get install ${missing[*]}' as root, then run this again"
      fi
    fi
  fi
  work=$(mktemp -d "${TMPDIR:-/tmp}/switchboard-images.XXXXXX")
  mkdir -p "$work/debs"
  stand_in_tools_ready=true
}

# bootstrap NAME PACKAGES: a bookworm root in $work/NAME, minbase plus PACKAGES (comma-separated).
# The downloaded packages are shared between the roots in $work/debs, removed at the end.
bootstrap() {
  local name=$1 include=$2 root=$work/$1 start=$SECONDS
  say "  debootstrap bookworm (minbase + $include) from $mirror"
  if ! debootstrap --variant=minbase --include="$include" --cache-dir="$work/debs" \
    bookworm "$root" "$mirror" >"$work/$name.log" 2>&1; then
    tail -n 20 "$work/$name.log" >&2
    die "debootstrap failed (its last lines above): if $mirror cannot be reached, set DEBIAN_MIRROR to a Debian mirror that can"
  fi
  # An image needs neither apt's package lists nor its caches (apt-get update makes them again).
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
  say "  root made in $(elapsed $((SECONDS - start))) ($(du -sh --one-file-system "$root" | cut -f1))"
}

# import NAME IMAGE OFFICIAL CHANGE...: the root $work/NAME as IMAGE, with Dockerfile CHANGEs.
import() {
  local root=$work/$1 image=$2 official=$3 start=$SECONDS changes=()
  shift 3
  local change
  for change in "$@" "LABEL org.opencontainers.image.description=\"A stand-in for $official, built from Debian's packages by switchboard's scripts/docker-images.sh\""; do
    changes+=(--change "$change")
  done
  tar --numeric-owner -C "$root" -c . | docker import "${changes[@]}" - "$image" >/dev/null \
    || die "docker import of $image failed (its error above)"
  rm -rf --one-file-system "$root"
  say "  imported in $(elapsed $((SECONDS - start)))"
}

path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

build_debian() {
  bootstrap debian ca-certificates,curl
  import debian "$1" "$2" "ENV PATH=$path" 'CMD ["bash"]'
}

# The toolchain that cargo runs here (rustup's), less its documentation and the standard library's
# sources, in /usr/local/rust; CARGO_HOME is /usr/local/cargo, as in the official image.
build_rust() {
  local sysroot
  sysroot=$(rustc --print sysroot 2>/dev/null) || sysroot=""
  if [ -z "$sysroot" ] || [ "$sysroot" = /usr ] || [ ! -x "$sysroot/bin/cargo" ] || [ ! -x "$sysroot/bin/rustc" ]; then
    die "no rustup toolchain with cargo here ('rustc --print sysroot' gave '${sysroot}'): install Rust from https://rustup.rs, then run this again"
  fi
  bootstrap rust ca-certificates,curl,gcc,libc6-dev,make,pkg-config,protobuf-compiler,libprotobuf-dev
  say "  adding the toolchain from $sysroot ($(rustc --version))"
  mkdir -p "$work/rust/usr/local/rust" "$work/rust/usr/local/cargo/bin"
  tar -C "$sysroot" --exclude=./share/doc --exclude=./lib/rustlib/src -c . \
    | tar -C "$work/rust/usr/local/rust" -x
  import rust "$1" "$2" "ENV PATH=/usr/local/cargo/bin:/usr/local/rust/bin:$path" \
    'ENV CARGO_HOME=/usr/local/cargo' 'CMD ["bash"]'
}

# Debian's etcd is 3.4: the same flags as 3.5 for a single member, and etcdctl speaks the v3 API
# by default (ETCDCTL_API=3 is set all the same, for `etcdctl endpoint health`).
build_etcd() {
  bootstrap etcd etcd-server,etcd-client
  import etcd "$1" "$2" "ENV PATH=$path" 'ENV ETCDCTL_API=3' 'EXPOSE 2379 2380' 'CMD ["etcd"]'
}

# provide OFFICIAL STAND-IN BUILDER CHECK: sets $chosen to the image to use, the official one if
# it is here or can be pulled, else the stand-in, built unless present (or --rebuild).
# CHECK is a command run in the image to show that it works.
provide() {
  local official=$1 standin=$2 builder=$3 check=$4 start
  if present "$official"; then
    say "$official: present"
    chosen=$official
    return
  fi
  if ! $rebuild && present "$standin"; then
    say "$standin: present, the stand-in for $official (--rebuild builds it again)"
    chosen=$standin
    return
  fi
  say "$official: pulling"
  if pull "$official"; then
    chosen=$official
    return
  fi
  say "$standin: building a stand-in for $official from Debian's packages"
  need_stand_in_tools
  start=$SECONDS
  "$builder" "$standin" "$official"
  docker run --rm "$standin" sh -c "$check" 2>&1 | sed 's/^/  /' >&2 \
    || die "$standin was built but '$check' fails in it"
  say "$standin: built in $(elapsed $((SECONDS - start)))"
  chosen=$standin
}

provide "$debian_official" "$debian_standin" build_debian 'curl --version | head -n 1'
debian_image=$chosen
provide "$rust_official" "$rust_standin" build_rust 'cargo --version && rustc --version && protoc --version'
rust_image=$chosen
provide "$etcd_official" "$etcd_standin" build_etcd 'etcd --version | head -n 1 && etcdctl version | head -n 1'
etcd_image=$chosen

# Can a build container fetch crates? Asked of the Rust image itself, with its own certificates,
# as cargo would (a host that reaches crates.io through a proxy with its own certificate
# authority can have containers that connect but do not trust what answers).
vendor_mark=vendor/.made-by-docker-images
if docker run --rm "$rust_image" \
  curl -fsS --connect-timeout 10 --max-time 20 -o /dev/null https://index.crates.io/config.json >/dev/null 2>&1; then
  say "build containers reach crates.io: the examples image fetches its crates itself"
  if [ -f "$vendor_mark" ]; then
    rm -rf vendor
    say "removed the vendor/ an earlier run made"
  fi
else
  say "build containers cannot fetch from crates.io: vendoring the crates into vendor/ (ignored by git), which the Dockerfile builds from offline"
  command -v cargo >/dev/null 2>&1 \
    || die "no cargo here to vendor the crates with: install Rust from https://rustup.rs, or let containers reach crates.io, then run this again"
  start=$SECONDS
  cargo vendor --locked --quiet vendor >/dev/null
  touch "$vendor_mark"
  say "vendored in $(elapsed $((SECONDS - start))) ($(du -sh vendor | cut -f1))"
fi

exports=$(printf 'export RUST_IMAGE=%s\nexport DEBIAN_IMAGE=%s\nexport ETCD_IMAGE=%s\n' \
  "$rust_image" "$debian_image" "$etcd_image")
if [ -n "$env_file" ]; then
  printf '%s\n' "$exports" >"$env_file"
  say "wrote the variables to $env_file"
fi
say "images ready; with these variables set, 'docker compose up --build' (or docker-compose) uses them:"
printf '%s\n' "$exports" | sed 's/^/  /' >&2
printf '%s\n' "$exports"
