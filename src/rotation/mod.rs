//! When to rotate a key: a pure policy ([`RotationPolicy`]) and a pure decision function
//! ([`decide`]), plus an injectable [`Clock`]. Nothing here talks to Vault or a provider, so
//! every agent evaluating the same metadata reaches the same answer and tests need no sleeping.

mod clock;
mod engine;
pub mod holds;
mod policy;

pub use clock::{Clock, FakeClock, SystemClock};
pub use engine::{Engine, KeyPlan, Outcome};
pub use policy::{decide, jitter_offset, parse_schedule, Decision, RotationPolicy};
