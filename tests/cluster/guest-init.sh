#!/bin/busybox sh
# /init of the test guest. Its serial output is what the cluster tests read to prove that a
# guest kept running across a live migration or save/restore: one GUEST-BOOTED line per boot,
# then a tick counter that continues where it stopped.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

# The cloud kernel ships the power button and evdev as modules; acpid needs both to see
# QMP system_powerdown (xm shutdown). acpid exits at once if it cannot open its log file, and
# this initramfs has no /var/log.
for m in /lib/modules/*.ko; do
    [ -e "$m" ] && insmod "$m"
done
acpid -l /dev/null

echo "GUEST-BOOTED boot_id=$(cat /proc/sys/kernel/random/uuid)" > /dev/ttyS0
n=0
while :; do
    echo "tick $n" > /dev/ttyS0
    n=$((n + 1))
    sleep 0.2
done
