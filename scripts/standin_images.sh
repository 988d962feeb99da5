#!/usr/bin/env bash
# Stand-in base images for a machine that reaches no container registry, made from Debian packages.
#
#   scripts/standin_images.sh            # prints PYTHON_IMAGE=... REDIS_IMAGE=... NGINX_IMAGE=...
#
# The stack's Dockerfiles and docker-compose.yml take their base images as variables (PYTHON_IMAGE,
# REDIS_IMAGE, NGINX_IMAGE; defaults: the pinned python, redis and nginx images of Docker Hub). Where
# those cannot be pulled, this script makes images that play their part, from one Debian bookworm
# root filesystem (`debootstrap --variant=minbase` + `docker import`) holding python3 (3.11.2, with
# venv and pip), redis-server and nginx:
#
#   mmssl-standin-python:<recipe>  `python` on PATH, groupadd/useradd, the CA certificates
#   mmssl-standin-redis:<recipe>   redis-server / redis-cli, runs as `redis` in /data (like redis:7)
#   mmssl-standin-nginx:<recipe>   nginx -g 'daemon off;' reading /etc/nginx/conf.d/*.conf, logs to
#                                  stdout/stderr, with wget for the healthcheck (like nginx:alpine)
#
# <recipe> is the first 12 hex digits of this file's sha256: images (and the cached root filesystem
# tarball, under $STANDIN_CACHE, default ~/.cache/mmssl-standin) are reused while this file is
# unchanged and rebuilt when it changes. Needs root, debootstrap and a Debian mirror
# ($DEBIAN_MIRROR, default http://deb.debian.org/debian). Progress goes to stderr, the three
# variables to stdout. They are stand-ins: Debian's Python is 3.11.2, not the 3.11.13 of the pinned
# image (docker/requirements/py-compat.txt covers the difference), redis is 7.0 and nginx 1.22.
set -euo pipefail

DOCKER=${DOCKER:-docker}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
CACHE=${STANDIN_CACHE:-${HOME:-/root}/.cache/mmssl-standin}
PACKAGES=python3,python3-venv,python-is-python3,ca-certificates,redis-server,nginx,wget
recipe=$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-12)
base="mmssl-standin-base:$recipe"
python_image="mmssl-standin-python:$recipe"
redis_image="mmssl-standin-redis:$recipe"
nginx_image="mmssl-standin-nginx:$recipe"

say() { echo "standin: $*" >&2; }
have() { "$DOCKER" image inspect "$1" >/dev/null 2>&1; }

if ! have "$base"; then
  tarball="$CACHE/bookworm-minbase-$recipe.tar"
  if [ ! -s "$tarball" ]; then
    command -v debootstrap >/dev/null || { say "installing debootstrap"; apt-get install -y -qq debootstrap >&2; }
    mkdir -p "$CACHE"
    rm -f "$CACHE"/bookworm-minbase-*.tar  # tarballs of older recipes
    rootfs=$(mktemp -d "$CACHE/rootfs.XXXXXX")
    trap 'rm -rf "$rootfs"' EXIT
    say "debootstrap --variant=minbase bookworm ($PACKAGES) from $MIRROR"
    debootstrap --variant=minbase --include="$PACKAGES" bookworm "$rootfs" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
      || { tail -20 "$CACHE/debootstrap.log" >&2; exit 1; }
    # Lean: no apt lists, caches, docs or man pages (the images never run apt).
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
      "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/* "$rootfs"/usr/share/info/*
    # The official images log to the container's output and start nothing on port 80.
    rm -f "$rootfs"/etc/nginx/sites-enabled/default
    ln -sf /dev/stdout "$rootfs"/var/log/nginx/access.log
    ln -sf /dev/stderr "$rootfs"/var/log/nginx/error.log
    mkdir -p "$rootfs"/data && chroot "$rootfs" chown redis:redis /data
    tar -C "$rootfs" --numeric-owner -cf "$tarball.part" . && mv "$tarball.part" "$tarball"
    rm -rf "$rootfs"
    trap - EXIT
  fi
  say "docker import $tarball as $base"
  "$DOCKER" import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8' \
    --change 'CMD ["bash"]' "$tarball" "$base" >/dev/null
fi

# The three images differ only in their configuration (and redis in a tiny entrypoint): made with
# `docker create` + `docker cp` + `docker commit`, without a builder, so this works whatever
# builder the engine has.
derive() { # name, file to copy to /usr/local/bin/ or -, then --change instructions
  local name=$1 file=$2
  shift 2
  have "$name" && return 0
  say "making $name"
  local container changes=() ok=0
  container=$("$DOCKER" create "$base")
  for change in "$@"; do changes+=(--change "$change"); done
  if [ "$file" = - ] || "$DOCKER" cp "$file" "$container:/usr/local/bin/"; then
    "$DOCKER" commit "${changes[@]}" "$container" "$name" >/dev/null || ok=1
  else
    ok=1
  fi
  "$DOCKER" rm "$container" >/dev/null
  return $ok
}
# Like the official redis image's entrypoint: a bare `redis-server ...` (no config file) runs with
# protected mode off, so that the other containers of the network may connect.
entrypoint=$(mktemp -d)/redis-entrypoint
cat >"$entrypoint" <<'SH'
#!/bin/sh
if [ "${1:-}" = redis-server ]; then
    shift
    set -- redis-server --protected-mode no "$@"
fi
exec "$@"
SH
chmod 755 "$entrypoint"
derive "$python_image" - 'CMD ["python3"]'
derive "$redis_image" "$entrypoint" 'WORKDIR /data' 'USER redis' 'EXPOSE 6379' \
  'ENTRYPOINT ["/usr/local/bin/redis-entrypoint"]' 'CMD ["redis-server"]'
derive "$nginx_image" - 'EXPOSE 80' 'CMD ["nginx", "-g", "daemon off;"]'
rm -rf "$(dirname "$entrypoint")"

echo "PYTHON_IMAGE=$python_image"
echo "REDIS_IMAGE=$redis_image"
echo "NGINX_IMAGE=$nginx_image"
