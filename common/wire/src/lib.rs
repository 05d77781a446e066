//! Warren's contract between its roles: what management and workers must agree on, and nothing
//! that talks to a database or a broker.
//!
//! - [`message`]: what travels on the queues (MessagePack, versioned).
//! - [`invocation`]: an invocation's status and log lines, as both the queue and the store
//!   carry them.
//! - [`topology`]: the exchange and queue names both roles declare.
//! - [`manifest`]: a function's `function.toml`.
//! - [`azure`]: Azure Functions apps (custom handlers) turned into manifests.
//! - [`package`]: packing, checking and unpacking function packages.
//! - [`schedule`]: cron schedules of timer triggers.
//! - [`retention`]: how long finished work is kept.
//! - [`time`]: the one time format of the store and the wire.

pub mod azure;
pub mod invocation;
pub mod manifest;
pub mod message;
pub mod package;
pub mod retention;
pub mod schedule;
pub mod time;
pub mod topology;
