use super::*;
use crate::provider::{Image, ImageDetail, Part, Role};

fn ok(body: &str) -> ChatRequest {
    match parse(body.as_bytes()) {
        Ok(c) => c,
        Err(e) => panic!("{body}: {} ({:?})", e.message, e.param),
    }
}

fn param_of(body: &str) -> Option<String> {
    match parse(body.as_bytes()) {
        Ok(_) => panic!("{body} was accepted"),
        Err(e) => e.param,
    }
}

#[test]
fn every_standard_parameter_is_carried() {
    let c = ok(r#"{"model":"p","messages":[{"role":"user","content":"hi"}],
        "temperature":0.5,"top_p":0.9,"stop":["END","STOP"],"seed":7,
        "presence_penalty":0.1,"frequency_penalty":-0.2,"logit_bias":{"50256":-100},
        "user":"u-1","max_completion_tokens":33,"parallel_tool_calls":false,
        "response_format":{"type":"json_schema","json_schema":{"name":"x","schema":{"type":"object"},"strict":true}}}"#);
    let p = &c.params;
    assert_eq!(p.temperature, Some(0.5));
    assert_eq!(p.top_p, Some(0.9));
    assert_eq!(p.stop, ["END", "STOP"]);
    assert_eq!(p.seed, Some(7));
    assert_eq!(p.presence_penalty, Some(0.1));
    assert_eq!(p.frequency_penalty, Some(-0.2));
    assert_eq!(p.logit_bias.as_ref().unwrap()["50256"], -100);
    assert_eq!(p.user.as_deref(), Some("u-1"));
    assert_eq!(p.parallel_tool_calls, Some(false));
    assert_eq!(c.max_tokens, Some(33));
    assert!(matches!(
        &p.response_format,
        Some(ResponseFormat::JsonSchema { name, strict: Some(true), .. }) if name == "x"
    ));
    let c = ok(
        r#"{"model":"p","messages":[{"role":"user","content":"hi"}],"stop":"X","response_format":{"type":"json_object"}}"#,
    );
    assert_eq!(c.params.stop, ["X"]);
    assert_eq!(c.params.response_format, Some(ResponseFormat::JsonObject));
}

#[test]
fn tools_tool_calls_and_tool_results() {
    let c = ok(
        r#"{"model":"p","tools":[{"type":"function","function":{"name":"get_weather","description":"d","parameters":{"type":"object","properties":{"city":{"type":"string"}}},"strict":true}}],
        "tool_choice":{"type":"function","function":{"name":"get_weather"}},
        "messages":[{"role":"user","content":"weather?"},
          {"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]},
          {"role":"tool","tool_call_id":"call_1","content":"sunny"}]}"#,
    );
    assert_eq!(c.tools.len(), 1);
    assert_eq!(c.tools[0].strict, Some(true));
    assert_eq!(
        c.params.tool_choice,
        Some(ToolChoice::Tool("get_weather".into()))
    );
    assert_eq!(c.messages[1].tool_calls[0].arguments, r#"{"city":"Paris"}"#);
    assert_eq!(c.messages[2].role, Role::Tool);
    assert_eq!(c.messages[2].tool_call_id.as_deref(), Some("call_1"));
    assert_eq!(c.messages[2].text(), "sunny");
}

#[test]
fn images_by_url_and_data_url() {
    let c = ok(
        r#"{"model":"p","messages":[{"role":"user","content":[{"type":"text","text":"what is it?"},
        {"type":"image_url","image_url":{"url":"https://example.com/a.png"}},
        {"type":"image_url","image_url":{"url":"data:image/png;base64,iVBORw0KGgo=","detail":"low"}}]}]}"#,
    );
    let parts = &c.messages[0].content;
    assert_eq!(
        parts[1],
        Part::Image {
            image: Image::Url("https://example.com/a.png".into()),
            detail: None
        }
    );
    assert_eq!(
        parts[2],
        Part::Image {
            image: Image::Base64 {
                media_type: "image/png".into(),
                data: "iVBORw0KGgo=".into()
            },
            detail: Some(ImageDetail::Low)
        }
    );
}

#[test]
fn refusals_name_the_field() {
    let m = r#""messages":[{"role":"user","content":"hi"}]"#;
    let cases = [
        (format!(r#"{{"model":"p",{m},"functions":[]}}"#), "functions"),
        (format!(r#"{{"model":"p",{m},"n":0}}"#), "n"),
        (format!(r#"{{"model":"p",{m},"n":129}}"#), "n"),
        (format!(r#"{{"model":"p",{m},"temperature":3}}"#), "temperature"),
        (format!(r#"{{"model":"p",{m},"top_p":"1"}}"#), "top_p"),
        (format!(r#"{{"model":"p",{m},"stop":[1]}}"#), "stop"),
        (format!(r#"{{"model":"p",{m},"stop":["a","b","c","d","e"]}}"#), "stop"),
        (format!(r#"{{"model":"p",{m},"seed":1.5}}"#), "seed"),
        (format!(r#"{{"model":"p",{m},"logit_bias":{{"x":1}}}}"#), "logit_bias"),
        (format!(r#"{{"model":"p",{m},"logprobs":"yes"}}"#), "logprobs"),
        (format!(r#"{{"model":"p",{m},"top_logprobs":3}}"#), "top_logprobs"),
        (format!(r#"{{"model":"p",{m},"logprobs":true,"top_logprobs":21}}"#), "top_logprobs"),
        (format!(r#"{{"model":"p",{m},"store":true}}"#), "store"),
        (format!(r#"{{"model":"p",{m},"modalities":["audio"]}}"#), "modalities"),
        (format!(r#"{{"model":"p",{m},"response_format":{{"type":"yaml"}}}}"#), "response_format"),
        (format!(r#"{{"model":"p",{m},"tool_choice":"sometimes"}}"#), "tool_choice"),
        (format!(r#"{{"model":"p",{m},"tools":[{{"type":"web_search"}}]}}"#), "tools[0].type"),
        (format!(r#"{{"model":"p",{m},"tools":[{{"type":"function","function":{{"name":"a b"}}}}]}}"#), "tools[0].function.name"),
        (format!(r#"{{"model":"p",{m},"tools":[{{"type":"function","function":{{"name":"a"}}}},{{"type":"function","function":{{"name":"a"}}}}]}}"#), "tools[1].function.name"),
        (format!(r#"{{"model":"p",{m},"tools":[{{"type":"function","function":{{"name":"a"}}}}],"tool_choice":{{"type":"function","function":{{"name":"b"}}}}}}"#), "tool_choice"),
        (r#"{"model":"p","messages":[{"role":"function","content":"x"}]}"#.to_string(), "messages[0].role"),
        (r#"{"model":"p","messages":[{"role":"user","content":"x","name":"bob"}]}"#.to_string(), "messages[0].name"),
        (r#"{"model":"p","messages":[{"role":"system","content":[{"type":"image_url","image_url":{"url":"https://x/y.png"}}]}]}"#.to_string(), "messages[0].content[0]"),
        (r#"{"model":"p","messages":[{"role":"user","content":[{"type":"input_audio"}]}]}"#.to_string(), "messages[0].content[0]"),
        (r#"{"model":"p","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"file:///etc/passwd"}}]}]}"#.to_string(), "messages[0].content[0]"),
        (r#"{"model":"p","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"https://x/y.png","detail":"ultra"}}]}]}"#.to_string(), "messages[0].content[0].image_url.detail"),
        (r#"{"model":"p","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"https://x/y.png","detail":1}}]}]}"#.to_string(), "messages[0].content[0].image_url.detail"),
        (r#"{"model":"p","messages":[{"role":"tool","content":"x"}]}"#.to_string(), "messages[0].tool_call_id"),
        (r#"{"model":"p","messages":[{"role":"tool","tool_call_id":"nope","content":"x"}]}"#.to_string(), "messages[0].tool_call_id"),
        (r#"{"model":"p","messages":[{"role":"assistant","tool_calls":[{"type":"function"}]}]}"#.to_string(), "messages[0].tool_calls[0]"),
        (r#"{"model":"p","messages":[{"role":"assistant","tool_calls":{"id":"c"}}]}"#.to_string(), "messages[0].tool_calls"),
        (r#"{"model":"p","messages":[{"role":"assistant","tool_calls":"call_1"}]}"#.to_string(), "messages[0].tool_calls"),
        (r#"{"model":"p","messages":[{"role":"assistant","tool_calls":[{"id":"c","type":"custom","function":{"name":"f"}}]}]}"#.to_string(), "messages[0].tool_calls[0].type"),
        (r#"{"model":"p","messages":[{"role":"assistant","refusal":true}]}"#.to_string(), "messages[0].refusal"),
        (format!(r#"{{"model":"p",{m},"stream_options":{{"include_usage":true}}}}"#), "stream_options"),
        (format!(r#"{{"model":"p",{m},"stream":false,"stream_options":{{}}}}"#), "stream_options"),
        (format!(r#"{{"model":"p",{m},"response_format":"json_object"}}"#), "response_format"),
        (format!(r#"{{"model":"p",{m},"response_format":{{"type":"json_object","schema":{{}}}}}}"#), "response_format.schema"),
        (format!(r#"{{"model":"p",{m},"response_format":{{"type":"json_schema"}}}}"#), "response_format.json_schema"),
        (format!(r#"{{"model":"p",{m},"response_format":{{"type":"json_schema","json_schema":{{"name":"x","strict":"true"}}}}}}"#), "response_format.json_schema.strict"),
        (format!(r#"{{"model":"p",{m},"response_format":{{"type":"json_schema","json_schema":{{"name":"x","description":5}}}}}}"#), "response_format.json_schema.description"),
        (format!(r#"{{"model":"p",{m},"response_format":{{"type":"json_schema","json_schema":{{"name":"x","schemas":{{}}}}}}}}"#), "response_format.json_schema.schemas"),
        (format!(r#"{{"model":"p",{m},"response_format":{{"type":"json_schema","json_schema":{{"name":"x","schema":[]}}}}}}"#), "response_format.json_schema.schema"),
        (format!(r#"{{"model":"p",{m},"response_format":{{"type":"json_schema","json_schema":{{"schema":{{}}}}}}}}"#), "response_format.json_schema.name"),
        (format!(r#"{{"model":"p",{m},"tools":[{{"type":"function","function":{{"name":"a","parametrs":{{}}}}}}]}}"#), "tools[0].function.parametrs"),
        (format!(r#"{{"model":"p",{m},"tools":[{{"type":"function","function":{{"name":"a","strict":1}}}}]}}"#), "tools[0].function.strict"),
        (format!(r#"{{"model":"p",{m},"tools":[{{"type":"function","name":"a","function":{{"name":"a"}}}}]}}"#), "tools[0].name"),
    ];
    for (body, field) in cases {
        assert_eq!(param_of(&body).as_deref(), Some(field), "{body}");
    }
}

#[test]
fn stream_options_need_stream_and_say_so_in_openais_words() {
    let body = r#"{"model":"p","messages":[{"role":"user","content":"hi"}],"stream_options":{"include_usage":true}}"#;
    let Err(e) = parse(body.as_bytes()) else {
        panic!("accepted");
    };
    assert_eq!(
        e.message,
        "The 'stream_options' parameter is only allowed when 'stream' is enabled."
    );
    let c = ok(
        r#"{"model":"p","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true}}"#,
    );
    assert!(c.stream && c.include_usage);
}

#[test]
fn a_null_name_and_null_fields_are_what_frameworks_send() {
    let c = ok(
        r#"{"model":"p","messages":[{"role":"user","content":"x","name":null}],"temperature":null,"tools":null,"stream_options":null}"#,
    );
    assert!(c.tools.is_empty());
    assert_eq!(c.params, Params::default());
}

#[test]
fn n_and_logprobs_reach_the_params() {
    let m = r#""messages":[{"role":"user","content":"hi"}]"#;
    let c = ok(&format!(
        r#"{{"model":"p",{m},"n":3,"logprobs":true,"top_logprobs":2}}"#
    ));
    assert_eq!(c.params.n, Some(3));
    assert_eq!(c.params.choices(), 3);
    assert!(c.params.logprobs);
    assert_eq!(c.params.top_logprobs, Some(2));
    // n = 1 is every request's: nothing to send.
    let c = ok(&format!(r#"{{"model":"p",{m},"n":1}}"#));
    assert_eq!(c.params, Params::default());
}
