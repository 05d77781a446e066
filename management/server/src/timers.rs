//! Timer triggers: functions whose active version has a `[timer]` are invoked on its schedule.
//!
//! Every management instance runs [`Timers::schedule`]. Each looks at the ticks that came due since
//! its last look and fires each one through [`Store::fire_tick`], which records the tick
//! (unique per function and instant) and its invocation in one transaction: of several
//! instances, exactly one fires a tick, and a late instance still fires a tick nobody fired
//! (no tick is skipped because one instance was slow). Only the firing instance publishes.
//!
//! Missed ticks (no instance ran): `catch_up = "skip"` forgets them; `"once"` fires the latest
//! missed one when an instance starts following the function, if no tick was fired since.
//!
//! [`Store::fire_tick`]: warren_store::TriggerStore::fire_tick

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use warren_service::shutdown::pace;
use warren_store::{NewInvocation, Store};
use warren_wire::manifest::CatchUp;
use warren_wire::schedule::{rfc3339, Schedule};
use warren_wire::time::now_ms;

use crate::catalog::Catalog;
use crate::error::Error;
use crate::invoke::{first_message, Invoker};
use crate::lease::Lease;

const TICK_EVERY: Duration = Duration::from_millis(100);
/// How often the set of timer functions is read again (a publish is followed within this).
const REFRESH_EVERY: Duration = Duration::from_secs(2);
/// A tick fired later than this after its time is past due (Azure's `IsPastDue`).
const PAST_DUE_MS: i64 = 1_000;

/// At most this many ticks are fired per function per look (a schedule every second after a
/// long pause does not flood the queue).
const MAX_TICKS_PER_LOOK: usize = 100;
/// A scheduler further behind than this (the store was down) fires only the latest due tick.
const MAX_CATCH_UP_MS: i64 = 10 * 60_000;

struct Timer {
    version: i64,
    pool: String,
    schedule: Schedule,
    /// Ticks up to here are handled.
    checked_ms: i64,
}

/// A timer as listed by the API.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TimerInfo {
    pub function: String,
    pub version: i64,
    pub schedule: String,
    pub timezone: String,
    pub catch_up: CatchUp,
    pub next_tick: Option<String>,
    pub last_tick: Option<String>,
}

/// Timer triggers: listed for the API, fired by [`Timers::schedule`].
pub struct Timers {
    store: Arc<dyn Store>,
    catalog: Arc<Catalog>,
    invoker: Arc<Invoker>,
    lease: Arc<Lease>,
}

impl Timers {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        catalog: Arc<Catalog>,
        invoker: Arc<Invoker>,
        lease: Arc<Lease>,
    ) -> Timers {
        Timers { store, catalog, invoker, lease }
    }

    /// The functions with a timer, their next tick and the last one fired.
    pub async fn list(&self) -> Result<Vec<TimerInfo>, Error> {
        let mut out = Vec::new();
        for (name, version, manifest) in self.catalog.active_manifests().await? {
            let Some(t) = &manifest.timer else { continue };
            // A `%NAME%` schedule as it is in force; one whose setting is missing has no next tick.
            // Shown with its secret settings still `%NAME%`.
            let in_force = self.catalog.expand(&name, &t.schedule).await.unwrap_or_else(|_| t.schedule.clone());
            let next_tick = Schedule::parse(&in_force, t.timezone.as_deref()).ok().and_then(|s| s.next_after(now_ms()));
            let schedule = self.catalog.expand_shown(&name, &t.schedule).await.unwrap_or_else(|_| t.schedule.clone());
            out.push(TimerInfo {
                function: name.clone(),
                version,
                schedule,
                timezone: t.timezone.clone().unwrap_or_else(|| "UTC".into()),
                catch_up: t.catch_up,
                next_tick: next_tick.map(rfc3339),
                last_tick: self.store.last_tick(&name).await?.map(rfc3339),
            });
        }
        Ok(out)
    }

    async fn fire(&self, function: &str, t: &Timer, tick_ms: i64, catch_up: bool) -> Result<bool, Error> {
        let id = Uuid::now_v7();
        // Open until the tick's message is confirmed or it is recorded failed (see `lease`).
        let held = self.lease.hold()?;
        let created_ms = held.ms;
        let payload = serde_json::to_vec(&json!({
            "tick": rfc3339(tick_ms),
            "tick_ms": tick_ms,
            "schedule": t.schedule.text(),
            "catch_up": catch_up,
            "last": t.schedule.last_at_or_before(tick_ms - 1).map(rfc3339),
            "next": t.schedule.next_after(tick_ms).map(rfc3339),
            "past_due": catch_up || now_ms() - tick_ms > PAST_DUE_MS,
        }))
        .unwrap_or_default();
        let mut inv = NewInvocation { id, function: function.to_string(), version: t.version, payload, created_ms };
        if !self.store.fire_tick(function, tick_ms, &inv).await? {
            return Ok(false);
        }
        // Each tick is recorded by one instance and published once: fresh.
        let payload = std::mem::take(&mut inv.payload).into();
        let msg = first_message(&inv, payload, true);
        self.invoker.publish_recorded(&t.pool, &msg).await?;
        tracing::info!(function, tick = %rfc3339(tick_ms), invocation = %id, catch_up, "timer fired");
        Ok(true)
    }

    /// The scheduler of one management instance, until `stop`.
    pub(crate) async fn schedule(self: Arc<Self>, stop: CancellationToken) {
        let mut timers: HashMap<String, Timer> = HashMap::new();
        let mut refreshed: Option<Instant> = None;
        while pace(TICK_EVERY, &stop).await {
            if refreshed.is_none_or(|r| r.elapsed() >= REFRESH_EVERY) {
                match self.catalog.active_manifests().await {
                    Ok(all) => {
                        refreshed = Some(Instant::now());
                        // A paused function's timer is dropped: resumed, it starts from then,
                        // as a new one does (with its catch-up, if it has one).
                        let paused = self.catalog.paused().await;
                        let mut seen = HashMap::new();
                        for (name, version, manifest) in all {
                            let Some(t) = &manifest.timer else { continue };
                            if paused.contains(&name) {
                                continue;
                            }
                            // `%NAME%` in a schedule (Azure Functions apps) is a setting of the function.
                            let pattern = match self.catalog.expand(&name, &t.schedule).await {
                                Ok(p) => p,
                                // The store is out: go on as before (a timer dropped here would
                                // start over as new, missing ticks meanwhile).
                                Err(Error::Store(e)) => {
                                    tracing::debug!(function = %name, error = %e, "cannot read the timer's settings yet");
                                    if let Some(old) = timers.remove(&name) {
                                        seen.insert(name, old);
                                    }
                                    continue;
                                }
                                Err(e) => {
                                    tracing::warn!(function = %name, error = %e, "timer waits for its schedule");
                                    continue;
                                }
                            };
                            let schedule = match Schedule::parse(&pattern, t.timezone.as_deref()) {
                                Ok(s) => s,
                                Err(e) => {
                                    tracing::warn!(function = %name, error = %e, "ignoring an invalid timer");
                                    continue;
                                }
                            };
                            let catch_up = t.catch_up;
                            let timer = match timers.remove(&name) {
                                // Same version and schedule: keep where we are.
                                Some(old) if old.version == version && old.schedule.text() == schedule.text() => old,
                                // A new version: its schedule takes over from where the old one was.
                                Some(old) => {
                                    Timer { version, pool: manifest.pool.clone(), schedule, checked_ms: old.checked_ms }
                                }
                                // New here: start from now (and catch up if asked).
                                None => {
                                    let now = now_ms();
                                    let timer =
                                        Timer { version, pool: manifest.pool.clone(), schedule, checked_ms: now };
                                    if catch_up == CatchUp::Once {
                                        self.catch_up_once(&name, &timer, now).await;
                                    }
                                    if t.run_on_startup {
                                        // Once per second at most across instances: the tick's
                                        // key is the second this instance started following it.
                                        let tick = now - now.rem_euclid(1000);
                                        if let Err(e) = self.fire(&name, &timer, tick, false).await {
                                            tracing::warn!(function = %name, error = %e, "cannot fire the startup tick");
                                        }
                                    }
                                    timer
                                }
                            };
                            seen.insert(name, timer);
                        }
                        timers = seen;
                    }
                    Err(e) => tracing::debug!(error = %e, "cannot read the timer functions yet"),
                }
            }
            let now = now_ms();
            for (name, t) in timers.iter_mut() {
                let mut checked = now;
                // After a long outage, do not walk every tick since: start a bounded way back.
                let from = match t.schedule.last_at_or_before(now) {
                    Some(last) if now - t.checked_ms > MAX_CATCH_UP_MS => {
                        tracing::warn!(function = %name, "timer ticks missed during an outage are skipped");
                        t.checked_ms.max(last - 1)
                    }
                    _ => t.checked_ms,
                };
                for tick in t.schedule.ticks_between(from, now, MAX_TICKS_PER_LOOK) {
                    if let Err(e) = self.fire(name, t, tick, false).await {
                        // Look at this tick again next time (it may fire late, never twice).
                        tracing::warn!(function = %name, error = %e, "cannot fire a timer tick yet");
                        checked = tick - 1;
                        break;
                    }
                }
                t.checked_ms = checked;
            }
        }
    }

    async fn catch_up_once(&self, name: &str, t: &Timer, now: i64) {
        let last = match self.store.last_tick(name).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(function = %name, error = %e, "cannot read the last tick; no catch-up");
                return;
            }
        };
        let Some(last) = last else { return };
        let Some(missed) = t.schedule.last_at_or_before(now) else { return };
        if missed > last {
            if let Err(e) = self.fire(name, t, missed, true).await {
                tracing::warn!(function = %name, error = %e, "cannot fire the catch-up tick");
            }
        }
    }
}
