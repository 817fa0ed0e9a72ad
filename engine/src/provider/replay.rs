//! The replay provider: serves a recorded provider stream from disk at a
//! given pace, so pipelines answer with no API key and no network.
//!
//! The pipeline's model name is the recording to play, relative to the
//! provider's `fixtures` directory (e.g. `openai/text_stop.sse`). Recordings
//! are read and decoded once, when the pipeline is compiled.
//!
//! Recordings under `anthropic/`, or whose first event is `message_start`,
//! are Anthropic Messages streams; all others are OpenAI chat completions.
//!
//! A model name that is a directory holds one recording per round of a
//! conversation with tools (`1.sse`, `2.sse`, ... in name order): a call is
//! answered with the recording of its round, counted from the assistant
//! tool-call turns already in its messages. The provider stays stateless.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::stream;

use super::anthropic_wire::AnthropicDecoder;
use super::http::Decoder;
use super::openai_wire::OpenAiDecoder;
use super::sse::{SseEvent, SseParser};
use super::{Chunk, ChunkStream, Provider, ProviderError, ProviderRequest};

pub struct ReplayProvider {
    dir: PathBuf,
    pace: Duration,
    /// Decoded recordings, by model name: one per round, each one group of
    /// chunks per upstream event.
    recordings: Mutex<HashMap<String, Arc<Vec<Recording>>>>,
}

type Recording = Arc<Vec<Vec<Chunk>>>;

impl ReplayProvider {
    pub fn new(dir: PathBuf, pace: Duration) -> Self {
        Self {
            dir,
            pace,
            recordings: Mutex::new(HashMap::new()),
        }
    }

    /// Reads and decodes a recording, reporting what is wrong with it.
    pub fn preload(&self, model: &str) -> Result<(), String> {
        let rel = Path::new(model);
        if rel.is_absolute() || rel.components().any(|c| !matches!(c, Component::Normal(_))) {
            return Err(format!(
                "replay recording \"{model}\" must be a relative path inside the fixtures directory"
            ));
        }
        let path = self.dir.join(rel);
        let files = if path.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(&path)
                .map_err(|e| format!("cannot read replay recordings \"{model}\": {e}"))?
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "sse"))
                .collect();
            files.sort();
            if files.is_empty() {
                return Err(format!(
                    "replay directory \"{model}\" holds no .sse recording"
                ));
            }
            files
        } else {
            vec![path]
        };
        let mut rounds = Vec::with_capacity(files.len());
        for file in &files {
            let shown = file
                .strip_prefix(&self.dir)
                .unwrap_or(file)
                .display()
                .to_string();
            let bytes = std::fs::read(file).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => {
                    format!("replay recording \"{model}\" does not exist in the fixtures directory")
                }
                _ => format!("cannot read replay recording \"{shown}\": {e}"),
            })?;
            let groups = decode_recording_as(&bytes, model.starts_with("anthropic/"))
                .map_err(|e| format!("replay recording \"{shown}\" is invalid: {e}"))?;
            rounds.push(Arc::new(groups));
        }
        self.recordings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(model.to_string(), Arc::new(rounds));
        Ok(())
    }

    /// The recording for the round `request` is in.
    fn recording(&self, request: &ProviderRequest) -> Option<Recording> {
        let rounds = self
            .recordings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&request.model)
            .cloned()?;
        let round = request
            .messages
            .iter()
            .filter(|m| m.role == super::Role::Assistant && !m.tool_calls.is_empty())
            .count();
        rounds
            .get(round.min(rounds.len().saturating_sub(1)))
            .cloned()
    }
}

/// Decodes a recorded stream body into one chunk group per event: an
/// Anthropic stream if its first event is `message_start`, else OpenAI.
pub fn decode_recording(bytes: &[u8]) -> Result<Vec<Vec<Chunk>>, String> {
    decode_recording_as(bytes, false)
}

/// Like [`decode_recording`], with the Anthropic decoder forced when
/// `anthropic` is set.
pub fn decode_recording_as(bytes: &[u8], anthropic: bool) -> Result<Vec<Vec<Chunk>>, String> {
    let mut parser = SseParser::new();
    let mut events = Vec::new();
    parser.push(bytes, &mut events).map_err(|e| e.to_string())?;
    parser.finish(&mut events);
    if events.is_empty() {
        return Err("no events".into());
    }
    if anthropic || events[0].event.as_deref() == Some("message_start") {
        decode_events(&events, AnthropicDecoder::new())
    } else {
        decode_events(&events, OpenAiDecoder::new())
    }
}

fn decode_events(
    events: &[SseEvent],
    mut decoder: impl Decoder,
) -> Result<Vec<Vec<Chunk>>, String> {
    let mut groups = Vec::with_capacity(events.len());
    for (i, ev) in events.iter().enumerate() {
        let mut chunks = Vec::new();
        decoder
            .decode(ev, &mut chunks)
            .map_err(|e| format!("event {}: {e}", i + 1))?;
        groups.push(chunks);
    }
    Ok(groups)
}

impl Provider for ReplayProvider {
    fn wire(&self) -> Option<super::Wire> {
        None
    }

    fn call(
        &self,
        request: ProviderRequest,
    ) -> Pin<Box<dyn Future<Output = Result<ChunkStream, ProviderError>> + Send + '_>> {
        Box::pin(async move {
            let groups = self.recording(&request).ok_or_else(|| {
                ProviderError::Config(format!("no replay recording \"{}\"", request.model))
            })?;
            let pace = self.pace;
            let events = stream::unfold((groups, 0usize), move |(groups, i)| async move {
                let group = groups.get(i)?.clone();
                if !pace.is_zero() {
                    tokio::time::sleep(pace).await;
                }
                Some((stream::iter(group.into_iter().map(Ok)), (groups, i + 1)))
            });
            let s: ChunkStream = Box::pin(futures_util::StreamExt::flatten(events));
            Ok(s)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::StreamExt;

    use super::*;
    use crate::provider::{FinishReason, Message, Role, Usage};

    fn fixtures() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/recorded")
    }

    async fn play(p: &ReplayProvider, model: &str) -> Vec<Chunk> {
        let req = ProviderRequest {
            model: model.to_string(),
            messages: vec![Message::new(Role::User, "hi")],
            params: Default::default(),
            max_tokens: 64,
            connect_timeout: Duration::from_secs(1),
            tools: Default::default(),
            trace_headers: Vec::new(),
        };
        let stream = p.call(req).await.expect("recording is loaded");
        stream.map(|c| c.expect("no error")).collect().await
    }

    fn text(chunks: &[Chunk]) -> String {
        chunks
            .iter()
            .filter_map(|c| match c {
                Chunk::Delta(t) => Some(t.as_str()),
                _ => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn anthropic_recordings_play_through_the_anthropic_decoder() {
        let p = ReplayProvider::new(fixtures(), Duration::ZERO);
        p.preload("anthropic/text.sse").unwrap();
        p.preload("anthropic/tool_use.sse").unwrap();

        let chunks = play(&p, "anthropic/text.sse").await;
        assert_eq!(text(&chunks), "Hello there!");
        assert_eq!(
            &chunks[chunks.len() - 3..],
            &[
                Chunk::Finish(FinishReason::Stop),
                Chunk::Usage(Usage {
                    prompt_tokens: 11,
                    completion_tokens: 6,
                    ..Usage::default()
                }),
                Chunk::End
            ]
        );

        let chunks = play(&p, "anthropic/tool_use.sse").await;
        assert_eq!(
            text(&chunks),
            "I'll check the current weather in Paris for you."
        );
        assert!(chunks.contains(&Chunk::Finish(FinishReason::ToolCalls)));
        assert_eq!(chunks.last(), Some(&Chunk::End));
    }

    #[test]
    fn the_wire_is_told_by_the_first_event_or_the_directory() {
        let body = std::fs::read(fixtures().join("anthropic/text.sse")).unwrap();
        let groups = decode_recording(&body).unwrap();
        assert!(groups.concat().contains(&Chunk::End));
        // The OpenAI decoder would reject Anthropic events, and vice versa.
        let openai = std::fs::read(fixtures().join("openai/text_stop.sse")).unwrap();
        assert!(decode_recording(&openai).is_ok());
        assert!(decode_recording_as(&openai, true).is_err());
    }
}
