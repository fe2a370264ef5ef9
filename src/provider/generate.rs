//! `type = "generate"`: a random key made here from the operating system's CSPRNG, for services
//! that accept whatever key we configure (gateways, proxies, self-hosted models).

use super::{BoxFuture, Capabilities, Kind, Minted, Provider, ProviderError};
use crate::secret::Secret;
use rand::rngs::OsRng;
use rand::TryRngCore;
use serde::{Deserialize, Serialize};

/// Alphabet of the random part of a generated key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Charset {
    /// `A-Za-z0-9`: safe in every header, env file and URL.
    #[default]
    Alphanumeric,
    /// `0-9a-f`.
    Hex,
    /// RFC 4648 URL-safe base64 alphabet (`A-Za-z0-9-_`), no padding.
    Base64url,
}

impl Charset {
    fn alphabet(self) -> &'static [u8] {
        match self {
            Charset::Alphanumeric => b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
            Charset::Hex => b"0123456789abcdef",
            Charset::Base64url => b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_",
        }
    }
}

/// Settings of `type = "generate"`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GenerateConfig {
    /// Put before the random part (e.g. `"sk-gw-"`), so keys are recognisable in leaks.
    #[serde(default)]
    pub prefix: String,
    /// Number of random characters after the prefix, 16..=256.
    #[serde(default = "default_length")]
    pub length: usize,
    #[serde(default)]
    pub charset: Charset,
}

fn default_length() -> usize {
    48
}

impl Default for GenerateConfig {
    fn default() -> Self {
        GenerateConfig { prefix: String::new(), length: default_length(), charset: Charset::default() }
    }
}

impl GenerateConfig {
    /// Refuses lengths too short to be safe or too long for some HTTP stacks.
    pub fn check(&self) -> Result<(), String> {
        if !(16..=256).contains(&self.length) {
            return Err(format!("generate: `length` must be between 16 and 256, got {}", self.length));
        }
        if self.prefix.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("generate: `prefix` must not contain whitespace or control characters".into());
        }
        Ok(())
    }

    /// A new key: prefix + `length` characters drawn uniformly from the charset using `OsRng`
    /// (the OS CSPRNG, `getrandom`), with rejection sampling so no character is favoured.
    pub fn generate(&self) -> Result<Secret, ProviderError> {
        self.check().map_err(ProviderError::Config)?;
        let alphabet = self.charset.alphabet();
        // Largest multiple of the alphabet size that fits in a byte: bytes above it are
        // rejected, so every character has exactly the same probability.
        let limit = 256 - (256 % alphabet.len());
        let mut out = String::with_capacity(self.prefix.len() + self.length);
        out.push_str(&self.prefix);
        let mut buf = [0u8; 64];
        let mut produced = 0;
        while produced < self.length {
            OsRng.try_fill_bytes(&mut buf).map_err(|e| ProviderError::Random(e.to_string()))?;
            for &b in buf.iter() {
                if produced == self.length {
                    break;
                }
                if usize::from(b) < limit {
                    out.push(char::from(alphabet[usize::from(b) % alphabet.len()]));
                    produced += 1;
                }
            }
        }
        Ok(Secret::new(out))
    }
}

impl Provider for GenerateConfig {
    fn kind(&self) -> &'static str {
        Self::NAME
    }

    /// Mints only: a generated key exists nowhere else, so there is nothing to revoke or list.
    fn capabilities(&self) -> Capabilities {
        Capabilities { mints: true, mints_locally: true, ..Capabilities::default() }
    }

    fn mint<'a>(&'a self, _key: &'a str) -> BoxFuture<'a, Result<Minted, ProviderError>> {
        Box::pin(async move {
            Ok(Minted { api_key: self.generate()?, key_id: None, expires_at: None, fields: Default::default() })
        })
    }
}

impl Kind for GenerateConfig {
    const NAME: &'static str = "generate";
    type Config = GenerateConfig;

    fn build(config: GenerateConfig) -> Result<Self, ProviderError> {
        config.check().map_err(ProviderError::Config)?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_charset_and_prefix() {
        for (charset, allowed) in [
            (Charset::Alphanumeric, Charset::Alphanumeric.alphabet()),
            (Charset::Hex, Charset::Hex.alphabet()),
            (Charset::Base64url, Charset::Base64url.alphabet()),
        ] {
            for length in [16, 48, 256] {
                let cfg = GenerateConfig { prefix: "sk-gw-".into(), length, charset };
                let key = cfg.generate().unwrap();
                let raw = key.expose();
                let rest = raw.strip_prefix("sk-gw-").unwrap();
                assert_eq!(rest.len(), length);
                assert!(rest.bytes().all(|b| allowed.contains(&b)), "{charset:?}");
            }
        }
    }

    #[test]
    fn two_keys_differ() {
        let cfg = GenerateConfig::default();
        assert_ne!(cfg.generate().unwrap(), cfg.generate().unwrap());
    }

    #[test]
    fn length_bounds_are_enforced() {
        assert!(GenerateConfig { length: 15, ..Default::default() }.generate().is_err());
        assert!(GenerateConfig { length: 257, ..Default::default() }.check().is_err());
        assert!(GenerateConfig { prefix: "a b".into(), ..Default::default() }.check().is_err());
    }

    #[test]
    fn charset_parses_from_config() {
        let cfg: GenerateConfig = toml::from_str("charset = \"base64url\"\nlength = 32").unwrap();
        assert_eq!(cfg.charset, Charset::Base64url);
        assert_eq!(cfg.length, 32);
    }
}
