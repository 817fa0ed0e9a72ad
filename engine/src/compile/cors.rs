//! `server.cors`: which web pages may call Sluice from a browser, checked
//! into a [`Cors`] policy that `serve` applies.
//!
//! Origins are compared the way browsers write them (`scheme://host[:port]`,
//! lowercase, no default port, no path), so a configured origin that no
//! browser could ever send (a trailing slash, a path, `:443` on https) is an
//! error rather than an entry that silently never matches.

use std::path::Path;
use std::time::Duration;

use super::Cx;
use crate::config::{RawCors, Spanned};

/// The methods Sluice serves, the only ones a policy may allow.
const METHODS: [&str; 3] = ["GET", "HEAD", "POST"];
const DEFAULT_METHODS: [&str; 2] = ["GET", "POST"];
/// What the OpenAI and Anthropic SDKs and a plain `fetch` with a key send.
const DEFAULT_HEADERS: [&str; 4] = ["authorization", "content-type", "x-api-key", "x-request-id"];
const DEFAULT_EXPOSED: [&str; 1] = ["x-request-id"];
const DEFAULT_MAX_AGE: Duration = Duration::from_secs(600);
/// Firefox's cap; Chromium's is 2 hours.
const MAX_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// A checked CORS policy. With none configured, Sluice sends no CORS
/// header at all and browsers refuse every cross-origin call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cors {
    pub origins: Origins,
    /// Uppercase, from [`METHODS`].
    pub methods: Vec<String>,
    pub headers: AllowedHeaders,
    /// Lowercase header names.
    pub exposed: Vec<String>,
    pub credentials: bool,
    /// Whole seconds.
    pub max_age: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origins {
    /// `"*"`: every origin (never with credentials).
    Any,
    List(Vec<OriginPattern>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginPattern {
    /// `https://app.example.com:8443`, as a browser writes it.
    Exact(String),
    /// `https://*.example.com`: `scheme` is `https://`, `suffix` is
    /// `.example.com` (with `:port` when one was given).
    Subdomains { scheme: String, suffix: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedHeaders {
    /// `"*"`: whatever a preflight asks for.
    Any,
    /// Lowercase header names.
    List(Vec<String>),
}

impl Cors {
    /// Whether a page of `origin` (an `Origin` header's value) may call.
    pub fn allows_origin(&self, origin: &str) -> bool {
        match &self.origins {
            Origins::Any => true,
            Origins::List(list) => list.iter().any(|p| p.matches(origin)),
        }
    }

    pub fn allows_method(&self, method: &str) -> bool {
        self.methods.iter().any(|m| m == method)
    }

    /// `name` as a preflight lists it (any case).
    pub fn allows_header(&self, name: &str) -> bool {
        match &self.headers {
            AllowedHeaders::Any => true,
            AllowedHeaders::List(list) => list.iter().any(|h| h.eq_ignore_ascii_case(name)),
        }
    }
}

impl OriginPattern {
    fn matches(&self, origin: &str) -> bool {
        match self {
            OriginPattern::Exact(o) => o.eq_ignore_ascii_case(origin),
            OriginPattern::Subdomains { scheme, suffix } => {
                let (Some(s), Some(rest)) =
                    (origin.get(..scheme.len()), origin.get(scheme.len()..))
                else {
                    return false;
                };
                let Some(sub) = rest
                    .len()
                    .checked_sub(suffix.len())
                    .and_then(|cut| Some((rest.get(..cut)?, rest.get(cut..)?)))
                    .filter(|(_, end)| end.eq_ignore_ascii_case(suffix))
                    .map(|(sub, _)| sub)
                else {
                    return false;
                };
                // One or more whole labels: `a` or `a.b`, never `` or `x:1`.
                s.eq_ignore_ascii_case(scheme)
                    && !sub.is_empty()
                    && sub
                        .split('.')
                        .all(|l| !l.is_empty() && l.bytes().all(is_label_byte))
            }
        }
    }
}

fn is_label_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-'
}

/// One configured origin, or why no browser could send it.
pub(crate) fn parse_origin(given: &str) -> Result<OriginPattern, String> {
    let o = given.to_ascii_lowercase();
    if o == "null" {
        return Err(
            "origin \"null\" cannot be allowed: sandboxed frames and local files send it, so any page could"
                .into(),
        );
    }
    let Some((scheme, rest)) = o.split_once("://") else {
        return Err(format!(
            "origin \"{given}\" has no scheme, expected scheme://host[:port] such as \"https://{given}\""
        ));
    };
    let default_port = match scheme {
        "https" => "443",
        "http" => "80",
        _ => {
            return Err(format!(
                "origin \"{given}\" has scheme \"{scheme}\", expected http or https"
            ));
        }
    };
    if let Some(cut) = rest.find(['/', '?', '#']) {
        let bare = format!("{scheme}://{}", &rest[..cut]);
        let what = if &rest[cut..] == "/" {
            "ends with a slash"
        } else {
            "has a path"
        };
        return Err(format!(
            "origin \"{given}\" {what}; browsers send scheme://host[:port] only: \"{bare}\""
        ));
    }
    if rest.contains('@') {
        return Err(format!(
            "origin \"{given}\" has user information; an origin is scheme://host[:port]"
        ));
    }
    if !rest.is_ascii() {
        return Err(format!(
            "origin \"{given}\" is not ASCII; write the host in its punycode (xn--) form, as browsers send it"
        ));
    }
    // `[v6]:port` or `host:port`.
    let (host, port) = match rest.rfind(':') {
        Some(i) if !rest[i..].contains(']') => (&rest[..i], Some(&rest[i + 1..])),
        _ => (rest, None),
    };
    if let Some(port) = port {
        let canonical = port.parse::<u16>().ok().filter(|p| *p > 0);
        match canonical {
            Some(_) if port == default_port => {
                return Err(format!(
                    "origin \"{given}\" names the default port; browsers send it without: \"{scheme}://{host}\""
                ));
            }
            Some(p) if p.to_string() == port => {}
            _ => {
                return Err(format!(
                    "origin \"{given}\" has an invalid port \"{port}\", expected 1 to 65535"
                ));
            }
        }
    }
    let (wild, name) = match host.strip_prefix("*.") {
        Some(name) => (true, name),
        None => (false, host),
    };
    let valid_name = if let Some(v6) = name.strip_prefix('[') {
        !wild
            && v6
                .strip_suffix(']')
                .is_some_and(|a| a.parse::<std::net::Ipv6Addr>().is_ok())
    } else {
        !name.is_empty()
            && name
                .split('.')
                .all(|l| !l.is_empty() && l.bytes().all(is_label_byte))
    };
    if !valid_name || (wild && !name.contains('.')) {
        let hint = if host.contains('*') {
            ": a wildcard is a whole first label before at least two more, as in \"https://*.example.com\""
        } else {
            ""
        };
        return Err(format!("origin \"{given}\" has an invalid host{hint}"));
    }
    if wild {
        let suffix = rest["*".len()..].to_string();
        return Ok(OriginPattern::Subdomains {
            scheme: format!("{scheme}://"),
            suffix,
        });
    }
    Ok(OriginPattern::Exact(o))
}

impl Cx {
    pub(super) fn cors(&mut self, file: &Path, raw: &Spanned<RawCors>) -> Option<Cors> {
        let errors = self.diags.len();
        let r = &raw.value;
        let credentials = r.allow_credentials.as_ref().is_some_and(|c| c.value);
        let mut list = Vec::new();
        let mut any = false;
        for o in &r.allowed_origins {
            if o.value == "*" {
                any = true;
                if r.allowed_origins.len() > 1 {
                    self.error(file, o.pos, "\"*\" allows every origin: list it alone");
                }
                if let Some(c) = r.allow_credentials.as_ref().filter(|c| c.value) {
                    self.error(
                        file,
                        c.pos,
                        "allow_credentials: true cannot go with allowed_origins: [\"*\"] (browsers refuse it); list the origins",
                    );
                }
                continue;
            }
            match parse_origin(&o.value) {
                Ok(p) if list.contains(&p) => {}
                Ok(p) => list.push(p),
                Err(message) => self.error(file, o.pos, message),
            }
        }
        if r.allowed_origins.is_empty() {
            self.error(
                file,
                raw.pos,
                "cors needs allowed_origins: the origins of the pages that may call Sluice (none is allowed by default)",
            );
        }
        let methods = match &r.allowed_methods {
            None => DEFAULT_METHODS.iter().map(|m| m.to_string()).collect(),
            Some(given) => {
                let mut out: Vec<String> = Vec::new();
                for m in given {
                    let upper = m.value.to_ascii_uppercase();
                    if METHODS.contains(&upper.as_str()) {
                        if !out.contains(&upper) {
                            out.push(upper);
                        }
                    } else if upper == "OPTIONS" {
                        self.error(
                            file,
                            m.pos,
                            "OPTIONS is not listed: preflight requests of allowed origins are always answered",
                        );
                    } else {
                        self.error(
                            file,
                            m.pos,
                            format!(
                                "method \"{}\" is not one Sluice serves, expected GET, HEAD or POST",
                                m.value
                            ),
                        );
                    }
                }
                out
            }
        };
        let headers = match &r.allowed_headers {
            None => AllowedHeaders::List(DEFAULT_HEADERS.iter().map(|h| h.to_string()).collect()),
            Some(given) if given.iter().any(|h| h.value == "*") => {
                if given.len() > 1 {
                    self.error(
                        file,
                        given[0].pos,
                        "\"*\" allows every request header: list it alone",
                    );
                }
                AllowedHeaders::Any
            }
            Some(given) => AllowedHeaders::List(self.header_names(file, given, "allowed_headers")),
        };
        let exposed = match &r.exposed_headers {
            None => DEFAULT_EXPOSED.iter().map(|h| h.to_string()).collect(),
            Some(given) => self.header_names(file, given, "exposed_headers"),
        };
        let mut max_age = DEFAULT_MAX_AGE;
        if let Some(raw_age) = &r.max_age
            && let Some(d) = self.duration_or_zero(file, raw_age, "max_age")
        {
            if d.subsec_nanos() != 0 {
                self.error(file, raw_age.pos, "max_age must be whole seconds");
            } else if d > MAX_MAX_AGE {
                self.error(
                    file,
                    raw_age.pos,
                    "max_age must be at most 24h (browsers cache a preflight for 2h or 24h at most)",
                );
            } else {
                max_age = d;
            }
        }
        if self.diags.len() > errors {
            return None;
        }
        Some(Cors {
            origins: if any {
                Origins::Any
            } else {
                Origins::List(list)
            },
            methods,
            headers,
            exposed,
            credentials,
            max_age,
        })
    }

    /// Header names, lowercase, each once.
    fn header_names(&mut self, file: &Path, given: &[Spanned<String>], what: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for h in given {
            match http::HeaderName::from_bytes(h.value.as_bytes()) {
                Ok(name) => {
                    let name = name.as_str().to_string();
                    if !out.contains(&name) {
                        out.push(name);
                    }
                }
                Err(_) => self.error(
                    file,
                    h.pos,
                    format!(
                        "invalid header name \"{}\" in {what}, expected letters, digits and -",
                        h.value
                    ),
                ),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(s: &str) -> OriginPattern {
        parse_origin(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn origins_are_kept_as_browsers_write_them() {
        assert_eq!(
            pattern("https://App.Example.com"),
            OriginPattern::Exact("https://app.example.com".into())
        );
        assert_eq!(
            pattern("http://127.0.0.1:8080"),
            OriginPattern::Exact("http://127.0.0.1:8080".into())
        );
        assert_eq!(
            pattern("http://[::1]:3000"),
            OriginPattern::Exact("http://[::1]:3000".into())
        );
        assert_eq!(
            pattern("https://*.example.com"),
            OriginPattern::Subdomains {
                scheme: "https://".into(),
                suffix: ".example.com".into()
            }
        );
    }

    #[test]
    fn origins_no_browser_sends_are_refused_with_the_fix() {
        for (given, says) in [
            (
                "https://app.example.com/",
                "ends with a slash; browsers send scheme://host[:port] only: \"https://app.example.com\"",
            ),
            ("https://app.example.com/chat", "has a path"),
            ("https://app.example.com?x", "has a path"),
            ("app.example.com", "has no scheme"),
            ("ftp://app.example.com", "has scheme \"ftp\""),
            (
                "https://app.example.com:443",
                "names the default port; browsers send it without: \"https://app.example.com\"",
            ),
            ("http://app.example.com:80", "names the default port"),
            ("http://app.example.com:0", "invalid port"),
            ("http://app.example.com:08080", "invalid port"),
            ("http://app.example.com:99999", "invalid port"),
            ("http://user@app.example.com", "user information"),
            ("https://*.com", "a wildcard is a whole first label"),
            (
                "https://a.*.example.com",
                "a wildcard is a whole first label",
            ),
            ("https://*example.com", "invalid host"),
            ("https://", "invalid host"),
            ("https://a..b", "invalid host"),
            ("https://exämple.com", "punycode"),
            ("http://[zz]:1", "invalid host"),
            ("null", "cannot be allowed"),
        ] {
            let e = parse_origin(given).expect_err(given);
            assert!(e.contains(says), "{given}: {e}");
        }
    }

    #[test]
    fn wildcard_origins_match_subdomains_only() {
        let cors = Cors {
            origins: Origins::List(vec![
                pattern("https://*.example.com"),
                pattern("http://*.dev.test:8080"),
            ]),
            methods: vec![],
            headers: AllowedHeaders::Any,
            exposed: vec![],
            credentials: false,
            max_age: Duration::ZERO,
        };
        for yes in [
            "https://a.example.com",
            "https://a.b.example.com",
            "https://A.Example.com",
            "http://x.dev.test:8080",
        ] {
            assert!(cors.allows_origin(yes), "{yes}");
        }
        for no in [
            "https://example.com",
            "https://.example.com",
            "https://evilexample.com",
            "https://a.example.com.evil.com",
            "http://a.example.com",
            "https://a.example.com:8443",
            "https://x:1.example.com",
            "https://a/.example.com",
            "http://x.dev.test",
            "http://x.dev.test:80801",
            "",
            "null",
        ] {
            assert!(!cors.allows_origin(no), "{no}");
        }
    }
}
