//! SQL Server backend, through tiberius with a bb8 connection pool.
//!
//! Every statement is a constant in [`statements`], listed so that a test parses each one with a
//! SQL Server dialect on machines where no SQL Server runs. This module holds the store handle
//! and what several concerns share; each of the others implements one sub-trait of [`Store`]. The full
//! conformance suite runs against a real server wherever `WARREN_TEST_MSSQL_URL` points to one.
//!
//! URL form: `mssql://USER:PASSWORD@HOST:PORT/DATABASE?encrypt=false|true&trust_cert=true`.

mod batches;
mod fleet;
mod functions;
mod invocations;
mod keys;
mod retention;
mod settings;
mod statements;
mod triggers;

use std::collections::HashSet;
use std::time::Duration;

use async_trait::async_trait;
use statements::*;
use tiberius::{AuthMethod, Client, Config, EncryptionLevel, Row, ToSql};
use tokio::net::TcpStream;
use tokio_util::compat::{Compat, TokioAsyncWriteCompatExt};
use warren_wire::time::now_ms;

use crate::interface::Store;
use crate::migrate::{migrate, Migrating};
use crate::model::*;
use crate::rows::{self, Columns};

type Conn = Client<Compat<TcpStream>>;

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// SQL Server's error numbers for a duplicate key.
fn is_duplicate(e: &tiberius::error::Error) -> bool {
    matches!(e.code(), Some(2627) | Some(2601))
}

pub struct Manager {
    config: Config,
}

impl bb8::ManageConnection for Manager {
    type Connection = Conn;
    type Error = tiberius::error::Error;

    async fn connect(&self) -> Result<Conn, Self::Error> {
        let tcp = TcpStream::connect(self.config.get_addr()).await?;
        tcp.set_nodelay(true)?;
        Client::connect(self.config.clone(), tcp.compat_write()).await
    }

    async fn is_valid(&self, conn: &mut Conn) -> Result<(), Self::Error> {
        conn.simple_query("SELECT 1").await?.into_row().await?;
        Ok(())
    }

    fn has_broken(&self, _: &mut Conn) -> bool {
        false
    }
}

pub struct MssqlStore {
    pool: bb8::Pool<Manager>,
    /// The management instance whose `queued` records this handle creates (see
    /// [`Store::set_origin`]).
    origin: std::sync::RwLock<Option<std::sync::Arc<str>>>,
}

/// Turns `mssql://user:pass@host:port/db?encrypt=…&trust_cert=…` into a tiberius config.
pub fn config_from_url(url: &str) -> Result<Config> {
    let u = url::Url::parse(url).map_err(|_| StoreError::BadUrl(url.to_string()))?;
    let mut c = Config::new();
    c.host(u.host_str().unwrap_or("localhost"));
    c.port(u.port().unwrap_or(1433));
    let db = u.path().trim_start_matches('/');
    if !db.is_empty() {
        c.database(db);
    }
    let user = percent_decode(u.username());
    let pass = percent_decode(u.password().unwrap_or(""));
    c.authentication(AuthMethod::sql_server(user, pass));
    // This build carries no TLS stack for SQL Server: the connection is unencrypted unless a
    // TLS-enabled build is used (see README, "Stores").
    c.encryption(EncryptionLevel::NotSupported);
    for (k, v) in u.query_pairs() {
        if k == "trust_cert" && v == "true" {
            c.trust_cert();
        }
    }
    Ok(c)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Ends a transaction. A failed rollback is only logged: the server may have rolled back
/// already (error 3903), and the caller reports the error that led here.
/// Records an invocation `queued` (CREATE_INVOCATION), on `c` and in its transaction if any.
async fn insert_invocation(c: &mut Conn, inv: &NewInvocation, origin: Option<&str>) -> tiberius::Result<()> {
    let id = inv.id.to_string();
    c.execute(
        CREATE_INVOCATION,
        &[&id.as_str(), &inv.function.as_str(), &inv.version, &inv.payload.as_slice(), &inv.created_ms, &origin],
    )
    .await
    .map(|_| ())
}

async fn finish(c: &mut Conn, commit: bool) -> Result<()> {
    if commit {
        c.simple_query(COMMIT).await.map_err(unavailable)?.into_results().await.map_err(unavailable)?;
    } else if let Err(e) = async { c.simple_query(ROLLBACK).await?.into_results().await }.await {
        tracing::debug!(error = %e, "rollback failed");
    }
    Ok(())
}

impl MssqlStore {
    fn origin(&self) -> Option<std::sync::Arc<str>> {
        self.origin.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub async fn open(url: &str) -> Result<Self> {
        let config = config_from_url(url)?;
        let pool = bb8::Pool::builder()
            .max_size(8)
            .connection_timeout(Duration::from_secs(10))
            .build(Manager { config })
            .await
            .map_err(|e| StoreError::Unavailable(format!("cannot open the SQL Server store: {e}")))?;
        let conn = pool.get_owned().await.map_err(unavailable)?;
        migrate(&mut Migration { conn }, SCHEMA).await?;
        Ok(MssqlStore { pool, origin: Default::default() })
    }

    async fn conn(&self) -> Result<bb8::PooledConnection<'_, Manager>> {
        self.pool.get().await.map_err(unavailable)
    }

    async fn rows(&self, sql: &str, params: &[&dyn ToSql]) -> Result<Vec<Row>> {
        let mut c = self.conn().await?;
        let stream = c.query(sql, params).await.map_err(unavailable)?;
        stream.into_first_result().await.map_err(unavailable)
    }
}

/// The connection migrations run on, serialised by an application lock (`sp_getapplock`) held
/// by its session.
struct Migration {
    conn: bb8::PooledConnection<'static, Manager>,
}

#[async_trait]
impl Migrating for Migration {
    async fn lock(&mut self) -> Result<()> {
        self.conn.simple_query(MIGRATE_LOCK).await.map_err(unavailable)?.into_results().await.map_err(unavailable)?;
        Ok(())
    }

    async fn unlock(&mut self, _applied: bool) -> Result<()> {
        self.conn.simple_query(MIGRATE_UNLOCK).await.map_err(unavailable)?.into_results().await.map_err(unavailable)?;
        Ok(())
    }

    async fn recorded(&mut self) -> Result<HashSet<i32>> {
        let exists = self.conn.simple_query(SCHEMA_EXISTS).await.map_err(unavailable)?.into_row().await;
        let exists = match exists.map_err(unavailable)? {
            Some(r) => r.int32(0)?,
            None => 0,
        };
        if exists == 0 {
            self.conn.execute(SCHEMA_CREATE, &[]).await.map_err(unavailable)?;
        }
        let rows = self
            .conn
            .simple_query(SCHEMA_STEPS)
            .await
            .map_err(unavailable)?
            .into_first_result()
            .await
            .map_err(unavailable)?;
        rows.iter().map(|r| r.int32(0)).collect()
    }

    async fn apply(&mut self, step: i32, sql: &str) -> Result<()> {
        self.conn.execute(sql, &[]).await.map_err(unavailable)?;
        self.conn.execute(SCHEMA_RECORD, &[&step, &now_ms()]).await.map_err(unavailable)?;
        Ok(())
    }
}

impl Store for MssqlStore {
    fn backend(&self) -> &'static str {
        "mssql"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_becomes_config() {
        let c = config_from_url("mssql://sa:p%40ss@db.local:1444/warren").unwrap();
        assert_eq!(c.get_addr(), "db.local:1444");
        assert_eq!(percent_decode("p%40ss"), "p@ss");
    }
}
