"""WebRTC for the Realtime protocol: `POST /v1/realtime/calls` and `POST /v1/realtime/client_secrets`.

A call is one aiortc RTCPeerConnection driving the same SessionRuntime as a WebSocket session: the
`oai-events` data channel carries the client and server events, the audio goes on RTP (Opus at
48 kHz). See docs/webrtc.md.

- secrets.py: ephemeral client secrets (`ek_...`), minted from an API key, accepted by /calls only;
- audio.py: the inbound track to 24 kHz appends, the outbound track from the response's audio;
- call.py: one call (peer connection, data channel, runtime, console messages, cleanup);
- views.py: the two HTTP endpoints.
"""
