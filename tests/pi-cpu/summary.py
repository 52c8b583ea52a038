"""One arch's results from tests/pi-cpu/run.sh as one summary line; exit status 1 if a check failed.

usage: python summary.py ARCH OUTDIR    (OUTDIR: run.sh's results for ARCH, x86 references included)

NumPy: every frame gets the same label (or the same "nothing to read" reason) as on x86, and no
probability differs by more than NUMPY_TOLERANCE. Not 1e-6: on aarch64, Pillow's float resampling
(the crop of the paper brightness around the glyph) puts a few pixels on the other side of a box
edge (rounding in its C code there, most likely fused multiply-adds), so a few inputs differ by up
to 0.005 and their probabilities by up to 0.002 (seen: 8 of 416); armv7l matches x86 to 1e-6.
TFLite int8: labels agree on at least TFLITE_AGREEMENT of the frames classified on both sides.
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

NUMPY_TOLERANCE = 0.01
TFLITE_AGREEMENT = 0.99


def read_env(path: Path) -> dict:
    values = {}
    if path.exists():
        for line in path.read_text().splitlines():
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip().strip('"')  # a key recorded twice: the last one counts
    return values


def read_predictions(path: Path) -> dict | None:
    """file -> record, or None when the command printed nothing usable."""
    try:
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError):
        return None
    return {Path(r["file"]).name: r for r in records} or None  # the same frames, in other folders


def compare(out: Path, runtime: str):
    """(frames compared, labels equal, max |probability difference|, problems) over every model."""
    compared = equal = 0
    max_diff = 0.0
    problems = []
    for ref_path in sorted(out.glob(f"x86-{runtime}-*.jsonl")):
        name = ref_path.name.removeprefix(f"x86-{runtime}-").removesuffix(".jsonl")
        ref, arm = read_predictions(ref_path), read_predictions(out / f"arm-{runtime}-{name}.jsonl")
        if ref is None or arm is None:
            where = "x86" if ref is None else "arm"
            err = out / f"{where}-{runtime}-{name}.err"
            detail = err.read_text().strip().splitlines()[-1:] if err.exists() else []
            problems.append(f"{name}: no {runtime} predictions on {where} {detail}")
            continue
        for file, r in ref.items():
            a = arm.get(file)
            if a is None or "error" in a or "error" in r:
                problems.append(f"{name} {file}: {a and a.get('error') or r.get('error') or 'missing on arm'}")
                continue
            if r["label"] is None or a["label"] is None:
                # Nothing to read: both sides must say so, for the same reason (preprocessing is NumPy on both).
                compared += 1
                if (r["label"], r.get("reason")) == (a["label"], a.get("reason")):
                    equal += 1
                else:
                    problems.append(f"{name} {file}: x86 {r['label'] or r.get('reason')}, arm {a['label'] or a.get('reason')}")
                continue
            compared += 1
            equal += r["label"] == a["label"]
            if r["label"] != a["label"] and runtime == "numpy":
                problems.append(f"{name} {file}: x86 {r['label']}, arm {a['label']}")
            max_diff = max(max_diff, *(abs(r["probabilities"][k] - a["probabilities"][k]) for k in r["probabilities"]))
    return compared, equal, max_diff, problems


def main(arch: str, out: Path) -> int:
    steps = read_env(out / "host.env") | read_env(out / "steps.env")
    failures = []

    def check(ok: bool, what: str):
        if not ok:
            failures.append(what)

    check(steps.get("install_status") == "0", f"install {steps.get('install_status', 'did not run')}")
    check(steps.get("install_again") == "ok", f"second install.sh run: {steps.get('install_again', 'did not run')}")
    check(steps.get("installed_code") == "ok", f"installed code: {steps.get('installed_code', '?')}")

    n, same, diff, problems = compare(out, "numpy")
    check(n > 0 and same == n and diff <= NUMPY_TOLERANCE and not problems, "numpy predictions differ from x86")
    numpy_part = f"numpy == x86: {same}/{n} labels, max |dp| {diff:.1e}"

    tn, tsame, tdiff, tproblems = compare(out, "tflite")
    agreement = tsame / tn if tn else 0.0
    check(tn > 0 and agreement >= TFLITE_AGREEMENT and not tproblems, "tflite int8 agreement")
    tflite_part = f"tflite int8 agreement {agreement:.1%} ({tsame}/{tn}, max |dp| {tdiff:.1e})"

    tests = "tests did not run"
    junit = out / "junit.xml"
    if junit.exists():
        suite = ET.parse(junit).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        total, failed = int(suite.get("tests")), int(suite.get("failures")) + int(suite.get("errors"))
        skipped = int(suite.get("skipped"))
        tests = f"tests {total - failed - skipped} passed, {failed} failed, {skipped} skipped"
        check(failed == 0 and steps.get("tests_status") == "0", "tests failed")
        check(total - failed - skipped > 0, "no test passed")  # pytest's exit 5 (none collected) is caught above too
    else:
        check(False, "tests did not run")
    check(steps.get("doctor_status") == "0", f"doctor exit {steps.get('doctor_status', '?')}")
    check(steps.get("uninstall_status") == "0", f"uninstall {steps.get('uninstall_status', '?')}")

    def minutes(key):
        seconds = int(steps[key]) if steps.get(key, "").isdigit() else 0
        return f"{seconds // 60}m{seconds % 60:02d}s"

    line = (f"{arch} ({steps.get('machine', '?')}, numpy {steps.get('numpy_version', '?')}): "
            f"runtime {steps.get('runtime_auto', '?')} | {tests} | {numpy_part} | {tflite_part} | "
            f"install {minutes('install_seconds')} (cpu {minutes('install_cpu')}), "
            f"tests {minutes('tests_seconds')} (cpu {minutes('tests_cpu')}), root {steps.get('root_how', '?')} "
            f"{minutes('root_seconds')}, all {minutes('total_seconds')} | "
            + ("OK" if not failures else "FAILED: " + "; ".join(failures)))
    print(line)
    for p in (problems + tproblems)[:20]:
        print(f"  {arch}: {p}")
    return 1 if failures else 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__.strip().splitlines()[2])
    sys.exit(main(sys.argv[1], Path(sys.argv[2])))
