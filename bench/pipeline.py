"""How fast is the appliance's frame loop? Per-stage milliseconds, end-to-end fps, memory, start-up.

    .venv/bin/python bench/pipeline.py [--model M] [--runtime auto|numpy] [--frames N] [--memory-every K] [--json]

Two measurements, with the daemon's default camera configuration: frames at the size
preprocessing works at (160x120; the Pi camera's ISP scales its lores stream to it, and a replay
reduces its pictures to it once, on load), from the shipped samples (cards and no-card frames):

1. In this process, the daemon's own frame path (ReplaySource → device.classify.classify →
   device.decision.Decider → Outputs on gpiozero's MockFactory), one frame at a time as in
   `cardcam run`, timed per stage: grab, preprocess, forward (classify's own timings), decide, output. Peers measured in the same run give the ratios: the
   forward pass alone, and a Pillow BOX resize of a full 640x480 sample frame to preprocessing's
   working size (what a camera that cannot scale costs per frame before any preprocessing).
2. `cardcam run --simulate` as a real subprocess with a notify socket: seconds from start to
   READY=1 (first frame classified), and its resident memory (VmRSS, peak VmHWM) while running.
   Its peer is the dependency floor: a process with none of cardcam's code that imports what the
   daemon cannot run without (NumPy, Pillow, gpiozero on MockFactory pins, the same TFLite
   package with the same model allocated and run once) and holds the same decoded replay frames.
   The daemon's RSS above that floor is what cardcam itself costs.

With --memory-every K, the in-process run also reads its resident memory every K frames and
reports the growth from the first reading (after the warm-up) to the last, and the highest: the
"no memory growth over 10^6 frames" check is `--frames 1000000 --memory-every 10000`.

With --json the last line is one JSON object with at least fps, rss_mb and ready_s.
Goals: >= 2500 fps end-to-end with the 0/1 model on the 2-core x86 machine (issue 19), RSS at
most 6 MB over the dependency floor, ready <= 1.5 s, no memory growth.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from _common import REPO, model_file, random_bundle, simulation_config

from device.bundle import load_bundle, save_bundle
from device.camera import PICTURE_SUFFIXES, SAMPLES_DIR, ReplaySource
from device.preprocess import load_frame
from device.config import defaults
from device.classify import classify
from device.decision import Decider
from device.outputs import Outputs, mock_pin_factory
from device.runtime import TFLITE_MODULES, make_runtime, tflite_interpreter
from training.options import count, positive

GOAL_FPS = 2500.0
STAGES = ("grab", "preprocess", "forward", "decide", "output")


def rss_mb(pid="self") -> tuple[float, float]:
    """(VmRSS, VmHWM) in MB from /proc."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            key, kb = line.split()[:2]
            values[key[:-1]] = int(kb) / 1024
    return values.get("VmRSS", 0.0), values.get("VmHWM", 0.0)


def bench_model(path: Path | None, workdir: Path) -> Path:
    """The model to time: the one given, models/digits01.npz, or lenet5 with random weights
    (forward time does not depend on the weights' values)."""
    if path:
        return path
    if (REPO / "models" / "digits01.npz").exists():
        return REPO / "models" / "digits01.npz"
    out = workdir / "random-lenet5.npz"
    save_bundle(random_bundle("lenet5", classes=2), out)
    print("note: no models/digits01.npz yet; timing lenet5 with random weights (same forward cost)")
    return out


def in_process(model: Path, frames: int, memory_every: int = 0, runtime_kind: str = "auto") -> dict:
    bundle = load_bundle(model)
    runtime = make_runtime(bundle, runtime_kind)
    config = defaults()
    decider = Decider(bundle.labels, config.decision.window, config.decision.enter, config.decision.exit)
    # The daemon's default camera configuration: frames at the size preprocessing works at (the
    # Pi camera's ISP scales for free; a replay reduces its pictures once, on load).
    source = ReplaySource(SAMPLES_DIR, fps=0, loop=True, hold=1, size=(config.camera.width, config.camera.height))
    full_size = [load_frame(p) for p in sorted(SAMPLES_DIR.iterdir()) if p.suffix.lower() in PICTURE_SUFFIXES]
    outputs = Outputs.from_config(config.outputs, mock_pin_factory())
    outputs.set_status("running")
    with source, outputs:
        for _ in range(50):  # warm up: caches, first allocations
            decider.update(classify(source.read(), bundle, runtime).probabilities)
        grab = preprocess = forward = decide = output = 0.0
        rss_start = rss_mb()[0]
        memory = [(0, rss_start)]  # (frames done, VmRSS MB), every memory_every frames
        found = 0
        prep = {True: 0.0, False: 0.0}  # preprocess seconds for frames with and without a card
        t_start = time.perf_counter()
        for done in range(1, frames + 1):  # as the daemon's loop (device/daemon.py, Daemon.run)
            t0 = time.perf_counter()
            frame = source.read()
            t1 = time.perf_counter()
            result = classify(frame, bundle, runtime)
            t2 = time.perf_counter()
            shown = decider.update(result.probabilities)
            t3 = time.perf_counter()
            if shown.changed:
                outputs.show(shown.label)
            t4 = time.perf_counter()
            grab += t1 - t0
            preprocess += result.seconds[0]
            forward += result.seconds[1]
            decide += t3 - t2
            output += t4 - t3
            prep[result.reason == ""] += result.seconds[0]
            found += result.reason == ""
            if memory_every and (len(memory) * memory_every) == done:
                memory.append((done, rss_mb()[0]))
                print(f"  {done} frames: RSS {memory[-1][1]:.2f} MB", flush=True)
        total = time.perf_counter() - t_start
        rss_end = rss_mb()[0]
        # Peers, same frames, same run.
        sample = [source.read() for _ in range(len(source))]
        inputs = np.zeros((1,) + tuple(bundle.input_shape), np.float32)
        n_peer = min(max(200, frames // 4), 5000)
        t0 = time.perf_counter()
        for _ in range(n_peer):
            runtime.predict(inputs)
        forward_peer = (time.perf_counter() - t0) / n_peer
        work = bundle.preprocess.work_size
        t0 = time.perf_counter()
        for i in range(n_peer):
            frame = full_size[i % len(full_size)]
            Image.fromarray(frame).resize((work, work * frame.shape[0] // frame.shape[1]), Image.Resampling.BOX)
        resize_peer = (time.perf_counter() - t0) / n_peer
    times = dict(zip(STAGES, (grab, preprocess, forward, decide, output)))
    stages = {k: 1000 * v / frames for k, v in times.items()}
    return {
        "fps": frames / total, "frames": frames, "frame_size": "x".join(map(str, sample[0].shape[::-1])),
        "stages_ms": stages, "total_ms": 1000 * total / frames,
        "frames_with_card": found, "model": bundle.name, "runtime": runtime.name,
        "peer_forward_ms": 1000 * forward_peer, "peer_resize_ms": 1000 * resize_peer,
        "rss_growth_mb": rss_end - rss_start,
        "preprocess_card_ms": 1000 * prep[True] / max(1, found),
        "preprocess_no_card_ms": 1000 * prep[False] / max(1, frames - found),
        "memory": {"every": memory_every, "samples": len(memory), "first_mb": memory[0][1], "last_mb": memory[-1][1],
                   "max_mb": max(m for _, m in memory), "growth_mb": memory[-1][1] - memory[0][1]},
    }


# The dependency floor's process (see the module's docstring). argv: pins ("17,27,22"), the TFLite
# module ("" for the NumPy runtime), the model (a .tflite file, or the bundle), the replay frames.
FLOOR_SCRIPT = """
import importlib, sys
import numpy as np
from PIL import Image
from gpiozero import LED, Device
from gpiozero.pins.mock import MockFactory
pins, module, model, frames = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
Device.pin_factory = MockFactory()
leds = [LED(int(pin) if pin.isdigit() else pin) for pin in pins.split(",")]
if module:
    m = importlib.import_module(module)
    interpreter = (m.lite if module == "tensorflow" else m).Interpreter(model_path=model)
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
    interpreter.invoke()
else:
    weights = dict(np.load(model, allow_pickle=False))
held = [np.asarray(Image.open(path).convert("L")) for path in frames]
status = open("/proc/self/status").read()
print([line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")][0])
"""


def dependency_floor(model: Path, runtime_name: str, workdir: Path) -> float:
    """VmRSS (MB) of FLOOR_SCRIPT for this model and runtime, with the default config's pins."""
    outputs = defaults().outputs
    pins = ",".join(str(pin) for pin in [*outputs.leds.values(), outputs.status_led] if pin is not None)
    module = ""
    if runtime_name == "tflite":
        label = tflite_interpreter()[0]
        module = next(name for name, known in TFLITE_MODULES if known == label)
        tflite = workdir / "floor.tflite"
        tflite.write_bytes(load_bundle(model).tflite)
        model = tflite
    frames = sorted(str(p) for p in SAMPLES_DIR.iterdir() if p.suffix.lower() in PICTURE_SUFFIXES)
    out = subprocess.run([sys.executable, "-c", FLOOR_SCRIPT, pins, module, str(model), *frames],
                         capture_output=True, text=True, timeout=120, check=True)
    return int(out.stdout.split()[-1]) / 1024


def daemon_run(model: Path, workdir: Path, seconds: float, runtime_kind: str = "auto") -> dict:
    """Start `cardcam run --simulate` for real; time READY=1 and read its memory."""
    config = workdir / "bench.toml"
    state = workdir / "state.json"
    config.write_text(simulation_config(model, state, 0.5, model={"runtime": runtime_kind}))
    sock_path = workdir / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(0.05)
    env = dict(os.environ, NOTIFY_SOCKET=str(sock_path), PYTHONPATH=str(REPO))
    env.pop("WATCHDOG_USEC", None)
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "device", "run", "--simulate", "--config", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=workdir)
    ready_s = None
    try:
        while time.monotonic() - t0 < 30 and ready_s is None:
            try:
                if b"READY=1" in sock.recv(4096).split(b"\n"):
                    ready_s = time.monotonic() - t0
            except socket.timeout:
                if proc.poll() is not None:
                    raise SystemExit(f"bench: the daemon exited: {proc.stderr.read().decode()}")
        time.sleep(seconds)
        rss, hwm = rss_mb(proc.pid)
        try:
            daemon_fps = json.loads(state.read_text())["fps"]
        except (OSError, ValueError, KeyError):
            daemon_fps = None
        t_stop = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        stop_s = time.monotonic() - t_stop
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close()
    return {"ready_s": ready_s, "rss_mb": rss, "hwm_mb": hwm, "daemon_fps": daemon_fps, "stop_s": stop_s,
            "exit_code": proc.returncode}


def main() -> None:
    parser = argparse.ArgumentParser(description="Per-stage timing of the appliance's frame loop.")
    parser.add_argument("--model", type=model_file, help="model bundle (default: models/digits01.npz, else lenet5 random weights)")
    parser.add_argument("--frames", type=count(1), default=1000, help="frames to time in-process (default: 1000)")
    parser.add_argument("--runtime", choices=("auto", "numpy"), default="auto",
                        help="auto (TFLite when the bundle has it and a TFLite runtime imports) or numpy")
    parser.add_argument("--memory-every", type=count(0), default=0, metavar="K",
                        help="read this process's RSS every K frames and report its growth (default: off)")
    parser.add_argument("--seconds", type=positive, default=3.0, help="how long the daemon runs after READY")
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        model = bench_model(args.model, workdir)
        r = in_process(model, args.frames, args.memory_every, args.runtime)
        d = daemon_run(model, workdir, args.seconds, args.runtime)
        floor = dependency_floor(model, r["runtime"], workdir)
    print(f"model {r['model']} ({r['runtime']} runtime), {r['frames']} frames of {r['frame_size']} from {SAMPLES_DIR.name}/ "
          f"({r['frames_with_card']} with a card found)")
    for stage, ms in r["stages_ms"].items():
        print(f"  {stage:<10} {ms:8.3f} ms  {100 * ms / r['total_ms']:5.1f}%")
    print(f"  {'total':<10} {r['total_ms']:8.3f} ms  -> {r['fps']:.0f} fps end-to-end "
          f"({r['fps'] / GOAL_FPS:.2f}x the {GOAL_FPS:.0f} fps goal)")
    print(f"preprocess: {r['preprocess_card_ms']:.3f} ms on frames with a card, "
          f"{r['preprocess_no_card_ms']:.3f} ms on frames without")
    print(f"peers: forward alone {r['peer_forward_ms']:.3f} ms; Pillow BOX resize 640x480 -> work size "
          f"{r['peer_resize_ms']:.3f} ms (preprocess = {r['stages_ms']['preprocess'] / r['peer_resize_ms']:.0f}x "
          "that resize)")
    print(f"memory in this process grew {r['rss_growth_mb']:+.1f} MB over {r['frames']} frames")
    m = r["memory"]
    if m["every"]:
        print(f"RSS read every {m['every']} frames ({m['samples']} readings): {m['first_mb']:.2f} MB after the warm-up, "
              f"{m['last_mb']:.2f} MB at the end ({m['growth_mb']:+.2f} MB), highest {m['max_mb']:.2f} MB")
    print(f"daemon: READY=1 {d['ready_s']:.2f} s after start, RSS {d['rss_mb']:.1f} MB (peak {d['hwm_mb']:.1f}), "
          f"{d['daemon_fps']} fps, stopped {d['stop_s']:.2f} s after SIGTERM (exit {d['exit_code']})")
    print(f"RSS peer: the dependency floor (no cardcam code; NumPy, Pillow, gpiozero, the {r['runtime']} runtime with "
          f"this model, the replay frames) {floor:.1f} MB; the daemon is {d['rss_mb'] - floor:+.1f} MB above it")
    if args.json:
        print(json.dumps({
            "fps": round(r["fps"], 1), "rss_mb": round(d["rss_mb"], 1), "ready_s": round(d["ready_s"], 3),
            "peak_rss_mb": round(d["hwm_mb"], 1), "floor_rss_mb": round(floor, 1),
            "rss_over_floor_mb": round(d["rss_mb"] - floor, 1), "daemon_fps": d["daemon_fps"], "stop_s": round(d["stop_s"], 3),
            "stages_ms": {k: round(v, 4) for k, v in r["stages_ms"].items()}, "frames": r["frames"],
            "model": r["model"], "runtime": r["runtime"], "goal_fps": GOAL_FPS,
            "ratio_to_goal": round(r["fps"] / GOAL_FPS, 4), "peer_forward_ms": round(r["peer_forward_ms"], 4),
            "peer_resize_ms": round(r["peer_resize_ms"], 4), "rss_growth_mb": round(r["rss_growth_mb"], 2),
            "preprocess_card_ms": round(r["preprocess_card_ms"], 4),
            "preprocess_no_card_ms": round(r["preprocess_no_card_ms"], 4),
            "memory": {k: round(v, 2) for k, v in r["memory"].items()},
        }))


if __name__ == "__main__":
    main()
