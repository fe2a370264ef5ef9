//! Metrics and health endpoints.

mod health;
mod metrics;

pub use health::{serve, Health};
pub use metrics::{
    KeyLabel, KeyReasonLabel, KeyResultLabel, KeyStateLabel, Metrics, SinkLabel, SinkResultLabel, METRIC_NAMES,
};
