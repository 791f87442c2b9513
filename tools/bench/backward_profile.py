"""Where a concept-learning step's backward pass spends its time, per kind of op, in adp's candle
plugin and in the PyTorch peer, on the same diffusers folder, photo and thread count.

    /root/.cache/adp/golden-venv/bin/python tools/bench/backward_profile.py --adp target/release/adp \\
        --plugin-dir target/release --threads 2 --sd SD_DIR bottle_photos/

adp's side: `adp bench --plugin candle --rows learn-step-1 --repeats 1` with
ADP_CANDLE_OP_TIMES=1, whose custom ops print each backward call's wall time
(backends/candle/src/op_times.rs), and which prints its UNet forward passes (the step's, tracked,
and the row's untracked one, op by op), its whole backward pass and its graph release; the timed
step's lines are summed per op (and, with --shapes, per output-gradient shape), and what the
whole pass took beyond them is candle's own ops (views, copies, adds, the text encoder's composed
attention) and its gradient bookkeeping. The peer's side: the step of tools/bench/peer.py
(`Diffusion.learn_step`'s graph), its tracked forward and backward
pass timed without a profiler (median of --repeats after one warm-up) and then once under
torch.profiler, whose autograd nodes (inclusive times; the profiler adds its own overhead) are
summed into the same kinds. The kinds match up as far as the two graphs do: candle's `geglu` op is
diffusers' split, GELU and product; the text encoder's attention is PyTorch's fused attention but
candle's own ops.
"""
import argparse
import collections
import os
import statistics
import subprocess
import sys
import time

# PyTorch's autograd node -> the kind of adp op it corresponds to.
KINDS = {
    "ConvolutionBackward0": "conv",
    "AddmmBackward0": "linear",
    "MmBackward0": "linear",
    "NativeGroupNormBackward0": "norm",
    "NativeLayerNormBackward0": "norm",
    "GeluBackward0": "geglu + activation",
    "SiluBackward0": "geglu + activation",
    "SplitBackward0": "geglu + activation",
    "MulBackward0": "geglu + activation",
}
ORDER = ["conv", "linear", "attention", "norm", "geglu + activation", "other"]


def kind_of_torch(node):
    return "attention" if "Attention" in node else KINDS.get(node, "other")


def kind_of_adp(op):
    return {"geglu": "geglu + activation", "activation": "geglu + activation"}.get(op, op)


def adp_lines(a):
    """The op-time lines of `adp bench --plugin candle --rows learn-step-1 --repeats 1`."""
    env = dict(os.environ, ADP_CANDLE_OP_TIMES="1", RAYON_NUM_THREADS=str(a.threads),
               OMP_NUM_THREADS=str(a.threads))
    cmd = [a.adp, "bench", "--plugin", "candle", "--rows", "learn-step-1", "--repeats", "1",
           "--sd", a.sd, "--quiet"] + sum((["--plugin-dir", d] for d in a.plugin_dir), []) + a.images
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{r.stderr[-2000:]}")
    lines = []
    for line in r.stderr.splitlines():
        if line.startswith(("adp-op-time ", "adp-op-forward ")):
            tag, op, us, dims = line.split(" ", 3)
            lines.append((tag == "adp-op-forward", op, int(us) / 1e3, dims))
    if not any(op == "unet-forward" for _, op, _, _ in lines):
        sys.exit("adp printed no op times: is the candle plugin built from this tree?")
    return lines


def unet_forwards(lines):
    """Each UNet forward pass: its wall ms and its ops' forward ms per kind ("other": the rest;
    `conv-output-copy` is part of `conv` and shown on its own besides)."""
    passes, kinds = [], None
    for forward, op, ms, _ in lines:
        if op == "unet-start":
            kinds = collections.defaultdict(float)
        elif op == "unet-forward" and kinds is not None:
            kinds["other"] = ms - sum(v for k, v in kinds.items() if k != "conv-output-copy")
            passes.append((ms, kinds))
            kinds = None
        elif forward and kinds is not None:
            kinds[op] += ms
    return passes


def adp_side(a):
    # A step: its tracked UNet forward pass, its ops' backward calls, its whole backward pass,
    # the release of its graph.
    lines = adp_lines(a)
    steps, current = [], None
    for forward, op, ms, dims in lines:
        if op == "unet-forward":
            current = {"ops": []}
        elif op == "backward-pass" and current is not None:
            current["backward-pass"] = ms
            steps.append(current)
        elif op == "graph-release" and steps:
            steps[-1]["graph-release"] = ms
        elif not forward and current is not None and "backward-pass" not in current:
            current["ops"].append((op, ms, dims))
    if not steps:
        sys.exit("adp printed no backward pass: is the candle plugin built from this tree?")
    step = steps[-1]  # the timed step (the first is the warm-up)
    total, ops = step["backward-pass"], step["ops"]
    kinds, shapes = collections.defaultdict(float), collections.defaultdict(lambda: [0.0, 0])
    for op, ms, dims in ops:
        # A checkpoint's backward runs its block's ops again (each printing its own line).
        if op != "checkpoint":
            kinds[kind_of_adp(op)] += ms
        shapes[(op, dims)][0] += ms
        shapes[(op, dims)][1] += 1
    kinds["other"] = total - sum(kinds.values())
    # The row's UNet forward passes: the warm-up step's and the timed step's (tracked), then the
    # warm-up and the timed call of its `unet_forward` part (untracked, the same latent shape).
    passes = unet_forwards(lines)
    if len(passes) != 4:
        sys.exit(f"adp printed {len(passes)} UNet forward passes, not the row's 4")
    return total, kinds, shapes, step.get("graph-release"), passes[1], passes[3]


def peer_side(a):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import torch
    import torch.nn.functional as F
    from torch.profiler import ProfilerActivity, profile

    import peer

    torch.set_num_threads(a.threads)
    d = peer.Diffusion(a.sd)
    size, gen = d.default_size, lambda seed: torch.Generator().manual_seed(seed)
    side = size // d.downsampling
    images = peer.photos(peer.list_images(a.images)[:1], size)
    concept = (0.01 * torch.randn(d.text_encoder.config.hidden_size, generator=gen(7))).requires_grad_(True)
    noise = torch.randn(1, d.unet.config.in_channels, side, side, generator=gen(2))
    ts = torch.full((1,), d.scheduler.config.num_train_timesteps // 2, dtype=torch.int64)
    with torch.no_grad():
        zt = d.scheduler.add_noise(d.encode(images), noise, ts)

    def seconds():
        """The tracked UNet forward's seconds and the backward pass's."""
        cond = d.conditioning([f"a photo of a {peer.Diffusion.PLACEHOLDER}"], concept)
        start = time.perf_counter()
        pred = d.unet(zt, ts, encoder_hidden_states=cond).sample
        forward = time.perf_counter() - start
        loss = F.mse_loss(pred, noise)
        concept.grad = None
        start = time.perf_counter()
        loss.backward()
        return forward, time.perf_counter() - start

    seconds()
    timed = [seconds() for _ in range(a.repeats)]
    forward = statistics.median(f for f, _ in timed) * 1e3
    plain = statistics.median(b for _, b in timed) * 1e3
    with profile(activities=[ProfilerActivity.CPU]) as p:
        profiled = seconds()[1] * 1e3
    kinds = collections.defaultdict(float)
    prefix = "autograd::engine::evaluate_function: "
    for e in p.key_averages():
        if e.key.startswith(prefix):
            kinds[kind_of_torch(e.key[len(prefix):])] += e.cpu_time_total / 1e3
    return plain, profiled, kinds, forward


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--adp", default="target/release/adp")
    ap.add_argument("--plugin-dir", action="append", default=[])
    ap.add_argument("--sd", required=True, help="diffusers folder (the step runs at its own size)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repeats", type=int, default=2, help="the peer's unprofiled backward passes")
    ap.add_argument("--shapes", action="store_true", help="adp's ops per output-gradient shape too")
    ap.add_argument("images", nargs="+")
    a = ap.parse_args()
    total, ours, shapes, release, tracked, untracked = adp_side(a)
    plain, profiled, theirs, forward = peer_side(a)
    print(f"UNet forward pass: candle {tracked[0]:.0f} ms tracked, {untracked[0]:.0f} ms untracked; "
          f"PyTorch {forward:.0f} ms tracked (median of {a.repeats})")
    print("graph release after the step: candle " + ("not printed" if release is None else f"{release:.0f} ms"))
    print("\n| candle forward op | tracked ms | untracked ms | difference ms |\n|---|---|---|---|")
    for k in sorted(set(tracked[1]) | set(untracked[1]), key=lambda k: -tracked[1].get(k, 0.0)):
        t, u = tracked[1].get(k, 0.0), untracked[1].get(k, 0.0)
        print(f"| {k} | {t:.0f} | {u:.0f} | {t - u:+.0f} |")
    print()
    print(f"backward pass: candle {total:.0f} ms; PyTorch {plain:.0f} ms "
          f"(median of {a.repeats}), {profiled:.0f} ms under the profiler\n")
    print("| kind | candle ms | PyTorch ms (profiled) | ratio |\n|---|---|---|---|")
    for k in ORDER:
        c, t = ours.get(k, 0.0), theirs.get(k, 0.0)
        print(f"| {k} | {c:.0f} | {t:.0f} | {c / t:.2f}× |" if t else f"| {k} | {c:.0f} | {t:.0f} | |")
    if a.shapes:
        print("\n| candle op | output-gradient dims | calls | ms |\n|---|---|---|---|")
        for (op, dims), (ms, n) in sorted(shapes.items(), key=lambda kv: -kv[1][0]):
            print(f"| {op} | {dims} | {n} | {ms:.1f} |")


if __name__ == "__main__":
    main()
