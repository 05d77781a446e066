//! What the store keeps and answers: functions and versions, invocations and their attempts,
//! batches, deliveries, workers, keys and settings, and the errors of a store call.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use uuid::Uuid;
pub use warren_wire::invocation::{LogLine, Status};
use warren_wire::manifest::Manifest;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the database is unreachable or failed: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Conflict(String),
    #[error(
        "unsupported store URL {0:?}: use sqlite://PATH, postgres://USER@HOST/DB or mssql://USER:PASSWORD@HOST:PORT/DB"
    )]
    BadUrl(String),
    #[error("the database holds a value Warren cannot read: {0}")]
    Corrupt(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

impl StoreError {
    /// The same error again, kind and inner text (StoreError is not `Clone`): for answering
    /// every caller of a failed group commit.
    pub fn again(&self) -> StoreError {
        match self {
            StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
            StoreError::Conflict(m) => StoreError::Conflict(m.clone()),
            StoreError::Corrupt(m) => StoreError::Corrupt(m.clone()),
            StoreError::BadUrl(m) => StoreError::BadUrl(m.clone()),
        }
    }
}

/// An immutable published version of a function.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FunctionVersion {
    pub name: String,
    pub version: i64,
    pub sha256: String,
    /// The `function.toml` text as published.
    pub manifest: String,
    pub size: i64,
    pub created_ms: i64,
}

impl FunctionVersion {
    pub fn parsed_manifest(&self) -> Result<Manifest> {
        Manifest::parse(&self.manifest).map_err(|e| StoreError::Corrupt(e.to_string()))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FunctionInfo {
    pub name: String,
    pub active_version: i64,
    pub created_ms: i64,
    pub updated_ms: i64,
    /// Paused since then: its invocations are held, none starts (see [`Hold`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused_ms: Option<i64>,
    /// When a pause ends by itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resume_at_ms: Option<i64>,
}

/// What management records before publishing an invocation.
#[derive(Debug, Clone)]
pub struct NewInvocation {
    pub id: Uuid,
    pub function: String,
    pub version: i64,
    pub payload: Vec<u8>,
    pub created_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Invocation {
    pub id: Uuid,
    pub function: String,
    pub version: i64,
    pub status: Status,
    pub attempts: i32,
    pub payload: Vec<u8>,
    pub result: Option<Vec<u8>>,
    pub error: Option<String>,
    pub worker: Option<String>,
    pub created_ms: i64,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    /// When a scheduled invocation is to run (it is `queued` meanwhile).
    pub run_at_ms: Option<i64>,
}

/// The final outcome of one attempt, stored with its log lines in one transaction.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub status: Status,
    pub attempt: i32,
    pub result: Option<Vec<u8>>,
    pub error: Option<String>,
    pub worker: String,
    /// When the attempt started, if it ran; recorded with the outcome (a worker that ran the
    /// invocation without claiming it first has not recorded it yet).
    pub started_ms: Option<i64>,
    /// The function version that ran, if it ran (a replay may run a newer version than the
    /// first attempt did).
    pub version: Option<i64>,
    pub finished_ms: i64,
    pub logs: Vec<LogLine>,
    /// Outputs this outcome is to be forwarded to (stored `pending` with a final outcome, in
    /// the same transaction, so a forward is never lost between the two).
    pub deliveries: Vec<NewDelivery>,
    /// Set when the invocation may have no record yet (management does not record a
    /// synchronous invoke before publishing it): the record is made from this, with the
    /// outcome, if it is missing. An existing record is treated as always.
    pub record: Option<Arc<NewInvocation>>,
}

impl Outcome {
    /// An outcome recorded without a run (not queued, refused, a failed replay): no result,
    /// no worker, no log lines, no forwards.
    pub fn unrun(status: Status, attempt: i32, error: String) -> Self {
        Outcome {
            status,
            attempt,
            result: None,
            error: Some(error),
            worker: String::new(),
            started_ms: None,
            version: None,
            finished_ms: warren_wire::time::now_ms(),
            logs: Vec::new(),
            deliveries: Vec::new(),
            record: None,
        }
    }
}

/// A forward of an invocation's result to one of its function's `[[outputs]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDelivery {
    /// Index into the manifest's outputs.
    pub output: i32,
    /// What it is, for listings (`http http://…`).
    pub target: String,
}

/// Where a forward of a result is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Due at its `next_ms` (or leased until then by an instance delivering it).
    Pending,
    Delivered,
    /// Given up after its attempts; can be made pending again.
    Failed,
}

/// A delivery as recorded.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeliveryRecord {
    pub invocation: Uuid,
    pub output: i32,
    pub target: String,
    pub status: DeliveryStatus,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub next_ms: i64,
    pub updated_ms: i64,
}

/// A batch as submitted.
#[derive(Debug, Clone)]
pub struct NewBatch {
    pub id: Uuid,
    pub function: String,
    pub version: i64,
    /// The fan-in function, invoked once when every item is final.
    pub then: Option<String>,
    pub created_ms: i64,
}

/// Where a batch is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchState {
    /// Its items are still arriving.
    Submitting,
    /// Every item is recorded; some may still run.
    Running,
    /// Every item is final and its fan-in is being started (by one instance).
    Finishing,
    Done,
    /// Its queued items were cancelled; it ends once the running ones have.
    Cancelled,
}

/// A batch and where its items are.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Batch {
    pub id: Uuid,
    pub function: String,
    pub version: i64,
    pub then: Option<String>,
    pub total: i64,
    pub state: BatchState,
    pub followup_invocation: Option<Uuid>,
    /// Why submission stopped early, if it did.
    pub error: Option<String>,
    pub created_ms: i64,
    pub finished_ms: Option<i64>,
    /// Items per status (every status present, zeros included).
    pub counts: std::collections::BTreeMap<String, i64>,
}

/// One item's outcome, for a fan-in.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ItemResult {
    pub id: Uuid,
    pub status: Status,
    pub result: Option<Vec<u8>>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkerInfo {
    pub id: String,
    pub host: String,
    /// Comma-separated pool names.
    pub pools: String,
    pub concurrency: i32,
    pub in_flight: i32,
    pub version: String,
    pub started_ms: i64,
    pub last_seen_ms: i64,
    pub state: WorkerState,
}

/// What a worker said of itself in its last heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    Running,
    /// Stopping: it takes no new work and finishes what it holds.
    Draining,
    /// Stopped.
    Gone,
}

/// The words a state is stored as, and back.
macro_rules! stored_as {
    ($ty:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $ty {
            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $text),+
                }
            }

            pub fn parse(s: &str) -> Option<$ty> {
                match s {
                    $($text => Some($ty::$variant),)+
                    _ => None,
                }
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

stored_as!(BatchState {
    Submitting => "submitting",
    Running => "running",
    Finishing => "finishing",
    Done => "done",
    Cancelled => "cancelled",
});
stored_as!(DeliveryStatus { Pending => "pending", Delivered => "delivered", Failed => "failed" });
stored_as!(WorkerState { Running => "running", Draining => "draining", Gone => "gone" });
stored_as!(KeyLevel { Admin => "admin", Function => "function" });

/// What a worker learns when it claims an invocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Not final yet: run it.
    Run,
    /// Already has its final record (a redelivery): ack without running.
    AlreadyFinal(Status),
    /// A later attempt is scheduled already (this message is a stale copy): ack without running.
    Superseded,
}

/// One attempt of an invocation, as recorded when it ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AttemptRecord {
    pub attempt: i32,
    pub status: Status,
    pub error: Option<String>,
    pub worker: String,
    pub finished_ms: i64,
}

/// A function's setting, given to its processes as an environment variable. Secret values are
/// stored sealed (see [`crate::secret`]); `value` is then the sealed text.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Setting {
    pub name: String,
    pub value: String,
    pub secret: bool,
    pub updated_ms: i64,
}

/// How many invocations created in one minute have one status now (the overview's chart).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MinuteCount {
    /// The start of the minute, in ms since the epoch (a multiple of 60,000).
    pub minute_ms: i64,
    pub status: Status,
    pub count: i64,
}

/// What an API key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyLevel {
    /// Everything.
    Admin,
    /// Invoke one function and read its invocations.
    Function,
}

/// An API key as stored: never the key itself, only the hex sha256 of it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ApiKey {
    pub id: Uuid,
    pub name: String,
    pub level: KeyLevel,
    /// The function a `function` key is bound to.
    pub function: Option<String>,
    /// Hex sha256 of the key. Not serialised: no answer ever carries it.
    #[serde(skip)]
    pub hash: String,
    pub created_ms: i64,
    pub revoked_ms: Option<i64>,
}

/// The errors recorded by [`Store::settle_lapsed`] and [`Store::abandon_unfinished`].
#[derive(Debug, Clone)]
pub struct Settled {
    /// On each invocation settled failed.
    pub invocation: String,
    /// On each batch whose submission it ends.
    pub batch: String,
}

/// Which invocations to list, newest first.
#[derive(Debug, Clone, Default)]
pub struct InvocationFilter {
    pub function: Option<String>,
    pub status: Option<Status>,
    pub limit: u32,
}

/// What a claim that changed nothing means, from the invocation's current state.
pub(crate) fn claim_verdict(status: Status, recorded_attempts: i32, attempt: i32) -> Claim {
    if status.is_final() {
        Claim::AlreadyFinal(status)
    } else if recorded_attempts > attempt {
        Claim::Superseded
    } else {
        // Lost a race with another claim of the same attempt: running it again is the
        // at-least-once side of the contract, and only one outcome will be kept.
        Claim::Run
    }
}

/// What one purge call removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Purged {
    pub invocations: u64,
    pub log_lines: u64,
    pub batches: u64,
}

impl Purged {
    pub fn is_empty(&self) -> bool {
        *self == Purged::default()
    }
}

impl std::ops::AddAssign for Purged {
    fn add_assign(&mut self, o: Purged) {
        self.invocations += o.invocations;
        self.log_lines += o.log_lines;
        self.batches += o.batches;
    }
}

/// A duty that one management instance does at a time (see [`crate::RetentionStore::take_duty`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Duty {
    /// The instance that holds (or last held) it.
    pub holder: String,
    /// When its lease runs out, by the store's clock.
    pub until_ms: i64,
    /// What the holder last reported of it (JSON text), and when (its own clock).
    pub report: Option<String>,
    pub report_ms: Option<i64>,
}

/// A function whose invocations are held, or may still be: paused, or resumed at `since_ms`
/// with its held invocations not all moved back to its pool yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hold {
    pub function: String,
    /// `Some` while paused (since then).
    pub paused_ms: Option<i64>,
    pub resume_at_ms: Option<i64>,
    /// The pause's time while paused, the resume's once resumed: a drain that finds the held
    /// queue empty ends the hold only if nothing changed since ([`crate::FunctionStore::drained`]).
    pub since_ms: i64,
}
