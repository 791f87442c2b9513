#!/usr/bin/env python3
"""adp and its PyTorch peer (peer.py) side by side: the same rows on the same weight files and
photos at the same thread count, interleaved (per round: the peer, then each adp plugin, row by
row) so that a slow spell of the machine costs them alike. Prints a markdown table of medians over
the rounds, each adp time with its ratio to the peer's, and every side's peak resident memory
(each row runs in a process of its own on both sides); then each side's CPU time per item (user +
system over all threads) for the rows timed as one call, and the rows' parts.

    /root/.cache/adp/golden-venv/bin/python tools/bench/side_by_side.py \\
        --adp target/release/adp --plugin-dir target/release --plugin candle --plugin tch \\
        --threads 2 --rounds 3 --repeats 5 --rows visual,clip-image,clip-dense,clip-text \\
        --clip /tmp/adp-fixtures-b16/clip PHOTO_DIR

The diffusion rows (unet, learn-step-1, learn-step-4, img2img-step) need `--sd DIR` (a diffusers
folder). `--size N` (pixels; default the model's own) is passed to both sides alike and applies to
the `unet` row only; the learning step and img2img run at the folder's own size (a folder whose
`unet/config.json` says `sample_size` 64 runs them at 512 px):

    ... --rows unet,learn-step-1,learn-step-4,img2img-step --sd SD_DIR PHOTO_DIR
    ... --rows unet --sd SD_DIR --size 512 PHOTO_DIR

Threads: the peer calls torch.set_num_threads(T); adp runs with RAYON_NUM_THREADS=T (candle) and
OMP_NUM_THREADS=T (libtorch's default intra-op threads).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
CLIP_ROWS = {"clip-image", "clip-dense", "clip-text"}
DIFFUSION_ROWS = {"unet", "learn-step-1", "learn-step-4", "img2img-step"}
PEER_ROWS = {"visual"} | CLIP_ROWS | DIFFUSION_ROWS


def run_json(cmd, env):
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        return {"error": f"exit {r.returncode}: {r.stderr.strip().splitlines()[-1:] }"}
    lines = [l for l in r.stdout.splitlines() if l.startswith("{")]
    return json.loads(lines[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--adp", required=True)
    p.add_argument("--plugin-dir")
    p.add_argument("--plugin", action="append", default=None)
    p.add_argument("--python", default=sys.executable, help="the peer's interpreter")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--shots", type=int, default=4)
    p.add_argument("--rows", default="visual")
    p.add_argument("--backbone", default=os.path.expanduser("~/.cache/adp/weights/efficientnet-lite0.safetensors"))
    p.add_argument("--clip")
    p.add_argument("--sd", help="diffusers folder (diffusion rows)")
    p.add_argument("--size", type=int, help="side in pixels of the unet row (default: the model's own)")
    p.add_argument("images", nargs="+")
    a = p.parse_args()
    plugins = a.plugin or ["candle", "tch"]
    rows = a.rows.split(",")
    t = str(a.threads)
    env = dict(os.environ, RAYON_NUM_THREADS=t, OMP_NUM_THREADS=t, MKL_NUM_THREADS=t)
    size = ["--size", str(a.size)] if a.size else []
    results = {}  # (row, side) -> list of row dicts
    for rnd in range(a.rounds):
        for row in rows:
            if row in PEER_ROWS:
                cmd = [a.python, os.path.join(HERE, "peer.py"), row, "--repeats", str(a.repeats),
                       "--threads", t, "--shots", str(a.shots)]
                if row == "visual":
                    cmd += ["--backbone", a.backbone]
                elif row in CLIP_ROWS:
                    cmd += ["--clip", a.clip] if a.clip else []
                else:
                    cmd += (["--sd", a.sd] if a.sd else []) + size
                results.setdefault((row, "pytorch"), []).append(run_json(cmd + a.images, env))
            for plugin in plugins:
                cmd = [a.adp, "bench", "--quiet", "--rows", row, "--plugin", plugin, "--repeats", str(a.repeats),
                       "--shots", str(a.shots), "--backbone", a.backbone]
                cmd += ["--plugin-dir", a.plugin_dir] if a.plugin_dir else []
                cmd += ["--clip", a.clip] if a.clip else []
                cmd += (["--sd", a.sd] if a.sd else []) + size
                results.setdefault((row, plugin), []).append(run_json(cmd + a.images, env))
            print(f"round {rnd + 1}/{a.rounds}: {row} done", file=sys.stderr, flush=True)

    def summary(runs):
        ok = [r for r in runs if "error" not in r]
        if not ok:
            return None, None, runs[-1].get("error")
        return (statistics.median(r["ms"] for r in ok),
                max((r.get("peak_rss_mb") or 0) for r in ok), None)

    sides = ["pytorch"] + plugins
    out = ["| row | per | " + " | ".join(f"{s} ms" for s in sides) + " | "
           + " | ".join(f"{s} peak MiB" for s in sides) + " |",
           "|" + "---|" * (2 + 2 * len(sides))]
    for row in rows:
        per = next((r.get("per") for s in sides for r in results.get((row, s), []) if "per" in r), "?")
        px = next((r["size"] for s in sides for r in results.get((row, s), []) if r.get("size")), None)
        peer, _, _ = summary(results.get((row, "pytorch"), [{"error": "no peer"}]))
        times, peaks = [], []
        for s in sides:
            ms, peak, err = summary(results.get((row, s), [{"error": "no peer for this row"}]))
            if ms is None:
                # The peer's failure too (a package missing from its venv, say), not a bare "-".
                times.append(f"- ({err})")
                peaks.append("-")
                continue
            ratio = f" ({ms / peer:.2f}x)" if peer and s != "pytorch" else ""
            times.append(f"{ms:.1f}{ratio}")
            peaks.append(f"{peak:.0f}")
        label = f"{row} @{px}" if px else row
        out.append(f"| {label} | {per} | " + " | ".join(times) + " | " + " | ".join(peaks) + " |")

    def ratio_cells(value):
        # One cell per side: value(side) (None where absent), with its ratio to the peer's.
        peer = value("pytorch")
        cells = []
        for s in sides:
            v = value(s)
            ratio = f" ({v / peer:.2f}x)" if v is not None and peer and s != "pytorch" else ""
            cells.append("-" if v is None else f"{v:.1f}{ratio}")
        return " | ".join(cells)

    def median_of(row, s, field):
        # Median over the rounds of field(result) for the results that have it.
        v = [x for x in (field(r) for r in results.get((row, s), [])) if x is not None]
        return statistics.median(v) if v else None

    # CPU time (user + system, every thread) per item, where both sides report it: unlike wall
    # time it leaves out what a virtual machine's CPU was taken away (steal) and what threads sat
    # idle, so a wall ratio above a CPU ratio says the time went to waiting, not to work.
    cpu = lambda r: r.get("cpu_ms")
    cpu_rows = [row for row in rows if median_of(row, "pytorch", cpu) is not None]
    if cpu_rows:
        out += ["", "| row: CPU time | " + " | ".join(f"{s} CPU ms" for s in sides) + " |",
                "|" + "---|" * (1 + len(sides))]
    for row in cpu_rows:
        out.append(f"| {row} | " + ratio_cells(lambda s: median_of(row, s, cpu)) + " |")
    # Each row's parts (where both sides report them): medians over the rounds, with ratios.
    parts = [(row, name) for row in rows
             for name in sorted({n for s in sides for r in results.get((row, s), []) for n in r.get("parts", {})})]
    if parts:
        out += ["", "| row: part | " + " | ".join(f"{s} ms" for s in sides) + " |", "|" + "---|" * (1 + len(sides))]
    for row, name in parts:
        part = lambda r: r.get("parts", {}).get(name)
        out.append(f"| {row}: {name} | " + ratio_cells(lambda s: median_of(row, s, part)) + " |")
    print("\n".join(out))
    print(f"\n{a.threads} threads, {a.rounds} rounds x {a.repeats} repeats, medians; load average "
          f"{os.getloadavg()[0]:.1f} at the end", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
