//! When to rotate a key: a pure policy ([`RotationPolicy`]) and a pure decision function
//! ([`decide`]), plus an injectable [`Clock`]. Nothing here talks to Vault or a provider, so
//! every agent evaluating the same metadata reaches the same answer and tests need no sleeping.

mod clock;
mod config;
mod engine;
pub mod holds;
mod policy;
mod quiet;

pub use clock::{Clock, FakeClock, SystemClock};
pub use config::RotationConfig;
pub use engine::{Engine, KeyPlan, Memory, Outcome, SETTLE_FOR};
pub use policy::{decide, jitter_offset, parse_schedule, Decision, RotationPolicy};
pub use quiet::FailureLog;
