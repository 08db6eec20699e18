"""How many concurrent Realtime sessions a server holds in real time, at several batch sizes and
worker counts, beside the serial baseline.

What it measures
----------------
Configurations (``bench/cli.py``): the batched engine (every session one slot of a batch stepped
once per 80 ms tick) at every ``--workers`` count x every ``--max-sessions`` value
(``REALTIME_MAX_SESSIONS``; larger than K shows an over-sized batch), and the serial baseline
(``REALTIME_ENGINE=serial``: the old design, one batch-1 engine per session, all stepping under one
lock; one worker, ``--serial-ks``). Worker count 1 is a bare ``daphne
realtime_project.asgi:application`` (with its engine child process, in the default
``REALTIME_ENGINE_PROCESS``); N >= 2 is the production launch, ``supervisord -n -c
deploy/supervisord.conf`` with ``REALTIME_WEB_WORKERS=N`` (``bench/servers.py``). Each server gets a
free 127.0.0.1 port, a fresh SQLite database and demo checkpoint in a temporary folder, responses
that never end and no idle timeout.

For each K the script opens K concurrent clients written with the official openai SDK (GA
dialect), in its own process on the same cores as the server (the load generator is part of what
is measured: its CPU is reported). Each client:

1. sends ``session.update`` with ``turn_detection: null`` (``--anchors`` sends a non-acting
   ``server_vad`` instead, whose speech events anchor the latency matching, at the cost of Silero
   VAD on the server for every session), and waits for ``session.updated``; all K clients then
   start together, each shifted by ``i * 80 ms / K`` so that their frames reach the server at
   different points of a tick;
2. streams speech from ``tests/audio`` (three files, a different file and start offset per
   client, looping) in real time: exact 80 ms appends of 1920 samples (3840 bytes of pcm16), each
   sent at ``start + n * 80 ms`` (a fixed schedule, so the client never drifts), for
   ``--seconds``, with ``response.create`` sent right behind the first append, so one response is
   open the whole run and the model answers every frame;
3. keeps reading until every frame it sent has been answered (or ``--drain`` seconds pass).

Per client it records when each frame left, when each ``response.output_audio.delta`` arrived and
how many samples it carried, and every ``error`` event.

**Held** (issue 13): a session is held when at least 90% of its audio comes back (delta samples
that arrived by its last frame's send + 400 ms, over the samples it was to send) and no gap between
two consecutive audio deltas exceeds 400 ms, with no error and no failure; a K is held when all
its K sessions are (``bench/summary.py``). Reported per K: sessions held of K, the lowest audio
back, the worst gap, TTFA, the frame latency (``bench/matching.py``) p50/p95/p99 and, from
``/metrics`` (every worker's, differenced before/after the K; "n/a" where a server does not export
a figure): model step p50 (``realtime_model_step_seconds``), real-time factor, server overhead per
frame p50 (``realtime_frame_overhead_seconds``) and the event loop's worst stall (the largest
``realtime_event_loop_stall_seconds`` bucket hit during the K); and the CPU of the server (every
process of it), of the load generator and of the whole machine. ``bench/step_cost.py`` measures the
model step alone against the batch width, without a server.

Before the first K each server gets ``--warmup`` seconds of unmeasured sessions on every slot
(``--warmup-sessions``, default the largest K): the first session after start-up, and the first on
each slot, pay one-time costs, which stall every session, and a session never wins that latency
back.

Output: a table per configuration on stdout, the step time against the batch, a Markdown table
ready for the README, ``<out>/results.json`` (every raw figure, per client, plus the machine),
``<out>/latency_vs_k.png`` and each server's log ``<out>/server-<configuration>.log``.

Usage (from the repository root)::

    .venv/bin/python bench/realtime_bench.py [--ks 1,8,16,24,32,40] [--max-sessions 40,64] [--workers 1,2]
        [--serial-ks 1,2,4] [--seconds 8] [--out bench/out]

Everything talks to 127.0.0.1 only, every wait has a timeout, and the servers are stopped (by
PID, no process of theirs left) whatever happens.

Where the code is
-----------------
This file is only the entry point; the benchmark lives in the ``bench`` package beside it:
``cli`` (arguments, configurations, one K after another), ``servers`` (the launches, their
processes and CPU), ``clients`` (the openai-SDK sessions), ``scraping`` (``/metrics``),
``matching`` (sent frames <-> audio deltas), ``summary`` (the held rule, one K's figures),
``report`` (tables, ``results.json``, the plot), ``step_cost`` (the model step alone) and
``frames`` (the 80 ms frame). ``bench/__init__.py`` lists them.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script (`python bench/realtime_bench.py`): Python put bench/ itself first on
    # sys.path. Put the repository root there instead, so that `bench.*` and `voice.*` import and
    # bench's own modules (cli, report, ...) never shadow top-level modules of the same name.
    _REPO = Path(__file__).resolve().parent.parent
    _HERE = _REPO / "bench"
    sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _HERE]
    sys.path.insert(0, str(_REPO))

from bench.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
