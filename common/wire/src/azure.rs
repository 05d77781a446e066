//! Azure Functions apps that use a custom handler, turned into Warren functions.
//!
//! An app is a folder with `host.json` at its root and a folder per function holding its
//! `function.json`, as `func` creates it. [`convert`] reads those files and writes one
//! [`Manifest`] per function (`runtime = "azure"`), all sharing the app's package: the handler
//! in `host.json`'s `customHandler.description` is the command, and each function's bindings
//! map onto Warren's triggers and outputs:
//!
//! | binding | becomes |
//! |---|---|
//! | `httpTrigger` | a route under `/api/` served by management (`[azure]` route, methods), `authLevel` as `auth` |
//! | `http` (out) | the HTTP answer, from `Outputs.<name>` or `ReturnValue` (`$return`) |
//! | `timerTrigger` | `[timer]` (NCRONTAB with seconds, UTC; `useMonitor` → catch up once) |
//! | `rabbitMQTrigger` | `[source]` on the queue, the broker from `connectionStringSetting` |
//! | `rabbitMQ` (out) | an amqp `[[outputs]]` sending `Outputs.<name>` to the queue |
//!
//! Everything else is refused, naming the function and the binding: nothing is ignored
//! silently. `%NAME%` in a queue name or a schedule stays in the manifest and is resolved
//! from the function's settings where it is used.

use serde_json::Value;

use crate::manifest::{
    valid_name, AmqpSource, AuthLevel, AzureFunction, AzureTrigger, CatchUp, HandlerConfig, Manifest, Mode, Output,
    OutputKind, RetryPolicy, Runtime, TimerTrigger, When,
};

pub const HOST_FILE: &str = "host.json";
pub const FUNCTION_FILE: &str = "function.json";
pub const LOCAL_SETTINGS_FILE: &str = "local.settings.json";

/// The Azure Functions host's default `functionTimeout` for custom handlers, in seconds.
const DEFAULT_TIMEOUT_SECS: u64 = 300;
/// How long a handler has to open its port, at most (less when the function's timeout is
/// shorter).
const MAX_START_SECS: u64 = 30;

/// What an app turned into: a manifest (and its text) per function, and what the publisher
/// should be told.
#[derive(Debug, Clone)]
pub struct App {
    pub functions: Vec<(Manifest, String)>,
    pub notes: Vec<String>,
}

/// Turns an app's `host.json` and its functions' `function.json` (folder name, text) into
/// Warren manifests, or every reason it cannot run here.
/// The functions run on `pool` (Warren's default pool when `None`).
pub fn convert(
    host_json: &str,
    functions: &[(String, String)],
    has_local_settings: bool,
    pool: Option<&str>,
) -> Result<App, Vec<String>> {
    let mut refusals = Vec::new();
    let mut notes = Vec::new();
    let host: Value = match parse_json(host_json) {
        Ok(v) => v,
        Err(e) => return Err(vec![format!("{HOST_FILE} is not valid JSON: {e}")]),
    };
    let handler = host.pointer("/customHandler/description");
    let executable = handler.and_then(|d| d.get("defaultExecutablePath")).and_then(Value::as_str).unwrap_or("");
    if executable.is_empty() {
        refusals.push(format!(
            "{HOST_FILE} has no customHandler.description.defaultExecutablePath: Warren runs Azure Functions apps through \
             custom handlers only (in-process and language-worker apps are not supported)"
        ));
    }
    let mut command = vec![executable.to_string()];
    if let Some(args) = handler.and_then(|d| d.get("arguments")) {
        match args.as_array() {
            Some(a) => {
                command.extend(a.iter().map(|v| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())))
            }
            None => refusals.push(format!("{HOST_FILE}: customHandler.description.arguments must be an array")),
        }
    }
    let working_directory = handler
        .and_then(|d| d.get("workingDirectory"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    if working_directory.as_deref().is_some_and(|w| w.contains("..") || w.starts_with('/') || w.contains('\\')) {
        refusals
            .push(format!("{HOST_FILE}: customHandler.description.workingDirectory must be a folder inside the app"));
    }
    let forward_all = host.pointer("/customHandler/enableForwardingHttpRequest").and_then(Value::as_bool) == Some(true);
    let timeout_secs = match host.get("functionTimeout").and_then(Value::as_str) {
        None => DEFAULT_TIMEOUT_SECS,
        Some("-1") => 24 * 3600,
        Some(t) => match timespan_secs(t) {
            Some(s) if s > 0 => s.min(24 * 3600),
            _ => {
                refusals.push(format!("{HOST_FILE}: functionTimeout {t:?} is not a duration such as \"00:05:00\""));
                DEFAULT_TIMEOUT_SECS
            }
        },
    };
    if let Some(prefix) = host.pointer("/extensions/http/routePrefix").and_then(Value::as_str) {
        if prefix != "api" {
            refusals.push(format!(
                "{HOST_FILE}: extensions.http.routePrefix {prefix:?} is not supported: Warren serves HTTP functions under /api/"
            ));
        }
    }
    if has_local_settings {
        // `warren publish DIR` leaves it out; a package made elsewhere must too: it holds a
        // developer's connection strings, which would be stored and unpacked on every worker.
        refusals.push(format!(
            "the package holds {LOCAL_SETTINGS_FILE}, a developer's file (often with secrets) that is not published: \
             take it out of the package (`warren publish DIR` leaves it out) and give its values with \
             `warren settings set FUNCTION NAME VALUE` (--secret for connection strings)"
        ));
    }
    if functions.is_empty() {
        refusals.push(format!("the app has no function: each function is a folder holding {FUNCTION_FILE}"));
    }
    let pool = pool.map(str::to_string).unwrap_or_else(crate::manifest::default_pool);
    let base = Base { command, working_directory, forward_all, timeout_secs, pool };
    let mut out = Vec::new();
    for (name, text) in functions {
        match function(&base, name, text) {
            Ok(Some(m)) => match toml::to_string(&m) {
                Ok(t) => out.push((
                    m,
                    format!("# Written by Warren from the Azure Functions app's {HOST_FILE} and {name}/{FUNCTION_FILE}.\n\n{t}"),
                )),
                Err(e) => refusals.push(format!("{name}: cannot write its manifest: {e}")),
            },
            Ok(None) => notes.push(format!("{name} is disabled in its {FUNCTION_FILE}: not published")),
            Err(mut e) => refusals.append(&mut e),
        }
    }
    if !refusals.is_empty() {
        return Err(refusals);
    }
    if out.is_empty() {
        return Err(vec!["every function of the app is disabled: nothing to publish".into()]);
    }
    Ok(App { functions: out, notes })
}

/// The first path segments under `/api/` that are Warren's own API (management's `api::ROUTES`;
/// a test there keeps the two lists in step): an app route there would never be reached.
pub const RESERVED_ROUTES: &[&str] = &[
    "functions",
    "invocations",
    "workers",
    "dead-letters",
    "keys",
    "stats",
    "retention",
    "batches",
    "timers",
    "openapi.json",
];

/// A segment of a route template that Warren's matcher does not take: a parameter inside a
/// literal (`{id}.json`) or with a constraint other than `int`.
fn unsupported_segment(route: &str) -> Option<&str> {
    route.split('/').find(|seg| {
        let param = seg.starts_with('{') && seg.ends_with('}');
        if !param {
            return seg.contains('{') || seg.contains('}');
        }
        let inner = seg[1..seg.len() - 1].trim_start_matches('*').trim_end_matches('?');
        inner.contains('{') || inner.split_once(':').is_some_and(|(_, c)| !c.eq_ignore_ascii_case("int"))
    })
}

/// What every function of an app shares.
struct Base {
    command: Vec<String>,
    working_directory: Option<String>,
    forward_all: bool,
    timeout_secs: u64,
    pool: String,
}

/// JSON as Azure's tools write it: comments are tolerated by stripping `//` lines.
fn parse_json(text: &str) -> Result<Value, serde_json::Error> {
    let text = text.trim_start_matches('\u{feff}');
    serde_json::from_str(text).or_else(|e| {
        let stripped: String =
            text.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n");
        serde_json::from_str(&stripped).map_err(|_| e)
    })
}

/// A .NET TimeSpan as Azure writes it: `hh:mm:ss` or `d.hh:mm:ss`, seconds possibly fractional.
pub fn timespan_secs(text: &str) -> Option<u64> {
    let (days, rest) = match text.split_once('.') {
        Some((d, r)) if r.contains(':') && !d.contains(':') => (d.parse::<u64>().ok()?, r),
        _ => (0, text),
    };
    let parts: Vec<&str> = rest.split(':').collect();
    let [h, m, s] = parts.as_slice() else { return None };
    let secs: f64 = s.parse().ok().filter(|s: &f64| s.is_finite() && *s >= 0.0 && *s < 1e12)?;
    days.checked_mul(86400)?
        .checked_add(h.parse::<u64>().ok()?.checked_mul(3600)?)?
        .checked_add(m.parse::<u64>().ok()?.checked_mul(60)?)?
        .checked_add(secs.ceil() as u64)
}

fn text_of<'a>(b: &'a Value, key: &str) -> Option<&'a str> {
    b.get(key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// One function: its manifest, `None` when disabled, or why it cannot run here.
fn function(base: &Base, name: &str, text: &str) -> Result<Option<Manifest>, Vec<String>> {
    let json: Value = parse_json(text).map_err(|e| vec![format!("{name}/{FUNCTION_FILE} is not valid JSON: {e}")])?;
    if !valid_name(name) {
        return Err(vec![format!("function folder {name:?}: a name must be 1-64 letters, digits, '-' or '_'")]);
    }
    if json.get("disabled").and_then(Value::as_bool) == Some(true) {
        return Ok(None);
    }
    let Some(bindings) = json.get("bindings").and_then(Value::as_array) else {
        return Err(vec![format!("{name}/{FUNCTION_FILE} has no \"bindings\" array")]);
    };
    let mut refusals = Vec::new();
    let mut trigger: Option<(&Value, AzureTrigger)> = None;
    let mut http_out: Option<String> = None;
    let mut outputs = Vec::new();
    for b in bindings {
        let kind = text_of(b, "type").unwrap_or("");
        let bname = text_of(b, "name").unwrap_or("");
        let direction = text_of(b, "direction").unwrap_or("").to_ascii_lowercase();
        let what = format!("{name}: binding {bname:?} of type {kind:?}");
        if bname.is_empty() {
            refusals.push(format!("{name}: a binding of type {kind:?} has no name"));
            continue;
        }
        let trig = match kind.to_ascii_lowercase().as_str() {
            "httptrigger" => Some(AzureTrigger::Http),
            "timertrigger" => Some(AzureTrigger::Timer),
            "rabbitmqtrigger" => Some(AzureTrigger::RabbitMq),
            "http" if direction == "out" => {
                http_out = Some(bname.to_string());
                None
            }
            "rabbitmq" if direction == "out" => {
                match amqp_output(b, bname) {
                    Ok(o) => outputs.push(o),
                    Err(e) => refusals.push(format!("{what}: {e}")),
                }
                None
            }
            "http" | "rabbitmq" => {
                refusals.push(format!("{what}: only \"direction\": \"out\" is supported for it"));
                None
            }
            _ => {
                refusals.push(format!(
                    "{what} is not supported on Warren (Azure-hosted services have no on-premises counterpart here); \
                     supported: httpTrigger, http, timerTrigger, rabbitMQTrigger, rabbitMQ"
                ));
                None
            }
        };
        if let Some(t) = trig {
            if trigger.is_some() {
                refusals.push(format!("{name}: a function has exactly one trigger; {bname:?} is a second one"));
            }
            trigger = Some((b, t));
        }
    }
    let Some((tb, ttype)) = trigger else {
        if refusals.is_empty() {
            refusals.push(format!("{name}: no trigger binding (httpTrigger, timerTrigger or rabbitMQTrigger)"));
        }
        return Err(refusals);
    };
    if http_out.is_some() && ttype != AzureTrigger::Http {
        refusals.push(format!("{name}: an http output binding needs an httpTrigger"));
    }
    let mut m = Manifest {
        name: name.to_string(),
        runtime: Runtime::Azure,
        command: base.command.clone(),
        timeout_secs: base.timeout_secs,
        pool: base.pool.clone(),
        description: format!("Azure Functions app function ({} trigger, custom handler)", ttype.binding()),
        retry: RetryPolicy::default(),
        mode: Mode::Persistent,
        handler: HandlerConfig {
            processes: 1,
            concurrency: 16,
            recycle_after: 1_000_000_000,
            start_timeout_secs: base.timeout_secs.min(MAX_START_SECS),
            cancel_grace_secs: HandlerConfig::default().cancel_grace_secs,
        },
        timer: None,
        source: None,
        outputs,
        auth: AuthLevel::Function,
        azure: None,
        retention: None,
        max_concurrency: None,
    };
    let mut az = AzureFunction {
        trigger: text_of(tb, "name").unwrap_or("").to_string(),
        trigger_type: ttype,
        http_output: http_out.clone(),
        forward: false,
        route: None,
        methods: Vec::new(),
        working_directory: base.working_directory.clone(),
    };
    match ttype {
        AzureTrigger::Http => {
            m.auth = match text_of(tb, "authLevel").map(str::to_ascii_lowercase).as_deref() {
                None | Some("function") => AuthLevel::Function,
                Some("anonymous") => AuthLevel::Anonymous,
                Some("admin") | Some("system") => AuthLevel::Admin,
                Some(other) => {
                    refusals.push(format!("{name}: authLevel {other:?} is not anonymous, function or admin"));
                    AuthLevel::Function
                }
            };
            az.route = text_of(tb, "route").map(|r| r.trim_matches('/').to_string()).filter(|r| !r.is_empty());
            let first = az.route_or(name).split('/').next().unwrap_or("").to_ascii_lowercase();
            if RESERVED_ROUTES.contains(&first.as_str()) {
                refusals.push(format!(
                    "{name}: its route /api/{} is Warren's own API (/api/{first}/...); give it a route = \"...\" \
                     that starts otherwise",
                    az.route_or(name)
                ));
            }
            if let Some(bad) = unsupported_segment(az.route_or(name)) {
                refusals.push(format!(
                    "{name}: route segment {bad:?} is not supported (whole-segment parameters {{id}}, {{id:int}}, {{id?}} \
                     and {{*rest}} are)"
                ));
            }
            if let Some(ms) = tb.get("methods").and_then(Value::as_array) {
                az.methods = ms.iter().filter_map(Value::as_str).map(str::to_ascii_lowercase).collect();
            }
            // As the Azure Functions host does: forwarding only for a function bound to
            // nothing but its request and its answer.
            az.forward = base.forward_all && bindings.len() == 2 && http_out.is_some();
        }
        AzureTrigger::Timer => {
            let schedule = text_of(tb, "schedule").unwrap_or("");
            if schedule.is_empty() {
                refusals.push(format!("{name}: timerTrigger needs a schedule"));
            } else if !schedule.contains('%') && timespan_secs(schedule).is_some() {
                refusals.push(format!(
                    "{name}: schedule {schedule:?} is a TimeSpan; Warren takes NCRONTAB schedules such as \"0 */5 * * * *\""
                ));
            }
            m.timer = Some(TimerTrigger {
                schedule: schedule.to_string(),
                timezone: None,
                catch_up: if tb.get("useMonitor").and_then(Value::as_bool) == Some(false) {
                    CatchUp::Skip
                } else {
                    CatchUp::Once
                },
                run_on_startup: tb.get("runOnStartup").and_then(Value::as_bool) == Some(true),
            });
        }
        AzureTrigger::RabbitMq => {
            if ["hostName", "userName", "password", "port"].iter().any(|k| tb.get(k).is_some()) {
                refusals.push(format!(
                    "{name}: rabbitMQTrigger: name the broker with connectionStringSetting (hostName, userName, password \
                     and port are not supported)"
                ));
            }
            match text_of(tb, "queueName") {
                Some(q) => {
                    m.source = Some(AmqpSource {
                        url: None,
                        queue: Some(q.to_string()),
                        exchange: None,
                        routing_key: String::new(),
                        prefetch: 64,
                        url_setting: text_of(tb, "connectionStringSetting").map(str::to_string),
                    })
                }
                None => refusals.push(format!("{name}: rabbitMQTrigger needs a queueName")),
            }
        }
    }
    if let Some(r) = json.get("retry") {
        match retry_policy(r) {
            Ok(p) => m.retry = p,
            Err(e) => refusals.push(format!("{name}: retry: {e}")),
        }
    }
    m.azure = Some(az);
    if let Err(e) = m.validate() {
        refusals.push(format!("{name}: {e}"));
    }
    if refusals.is_empty() {
        Ok(Some(m))
    } else {
        Err(refusals)
    }
}

/// A `rabbitMQ` output binding: an amqp output of the value the handler sets under its name.
fn amqp_output(b: &Value, name: &str) -> Result<Output, String> {
    let queue = text_of(b, "queueName").ok_or("needs a queueName")?;
    if ["hostName", "userName", "password", "port"].iter().any(|k| b.get(k).is_some()) {
        return Err(
            "name the broker with connectionStringSetting (hostName, userName, password and port are not supported)"
                .into(),
        );
    }
    let pointer =
        if name == "$return" { "/ReturnValue".to_string() } else { format!("/Outputs/{}", pointer_token(name)) };
    Ok(Output {
        kind: OutputKind::Amqp,
        url: None,
        headers: Default::default(),
        exchange: Some(String::new()),
        routing_key: queue.to_string(),
        when: When::Success,
        pointer: Some(pointer.clone()),
        equals: None,
        max_attempts: 8,
        url_setting: text_of(b, "connectionStringSetting").map(str::to_string),
        body: Some(pointer),
    })
}

/// A name as one JSON pointer token.
fn pointer_token(name: &str) -> String {
    name.replace('~', "~0").replace('/', "~1")
}

/// function.json's `retry`: `fixedDelay` (maxRetryCount, delayInterval) or
/// `exponentialBackoff` (maxRetryCount, minimumInterval, maximumInterval).
fn retry_policy(r: &Value) -> Result<RetryPolicy, String> {
    let count = r.get("maxRetryCount").and_then(Value::as_i64).ok_or("needs maxRetryCount")?;
    // -1 is "for ever" in Azure; Warren's attempts are bounded.
    let max_attempts = if count < 0 { 100 } else { count.saturating_add(1).min(100) as u32 };
    let ms = |key: &str| -> Result<u64, String> {
        let t = r.get(key).and_then(Value::as_str).ok_or(format!("needs {key}"))?;
        timespan_secs(t)
            .and_then(|s| s.checked_mul(1000))
            .map(|ms| ms.max(1))
            .ok_or(format!("{key} {t:?} is not a duration such as \"00:00:10\""))
    };
    let strategy = r.get("strategy").and_then(Value::as_str).unwrap_or("").to_ascii_lowercase();
    let (initial, max, multiplier) = match strategy.as_str() {
        "fixeddelay" => {
            let d = ms("delayInterval")?;
            (d, d, 1.0)
        }
        "exponentialbackoff" => (ms("minimumInterval")?, ms("maximumInterval")?, 2.0),
        other => return Err(format!("strategy {other:?} is not fixedDelay or exponentialBackoff")),
    };
    Ok(RetryPolicy { max_attempts, initial_delay_ms: initial, max_delay_ms: max.max(initial), multiplier, jitter: 0.0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = r#"{"version": "2.0", "functionTimeout": "00:01:00",
        "customHandler": {"description": {"defaultExecutablePath": "python3", "arguments": ["handler.py"]}},
        "extensionBundle": {"id": "Microsoft.Azure.Functions.ExtensionBundle", "version": "[4.*, 5.0.0)"}}"#;

    fn one(name: &str, function_json: &str) -> Result<App, Vec<String>> {
        convert(HOST, &[(name.to_string(), function_json.to_string())], false, None)
    }

    #[test]
    fn an_http_function_becomes_a_route_with_its_level() {
        let app = one(
            "product",
            r#"{"bindings": [{"type": "httpTrigger", "direction": "in", "name": "req", "authLevel": "anonymous",
                "methods": ["GET"], "route": "products/{id}"}, {"type": "http", "direction": "out", "name": "$return"}]}"#,
        )
        .unwrap();
        let (m, text) = &app.functions[0];
        assert_eq!(m.runtime, Runtime::Azure);
        assert_eq!(m.command, ["python3", "handler.py"]);
        assert_eq!(m.auth, AuthLevel::Anonymous);
        assert_eq!(m.timeout_secs, 60);
        let az = m.azure.as_ref().unwrap();
        assert_eq!(az.route_or("product"), "products/{id}");
        assert!(az.allows("get") && !az.allows("POST"));
        assert_eq!(az.http_output.as_deref(), Some("$return"));
        // The text written is a manifest that reads back the same.
        assert_eq!(&Manifest::parse(text).unwrap(), m);
    }

    #[test]
    fn timers_queues_and_outputs_map_onto_warren_triggers() {
        let timer = one(
            "tick",
            r#"{"bindings": [{"type": "timerTrigger", "direction": "in", "name": "t", "schedule": "%SCHED%",
                "runOnStartup": true, "useMonitor": false}]}"#,
        )
        .unwrap();
        let t = timer.functions[0].0.timer.clone().unwrap();
        assert_eq!((t.schedule.as_str(), t.catch_up, t.run_on_startup), ("%SCHED%", CatchUp::Skip, true));

        let relay = one(
            "relay",
            r#"{"bindings": [{"type": "rabbitMQTrigger", "direction": "in", "name": "m", "queueName": "in",
                "connectionStringSetting": "RABBIT"}, {"type": "rabbitMQ", "direction": "out", "name": "out",
                "queueName": "%OUT%"}], "retry": {"strategy": "exponentialBackoff", "maxRetryCount": 3,
                "minimumInterval": "00:00:02", "maximumInterval": "00:01:00"}}"#,
        )
        .unwrap();
        let m = &relay.functions[0].0;
        let src = m.source.clone().unwrap();
        assert_eq!((src.queue.as_deref(), src.url_setting.as_deref()), (Some("in"), Some("RABBIT")));
        let o = &m.outputs[0];
        assert_eq!((o.routing_key.as_str(), o.body.as_deref()), ("%OUT%", Some("/Outputs/out")));
        assert!(o.applies(true, Some(br#"{"Outputs": {"out": "x"}}"#)));
        assert!(!o.applies(true, Some(br#"{"Outputs": {}}"#)));
        assert_eq!((m.retry.max_attempts, m.retry.initial_delay_ms, m.retry.max_delay_ms), (4, 2000, 60_000));
    }

    #[test]
    fn unsupported_bindings_are_refused_by_function_and_name() {
        let refused = convert(
            HOST,
            &[
                (
                    "thumbnail".into(),
                    r#"{"bindings": [{"type": "blobTrigger", "direction": "in", "name": "myBlob", "path": "x/{name}"}]}"#.into(),
                ),
                (
                    "store".into(),
                    r#"{"bindings": [{"type": "httpTrigger", "direction": "in", "name": "req"},
                        {"type": "cosmosDB", "direction": "out", "name": "doc"}]}"#
                        .into(),
                ),
            ],
            false,
            None,
        )
        .unwrap_err();
        assert_eq!(refused.len(), 2, "{refused:?}");
        assert!(refused[0].contains("thumbnail") && refused[0].contains("blobTrigger"), "{refused:?}");
        assert!(refused[1].contains("store") && refused[1].contains("\"doc\"") && refused[1].contains("cosmosDB"));
    }

    #[test]
    fn an_app_without_a_custom_handler_is_refused() {
        let e = convert(
            r#"{"version": "2.0"}"#,
            &[("f".into(), r#"{"bindings": [{"type": "httpTrigger", "direction": "in", "name": "req"}]}"#.into())],
            false,
            None,
        )
        .unwrap_err();
        assert!(e[0].contains("customHandler"), "{e:?}");
    }

    #[test]
    fn forwarding_only_for_request_and_answer() {
        let host = HOST.replace("\"customHandler\": {", "\"customHandler\": {\"enableForwardingHttpRequest\": true, ");
        let app = convert(
            &host,
            &[(
                "echo".into(),
                r#"{"bindings": [{"type": "httpTrigger", "direction": "in", "name": "req"},
                    {"type": "http", "direction": "out", "name": "res"}]}"#
                    .into(),
            )],
            false,
            Some("apps"),
        )
        .unwrap();
        assert_eq!(app.functions[0].0.pool, "apps");
        assert!(app.functions[0].0.azure.as_ref().unwrap().forward);
    }

    #[test]
    fn routes_warren_cannot_serve_and_developer_files_are_refused() {
        let http = |route: &str| {
            format!(
                r#"{{"bindings": [{{"type": "httpTrigger", "direction": "in", "name": "req", "route": "{route}"}}]}}"#
            )
        };
        let e = one("f", &http("keys/{id}")).unwrap_err();
        assert!(e[0].contains("Warren's own API"), "{e:?}");
        let e = one("f", &http("files/{name}.json")).unwrap_err();
        assert!(e[0].contains("{name}.json"), "{e:?}");
        let e = one("f", &http("files/{id:guid}")).unwrap_err();
        assert!(e[0].contains("{id:guid}"), "{e:?}");
        assert!(one("f", &http("files/{id:int}/{*rest}")).is_ok());
        let e = convert(HOST, &[("f".into(), http("x"))], true, None).unwrap_err();
        assert!(e[0].contains("local.settings.json"), "{e:?}");
        assert_eq!(timespan_secs("99999999999999999:00:00"), None);
        assert_eq!(timespan_secs("00:00:inf"), None);
    }

    #[test]
    fn a_lone_http_trigger_is_not_forwarded() {
        let host = HOST.replace("\"customHandler\": {", "\"customHandler\": {\"enableForwardingHttpRequest\": true, ");
        let app = convert(
            &host,
            &[("f".into(), r#"{"bindings": [{"type": "httpTrigger", "direction": "in", "name": "req"}]}"#.into())],
            false,
            None,
        )
        .unwrap();
        assert!(!app.functions[0].0.azure.as_ref().unwrap().forward);
    }

    #[test]
    fn timespans() {
        assert_eq!(timespan_secs("00:05:00"), Some(300));
        assert_eq!(timespan_secs("1.00:00:01"), Some(86401));
        assert_eq!(timespan_secs("00:00:00.5"), Some(1));
        assert_eq!(timespan_secs("0 */5 * * * *"), None);
    }
}
