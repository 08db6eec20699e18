"""The connection runtime: one object per live session that owns its collaborators and cleanup.

Front ends (the Realtime WebSocket consumer; later the Live API and WebRTC) do the handshake and
move text in and out; `SessionRuntime` does everything else, behind one error boundary.
"""
