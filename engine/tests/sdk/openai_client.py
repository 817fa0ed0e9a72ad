"""Drives a running Sluice with the official `openai` Python SDK.

Usage: python openai_client.py BASE_URL
Prints one JSON object with what each SDK call returned (or raised).
Pipelines expected: `chat` (answers "Hello there, friend"), `slow` (stalls
mid-answer past its idle timeout).
"""
import json
import sys

import openai

base_url = sys.argv[1]
client = openai.OpenAI(base_url=base_url, api_key="not-needed", max_retries=0, timeout=30)
messages = [{"role": "user", "content": "Say hello"}]
out = {"sdk_version": openai.__version__}

r = client.chat.completions.create(model="chat", messages=messages)
out["non_streaming"] = {
    "text": r.choices[0].message.content,
    "finish_reason": r.choices[0].finish_reason,
    "usage": r.usage.model_dump() if r.usage else None,
    "object": r.object,
}

text, usage, finish = "", None, None
for chunk in client.chat.completions.create(
    model="chat", messages=messages, stream=True, stream_options={"include_usage": True}
):
    if chunk.choices:
        text += chunk.choices[0].delta.content or ""
        finish = chunk.choices[0].finish_reason or finish
    if chunk.usage:
        usage = chunk.usage.model_dump()
out["streaming"] = {"text": text, "finish_reason": finish, "usage": usage}

seen = ""
try:
    for chunk in client.chat.completions.create(model="slow", messages=messages, stream=True):
        if chunk.choices:
            seen += chunk.choices[0].delta.content or ""
    out["mid_stream_timeout"] = {"raised": None, "text": seen}
except openai.APIError as e:
    out["mid_stream_timeout"] = {"raised": type(e).__name__, "message": str(e), "text": seen}

try:
    client.chat.completions.create(model="no-such-pipeline", messages=messages)
    out["unknown_model"] = {"raised": None}
except openai.NotFoundError as e:
    out["unknown_model"] = {"raised": type(e).__name__, "status": e.status_code, "code": e.code}

models = client.models.list()
out["models"] = sorted(m.id for m in models.data)

print(json.dumps(out))
