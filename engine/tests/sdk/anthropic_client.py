"""Drives a running Sluice's `/v1/messages` with the official `anthropic`
Python SDK: `messages.create`, the `messages.stream()` helper (text events
and the final message), a client tool round trip (streamed and whole),
thinking with its signature, `count_tokens`, and the SDK's own error types.

Usage: python anthropic_client.py BASE_URL WIRE...
BASE_URL is the server's root (the SDK adds `/v1/messages`). Prints one
JSON object: for each WIRE, what each SDK call returned (or raised), plus
`thinking` when `anthropic` is among the wires. Pipelines expected per
WIRE: `WIRE-text` (the same text twice), `WIRE-tools` (a get_weather
call, then text; twice), `WIRE-fail` (text, then an error mid-stream);
and `anthropic-thinking` (a signed thinking block then text; ceiling 1500).
"""
import json
import sys

import anthropic

WEATHER = {
    "name": "get_weather",
    "description": "Weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


def get_weather(city):
    """The application's own function, run locally for the round trip."""
    return json.dumps({"city": city, "temperature_c": 21, "conditions": "sunny"})


LOCAL = {"get_weather": get_weather}

ASK = [{"role": "user", "content": "Say hello"}]


def dump(message):
    """A Message as JSON, without its id (each request has its own)."""
    d = message.model_dump(mode="json", exclude_none=True)
    d.pop("id", None)
    return d


def raised(e):
    body = e.body if isinstance(e.body, dict) else {}
    return {
        "raised": type(e).__name__,
        "status": getattr(e, "status_code", None),
        "message": e.message,
        "error": body.get("error"),
        "request_id": getattr(e, "request_id", None),
    }


def text(client, wire):
    """The same scripted reply whole and streamed."""
    whole = client.messages.create(model=f"{wire}-text", max_tokens=100, messages=ASK)
    pieces = []
    with client.messages.stream(model=f"{wire}-text", max_tokens=100, messages=ASK) as stream:
        for piece in stream.text_stream:
            pieces.append(piece)
        final = stream.get_final_message()
    return {
        "create": {
            "type": type(whole).__name__,
            "text": "".join(b.text for b in whole.content if b.type == "text"),
            "stop_reason": whole.stop_reason,
            "model": whole.model,
            "usage": whole.usage.model_dump(exclude_none=True),
            "id": whole.id,
            "request_id": whole._request_id,
        },
        "whole": dump(whole),
        "streamed": dump(final),
        "text_events": pieces,
        "final_text": stream.get_final_text(),
    }


def round_trip(client, wire, streamed):
    """Call, run the called function here, send its result, get the answer."""
    messages = [{"role": "user", "content": "What's the weather in Paris?"}]
    if streamed:
        with client.messages.stream(
            model=f"{wire}-tools", max_tokens=100, messages=messages, tools=[WEATHER]
        ) as stream:
            json_pieces = [e.partial_json for e in stream if e.type == "input_json"]
            first = stream.get_final_message()
    else:
        json_pieces = None
        first = client.messages.create(model=f"{wire}-tools", max_tokens=100, messages=messages, tools=[WEATHER])
    call = next(b for b in first.content if b.type == "tool_use")
    result = LOCAL[call.name](**call.input)
    # As the SDK's documentation does it: the assistant's content goes back
    # as it came, then a user turn with one tool_result per call.
    messages.append({"role": "assistant", "content": first.content})
    messages.append(
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": result}]}
    )
    second = client.messages.create(model=f"{wire}-tools", max_tokens=100, messages=messages, tools=[WEATHER])
    return {
        "first_stop_reason": first.stop_reason,
        "first_blocks": [b.type for b in first.content],
        "call": {"id": call.id, "name": call.name, "input": call.input, "input_type": type(call.input).__name__},
        "input_json_events": json_pieces,
        "result_sent": result,
        "answer": "".join(b.text for b in second.content if b.type == "text"),
        "answer_stop_reason": second.stop_reason,
    }


def failure(client, wire):
    """The provider fails after some text: the SDK raises while streaming."""
    pieces = []
    try:
        with client.messages.stream(model=f"{wire}-fail", max_tokens=100, messages=ASK) as stream:
            for piece in stream.text_stream:
                pieces.append(piece)
        out = {"raised": None}
    except anthropic.APIError as e:
        out = raised(e)
        out["is_api_status_error"] = isinstance(e, anthropic.APIStatusError)
    out["text_before"] = pieces
    return out


def errors(client, wire):
    out = {}
    try:
        client.messages.create(model=f"{wire}-nope", max_tokens=100, messages=ASK)
        out["unknown_model"] = {"raised": None}
    except anthropic.NotFoundError as e:
        out["unknown_model"] = raised(e)
    try:
        client.messages.create(model=f"{wire}-text", max_tokens=100, messages=ASK, extra_body={"frobnicate": True})
        out["unknown_field"] = {"raised": None}
    except anthropic.BadRequestError as e:
        out["unknown_field"] = raised(e)
    # The typed method will not send a body without max_tokens; the SDK's
    # own generic post does, and raises the answer the same way.
    try:
        client.post("/v1/messages", cast_to=object, body={"model": f"{wire}-text", "messages": ASK})
        out["missing_max_tokens"] = {"raised": None}
    except anthropic.BadRequestError as e:
        out["missing_max_tokens"] = raised(e)
    return out


def count_tokens(client, wire):
    r = client.messages.count_tokens(model=f"{wire}-text", messages=ASK, tools=[WEATHER])
    return {"input_tokens": r.input_tokens}


def thinking(client):
    kwargs = dict(
        model="anthropic-thinking",
        max_tokens=1400,
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=[{"role": "user", "content": "hey"}],
    )
    with client.messages.stream(**kwargs) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_message()
    whole = client.messages.create(**kwargs)
    # The next turn sends the signed thinking back as the SDK returned it.
    follow = dict(kwargs)
    follow["messages"] = kwargs["messages"] + [
        {"role": "assistant", "content": final.content},
        {"role": "user", "content": "What can you do?"},
    ]
    client.messages.create(**follow)
    try:
        client.messages.create(**dict(kwargs, max_tokens=4096, thinking={"type": "enabled", "budget_tokens": 2048}))
        over = {"raised": None}
    except anthropic.BadRequestError as e:
        over = raised(e)
    return {
        "over_ceiling": over,
        "streamed": dump(final),
        "whole": dump(whole),
        "event_kinds": sorted(set(kinds)),
        "block_types": [type(b).__name__ for b in final.content],
    }


def main():
    base_url, wires = sys.argv[1], sys.argv[2:]
    client = anthropic.Anthropic(base_url=base_url, api_key="unused", max_retries=0, timeout=30)
    out = {"sdk_version": anthropic.__version__}
    for wire in wires:
        out[wire] = {
            "text": text(client, wire),
            "round_trip_streamed": round_trip(client, wire, streamed=True),
            "round_trip_whole": round_trip(client, wire, streamed=False),
            "failure": failure(client, wire),
            "errors": errors(client, wire),
            "count_tokens": count_tokens(client, wire),
        }
    if "anthropic" in wires:
        out["thinking"] = thinking(client)
    print(json.dumps(out))


main()
