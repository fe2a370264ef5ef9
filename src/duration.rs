//! Human-friendly durations in config (`"30s"`, `"7d"`, `"1h 30m"`), parsed with humantime.
//!
//! A leaf module: every module's config types use it, so it imports nothing of keysync (it used
//! to live in `config/`, which made every config type reach up into the loader).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// A duration written the way people write them in config files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub const fn from_secs(secs: u64) -> Self {
        HumanDuration(Duration::from_secs(secs))
    }

    pub fn get(self) -> Duration {
        self.0
    }
}

impl TryFrom<String> for HumanDuration {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        humantime::parse_duration(text.trim())
            .map(HumanDuration)
            .map_err(|e| format!("invalid duration {text:?} ({e}); write it like \"30s\", \"5m\", \"12h\" or \"7d\""))
    }
}

impl From<HumanDuration> for String {
    fn from(d: HumanDuration) -> String {
        d.to_string()
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_forms() {
        assert_eq!(HumanDuration::try_from("30s".to_string()).unwrap().get(), Duration::from_secs(30));
        assert_eq!(HumanDuration::try_from("7d".to_string()).unwrap().get(), Duration::from_secs(7 * 86400));
        assert_eq!(HumanDuration::try_from("1h 30m".to_string()).unwrap().get(), Duration::from_secs(5400));
    }

    #[test]
    fn rejects_garbage_with_an_example() {
        let err = HumanDuration::try_from("soon".to_string()).unwrap_err();
        assert!(err.contains("\"soon\"") && err.contains("30s"), "{err}");
    }
}
