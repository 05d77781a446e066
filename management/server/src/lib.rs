//! Warren's management role: the HTTP API, publishing, invoking, the triggers (timers, batches,
//! AMQP sources, outputs) and this instance's lease. The same code runs distributed
//! (`warren-management`: AMQP and a networked store) and embedded (`warren up`, in the
//! `warren-cli` crate: an in-process queue, SQLite, workers in the same process).
//!
//! A [`Management`] is made of parts, each handed to the loops that need it:
//! - [`catalog`]: functions, versions (manifests cached), publishing, settings;
//! - [`invoke`]: invoking and publishing (with `notices`, the waits of synchronous invokes),
//!   and dead letters (`dead_letters`);
//! - [`lease`]: this instance's lease, and the settling of what a stopped one left;
//! - [`keys`]: API keys; [`auth`]: the layer that checks them on every request;
//! - [`batch`], [`timers`], `sources`, `outputs`: the triggers and their loops;
//! - [`retention`]: the cleanup of finished work past its time; `holds`: paused functions'
//!   held invocations moved back once they resume.
//!
//! The HTTP side: [`http`] (the accept loop), [`api`] and [`triggers_api`] (the routes),
//! `azure_http` and `routes` (Azure Functions apps' HTTP triggers under `/api/`), [`portal`]
//! (the web page), with `reply` (errors) and `views` (how invocations look).

pub mod api;
pub mod auth;
mod azure_http;
pub mod batch;
mod cancel;
pub mod catalog;
mod config;
mod dead_letters;
mod error;
mod holds;
pub mod http;
pub mod invoke;
pub mod keys;
pub mod lease;
mod management;
pub mod metrics;
mod notices;
mod outputs;
pub mod portal;
mod reply;
pub mod retention;
mod routes;
mod sources;
pub mod timers;
pub mod triggers_api;
mod views;

pub use config::Config;
pub use dead_letters::{DeadLetter, ReplayReport};
pub use error::Error;
pub use http::serve;
pub use management::Management;
pub use reply::ApiError;
pub use views::view;
