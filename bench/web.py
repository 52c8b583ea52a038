"""Does the web page slow the frame loop? Daemon fps with the page open, with it idle, and with it off.

    .venv/bin/python bench/web.py [--model M] [--seconds S] [--rounds N] [--chromium] [--json]

One `cardcam run --simulate` subprocess on the bundled sample frames, as fast as it goes (fps = 0),
switched between three phases by SIGHUP (the config file is rewritten in between), in turn,
``--rounds`` times (every other round in reverse order), so every phase sees the same machine load:

- off: [web] enabled = false (the loop publishes nothing);
- idle: the server runs, nobody asks;
- page: a client does what the page does: GET /api/status every 250 ms and, when the frame
  counter moved, GET both pictures (or, with --chromium, the real page in headless Chromium,
  whose rendering then shares the CPU too).

Loop fps per phase = frames the daemon counted (its state file, polled every 20 ms) over the
time between the first and last change seen. Machines shared with other work make fps noisy, so
the CPU time per frame (/proc: the whole process, and the loop's own thread) is printed too: the
server's cost shows there whatever else runs. Prints the median of each phase and the ratios
page/off and idle/off.

Memory: a process does not give back what it once used, so the phases above cannot tell what the
page costs. Two more daemons are started, one with the page off and one with it on from the start,
one picture classified through it and a client polling it; each one's VmRSS after twice --seconds
of that is printed against bench/pipeline.py's dependency floor (the goal: at most 6 MB above it,
the page open included).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import REPO, model_file, simulation_config
from pipeline import dependency_floor, rss_mb

from device.bundle import load_bundle
from device.camera import SAMPLES_DIR
from device.runtime import make_runtime
from training.options import count, positive

POLL_MS = 250  # as device/web/app.js


class Daemon:
    def __init__(self, workdir: Path, model: Path, web: bool = False):
        self.config = workdir / "bench.toml"
        self.state = workdir / "state.json"
        self.model = model
        self.url = None
        self.write(web)
        env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
        for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "JOURNAL_STREAM"):
            env.pop(key, None)
        self.lines: list[str] = []
        self.proc = subprocess.Popen([sys.executable, "-m", "device", "run", "--simulate", "--config", str(self.config)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=workdir)
        threading.Thread(target=lambda: self.lines.extend(l.rstrip() for l in self.proc.stdout), daemon=True).start()
        self.wait(lambda: any("ready:" in l for l in self.lines), "READY")
        if web:
            self.wait(lambda: any("web page at " in l for l in self.lines), "web page address")
            self.url = [l.split("web page at ", 1)[1].strip() for l in self.lines if "web page at " in l][-1]

    def write(self, web: bool) -> None:
        self.config.write_text(simulation_config(self.model, self.state, 0.2, model={"watch": False},
                                                 web={"enabled": web, "port": 0}))

    def wait(self, predicate, what, timeout=30.0):
        end = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > end or self.proc.poll() is not None:
                raise SystemExit(f"bench: no {what} from the daemon:\n" + "\n".join(self.lines))
            time.sleep(0.02)

    def switch(self, web: bool) -> str | None:
        """SIGHUP into the phase; the page's address when it is on."""
        if web == (self.url is not None):
            return self.url  # already there: idle <-> page is the client's doing, not the daemon's
        seen = len(self.lines)
        self.write(web)
        self.proc.send_signal(signal.SIGHUP)
        self.wait(lambda: any("reloading" in l for l in self.lines[seen:]), "reload")
        if not web:
            self.url = None
            return None
        self.wait(lambda: any("web page at " in l for l in self.lines[seen:]), "web page address")
        self.url = [l.split("web page at ", 1)[1].strip() for l in self.lines[seen:] if "web page at " in l][-1]
        return self.url

    def frames(self) -> int | None:
        try:
            return json.loads(self.state.read_text())["frames"]
        except (OSError, ValueError, KeyError):
            return None

    def cpu(self) -> tuple[float, float]:
        """CPU seconds used so far by the whole daemon process and by its main thread (the loop)."""
        tick = os.sysconf("SC_CLK_TCK")

        def used(path):
            fields = Path(path).read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / tick  # utime + stime
        pid = self.proc.pid
        return used(f"/proc/{pid}/stat"), used(f"/proc/{pid}/task/{pid}/stat")

    def loop_fps(self, seconds: float) -> tuple[float, float, float]:
        """Over ``seconds``: frames per second the loop counted, and CPU milliseconds per frame of
        the whole process and of the loop's thread."""
        first = last = None  # (time first seen, frame count, cpu) of the first and the latest change
        previous = self.frames()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            n = self.frames()
            if n is not None and n != previous:
                last = (time.monotonic(), n, self.cpu())
                first = first or last
                previous = n
            time.sleep(0.02)
        if first is None or last is None or last[0] <= first[0]:
            raise SystemExit("bench: the daemon's frame counter did not move")
        frames = last[1] - first[1]
        return (frames / (last[0] - first[0]), 1000 * (last[2][0] - first[2][0]) / frames,
                1000 * (last[2][1] - first[2][1]) / frames)

    def rss(self) -> float:
        """The daemon's VmRSS in MB."""
        return rss_mb(self.proc.pid)[0]

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class PageClient:
    """What device/web/app.js does, on a keep-alive connection: status every 250 ms, both pictures
    when the frame counter moved."""

    def __init__(self, url: str):
        host, port = url.split("//", 1)[1].strip("/").rsplit(":", 1)
        self.conn = http.client.HTTPConnection(host, int(port), timeout=5)
        self.stop = threading.Event()
        self.requests = 0
        self.bytes = 0
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def get(self, path: str) -> bytes:
        self.conn.request("GET", path)
        body = self.conn.getresponse().read()
        self.requests += 1
        self.bytes += len(body)
        return body

    def run(self):
        last = None
        self.get("/")
        self.get("/api/model")
        while not self.stop.is_set():
            frames = json.loads(self.get("/api/status"))["frames"]
            if frames != last:
                last = frames
                self.get(f"/api/image/frame.png?n={frames}")
                self.get(f"/api/image/input.png?n={frames}")
            self.stop.wait(POLL_MS / 1000)

    def close(self):
        self.stop.set()
        self.thread.join(2)
        self.conn.close()


class ChromiumPage:
    """The real page in headless Debian chromium (Playwright), when --chromium is given."""

    def __init__(self, url: str):
        from playwright.sync_api import sync_playwright

        self._p = sync_playwright().start()
        self.browser = self._p.chromium.launch(executable_path="/usr/bin/chromium", args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"])
        self.page = self.browser.new_page()
        self.page.goto(url)
        self.requests = self.bytes = 0

    def close(self):
        self.browser.close()
        self._p.stop()


def fresh_rss(workdir: Path, model: Path, web: bool, seconds: float) -> float:
    """VmRSS (MB) of a daemon started with the page off or on (then polled like the page, after
    one picture classified through /api/predict, which makes the server's own runtime) after
    ``seconds`` of running at full speed."""
    daemon = Daemon(workdir, model, web=web)
    try:
        client = None
        if web:
            host, port = daemon.url.split("//", 1)[1].strip("/").rsplit(":", 1)
            conn = http.client.HTTPConnection(host, int(port), timeout=10)
            conn.request("POST", "/api/predict", (SAMPLES_DIR / "c-1-1.png").read_bytes(), {"Content-Type": "image/png"})
            if conn.getresponse().status != 200:
                raise SystemExit("bench: /api/predict did not answer 200")
            conn.close()
            client = PageClient(daemon.url)
        daemon.loop_fps(seconds)
        rss = daemon.rss()
        if client:
            client.close()
        return rss
    finally:
        daemon.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="Daemon loop fps with the web page open, idle and off.")
    parser.add_argument("--model", type=model_file, default=REPO / "models" / "digits01.npz")
    parser.add_argument("--seconds", type=positive, default=2.0, help="length of each phase (default 2)")
    parser.add_argument("--rounds", type=count(1), default=6, help="times each phase is measured (default 6)")
    parser.add_argument("--chromium", action="store_true", help="the page in headless Chromium, not an emulated client")
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    args = parser.parse_args()
    results = {"off": [], "idle": [], "page": []}
    served = []
    with tempfile.TemporaryDirectory() as tmp:
        daemon = Daemon(Path(tmp), args.model.resolve())
        try:
            daemon.loop_fps(1.0)  # warm up
            for round_ in range(args.rounds):
                # Every other round backwards, so a drift in the machine's load favours no phase.
                for phase in ("off", "idle", "page")[::1 if round_ % 2 == 0 else -1]:
                    url = daemon.switch(web=phase != "off")
                    if phase != "page":
                        results[phase].append(daemon.loop_fps(args.seconds))
                        continue
                    client = (ChromiumPage if args.chromium else PageClient)(url)
                    try:
                        time.sleep(0.3 if not args.chromium else 1.0)  # page loaded, polling
                        results["page"].append(daemon.loop_fps(args.seconds))
                    finally:
                        client.close()
                    served.append((client.requests, client.bytes))
        finally:
            daemon.stop()
        rss = {web: fresh_rss(Path(tmp), args.model.resolve(), web, 2 * args.seconds) for web in (False, True)}
        runtime = make_runtime(load_bundle(args.model), "auto").name  # as the daemon's default config
        floor = dependency_floor(args.model.resolve(), runtime, Path(tmp))
    med = {k: [statistics.median(r[i] for r in v) for i in range(3)] for k, v in results.items()}
    who = "headless Chromium with the page" if args.chromium else f"a client polling like the page ({POLL_MS} ms)"
    print(f"daemon loop, {args.rounds} rounds of {args.seconds:g} s per phase, samples at full speed (medians):")
    for phase, values in results.items():
        fps, cpu, loop_cpu = med[phase]
        print(f"  {phase:<5} {fps:7.1f} fps  ({', '.join(f'{v[0]:.0f}' for v in values)});  CPU per frame: "
              f"process {cpu:.3f} ms, loop thread {loop_cpu:.3f} ms")
    if not args.chromium:
        reqs = sum(r for r, _ in served) / (args.rounds * args.seconds)
        kb = sum(b for _, b in served) / 1024 / (args.rounds * args.seconds)
        print(f"  page = {who}: {reqs:.1f} requests/s, {kb:.0f} KB/s")
    ratio = {k: med[k][0] / med["off"][0] for k in ("page", "idle")}
    cpu_ratio = {k: med[k][1] / med["off"][1] for k in ("page", "idle")}
    print(f"memory (fresh daemons): page off {rss[False]:.1f} MB, page on (a drawing classified, polled) {rss[True]:.1f} MB; dependency "
          f"floor ({runtime} runtime, bench/pipeline.py) {floor:.1f} MB: {rss[False] - floor:+.1f} and "
          f"{rss[True] - floor:+.1f} MB above it (goal: +6 MB at most)")
    print(f"fps ratios: page/off {ratio['page']:.3f}, idle/off {ratio['idle']:.3f};  process CPU per frame: "
          f"page/off {cpu_ratio['page']:.3f}, idle/off {cpu_ratio['idle']:.3f}")
    if args.json:
        print(json.dumps({"fps_off": round(med["off"][0], 1), "fps_idle": round(med["idle"][0], 1),
                          "fps_page": round(med["page"][0], 1), "ratio_page_off": round(ratio["page"], 4),
                          "ratio_idle_off": round(ratio["idle"], 4),
                          "cpu_ms_per_frame": {k: round(v[1], 4) for k, v in med.items()},
                          "loop_cpu_ms_per_frame": {k: round(v[2], 4) for k, v in med.items()},
                          "rss_mb_page_off": round(rss[False], 1), "rss_mb_page_on": round(rss[True], 1),
                          "floor_rss_mb": round(floor, 1),
                          "client": who, "fps_runs": {k: [round(r[0], 1) for r in v] for k, v in results.items()}}))

if __name__ == "__main__":
    main()
