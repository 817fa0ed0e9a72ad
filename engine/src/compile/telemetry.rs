//! Compiling `telemetry:` and the standard `OTEL_*` environment variables
//! into [`TraceSettings`]. The file wins where it says something; the
//! environment fills the rest. A value that cannot be used, from either,
//! is an error naming where it came from (an environment variable's is
//! reported at the `telemetry:` key, or at the top of the file).

use std::path::Path;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Uri};

use super::Cx;
use crate::config::{Pos, RawTelemetry, Spanned};
use crate::telemetry::{Sampling, TraceSettings};

/// The collector's default address (OTLP/HTTP), as the OpenTelemetry
/// specification sets it.
const DEFAULT_ENDPOINT: &str = "http://localhost:4318";
const TRACES_PATH: &str = "/v1/traces";

/// Reads one environment variable; an empty value is no value.
pub(super) type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

pub(super) fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The first of `names` that is set, with its name.
fn first_env(env: Env<'_>, names: &[&'static str]) -> Option<(&'static str, String)> {
    names.iter().find_map(|n| env(n).map(|v| (*n, v)))
}

fn http_url(s: &str) -> Option<Uri> {
    s.trim()
        .parse::<Uri>()
        .ok()
        .filter(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some())
}

/// `base` with `/v1/traces` appended to its path.
fn traces_url(base: &str) -> Option<Uri> {
    http_url(&format!(
        "{}{TRACES_PATH}",
        base.trim().trim_end_matches('/')
    ))
}

impl Cx {
    /// Trace settings, or None when traces are off (no `telemetry:` and no
    /// endpoint in the environment, `enabled: false`, or
    /// `OTEL_SDK_DISABLED=true`).
    pub(super) fn telemetry(
        &mut self,
        file: &Path,
        raw: Option<&Spanned<RawTelemetry>>,
        env: Env<'_>,
    ) -> Option<TraceSettings> {
        let pos = raw.map_or(Pos::START, |r| r.pos);
        let empty = RawTelemetry::default();
        let t = raw.map_or(&empty, |r| &r.value);
        let disabled =
            env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
        if t.enabled.as_ref().is_some_and(|e| !e.value) || disabled {
            return None;
        }
        let env_endpoint = first_env(
            env,
            &[
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "OTEL_EXPORTER_OTLP_ENDPOINT",
            ],
        );
        if raw.is_none() && env_endpoint.is_none() {
            return None;
        }
        let before = self.diags.len();
        // The URL may carry credentials: it is not echoed.
        let endpoint = match (&t.endpoint, env_endpoint) {
            (Some(e), _) => traces_url(&e.value).or_else(|| {
                self.error(
                    file,
                    e.pos,
                    "invalid telemetry endpoint, expected the collector's http:// or https:// URL such as http://localhost:4318",
                );
                None
            }),
            (None, Some((var, v))) => {
                let url = if var == "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" {
                    http_url(&v)
                } else {
                    traces_url(&v)
                };
                url.or_else(|| {
                    self.error(
                        file,
                        pos,
                        format!("environment variable {var} is not an http:// or https:// URL"),
                    );
                    None
                })
            }
            (None, None) => traces_url(DEFAULT_ENDPOINT),
        };
        if let Some((var, v)) = first_env(
            env,
            &[
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                "OTEL_EXPORTER_OTLP_PROTOCOL",
            ],
        ) && v.trim() != "http/protobuf"
        {
            self.error(
                file,
                pos,
                format!(
                    "environment variable {var} is \"{}\"; Sluice exports traces as http/protobuf only",
                    v.trim()
                ),
            );
        }
        if let Some((var, v)) = first_env(
            env,
            &[
                "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
                "OTEL_EXPORTER_OTLP_COMPRESSION",
            ],
        ) && v.trim() != "none"
        {
            self.error(
                file,
                pos,
                format!(
                    "environment variable {var} is \"{}\"; Sluice exports traces uncompressed (none)",
                    v.trim()
                ),
            );
        }
        let headers = self.trace_headers(file, pos, t, env);
        let service_name = match &t.service_name {
            Some(s) if s.value.trim().is_empty() => {
                self.error(file, s.pos, "service_name must not be empty");
                String::new()
            }
            Some(s) => s.value.clone(),
            None => env("OTEL_SERVICE_NAME").unwrap_or_else(|| "sluice".into()),
        };
        let sampling = match &t.sample_ratio {
            Some(r) if (0.0..=1.0).contains(&r.value) => Sampling {
                parent_based: true,
                ratio: r.value,
            },
            Some(r) => {
                self.error(file, r.pos, "sample_ratio must be between 0 and 1");
                Sampling::ALWAYS
            }
            None => self.env_sampler(file, pos, env),
        };
        let timeout = match &t.timeout {
            Some(d) => self.duration(file, d, "timeout"),
            None => self.env_millis(
                file,
                pos,
                env,
                &[
                    "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
                    "OTEL_EXPORTER_OTLP_TIMEOUT",
                ],
            ),
        }
        .unwrap_or(Duration::from_secs(10));
        let batch_delay = t
            .batch_delay
            .as_ref()
            .and_then(|d| self.duration(file, d, "batch_delay"))
            .unwrap_or(Duration::from_secs(5));
        let queue_size = self
            .count(file, &t.queue_size, "queue_size")
            .unwrap_or(2048);
        let batch_size = self.count(file, &t.batch_size, "batch_size").unwrap_or(512);
        if let Some(b) = &t.batch_size
            && batch_size > queue_size
        {
            self.error(
                file,
                b.pos,
                format!("batch_size ({batch_size}) must not exceed queue_size ({queue_size})"),
            );
        }
        if self.diags[before..].iter().any(|d| d.is_error()) {
            return None;
        }
        Some(TraceSettings {
            endpoint: endpoint?,
            headers,
            service_name,
            sampling,
            capture_content: t.capture_content.as_ref().is_some_and(|c| c.value),
            timeout,
            queue_size,
            batch_size: batch_size.min(queue_size),
            batch_delay,
        })
    }

    /// The file's `headers` and `headers_env`, then those of
    /// `OTEL_EXPORTER_OTLP_(TRACES_)HEADERS` that the file does not name.
    /// No value is echoed; those from the environment are secrets,
    /// scrubbed like an API key from what providers send back.
    fn trace_headers(
        &mut self,
        file: &Path,
        pos: Pos,
        t: &RawTelemetry,
        env: Env<'_>,
    ) -> Vec<(HeaderName, HeaderValue)> {
        let mut out: Vec<(HeaderName, HeaderValue)> = Vec::new();
        // Problems are reported at the header's name, or at its value.
        let mut add =
            |cx: &mut Cx, (name_at, at): (Pos, Pos), name: &str, value: &str, from: &str| {
                let Ok(name) = HeaderName::from_bytes(name.trim().as_bytes()) else {
                    cx.error(
                        file,
                        name_at,
                        format!("invalid header name \"{name}\" in {from}"),
                    );
                    return;
                };
                let Ok(mut value) = HeaderValue::from_str(value.trim()) else {
                    cx.error(
                        file,
                        at,
                        format!("the value of header {name} in {from} is not a valid header value"),
                    );
                    return;
                };
                value.set_sensitive(true);
                if !out.iter().any(|(n, _)| *n == name) {
                    out.push((name, value));
                }
            };
        for (name, value) in &t.headers {
            let at = (name.pos, value.pos);
            add(self, at, &name.value, &value.value, "telemetry.headers");
        }
        for (name, var) in &t.headers_env {
            match env(&var.value) {
                Some(v) => {
                    self.secrets.add_key(&v);
                    add(self, (name.pos, var.pos), &name.value, &v, &var.value)
                }
                None => self.error(
                    file,
                    var.pos,
                    format!(
                        "environment variable {} (telemetry header {}) is not set",
                        var.value, name.value
                    ),
                ),
            }
        }
        if let Some((var, list)) = first_env(
            env,
            &[
                "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
                "OTEL_EXPORTER_OTLP_HEADERS",
            ],
        ) {
            // `name=value,name=value`, values percent-encoded (W3C Baggage).
            for pair in list.split(',').filter(|p| !p.trim().is_empty()) {
                let Some((name, value)) = pair.split_once('=') else {
                    self.error(
                        file,
                        pos,
                        format!("environment variable {var} holds an entry without '=' (expected name=value,...)"),
                    );
                    continue;
                };
                match percent_decode(value) {
                    Some(v) => {
                        self.secrets.add_key(&v);
                        add(self, (pos, pos), name, &v, var)
                    }
                    None => self.error(
                        file,
                        pos,
                        format!("environment variable {var} holds a value that is not valid percent-encoded UTF-8"),
                    ),
                }
            }
        }
        out
    }

    /// `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`.
    fn env_sampler(&mut self, file: &Path, pos: Pos, env: Env<'_>) -> Sampling {
        let Some(name) = env("OTEL_TRACES_SAMPLER") else {
            return Sampling::ALWAYS;
        };
        let name = name.trim().to_ascii_lowercase();
        let ratio = || -> Result<f64, ()> {
            match env("OTEL_TRACES_SAMPLER_ARG") {
                None => Ok(1.0),
                Some(a) => a
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|r| (0.0..=1.0).contains(r))
                    .ok_or(()),
            }
        };
        let (parent_based, ratio) = match name.as_str() {
            "always_on" => (false, Ok(1.0)),
            "always_off" => (false, Ok(0.0)),
            "traceidratio" => (false, ratio()),
            "parentbased_always_on" => (true, Ok(1.0)),
            "parentbased_always_off" => (true, Ok(0.0)),
            "parentbased_traceidratio" => (true, ratio()),
            other => {
                self.error(
                    file,
                    pos,
                    format!(
                        "environment variable OTEL_TRACES_SAMPLER is \"{other}\", expected always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off or parentbased_traceidratio"
                    ),
                );
                return Sampling::ALWAYS;
            }
        };
        match ratio {
            Ok(ratio) => Sampling {
                parent_based,
                ratio,
            },
            Err(()) => {
                self.error(
                    file,
                    pos,
                    "environment variable OTEL_TRACES_SAMPLER_ARG must be a number between 0 and 1",
                );
                Sampling::ALWAYS
            }
        }
    }

    /// A timeout in milliseconds from the first of `names` that is set.
    fn env_millis(
        &mut self,
        file: &Path,
        pos: Pos,
        env: Env<'_>,
        names: &[&'static str],
    ) -> Option<Duration> {
        let (var, v) = first_env(env, names)?;
        match v.trim().parse::<u64>() {
            Ok(ms) if ms > 0 => Some(Duration::from_millis(ms)),
            _ => {
                self.error(
                    file,
                    pos,
                    format!("environment variable {var} must be a whole number of milliseconds, more than 0"),
                );
                None
            }
        }
    }
}

/// `%XX` escapes decoded; None when they do not make UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
#[path = "telemetry_tests.rs"]
mod tests;
