#!/bin/sh
# Builds a local Debian 12 base image when no registry is reachable, so that
# `docker build --build-arg BASE_IMAGE=sandgate-base:bookworm` works offline
# from Docker Hub (the Debian mirror this machine already uses is enough).
#
#   docker/make-base-image.sh [TAG]        (default TAG: sandgate-base:bookworm)
#
# Steps: debootstrap --variant=minbase bookworm into a temporary directory
# from the mirror named in /etc/apt/sources.list(.d) (never a hard-coded
# host), trim it the way Debian's official slim images are trimmed, tar it to
# the cache, `docker import` it. The tarball is cached in
# $SANDGATE_DOCKER_CACHE (default /var/cache/sandgate-docker) and rebuilt
# when older than $SANDGATE_BASE_MAX_AGE_DAYS (default 30) so images keep
# getting security updates; the image is re-imported only when the tarball
# changed. Needs root, debootstrap and a running Docker engine.
#
# Environment: DOCKER (docker CLI, default: docker), SANDGATE_MIRROR (override
# the Debian mirror), SANDGATE_DOCKER_CACHE, SANDGATE_BASE_MAX_AGE_DAYS.
set -eu
TAG=${1:-sandgate-base:bookworm}
DOCKER=${DOCKER:-docker}
CACHE=${SANDGATE_DOCKER_CACHE:-/var/cache/sandgate-docker}
MAX_AGE=${SANDGATE_BASE_MAX_AGE_DAYS:-30}
SUITE=bookworm
TAR="$CACHE/$SUITE-minbase.tar"

log() { echo "make-base-image: $*" >&2; }

# Prints "URI SUITE" for every deb source of this machine, from one-line
# sources.list files and deb822 .sources files alike.
apt_sources() {
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        # deb [opt=val ...] URI SUITE COMPONENT...
        sed -e 's/#.*//' -e 's/\[[^]]*\]//' "$f" | awk '$1 == "deb" && NF >= 3 { print $2, $3 }'
    done
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        awk '
            function flush() {
                if (types ~ /(^| )deb( |$)/ && enabled !~ /^[Nn][Oo]/)
                    for (i = 1; i <= nu; i++) for (j = 1; j <= ns; j++) print u[i], s[j]
                types = ""; enabled = ""; nu = 0; ns = 0
            }
            /^[ \t]*#/ { next }
            /^[ \t]*$/ { flush(); next }
            {
                key = tolower($1); sub(/:$/, "", key); $1 = ""; sub(/^ +/, "")
                if (key == "types") types = $0
                else if (key == "enabled") enabled = $0
                else if (key == "uris") nu = split($0, u, " ")
                else if (key == "suites") ns = split($0, s, " ")
            }
            END { flush() }' "$f"
    done
}

need_tar=1
if [ -f "$TAR" ] && [ -n "$(find "$TAR" -mtime -"$MAX_AGE" 2>/dev/null)" ]; then
    need_tar=0
fi

if [ "$need_tar" -eq 1 ]; then
    command -v debootstrap >/dev/null || { log "debootstrap is not installed (apt-get install debootstrap)"; exit 1; }
    SOURCES=$(apt_sources | awk -v s="$SUITE" '$2 == s || $2 == s "-updates" || $2 == s "-security"' | sort -u)
    MIRROR=${SANDGATE_MIRROR:-$(echo "$SOURCES" | awk -v s="$SUITE" '$2 == s { print $1; exit }')}
    if [ -z "$MIRROR" ]; then
        log "no '$SUITE' Debian source in /etc/apt/sources.list(.d); set SANDGATE_MIRROR"
        exit 1
    fi
    [ -n "$SOURCES" ] || SOURCES="$MIRROR $SUITE"
    mkdir -p "$CACHE"
    ROOT=$(mktemp -d "$CACHE/rootfs.XXXXXX")
    trap 'rm -rf "$ROOT" "$TAR.tmp"' EXIT INT TERM
    log "debootstrap --variant=minbase $SUITE from $MIRROR (about a minute)"
    debootstrap --variant=minbase "$SUITE" "$ROOT" "$MIRROR" >"$ROOT.log" 2>&1 || {
        tail -20 "$ROOT.log" >&2
        rm -f "$ROOT.log"
        exit 1
    }
    rm -f "$ROOT.log"

    # The same sources as this machine (updates and security included), in
    # the deb822 format the official images use.
    rm -f "$ROOT/etc/apt/sources.list"
    echo "$SOURCES" | awk '{
        printf "%sTypes: deb\nURIs: %s\nSuites: %s\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n", sep, $1, $2
        sep = "\n" }' >"$ROOT/etc/apt/sources.list.d/debian.sources"

    # What Debian's official slim images do: no services started by dpkg, no
    # docs, man pages or translations, no package cache or lists kept.
    printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"
    chmod 755 "$ROOT/usr/sbin/policy-rc.d"
    cat >"$ROOT/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
    cat >"$ROOT/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
    echo 'Acquire::Languages "none";' >"$ROOT/etc/apt/apt.conf.d/docker-no-languages"
    echo 'APT::AutoRemove::SuggestsImportant "false";' >"$ROOT/etc/apt/apt.conf.d/docker-autoremove-suggests"
    find "$ROOT/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
    find "$ROOT/usr/share/doc" -mindepth 1 -type d -empty -delete
    rm -rf "$ROOT/usr/share/man"/* "$ROOT/usr/share/info"/* "$ROOT/usr/share/lintian" \
        "$ROOT/var/cache/apt"/*.bin "$ROOT/var/cache/apt/archives"/*.deb "$ROOT/var/lib/apt/lists"/* \
        "$ROOT/var/log"/*.log "$ROOT/var/log/apt"/* "$ROOT/debootstrap"
    find "$ROOT/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
    # Docker provides these at run time; do not ship this machine's.
    : >"$ROOT/etc/resolv.conf"
    : >"$ROOT/etc/hostname"

    tar --numeric-owner --xattrs -C "$ROOT" -cf "$TAR.tmp" .
    mv "$TAR.tmp" "$TAR"
    rm -rf "$ROOT"
    trap - EXIT INT TERM
    log "cached $TAR ($(du -h "$TAR" | cut -f1))"
fi

# Import when the image is missing or was made from another tarball.
SUM=$(sha256sum "$TAR" | cut -c1-16)
HAVE=$($DOCKER image inspect -f '{{index .Config.Labels "org.sandgate.base-tar"}}' "$TAG" 2>/dev/null || true)
if [ "$HAVE" != "$SUM" ]; then
    log "importing $TAR as $TAG"
    $DOCKER import --change "LABEL org.sandgate.base-tar=$SUM" --change 'CMD ["bash"]' \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        "$TAR" "$TAG" >/dev/null
fi
echo "$TAG"
