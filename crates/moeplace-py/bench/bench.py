"""Speed of the Python calls (a benchmark, not a test): writes docs/PYTHON-BENCH.md.

- ``rebalance_experts`` at DeepSeek-V3 shape (58 layers x 256 experts, 320 slots,
  8 groups, 8 nodes, 64 GPUs), ``method="eplb"`` and ``"balance"``, against the
  solve time of the same Rust code without Python (``moeplace bench balance``), and,
  with ``--vllm``, the EPLB implementation inside the vllm package (its wheel is
  downloaded with pip at run time into a temporary folder; it needs torch).
- The dispatcher's picks per second from Python on batches of 4096 tokens (top-8)
  of a DeepSeek-V3-shaped plan, on one core.

Run from the repository root after ``pip install ./crates/moeplace-py``:

    python crates/moeplace-py/bench/bench.py [--moeplace target/release/moeplace] [--vllm]
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import os
import pathlib
import platform
import re
import subprocess
import sys
import tempfile
import time
import zipfile

import numpy as np

import moeplace

ROOT = pathlib.Path(__file__).resolve().parents[3]
LAYERS, EXPERTS, SLOTS, GROUPS, NODES, GPUS, TOP_K = 58, 256, 320, 8, 8, 64, 8


def v3_loads(seed: int = 0) -> np.ndarray:
    """Skewed per-layer expert loads of DeepSeek-V3's shape (Zipf-like, shuffled)."""
    rng = np.random.default_rng(seed)
    ranks = np.arange(1, EXPERTS + 1, dtype=np.float64)
    out = np.empty((LAYERS, EXPERTS))
    for layer in range(LAYERS):
        out[layer] = rng.permutation(20000.0 * TOP_K * ranks ** -0.8 / (ranks ** -0.8).sum())
    return np.round(out)


def best_of(f, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return min(times)


def rust_solve_times(exe: str) -> dict:
    """Solve times (ms) of the DeepSeek-V3, 64-redundant rows of `moeplace bench balance`."""
    out = subprocess.run([exe, "bench", "balance", "--repeat", "3"], capture_output=True, text=True, check=True).stdout
    rows = {}
    for line in out.splitlines():
        if "DeepSeek-V3, 64 redundant" in line:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows[cells[3]] = f"{float(cells[-1]):.1f} ms"
    return rows


def vllm_eplb():
    """vllm's EPLB `rebalance_experts`, from its wheel downloaded at run time."""
    import torch  # noqa: F401  (vllm's EPLB is torch code)

    tmp = tempfile.mkdtemp(prefix="vllm-wheel-")
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, "vllm"], check=True)
    wheel = glob.glob(os.path.join(tmp, "vllm-*.whl"))[0]
    with zipfile.ZipFile(wheel) as z:
        names = [n for n in z.namelist() if "/eplb/" in n and n.endswith(".py")]
        source = next(n for n in names if "def rebalance_experts" in z.read(n).decode())
        path = z.extract(source, tmp)
    spec = importlib.util.spec_from_file_location("vllm_eplb", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return os.path.basename(wheel), mod


def dispatch_rate(plan: moeplace.Plan, name: str, repeat: int) -> float:
    rng = np.random.default_rng(1)
    scores = rng.random((4096, EXPERTS))
    ids = np.argsort(-scores, axis=1)[:, :TOP_K].astype(np.int64)
    homes = (np.arange(4096) % GPUS).astype(np.int64)
    d = moeplace.Dispatcher(plan, name)
    t = best_of(lambda: [d.dispatch(layer, ids, homes) for layer in range(LAYERS)], repeat)
    return 4096 * TOP_K * LAYERS / t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--moeplace", default=str(ROOT / "target" / "release" / "moeplace"))
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--vllm", action="store_true", help="also time vllm's EPLB (downloads its wheel; needs torch)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "PYTHON-BENCH.md"))
    args = ap.parse_args()
    os.environ.setdefault("RAYON_NUM_THREADS", "1")

    w = v3_loads()
    rows = []
    for method in ("eplb", "balance"):
        t = best_of(lambda: moeplace.rebalance_experts(w, SLOTS, GROUPS, NODES, GPUS, method=method), args.repeat)
        rows.append((f"moeplace.rebalance_experts(method={method!r})", f"{t * 1e3:.1f} ms"))
    if args.vllm:
        try:
            wheel, mod = vllm_eplb()
            import torch

            wt = torch.from_numpy(w)
            t = best_of(lambda: mod.rebalance_experts(wt, SLOTS, GROUPS, NODES, GPUS), args.repeat)
            rows.append((f"vllm EPLB ({wheel}, torch {torch.__version__})", f"{t * 1e3:.1f} ms"))
        except Exception as e:  # reported, not hidden: the table says why the row is missing
            rows.append(("vllm EPLB", f"not run: {type(e).__name__}: {e}"))
    rust = rust_solve_times(args.moeplace) if os.path.isfile(args.moeplace) else {}

    stats = moeplace.Statistics.from_topk(
        np.argsort(-np.random.default_rng(2).random((2000, LAYERS, EXPERTS)), axis=2)[:, :, :TOP_K],
        num_experts=EXPERTS,
        token_sample=0,
        request_vectors=False,
    )
    plan = moeplace.plan(stats, "balance", gpus=GPUS, nodes=NODES, slots=SLOTS, params={"groups": GROUPS})
    rates = [(name, dispatch_rate(plan, name, args.repeat)) for name in ("primary", "nearest", "gesr", "random")]

    lines = [
        "# Python package speed",
        "",
        "Written by `python crates/moeplace-py/bench/bench.py`" + (" --vllm" if args.vllm else "") + f" on "
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, numpy "
        f"{np.__version__}; best of {args.repeat}, one thread (`RAYON_NUM_THREADS=1`).",
        "",
        f"## rebalance_experts at DeepSeek-V3 shape ({LAYERS} x {EXPERTS}, {SLOTS} slots, {GROUPS} groups, "
        f"{NODES} nodes, {GPUS} GPUs)",
        "",
        "| call | time |",
        "|---|---|",
        *[f"| {a} | {b} |" for a, b in rows],
        "",
        "The same solves without Python (`moeplace bench balance`, its own DeepSeek-V3-shaped loads, 64 "
        "redundant slots):",
        "",
        "| placer | solve time |",
        "|---|---|",
        *([f"| {k} | {v} |" for k, v in rust.items()] or ["| (moeplace binary not found: pass --moeplace) | |"]),
        "",
        f"## Dispatcher: picks per second from Python, 4096-token batches, top-{TOP_K}",
        "",
        f"A `balance` plan of DeepSeek-V3 shape; each call is one layer's batch "
        f"(`Dispatcher.dispatch(layer, topk_ids[4096, {TOP_K}], homes[4096])`), all {LAYERS} layers in turn.",
        "",
        "| dispatcher | M picks/s |",
        "|---|---|",
        *[f"| {n} | {r / 1e6:.1f} |" for n, r in rates],
        "",
    ]
    pathlib.Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
