//! Signal names in the config (`exec.signal`, `keys.NAME.on_change.signal`), parsed into
//! [`SignalName`] when the config is loaded: a name keysync does not know is a config error
//! naming the field and listing the valid names, never discovered at the first key change and
//! never replaced by some default signal.

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A signal to send a process: written `SIGHUP`, `HUP`, `sighup` or as its number (`1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SignalName(Signal);

impl SignalName {
    /// Reads a signal name (with or without `SIG`, any case) or number.
    pub fn parse(text: &str) -> Result<SignalName, String> {
        let trimmed = text.trim();
        if let Ok(n) = trimmed.parse::<i32>() {
            return Signal::try_from(n)
                .map(SignalName)
                .map_err(|_| format!("{text:?} is not a signal number; use a name: {}", valid_names()));
        }
        let upper = trimmed.to_ascii_uppercase();
        let name = if upper.starts_with("SIG") { upper } else { format!("SIG{upper}") };
        name.parse::<Signal>()
            .map(SignalName)
            .map_err(|_| format!("{text:?} is not a signal; use one of {}", valid_names()))
    }

    pub fn get(self) -> Signal {
        self.0
    }
}

/// Every name [`SignalName::parse`] accepts, comma-separated, for error messages.
fn valid_names() -> String {
    Signal::iterator().map(Signal::as_str).collect::<Vec<_>>().join(", ")
}

impl TryFrom<String> for SignalName {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        SignalName::parse(&text)
    }
}

impl From<SignalName> for String {
    fn from(s: SignalName) -> String {
        s.0.as_str().to_string()
    }
}

/// The canonical name, `SIGHUP`.
impl fmt::Display for SignalName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_short_names_and_numbers_parse() {
        for text in ["SIGHUP", "HUP", "sighup", " hup ", "1"] {
            assert_eq!(SignalName::parse(text).map(SignalName::get), Ok(Signal::SIGHUP), "{text}");
        }
        assert_eq!(SignalName::parse("usr1").unwrap().to_string(), "SIGUSR1");
    }

    #[test]
    fn an_unknown_name_lists_the_valid_ones() {
        let e = SignalName::parse("SIGBOGUS").unwrap_err();
        assert!(
            e.contains("\"SIGBOGUS\"") && e.contains("SIGHUP") && e.contains("SIGUSR1") && e.contains("SIGTERM"),
            "{e}"
        );
        let e = SignalName::parse("999").unwrap_err();
        assert!(e.contains("\"999\"") && e.contains("SIGHUP"), "{e}");
    }

    #[test]
    fn every_listed_name_parses_back() {
        for sig in Signal::iterator() {
            let name = SignalName(sig).to_string();
            assert_eq!(SignalName::parse(&name), Ok(SignalName(sig)), "{name}");
        }
    }
}
