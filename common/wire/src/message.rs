//! The wire format of the invocation queue.
//!
//! Messages are MessagePack (rmp-serde, named fields) and carry a protocol version `v`.
//! A worker refuses a message whose `v` is newer than [`PROTOCOL_VERSION`] instead of guessing.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The protocol version this build writes and the newest it reads.
pub const PROTOCOL_VERSION: u16 = 1;

/// One invocation of one function version, as published to a pool's queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvocationMessage {
    /// Protocol version; see [`PROTOCOL_VERSION`].
    pub v: u16,
    /// The invocation id (a UUIDv7: time-ordered).
    pub id: Uuid,
    pub function: String,
    pub version: i64,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// The function's input, as bytes end to end.
    #[serde(with = "serde_bytes_compat")]
    pub payload: Bytes,
    /// Where to send a completion notice (a management instance's notice queue), if anyone waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<String>,
    /// Publish time, ms since epoch.
    pub created_ms: i64,
    /// Headers of the message that triggered it (AMQP source trigger), given to the function.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<(String, String)>,
    /// Set by management on the one message it publishes for a new invocation (HTTP, source
    /// and timer invocations; not batch items, fan-ins, replays, retries or scheduled ones; a
    /// cancel reaches workers as a notice, `worker::cancels`). A first delivery of such a message (not marked redelivered by the broker)
    /// cannot have an outcome stored yet, so a worker runs it without claiming it in the store
    /// first; its outcome is then stored by the same guarded update as any other. Absent (an
    /// older sender) means `false`: claim first.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fresh: bool,
    /// Management did not record this invocation before publishing it (a synchronous invoke:
    /// nobody can ask for it before its answer). The worker stores it with its outcome, in one
    /// write (or records it `running` when it claims it or marks a long run).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unrecorded: bool,
    /// A scheduled invocation's time (ms since epoch): a worker that gets it earlier sends it on
    /// its next hop (`topology::schedule_hop`) instead of running it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before_ms: Option<i64>,
}

/// A notice sent to the waiting management instance once an outcome is stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionNotice {
    pub v: u16,
    pub id: Uuid,
    /// The outcome the sender stored, when it is final and small enough
    /// ([`NOTICE_OUTCOME_MAX_BYTES`]): the waiter answers with it instead of reading the store.
    /// Absent (an older sender, a redelivery acked without running, a large result) means: read
    /// the store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<NoticeOutcome>,
}

/// Results and log lines above this size are not sent in a [`CompletionNotice`].
pub const NOTICE_OUTCOME_MAX_BYTES: usize = 64 << 10;

/// A final outcome exactly as it was stored (the invocation's row and its log lines).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NoticeOutcome {
    pub status: crate::invocation::Status,
    pub attempt: i32,
    pub version: i64,
    #[serde(default, with = "serde_bytes")]
    pub result: Option<Vec<u8>>,
    pub error: Option<String>,
    pub worker: String,
    pub started_ms: Option<i64>,
    pub finished_ms: i64,
    /// This attempt's log lines.
    pub logs: Vec<crate::invocation::LogLine>,
}

impl NoticeOutcome {
    /// Roughly what it weighs in a notice.
    pub fn size(&self) -> usize {
        self.result.as_ref().map_or(0, Vec::len)
            + self.error.as_ref().map_or(0, String::len)
            + self.logs.iter().map(|l| l.line.len() + 16).sum::<usize>()
    }
}

/// Why a queue message could not be taken as an invocation.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("message is not a valid Warren invocation (MessagePack): {0}")]
    Malformed(String),
    #[error("message has protocol version {found}, newer than this worker's {supported}: upgrade the worker")]
    NewerVersion { found: u16, supported: u16 },
    #[error("message has protocol version 0, which no Warren writes")]
    ZeroVersion,
}

/// Only the version field, read first so that a newer layout is reported as such.
#[derive(Deserialize)]
struct VersionProbe {
    v: u16,
}

impl InvocationMessage {
    pub fn encode(&self) -> Vec<u8> {
        // Serialising a struct of plain fields into a Vec cannot fail.
        rmp_serde::to_vec_named(self).expect("invocation message serialises")
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let probe: VersionProbe = rmp_serde::from_slice(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))?;
        if probe.v > PROTOCOL_VERSION {
            return Err(DecodeError::NewerVersion { found: probe.v, supported: PROTOCOL_VERSION });
        }
        if probe.v == 0 {
            return Err(DecodeError::ZeroVersion);
        }
        rmp_serde::from_slice(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))
    }
}

impl CompletionNotice {
    pub fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec_named(self).expect("notice serialises")
    }
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        rmp_serde::from_slice(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))
    }
}

/// `Bytes` as a MessagePack bin field (not an array of integers).
mod serde_bytes_compat {
    use bytes::Bytes;
    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(b: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        serde_bytes::serialize(b.as_ref(), s)
    }
    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        let v: serde_bytes::ByteBuf = serde_bytes::deserialize(d)?;
        Ok(Bytes::from(v.into_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notice_carries_its_outcome_and_an_older_one_reads_without() {
        let id = Uuid::now_v7();
        let outcome = NoticeOutcome {
            status: crate::invocation::Status::Succeeded,
            attempt: 1,
            version: 2,
            result: Some(b"\x00\xffok".to_vec()),
            error: None,
            worker: "w".into(),
            started_ms: Some(5),
            finished_ms: 7,
            logs: vec![crate::invocation::LogLine { attempt: 1, seq: 0, ts_ms: 6, line: "hi".into() }],
        };
        let n = CompletionNotice { v: PROTOCOL_VERSION, id, outcome: Some(outcome) };
        assert_eq!(CompletionNotice::decode(&n.encode()).unwrap(), n);
        // What a sender without the field writes.
        #[derive(Serialize)]
        struct Old {
            v: u16,
            id: Uuid,
        }
        let old = rmp_serde::to_vec_named(&Old { v: PROTOCOL_VERSION, id }).unwrap();
        assert_eq!(
            CompletionNotice::decode(&old).unwrap(),
            CompletionNotice { v: PROTOCOL_VERSION, id, outcome: None }
        );
    }

    fn sample() -> InvocationMessage {
        InvocationMessage {
            v: PROTOCOL_VERSION,
            id: Uuid::now_v7(),
            function: "echo".into(),
            version: 3,
            attempt: 1,
            payload: Bytes::from_static(b"\x00\xffhello"),
            notify: Some("warren.notice.abc".into()),
            created_ms: 1,
            headers: Vec::new(),
            fresh: true,
            unrecorded: false,
            not_before_ms: None,
        }
    }

    #[test]
    fn round_trips() {
        let m = sample();
        assert_eq!(InvocationMessage::decode(&m.encode()).unwrap(), m);
    }

    #[test]
    fn refuses_newer_version_by_name() {
        let mut m = sample();
        m.v = PROTOCOL_VERSION + 1;
        match InvocationMessage::decode(&m.encode()) {
            Err(DecodeError::NewerVersion { found, .. }) => assert_eq!(found, PROTOCOL_VERSION + 1),
            other => panic!("expected NewerVersion, got {other:?}"),
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// Arbitrary bytes never panic the decoder.
        #[test]
        fn decoder_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = InvocationMessage::decode(&bytes);
            let _ = CompletionNotice::decode(&bytes);
        }

        /// A valid message with bytes flipped, cut or appended either decodes or is refused;
        /// never a panic, and a clean decode keeps the version rule.
        #[test]
        fn decoder_survives_mutations(
            flips in proptest::collection::vec((proptest::prelude::any::<usize>(), proptest::prelude::any::<u8>()), 0..8),
            cut in proptest::prelude::any::<usize>(),
            tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..16),
        ) {
            let mut bytes = sample().encode();
            for (at, b) in flips {
                let n = bytes.len();
                bytes[at % n] ^= b;
            }
            bytes.truncate(cut % (bytes.len() + 1));
            bytes.extend(tail);
            if let Ok(m) = InvocationMessage::decode(&bytes) {
                proptest::prop_assert!(m.v >= 1 && m.v <= PROTOCOL_VERSION);
            }
        }
    }

    #[test]
    fn refuses_garbage_and_truncation_without_panicking() {
        let bytes = sample().encode();
        for cut in 0..bytes.len() {
            assert!(InvocationMessage::decode(&bytes[..cut]).is_err(), "prefix {cut} decoded");
        }
        assert!(InvocationMessage::decode(b"\xc1\xc1garbage").is_err());
    }
}
