"""Speed of the Python calls (a benchmark, not a test): writes docs/PYTHON-BENCH.md.

- ``rebalance_experts`` at DeepSeek-V3 shape (58 layers x 256 experts, 320 slots,
  8 groups, 8 nodes, 64 GPUs), ``method="eplb"`` and ``"balance"``, against the
  same solve by the command line on the same loads (``moeplace plan``), and,
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
import subprocess
import sys
import tempfile
import time
import types
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
    """Best CPU time of the process over `repeat` runs: on a shared machine wall time
    measures the neighbours (the calls run on one thread here)."""
    times = []
    for _ in range(repeat):
        t = time.process_time()
        f()
        times.append(time.process_time() - t)
    return min(times)


def cli_solve_times(exe: str, w: np.ndarray, repeat: int) -> dict:
    """CPU time of `moeplace plan` on the same loads (an SGLang `logical_count` file):
    the Rust solve plus reading the loads and writing the plan, best of `repeat`."""
    import json
    import resource

    tmp = pathlib.Path(tempfile.mkdtemp(prefix="moeplace-bench-"))
    (tmp / "loads.json").write_text(json.dumps({"logical_count": w.astype(np.int64).tolist()}))
    out = {}
    for placer in ("eplb", "balance"):
        best = None
        for _ in range(repeat):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            subprocess.run(
                [exe, "plan", "--placer", placer, "--stats", str(tmp / "loads.json"), "--top-k", str(TOP_K),
                 "--gpus", str(GPUS), "--nodes", str(NODES), "--slots", str(SLOTS), "--groups", str(GROUPS),
                 "-o", str(tmp / "plan.json")],
                check=True, capture_output=True,
            )
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            t = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
            best = t if best is None else min(best, t)
        out[placer] = best
    return out


def vllm_eplb():
    """vllm's EPLB `rebalance_experts`, from its wheel downloaded at run time: a
    module-level function in older releases, a classmethod of the default policy
    (`eplb/policy/default.py`) in newer ones. The eplb folder is loaded as a package
    of its own, so vllm's own `__init__` (and its GPU imports) never runs."""
    import torch  # noqa: F401  (vllm's EPLB is torch code)

    tmp = tempfile.mkdtemp(prefix="vllm-wheel-")
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, "vllm"], check=True)
    wheel = glob.glob(os.path.join(tmp, "vllm-*.whl"))[0]
    with zipfile.ZipFile(wheel) as z:
        names = [n for n in z.namelist() if "/eplb/" in n and n.endswith(".py")]
        z.extractall(tmp, names)
        sources = [n for n in names if "def rebalance_experts" in z.read(n).decode()]
    for source in sources:
        folder = os.path.dirname(os.path.join(tmp, source))
        package = "vllm_eplb_" + str(abs(hash(folder)))
        pkg = types.ModuleType(package)
        pkg.__path__ = [folder]
        sys.modules[package] = pkg
        stem = os.path.splitext(os.path.basename(source))[0]
        try:
            mod = importlib.import_module(f"{package}.{stem}")
        except ImportError:
            continue
        if callable(getattr(mod, "rebalance_experts", None)):
            return os.path.basename(wheel), mod.rebalance_experts
        for value in vars(mod).values():
            method = getattr(value, "rebalance_experts", None)
            if isinstance(value, type) and callable(method) and not getattr(method, "__isabstractmethod__", False):
                return os.path.basename(wheel), method
    raise RuntimeError(f"no concrete rebalance_experts in {os.path.basename(wheel)}'s eplb folder")


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
    rows, py = [], {}
    for method in ("eplb", "balance"):
        t = best_of(lambda: moeplace.rebalance_experts(w, SLOTS, GROUPS, NODES, GPUS, method=method), args.repeat)
        py[method] = t
        rows.append((f"moeplace.rebalance_experts(method={method!r})", f"{t * 1e3:.1f} ms"))
    if args.vllm:
        try:
            wheel, rebalance = vllm_eplb()
            import torch

            wt = torch.from_numpy(w)
            t = best_of(lambda: rebalance(wt, SLOTS, GROUPS, NODES, GPUS), args.repeat)
            rows.append((f"vllm EPLB ({wheel}, torch {torch.__version__})", f"{t * 1e3:.1f} ms"))
        except Exception as e:  # reported, not hidden: the table says why the row is missing
            rows.append(("vllm EPLB", f"not run: {type(e).__name__}: {e}"))
    rust = cli_solve_times(args.moeplace, w, args.repeat) if os.path.isfile(args.moeplace) else {}

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
        f"{np.__version__}; best of {args.repeat}, CPU time of one thread (`RAYON_NUM_THREADS=1`); "
        f"load average {os.getloadavg()[0]:.1f} when written. The wheel: "
        "`maturin build --profile dev` (dependencies and moeplace at opt-level 2, no LTO).",
        "",
        f"## rebalance_experts at DeepSeek-V3 shape ({LAYERS} x {EXPERTS}, {SLOTS} slots, {GROUPS} groups, "
        f"{NODES} nodes, {GPUS} GPUs)",
        "",
        "| call | time |",
        "|---|---|",
        *[f"| {a} | {b} |" for a, b in rows],
        "",
        "The same loads through the command line (`moeplace plan --stats loads.json` with the loads as an "
        "SGLang `logical_count` file: reading them, the Rust solve, writing the plan; CPU time of the process):",
        "",
        "| placer | CPU time | Python call / command line |",
        "|---|---|---|",
        *([f"| {k} | {v * 1e3:.1f} ms | {py[k] / v:.2f} |" for k, v in rust.items()]
          or ["| (moeplace binary not found: pass --moeplace) | | |"]),
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
