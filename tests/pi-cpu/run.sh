#!/usr/bin/env bash
# cardcam on a Raspberry Pi's CPU, without a Pi: install.sh and the device tests in a Debian
# Bookworm root for arm64 (like Raspberry Pi OS 64-bit) and/or armhf (armv7l, like the 32-bit OS),
# run through qemu-user and binfmt_misc, compared with the same predictions made here on x86.
#
# usage: sudo tests/pi-cpu/run.sh [arm64|armhf|all]        (default: all, one arch after the other)
#
# Per arch: a fresh copy of a cached base root gets this checkout's tracked files in /cardcam;
# there `./install.sh` runs for real (no systemd in the root: it must skip the service), and again
# (it must change nothing); then the INSTALLED `cardcam predict --json` on device/samples/*.png and
# 100 camera-like MNIST frames (frames.py) with every models/*.npz, --runtime numpy and tflite;
# `cardcam doctor`; the device tests with the installed interpreter (pytest, hypothesis and tqdm in
# a --target dir outside the installed venv); `./install.sh --uninstall`. The same predictions are
# made here on x86. One summary line per arch; exit status 1 if any check failed.
#
# Checks: install (twice), doctor, every test and uninstall pass (skips are counted); NumPy labels
# (and "nothing to read" reasons) identical to x86's, probabilities within 1e-4; int8 TFLite labels
# agree with x86's on >= 99 % of the frames.
#
# Environment:
#   PI_CPU_CACHE       where the base roots live, one per arch (default /var/cache/cardcam-pi-cpu).
#                      A missing base root is copied from the shared helper's root
#                      (${XDG_CACHE_HOME:-~/.cache}/cardcam-ARCH, if it has python3 and no install in
#                      it) or else made with debootstrap (a few minutes, under emulation).
#   PI_CPU_REBUILD=1   throw the base root away and make it again (the "refresh").
#   PI_CPU_HOST_PYTHON the x86 reference interpreter (default: .venv/bin/python of this checkout,
#                      as .ci/run makes it; it needs a TFLite runtime for the int8 reference).
# Logs and results: $PI_CPU_CACHE/out/ARCH/ (run.log, predictions, doctor, junit.xml).
set -euo pipefail

case ${1:-all} in
    arm64 | armhf) arches=("$1") ;;
    all) arches=(arm64 armhf) ;;
    *) echo "usage: $0 [arm64|armhf|all]" >&2; exit 2 ;;
esac
[ "$(id -u)" -eq 0 ] || { echo "$0: needs root (debootstrap, chroot, mounts)" >&2; exit 2; }

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(git -C "$here" rev-parse --show-toplevel)
cache=${PI_CPU_CACHE:-/var/cache/cardcam-pi-cpu}
host_python=${PI_CPU_HOST_PYTHON:-$repo/.venv/bin/python}
[ -x "$host_python" ] || { echo "$0: no x86 reference interpreter at $host_python (set PI_CPU_HOST_PYTHON)" >&2; exit 2; }

now() { date +%s; }

# qemu-user + binfmt_misc, and debootstrap for making roots.
need=()
command -v qemu-aarch64-static >/dev/null || need+=(qemu-user-static binfmt-support)
command -v debootstrap >/dev/null || need+=(debootstrap)
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
[ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc

mirror() {  # the host's Debian mirror, so a local mirror or proxy serves the root too
    local uri
    uri=$(grep -hm1 '^URIs:.*debian/\?$' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' || true)
    echo "${uri:-http://deb.debian.org/debian}"
}

# The base root for $1: made once, then only copied. Prints how it came to be.
base_root() {
    local arch=$1 base=$cache/$1 seed=${XDG_CACHE_HOME:-$HOME/.cache}/cardcam-$1
    [ "${PI_CPU_REBUILD:-0}" != 1 ] || rm -rf --one-file-system "$base"
    if [ -x "$base/usr/bin/python3" ]; then
        echo "cached"
        return
    fi
    rm -rf --one-file-system "$base.tmp"
    mkdir -p "$cache"
    if [ "${PI_CPU_REBUILD:-0}" != 1 ] && [ -x "$seed/usr/bin/python3" ] && [ ! -e "$seed/opt/cardcam" ]; then
        cp -ax "$seed" "$base.tmp"  # -x: not the /proc and /dev mounted in it
        rm -rf "$base.tmp/cardcam"
        echo "copied from $seed"
    else
        debootstrap --arch="$arch" --variant=minbase \
            --include=python3,python3-venv,python3-pip,ca-certificates,sudo,procps \
            bookworm "$base.tmp" "$(mirror)" >/dev/null
        echo "debootstrap"
    fi
    mv "$base.tmp" "$base"
}

mounted=()
unmount_all() {
    local m
    for m in "${mounted[@]}"; do umount -R "$m" 2>/dev/null || umount -lR "$m" 2>/dev/null || true; done
    mounted=()
}
trap unmount_all EXIT

run_arch() {
    local arch=$1 q root out t0 t1 how rc=0
    case $arch in arm64) q=qemu-aarch64 ;; armhf) q=qemu-arm ;; esac
    [ -e /proc/sys/fs/binfmt_misc/$q ] || update-binfmts --enable $q
    out=$cache/out/$arch
    rm -rf "$out" && mkdir -p "$out"
    t0=$(now)
    how=$(base_root "$arch")
    t1=$(now)
    # (set -e does not stop a function called in an || list, as run_arch is: check by hand.)
    [ -x "$cache/$arch/usr/bin/python3" ] || { echo "$arch: could not make the base root $cache/$arch" >&2; return 1; }
    echo "$arch: base root $how ($((t1 - t0)) s)"
    printf "root_seconds=%s\nroot_how=%s\n" $((t1 - t0)) "$how" >"$out/host.env"

    # A throwaway copy per run: install.sh meets a clean system every time, the base stays clean.
    root=$cache/$arch-run
    [ ! -d "$root" ] || { umount -R "$root/proc" "$root/dev" 2>/dev/null || true; rm -rf --one-file-system "$root"; }
    cp -ax "$cache/$arch" "$root"
    cp /etc/resolv.conf "$root/etc/resolv.conf"
    cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"  # a proxy's CA too
    mount --bind /proc "$root/proc" && mounted+=("$root/proc")
    mount --rbind /dev "$root/dev" && mounted+=("$root/dev")
    mkdir -p "$root/cardcam"
    git -C "$repo" ls-files -z | tar cf - -C "$repo" --null -T - | tar xf - -C "$root/cardcam"
    cp "$here/in-root.sh" "$root/var/tmp/pi-cpu-in-root.sh"
    # 100 camera-like MNIST frames besides the 8 samples, so the agreement figures mean something.
    PYTHONPATH=$repo "$host_python" "$here/frames.py" "$out/frames"
    cp -r "$out/frames" "$root/var/tmp/pi-cpu-frames"
    mkdir -p "$root/var/tmp/pi-cpu-out"

    echo "$arch: installing and testing in $root (log: $out/run.log)"
    # A clean environment: none of the host's pip settings (x86 wheel dirs, constraints) leak in.
    chroot "$root" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        HOME=/root LANG=C.UTF-8 TERM=dumb DEBIAN_FRONTEND=noninteractive \
        PIP_CERT=/etc/ssl/certs/ca-certificates.crt PIP_DISABLE_PIP_VERSION_CHECK=1 \
        bash -c 'cd /cardcam && bash /var/tmp/pi-cpu-in-root.sh /var/tmp/pi-cpu-out' >"$out/run.log" 2>&1 || rc=$?
    cp -r "$root/var/tmp/pi-cpu-out/." "$out/"
    echo "in_root_status=$rc" >>"$out/host.env"
    unmount_all

    # The x86 reference: the same commands with this checkout's code.
    local model name runtime
    for model in "$repo"/models/*.npz; do
        name=$(basename "$model" .npz)
        for runtime in numpy tflite; do
            (cd "$repo" && PYTHONPATH=$repo "$host_python" -m device predict --json --runtime "$runtime" \
                --model "models/$name.npz" device/samples/*.png "$out"/frames/*.png >"$out/x86-$runtime-$name.jsonl" 2>"$out/x86-$runtime-$name.err") || true
        done
    done
    echo "total_seconds=$(($(now) - t0))" >>"$out/host.env"
    "$host_python" "$here/summary.py" "$arch" "$out"
}

status=0
for arch in "${arches[@]}"; do
    run_arch "$arch" || status=1
done
exit $status
