"""Drives a running Sluice with the official `openai` Python SDK's helpers:
the `.stream()` tool-call accumulator, `.parse()` with a Pydantic
response_format, a full client tool round trip, and the SDK's own error
types.

Usage: python openai_tools.py BASE_URL WIRE...
Prints one JSON object: for each WIRE, what each SDK call returned (or
raised). Pipelines expected per WIRE: `WIRE-stream` (text, then calls to
get_weather and get_time), `WIRE-parse` (answers a CityReport as JSON
text), `WIRE-tools` (a get_weather call, then text).
"""
import json
import sys

import openai
from pydantic import BaseModel


class GetWeather(BaseModel):
    city: str


class GetTime(BaseModel):
    zone: str


class CityReport(BaseModel):
    city: str
    temperature_c: int
    conditions: list[str]


TOOLS = [
    openai.pydantic_function_tool(GetWeather, name="get_weather", description="Weather in a city"),
    openai.pydantic_function_tool(GetTime, name="get_time", description="Local time in a zone"),
]


def get_weather(city):
    """The application's own function, run locally for the round trip."""
    return json.dumps({"city": city, "temperature_c": 21, "conditions": "sunny"})


LOCAL = {"get_weather": get_weather}


def raised(e):
    return {
        "raised": type(e).__name__,
        "status": e.status_code,
        "param": e.param,
        "code": e.code,
        "message": e.message,
    }


def stream_tools(client, wire):
    """The SDK's stream helper assembles the streamed calls itself."""
    content_deltas, argument_deltas, done = 0, {}, []
    with client.chat.completions.stream(
        model=f"{wire}-stream",
        messages=[{"role": "user", "content": "Weather and time in Paris?"}],
        tools=TOOLS,
    ) as stream:
        for event in stream:
            if event.type == "content.delta":
                content_deltas += 1
            elif event.type == "tool_calls.function.arguments.delta":
                argument_deltas[str(event.index)] = argument_deltas.get(str(event.index), 0) + 1
            elif event.type == "tool_calls.function.arguments.done":
                done.append(
                    {
                        "index": event.index,
                        "name": event.name,
                        "arguments": event.arguments,
                        "parsed_type": type(event.parsed_arguments).__name__,
                    }
                )
        final = stream.get_final_completion()
    choice = final.choices[0]
    return {
        "content": choice.message.content,
        "content_deltas": content_deltas,
        "finish_reason": choice.finish_reason,
        "tool_calls": [
            {
                "id": c.id,
                "type": c.type,
                "name": c.function.name,
                "arguments": c.function.arguments,
                "parsed_type": type(c.function.parsed_arguments).__name__,
                "parsed": c.function.parsed_arguments.model_dump(),
            }
            for c in choice.message.tool_calls or []
        ],
        "argument_deltas": argument_deltas,
        "done_events": done,
    }


def parse(client, wire):
    try:
        r = client.chat.completions.parse(
            model=f"{wire}-parse",
            messages=[{"role": "user", "content": "Report on Paris"}],
            response_format=CityReport,
        )
    except openai.BadRequestError as e:
        return raised(e)
    m = r.choices[0].message
    return {
        "raised": None,
        "parsed_type": type(m.parsed).__name__,
        "parsed": m.parsed.model_dump(),
        "content": m.content,
        "finish_reason": r.choices[0].finish_reason,
    }


def round_trip(client, wire):
    """Call, run the called function here, send its result, get the answer."""
    messages = [{"role": "user", "content": "What's the weather in Paris?"}]
    first = client.chat.completions.create(model=f"{wire}-tools", messages=messages, tools=TOOLS[:1])
    asked = first.choices[0].message
    call = asked.tool_calls[0]
    result = LOCAL[call.function.name](**json.loads(call.function.arguments))
    # As the SDK's documentation does it: the assistant message object
    # goes back as it came, then one `tool` message per call.
    messages.append(asked)
    messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
    second = client.chat.completions.create(model=f"{wire}-tools", messages=messages, tools=TOOLS[:1])
    return {
        "first_finish_reason": first.choices[0].finish_reason,
        "call": {"id": call.id, "name": call.function.name, "arguments": call.function.arguments},
        "result_sent": result,
        "answer": second.choices[0].message.content,
        "answer_finish_reason": second.choices[0].finish_reason,
    }


def errors(client, wire):
    out = {}
    messages = [{"role": "user", "content": "x"}]
    try:
        client.chat.completions.create(model=f"{wire}-parse", messages=messages, extra_body={"frobnicate": True})
        out["unknown_field"] = {"raised": None}
    except openai.BadRequestError as e:
        out["unknown_field"] = raised(e)
    try:
        client.chat.completions.create(model=f"{wire}-nope", messages=messages)
        out["unknown_model"] = {"raised": None}
    except openai.NotFoundError as e:
        out["unknown_model"] = raised(e)
    if wire == "anthropic":
        try:
            client.chat.completions.create(model=f"{wire}-parse", messages=messages, seed=7)
            out["unsupported_param"] = {"raised": None}
        except openai.BadRequestError as e:
            out["unsupported_param"] = raised(e)
    return out


def main():
    base_url, wires = sys.argv[1], sys.argv[2:]
    client = openai.OpenAI(base_url=base_url, api_key="not-needed", max_retries=0, timeout=30)
    out = {"sdk_version": openai.__version__}
    for wire in wires:
        out[wire] = {
            "stream": stream_tools(client, wire),
            "parse": parse(client, wire),
            "round_trip": round_trip(client, wire),
            "errors": errors(client, wire),
        }
    print(json.dumps(out))


main()
