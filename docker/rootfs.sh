#!/bin/sh
# Runs in the Dockerfile's `rootfs` stage (Debian 12, as root). Assembles the
# whole file system of the runtime image in OUT:
#
#   /usr/local/bin/sandgate, /usr/bin/tini, /bin/bash, their shared libraries
#   (found with ldd) and the dynamic loader, in Debian's merged-/usr layout;
#   CA certificates and the OpenSSL configuration; passwd/group with the
#   `sandgate` user (uid/gid 10001); /etc/sandgate/sandgate.yaml (built-in
#   default); /var/lib/sandgate owned by 10001; the health check; and, for
#   every Debian package a file came from, its copyright file and its dpkg
#   status entry in /var/lib/dpkg/status.d/ (the layout image scanners read
#   for images without dpkg).
#
#   rootfs.sh OUT SANDGATE_BINARY
set -eu
OUT=$1
BIN=$2
HERE=$(dirname "$0")
UID_GID=10001

rm -rf "$OUT"
mkdir -p "$OUT/usr/bin" "$OUT/usr/sbin" "$OUT/usr/lib" "$OUT/usr/local/bin" \
    "$OUT/usr/local/lib/sandgate" "$OUT/etc/ssl/certs" "$OUT/etc/sandgate" \
    "$OUT/var/lib/sandgate" "$OUT/var/lib/dpkg/status.d" "$OUT/tmp" "$OUT/root" "$OUT/dev" \
    "$OUT/proc" "$OUT/sys"
# Merged /usr, as on Debian 12: /bin, /sbin, /lib, /lib64 are symlinks.
for d in bin sbin lib lib64; do
    if [ -L "/$d" ]; then
        ln -s "$(readlink "/$d")" "$OUT/$d"
        mkdir -p "$OUT/usr/$d"
    fi
done

PKG_FILES=$(mktemp)

# copy PATH [PACKAGE]: copies the file PATH names (dereferenced) to the same
# path under OUT, through the merged-/usr symlinks, and notes the Debian
# package it comes from (PACKAGE for files that dpkg does not list because a
# maintainer script generated them).
copy() {
    dir=$(cd "$(dirname "$1")" && pwd -P)
    mkdir -p "$OUT$dir"
    cp -L "$1" "$OUT$dir/$(basename "$1")"
    echo "${2:+=}${2:-$1}" >>"$PKG_FILES"
}

# copy_libs ELF: every shared library ELF loads, and the loader.
copy_libs() {
    for lib in $(ldd "$1" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'); do
        copy "$lib"
    done
}

install -m 0755 "$BIN" "$OUT/usr/local/bin/sandgate"
copy_libs "$BIN"
copy /usr/bin/tini
copy_libs /usr/bin/tini
copy /bin/bash
copy_libs /bin/bash
# glibc loads libgcc_s at run time to unwind threads (pthread_exit/cancel).
copy "$(ldconfig -p | awk '$1 == "libgcc_s.so.1" { print $NF; exit }')"

# TLS: the CA bundle (sandgate itself needs none; scripts and probes might)
# and OpenSSL's configuration at its Debian path.
copy /etc/ssl/certs/ca-certificates.crt ca-certificates
copy /etc/ssl/openssl.cnf
mkdir -p "$OUT/usr/lib/ssl"
ln -s /etc/ssl/certs "$OUT/usr/lib/ssl/certs"
ln -s /etc/ssl/openssl.cnf "$OUT/usr/lib/ssl/openssl.cnf"

cat >"$OUT/etc/passwd" <<EOF
root:x:0:0:root:/root:/usr/sbin/nologin
sandgate:x:$UID_GID:$UID_GID:sandgate:/var/lib/sandgate:/usr/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
EOF
cat >"$OUT/etc/group" <<EOF
root:x:0:
sandgate:x:$UID_GID:
nogroup:x:65534:
EOF
printf 'passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n' >"$OUT/etc/nsswitch.conf"

install -m 0644 "$HERE/image-default.yaml" "$OUT/etc/sandgate/sandgate.yaml"
install -m 0755 "$HERE/healthcheck.sh" "$OUT/usr/local/lib/sandgate/healthcheck"
chown "$UID_GID:$UID_GID" "$OUT/var/lib/sandgate"
chmod 0750 "$OUT/var/lib/sandgate"
chmod 1777 "$OUT/tmp"
chmod 0700 "$OUT/root"

# Provenance: the Debian packages the files came from, with their copyright
# (licence obligations travel with the binaries) and status stanza.
owner() {
    case "$1" in =*) echo "${1#=}"; return ;; esac
    for p in "$1" "$(readlink -f "$1")"; do
        for q in "$p" "$(echo "$p" | sed -n 's#^/usr/#/#p')" "/usr$p"; do
            [ -n "$q" ] || continue
            o=$(dpkg-query -S "$q" 2>/dev/null | head -1 | cut -d: -f1) && [ -n "$o" ] && { echo "$o"; return; }
        done
    done
    echo "rootfs.sh: no Debian package owns $1" >&2
    return 1
}
PKGS=$(sort -u "$PKG_FILES" | while read -r f; do owner "$f" || echo "?"; done | sort -u)
case "$PKGS" in *"?"*) exit 1 ;; esac
for pkg in $PKGS; do
    dpkg-query -s "$pkg" >"$OUT/var/lib/dpkg/status.d/$pkg"
    if [ -f "/usr/share/doc/$pkg/copyright" ]; then
        mkdir -p "$OUT/usr/share/doc/$pkg"
        cp "/usr/share/doc/$pkg/copyright" "$OUT/usr/share/doc/$pkg/"
    fi
done
rm -f "$PKG_FILES"

# A loader cache, so library lookups do not depend on built-in paths.
mkdir -p "$OUT/etc/ld.so.conf.d"
cp /etc/ld.so.conf "$OUT/etc/ld.so.conf"
cp /etc/ld.so.conf.d/*.conf "$OUT/etc/ld.so.conf.d/" 2>/dev/null || true
ldconfig -r "$OUT"

# Smoke test: the assembled tree runs on its own.
chroot "$OUT" /usr/local/bin/sandgate --version
chroot "$OUT" /bin/bash -c 'exit 0'
chroot "$OUT" /usr/bin/tini --version
ls "$OUT/var/lib/dpkg/status.d"
