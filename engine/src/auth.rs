//! API keys: who may call Sluice, which pipelines, within which budgets.
//!
//! A key is a random secret of 256 bits that only its holder knows; the
//! configuration holds its SHA-256 digest (`sha256:<hex>`), which is all
//! Sluice ever stores or compares. A digest of a high-entropy secret needs
//! no slow hash: nobody can guess a preimage, and a leaked configuration
//! gives no key away.
//!
//! A request's key is found by its digest in a hash map (keyed with
//! random SipHash keys, so its timing tells nothing of a stored digest),
//! and the match is confirmed with a constant-time comparison.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::budget::{Budget, RateLimit};

/// What a digest looks like in the configuration.
pub const HASH_PREFIX: &str = "sha256:";
/// What every secret made by `sluice keys new` starts with, so that secret
/// scanners and people can tell a Sluice key.
pub const SECRET_PREFIX: &str = "sk-sluice-";
/// The longest credential read from a request; longer ones are unknown
/// without being hashed.
const PRESENTED_MAX: usize = 512;

/// A declared key (never its secret).
#[derive(Debug)]
pub struct ApiKey {
    /// Its name in the configuration: what the ledger, logs and metrics show.
    pub name: String,
    pub team: Option<String>,
    pub owner: Option<String>,
    pub pipelines: Access,
    /// The key's own budgets, then its team's.
    pub budgets: Vec<Budget>,
    /// The key's own rate limit, then its team's.
    pub rate_limits: Vec<RateLimit>,
    /// Whether it may read `/metrics` (and `/v1/config`).
    pub metrics: bool,
    /// Whether it may open the console and its JSON endpoints (which show
    /// every pipeline's and key's traffic); implies `metrics`.
    pub admin: bool,
}

impl ApiKey {
    /// Whether this key may call the pipeline named `name` (which may not
    /// exist: the answer must not tell).
    pub fn may_call(&self, name: &str) -> bool {
        match &self.pipelines {
            Access::All => true,
            Access::Only(names) => names.contains(name),
        }
    }
}

/// The pipelines a key may call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    All,
    Only(BTreeSet<String>),
}

/// The keys of a configuration, by digest.
#[derive(Debug, Default)]
pub struct Auth {
    keys: HashMap<[u8; 32], Arc<ApiKey>>,
    /// `server.allow_unauthenticated`: serving with no keys on a
    /// non-loopback address was asked for explicitly.
    pub allow_unauthenticated: bool,
}

impl Auth {
    /// Every declared key, in no particular order.
    pub fn keys(&self) -> impl Iterator<Item = &Arc<ApiKey>> {
        self.keys.values()
    }

    pub fn new(keys: HashMap<[u8; 32], Arc<ApiKey>>, allow_unauthenticated: bool) -> Auth {
        Auth {
            keys,
            allow_unauthenticated,
        }
    }

    /// Whether requests must bring a key: whenever any key is declared.
    pub fn required(&self) -> bool {
        !self.keys.is_empty()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key whose secret was presented, if any.
    pub fn identify(&self, presented: &str) -> Option<Arc<ApiKey>> {
        if presented.is_empty() || presented.len() > PRESENTED_MAX {
            return None;
        }
        let digest = digest(presented);
        let (stored, key) = self.keys.get_key_value(&digest)?;
        bool::from(stored.ct_eq(&digest)).then(|| key.clone())
    }
}

/// The SHA-256 digest of a secret.
pub fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// `sha256:<64 hex digits>` as a digest; None for anything else.
pub fn parse_hash(s: &str) -> Option<[u8; 32]> {
    let hex = s.strip_prefix(HASH_PREFIX)?;
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
        let text = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(text, 16).ok()?;
    }
    Some(out)
}

/// How a digest is written in the configuration.
pub fn format_hash(digest: &[u8; 32]) -> String {
    let mut s = String::with_capacity(HASH_PREFIX.len() + 64);
    s.push_str(HASH_PREFIX);
    for b in digest {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// A new secret: [`SECRET_PREFIX`] and 256 random bits from the operating
/// system, in hex.
pub fn new_secret() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    let mut s = String::with_capacity(SECRET_PREFIX.len() + 64);
    s.push_str(SECRET_PREFIX);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    Ok(s)
}

/// Whether `name` may name a key or a team: 1 to 64 ASCII letters, digits,
/// `_`, `-` and `.` (it is used in budget scopes, metric labels and logs).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> Arc<ApiKey> {
        Arc::new(ApiKey {
            name: name.into(),
            team: None,
            owner: None,
            pipelines: Access::All,
            budgets: Vec::new(),
            rate_limits: Vec::new(),
            metrics: false,
            admin: false,
        })
    }

    #[test]
    fn a_secret_is_known_by_its_digest_only() {
        let secret = new_secret().unwrap();
        assert!(secret.starts_with(SECRET_PREFIX));
        assert_eq!(secret.len(), SECRET_PREFIX.len() + 64);
        let hash = format_hash(&digest(&secret));
        assert_eq!(parse_hash(&hash), Some(digest(&secret)));
        let auth = Auth::new(HashMap::from([(digest(&secret), key("ci"))]), false);
        assert!(auth.required());
        assert_eq!(auth.identify(&secret).unwrap().name, "ci");
        // One character off, empty, the digest itself, far too long.
        let mut other = secret.clone();
        other.pop();
        other.push('x');
        for wrong in [other.as_str(), "", hash.as_str(), &"a".repeat(10_000)] {
            assert!(auth.identify(wrong).is_none(), "{wrong}");
        }
    }

    #[test]
    fn two_secrets_differ() {
        assert_ne!(new_secret().unwrap(), new_secret().unwrap());
    }

    #[test]
    fn hashes_are_64_hex_digits_after_the_prefix() {
        let good = format!("sha256:{}", "ab".repeat(32));
        assert!(parse_hash(&good).is_some());
        for bad in [
            "ab".repeat(32),
            format!("sha256:{}", "ab".repeat(31)),
            format!("sha256:{}", "zz".repeat(32)),
            format!("sha256:{}é", "ab".repeat(31)),
            format!("md5:{}", "ab".repeat(32)),
        ] {
            assert!(parse_hash(&bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn access_lists_name_pipelines() {
        let mut k = ApiKey {
            name: "k".into(),
            team: None,
            owner: None,
            pipelines: Access::Only(BTreeSet::from(["a".to_string()])),
            budgets: Vec::new(),
            rate_limits: Vec::new(),
            metrics: false,
            admin: false,
        };
        assert!(k.may_call("a") && !k.may_call("b"));
        k.pipelines = Access::All;
        assert!(k.may_call("b"));
        assert!(valid_name("ci-bot.2_x") && !valid_name("a,b") && !valid_name(""));
    }
}
