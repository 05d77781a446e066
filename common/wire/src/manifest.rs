//! A function's manifest, `function.toml`, at the root of its package.
//!
//! ```toml
//! name = "resize"            # letters, digits, '-' and '_'
//! runtime = "process"        # "process" (a command per invocation) or "echo" (built in)
//! command = ["python3", "main.py"]   # process only; run in the unpacked package folder
//! timeout_secs = 30          # past this the whole process tree is killed: timed_out
//! pool = "default"           # the queue (worker pool) it runs on
//! auth = "function"          # "anonymous" (no key), "function" (its key or an admin key), "admin"
//!
//! mode = "per_invocation"    # or "persistent": warm handlers (framed protocol on stdin/stdout)
//!
//! [handler]                  # persistent mode only
//! processes = 2              # warm handler processes per version on each worker
//! concurrency = 1            # invocations given to one handler at once
//! recycle_after = 10000      # invocations before a handler is replaced
//! cancel_grace_secs = 5      # a cancelled call not ended by then: the handler is killed
//!
//! [timer]                    # optional: invoke on a schedule (see crate::schedule)
//! schedule = "0 */5 * * * *" # six fields with seconds, or the usual five
//! timezone = "Europe/Paris"  # IANA name; UTC when absent
//! catch_up = "skip"          # ticks missed while no management ran: "skip" or "once"
//!
//! [source]                   # optional: each message of another system's queue is an invocation
//! url = "amqp://user:pass@host:5672/%2f"   # absent: Warren's own broker
//! queue = "orders"           # consume this queue, or:
//! exchange = "events"        # bind Warren's queue warren.source.<name> to this exchange
//! routing_key = "order.#"
//! prefetch = 64
//!
//! [[outputs]]                # optional, any number: forward results
//! kind = "http"              # "http" (POST) or "amqp" (publish)
//! url = "http://crm.local/hook"    # http: endpoint; amqp: broker (absent: Warren's own)
//! headers = { X-Api-Key = "..." }  # http only
//! exchange = "results"       # amqp only ("" = default exchange)
//! routing_key = "done"       # amqp only
//! when = "success"           # "always", "success", "failure"
//! pointer = "/status"        # optional predicate on the JSON result: this pointer exists...
//! equals = "ok"              # ...and (optionally) equals this JSON value
//! max_attempts = 8           # delivery attempts before it is recorded failed
//!
//! [retry]                    # optional; without it a failure is final at once
//! max_attempts = 5           # attempts in all, the first included
//! initial_delay_ms = 1000    # delay before the second attempt
//! max_delay_ms = 60000       # the delay doubles per attempt up to this
//! jitter = 0.2               # each delay is shortened by a random 0..20 %
//!
//! [retention]                # optional: management's defaults where absent (see crate::retention)
//! succeeded = "7d"           # succeeded invocations, counted from their end
//! failed = "30d"             # failed, dead and cancelled ones
//! versions = 10              # the newest version numbers kept (0: all); older ones go unless in use
//! ```

use serde::{Deserialize, Serialize};

pub const MANIFEST_FILE: &str = "function.toml";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// One OS process per invocation: input on stdin, result on stdout, log lines on stderr.
    Process,
    /// Built in: the result is the input. Measures the mesh itself.
    Echo,
    /// A function of an Azure Functions app: its custom handler (`command`) runs as a warm web
    /// server and is called as the Azure Functions host calls it (see `[azure]`). Written by
    /// [`crate::azure`] when an app is published, not by hand.
    Azure,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    pub runtime: Runtime,
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    #[serde(default = "default_pool")]
    pub pool: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub retry: RetryPolicy,
    /// `per_invocation` (default): a process per invocation. `persistent`: warm handler
    /// processes speaking the framed handler protocol (see README, "Warm handlers").
    #[serde(default)]
    pub mode: Mode,
    #[serde(default)]
    pub handler: HandlerConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timer: Option<TimerTrigger>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<AmqpSource>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<Output>,
    /// Who may invoke the function and read its invocations (see [`AuthLevel`]).
    #[serde(default)]
    pub auth: AuthLevel,
    /// `runtime = "azure"` only: how the function is bound in its Azure Functions app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure: Option<AzureFunction>,
    /// How long its finished work is kept (management's defaults where absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<crate::retention::Retention>,
    /// At most this many of its invocations run at once, across all workers; the others wait
    /// (in the broker) for a turn. Unlimited where absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
}

/// `[azure]`: one function of an Azure Functions app, as its `function.json` binds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AzureFunction {
    /// The trigger binding's name: the key of the trigger's data in the handler's `Data`.
    pub trigger: String,
    pub trigger_type: AzureTrigger,
    /// The `http` output binding's name (`res`, or `$return` for the handler's `ReturnValue`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_output: Option<String>,
    /// `enableForwardingHttpRequest`: the HTTP request goes to the handler as it came, and its
    /// answer goes back as it is.
    #[serde(default)]
    pub forward: bool,
    /// HTTP trigger: the route template under `/api/` (the function's name when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// HTTP trigger: the methods it answers, lower case (all when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// The handler's working folder, relative to the app's root (the root when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_directory: Option<String>,
}

/// The triggers of Azure Functions apps that Warren serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AzureTrigger {
    Http,
    Timer,
    RabbitMq,
}

impl AzureTrigger {
    /// The binding type as `function.json` names it.
    pub fn binding(self) -> &'static str {
        match self {
            AzureTrigger::Http => "httpTrigger",
            AzureTrigger::Timer => "timerTrigger",
            AzureTrigger::RabbitMq => "rabbitMQTrigger",
        }
    }
}

impl AzureFunction {
    /// The path under `/api/` the function answers at.
    pub fn route_or<'a>(&'a self, name: &'a str) -> &'a str {
        self.route.as_deref().unwrap_or(name).trim_matches('/')
    }

    /// Whether the HTTP trigger answers this method.
    pub fn allows(&self, method: &str) -> bool {
        self.methods.is_empty() || self.methods.iter().any(|m| m.eq_ignore_ascii_case(method))
    }
}

/// `[timer]`: invoke the function on a cron schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimerTrigger {
    pub schedule: String,
    #[serde(default)]
    pub timezone: Option<String>,
    #[serde(default)]
    pub catch_up: CatchUp,
    /// Fire once when a management instance starts following the timer (at its start, or when
    /// the function is first published while it runs).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub run_on_startup: bool,
}

/// What to do with ticks that passed while no management instance ran.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    /// Forget them.
    #[default]
    Skip,
    /// Run once for the latest missed tick.
    Once,
}

/// `[source]`: messages of another system's AMQP queue (or exchange) become invocations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSource {
    /// The broker; Warren's own when absent.
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub queue: Option<String>,
    #[serde(default)]
    pub exchange: Option<String>,
    #[serde(default)]
    pub routing_key: String,
    #[serde(default = "default_source_prefetch")]
    pub prefetch: u16,
    /// The name of a function setting holding the broker's URL (instead of `url`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_setting: Option<String>,
}

fn default_source_prefetch() -> u16 {
    64
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputKind {
    Http,
    Amqp,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum When {
    #[default]
    Always,
    Success,
    Failure,
}

/// `[[outputs]]`: where a result is forwarded, and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Output {
    pub kind: OutputKind,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub exchange: Option<String>,
    #[serde(default)]
    pub routing_key: String,
    #[serde(default)]
    pub when: When,
    #[serde(default)]
    pub pointer: Option<String>,
    #[serde(default)]
    pub equals: Option<toml::Value>,
    #[serde(default = "default_delivery_attempts")]
    pub max_attempts: u32,
    /// amqp only: the name of a function setting holding the broker's URL (instead of `url`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_setting: Option<String>,
    /// A JSON pointer into the result: send only that part (a string as its text, anything
    /// else as JSON) instead of the whole result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

fn default_delivery_attempts() -> u32 {
    8
}

impl Output {
    /// Whether an outcome with this status and result is forwarded here.
    pub fn applies(&self, succeeded: bool, result: Option<&[u8]>) -> bool {
        let when = match self.when {
            When::Always => true,
            When::Success => succeeded,
            When::Failure => !succeeded,
        };
        if !when {
            return false;
        }
        let Some(pointer) = &self.pointer else { return true };
        let Some(value) = result.and_then(|r| serde_json::from_slice::<serde_json::Value>(r).ok()) else {
            return false;
        };
        match (value.pointer(pointer), &self.equals) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(found), Some(expected)) => serde_json::to_value(expected).map(|e| &e == found).unwrap_or(false),
        }
    }

    /// A short description for listings: `http http://…` or `amqp exchange/key`.
    pub fn target(&self) -> String {
        match self.kind {
            OutputKind::Http => format!("http {}", self.url.as_deref().unwrap_or("")),
            OutputKind::Amqp => {
                format!("amqp {}/{}", self.exchange.as_deref().unwrap_or(""), self.routing_key)
            }
        }
    }
}

/// A function's authorization level, like Azure Functions' levels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthLevel {
    /// Anyone may invoke it and read its invocations, with no key.
    Anonymous,
    /// A key for this function, or an admin key (the default).
    #[default]
    Function,
    /// An admin key only.
    Admin,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    PerInvocation,
    Persistent,
}

/// Warm handler settings (`mode = "persistent"` only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HandlerConfig {
    /// Warm handler processes per function version on one worker.
    pub processes: u32,
    /// Invocations one handler process is given at once.
    pub concurrency: u32,
    /// Invocations after which a handler is replaced by a fresh one.
    pub recycle_after: u64,
    /// Seconds a new handler has to say it is ready.
    pub start_timeout_secs: u64,
    /// Seconds a cancelled invocation's call has to end (the handler is told with a `cancel`
    /// frame if it takes them) before the handler is killed with its process tree.
    pub cancel_grace_secs: u64,
}

impl Default for HandlerConfig {
    fn default() -> Self {
        HandlerConfig {
            processes: 2,
            concurrency: 1,
            recycle_after: 10_000,
            start_timeout_secs: 30,
            cancel_grace_secs: 5,
        }
    }
}

/// How failed attempts are retried. The delay is held by the broker (a TTL queue that
/// dead-letters back into the pool's queue), never by a sleeping consumer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial_delay_ms: u64,
    pub max_delay_ms: u64,
    pub multiplier: f64,
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { max_attempts: 1, initial_delay_ms: 1000, max_delay_ms: 60_000, multiplier: 2.0, jitter: 0.2 }
    }
}

impl RetryPolicy {
    /// Whether a retry policy is in force (more than one attempt).
    pub fn retries(&self) -> bool {
        self.max_attempts > 1
    }

    /// The delay before attempt `failed + 1`, given a uniform random `r` in [0, 1).
    pub fn delay_ms(&self, failed: u32, r: f64) -> u64 {
        let exp = self.multiplier.powi(failed.saturating_sub(1).min(60) as i32);
        let base = (self.initial_delay_ms as f64 * exp).min(self.max_delay_ms as f64);
        (base * (1.0 - self.jitter * r)).max(1.0) as u64
    }
}

fn default_timeout() -> u64 {
    300
}
pub fn default_pool() -> String {
    "default".to_string()
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{MANIFEST_FILE} is not valid TOML for a Warren function: {0}")]
    Parse(String),
    #[error("{MANIFEST_FILE}: {0}")]
    Invalid(String),
}

/// Whether a text holds a `%NAME%` reference to a setting, resolved where it is used.
pub fn has_setting_reference(text: &str) -> bool {
    let mut parts = text.split('%');
    parts.next();
    parts.next().is_some_and(|name| !name.is_empty()) && text.matches('%').count() >= 2
}

/// Names of functions and pools: what can go in a URL path and a queue name unescaped.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl Manifest {
    /// What starts the function, in a few words for listings: `http GET /api/products/{id}`,
    /// `timer 0 */5 * * * *`, `queue orders`, `exchange events/order.#`, or `invoke` (the API
    /// only).
    pub fn trigger(&self) -> String {
        if let Some(az) = self.azure.as_ref().filter(|a| a.trigger_type == AzureTrigger::Http) {
            let methods = if az.methods.is_empty() {
                "ANY".to_string()
            } else {
                az.methods.iter().map(|m| m.to_ascii_uppercase()).collect::<Vec<_>>().join(",")
            };
            return format!("http {methods} /api/{}", az.route_or(&self.name));
        }
        if let Some(t) = &self.timer {
            return format!("timer {}", t.schedule);
        }
        if let Some(src) = &self.source {
            return match (&src.queue, &src.exchange) {
                (Some(q), _) => format!("queue {q}"),
                (None, Some(x)) => format!("exchange {x}/{}", src.routing_key),
                (None, None) => "queue".to_string(),
            };
        }
        "invoke".to_string()
    }

    pub fn parse(text: &str) -> Result<Self, ManifestError> {
        let m: Manifest = toml::from_str(text).map_err(|e| ManifestError::Parse(e.to_string()))?;
        m.validate()?;
        Ok(m)
    }

    pub fn validate(&self) -> Result<(), ManifestError> {
        let bad = |msg: String| Err(ManifestError::Invalid(msg));
        if !valid_name(&self.name) {
            return bad(format!("name {:?} must be 1-64 letters, digits, '-' or '_'", self.name));
        }
        if !valid_name(&self.pool) {
            return bad(format!("pool {:?} must be 1-64 letters, digits, '-' or '_'", self.pool));
        }
        if self.timeout_secs == 0 || self.timeout_secs > 24 * 3600 {
            return bad(format!("timeout_secs = {} must be between 1 and 86400", self.timeout_secs));
        }
        let h = &self.handler;
        if !(1..=64).contains(&h.processes) || !(1..=1000).contains(&h.concurrency) || h.recycle_after == 0 {
            return bad("handler.processes must be 1-64, handler.concurrency 1-1000, handler.recycle_after > 0".into());
        }
        if h.cancel_grace_secs > 300 {
            return bad(format!("handler.cancel_grace_secs = {} must be at most 300", h.cancel_grace_secs));
        }
        if let Some(n) = self.max_concurrency.filter(|n| !(1..=1000).contains(n)) {
            return bad(format!("max_concurrency = {n} must be between 1 and 1000 (leave it out for no limit)"));
        }
        let r = &self.retry;
        if r.max_attempts == 0 || r.max_attempts > 100 {
            return bad(format!("retry.max_attempts = {} must be between 1 and 100", r.max_attempts));
        }
        if r.initial_delay_ms == 0 || r.max_delay_ms < r.initial_delay_ms || r.max_delay_ms > 24 * 3600 * 1000 {
            return bad("retry delays must satisfy 0 < initial_delay_ms <= max_delay_ms <= 86400000".into());
        }
        if !(1.0..=10.0).contains(&r.multiplier) || !(0.0..=1.0).contains(&r.jitter) {
            return bad("retry.multiplier must be in [1, 10] and retry.jitter in [0, 1]".into());
        }
        if let Some(t) = self.timer.as_ref().filter(|t| !has_setting_reference(&t.schedule)) {
            crate::schedule::Schedule::parse(&t.schedule, t.timezone.as_deref())
                .map_err(|e| ManifestError::Invalid(format!("timer: {e}")))?;
        }
        if let Some(src) = &self.source {
            if src.queue.is_some() == src.exchange.is_some() {
                return bad("source needs exactly one of queue = \"NAME\" or exchange = \"NAME\"".into());
            }
            if src.prefetch == 0 {
                return bad("source.prefetch must be at least 1".into());
            }
        }
        for (i, o) in self.outputs.iter().enumerate() {
            let n = i + 1;
            match o.kind {
                OutputKind::Http => match o.url.as_deref().map(url::Url::parse) {
                    Some(Ok(u)) if u.scheme() == "http" || u.scheme() == "https" => {}
                    _ => return bad(format!("outputs[{n}]: kind = \"http\" needs url = \"http(s)://...\"")),
                },
                OutputKind::Amqp => {
                    if o.exchange.is_none() {
                        return bad(format!(
                            "outputs[{n}]: kind = \"amqp\" needs exchange = \"NAME\" (\"\" for the default exchange)"
                        ));
                    }
                }
            }
            let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
            for (k, v) in &o.headers {
                if k.is_empty() || !k.chars().all(token) || v.chars().any(|c| c == '\r' || c == '\n' || c == '\0') {
                    return bad(format!("outputs[{n}]: header {k:?} is not a valid HTTP header name and value"));
                }
            }
            if let Some(p) = &o.pointer {
                if !p.is_empty() && !p.starts_with('/') {
                    return bad(format!("outputs[{n}]: pointer {p:?} must be a JSON pointer such as \"/status\""));
                }
            }
            if o.body.as_deref().is_some_and(|b| !b.is_empty() && !b.starts_with('/')) {
                return bad(format!("outputs[{n}]: body must be a JSON pointer such as \"/Outputs/message\""));
            }
            if o.equals.is_some() && o.pointer.is_none() {
                return bad(format!("outputs[{n}]: equals needs a pointer"));
            }
            if o.max_attempts == 0 || o.max_attempts > 100 {
                return bad(format!("outputs[{n}]: max_attempts must be 1-100"));
            }
        }
        match self.runtime {
            Runtime::Process if self.command.is_empty() || self.command[0].is_empty() => {
                bad("runtime \"process\" needs command = [\"program\", \"arg\", ...]".into())
            }
            Runtime::Echo if !self.command.is_empty() => {
                bad("runtime \"echo\" is built in and takes no command".into())
            }
            Runtime::Echo if self.mode == Mode::Persistent => {
                bad("mode = \"persistent\" needs runtime = \"process\"".into())
            }
            Runtime::Azure if self.command.is_empty() || self.command[0].is_empty() || self.azure.is_none() => {
                bad("runtime \"azure\" needs the handler's command and an [azure] section (publish the app's folder)"
                    .into())
            }
            _ if self.runtime != Runtime::Azure && self.azure.is_some() => {
                bad("[azure] belongs to runtime \"azure\" only".into())
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_with_defaults() {
        let m = Manifest::parse("name = \"a\"\nruntime = \"process\"\ncommand = [\"sh\", \"run.sh\"]\n").unwrap();
        assert_eq!(m.pool, "default");
        assert_eq!(m.timeout_secs, 300);
    }

    #[test]
    fn a_warm_handler_has_a_bounded_cancel_grace() {
        let warm = "name = \"a\"\nruntime = \"process\"\ncommand = [\"sh\"]\nmode = \"persistent\"\n[handler]\n";
        assert_eq!(Manifest::parse(warm).unwrap().handler.cancel_grace_secs, 5);
        assert_eq!(Manifest::parse(&format!("{warm}cancel_grace_secs = 0\n")).unwrap().handler.cancel_grace_secs, 0);
        let e = Manifest::parse(&format!("{warm}cancel_grace_secs = 301\n")).unwrap_err();
        assert!(e.to_string().contains("cancel_grace_secs = 301 must be at most 300"), "{e}");
    }

    #[test]
    fn retry_delays_grow_cap_and_jitter() {
        let m = Manifest::parse(
            "name = \"a\"\nruntime = \"echo\"\n[retry]\nmax_attempts = 6\ninitial_delay_ms = 100\nmax_delay_ms = 500\n",
        )
        .unwrap();
        let r = &m.retry;
        assert!(r.retries());
        assert_eq!([1, 2, 3, 4].map(|n| r.delay_ms(n, 0.0)), [100, 200, 400, 500]);
        assert_eq!(r.delay_ms(1, 0.999_999), 80, "20 % jitter at most");
        assert!(!Manifest::parse("name = \"a\"\nruntime = \"echo\"\n").unwrap().retry.retries());
        let e = Manifest::parse("name = \"a\"\nruntime = \"echo\"\n[retry]\nmax_attempts = 0\n").unwrap_err();
        assert!(e.to_string().contains("max_attempts"), "{e}");
    }

    #[test]
    fn the_trigger_examples_parse() {
        for text in [
            include_str!("../../../examples/triggers/forward-orders/function.toml"),
            include_str!("../../../examples/triggers/render-invoice/function.toml"),
            include_str!("../../../examples/triggers/invoice-report/function.toml"),
        ] {
            Manifest::parse(text).unwrap();
        }
        let m = Manifest::parse(include_str!("../../../examples/triggers/forward-orders/function.toml")).unwrap();
        assert_eq!(m.outputs.len(), 2);
        let crm = &m.outputs[0];
        assert!(crm.applies(true, Some(br#"{"status": "accepted"}"#)));
        assert!(!crm.applies(true, Some(br#"{"status": "rejected"}"#)));
        assert!(!crm.applies(false, Some(br#"{"status": "accepted"}"#)), "success only");
        assert!(!crm.applies(true, Some(b"not json")));
        assert!(m.outputs[1].applies(false, None), "the audit output takes everything");
    }

    #[test]
    fn trigger_sections_are_checked() {
        let base = "name = \"a\"\nruntime = \"echo\"\n";
        let e = Manifest::parse(&format!("{base}[timer]\nschedule = \"61 * * * *\"\n")).unwrap_err();
        assert!(e.to_string().contains("timer"), "{e}");
        let e = Manifest::parse(&format!("{base}[source]\nqueue = \"q\"\nexchange = \"x\"\n")).unwrap_err();
        assert!(e.to_string().contains("exactly one"), "{e}");
        let e = Manifest::parse(&format!("{base}[[outputs]]\nkind = \"http\"\n")).unwrap_err();
        assert!(e.to_string().contains("needs url"), "{e}");
        let e = Manifest::parse(&format!("{base}[[outputs]]\nkind = \"amqp\"\nexchange = \"x\"\nequals = 1\n"))
            .unwrap_err();
        assert!(e.to_string().contains("equals needs a pointer"), "{e}");
        assert!(Manifest::parse(&format!(
            "{base}[timer]\nschedule = \"0 0 2 * * *\"\ntimezone = \"Europe/Paris\"\ncatch_up = \"once\"\n"
        ))
        .is_ok());
    }

    #[test]
    fn explains_what_is_wrong() {
        let e = Manifest::parse("name = \"a b\"\nruntime = \"echo\"\n").unwrap_err();
        assert!(e.to_string().contains("letters, digits"), "{e}");
        let e = Manifest::parse("name = \"a\"\nruntime = \"process\"\n").unwrap_err();
        assert!(e.to_string().contains("needs command"), "{e}");
        let e = Manifest::parse("name = \"a\"\nruntime = \"cobol\"\n").unwrap_err();
        assert!(matches!(e, ManifestError::Parse(_)), "{e}");
    }
}
