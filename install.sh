#!/usr/bin/env bash
# cardcam installer: from a fresh Raspberry Pi OS Bookworm (64- or 32-bit) or Debian 12 to a
# running appliance. Run it from a checkout: sudo ./install.sh   (--help for the options)
#
# Idempotent: every step looks first and changes only what differs, so a second run changes
# nothing and says so. Nothing is fetched but apt and PyPI packages; the project itself is
# installed from the checkout this script lives in.
set -euo pipefail
umask 022  # the venv, models and config must be readable by the service user, whatever root's umask is

usage() {
    cat <<'EOF'
Usage: sudo ./install.sh [--dry-run] [--prefix DIR]
       sudo ./install.sh --uninstall [--purge] [--dry-run] [--prefix DIR]

Installs cardcam as a systemd service:
  apt packages      python3-venv python3-numpy python3-pil, and where the apt repositories
                    have them python3-picamera2 python3-lgpio python3-gpiozero (>= 2)
  user              cardcam (system user) in the groups video and gpio
  /opt/cardcam/venv the project (from this checkout), gpiozero and the TFLite runtime that
                    fits: ai-edge-litert (aarch64), tflite-runtime 2.14 (armv7l, Python 3.11),
                    else none (models run in NumPy)
  /var/lib/cardcam/models/   the shipped models (a model you copied there is never replaced)
  /etc/cardcam/config.toml   from config.example.toml (an edited config is never replaced)
  /etc/systemd/system/cardcam.service, enabled and started where systemd runs
  /usr/local/bin/cardcam     the command

Options:
  --dry-run     print every step that would change something, change nothing
  --uninstall   stop and remove the service, the venv and the command; keep models and config
  --purge       with --uninstall: remove /var/lib/cardcam and /etc/cardcam too
  --prefix DIR  install every path above under DIR (tests, CI, images); systemd is left alone
  -h, --help    this text

Environment: CARDCAM_TFLITE=auto|ai-edge-litert|tflite-runtime|none overrides the runtime choice.
EOF
}

# --- options ------------------------------------------------------------------------------------

ARGS="$*"
DRY_RUN=0
UNINSTALL=0
PURGE=0
PREFIX=""
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --uninstall) UNINSTALL=1 ;;
        --purge) PURGE=1 ;;
        --prefix) [ $# -ge 2 ] || { echo "install.sh: --prefix needs a directory" >&2; exit 2; }
                  PREFIX=$2; shift ;;
        --prefix=*) PREFIX=${1#--prefix=} ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done
if [ "$PURGE" = 1 ] && [ "$UNINSTALL" = 0 ]; then
    echo "install.sh: --purge goes with --uninstall (sudo ./install.sh --uninstall --purge)" >&2
    exit 2
fi
if [ -n "$PREFIX" ]; then
    # The prefix goes into sed replacements and the unit file: keep it to plain path characters.
    case "$PREFIX" in
        /*) ;;
        *) echo "install.sh: --prefix must be an absolute path, got '$PREFIX'" >&2; exit 2 ;;
    esac
    if [[ ! "$PREFIX" =~ ^[A-Za-z0-9._/+-]+$ ]]; then
        echo "install.sh: --prefix may contain only letters, digits and . _ / + -, got '$PREFIX'" >&2
        exit 2
    fi
    PREFIX=${PREFIX%/}
fi

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
SYSTEM_PYTHON=/usr/bin/python3
OPT=$PREFIX/opt/cardcam
VENV=$OPT/venv
STATE=$PREFIX/var/lib/cardcam
MODELS=$STATE/models
MANIFEST=$STATE/installed.sha256    # what this script put in MODELS and ETC, to tell user edits apart
ETC=$PREFIX/etc/cardcam
CONFIG=$ETC/config.toml
UNIT=$PREFIX/etc/systemd/system/cardcam.service
BIN_LINK=$PREFIX/usr/local/bin/cardcam
USER_NAME=cardcam
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

CHANGES=0
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# --- output and actions ---------------------------------------------------------------------------

step() { printf '\n== %s\n' "$*"; }
ok() { printf '   ok: %s\n' "$*"; }
note() { printf '   note: %s\n' "$*"; }
warn() { printf '   WARNING: %s\n' "$*" >&2; }
die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }

# act WHAT CMD ARGS...: one change to the system. Printed; in --dry-run printed and not done.
act() {
    local what=$1
    shift
    CHANGES=$((CHANGES + 1))
    if [ "$DRY_RUN" = 1 ] && [ "$(type -t "$1")" = function ]; then
        printf '   would %s\n' "$what"
    elif [ "$DRY_RUN" = 1 ]; then
        [ "$1" != quietly ] || shift
        printf '   would %s:  %s\n' "$what" "$(printf '%q ' "$@")"
    else
        printf '   %s\n' "$what"
        "$@"
    fi
}

# quietly CMD ARGS...: a noisy command (apt, pip); its output is shown only if it fails.
quietly() {
    if ! "$@" >"$WORK/output.log" 2>&1; then
        tail -n 40 "$WORK/output.log" >&2
        die "this failed (output above): $*"
    fi
}

sha() { sha256sum "$1" | cut -c1-64; }

# install_file SRC DST MODE OWNER GROUP: copy to a temporary name beside DST, then rename (atomic).
install_file() {
    install -m "$2" -o "$3" -g "$4" "$5" "$1.cardcam-tmp"
    mv -f "$1.cardcam-tmp" "$1"
}

# put SRC DST MODE OWNER GROUP: DST becomes a copy of SRC unless it already is one.
put() {
    local src=$1 dst=$2 mode=$3 owner=$4 group=$5
    if [ -f "$dst" ] && cmp -s "$src" "$dst"; then
        fix_perms "$dst" "$mode" "$owner" "$group"
        return 1
    fi
    act "write $dst" install_file "$dst" "$mode" "$owner" "$group" "$src"
}

# fix_perms PATH MODE OWNER GROUP: chmod/chown only where they differ.
fix_perms() {
    local want have
    want="$(printf '%o' "0$2") $3 $4"
    have=$(stat -c '%a %U %G' "$1" 2>/dev/null || true)
    if [ "$have" != "$want" ]; then
        act "set $1 to mode $2, owner $3:$4" set_perms "$@"
    fi
}

set_perms() { chown "$3:$4" "$1" && chmod "$2" "$1"; }

# make_dir DIR MODE OWNER GROUP
make_dir() {
    if [ ! -d "$1" ]; then
        act "create $1" install -d -m "$2" -o "$3" -g "$4" "$1"
    else
        fix_perms "$1" "$2" "$3" "$4"
    fi
}

recorded_sha() {
    if [ -f "$MANIFEST" ]; then awk -v p="$1" '$2 == p { print $1 }' "$MANIFEST"; fi
}

# record DST SHA: remember what this script installed at DST (not a change a person sees).
record() {
    [ "$DRY_RUN" = 1 ] && return 0
    [ -d "$(dirname "$MANIFEST")" ] || return 0
    if [ "$(recorded_sha "$1")" != "$2" ]; then
        { [ -f "$MANIFEST" ] && awk -v p="$1" '$2 != p' "$MANIFEST"; printf '%s  %s\n' "$2" "$1"; } \
            >"$MANIFEST.tmp"
        mv -f "$MANIFEST.tmp" "$MANIFEST"
    fi
}

# put_keep SRC DST MODE OWNER GROUP WHAT: like put, but a DST that someone changed since this script
# wrote it (an edited config, a deployed model) is kept. Prints why; returns 1 if nothing changed.
put_keep() {
    local src=$1 dst=$2 new old
    new=$(sha "$src")
    if [ ! -e "$dst" ]; then
        put "$@" || true
        record "$dst" "$new"
        return 0
    fi
    old=$(sha "$dst")
    if [ "$old" = "$new" ]; then
        fix_perms "$dst" "$3" "$4" "$5"
        record "$dst" "$new"
        return 1
    fi
    if [ "$old" = "$(recorded_sha "$dst")" ]; then  # ours, unchanged by anyone: update it
        put "$@" || true
        record "$dst" "$new"
        return 0
    fi
    return 2
}

have_systemd() { [ -z "$PREFIX" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null; }

# --- checks -----------------------------------------------------------------------------------

preflight() {
    if [ "$(id -u)" != 0 ] && [ "$DRY_RUN" = 0 ]; then
        die "run it as root: sudo $0 $ARGS  (or --dry-run to see the steps)"
    fi
    for f in pyproject.toml config.example.toml systemd/cardcam.service device/cli.py; do
        [ -f "$SRC/$f" ] || die "$SRC/$f is missing: run install.sh from a complete cardcam checkout"
    done
    compgen -G "$SRC/models/*.npz" >/dev/null || die "$SRC/models/ has no .npz models: run install.sh from a complete checkout"
    # The userland's architecture, not the kernel's: 32-bit Pi OS on a Pi 4 or 5 runs a 64-bit kernel.
    ARCH=$(dpkg --print-architecture 2>/dev/null || uname -m)
    command -v apt-get >/dev/null || die "no apt-get: this needs Raspberry Pi OS Bookworm or Debian 12"
    OS=$(sed -n 's/^PRETTY_NAME=//p' /etc/os-release 2>/dev/null | tr -d '"')
    OS=${OS:-unknown OS}
    MODEL=$(tr -d '\0' 2>/dev/null </proc/device-tree/model || echo "not a Raspberry Pi")
}

# After the apt step (a minimal Debian may come without Python at all).
check_python() {
    if [ ! -x "$SYSTEM_PYTHON" ] && [ "$DRY_RUN" = 1 ]; then
        PYVER=3.11
        note "no $SYSTEM_PYTHON yet (apt would install it); assuming Python $PYVER for the rest of the dry run"
        return 0
    fi
    [ -x "$SYSTEM_PYTHON" ] || die "$SYSTEM_PYTHON not found after the apt step: this needs Raspberry Pi OS Bookworm or Debian 12"
    if ! "$SYSTEM_PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        die "cardcam needs Python 3.11 or newer; $SYSTEM_PYTHON is $("$SYSTEM_PYTHON" -V 2>&1) (Bookworm has 3.11)"
    fi
    PYVER=$("$SYSTEM_PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
}

# --- apt -----------------------------------------------------------------------------------------

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
candidate() { apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ { print $2 }'; }
apt_lists_empty() { ! compgen -G '/var/lib/apt/lists/*Packages*' >/dev/null; }

APT_UPDATED=0
apt_update() {
    if [ "$APT_UPDATED" = 0 ]; then
        APT_UPDATED=1
        if [ "$DRY_RUN" = 1 ]; then
            printf '   would refresh the package lists:  apt-get update\n'
        else
            printf '   apt-get update\n'
            quietly apt-get update
        fi
    fi
}

# available PKG [MIN_VERSION]: apt can install PKG (at least MIN_VERSION).
available() {
    local v
    v=$(candidate "$1")
    [ -n "$v" ] && [ "$v" != "(none)" ] || return 1
    [ $# -lt 2 ] || dpkg --compare-versions "$v" ge "$2"
}

apt_packages() {
    step "apt packages"
    # ca-certificates: pip's downloads from PyPI on a minimal Debian.
    local required=(python3 python3-venv python3-numpy python3-pil ca-certificates) missing=() pkg
    # numpy and Pillow come from apt, not PyPI: python3-picamera2 is built against them (a PyPI
    # numpy 2 breaks it), and PyPI has no armv7l wheels for either.
    for pkg in "${required[@]}"; do installed "$pkg" || missing+=("$pkg"); done
    # Optional, where the repositories have them (Raspberry Pi OS does, plain Debian does not).
    local optional=(python3-picamera2 python3-lgpio) want_optional=()
    for pkg in "${optional[@]}" python3-gpiozero; do
        installed "$pkg" || want_optional+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ] || { [ ${#want_optional[@]} -gt 0 ] && apt_lists_empty; }; then
        apt_update
    fi
    for pkg in "${want_optional[@]}"; do
        if [ "$pkg" = python3-gpiozero ]; then
            # Debian 12 has gpiozero 1.6; cardcam needs 2.0 (then it comes from PyPI, see below).
            if available python3-gpiozero 2.0; then missing+=(python3-gpiozero); fi
        elif available "$pkg"; then
            missing+=("$pkg")
        elif [ "$pkg" = python3-picamera2 ]; then
            warn "python3-picamera2 is not in this system's apt repositories ($OS): no camera support." \
                 "On a Pi, use Raspberry Pi OS Bookworm. The install goes on (simulation, tests, predict)."
        else
            note "$pkg is not in this system's apt repositories: gpiozero will use another pin driver"
        fi
    done
    if [ ${#missing[@]} -gt 0 ]; then
        act "install ${missing[*]}" quietly apt-get install -y --no-install-recommends "${missing[@]}"
    else
        ok "nothing to install (${required[*]} present)"
    fi
}

# --- user ----------------------------------------------------------------------------------------

user_and_groups() {
    step "user $USER_NAME in groups video and gpio"
    local g
    for g in video gpio; do
        if getent group "$g" >/dev/null; then ok "group $g exists"
        else act "create group $g" groupadd --system "$g"; fi
    done
    if ! id "$USER_NAME" >/dev/null 2>&1; then
        act "create system user $USER_NAME" useradd --system --user-group --groups video,gpio \
            --home-dir /var/lib/cardcam --no-create-home --shell /usr/sbin/nologin \
            --comment "cardcam appliance" "$USER_NAME"
    else
        local groups
        groups=" $(id -nG "$USER_NAME") "
        for g in video gpio; do
            if [[ "$groups" != *" $g "* ]]; then act "add $USER_NAME to group $g" usermod -aG "$g" "$USER_NAME"; fi
        done
        ok "user $USER_NAME: $(id "$USER_NAME")"
    fi
    # Whoever ran sudo may copy models in (cardcam-train deploy): the models folder is group cardcam.
    local who=${SUDO_USER:-}
    if [ -n "$who" ] && [ "$who" != root ] && id "$who" >/dev/null 2>&1; then
        if [[ " $(id -nG "$who") " != *" $USER_NAME "* ]]; then
            act "add $who to group $USER_NAME (may copy models into $MODELS; takes effect at the next login)" \
                usermod -aG "$USER_NAME" "$who"
        fi
    fi
}

# --- venv and Python packages -----------------------------------------------------------------------

venv_ok() {
    [ -x "$VENV/bin/python" ] && grep -q '^include-system-site-packages = true' "$VENV/pyvenv.cfg" 2>/dev/null &&
        [ "$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" = "$PYVER" ]
}

pip_in_venv() {
    quietly "$VENV/bin/python" -m pip install --root-user-action=ignore -c "$WORK/constraints.txt" "$@"
}

# The version of a distribution as the venv sees it (apt's or its own), or nothing.
venv_version() {
    [ -x "$VENV/bin/python" ] || return 0
    "$VENV/bin/python" - "$1" <<'EOF' 2>/dev/null || true
import sys
from importlib.metadata import version
try:
    print(version(sys.argv[1]))
except Exception:
    pass
EOF
}

# install_project DIGEST: pip-install a copy of the sources (the build leaves the checkout clean).
install_project() {
    mkdir -p "$WORK/src"
    # The package carries the shipped models as device.models (pyproject's package-dir: models/).
    (cd "$SRC" && cp -r pyproject.toml README.md device training "$WORK/src/" \
        && mkdir "$WORK/src/models" && cp models/README.md models/*.npz "$WORK/src/models/")
    find "$WORK/src" -name __pycache__ -prune -exec rm -rf {} +
    # --no-deps: numpy and Pillow are apt's; gpiozero and the TFLite runtime are installed below.
    pip_in_venv --no-deps --force-reinstall "$WORK/src"
    printf '%s\n' "$1" >"$VENV/cardcam-source.sha256"
}

source_digest() {
    (cd "$SRC" && find pyproject.toml README.md device training models/README.md models/*.npz -type f ! -name '*.pyc' \
        ! -path '*/__pycache__/*' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum) | sha256sum | cut -c1-64
}

PROJECT_CHANGED=0
venv_and_packages() {
    step "Python environment $VENV"
    make_dir "$OPT" 0755 root root
    if venv_ok; then
        ok "venv with system site packages (Python $PYVER)"
    else
        if [ -e "$VENV" ]; then act "remove the unusable venv $VENV" rm -rf "$VENV"; fi
        act "create the venv (--system-site-packages: apt's picamera2, libcamera, numpy)" \
            "$SYSTEM_PYTHON" -m venv --system-site-packages "$VENV"
        PROJECT_CHANGED=1
    fi
    # Never let pip replace apt's numpy or Pillow (see apt_packages): pin them at apt's versions.
    "$SYSTEM_PYTHON" - >"$WORK/constraints.txt" <<'EOF' || true
from importlib.metadata import version
for name in ("numpy", "pillow"):
    try:
        print(f"{name}=={version(name)}")
    except Exception:
        pass
EOF

    local digest
    digest=$(source_digest)
    if [ "$(cat "$VENV/cardcam-source.sha256" 2>/dev/null || true)" = "$digest" ] &&
        "$VENV/bin/python" -c 'import device.cli' 2>/dev/null; then
        ok "cardcam $(venv_version cardcam) from $SRC is installed"
    else
        act "install cardcam from $SRC into the venv" install_project "$digest"
        PROJECT_CHANGED=1
    fi

    local gz
    gz=$(venv_version gpiozero)
    if [ -n "$gz" ] && dpkg --compare-versions "$gz" ge 2.0; then
        ok "gpiozero $gz"
    else
        act "install gpiozero 2 from PyPI (apt has ${gz:-none})" pip_in_venv 'gpiozero>=2.0'
        PROJECT_CHANGED=1
    fi
    tflite_runtime
}

tflite_runtime() {
    local want=${CARDCAM_TFLITE:-auto} spec="" module="" why="ai-edge-litert on 64-bit Pi OS, tflite-runtime on 32-bit"
    if [ "$want" = auto ]; then
        case "$ARCH/$PYVER" in
            arm64/*) want=ai-edge-litert ;;
            armhf/3.11)
                want=tflite-runtime
                # Pi OS armhf also runs on ARMv6 (Pi 1, Zero): no tflite-runtime wheel for those.
                if [ "$(uname -m)" = armv6l ]; then want=none; why="no TFLite wheels for ARMv6"; fi ;;
            *) want=none ;;
        esac
    fi
    case "$want" in
        ai-edge-litert) spec=ai-edge-litert; module=ai_edge_litert.interpreter ;;
        # The last tflite-runtime, the one with 32-bit ARM wheels; it needs numpy < 2 (apt's is 1.24).
        tflite-runtime) spec=tflite-runtime==2.14.0; module=tflite_runtime.interpreter ;;
        none)
            note "TFLite runtime: none on $ARCH with Python $PYVER ($why): every model runs in NumPy"
            return 0 ;;
        *) die "CARDCAM_TFLITE must be auto, ai-edge-litert, tflite-runtime or none, got '$want'" ;;
    esac
    if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import $module" 2>/dev/null; then
        ok "TFLite runtime: $want $(venv_version "$want") ($ARCH, Python $PYVER)"
    else
        act "install the TFLite runtime $spec ($ARCH, Python $PYVER)" install_runtime "$spec"
        PROJECT_CHANGED=1
    fi
}

# install_runtime SPEC: a TFLite runtime that will not install is a warning, not the end: NumPy runs the models.
install_runtime() {
    if ! "$VENV/bin/python" -m pip install --root-user-action=ignore -c "$WORK/constraints.txt" "$1" \
        >"$WORK/output.log" 2>&1; then
        tail -n 5 "$WORK/output.log" >&2
        warn "could not install $1 (pip's last words above): every model runs in NumPy, which works, only slower"
    fi
}

# --- files -------------------------------------------------------------------------------------------

# Paths in the shipped config and unit, moved under --prefix.
render() {
    sed -e "s|/opt/cardcam|$OPT|g" -e "s|/var/lib/cardcam|$STATE|g" -e "s|/etc/cardcam|$ETC|g" "$1"
}

models_and_config() {
    step "models in $MODELS, config in $CONFIG"
    make_dir "$STATE" 0755 "$USER_NAME" "$USER_NAME"
    # Group-writable and setgid: people in group cardcam may copy models in (cardcam-train deploy).
    make_dir "$MODELS" 2775 root "$USER_NAME"
    make_dir "$ETC" 0755 root root
    local m name rc
    for m in "$SRC"/models/*.npz; do
        name=$(basename "$m")
        rc=0
        put_keep "$m" "$MODELS/$name" 0644 root "$USER_NAME" || rc=$?
        case $rc in
            1) ok "$name" ;;
            2) note "kept $MODELS/$name: it differs from the shipped models/$name (a model you deployed)" ;;
        esac
    done
    render "$SRC/config.example.toml" >"$WORK/config.toml"
    put "$WORK/config.toml" "$ETC/config.example.toml" 0644 root root || ok "$ETC/config.example.toml"
    rc=0
    put_keep "$WORK/config.toml" "$CONFIG" 0644 root root || rc=$?
    case $rc in
        1) ok "$CONFIG" ;;
        2) note "kept your edited $CONFIG; what the example would change: diff -u $CONFIG $ETC/config.example.toml" ;;
    esac
}

UNIT_CHANGED=0
unit_and_command() {
    step "service unit and command"
    render "$SRC/systemd/cardcam.service" >"$WORK/cardcam.service"
    make_dir "$(dirname "$UNIT")" 0755 root root
    if put "$WORK/cardcam.service" "$UNIT" 0644 root root; then UNIT_CHANGED=1; else ok "$UNIT"; fi
    make_dir "$(dirname "$BIN_LINK")" 0755 root root
    if [ "$(readlink "$BIN_LINK" 2>/dev/null || true)" = "$VENV/bin/cardcam" ]; then
        ok "$BIN_LINK -> $VENV/bin/cardcam"
    else
        act "link $BIN_LINK -> $VENV/bin/cardcam" ln -sfn "$VENV/bin/cardcam" "$BIN_LINK"
    fi
}

service() {
    step "systemd"
    if [ -n "$PREFIX" ]; then
        note "--prefix: the unit is in $UNIT, outside systemd's view; not enabling or starting it"
        return 0
    fi
    if ! have_systemd; then
        note "systemd is not running here (no /run/systemd/system): the unit is installed but not started;" \
             "on a booted system: sudo systemctl enable --now cardcam"
        return 0
    fi
    if [ "$UNIT_CHANGED" = 1 ]; then act "reload systemd's units" systemctl daemon-reload; fi
    if systemctl is-enabled -q cardcam 2>/dev/null; then ok "cardcam.service enabled"
    else act "enable cardcam.service at boot" systemctl enable -q cardcam; fi
    # --no-block: the service is "activating" until its first frame is classified, which without a
    # camera never happens (it keeps retrying); installing should not wait for that.
    local state
    state=$(systemctl is-active cardcam 2>/dev/null || true)
    case "$state" in
        active|activating|reloading)
            if [ "$UNIT_CHANGED" = 1 ] || [ "$PROJECT_CHANGED" = 1 ]; then
                act "restart cardcam.service (new code or unit)" systemctl restart --no-block cardcam
            else
                ok "cardcam.service is $state"
                return 0
            fi ;;
        *) act "start cardcam.service" systemctl start --no-block cardcam ;;
    esac
    [ "$DRY_RUN" = 1 ] || wait_for_service
}

SERVICE_FAILED=0
wait_for_service() {
    local i state=""
    for i in $(seq 1 30); do
        state=$(systemctl is-active cardcam 2>/dev/null || true)
        case "$state" in active|failed) break ;; esac
        sleep 1
    done
    local status
    status=$(systemctl show -p StatusText --value cardcam 2>/dev/null || true)
    case "$state" in
        active) ok "cardcam.service is running: ${status:-no status yet}" ;;
        failed) warn "cardcam.service failed to start: ${status:-see the log}; journalctl -u cardcam -n 30"
                SERVICE_FAILED=1 ;;
        *) note "cardcam.service is $state after ${i} s: ${status:-no status yet} (no camera? the status LED" \
                "says which fault; journalctl -u cardcam -f)" ;;
    esac
}

# --- uninstall ---------------------------------------------------------------------------------------

uninstall() {
    step "stop and remove the service"
    if have_systemd && [ -f "$UNIT" ]; then
        if systemctl is-enabled -q cardcam 2>/dev/null || systemctl is-active -q cardcam 2>/dev/null; then
            act "stop and disable cardcam.service" systemctl disable -q --now cardcam
        fi
    fi
    if [ -f "$UNIT" ]; then
        act "remove $UNIT" rm -f "$UNIT"
        if have_systemd; then act "reload systemd's units" systemctl daemon-reload; fi
    else
        ok "no $UNIT"
    fi
    step "remove the venv and the command"
    if [ -L "$BIN_LINK" ] && [ "$(readlink "$BIN_LINK")" = "$VENV/bin/cardcam" ]; then
        act "remove $BIN_LINK" rm -f "$BIN_LINK"
    else
        ok "no $BIN_LINK"
    fi
    if [ -e "$OPT" ]; then act "remove $OPT" rm -rf "$OPT"; else ok "no $OPT"; fi
    step "models and config"
    if [ "$PURGE" = 1 ]; then
        if [ -e "$STATE" ]; then act "remove $STATE (models)" rm -rf "$STATE"; else ok "no $STATE"; fi
        if [ -e "$ETC" ]; then act "remove $ETC (config)" rm -rf "$ETC"; else ok "no $ETC"; fi
    else
        note "kept $MODELS and $ETC (--uninstall --purge removes them)"
    fi
    note "kept the user $USER_NAME and the apt packages (sudo userdel $USER_NAME removes the user)"
}

# --- main --------------------------------------------------------------------------------------------

preflight "$@"
START=$(date +%s)
what=install
if [ "$UNINSTALL" = 1 ]; then what=uninstall; fi
printf 'cardcam %s%s: %s, %s, %s\n' "$what" "$([ "$DRY_RUN" = 1 ] && echo ' (dry run)')" "$OS" "$ARCH" "$MODEL"
if [ -n "$PREFIX" ]; then printf 'prefix: %s\n' "$PREFIX"; fi

if [ "$UNINSTALL" = 1 ]; then
    uninstall
else
    apt_packages
    check_python
    user_and_groups
    venv_and_packages
    models_and_config
    unit_and_command
    service
fi

echo
if [ "$CHANGES" = 0 ]; then
    echo "Nothing to change: cardcam is already ${what}ed as asked."
elif [ "$DRY_RUN" = 1 ]; then
    echo "Dry run: $CHANGES change(s) would be made; nothing was changed."
else
    echo "Done: $CHANGES change(s) in $(($(date +%s) - START)) s."
    if [ "$UNINSTALL" = 0 ]; then
        echo "Check it: $BIN_LINK doctor --config $CONFIG;  logs: journalctl -u cardcam -f"
    fi
fi
[ "$SERVICE_FAILED" = 0 ] || exit 1
