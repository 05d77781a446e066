//! Other systems' brokers: the AMQP side of source triggers and of `amqp` outputs.
//!
//! Unlike [`crate::amqp::AmqpTransport`] (Warren's own queues, with a reconnect supervisor),
//! a peer link is opened on first use, kept while it works, and dropped on the first error;
//! the next use opens a new one. Callers retry with their own backoff.

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use lapin::options::ConfirmSelectOptions;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

use warren_service::redact::redact_url;

struct PeerLink {
    _conn: Connection,
    channel: Channel,
}

/// Publishing links to AMQP brokers, one per URL.
#[derive(Default)]
pub struct Peers {
    links: DashMap<String, Arc<PeerLink>>,
}

/// Opens a connection to `url`, named for the broker's connection list. `url` may list the
/// nodes of a cluster separated by commas: they are tried in turn.
pub async fn connect(url: &str, name: &str) -> Result<Connection, String> {
    let mut errors = Vec::new();
    for node in url.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        let props = ConnectionProperties::default().with_connection_name(name.to_string().into());
        match tokio::time::timeout(Duration::from_secs(5), Connection::connect(node, props)).await {
            Ok(Ok(conn)) => return Ok(conn),
            Ok(Err(e)) => errors.push(format!("cannot connect to {}: {e}", redact_url(node))),
            Err(_) => errors.push(format!("{} did not answer within 5 s", redact_url(node))),
        }
    }
    if errors.is_empty() {
        return Err("no broker URL given".into());
    }
    Err(errors.join("; "))
}

impl Peers {
    async fn link(&self, url: &str) -> Result<Arc<PeerLink>, String> {
        if let Some(l) = self.links.get(url) {
            if l.channel.status().connected() {
                return Ok(l.clone());
            }
        }
        let conn = connect(url, "warren-outputs").await?;
        let channel = conn.create_channel().await.map_err(|e| e.to_string())?;
        channel.confirm_select(ConfirmSelectOptions::default()).await.map_err(|e| e.to_string())?;
        let link = Arc::new(PeerLink { _conn: conn, channel });
        self.links.insert(url.to_string(), link.clone());
        Ok(link)
    }

    /// Publishes one persistent message and waits for the broker's confirm. An unroutable
    /// message (no queue bound) is an error: nobody would receive it.
    pub async fn publish(
        &self,
        url: &str,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        content_type: &str,
        headers: &[(&str, String)],
    ) -> Result<(), String> {
        let link = self.link(url).await?;
        let mut table = FieldTable::default();
        for (k, v) in headers {
            table.insert((*k).into(), AMQPValue::LongString(LongString::from(v.as_str())));
        }
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(content_type.to_string().into())
            .with_headers(table);
        let outcome = crate::amqp::publish_confirmed(&link.channel, exchange, routing_key, body, props)
            .await
            .map_err(|e| e.to_string());
        if outcome.is_err() {
            self.links.remove(url);
        }
        outcome
    }
}

/// An AMQP header value as text: strings as they are, other values in their debug form.
pub fn header_text(v: &AMQPValue) -> String {
    match v {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_string(),
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        AMQPValue::Timestamp(n) => n.to_string(),
        other => format!("{other:?}"),
    }
}
