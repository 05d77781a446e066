//! The AMQP transport: RabbitMQ through lapin.
//!
//! One connection; one confirm-mode channel shared by all publishers (lapin serialises frames,
//! confirms are matched per message); one channel per consumer, with `basic.qos` set to its
//! prefetch. Messages are persistent and queues durable.

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

use super::{Acker, Consumer, Delivery, QueueStats, Result, Transport, TransportError};
use crate::topology;

fn unavailable(e: lapin::Error) -> TransportError {
    TransportError::Unavailable(e.to_string())
}

pub struct AmqpTransport {
    conn: Connection,
    publisher: Channel,
}

impl AmqpTransport {
    /// Connects and declares the shared exchanges. `url` is an AMQP URI such as
    /// `amqp://guest:guest@127.0.0.1:5672/%2f`.
    pub async fn connect(url: &str, name: &str) -> Result<Self> {
        let props = ConnectionProperties::default().with_connection_name(name.into());
        let conn = Connection::connect(url, props)
            .await
            .map_err(|e| TransportError::Unavailable(format!("cannot connect to RabbitMQ at {}: {e}", redact(url))))?;
        let publisher = conn.create_channel().await.map_err(unavailable)?;
        publisher.confirm_select(ConfirmSelectOptions::default()).await.map_err(unavailable)?;
        let t = AmqpTransport { conn, publisher };
        t.declare_shared().await?;
        Ok(t)
    }

    async fn declare_shared(&self) -> Result<()> {
        let ch = &self.publisher;
        let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
        ch.exchange_declare(topology::INVOKE_EXCHANGE.into(), ExchangeKind::Direct, durable, FieldTable::default())
            .await
            .map_err(unavailable)?;
        ch.exchange_declare(topology::DEAD_EXCHANGE.into(), ExchangeKind::Fanout, durable, FieldTable::default())
            .await
            .map_err(unavailable)?;
        ch.queue_declare(topology::DEAD_QUEUE.into(), QueueDeclareOptions::durable(), FieldTable::default())
            .await
            .map_err(unavailable)?;
        ch.queue_bind(
            topology::DEAD_QUEUE.into(),
            topology::DEAD_EXCHANGE.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn publish_confirmed(&self, exchange: &str, key: &str, body: &[u8], props: BasicProperties) -> Result<()> {
        let confirm = self
            .publisher
            .basic_publish(
                exchange.into(),
                key.into(),
                BasicPublishOptions { mandatory: true, immediate: false },
                body,
                props,
            )
            .await
            .map_err(unavailable)?
            .await
            .map_err(unavailable)?;
        if !confirm.is_ack() {
            return Err(TransportError::NotConfirmed);
        }
        if confirm.take_message().is_some() {
            return Err(TransportError::Other(format!(
                "the broker returned the message: no queue is bound to {exchange:?} with key {key:?}"
            )));
        }
        Ok(())
    }

    /// The raw connection, for tests and benchmarks that need to reach under the interface.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }
}

/// Hides the password of a URL in error messages.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2).with_content_type("application/msgpack".into())
}

struct AmqpConsumer {
    inner: lapin::Consumer,
    // Kept so the channel lives as long as the consumer.
    _channel: Channel,
    no_ack: bool,
}

#[async_trait]
impl Consumer for AmqpConsumer {
    async fn next(&mut self) -> Option<Result<Delivery>> {
        let d = self.inner.next().await?;
        Some(match d {
            Ok(d) => Ok(Delivery {
                body: Bytes::from(d.data),
                redelivered: d.redelivered,
                acker: if self.no_ack { Acker::None } else { Acker::Amqp(d.acker) },
            }),
            Err(e) => Err(unavailable(e)),
        })
    }
}

#[async_trait]
impl Transport for AmqpTransport {
    async fn declare_pool(&self, pool: &str) -> Result<()> {
        let queue = topology::pool_queue(pool);
        let mut args = FieldTable::default();
        args.insert("x-dead-letter-exchange".into(), AMQPValue::LongString(LongString::from(topology::DEAD_EXCHANGE)));
        self.publisher
            .queue_declare(queue.as_str().into(), QueueDeclareOptions::durable(), args)
            .await
            .map_err(unavailable)?;
        self.publisher
            .queue_bind(
                queue.as_str().into(),
                topology::INVOKE_EXCHANGE.into(),
                pool.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn publish(&self, pool: &str, body: Bytes) -> Result<()> {
        self.publish_confirmed(topology::INVOKE_EXCHANGE, pool, &body, persistent()).await
    }

    async fn dead_letter(&self, body: Bytes, reason: &str) -> Result<()> {
        let mut headers = FieldTable::default();
        headers.insert(topology::REASON_HEADER.into(), AMQPValue::LongString(LongString::from(reason)));
        self.publish_confirmed(topology::DEAD_EXCHANGE, "", &body, persistent().with_headers(headers)).await
    }

    async fn consume(&self, pool: &str, prefetch: u16) -> Result<Box<dyn Consumer>> {
        let channel = self.conn.create_channel().await.map_err(unavailable)?;
        channel.basic_qos(prefetch.max(1), BasicQosOptions::default()).await.map_err(unavailable)?;
        let inner = channel
            .basic_consume(
                topology::pool_queue(pool).as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(unavailable)?;
        Ok(Box::new(AmqpConsumer { inner, _channel: channel, no_ack: false }))
    }

    async fn open_notices(&self, instance: &str) -> Result<Box<dyn Consumer>> {
        let channel = self.conn.create_channel().await.map_err(unavailable)?;
        let queue = topology::notice_queue(instance);
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .map_err(unavailable)?;
        let inner = channel
            .basic_consume(
                queue.as_str().into(),
                "".into(),
                BasicConsumeOptions { no_ack: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .map_err(unavailable)?;
        Ok(Box::new(AmqpConsumer { inner, _channel: channel, no_ack: true }))
    }

    async fn notify(&self, notice_queue: &str, body: Bytes) -> Result<()> {
        // Not mandatory and not awaited: the waiter may be gone, and a lost notice only
        // delays it until its deadline.
        self.publisher
            .basic_publish(
                "".into(),
                notice_queue.into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default(),
            )
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn queue_stats(&self, pool: &str) -> Result<QueueStats> {
        // A passive declare of a missing queue closes its channel, so use a throwaway one.
        let channel = self.conn.create_channel().await.map_err(unavailable)?;
        let q = channel
            .queue_declare(
                topology::pool_queue(pool).as_str().into(),
                QueueDeclareOptions { passive: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .map_err(unavailable)?;
        let _ = channel.close(200, "done".into()).await;
        Ok(QueueStats { messages: q.message_count() as u64, consumers: q.consumer_count() })
    }
}
