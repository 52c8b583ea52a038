#!/usr/bin/env bash
# Runs inside the emulated root, in /cardcam (see run.sh): install, use, test and uninstall cardcam.
# Results go to $1 as files run.sh's summary.py reads; a failing step is recorded there, and the
# steps after it still run when they can, so one run shows every problem.
set -uo pipefail
out=$1
venv=/opt/cardcam/venv  # where install.sh puts the appliance's venv
deps=/var/tmp/cardcam-test-deps  # the tests' own packages, kept out of the installed venv
cd /cardcam || exit 1
record() { echo "$1=$2" >>"$out/steps.env"; }
now() { date +%s; }
# CPU seconds (user + system) of a timed step: what it would take on an idle machine, since
# qemu-user runs each process on one core and the CPU here may be shared.
TIMEFORMAT='%U %S'
cpu() { awk '{ printf "%d", $1 + $2 }' "$out/$1.time"; }
record machine "$(uname -m)"

echo "== install.sh"
t0=$(now)
{ time ./install.sh 2>&1; } 2>"$out/install.time"
record install_status $?
record install_seconds $(($(now) - t0))
record install_cpu "$(cpu install)"
echo "== install.sh again (must change nothing)"
./install.sh >"$out/install-again.txt" 2>&1
again=$?
cat "$out/install-again.txt"
if [ $again = 0 ] && grep -q "Nothing to change" "$out/install-again.txt"; then
    record install_again ok
else
    record install_again "exit-$again-or-changes"
fi

cardcam=$venv/bin/cardcam
echo "== where the installed code is"
# PYTHONSAFEPATH: no python started here puts the current directory (/cardcam, the source tree)
# first on sys.path, so everything below, pytest's subprocesses too, runs the INSTALLED package.
export PYTHONSAFEPATH=1
where=$($venv/bin/python -c 'import device; print(device.__file__)' 2>&1)
echo "device: $where"
case $where in $venv/*) record installed_code ok ;; *) record installed_code "not-in-venv:$where" ;; esac
record runtime_auto "$($venv/bin/python -c 'from device.runtime import describe; print(describe("auto"))' 2>&1)"
record numpy_version "$($venv/bin/python -c 'import numpy; print(numpy.__version__)' 2>&1)"

echo "== cardcam predict"
models=/var/lib/cardcam/models  # the installed copies of models/*.npz, when install.sh made them
for model in models/*.npz; do
    name=$(basename "$model" .npz)
    [ -f "$models/$name.npz" ] && model=$models/$name.npz
    for runtime in numpy tflite; do
        $cardcam predict --json --runtime $runtime --model "$model" device/samples/*.png /var/tmp/pi-cpu-frames/*.png \
            >"$out/arm-$runtime-$name.jsonl" 2>"$out/arm-$runtime-$name.err"
        echo "$runtime $model: exit $?"
    done
done

echo "== cardcam doctor"
$cardcam doctor >"$out/doctor.txt" 2>&1
record doctor_status $?
cat "$out/doctor.txt"

echo "== device tests"
t0=$(now)
# gpiozero: the installed one if the install brought it (the tests then use that), else for the tests only.
extra=()
$venv/bin/python -c 'import gpiozero' 2>/dev/null || extra+=(gpiozero)
$venv/bin/python -m pip install -q --no-cache-dir --target $deps pytest hypothesis tqdm threadpoolctl "${extra[@]}"
# .ci/run's compat selection (everything but TensorFlow/Keras, long trainings and the tests marked
# laptop, which need cardcam-train's extras), less: deploy (OpenSSH), install.sh's own checks
# (shellcheck, systemd-analyze; this script runs install.sh for real) and the browser tests.
{ time PYTHONPATH=$deps CARDCAM_REQUIRE_TFLITE=1 timeout 5400 $venv/bin/python -m pytest -p no:cacheprovider -q -m "not laptop" \
    --junitxml="$out/junit.xml" \
    --ignore=tests/test_training.py --ignore=tests/test_smileys.py --ignore=tests/test_keras.py \
    --ignore=tests/test_cards.py --ignore=tests/test_sheets.py --ignore=tests/test_deploy.py \
    --ignore=tests/test_install.py --ignore=tests/test_web_browser.py --ignore=tests/test_ablate.py \
    --ignore=tests/test_report.py --ignore=tests/test_teach_browser.py \
    2>&1; } 2>"$out/tests.time"
record tests_status $?
record tests_seconds $(($(now) - t0))
record tests_cpu "$(cpu tests)"
rm -rf $deps

echo "== install.sh --uninstall"
./install.sh --uninstall
record uninstall_status $?
[ ! -e $venv ] || record uninstall_status "venv-left:$venv"
exit 0
