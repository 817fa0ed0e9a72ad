//! A scenario's pipelines, pointed at the mock provider.
//!
//! The runner reads the pipelines directory as `sluice serve` would, then
//! compiles it with a rewritten `settings.yaml`: every provider becomes the
//! mock (`base_url` = the mock's URL), keeping its wire format
//! (`openai`, `anthropic`) or, for a `replay` provider, speaking the
//! scenario's wire; the ledger is `storage: memory` and alert webhooks are
//! dropped. The rewritten settings are given to the compiler as JSON (which
//! is YAML), under the original file name so relative paths still resolve.
//! Each provider is then rebuilt with [`SCENARIO_API_KEY`], a key the
//! scenario knows, so that a provider echoing it can be checked for leaks.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};
use sluice_testkit::Wire;

use crate::compile::{self, Catalog};
use crate::config::node::{self, Node};
use crate::config::{Diagnostic, Pos, SETTINGS_FILE};
use crate::provider::Provider;
use crate::provider::anthropic::AnthropicProvider;
use crate::provider::openai::OpenAiProvider;

/// The API key every mock provider is called with (never a real one):
/// `secret_absent` checks that it reaches neither the client nor the ledger.
pub const SCENARIO_API_KEY: &str = "sk-sluice-scenario-3f9c2a7e51d04b86";

/// The files of a pipelines directory, read once.
#[derive(Debug, Clone)]
pub struct PipelineSource {
    pub dir: PathBuf,
    settings_path: PathBuf,
    settings: Value,
    pipelines: Vec<(PathBuf, String)>,
}

impl PipelineSource {
    /// `catalog` (compiled against `base_url`) with every provider of its
    /// pipelines and fallbacks rebuilt to send [`SCENARIO_API_KEY`]; the
    /// API key cannot be given to the compiler other than through the
    /// environment, which a running process must not change.
    pub fn with_key(&self, mut catalog: Catalog, base_url: &str, replay_wire: Wire) -> Catalog {
        let Ok(uri) = base_url.parse::<http::Uri>() else {
            return catalog;
        };
        let mut made: HashMap<String, Arc<dyn Provider>> = HashMap::new();
        let mut keyed = |name: &str| -> Arc<dyn Provider> {
            let wire = Self::wire_of(self.provider_kind(name).unwrap_or("replay"), replay_wire);
            made.entry(name.to_owned())
                .or_insert_with(|| {
                    let key = Some(SCENARIO_API_KEY.to_owned());
                    match wire {
                        Wire::OpenAi => Arc::new(OpenAiProvider::new(name, uri.clone(), key, None)),
                        Wire::Anthropic => {
                            Arc::new(AnthropicProvider::new(name, uri.clone(), key, None))
                        }
                    }
                })
                .clone()
        };
        for (name, p) in std::mem::take(&mut catalog.pipelines) {
            // Just compiled: the catalog holds the only reference.
            let p = match Arc::try_unwrap(p) {
                Ok(mut p) => {
                    p.provider = keyed(&p.provider_name);
                    for f in &mut p.fallbacks {
                        f.provider = keyed(&f.provider_name);
                    }
                    Arc::new(p)
                }
                Err(p) => p,
            };
            catalog.pipelines.insert(name, p);
        }
        catalog
    }

    /// Reads `dir`: its `settings.yaml` and every other `*.yaml`/`*.yml`.
    pub fn read(dir: &Path) -> Result<PipelineSource, Vec<Diagnostic>> {
        let entries = std::fs::read_dir(dir).map_err(|e| {
            vec![Diagnostic::error(
                dir,
                Pos::START,
                format!("cannot read pipelines directory: {e}"),
            )]
        })?;
        let mut files: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.is_file()
                    && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
            })
            .collect();
        files.sort();
        let settings_path = dir.join(SETTINGS_FILE);
        let mut settings_text = None;
        let mut pipelines = Vec::new();
        for path in files {
            let text = std::fs::read_to_string(&path).map_err(|e| {
                vec![Diagnostic::error(
                    &path,
                    Pos::START,
                    format!("cannot read file: {e}"),
                )]
            })?;
            if path == settings_path {
                settings_text = Some(text);
            } else {
                pipelines.push((path, text));
            }
        }
        let Some(text) = settings_text else {
            return Err(vec![Diagnostic::error(
                &settings_path,
                Pos::START,
                "missing settings file (providers and server settings shared by the pipelines)",
            )]);
        };
        let node: Node = node::parse(&text)
            .map_err(|(pos, msg)| vec![Diagnostic::error(&settings_path, pos, msg)])?;
        let (settings, _) = node::from_node::<Value>(&node);
        let settings = settings.map_err(|e| {
            vec![Diagnostic::error(
                &settings_path,
                e.pos.unwrap_or(Pos::START),
                e.message,
            )]
        })?;
        Ok(PipelineSource {
            dir: dir.to_path_buf(),
            settings_path,
            settings,
            pipelines,
        })
    }

    /// The kind of the provider named `provider` in settings, if declared.
    pub fn provider_kind(&self, provider: &str) -> Option<&str> {
        self.settings
            .get("providers")?
            .get(provider)?
            .get("kind")?
            .as_str()
    }

    /// The wire a provider of `kind` speaks once pointed at the mock:
    /// its own for `openai`/`anthropic`, `replay_wire` otherwise.
    pub fn wire_of(kind: &str, replay_wire: Wire) -> Wire {
        match kind {
            "openai" => Wire::OpenAi,
            "anthropic" => Wire::Anthropic,
            _ => replay_wire,
        }
    }

    /// Compiles the pipelines with every provider pointed at `base_url`.
    /// On errors, the diagnostics of the unmodified directory are returned
    /// when it has any (their positions are the real ones).
    pub fn catalog(&self, base_url: &str, replay_wire: Wire) -> Result<Catalog, Vec<Diagnostic>> {
        let mut settings = self.settings.clone();
        if let Some(obj) = settings.as_object_mut() {
            obj.insert("storage".into(), Value::String("memory".into()));
            obj.remove("storage_env");
            obj.remove("alerts");
            if let Some(Value::Object(providers)) = obj.get_mut("providers") {
                for p in providers.values_mut() {
                    let kind = p.get("kind").and_then(Value::as_str).unwrap_or("openai");
                    let wire = Self::wire_of(kind, replay_wire);
                    let mut mock = Map::new();
                    mock.insert("kind".into(), Value::String(wire.as_str().into()));
                    mock.insert("base_url".into(), Value::String(base_url.into()));
                    *p = Value::Object(mock);
                }
            }
        }
        let text = settings.to_string();
        // Compiling may create tool databases from their seeds, and the
        // seeding is not safe against itself in one process: scenarios
        // running on several threads compile one at a time.
        static COMPILE: Mutex<()> = Mutex::new(());
        let _one_at_a_time = COMPILE.lock().unwrap_or_else(|p| p.into_inner());
        compile::compile_sources(&(self.settings_path.clone(), text), &self.pipelines).map_err(
            |rewritten| match compile::load_dir(&self.dir) {
                Err(original) => original,
                Ok(_) => rewritten,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_pipeline_compiles_against_a_mock() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipelines");
        let src = PipelineSource::read(&dir).unwrap();
        assert_eq!(src.provider_kind("replay"), Some("replay"));
        let cat = src
            .catalog("http://127.0.0.1:9/v1", Wire::Anthropic)
            .unwrap_or_else(|d| panic!("{d:?}"));
        assert_eq!(cat.storage, "memory");
        let demo = &cat.pipelines["demo"];
        assert_eq!(demo.provider_name, "replay");
    }
}
