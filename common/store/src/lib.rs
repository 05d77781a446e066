//! The store: one interface ([`Store`]), three backends.
//!
//! - [`sql::SqlxStore`]: PostgreSQL and SQLite, through sqlx.
//! - [`mssql::MssqlStore`]: SQL Server, through tiberius with a bb8 connection pool.
//! - [`group::Grouped`]: the group commit both roles put in front of their hottest calls.
//!
//! Every backend creates and migrates its own schema when opened, and passes the same
//! conformance suite (`tests/store_conformance.rs`). Times are milliseconds since the epoch
//! (`i64`) and ids are UUIDv7 text, so every backend stores the same values.
//!
//! The one rule that makes "one final record per invocation" hold: an invocation's status moves
//! out of `queued`/`running` exactly once, by a conditional update ([`Store::complete`]).

pub mod group;
mod guard;
mod interface;
mod migrate;
mod model;
pub mod mssql;
mod open;
mod rows;
pub mod sql;

pub use interface::{
    BatchStore, FleetStore, FunctionStore, InvocationStore, KeyStore, RetentionStore, SettingStore, Store, TriggerStore,
};
pub use model::*;
pub use open::open;
