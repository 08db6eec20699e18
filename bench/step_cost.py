"""The model step alone, no server: step time against the batch width, with its encode / LM / decode split.

For each width it loads the checkpoint afresh (a model's streaming state can be entered only once,
so each width runs in its own Python process), builds a ``voice.engine.batched.BatchedEngine`` of
exactly that many rows (``batch_size = resize_step = width``, no compile), runs a few unmeasured
steps, and then times ``--reps`` steps of ``engine._step_rows`` -- what the inference thread runs
per tick: Mimi encode, LM step, Mimi decode, all rows live -- on random audio, and the three parts
alone (the same calls, timed one by one). Figures are p50 and p95 in ms; ``per row`` is the p50
over the width; ``RTF`` is the step p50 over the 80 ms frame (under 1: the engine keeps up with
that many sessions, before the server's own work per frame).

Usage (from the repository root)::

    .venv/bin/python bench/step_cost.py [--widths 1,8,16,24,32,40,48,64] [--threads 1] [--reps 15]
    .venv/bin/python bench/step_cost.py --model kyutai/moshiko-pytorch-bf16 --device cuda --widths 1,8,32,64

The default is the demo checkpoint (written into a temporary folder) on the CPU with one torch
thread: the server's engine process steps on one core. ``--out`` also writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # Run as a script: put the repository root first on sys.path instead of bench/ (see realtime_bench.py).
    _REPO = Path(__file__).resolve().parent.parent
    _HERE = _REPO / "bench"
    sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _HERE]
    sys.path.insert(0, str(_REPO))

FRAME_MS = 80.0
DEFAULT_WIDTHS = "1,8,16,24,32,40,48,64"


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def summary_ms(seconds: list[float]) -> dict[str, float | None]:
    p50, p95 = percentile(seconds, 50), percentile(seconds, 95)
    return {
        "p50_ms": None if p50 is None else round(p50 * 1000, 2),
        "p95_ms": None if p95 is None else round(p95 * 1000, 2),
    }


def measure_width(model_ref: str, width: int, reps: int, warmup: int, threads: int, device: str) -> dict[str, Any]:
    """One width, in this process: a fresh model, an engine as wide as ``width``, timed steps."""
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    from voice.engine.batched import BatchedEngine
    from voice.engine.checkpoint import load_model, resolve_device

    torch_device = resolve_device(device)
    load_started = time.perf_counter()
    model = load_model(model_ref, torch_device)
    load_s = time.perf_counter() - load_started
    engine = BatchedEngine(
        model, batch_size=width, tick_s=FRAME_MS / 1000, inbox_frames=8, compile=False, resize_step=width
    )
    mimi, lm_gen = model.mimi, engine.lm_gen

    def sync() -> None:
        if torch_device.type == "cuda":
            torch.cuda.synchronize()

    steps: list[float] = []
    parts: dict[str, list[float]] = {"encode": [], "lm": [], "decode": []}
    with engine._compile_context():
        ones = torch.ones(width, dtype=torch.bool)
        zeros = torch.zeros(width, dtype=torch.bool)
        generator = torch.Generator().manual_seed(width)
        x = torch.randn(width, 1, 1920, generator=generator) * 0.1
        for _ in range(warmup):
            engine._step_rows(x, ones, zeros)
        sync()
        for _ in range(reps):
            started = time.perf_counter()
            engine._step_rows(x, ones, zeros)
            sync()
            steps.append(time.perf_counter() - started)
        # The three parts alone, timed one by one: the same calls _step_rows makes.
        mask = ones.to(torch_device)
        for _ in range(reps):
            started = time.perf_counter()
            mimi.set_exec_mask(mask)
            codes = mimi.encode(x.to(torch_device))
            sync()
            encoded = time.perf_counter()
            lm_gen.set_exec_mask(mask)
            tokens = lm_gen.step(codes)
            sync()
            stepped = time.perf_counter()
            if tokens is not None:
                mimi.set_exec_mask(mask)
                mimi.decode(tokens[:, 1:].clamp(min=0)).float().cpu()
                sync()
                parts["decode"].append(time.perf_counter() - stepped)
            parts["encode"].append(encoded - started)
            parts["lm"].append(stepped - encoded)
    step = summary_ms(steps)
    return {
        "width": width,
        "threads": torch.get_num_threads(),
        "device": str(torch_device),
        "model": model.name,
        "load_s": round(load_s, 2),
        "reps": reps,
        "step": step,
        "per_row_ms": None if step["p50_ms"] is None else round(step["p50_ms"] / width, 2),
        "rtf": None if step["p50_ms"] is None else round(step["p50_ms"] / FRAME_MS, 3),
        **{name: summary_ms(values) for name, values in parts.items()},
    }


def measure_in_child(model_ref: str, width: int, args: argparse.Namespace) -> dict[str, Any]:
    """:func:`measure_width` in a fresh Python process (its own streaming state, its own threads)."""
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--one",
        str(width),
        "--model",
        model_ref,
        "--threads",
        str(args.threads),
        "--reps",
        str(args.reps),
        "--warmup",
        str(args.warmup),
        "--device",
        args.device,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"width": width, "failure": f"exit {done.returncode}: {done.stderr.strip()[-2000:]}"}
    return json.loads(lines[-1])


def fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def table(results: list[dict[str, Any]]) -> list[str]:
    lines = [
        f"{'width':>5}  {'step p50':>8}  {'p95':>6}  {'per row':>7}  {'RTF':>5}  "
        f"{'encode':>6}  {'LM':>6}  {'decode':>6}  {'threads':>7}",
    ]
    for r in results:
        if "failure" in r:
            lines.append(f"{r['width']:>5}  failed: {r['failure'].splitlines()[-1] if r['failure'] else ''}")
            continue
        lines.append(
            f"{r['width']:>5}  {fmt(r['step']['p50_ms']):>8}  {fmt(r['step']['p95_ms']):>6}  "
            f"{fmt(r['per_row_ms']):>7}  {r['rtf'] if r['rtf'] is not None else 'n/a':>5}  "
            f"{fmt(r['encode']['p50_ms']):>6}  {fmt(r['lm']['p50_ms']):>6}  {fmt(r['decode']['p50_ms']):>6}  "
            f"{r['threads']:>7}"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--widths", default=DEFAULT_WIDTHS, help="batch widths, comma-separated")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--reps", type=int, default=15, help="timed steps per width")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured steps per width first")
    parser.add_argument("--model", default="", help="a Hub repo id or local folder (default: the demo checkpoint)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per width")
    parser.add_argument("--out", default="", help="also write the figures to this JSON file")
    parser.add_argument("--one", type=int, default=0, help=argparse.SUPPRESS)  # the child: one width, JSON out
    args = parser.parse_args(argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    if args.one:
        print(json.dumps(measure_width(args.model, args.one, args.reps, args.warmup, args.threads, args.device)))
        return 0
    try:
        widths = sorted({int(value) for value in args.widths.split(",") if value.strip()})
    except ValueError:
        parser.error("--widths takes comma-separated integers")
    if not widths or min(widths) < 1 or args.reps < 1:
        parser.error("--widths needs positive integers and --reps at least 1")
    with tempfile.TemporaryDirectory(prefix="step-cost-") as tmp:
        model_ref = args.model
        if not model_ref:
            from voice.engine.demo_checkpoint import write_demo_checkpoint

            model_ref = str(write_demo_checkpoint(Path(tmp) / "demo-checkpoint"))
        print(f"model step alone: {args.model or 'demo checkpoint'}, device {args.device}, threads {args.threads}")
        print("times in ms (p50 unless said); encode / LM / decode timed alone, each a part of the step")
        results = []
        print(table([])[0], flush=True)
        for width in widths:
            result = measure_in_child(model_ref, width, args)
            results.append(result)
            print(table([result])[1], flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"widths": results, "threads": args.threads, "device": args.device}))
    return 0 if all("failure" not in result for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
