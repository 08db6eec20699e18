"""The benchmark: how many concurrent Realtime sessions a server holds in real time (issue 13's rule).

``bench/realtime_bench.py`` is the entry point (``.venv/bin/python bench/realtime_bench.py --help``);
its docstring says what is measured. ``bench/step_cost.py`` measures the model step alone against
the batch width. The modules, in the order a run uses them:

* :mod:`bench.frames` -- the 80 ms frame and the audio format, written once;
* :mod:`bench.cli` -- the command line: the configurations, a server for each, each K, the results;
* :mod:`bench.servers` -- the launches (bare daphne, or supervisord with N workers), their processes and CPU;
* :mod:`bench.clients` -- the K concurrent openai-SDK clients that stream speech in real time;
* :mod:`bench.scraping` -- ``/metrics`` of every worker: parsing, histogram differences and quantiles, idle;
* :mod:`bench.matching` -- which audio delta answers which sent frame: the latency measure;
* :mod:`bench.summary` -- the held rule and one K's figures;
* :mod:`bench.report` -- the tables on stdout (and the README's Markdown), ``results.json`` and the plot;
* :mod:`bench.step_cost` -- the model step alone, no server: step time vs batch width.
"""
