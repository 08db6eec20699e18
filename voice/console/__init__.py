"""The staff console: live sessions of every worker process, watched and ended over the channel layer.

- groups.py: every group name and message type, so sessions and consoles in different processes
  agree on them in one place;
- publisher.py: what a Realtime session tells the consoles, at a bounded rate;
- consumers.py: ConsoleConsumer, the console's own WebSocket (staff only);
- views.py: the page at /console/.
"""
