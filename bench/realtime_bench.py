"""How many concurrent Realtime sessions one server process holds in real time: batched vs serial.

What it measures
----------------
For each engine mode (``REALTIME_ENGINE=batched``: every session is one slot of a batch stepped
once per 80 ms tick; ``serial``: the old design, one batch-1 engine per session, all stepping under
one lock) the script starts its own ``daphne realtime_project.asgi:application`` on a free
127.0.0.1 port (fresh SQLite database and demo checkpoint in a temporary folder,
``REALTIME_MAX_SESSIONS`` = the largest K, responses that never end, no idle timeout), and for each
K opens K concurrent clients written with the official openai SDK (GA dialect). Each client:

1. sends ``session.update`` with a turn detection that never acts -- ``server_vad`` with
   ``create_response`` and ``interrupt_response`` false, so voice activity neither opens nor
   cancels a response, exactly like ``turn_detection: null`` (``--no-anchors`` sends that
   instead) -- but whose ``speech_started`` / ``speech_stopped`` events anchor the latency
   measurement (see ``bench/matching.py``), and waits for ``session.updated``; all K clients then
   start together, each shifted by ``i * 80 ms / K`` so that their frames reach the server at
   different points of a tick;
2. streams speech from ``tests/audio`` (three files, a different file and start offset per
   client, looping) in real time: exact 80 ms appends of 1920 samples (3840 bytes of pcm16), each
   sent at ``start + n * 80 ms`` (a fixed schedule, so the client never drifts), for
   ``--seconds``, with ``response.create`` sent right behind the first append (see
   ``bench/matching.py`` for why behind it and not before it);
3. keeps reading until every frame it sent has been answered (or ``--drain`` seconds pass).

Per client it records when each frame left (after the SDK's send returned), when each
``response.output_audio.delta`` arrived, and every ``error`` event (``input_audio_buffer_overflow``
means the server fell more than ``REALTIME_INPUT_QUEUE_FRAMES`` behind).

* **TTFA**: first audio delta minus the first append.
* **Frame latency**: arrival of the delta produced by the model step that consumed a frame, minus
  the time that frame was sent. Which delta that is cannot be read off the order of the deltas
  (the server also steps a slot on silence); ``bench/matching.py`` explains how the speech events
  anchor the pairing and how the benchmark checks it against the server's own figures.

After each K the script scrapes ``/metrics`` and works from the difference of the histograms
before and after the run: model step p50 (``realtime_model_step_seconds``: the batched encode +
LM step + decode alone, without the slots' Silero VAD or the serial engine's wait for its lock),
real-time factor (step p50 / 80 ms), server overhead per frame p50
(``realtime_frame_overhead_seconds``), the server's frame latency, and the event loop's worst stall
(``realtime_event_loop_stall_max_seconds`` is a process-lifetime maximum, so the largest
``realtime_event_loop_stall_seconds`` bucket hit during this K is reported too).

A K is **held in real time** when no client saw an overflow error (or any other error, or a failed
connection), every frame was answered, the p95 frame latency over all clients is under 240 ms
(80 ms frame + 80 ms acoustic delay + one tick of scheduling), and latency does not grow through
the run: p95 of the last quarter of the frames < 1.5 x p95 of the first quarter + 40 ms.

Before the first K each server gets ``--warmup`` seconds of unmeasured sessions on every slot
(``--warmup-sessions``, default the largest K): the first session after start-up, and the first on
each slot, pay one-time costs on the inference thread (each slot's own TorchScript Silero VAD takes
~40-65 ms over its first two frames), and seventeen cold slots starting together stalled the
engine for 200-500 ms in a trial -- latency the sessions then never won back. With the slots warm
the figures are the server's steady state; ``--warmup-sessions 1`` shows the cold start. Per K the script
also records the CPU used by the server, by itself and by any other process on the machine (a
benchmark on a shared machine is only as good as its quiet).

Output: a table on stdout, ``<out>/results.json`` (every raw figure, per client, plus the
machine), ``<out>/latency_vs_k.png`` and each server's log ``<out>/daphne-<mode>.log``.

Usage (from the repository root)::

    .venv/bin/python bench/realtime_bench.py [--ks 1,2,4,8,16] [--seconds 8] [--out bench/out]

Everything talks to 127.0.0.1 only, every wait has a timeout, and the servers are stopped (by
PID) whatever happens.

Where the code is
-----------------
This file is only the entry point; the benchmark lives in the ``bench`` package beside it:
``cli`` (arguments, servers, one K after another), ``clients`` (the openai-SDK sessions),
``scraping`` (``/metrics``), ``matching`` (sent frames <-> audio deltas), ``summary`` (one K's
figures and verdict), ``report`` (tables, ``results.json``, the plot) and ``frames`` (the 80 ms
frame). ``bench/__init__.py`` lists them.
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
