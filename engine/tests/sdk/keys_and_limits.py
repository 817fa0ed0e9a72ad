"""Drives a running Sluice with the official `openai` and `anthropic` Python
SDKs, with API keys and a rate limit of one request a minute per key.

Usage: python keys_and_limits.py BASE_URL OPENAI_KEY ANTHROPIC_KEY
Prints one JSON object: what each SDK raised for a wrong key and for the
request past the limit, with the headers the SDKs read.
"""
import json
import sys

import anthropic
import openai

base_url, openai_key, anthropic_key = sys.argv[1:4]
out = {}

def openai_client(key):
    return openai.OpenAI(base_url=base_url + "/v1", api_key=key, max_retries=0, timeout=30)

def anthropic_client(key):
    return anthropic.Anthropic(base_url=base_url, api_key=key, max_retries=0, timeout=30)

def raised(call):
    try:
        call()
        return {"raised": None}
    except Exception as e:  # the SDK's own class is what is checked
        r = getattr(e, "response", None)
        return {
            "raised": type(e).__name__,
            "status": getattr(e, "status_code", None),
            "retry_after": r.headers.get("retry-after") if r is not None else None,
            "retry_after_ms": r.headers.get("retry-after-ms") if r is not None else None,
            "limit": (r.headers.get("x-ratelimit-limit-requests")
                      or r.headers.get("anthropic-ratelimit-requests-limit")) if r is not None else None,
            "remaining": (r.headers.get("x-ratelimit-remaining-requests")
                          or r.headers.get("anthropic-ratelimit-requests-remaining")) if r is not None else None,
            "body": getattr(e, "body", None),
        }

chat = lambda c: c.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}])
msg = lambda c: c.messages.create(model="chat", max_tokens=50, messages=[{"role": "user", "content": "hi"}])

out["openai_wrong_key"] = raised(lambda: chat(openai_client("sk-wrong")))
out["anthropic_wrong_key"] = raised(lambda: msg(anthropic_client("sk-wrong")))
out["openai_first"] = raised(lambda: chat(openai_client(openai_key)))
out["openai_second"] = raised(lambda: chat(openai_client(openai_key)))
out["anthropic_first"] = raised(lambda: msg(anthropic_client(anthropic_key)))
out["anthropic_second"] = raised(lambda: msg(anthropic_client(anthropic_key)))
print(json.dumps(out))
