"""What voice-agent frameworks rely on, checked over a real socket with a plain WebSocket client.

openai-agents, pipecat and LiveKit Agents speak GA only; each field and event here is one they
send or wait for (see the README's framework section). Every event received is validated strictly
against the SDK's models, which also proves no event outside the dialect's union is sent. The
server and the socket come from tests/e2e_support.py, shared with tests/test_e2e_sdk.py.
"""

from __future__ import annotations

from voice.testing.live_server import LiveServer

from .e2e_support import ga_socket, live_server_fixture
from .e2e_support import server_alive as server_alive  # autouse: each test first checks that daphne runs
from .protocol_client import FRAMEWORK_SESSION

server = live_server_fixture("contract", {"RESPONSE_MAX_MS": "800"})


async def test_every_framework_setting_is_accepted_and_reflected(server: LiveServer) -> None:
    async with ga_socket(server, query="") as socket:
        await socket.send({"type": "session.update", "event_id": "session_update_1", "session": FRAMEWORK_SESSION})
        session = (await socket.recv())["session"]
        for key in (
            "model",
            "tracing",
            "instructions",
            "output_modalities",
            "max_output_tokens",
            "tool_choice",
            "tools",
        ):
            assert session[key] == FRAMEWORK_SESSION[key], key
        assert session["audio"]["input"]["turn_detection"] == FRAMEWORK_SESSION["audio"]["input"]["turn_detection"]
        assert session["audio"]["input"]["transcription"] == {"model": "gpt-4o-mini-transcribe"}
        assert session["audio"]["input"]["noise_reduction"] is None
        assert session["audio"]["output"]["voice"] == "marin" and session["audio"]["output"]["speed"] == 1.0
        # A partial update carries only `type` and one field; the rest stays.
        await socket.send({"type": "session.update", "session": {"type": "realtime", "tracing": None}})
        updated = (await socket.recv())["session"]
        assert updated["tracing"] is None and updated["audio"]["output"]["voice"] == "marin"


async def test_default_turn_detection_is_on_and_creates_responses(server: LiveServer) -> None:
    async with ga_socket(server) as socket:
        await socket.send({"type": "session.update", "session": {"type": "realtime", "instructions": "Hi"}})
        turn = (await socket.recv())["session"]["audio"]["input"]["turn_detection"]
        assert turn["type"] == "server_vad" and turn["create_response"] and turn["interrupt_response"]


async def test_greeting_kickoff_and_the_active_response_error(server: LiveServer) -> None:
    async with ga_socket(server) as socket:
        # pipecat's kickoff: its own item id (no item_ prefix), then response.create
        await socket.send(
            {
                "type": "conversation.item.create",
                "item": {
                    "id": "a8ae2489c0ffee",
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "Say hello!"}],
                },
            }
        )
        added, done = await socket.recv(), await socket.recv()
        assert (added["type"], done["type"]) == ("conversation.item.added", "conversation.item.done")
        assert added["item"]["id"] == done["item"]["id"] == "a8ae2489c0ffee"
        # LiveKit's generate_reply: metadata echoed in response.created
        await socket.send(
            {
                "type": "response.create",
                "event_id": "response_create_1",
                "response": {"metadata": {"client_event_id": "response_create_1"}},
            }
        )
        created = await socket.recv()
        assert created["type"] == "response.created"
        assert created["response"]["metadata"] == {"client_event_id": "response_create_1"}
        await socket.send({"type": "response.create", "event_id": "response_create_2"})
        error = (await socket.recv_until("error"))[-1]["error"]
        assert error["code"] == "conversation_already_has_active_response" and error["event_id"] == "response_create_2"
        events = await socket.recv_until("response.done")
        assert all(
            e.get("response", {}).get("id", created["response"]["id"]) == created["response"]["id"] for e in events
        )
        assert [e["type"] for e in events].count("response.created") == 0, "nothing for the rejected request"


async def test_items_keep_client_ids_through_retrieve_truncate_and_delete(server: LiveServer) -> None:
    async with ga_socket(server) as socket:
        await socket.send({"type": "response.create"})
        events = await socket.recv_until("response.done")
        assistant_id = events[-1]["response"]["output"][0]["id"]
        audio_ms = 80 * sum(e["type"] == "response.output_audio.delta" for e in events)
        await socket.send({"type": "conversation.item.retrieve", "item_id": assistant_id})
        retrieved = (await socket.recv_until("conversation.item.retrieved"))[-1]
        assert retrieved["item"]["id"] == assistant_id
        await socket.send(
            {
                "type": "conversation.item.truncate",
                "item_id": assistant_id,
                "content_index": 0,
                "audio_end_ms": audio_ms // 2,
            }
        )
        truncated = (await socket.recv_until("conversation.item.truncated"))[-1]
        assert truncated["audio_end_ms"] == audio_ms // 2
        await socket.send(
            {
                "type": "conversation.item.create",
                "previous_item_id": "root",
                "item": {
                    "id": "history_1",
                    "type": "message",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": "Replayed after a reconnect."}],
                },
            }
        )
        assert (await socket.recv_until("conversation.item.done"))[-1]["item"]["id"] == "history_1"
        await socket.send({"type": "conversation.item.delete", "item_id": "history_1"})
        assert (await socket.recv_until("conversation.item.deleted"))[-1]["item_id"] == "history_1"
        await socket.send({"type": "conversation.item.retrieve", "item_id": "history_1", "event_id": "r1"})
        error = (await socket.recv_until("error"))[-1]["error"]
        assert error["code"] == "item_retrieve_invalid_item_id" and error["event_id"] == "r1"


async def test_cancel_with_nothing_active_is_the_benign_error(server: LiveServer) -> None:
    async with ga_socket(server) as socket:
        await socket.send({"type": "response.cancel", "event_id": "cancel_1"})
        error = (await socket.recv())["error"]
        assert error["code"] == "response_cancel_not_active" and error["event_id"] == "cancel_1"
        assert error["message"].startswith("Cancellation failed")
