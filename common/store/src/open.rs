//! Opening a store from its URL.

use std::sync::Arc;

use crate::interface::Store;
use crate::model::{Result, StoreError};
use crate::{mssql, sql};

/// Opens the store a URL names and migrates its schema:
/// `sqlite://PATH` (created if missing), `postgres://…`, `mssql://USER:PASSWORD@HOST:PORT/DB`.
pub async fn open(url: &str) -> Result<Arc<dyn Store>> {
    if url.starts_with("sqlite:") || url.starts_with("postgres:") || url.starts_with("postgresql:") {
        Ok(Arc::new(sql::SqlxStore::open(url).await?))
    } else if url.starts_with("mssql:") || url.starts_with("sqlserver:") {
        Ok(Arc::new(mssql::MssqlStore::open(url).await?))
    } else {
        Err(StoreError::BadUrl(url.to_string()))
    }
}
