#!/bin/sh
# Prepare a fresh Debian 12 (bookworm) machine for imgctl: install every Debian package the
# project uses and fetch the demo kernel into .cache/demo/. Idempotent; run as root; no prompts.
set -eu

REPO=$(cd "$(dirname "$0")/.." && pwd)
CACHE="$REPO/.cache"
DEMO="$CACHE/demo"

say() { printf 'setup: %s\n' "$*"; }

# Debian packages, one concern per line.
PACKAGES="
systemd systemd-boot-efi systemd-container
cryptsetup-bin erofs-utils squashfs-tools fdisk dosfstools mtools
swtpm swtpm-tools tpm2-tools libtss2-dev pkg-config libsqlite3-dev postgresql
sbsigntool osslsigncode openssl binutils softhsm2
qemu-system-x86 qemu-utils ovmf
busybox-static cpio kmod fsverity device-tree-compiler
python3 python3-cryptography python3-pip ca-certificates
mmdebstrap
"

if [ "$(id -u)" -ne 0 ]; then
    echo "setup: run as root (it installs Debian packages)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive

missing=""
for p in $PACKAGES; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing="$missing $p"
    fi
done

# Refresh the package lists once if they are older than a day (or absent).
lists_stale() {
    [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -mtime -1 2>/dev/null | head -n 1)" ]
}
updated=no
apt_update() {
    if [ "$updated" = no ]; then
        say "apt-get update"
        apt-get update -q
        updated=yes
    fi
}
if lists_stale; then
    apt_update
fi
# What apt would remove to install $2...: "name version" lines (a dry run; nothing changes).
# $1 is the release to prefer ("" for the default). A dry run that apt cannot solve at all is
# reported as such and stops setup: an install that would fail must not be attempted.
removals() {
    local rel=$1 out
    shift
    # shellcheck disable=SC2086
    if ! out=$(apt-get install -s -q --no-install-recommends ${rel:+-t "$rel"} "$@" 2>&1); then
        echo "setup: apt cannot install${rel:+ (from $rel)}: $*" >&2
        echo "$out" | grep -E '^ |^E:' | sed 's/^/setup:   /' >&2
        exit 1
    fi
    echo "$out" | sed -n 's/^Remv \([^ ]*\) \[\([^]]*\)\].*/\1 \2/p'
}
source_of() { apt-cache show --no-all-versions "$1" 2>/dev/null | sed -n 's/^Source: \([^ ]*\).*/\1/p' | head -n 1; }
BACKPORTS_LIST=/etc/apt/sources.list.d/imgctl-bookworm-backports.sources
# The source packages this machine already has from bookworm-backports (e.g. qemu on the stock
# image, whose qemu-utils is 10.0 ~bpo12).
bpo_sources() {
    dpkg-query -W -f='${db:Status-Abbrev} ${Version} ${source:Package}\n' 2>/dev/null |
        awk '$1 ~ /^ii/ && $2 ~ /~bpo12/ {print $3}' | sort -u
}
refuse_removals() {
    if [ -n "$2" ]; then
        echo "setup: installing $1 would remove packages this machine has:" >&2
        echo "$2" | sed 's/^/setup:   /' >&2
        echo "setup: install a compatible set of these by hand (nothing was changed)" >&2
        exit 1
    fi
}

if [ -n "$missing" ]; then
    # Never remove what the machine already has. A stock machine may carry a newer build from
    # bookworm-backports (qemu-utils 10.0 ~bpo12) that bookworm's package of the same source
    # (qemu-system-x86 7.2) conflicts with: then the missing packages of that source are installed
    # from bookworm-backports, in their own apt run with bookworm-backports preferred, so that
    # their dependencies (qemu-system-common, qemu-system-data, seabios) come from there too.
    # Everything else comes from bookworm. Either run stops before changing anything if apt would
    # remove a package or cannot solve the set.
    bpo=$(bpo_sources)
    from_bpo=""
    rest=""
    if [ -n "$bpo" ]; then
        if ! grep -qs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/*; then
            say "adding bookworm-backports (the machine has packages from it, of: $(echo "$bpo" | tr '\n' ' '))"
            cat > "$BACKPORTS_LIST" <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
            updated=no
            apt_update
        fi
    fi
    for p in $missing; do
        if [ -n "$bpo" ] && echo "$bpo" | grep -qx "$(source_of "$p")"; then
            from_bpo="$from_bpo $p"
        else
            rest="$rest $p"
        fi
    done
    if [ -n "$from_bpo" ]; then
        # shellcheck disable=SC2086
        r=$(removals bookworm-backports $from_bpo)
        refuse_removals "$from_bpo (from bookworm-backports)" "$r"
        say "installing from bookworm-backports:$from_bpo"
        # shellcheck disable=SC2086
        apt-get install -y -q --no-install-recommends --no-remove -t bookworm-backports $from_bpo
    fi
    if [ -n "$rest" ]; then
        # shellcheck disable=SC2086
        r=$(removals "" $rest)
        refuse_removals "$rest" "$r"
        say "installing:$rest"
        # shellcheck disable=SC2086
        apt-get install -y -q --no-install-recommends --no-remove $rest
    fi
else
    say "all Debian packages already installed"
fi

# --- PyPI: virt-fw-vars (virt-firmware), which `imgctl vm --secure-boot --enroll DIR` uses to
# enrol our PK/KEK/db into OVMF's variable store. Pinned; its dependencies are pefile and
# python3-cryptography (the Debian package above). ---
VIRT_FIRMWARE=26.10
if ! python3 -m pip show virt-firmware 2>/dev/null | grep -qx "Version: $VIRT_FIRMWARE"; then
    say "pip install virt-firmware==$VIRT_FIRMWARE"
    python3 -m pip install -q --break-system-packages "virt-firmware==$VIRT_FIRMWARE" ||
        python3 -m pip install -q "virt-firmware==$VIRT_FIRMWARE"
fi
command -v virt-fw-vars >/dev/null 2>&1 || { echo "setup: virt-fw-vars is not on PATH after pip install" >&2; exit 1; }

# --- The demo kernel: the linux-image-*-amd64 package that linux-image-amd64 depends on. ---
KPKG=$(apt-cache depends linux-image-amd64 2>/dev/null |
    sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*-amd64\)$/\1/p' | head -n 1)
if [ -z "$KPKG" ]; then
    echo "setup: cannot resolve the kernel package linux-image-amd64 depends on" >&2
    exit 1
fi
KVER=${KPKG#linux-image-}
mkdir -p "$CACHE/debs"
download_kernel() {
    # apt-get download runs unsandboxed as root here; its warning about that is noise.
    (cd "$CACHE/debs" && apt-get download -q "$KPKG" 2>&1 | grep -v 'unsandboxed' >&2; true)
    ls "$CACHE/debs/${KPKG}_"*.deb >/dev/null 2>&1
}
if ! ls "$CACHE/debs/${KPKG}_"*.deb >/dev/null 2>&1; then
    say "downloading $KPKG"
    # An old package list may name a version the mirror no longer has: refresh once and retry.
    if ! download_kernel; then
        apt_update
        KPKG=$(apt-cache depends linux-image-amd64 2>/dev/null |
            sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*-amd64\)$/\1/p' | head -n 1)
        KVER=${KPKG#linux-image-}
        download_kernel || { echo "setup: apt-get download $KPKG failed" >&2; exit 1; }
    fi
else
    say "$KPKG already downloaded"
fi
DEB=$(ls "$CACHE/debs/${KPKG}_"*.deb | sort | tail -n 1)

if [ ! -f "$DEMO/.unpacked-$(basename "$DEB")" ]; then
    say "unpacking $(basename "$DEB")"
    rm -rf "$DEMO"
    mkdir -p "$DEMO/root"
    dpkg-deb -x "$DEB" "$DEMO/root"
    cp "$DEMO/root/boot/vmlinuz-$KVER" "$DEMO/vmlinuz"
    echo "$KVER" > "$DEMO/kernel-version"

    # The TPM driver: built in, or modules (with their dependencies from modules.dep) in
    # .cache/demo/modules/ with a load-order file; the demo /init insmods them from /lib/modules/.
    MODDIR="$DEMO/root/lib/modules/$KVER"
    mkdir -p "$DEMO/modules"
    : > "$DEMO/modules/load-order"
    for m in tpm tpm_tis_core tpm_tis tpm_crb; do
        if grep -qE "(^|/)$m\.ko" "$MODDIR/modules.builtin" 2>/dev/null; then
            say "$m is built into the kernel"
            continue
        fi
        # The .deb ships no modules.dep (depmod runs at install time): generate it.
        [ -f "$MODDIR/modules.dep" ] || depmod -b "$DEMO/root" "$KVER"
        line=$(grep -E "(^|/)$m\.ko(\.[a-z]+)?:" "$MODDIR/modules.dep" || true)
        [ -n "$line" ] || { say "$m: not in this kernel"; continue; }
        # modules.dep: "mod: dep1 dep2" where deps are listed nearest first; load them in reverse.
        target=${line%%:*}
        deps=$(echo "${line#*:}" | tr ' ' '\n' | sed '/^$/d' | tac)
        for f in $deps $target; do
            name=$(basename "$f")
            case "$name" in
                *.ko.xz) out=${name%.xz}; xz -dc "$MODDIR/$f" > "$DEMO/modules/$out" ;;
                *.ko.zst) out=${name%.zst}; zstd -qdc "$MODDIR/$f" > "$DEMO/modules/$out" ;;
                *) out=$name; cp "$MODDIR/$f" "$DEMO/modules/$out" ;;
            esac
            grep -qx "$out" "$DEMO/modules/load-order" || echo "$out" >> "$DEMO/modules/load-order"
        done
    done
    rm -rf "$DEMO/root"
    touch "$DEMO/.unpacked-$(basename "$DEB")"
else
    say "demo kernel already unpacked"
fi
say "demo kernel: $DEMO/vmlinuz ($KVER)"
if [ -s "$DEMO/modules/load-order" ]; then
    say "TPM modules for the demo initrd (load order): $(tr '\n' ' ' < "$DEMO/modules/load-order")"
fi

# --- systemd 257 (Debian 13, trixie): a chroot with the real 257 peers, cached and reused. ---
# The tests run systemd-measure, ukify, systemd-pcrlock, systemd-repart and systemd-dissect 257
# inside it and take the 257 stub from it. Made with mmdebstrap from Debian's registry; about
# 2.5 minutes and 275 MB on a fresh machine. The packages are pinned by name, and the tests check
# the version they find (`.cache/trixie-257/VERSION`), never "whatever is current".
T257="$CACHE/trixie-257"
T257_PACKAGES="systemd,systemd-boot-efi,systemd-ukify,python3-pefile,systemd-container,systemd-repart,cryptsetup-bin,tpm2-tools,binutils,openssl"
if [ ! -f "$T257/.complete" ] || [ "$(cat "$T257/.complete")" != "$T257_PACKAGES" ]; then
    command -v mmdebstrap >/dev/null 2>&1 || apt-get install -y -q --no-install-recommends --no-remove mmdebstrap
    say "making the Debian 13 chroot for the systemd 257 peers ($T257)"
    rm -rf "$T257" "$T257.tmp"
    mmdebstrap --quiet --variant=apt --include="$T257_PACKAGES" trixie "$T257.tmp" http://deb.debian.org/debian
    chroot "$T257.tmp" dpkg-query -W -f='${Version}\n' systemd > "$T257.tmp/VERSION"
    echo "$T257_PACKAGES" > "$T257.tmp/.complete"
    mv "$T257.tmp" "$T257"
else
    say "Debian 13 chroot already made: systemd $(cat "$T257/VERSION")"
fi

# --- fwupd (Debian 13) for the CHID cross-check: `fwupdtool hwids` computes Computer Hardware IDs
# from an SMBIOS table (read through FWUPD_SYSFSFWDIR) independently of systemd and imgctl; the
# tests compare `imgctl chid` with it (tests/systemd257.rs, and on the table a booted guest read,
# tests/vm.rs). A chroot of its own so the systemd 257 one stays as it is; about a minute and
# 240 MB. The tests check the version (`.cache/trixie-fwupd-chid/VERSION`, fwupd 2.x).
TFW="$CACHE/trixie-fwupd-chid"
if [ ! -f "$TFW/.complete" ]; then
    command -v mmdebstrap >/dev/null 2>&1 || apt-get install -y -q --no-install-recommends --no-remove mmdebstrap
    say "making the Debian 13 chroot with fwupd ($TFW)"
    rm -rf "$TFW" "$TFW.tmp"
    mmdebstrap --quiet --variant=apt --include=fwupd trixie "$TFW.tmp" http://deb.debian.org/debian
    chroot "$TFW.tmp" dpkg-query -W -f='${Version}\n' fwupd > "$TFW.tmp/VERSION"
    echo fwupd > "$TFW.tmp/.complete"
    mv "$TFW.tmp" "$TFW"
else
    say "fwupd chroot already made: fwupd $(cat "$TFW/VERSION")"
fi

# --- Rust tooling ---
if command -v cargo >/dev/null 2>&1; then
    # scripts/fuzz.sh runs the fuzz targets with cargo-fuzz (and the nightly toolchain).
    if ! cargo fuzz --version >/dev/null 2>&1; then
        say "installing cargo-fuzz"
        cargo install -q cargo-fuzz --locked || say "cargo install cargo-fuzz failed (fuzzing only)"
    else
        say "cargo-fuzz present"
    fi
else
    say "cargo not found: install Rust with rustup (https://rustup.rs)"
fi
say "done"
