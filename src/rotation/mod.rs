//! When to rotate a key: a pure policy ([`RotationPolicy`]) and a pure decision function
//! ([`decide`]), plus an injectable [`Clock`], so every agent evaluating the same metadata
//! reaches the same answer and tests need no sleeping. The [`Engine`] carries out one key's
//! rotation step against Vault and the provider; [`rotate_due`] steps many keys at once, for
//! both the agent and `keysync rotate --due`.

mod config;
mod due;
mod engine;
pub mod holds;
mod policy;
mod quiet;

pub use crate::clock::{Clock, FakeClock, SystemClock};
pub use config::RotationConfig;
pub use due::{rotate_due, DueOptions, KeyResult};
pub use engine::{Engine, KeyPlan, Memory, Outcome, SETTLE_FOR};
pub use policy::{decide, jitter_offset, parse_schedule, Decision, RotationPolicy};
pub use quiet::FailureLog;
