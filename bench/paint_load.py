"""Load test of a running GAN Paint server: concurrent clients painting stroke after stroke.

    python main.py --mode=paint --flagfile=configs/toy.cfg --port=8000 &
    python bench/paint_load.py --url=http://127.0.0.1:8000 --pid=$! [--clients=8] [--seconds=30]

Each client works like a person on the page: it picks a sample, adds one
random brush stroke (a disc of a random concept; add, remove or now and then
erase) and asks for the render with its whole stroke list, again and again;
after `--strokes_per_image` strokes it resets and takes another sample.
Prints the edit latency (p50, p95, max), the request rate, the errors (any
non-200 answer or failed connection), and the server's resident memory
(from /proc/PID/status) at the start, its peak while sampling once a
second, and at the end.
"""
import argparse
import http.client
import json
import random
import threading
import time
import urllib.parse

import numpy as np

from jaxdissect.paint.masks import encode_mask


def rss_mib(pid):
    """Resident memory of process `pid` in MiB (Linux), or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class Client:
    def __init__(self, url, number, strokes_per_image):
        parts = urllib.parse.urlsplit(url)
        self.connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
        self.rng = random.Random(number)
        self.strokes_per_image = strokes_per_image
        self.latencies, self.errors = [], []

    def request(self, method, path, body=None):
        headers = {"Content-Type": "application/json"} if body is not None else {}
        self.connection.request(method, path, body=body, headers=headers)
        response = self.connection.getresponse()
        payload = response.read()
        if response.status != 200:
            raise RuntimeError(f"{method} {path}: HTTP {response.status} {payload[:200]!r}")
        return json.loads(payload)

    def random_stroke(self, resolution, concepts):
        rows, cols = np.mgrid[:resolution, :resolution]
        cy, cx = self.rng.uniform(0, resolution), self.rng.uniform(0, resolution)
        radius = self.rng.uniform(resolution / 20, resolution / 6)
        mask = (rows + 0.5 - cy) ** 2 + (cols + 0.5 - cx) ** 2 <= radius ** 2
        mode = self.rng.choices(["add", "remove", "erase"], [0.6, 0.3, 0.1])[0]
        return {"mode": mode, "concept": None if mode == "erase" else self.rng.choice(concepts),
                "strength": round(self.rng.uniform(0.3, 1.0), 2), "mask": encode_mask(mask)}

    def run(self, deadline):
        try:
            info = self.request("GET", "/api/info")
            concepts = [c["name"] for c in self.request("GET", "/api/concepts")]
        except (OSError, RuntimeError, ValueError) as e:
            self.errors.append(str(e))
            return
        per_image = min(self.strokes_per_image, info["max_strokes"])
        strokes, sample = [], self.rng.randrange(10000)
        while time.monotonic() < deadline:
            if len(strokes) == per_image:
                strokes, sample = [], self.rng.randrange(10000)
            strokes.append(self.random_stroke(info["resolution"], concepts))
            body = json.dumps({"sample": sample, "strokes": strokes})
            started = time.monotonic()
            try:
                rendered = self.request("POST", "/api/render", body)
                if rendered["strokes"] != len(strokes) or not rendered["image"].startswith("data:image/png"):
                    raise RuntimeError(f"unexpected answer {str(rendered)[:200]}")
                self.latencies.append(time.monotonic() - started)
            except (OSError, RuntimeError, ValueError, http.client.HTTPException) as e:
                self.errors.append(str(e))
                self.connection.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--pid", type=int, help="the server's process id, to report its memory")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--strokes_per_image", type=int, default=16)
    args = parser.parse_args()

    rss = [rss_mib(args.pid)] if args.pid else []
    clients = [Client(args.url, i, args.strokes_per_image) for i in range(args.clients)]
    deadline = time.monotonic() + args.seconds
    threads = [threading.Thread(target=c.run, args=(deadline,)) for c in clients]
    started = time.monotonic()
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        time.sleep(1)
        if args.pid:
            rss.append(rss_mib(args.pid))
    elapsed = time.monotonic() - started

    latencies = np.array([x for c in clients for x in c.latencies]) * 1000
    errors = [e for c in clients for e in c.errors]
    print(f"{args.clients} clients, {elapsed:.1f} s: {len(latencies)} edits ({len(latencies) / elapsed:.1f}/s), "
          f"{len(errors)} errors")
    if len(latencies):
        p50, p95 = np.percentile(latencies, [50, 95])
        print(f"edit latency ms: p50 {p50:.1f}  p95 {p95:.1f}  max {latencies.max():.1f}")
    for e in errors[:5]:
        print(f"  error: {e}")
    if args.pid and None not in rss:
        print(f"server RSS MiB: start {rss[0]:.0f}  peak {max(rss):.0f}  end {rss[-1]:.0f}")
    elif not args.pid:
        print("server RSS: not measured (give --pid)")


if __name__ == "__main__":
    main()
