// Drives a running Sluice with the official `openai` npm package.
//
// Usage: node openai_client.mjs BASE_URL WIRE...
// Prints one JSON object: for each WIRE, what pipeline `WIRE-node` streamed
// (a chat completion with tools), read twice: chunk by chunk with
// `chat.completions.create({stream: true})`, and assembled by the SDK's
// `chat.completions.stream()` helper; then the SDK's error for an unknown
// field.
import OpenAI from "openai";
import { VERSION } from "openai/version";

const [baseURL, ...wires] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey: "not-needed", maxRetries: 0, timeout: 30_000 });

const fn = (name, description, property) => ({
  type: "function",
  function: {
    name,
    description,
    parameters: {
      type: "object",
      properties: { [property]: { type: "string" } },
      required: [property],
      additionalProperties: false,
    },
    strict: true,
  },
});
const tools = [fn("get_weather", "Weather in a city", "city"), fn("get_time", "Local time in a zone", "zone")];
const messages = [{ role: "user", content: "Weather and time in Paris?" }];

async function chunks(model) {
  const stream = await client.chat.completions.create({
    model,
    messages,
    tools,
    stream: true,
    stream_options: { include_usage: true },
  });
  const pieces = [];
  const finishReasons = [];
  const assembled = [];
  let content = "";
  let usage = null;
  for await (const chunk of stream) {
    if (chunk.usage) usage = chunk.usage;
    const choice = chunk.choices[0];
    if (!choice) continue;
    content += choice.delta.content ?? "";
    if (choice.finish_reason) finishReasons.push(choice.finish_reason);
    for (const piece of choice.delta.tool_calls ?? []) {
      pieces.push(piece);
      const call = (assembled[piece.index] ??= { id: null, name: "", arguments: "" });
      call.id = piece.id ?? call.id;
      call.name += piece.function?.name ?? "";
      call.arguments += piece.function?.arguments ?? "";
    }
  }
  return { content, pieces, finish_reasons: finishReasons, assembled, usage };
}

async function helper(model) {
  const done = [];
  const stream = client.chat.completions
    .stream({ model, messages, tools })
    .on("tool_calls.function.arguments.done", (e) =>
      done.push({ index: e.index, name: e.name, arguments: e.arguments, parsed: e.parsed_arguments }),
    );
  const final = await stream.finalChatCompletion();
  const choice = final.choices[0];
  return {
    content: choice.message.content,
    finish_reason: choice.finish_reason,
    tool_calls: (choice.message.tool_calls ?? []).map((c) => ({
      id: c.id,
      type: c.type,
      name: c.function.name,
      arguments: c.function.arguments,
      parsed: c.function.parsed_arguments,
    })),
    done_events: done,
  };
}

async function unknownField(model) {
  try {
    await client.chat.completions.create({ model, messages, frobnicate: true });
    return { raised: null };
  } catch (e) {
    return {
      raised: e.constructor.name,
      is_bad_request: e instanceof OpenAI.BadRequestError,
      status: e.status,
      param: e.param,
    };
  }
}

const out = { sdk_version: VERSION };
for (const wire of wires) {
  const model = `${wire}-node`;
  out[wire] = { chunks: await chunks(model), helper: await helper(model), unknown_field: await unknownField(model) };
}
console.log(JSON.stringify(out));
