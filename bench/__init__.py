"""The benchmark: how many concurrent Realtime sessions one server process holds in real time.

``bench/realtime_bench.py`` is the entry point (``.venv/bin/python bench/realtime_bench.py --help``);
its docstring says what is measured. The modules, in the order a run uses them:

* :mod:`bench.frames` -- the 80 ms frame and the audio format, written once;
* :mod:`bench.cli` -- the command line: starts a daphne per engine mode, runs each K, collects results;
* :mod:`bench.clients` -- the K concurrent openai-SDK clients that stream speech in real time;
* :mod:`bench.scraping` -- ``/metrics``: parsing, histogram differences and quantiles, polling for idle;
* :mod:`bench.matching` -- which audio delta answers which sent frame: the latency measure itself;
* :mod:`bench.summary` -- one K's figures and its verdict (held in real time or not);
* :mod:`bench.report` -- the tables on stdout, ``results.json`` and the plot.
"""
