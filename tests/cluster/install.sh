#!/bin/bash
# Installs what the cluster tests need (root, Debian 12) and builds the QEMU test guest into
# tests/cluster/build/: a Debian cloud kernel and a busybox initramfs whose /init is
# guest-init.sh. Idempotent: a second run installs and downloads nothing.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
build=$here/build
# python3: the fake Xen toolstack runs with Debian's interpreter inside the fake hosts, where
# the per-host /root hides any pyenv. ruby, ruby-xmlrpc: the Ruby XML-RPC client of the TLS test.
# postgresql: initdb/pg_ctl for the throw-away server of the PostgreSQL and fail-over tests.
# chromium: the browser the web console tests drive with Playwright (no browser download).
packages=(iproute2 mount openssh-server openssh-client qemu-system-x86 qemu-utils busybox-static
          cpio python3 ruby ruby-xmlrpc postgresql chromium)
# Guest modules, in dependency order (insmod has no resolver): the power button and evdev let
# busybox acpid turn an ACPI power-button press (QMP system_powerdown) into a poweroff.
guest_modules=(kernel/drivers/input/evdev.ko kernel/drivers/acpi/button.ko)

updated=
apt_update() {
    if [ -z "$updated" ]; then
        apt-get update -qq
        updated=1
    fi
}

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' \
        || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    apt_update
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

mkdir -p "$build"
if [ ! -s "$build/vmlinuz" ]; then
    apt_update
    kpkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
    [ -n "$kpkg" ] || { echo "install.sh: no cloud kernel package found" >&2; exit 1; }
    rm -rf "$build/kernel" "$build"/*.deb
    # Downloaded as root: the _apt user may not be allowed to write into the work tree.
    (cd "$build" && apt-get -q -o APT::Sandbox::User=root download "$kpkg")
    dpkg -x "$build"/"$kpkg"_*.deb "$build/kernel"
    rm -f "$build"/*.deb
    cp "$build"/kernel/boot/vmlinuz-* "$build/vmlinuz.tmp"
    mv "$build/vmlinuz.tmp" "$build/vmlinuz"
fi

# Rebuilt whenever guest-init.sh or the kernel (whose modules it carries) changes.
if [ ! -s "$build/initrd.gz" ] || [ "$here/guest-init.sh" -nt "$build/initrd.gz" ] \
        || [ "$build/vmlinuz" -nt "$build/initrd.gz" ]; then
    root=$build/initramfs
    rm -rf "$root"
    mkdir -p "$root"/{bin,dev,proc,sys,etc/acpi/PWRF,lib/modules}
    cp /bin/busybox "$root/bin/busybox"
    install -m 755 "$here/guest-init.sh" "$root/init"
    i=0
    for m in "${guest_modules[@]}"; do
        # Numbered so that the init's glob loads them in this order.
        cp "$build"/kernel/lib/modules/*/"$m" "$root/lib/modules/$i-$(basename "$m")"
        i=$((i + 1))
    done
    # busybox acpid runs /etc/acpi/<event> for the power button's event PWRF/00000080.
    printf '#!/bin/sh\npoweroff -f\n' > "$root/etc/acpi/PWRF/00000080"
    chmod 755 "$root/etc/acpi/PWRF/00000080"
    (cd "$root" && find . | cpio -o -H newc --quiet | gzip -9) > "$build/initrd.gz.tmp"
    mv "$build/initrd.gz.tmp" "$build/initrd.gz"
    rm -rf "$root"
fi
echo "install.sh: guest kernel $build/vmlinuz, initramfs $build/initrd.gz"
