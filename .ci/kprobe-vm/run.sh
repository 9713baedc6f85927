#!/usr/bin/env bash
# Real kprobes: boot Debian's stock kernel (kprobe events built in) under qemu with TCG and
# a busybox initramfs holding dprobe and its C library, run the article's kernel examples, an
# in-kernel (BPF) count on a kprobe, and the checks of dprobe's figures on kprobes (stop
# signals at 110 moments of the startup, two sessions at once, --comm and -p counts, an output
# that cannot be written) inside (`init`), and check their output on the serial console.
#   .ci/kprobe-vm/run.sh [WORKDIR]     (default target/kprobe-vm; downloads are kept there)
# Packages are fetched with `apt-get download` and unpacked, not installed: no initramfs
# hooks, and the machine's own qemu-utils stays.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
work=${1:-$root/target/kprobe-vm}
mkdir -p "$work/debs" "$work/root"
cd "$work"

start=$(date +%s)
if [ ! -x root/usr/bin/qemu-system-x86_64 ] || ! ls root/boot/vmlinuz-* >/dev/null 2>&1; then
    apt-get update -qq
    kernel=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
    deps=$(apt-get install -s --no-install-recommends qemu-system-x86 busybox-static | awk '/^Inst/{print $2}')
    (cd debs && apt-get -qq -o APT::Sandbox::User=root download "$kernel" $deps busybox-static >/dev/null)
    for d in debs/*.deb; do
        case $d in
            debs/linux-image-*) dpkg-deb --fsys-tarfile "$d" | tar -x -C root --wildcards './boot/vmlinuz-*' ;;
            *) dpkg-deb -x "$d" root ;;
        esac
    done
fi
R=$work/root
export LD_LIBRARY_PATH=$R/usr/lib/x86_64-linux-gnu:$R/lib/x86_64-linux-gnu
vmlinuz=$(ls "$R"/boot/vmlinuz-* | head -1)
# The uncompressed kernel boots through its PVH entry: no XZ decompression under TCG.
[ -f vmlinux ] || python3 -c '
import lzma, sys
d = open(sys.argv[1], "rb").read()
i = d.find(b"\xfd7zXZ\x00")
open("vmlinux", "wb").write(lzma.LZMADecompressor().decompress(d[i:]))' "$vmlinuz"

# The dprobe the tests run (a release build of its own, static for the guest, took 5 of CI's
# 30 minutes), with the loader and libraries it links: the guest has no C library of its
# own. Its debug information stays on the host. `.ci/run` builds it first and sets
# DPROBE_VM_BUILT, since the tests' cargo holds the build directory's lock while they run.
[ "${DPROBE_VM_BUILT:-}" = 1 ] || (cd "$root" && cargo test --workspace --no-run -q)
dprobe=$root/target/debug/dprobe

initrd=$(mktemp -d)
mkdir -p "$initrd/bin"
cp "$R/bin/busybox" "$initrd/bin/busybox"
cp "$here/init" "$initrd/init"
objcopy --strip-debug "$dprobe" "$initrd/dprobe"
for lib in $(ldd "$dprobe" | grep -Eo '/[^ ]+'); do
    mkdir -p "$initrd$(dirname "$lib")"
    cp -L "$lib" "$initrd$lib"
done
chmod 755 "$initrd/init" "$initrd/bin/busybox" "$initrd/dprobe"
(cd "$initrd" && find . | "$R/bin/busybox" cpio -o -H newc 2>/dev/null) | gzip -1 >initrd.cpio.gz
rm -rf "$initrd"

# no_timer_check: an emulated CPU on a busy host can miss the kernel's boot-time check of the
# IO-APIC timer, which then panics ("IO-APIC + timer doesn't work"); the guest needs no such check.
timeout 1200 "$R/usr/bin/qemu-system-x86_64" -L "$R/usr/share/qemu" -L "$R/usr/share/seabios" \
    -accel tcg -cpu max -M pc -m 512M -smp 1 -kernel vmlinux -initrd initrd.cpio.gz \
    -append "console=ttyS0 panic=-1 quiet no_timer_check" \
    -nodefaults -display none -serial stdio -no-reboot -nic none </dev/null | tr -d '\r' >serial.log || true

cat serial.log
ok=1
check() { grep -Eq -- "$1" serial.log || { echo "MISSING: $1"; ok=0; }; }
check '^SCHED: kernel:schedule +[1-9][0-9]* '
check '^SCHED: dprobe: system-wide trace ended after .* \(--duration is over\)'
check "^OPEN: process 'cat' \([0-9]+\) call do_sys_openat2\(path=\"/etc/hostname\", flags=0x8000, mode=0x0\)"
check '^OPEN: hello'
check "^FAIL: process 'cat' \([0-9]+\) do_sys_openat2 returns -2 \(ENOENT\)"
check '^FAIL: kernel:do_sys_openat2%return +[0-9]+ +[0-9]+ +[0-9]+ +[0-9]+'
check '^STRINGS: .* call do_sys_openat2\(path="/tmp/a{251}"\.\.\., bad=\(fault\)\)'
check '^BPF: dprobe: `kernel:do_sys_openat2 dfd=\$arg1:s32`: its hits are counted in the kernel \(BPF\)'
check '^BPF: cat +1$'
check '^BPF: .*aggregated in the kernel \(BPF\): no per-event records reached dprobe'
check '^CTRLC: try 99 '
check '^CTRLC: .* status 0 '
if grep -E '^CTRLC: ' serial.log | grep -Ev 'status (0|130) left \[\]$'; then
    echo "MISSING: every SIGINT ends dprobe (0, or 130 before it caught it) and leaves no event"
    ok=0
fi
check '^CTRLTERM: try 9 '
if grep -E '^CTRLTERM: ' serial.log | grep -Ev 'status (0|143) left \[\]$'; then
    echo "MISSING: every SIGTERM ends dprobe (0, or 143 before it caught it) and leaves no event"
    ok=0
fi
# Two sessions at once: each its own share, exactly, with no gap to explain.
for tag in SHARE-c SHARE-c--no-bpf SHARE; do
    for who in first:15 second:5; do
        n=${who#*:} who=${who%:*}
        check "^$tag-$who: status 0$"
        check "^$tag-$who: kernel:ksys_sync +$n "
        check "^$tag-$who: kernel:ksys_sync%return +$n +$n "
    done
done
check '^SHARE: events 15 5$'
if grep -E '^SHARE' serial.log | grep -E 'the kernel counted|not received|lost'; then
    echo "MISSING: two sessions at once leave no gap to explain"
    ok=0
fi
for tag in COMM-c COMM-c--no-bpf; do
    check "^$tag: kernel:do_sys_openat2 +3 "
    check "^$tag:   kernel:do_sys_openat2: HITS counts of threads named cat received; the kernel counted [0-9]+ hits"
done
for tag in PID-c PID-c--no-bpf; do
    check "^$tag: status 0 server [0-9]+$"
    check "^$tag: kernel:do_sys_openat2 +7 "
done
[ "$(grep -c '^FULL: status 1$' serial.log)" = 2 ] || { echo "MISSING: FULL: status 1, twice"; ok=0; }
[ "$(grep -c '^FULL: dprobe: cannot write to /dev/full: No space left on device' serial.log)" = 2 ] ||
    { echo "MISSING: FULL: the error, twice"; ok=0; }
[ "$(grep -c '^FULL: left \[\]$' serial.log)" = 2 ] || { echo "MISSING: FULL: no event left, twice"; ok=0; }
check '^GUEST: kprobe_events left: \[\]'
check '^GUEST: DONE'
echo "kprobe VM test: $(( $(date +%s) - start )) s"
[ $ok = 1 ] && echo "KPROBE VM TEST: PASS" || { echo "KPROBE VM TEST: FAIL"; exit 1; }
