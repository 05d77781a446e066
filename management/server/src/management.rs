//! One management instance, made of its parts; [`Management::start`] starts its background
//! loops and [`Management::stop`] ends them all.
//!
//! Every task management spawns (the loops, an async invoke's record and publish, a batch
//! submission, a source consumer) is spawned on one [`TaskTracker`] and watches one
//! [`CancellationToken`]: a stop cancels the token and waits for the tracker to be empty.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;
use warren_store::Store;
use warren_transport::peer::Peers;
use warren_transport::Transport;

use crate::batch::Batches;
use crate::catalog::Catalog;
use crate::config::Config;
use crate::holds::Holds;
use crate::invoke::Invoker;
use crate::keys::Keys;
use crate::lease::Lease;
use crate::metrics::Metrics;
use crate::notices::{self, Waiters};
use crate::outputs::Outputs;
use crate::retention::Cleaner;
use crate::routes::Routes;
use crate::sources::Sources;
use crate::timers::Timers;

pub struct Management {
    pub store: Arc<dyn Store>,
    pub transport: Arc<dyn Transport>,
    pub config: Config,
    pub metrics: Arc<Metrics>,
    /// Functions, their versions and settings.
    pub catalog: Arc<Catalog>,
    /// Invoking, publishing, dead letters.
    pub invoker: Arc<Invoker>,
    /// API keys found valid, cached.
    pub keys: Keys,
    /// This instance's lease.
    pub lease: Arc<Lease>,
    pub batches: Arc<Batches>,
    pub timers: Arc<Timers>,
    /// Retention's cleanup (run by one instance at a time).
    pub cleaner: Arc<Cleaner>,
    /// The routes of Azure Functions apps' HTTP triggers.
    pub(crate) routes: Routes,
    /// Cancelled at a stop (or when this is dropped): every loop ends, every task stops taking
    /// new work.
    stop: CancellationToken,
    /// Every task management spawned; a stop waits for all of them.
    tasks: TaskTracker,
}

impl Management {
    /// Creates the management instance, writes its lease, and starts its loops: the lease, the
    /// completion-notice listener, and (with `config.triggers`) timers, batches, sources and
    /// outputs.
    pub async fn start(
        store: Arc<dyn Store>,
        transport: Arc<dyn Transport>,
        config: Config,
    ) -> anyhow::Result<Arc<Self>> {
        let instance = Uuid::now_v7().simple().to_string();
        let notice_consumer = transport.open_notices(&instance).await?;
        store.set_origin(&instance);
        let (stop, tasks) = (CancellationToken::new(), TaskTracker::new());
        let metrics = Arc::new(Metrics::default());
        let lease = Arc::new(Lease::new(store.clone(), instance.clone(), config.instance_lease, config.stop_grace));
        let catalog = Arc::new(Catalog::new(store.clone(), config.package_limits, config.secret_key.clone()));
        let waiters = Arc::new(Waiters::default());
        let invoker = Arc::new(Invoker::new(
            store.clone(),
            transport.clone(),
            catalog.clone(),
            lease.clone(),
            metrics.clone(),
            waiters.clone(),
            &config,
            tasks.clone(),
        ));
        let batches = Arc::new(Batches::new(
            store.clone(),
            catalog.clone(),
            invoker.clone(),
            lease.clone(),
            &config,
            tasks.clone(),
        ));
        let timers = Arc::new(Timers::new(store.clone(), catalog.clone(), invoker.clone(), lease.clone()));
        let cleaner = Arc::new(Cleaner::new(
            store.clone(),
            instance.clone(),
            config.retention,
            config.cleanup_every,
            config.idempotency_window,
            config.versions_quiet,
            metrics.clone(),
        ));
        // The lease exists before the first record is made (if the store answers now; else
        // the loop writes it as soon as it does).
        if let Err(e) = lease.renew().await {
            tracing::warn!(error = %e, "cannot write this instance's lease yet");
        }
        // The lease is handed back once the source consumers are done with what they hold.
        let sources_idle = Arc::new(AtomicBool::new(!config.triggers));
        tasks.spawn(lease.clone().keep(stop.clone(), sources_idle.clone()));
        tasks.spawn(notices::listen(
            waiters,
            transport.clone(),
            metrics.clone(),
            instance.clone(),
            notice_consumer,
            stop.clone(),
        ));
        tasks.spawn(invoker.clone().sweep_keys(stop.clone()));
        if config.triggers {
            tasks.spawn(batches.clone().sweep(stop.clone()));
            tasks.spawn(timers.clone().schedule(stop.clone()));
            tasks.spawn(cleaner.clone().run(stop.clone()));
            let holds = Holds::new(store.clone(), transport.clone(), catalog.clone(), instance.clone());
            tasks.spawn(Arc::new(holds).run(stop.clone()));
            let outputs = Outputs::new(store.clone(), catalog.clone(), Peers::default(), &config);
            tasks.spawn(outputs.deliver(stop.clone()));
            let sources =
                Sources::new(store.clone(), catalog.clone(), invoker.clone(), lease.clone(), &config, tasks.clone());
            tasks.spawn(sources.supervise(stop.clone(), sources_idle));
        }
        let keys = Keys::new(store.clone(), metrics.clone());
        Ok(Arc::new(Management {
            store,
            transport,
            config,
            metrics,
            catalog,
            invoker,
            keys,
            lease,
            batches,
            timers,
            cleaner,
            routes: Routes::default(),
            stop,
            tasks,
        }))
    }

    /// Stops this instance, once its API is closed: the loops end, the source consumers finish
    /// the messages they hold (so none is acked unrecorded, and none recorded but left unacked
    /// to come again as a second invocation), and the lease is handed back once every record
    /// made here is settled. Waits for every task management spawned, up to twice the stop
    /// grace period and a little more (then the lease lapses and another instance settles it).
    pub async fn stop(&self) {
        self.stop.cancel();
        self.tasks.close();
        let limit = self.config.stop_grace * 2 + Duration::from_secs(5);
        if tokio::time::timeout(limit, self.tasks.wait()).await.is_err() {
            tracing::warn!(
                tasks = self.tasks.len(),
                "management's tasks still busy after the grace period; stopping anyway"
            );
        }
    }
}

impl Drop for Management {
    fn drop(&mut self) {
        // Dropped without a stop (a test's router): the loops end all the same.
        self.stop.cancel();
    }
}
