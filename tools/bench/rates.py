"""What the per-kernel rate scripts (conv_rate.py, attention_rate.py) share: their thread count,
their shapes (a JSON file next to this one, read by the Rust example of the same name too), and a
median of 5 timed calls after one warm-up."""
import argparse
import json
import os
import statistics
import time

import torch


def setup(doc):
    """Parses `--threads` (default 2) and an optional WORD (only the shapes whose description
    contains it, as the Rust examples take it) and sets torch's intra-op threads."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("word", nargs="?", default="", help="only the shapes whose description contains it")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    return args


def shapes(name, word=""):
    """The rows of tools/bench/<name>, shared with the Rust example; with `word`, those whose
    description (the first column) contains it."""
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), name)) as f:
        return [row for row in json.load(f) if word in row[0]]


def median_time(f, reps=5):
    """Median seconds of `reps` calls of `f` after one warm-up."""
    f()
    t = []
    for _ in range(reps):
        start = time.perf_counter()
        f()
        t.append(time.perf_counter() - start)
    return statistics.median(t)
