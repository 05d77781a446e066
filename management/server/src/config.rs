//! Management's settings, with their defaults.

use std::time::Duration;

use warren_service::secret::SecretKey;
use warren_transport::QueueType;
use warren_wire::package;
use warren_wire::retention::{Keep, Policy};

use crate::keys::AuthMode;

#[derive(Debug, Clone)]
pub struct Config {
    /// Largest invocation input accepted, in bytes.
    pub max_payload_bytes: usize,
    pub package_limits: package::Limits,
    /// How long a synchronous invoke waits when the caller does not say.
    pub default_sync_timeout: Duration,
    pub max_sync_timeout: Duration,
    /// Seals secret settings; without it, secret settings are refused.
    pub secret_key: Option<SecretKey>,
    /// The broker that `[source]` triggers and `amqp` outputs use when they name none (Warren's
    /// own, in the distributed mode; the nodes of a cluster separated by commas).
    pub amqp_url: Option<String>,
    /// The type of the queues source triggers declare (`warren.source.<function>`), as for
    /// Warren's own queues.
    pub queue_type: QueueType,
    /// Largest fan-in input with the results inline; past it the follow-up gets a reference.
    pub max_fanin_inline_bytes: usize,
    /// Runs the timer scheduler, source consumers, output deliveries and batch sweeper.
    pub triggers: bool,
    /// Whether and how API keys are checked (open by default: the binaries decide).
    pub auth: AuthMode,
    /// An instance whose lease is not renewed for this long has stopped: another settles the
    /// invocations and batches it left unpublished (see `lease`).
    pub instance_lease: Duration,
    /// API connections open at once; at the cap new ones wait in the kernel's backlog (see
    /// `http`).
    pub max_connections: usize,
    /// How long a client may send nothing while the server waits for it (a request head, the
    /// next request on a keep-alive connection, the rest of a body) before its connection is
    /// closed or its body read fails (see `http`).
    pub client_timeout: Duration,
    /// At a stop, how long the source consumers may take to finish the messages they hold, and
    /// then how long the records still being published may take before the lease is handed
    /// back (past either, the lease is left to lapse).
    pub stop_grace: Duration,
    /// How long an invoke's `Idempotency-Key` names its invocation: a repeat within it gets
    /// that invocation instead of a new run.
    pub idempotency_window: Duration,
    /// How long finished work is kept where a function's `[retention]` does not say (see
    /// `retention`).
    pub retention: Policy,
    /// How often the instance holding the cleanup duty runs it.
    pub cleanup_every: Duration,
    /// How long after a publish or an activation no version of the function is removed.
    pub versions_quiet: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_payload_bytes: 1 << 20,
            package_limits: package::Limits::default(),
            default_sync_timeout: Duration::from_secs(30),
            max_sync_timeout: Duration::from_secs(300),
            secret_key: None,
            amqp_url: None,
            queue_type: QueueType::Classic,
            max_fanin_inline_bytes: 16 << 20,
            triggers: true,
            auth: AuthMode::Open,
            instance_lease: Duration::from_secs(60),
            max_connections: 1024,
            client_timeout: Duration::from_secs(30),
            stop_grace: Duration::from_secs(10),
            idempotency_window: Duration::from_secs(24 * 3600),
            retention: Policy {
                succeeded: Keep::For(Duration::from_secs(7 * 86_400)),
                failed: Keep::For(Duration::from_secs(30 * 86_400)),
                versions: 10,
            },
            cleanup_every: Duration::from_secs(600),
            versions_quiet: Duration::from_secs(600),
        }
    }
}
