//! Secret values in memory: a newtype whose `Debug`/`Display` print a mask, fingerprints and
//! masking. Getting the raw value is one explicit, greppable call: [`Secret::expose`].

use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use std::fmt;

/// A secret string (API key, Vault token, secret_id). Never printed: `Debug` and `Display`
/// show [`mask`] for keys and `<redacted>` for credentials. Zeroized on drop through `secrecy`.
#[derive(Clone)]
pub struct Secret {
    value: SecretString,
    /// A credential (Vault token, secret_id, JWT): shown as `<redacted>`, not even masked.
    /// Masks exist so people can tell API keys apart; nobody needs to tell tokens apart, and
    /// 8 characters of a token are 8 characters fewer to guess.
    credential: bool,
}

/// What `Debug`/`Display` of a credential print.
pub const REDACTED: &str = "<redacted>";

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret { value: SecretString::from(value.into()), credential: false }
    }

    /// A credential (Vault token, secret_id, JWT): never shown in any form, not even masked.
    pub fn credential(value: impl Into<String>) -> Self {
        Secret { value: SecretString::from(value.into()), credential: true }
    }

    /// The raw value. Call only at the one place that sends or writes it.
    pub fn expose(&self) -> &str {
        self.value.expose_secret()
    }

    /// `sha256:<64 hex>` of the value, safe to log and store.
    pub fn fingerprint(&self) -> String {
        fingerprint(self.expose().as_bytes())
    }

    pub fn is_empty(&self) -> bool {
        self.expose().is_empty()
    }

    /// [`mask`] of an API key; [`REDACTED`] for a credential.
    pub fn masked(&self) -> String {
        if self.credential {
            REDACTED.to_string()
        } else {
            mask(self.expose())
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({})", self.masked())
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.expose() == other.expose()
    }
}

impl Eq for Secret {}

/// `sha256:` + lowercase hex SHA-256 of `bytes`.
pub fn fingerprint(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for b in digest.iter() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The first 12 hex digits of a fingerprint, for tables.
pub fn short_fingerprint(fp: &str) -> &str {
    let hex = fp.strip_prefix("sha256:").unwrap_or(fp);
    hex.get(..12).unwrap_or(hex)
}

/// First 4 + `…` + last 4 characters; values of 12 characters or fewer become `****`, so a
/// mask never reveals more than 8 characters of a key.
pub fn mask(value: &str) -> String {
    let chars: Vec<char> = value.chars().collect();
    if chars.len() <= 12 {
        return "****".to_string();
    }
    let head: String = chars[..4].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}…{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_shows_at_most_eight_characters() {
        assert_eq!(mask("sk-proj-abcdefghijklmnopx123"), "sk-p…x123");
        assert_eq!(mask("short"), "****");
        assert_eq!(mask("exactly12chr"), "****");
        assert_eq!(mask("thirteen-char"), "thir…char");
        assert_eq!(mask(""), "****");
    }

    #[test]
    fn debug_and_display_never_show_the_value() {
        let s = Secret::new("sk-live-0123456789abcdef");
        assert_eq!(format!("{s:?}"), "Secret(sk-l…cdef)");
        assert_eq!(format!("{s}"), "sk-l…cdef");
    }

    #[test]
    fn credentials_are_never_shown_even_masked() {
        let t = Secret::credential("hvs.CAESIJ0123456789abcdef");
        assert_eq!(format!("{t:?}"), "Secret(<redacted>)");
        assert_eq!(format!("{t}"), "<redacted>");
        assert_eq!(t.masked(), REDACTED);
        assert_eq!(t, Secret::new("hvs.CAESIJ0123456789abcdef"), "equality is by value");
    }

    /// docs/security.md promises exactly this input: the UTF-8 bytes of the key as stored in Vault's
    /// `api_key` field, nothing added (a sink's trailing newline is not part of it).
    #[test]
    fn a_fingerprint_hashes_the_key_bytes_without_a_trailing_newline() {
        let key = Secret::new("sk-test-fingerprint-input");
        // printf 'sk-test-fingerprint-input' | sha256sum
        assert_eq!(key.fingerprint(), "sha256:b16d176c14909ebeaa88cebcee4b9c4dcb6c642bb9b468da9bda1e9946b91524");
        assert_ne!(key.fingerprint(), fingerprint(b"sk-test-fingerprint-input\n"));
    }

    #[test]
    fn fingerprint_is_sha256_hex() {
        // SHA-256("abc") from FIPS 180-2.
        assert_eq!(fingerprint(b"abc"), "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(short_fingerprint(&fingerprint(b"abc")), "ba7816bf8f01");
    }

    #[test]
    fn mask_handles_multibyte_characters() {
        assert_eq!(mask("ключ-ключ-ключ-ключ"), "ключ…ключ");
    }
}
