//! The tool calls of one model call, assembled from the stream's fragments
//! and routed: a call to one of the client's tools goes back to the client
//! as it arrives; a call to one of the pipeline's is held for the tool loop.
//!
//! Routing needs the whole name, and OpenAI-compatible servers may stream
//! a name in pieces (`"get_"`, then `"weather"`). A name is whole once a
//! fragment of its call carries arguments, a fragment of another call
//! arrives, or the provider finishes; until then the call is held, so that
//! a client's call is relayed once, under its full name.

use std::collections::BTreeMap;

use super::events::ToolCallDelta;
use crate::provider::ToolCall;

/// Longest tool name a provider may stream. Both APIs allow 64 bytes; a
/// name four times that is not a model at work, and it is held whole.
pub(super) const MAX_NAME_BYTES: usize = 256;

/// A fragment no model sends; the stream is cut with this message.
#[derive(Debug, PartialEq)]
pub(super) struct Malformed(pub String);

/// A tool call being assembled from stream fragments.
#[derive(Default)]
struct Partial {
    id: Option<String>,
    name: String,
    arguments: String,
    /// Its name is whole and it went where it belongs.
    routed: bool,
    /// Its index among the client's calls, once routed to the client.
    client_index: Option<u32>,
    /// The provider said its arguments are whole (Anthropic's
    /// `content_block_stop`): nothing more of it may come.
    ended: bool,
}

/// The calls of one model call, by the provider's index.
#[derive(Default)]
pub(super) struct Calls {
    partials: BTreeMap<u32, Partial>,
    /// The one call whose name may still grow: named, not yet routed.
    /// Every other named call has been routed (a fragment of another call
    /// completes a name), so there is at most one.
    naming: Option<u32>,
    client_calls: u32,
}

impl Calls {
    pub fn is_empty(&self) -> bool {
        self.partials.is_empty()
    }

    pub fn len(&self) -> usize {
        self.partials.len()
    }

    pub fn contains(&self, index: u32) -> bool {
        self.partials.contains_key(&index)
    }

    /// Takes one fragment of call `index`. What the client is to be sent
    /// of its calls (a call's id and name with the arguments so far when
    /// it is routed to the client, then each fragment's arguments) is
    /// appended to `relay`; `for_client` says whether a whole name is one
    /// of the client's tools.
    pub fn push(
        &mut self,
        index: u32,
        id: Option<String>,
        name: Option<String>,
        arguments: String,
        for_client: &dyn Fn(&str) -> bool,
        relay: &mut Vec<ToolCallDelta>,
    ) -> Result<(), Malformed> {
        // A fragment of another call: the name being streamed is whole.
        if let Some(other) = self.naming.filter(|&i| i != index) {
            self.route(other, for_client, relay);
        }
        let p = self.partials.entry(index).or_default();
        // Once relayed, a call keeps the id the client was given.
        if id.is_some() && p.client_index.is_none() {
            p.id = id;
        }
        if let Some(n) = name.filter(|n| !n.is_empty()) {
            if !p.routed {
                if p.name.len() + n.len() > MAX_NAME_BYTES {
                    return Err(Malformed(format!(
                        "the provider sent a tool name longer than {MAX_NAME_BYTES} bytes; the stream was cut"
                    )));
                }
                p.name.push_str(&n);
                self.naming = Some(index);
            } else if n != p.name {
                // Some servers repeat the whole name on each fragment;
                // more of it once the call is under way is no model's.
                return Err(Malformed(
                    "the provider sent more of a tool call's name after its arguments began; the stream was cut"
                        .into(),
                ));
            }
        }
        if arguments.is_empty() {
            return Ok(());
        }
        // Its first arguments after its name: the name is whole.
        if !p.routed && !p.name.is_empty() {
            self.route(index, for_client, relay);
        }
        let Some(p) = self.partials.get_mut(&index) else {
            return Ok(());
        };
        p.arguments.push_str(&arguments);
        if let Some(i) = p.client_index {
            relay.push(ToolCallDelta {
                index: i,
                id: None,
                name: None,
                arguments,
            });
        }
        Ok(())
    }

    /// The provider said call `index` is whole: its name is too, and it is
    /// routed now if it was not. Returns its index among the client's
    /// calls if it went to the client.
    pub fn end(
        &mut self,
        index: u32,
        for_client: &dyn Fn(&str) -> bool,
        relay: &mut Vec<ToolCallDelta>,
    ) -> Option<u32> {
        if !self.partials.contains_key(&index) {
            return None;
        }
        self.route(index, for_client, relay);
        let p = self.partials.get_mut(&index)?;
        p.ended = true;
        p.client_index
    }

    /// Whether the provider said call `index` is whole.
    pub fn ended(&self, index: u32) -> bool {
        self.partials.get(&index).is_some_and(|p| p.ended)
    }

    /// The provider finished: the name being streamed is whole.
    pub fn finish(&mut self, for_client: &dyn Fn(&str) -> bool, relay: &mut Vec<ToolCallDelta>) {
        if let Some(i) = self.naming {
            self.route(i, for_client, relay);
        }
    }

    /// Sends call `index` (named) where it belongs; a call to the client's
    /// tool starts with its id, its name and the arguments so far.
    fn route(
        &mut self,
        index: u32,
        for_client: &dyn Fn(&str) -> bool,
        relay: &mut Vec<ToolCallDelta>,
    ) {
        if self.naming == Some(index) {
            self.naming = None;
        }
        let Some(p) = self.partials.get_mut(&index) else {
            return;
        };
        if p.routed || p.name.is_empty() {
            return;
        }
        p.routed = true;
        if for_client(&p.name) {
            let id = call_id(&p.id, index);
            p.id = Some(id.clone());
            p.client_index = Some(self.client_calls);
            relay.push(ToolCallDelta {
                index: self.client_calls,
                id: Some(id),
                name: Some(p.name.clone()),
                arguments: p.arguments.clone(),
            });
            self.client_calls += 1;
        }
    }

    /// The calls, in the order the provider indexed them, and which of
    /// them went back to the client.
    pub fn assemble(self) -> (Vec<ToolCall>, Vec<bool>) {
        self.partials
            .into_iter()
            .map(|(index, p)| {
                let call = ToolCall {
                    id: call_id(&p.id, index),
                    name: p.name,
                    arguments: p.arguments,
                };
                (call, p.client_index.is_some())
            })
            .unzip()
    }
}

/// The id of call `index` (some compatible servers send none; the
/// conversation still needs one to pair each result with its call).
fn call_id(id: &Option<String>, index: u32) -> String {
    id.clone().unwrap_or_else(|| format!("call_{index}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One fragment: (index, id, name, arguments).
    type Fragment<'a> = (u32, Option<&'a str>, Option<&'a str>, &'a str);

    /// Feeds `fragments` then the finish; what the client was sent, and
    /// the calls with whether each went to the client. The client's tools
    /// are `get_weather` and `lookup_` (a prefix of the pipeline's own).
    fn run(fragments: &[Fragment]) -> (Vec<ToolCallDelta>, Vec<(ToolCall, bool)>) {
        let for_client = |n: &str| n == "get_weather" || n == "lookup_";
        let mut calls = Calls::default();
        let mut relay = Vec::new();
        for (index, id, name, arguments) in fragments {
            calls
                .push(
                    *index,
                    id.map(str::to_string),
                    name.map(str::to_string),
                    arguments.to_string(),
                    &for_client,
                    &mut relay,
                )
                .unwrap();
        }
        calls.finish(&for_client, &mut relay);
        let (c, f) = calls.assemble();
        (relay, c.into_iter().zip(f).collect())
    }

    fn delta(index: u32, id: Option<&str>, name: Option<&str>, arguments: &str) -> ToolCallDelta {
        ToolCallDelta {
            index,
            id: id.map(str::to_string),
            name: name.map(str::to_string),
            arguments: arguments.to_string(),
        }
    }

    #[test]
    fn a_pipeline_tool_named_in_pieces_stays_with_the_pipeline() {
        // "lookup_" alone would be the client's tool.
        let (relay, calls) = run(&[
            (0, Some("call_a"), Some("lookup_"), ""),
            (0, None, Some("order"), ""),
            (0, None, None, r#"{"order_id":"#),
            (0, None, None, "1}"),
        ]);
        assert!(relay.is_empty(), "{relay:?}");
        assert_eq!(calls[0].0.name, "lookup_order");
        assert_eq!(calls[0].0.arguments, r#"{"order_id":1}"#);
        assert!(!calls[0].1);
    }

    #[test]
    fn a_client_tool_named_in_pieces_is_relayed_once_under_its_full_name() {
        let (relay, calls) = run(&[
            (0, Some("call_w"), Some("get_"), ""),
            (0, None, Some("weather"), r#"{"ci"#),
            (0, None, None, r#"ty":"Oslo"}"#),
        ]);
        assert_eq!(
            relay,
            [
                delta(0, Some("call_w"), Some("get_weather"), ""),
                delta(0, None, None, r#"{"ci"#),
                delta(0, None, None, r#"ty":"Oslo"}"#),
            ]
        );
        assert!(calls[0].1);
        assert_eq!(calls[0].0.name, "get_weather");
    }

    #[test]
    fn a_name_is_whole_when_another_call_starts_or_the_provider_finishes() {
        // Names first (no arguments yet), the arguments interleaved after.
        let (relay, calls) = run(&[
            (0, Some("call_a"), Some("get_"), ""),
            (0, None, Some("weather"), ""),
            (1, Some("call_b"), Some("get_weather"), ""),
            (0, None, None, "{}"),
        ]);
        assert_eq!(
            relay,
            [
                delta(0, Some("call_a"), Some("get_weather"), ""),
                // Call 1's name was whole when call 0 went on.
                delta(1, Some("call_b"), Some("get_weather"), ""),
                delta(0, None, None, "{}"),
            ]
        );
        assert!(calls.iter().all(|(_, client)| *client));
        // Named last, with no arguments: whole at the finish.
        let (relay, _) = run(&[
            (0, Some("call_a"), Some("get_"), ""),
            (0, None, Some("weather"), ""),
        ]);
        assert_eq!(relay, [delta(0, Some("call_a"), Some("get_weather"), "")]);
        // A call with no name at all goes nowhere (the pipeline answers it).
        let (relay, calls) = run(&[(0, None, None, "{}")]);
        assert!(relay.is_empty());
        assert_eq!(calls[0].0.name, "");
        assert_eq!(calls[0].0.id, "call_0");
    }

    #[test]
    fn arguments_before_the_name_go_with_it() {
        let (relay, _) = run(&[
            (0, Some("call_w"), None, "{"),
            (0, None, Some("get_weather"), "}"),
        ]);
        assert_eq!(
            relay,
            [
                delta(0, Some("call_w"), Some("get_weather"), "{"),
                delta(0, None, None, "}"),
            ]
        );
    }

    #[test]
    fn a_repeated_name_is_taken_once_and_a_name_that_grows_late_is_refused() {
        let (relay, calls) = run(&[
            (0, Some("call_w"), Some("get_weather"), "{"),
            (0, None, Some("get_weather"), "}"),
        ]);
        assert_eq!(
            relay,
            [
                delta(0, Some("call_w"), Some("get_weather"), ""),
                delta(0, None, None, "{"),
                delta(0, None, None, "}"),
            ]
        );
        assert_eq!(calls[0].0.name, "get_weather");
        let for_client = |_: &str| true;
        let mut calls = Calls::default();
        let mut relay = Vec::new();
        calls
            .push(
                0,
                None,
                Some("get_".into()),
                "{".into(),
                &for_client,
                &mut relay,
            )
            .unwrap();
        assert!(
            calls
                .push(
                    0,
                    None,
                    Some("weather".into()),
                    "}".into(),
                    &for_client,
                    &mut relay
                )
                .is_err()
        );
    }

    #[test]
    fn a_name_past_the_bound_is_refused() {
        let for_client = |_: &str| true;
        let mut calls = Calls::default();
        let mut relay = Vec::new();
        let piece = "a".repeat(MAX_NAME_BYTES / 2);
        for _ in 0..2 {
            calls
                .push(
                    0,
                    None,
                    Some(piece.clone()),
                    String::new(),
                    &for_client,
                    &mut relay,
                )
                .unwrap();
        }
        let err = calls
            .push(
                0,
                None,
                Some("a".into()),
                String::new(),
                &for_client,
                &mut relay,
            )
            .unwrap_err();
        assert!(err.0.contains("256 bytes"), "{err:?}");
        assert!(relay.is_empty());
    }
}
