//! The replay provider: serves a recorded provider stream from disk at a
//! given pace, so pipelines answer with no API key and no network.
//!
//! The pipeline's model name is the recording to play, relative to the
//! provider's `fixtures` directory (e.g. `openai/text_stop.sse`). Recordings
//! are read and decoded once, when the pipeline is compiled.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::stream;

use super::openai_wire::OpenAiDecoder;
use super::sse::SseParser;
use super::{Chunk, ChunkStream, Provider, ProviderError, ProviderRequest};

pub struct ReplayProvider {
    dir: PathBuf,
    pace: Duration,
    /// Decoded recordings: one group of chunks per upstream event.
    recordings: Mutex<HashMap<String, Arc<Vec<Vec<Chunk>>>>>,
}

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
        let bytes = std::fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                format!("replay recording \"{model}\" does not exist in the fixtures directory")
            }
            _ => format!("cannot read replay recording \"{model}\": {e}"),
        })?;
        let groups = decode_recording(&bytes)
            .map_err(|e| format!("replay recording \"{model}\" is invalid: {e}"))?;
        self.recordings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(model.to_string(), Arc::new(groups));
        Ok(())
    }

    fn recording(&self, model: &str) -> Option<Arc<Vec<Vec<Chunk>>>> {
        self.recordings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(model)
            .cloned()
    }
}

/// Decodes a recorded OpenAI stream body into one chunk group per event.
pub fn decode_recording(bytes: &[u8]) -> Result<Vec<Vec<Chunk>>, String> {
    let mut parser = SseParser::new();
    let mut events = Vec::new();
    parser.push(bytes, &mut events).map_err(|e| e.to_string())?;
    parser.finish(&mut events);
    if events.is_empty() {
        return Err("no events".into());
    }
    let mut decoder = OpenAiDecoder::new();
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
    fn call(
        &self,
        request: ProviderRequest,
    ) -> Pin<Box<dyn Future<Output = Result<ChunkStream, ProviderError>> + Send + '_>> {
        Box::pin(async move {
            let groups = self.recording(&request.model).ok_or_else(|| {
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
