//! `sluice init`: a new pipelines directory that `sluice serve DIR` serves
//! at once, from any working directory: settings with the replay provider
//! (and commented OpenAI and Anthropic examples), one demo pipeline, its
//! recording, and the JSON Schemas that the files' `yaml-language-server`
//! comments name. Every file is embedded in the binary.

use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::config::schema;

#[derive(Debug, Error)]
pub enum InitError {
    #[error("not overwriting {}: already there (--force replaces them)", list(.0))]
    Exists(Vec<PathBuf>),
    #[error("cannot write {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn list(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The files `sluice init` writes, relative to its directory, with their
/// contents.
pub fn files() -> Vec<(&'static str, String)> {
    vec![
        (
            crate::config::SETTINGS_FILE,
            include_str!("../assets/init/settings.yaml").into(),
        ),
        ("demo.yaml", include_str!("../assets/init/demo.yaml").into()),
        // The same recording the repository's own demo plays.
        (
            "recordings/demo.sse",
            include_str!("../../fixtures/recorded/openai/text_stop.sse").into(),
        ),
        (
            "schema/settings.schema.json",
            schema::to_text(&schema::settings()),
        ),
        (
            "schema/pipeline.schema.json",
            schema::to_text(&schema::pipeline()),
        ),
    ]
}

/// Writes [`files`] into `dir` (created if needed) and returns their
/// paths. Unless `force`, nothing is written when any of them exists.
pub fn write(dir: &Path, force: bool) -> Result<Vec<PathBuf>, InitError> {
    let files = files();
    let existing: Vec<PathBuf> = files
        .iter()
        .map(|(name, _)| dir.join(name))
        .filter(|p| p.symlink_metadata().is_ok())
        .collect();
    if !force && !existing.is_empty() {
        return Err(InitError::Exists(existing));
    }
    let mut written = Vec::new();
    for (name, text) in files {
        let path = dir.join(name);
        let io = |source| InitError::Io {
            path: path.clone(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        std::fs::write(&path, text).map_err(io)?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sluice-init-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn writes_a_directory_that_compiles_and_refuses_to_overwrite_it() {
        let dir = temp_dir("compiles");
        let written = write(&dir, false).unwrap();
        assert_eq!(written.len(), files().len());
        let catalog = crate::compile::load_dir(&dir).unwrap_or_else(|d| panic!("{d:#?}"));
        assert_eq!(catalog.pipelines.keys().collect::<Vec<_>>(), ["demo"]);
        assert!(catalog.warnings.is_empty(), "{:?}", catalog.warnings);
        // The ledger is beside the settings, not in the working directory.
        assert_eq!(
            catalog.storage,
            format!("sqlite:{}", dir.join("data/sluice.db").display())
        );

        std::fs::write(dir.join("demo.yaml"), "# mine\n").unwrap();
        let err = write(&dir, false).unwrap_err();
        assert!(
            matches!(&err, InitError::Exists(p) if p.len() == files().len()),
            "{err}"
        );
        assert!(err.to_string().contains("--force"), "{err}");
        assert_eq!(
            std::fs::read_to_string(dir.join("demo.yaml")).unwrap(),
            "# mine\n"
        );
        write(&dir, true).unwrap();
        assert!(
            std::fs::read_to_string(dir.join("demo.yaml"))
                .unwrap()
                .contains("name: demo")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_files_name_the_schemas_written_beside_them() {
        for (name, text) in files() {
            if let Some(rest) = text.strip_prefix("# yaml-language-server: $schema=") {
                let target = rest.lines().next().unwrap();
                assert!(
                    files().iter().any(|(n, _)| *n == target),
                    "{name} names {target}, which init does not write"
                );
            } else {
                assert!(!name.ends_with(".yaml"), "{name} has no schema comment");
            }
        }
    }
}
