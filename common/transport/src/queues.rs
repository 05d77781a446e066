//! How Warren's durable queues are kept on RabbitMQ: classic (on one node) or quorum
//! (replicated with Raft across a cluster), and the declare arguments of each.
//!
//! Every role must declare a queue with the same arguments, or the broker refuses the second
//! declaration (`406 PRECONDITION_FAILED, inequivalent arg`). The type is therefore one setting
//! for the whole deployment (`--queue-type`), and a queue found with the other type is reported
//! as [`TransportError::QueueType`] with the way out.
//!
//! Quorum queues need RabbitMQ 3.10 or later: per-message TTL (the retry buckets) and
//! at-least-once dead-lettering (expired retries back to their pool) arrived there. With
//! `x-dead-letter-strategy = at-least-once` a message leaves its queue only once the queue it
//! is dead-lettered to has confirmed it, which RabbitMQ allows only with
//! `x-overflow = reject-publish`.

use std::fmt;
use std::str::FromStr;

use lapin::types::{AMQPValue, FieldTable, LongString};

use crate::error::TransportError;

/// The kind of RabbitMQ queue Warren declares for pools, retries, dead letters and sources.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum QueueType {
    /// One node holds each queue: lost with that node's disk.
    #[default]
    Classic,
    /// Replicated to every node of the cluster; a publish is confirmed once a majority has it.
    Quorum,
}

impl QueueType {
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
        }
    }

    /// The declare arguments of a queue of this type; `dead_letter` is where the broker sends
    /// what leaves it by expiry or rejection (exchange and routing key).
    pub fn arguments(self, dead_letter: Option<(&str, &str)>) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), long(self.as_str()));
        if let Some((exchange, key)) = dead_letter {
            args.insert("x-dead-letter-exchange".into(), long(exchange));
            args.insert("x-dead-letter-routing-key".into(), long(key));
            if self == QueueType::Quorum {
                args.insert("x-dead-letter-strategy".into(), long("at-least-once"));
                args.insert("x-overflow".into(), long("reject-publish"));
            }
        }
        args
    }
}

impl fmt::Display for QueueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for QueueType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "classic" => Ok(QueueType::Classic),
            "quorum" => Ok(QueueType::Quorum),
            other => Err(format!("queue type {other:?}: use classic or quorum")),
        }
    }
}

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

/// The broker's refusal of a declaration when `queue` exists with another type, in words that
/// say what to do; `None` for any other error.
pub(crate) fn type_mismatch(queue: &str, wanted: QueueType, e: &lapin::Error) -> Option<TransportError> {
    let lapin::ErrorKind::ProtocolError(amqp) = e.kind() else { return None };
    let message = amqp.get_message().as_str();
    // The broker names the first argument that differs, not always x-queue-type (a quorum
    // queue's dead-letter strategy may come first): any difference in a queue Warren declared
    // means it was declared with another type.
    if amqp.get_id() != 406 || !message.contains("inequivalent arg") {
        return None;
    }
    Some(TransportError::QueueType(format!(
        "queue {queue} already exists on the broker with other arguments than a {wanted} queue \
         of Warren's ({message}). Every Warren role must run with the same --queue-type as the \
         queues it finds; to move to another type, see \"Changing the queue type\" in Warren's \
         README"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorum_queues_that_dead_letter_do_it_at_least_once() {
        let args = QueueType::Quorum.arguments(Some(("x", "k")));
        let get = |k: &str| args.inner().get(k).cloned();
        assert_eq!(get("x-queue-type"), Some(long("quorum")));
        assert_eq!(get("x-dead-letter-strategy"), Some(long("at-least-once")));
        assert_eq!(get("x-overflow"), Some(long("reject-publish")));
        let args = QueueType::Classic.arguments(Some(("x", "k")));
        assert_eq!(args.inner().get("x-dead-letter-strategy"), None);
        assert_eq!(args.inner().get("x-queue-type"), Some(&long("classic")));
        assert_eq!(QueueType::Quorum.arguments(None).inner().len(), 1);
    }

    #[test]
    fn the_type_parses_from_its_name() {
        assert_eq!("Quorum".parse::<QueueType>(), Ok(QueueType::Quorum));
        assert_eq!("classic".parse::<QueueType>(), Ok(QueueType::Classic));
        assert!("stream".parse::<QueueType>().unwrap_err().contains("classic or quorum"));
    }
}
