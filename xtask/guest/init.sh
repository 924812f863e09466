#!/bin/sh
# VMsync guest init: PID 1 of the initramfs that `cargo xtask guest` builds,
# and again of the root disk (`cargo xtask guest --root-disk`), which holds
# this same script as /init and the marker /etc/vmsync-root-disk.
# Tests read the "vmsync-guest:" markers from the serial console: keep their
# wording. Kernel command line (read from /proc/cmdline, since dotted
# parameters never reach init's argv or environment):
#   vmsync.workload=NAME  counter (default) | video | idle | memtouch | storage | burst |
#                         browse | none | shell, and with the study initramfs
#                         or the root disk the real programs: dav1d | sqlite | python
#   vmsync.seconds=S      how long the workload runs (default 5)
#   vmsync.exec=/path     run this program instead (vmsync.args=a,b,c: its args;
#                         with a named workload, extra args of vmsync-workload)
#   vmsync.test=badaccess read an address outside guest RAM through /dev/mem
#   vmsync.test=cpumodel  print CTR_EL0 and DCZID_EL0 as a program reads them,
#                         and how a DC ZVA ends (comma-separate several tests)
#   root=/dev/vda         boot from the root disk: the initramfs's init loads the
#                         virtio modules, mounts the disk (ext4) and switch_roots
#                         into it; its init runs the workload, and the storage and
#                         sqlite workloads keep their files on it (/var/lib/vmsync).
#                         The kernel itself ignores root= when an initramfs has an
#                         /init, and could not mount the disk anyway (virtio_blk
#                         is a module), so this script reads it.
#   vmsync.test=disk      on /dev/vda: md5 of 1 MiB at 8 MiB, write 1 MiB at
#                         16 MiB (sync, drop caches, md5 read back), discard
#                         1 MiB at 24 MiB; list the virtio devices

# First, so boot time can be measured to this line.
echo "vmsync-guest: init"

# The root disk has its applet links already (made when it is built).
[ -e /bin/mount ] || /bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t devtmpfs dev /dev || echo "vmsync-guest: warning: cannot mount devtmpfs on /dev"
mount -t proc proc /proc || echo "vmsync-guest: warning: cannot mount proc on /proc"
mount -t sysfs sys /sys || echo "vmsync-guest: warning: cannot mount sysfs on /sys"
mount -t tmpfs tmp /tmp || echo "vmsync-guest: warning: cannot mount tmpfs on /tmp"

# The virtio disk's modules, in load order (the cloud kernel builds them as
# modules): a guest given a disk finds /dev/vda once virtio_blk is in. Ones
# already loaded (an init run again after switch_root) are skipped.
for m in virtio virtio_ring virtio_mmio virtio_blk; do
    if [ -f /lib/modules/$m.ko ] && [ ! -d /sys/module/$m ]; then
        insmod /lib/modules/$m.ko || echo "vmsync-guest: warning: cannot load the $m module"
    fi
done

workload=counter
seconds=5
exec_path=
exec_args=
tests=
root=
for arg in $(cat /proc/cmdline 2>/dev/null); do
    case "$arg" in
        vmsync.workload=*) workload=${arg#*=} ;;
        vmsync.seconds=*) seconds=${arg#*=} ;;
        vmsync.exec=*) exec_path=${arg#*=} ;;
        vmsync.args=*) exec_args=$(echo "${arg#*=}" | tr ',' ' ') ;;
        vmsync.test=*) tests=${arg#*=} ;;
        root=*) root=${arg#*=} ;;
    esac
done

# Where the storage and sqlite workloads keep their files: on the root
# disk, under /var/lib/vmsync; without one, their defaults in the tmpfs.
on_disk=
data_dir=
if [ -e /etc/vmsync-root-disk ]; then
    on_disk=1
    data_dir=/var/lib/vmsync
fi

# Mounts the disk $1 and continues from its /init; returns (and the guest
# runs from the initramfs) only when it cannot.
switch_to_disk() {
    # virtio_blk finds the disk asynchronously: wait up to 10 s for its node.
    n=0
    while [ ! -b "$1" ] && [ $n -lt 100 ]; do
        usleep 100000
        n=$((n + 1))
    done
    if [ ! -b "$1" ]; then
        echo "vmsync-guest: warning: root $1: no such disk; staying in the initramfs"
        return
    fi
    # noatime: reading a program must not write the disk (every block
    # written is sent to the standbys).
    if ! mount -t ext4 -o noatime "$1" /mnt; then
        echo "vmsync-guest: warning: root $1: cannot mount it as ext4; staying in the initramfs"
        return
    fi
    if [ ! -x /mnt/init ] || [ ! -e /mnt/etc/vmsync-root-disk ]; then
        umount /mnt
        echo "vmsync-guest: warning: root $1 is not a VMsync root disk (no /init or /etc/vmsync-root-disk); staying in the initramfs"
        return
    fi
    echo "vmsync-guest: root $1 mounted; switching to it"
    # The disk's init mounts its own; our stdio stays open on the
    # initramfs's /dev/console.
    umount /tmp /sys /proc /dev
    exec switch_root /mnt /init
}

if [ -n "$root" ] && [ -z "$on_disk" ]; then
    switch_to_disk "$root"
fi
if [ -n "$on_disk" ]; then
    # The tests read where / is and that it is writable.
    echo "vmsync-guest: root-disk $(grep ' / ' /proc/mounts)"
    mkdir -p "$data_dir"
fi

echo "vmsync-guest: uname $(uname -r)"

interrupts() {
    echo "vmsync-guest: interrupts-begin"
    cat /proc/interrupts 2>&1 || echo "no /proc/interrupts"
    echo "vmsync-guest: interrupts-end"
}

# Every node of the device tree the guest was given, with its compatible.
device_tree() {
    echo "vmsync-guest: dt-begin"
    if [ -d /proc/device-tree ]; then
        # The trailing slash: /proc/device-tree is a symlink into sysfs.
        find /proc/device-tree/ -type d | sort | while read -r node; do
            path=${node#/proc/device-tree}
            if [ -f "$node/compatible" ]; then
                compat=$(tr '\0' ' ' < "$node/compatible")
                echo "dt-node ${path:-/} compatible=${compat% }"
            else
                echo "dt-node ${path:-/}"
            fi
        done
    else
        echo "no /proc/device-tree (kernel without device-tree support, or not booted with one)"
    fi
    echo "vmsync-guest: dt-end"
}

run_workload() {
    if [ -n "$exec_path" ]; then
        name=$exec_path
        set -- "$exec_path" $exec_args
    elif [ "$workload" = none ]; then
        return
    elif [ "$workload" = shell ]; then
        name=shell
        set -- setsid cttyhack /bin/sh
    elif [ "$workload" = python ]; then
        # Debian's python3.11 runs the browse script: -S (no site module)
        # and -B (no .pyc writes) keep start-up to builtin modules; a fixed
        # hash seed gives the same dict layouts on every run.
        name=python
        if [ ! -x /usr/bin/python3 ]; then
            echo "vmsync-guest: no /usr/bin/python3: the python workload needs the study initramfs or the root disk"
        fi
        set -- env PYTHONHASHSEED=0 /usr/bin/python3 -B -S /usr/share/vmsync/browse.py --seconds "$seconds"
    else
        # dav1d and sqlite are drivers in vmsync-workload around Debian's
        # dav1d and sqlite3 (study initramfs and root disk only).
        name=$workload
        set -- /bin/vmsync-workload "$workload" --seconds "$seconds"
        case "$workload" in
            storage | sqlite) [ -n "$data_dir" ] && set -- "$@" --dir "$data_dir/$workload" ;;
        esac
        # Last, so a --dir among them wins.
        set -- "$@" $exec_args
    fi
    echo "vmsync-guest: workload $name start"
    "$@"
    echo "vmsync-guest: workload $name end rc=$?"
}

interrupts
device_tree
run_workload
interrupts

case ",$tests," in
    *,badaccess,*)
        # Nothing lives at 0x0a000000 on the VMsync board: the hypervisor
        # reflects the read as an external abort, so devmem dies of SIGBUS
        # (rc 135). Under plain QEMU a virtio-mmio device answers instead.
        devmem 0x0a000000 32
        echo "vmsync-guest: badaccess rc=$?"
        ;;
esac

case ",$tests," in
    *,cpumodel,*)
        /bin/vmsync-workload cpuprobe
        echo "vmsync-guest: cpumodel rc=$?"
        ;;
esac

# The disk test (qemu-tests/tests/disk.rs reads these lines and the image).
disk_test() {
    echo "vmsync-guest: virtio-devices $(ls /sys/bus/virtio/devices 2>/dev/null | wc -l):$(for d in /sys/bus/virtio/devices/*; do [ -e "$d/device" ] && printf ' %s=%s' "${d##*/}" "$(cat "$d/device")"; done)"
    if [ ! -b /dev/vda ]; then
        echo "vmsync-guest: disk none (no /dev/vda)"
        return
    fi
    echo "vmsync-guest: disk size $(blockdev --getsize64 /dev/vda 2>/dev/null || cat /sys/block/vda/size)"
    # What the host put at 8 MiB.
    echo "vmsync-guest: disk host-md5 $(dd if=/dev/vda bs=4096 skip=2048 count=256 2>/dev/null | md5sum | cut -d' ' -f1)"
    # Our own bytes at 16 MiB, flushed (conv=fsync: a FLUSH to the disk),
    # then read back from the disk, not the page cache.
    yes "vmsync guest wrote this line" | head -c 1048576 > /tmp/disk-pattern
    echo "vmsync-guest: disk wrote-md5 $(md5sum < /tmp/disk-pattern | cut -d' ' -f1)"
    dd if=/tmp/disk-pattern of=/dev/vda bs=4096 seek=4096 conv=fsync 2>/dev/null
    echo "vmsync-guest: disk write rc=$?"
    sync
    echo 3 > /proc/sys/vm/drop_caches
    echo "vmsync-guest: disk readback-md5 $(dd if=/dev/vda bs=4096 skip=4096 count=256 2>/dev/null | md5sum | cut -d' ' -f1)"
    if command -v blkdiscard > /dev/null; then
        blkdiscard -o 25165824 -l 1048576 /dev/vda
        echo "vmsync-guest: disk discard rc=$?"
    else
        echo "vmsync-guest: disk discard skipped (no blkdiscard in busybox)"
    fi
    sync
}

case ",$tests," in
    *,disk,*) disk_test ;;
esac

if [ -n "$on_disk" ]; then
    # poweroff -f unmounts nothing: write everything out and leave the
    # filesystem clean (e2fsck finds no journal to replay).
    sync
    mount -o remount,ro / || echo "vmsync-guest: warning: cannot remount / read-only"
    echo "vmsync-guest: root-disk clean"
fi

echo "vmsync-guest: poweroff"
poweroff -f
# If power-off is not possible, PID 1 must not exit (that panics the kernel).
echo "vmsync-guest: poweroff failed"
while :; do sleep 3600; done
