//! The Warren worker: consumes its pools' queues, runs each invocation, stores the outcome and
//! its log lines, then (and only then) acks the message.
//!
//! - [`worker`]: the [`Worker`] and its parts; [`config`]: its settings.
//! - `consume`: a consumer per pool, heartbeats, the drain at a stop signal ([`Worker::run`]).
//! - `pipeline`: one delivery's stages (decode, admit, claim, load, run, decide, store) and
//!   where it is settled (acked, returned or dead-lettered).
//! - `execute`, `record`: running an attempt; what the worker writes and sends besides.
//! - `versions`, `settings`, `groups`: loaded versions and the package cache, functions'
//!   settings, the group commits of claims and outcomes.
//! - [`process`], [`handler`], `tree`: one process per invocation, warm handlers, process trees.
//! - `azure`, `http`: Azure Functions custom handlers: their payloads, and HTTP to their port.
//! - [`metrics`]: the worker's metrics and their listener.

mod azure;
mod cancels;
pub mod config;
mod consume;
mod execute;
mod groups;
pub mod handler;
mod http;
pub mod metrics;
mod paused;
mod pipeline;
pub mod process;
mod record;
mod settings;
mod tree;
mod versions;
pub mod worker;

pub use config::{WorkerConfig, DEFAULT_PREFETCH_MULTIPLIER};
pub use worker::{Worker, VERSION};
