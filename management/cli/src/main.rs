//! `warren`: the command line of Warren. Every command but `up` is a call of the management
//! API through [`client::Client`]; `up` runs the embedded mode ([`embedded`]).

mod batch;
mod client;
mod embedded;

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use client::{Answer, Client, Wait};
use secrecy::SecretString;
use serde_json::Value;
use warren_service::telemetry::LogFormat;

/// Warren: an on-premises functions runtime over RabbitMQ.
///
/// Start everything on this machine (embedded: SQLite, in-process queue, two workers):
///   warren up
/// Then, from another terminal:
///   warren invoke hello --data '{"name": "Ada"}'     wait for the result
///   warren invoke hello --async --data '{}'          print the invocation id at once
///   warren invoke report --in 2h                     run it in two hours (or --at TIME)
///   warren invoke hello --each-line inputs.ndjson    one async invocation per line
///   warren get ID                                    status, result, logs of one invocation
///   warren cancel ID                                 it never runs, or it is stopped
///   warren publish ./my-function                     pack a folder and publish it
///   warren functions                                 what is published
///   warren workers                                   who is serving
///   warren logs ID --follow                          log lines as they come, until it ends
///   warren keys create app --level function --function hello   a key for one function
///   warren --json get ID                             any command's answer as JSON
///
/// Every command but `up` talks to a management API, so it works the same against a
/// distributed Warren. Where and with which key, first found wins:
///   flags         --url URL --key KEY
///   environment   WARREN_URL, WARREN_API_KEY
///   config file   --config PATH (or WARREN_CONFIG), else ~/.config/warren/config.toml,
///                 holding url = "https://warren.example.com" and key = "wrn_..."
///   default       http://127.0.0.1:7070, no key (`warren up` prints its admin key)
#[derive(Parser, Debug)]
#[command(name = "warren", version, verbatim_doc_comment)]
struct Cli {
    /// Management API base URL [default: http://127.0.0.1:7070].
    #[arg(long, global = true, env = "WARREN_URL")]
    url: Option<String>,
    /// API key, sent as `Authorization: Bearer KEY` on every request.
    #[arg(long, global = true, env = "WARREN_API_KEY", hide_env_values = true)]
    key: Option<SecretString>,
    /// Config file with `url` and `key` [default: ~/.config/warren/config.toml].
    #[arg(long, global = true, env = "WARREN_CONFIG")]
    config: Option<PathBuf>,
    /// Print the API's JSON answer instead of the readable form.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run management and workers in this process (SQLite + in-process queue) and publish the
    /// sample functions. Ctrl-C stops it.
    Up {
        /// Where the SQLite file and the package cache live.
        #[arg(long, default_value = ".warren")]
        data_dir: PathBuf,
        /// Address of the API.
        #[arg(long, default_value = "127.0.0.1:7070")]
        listen: SocketAddr,
        /// Workers to run in the process.
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// Invocations each worker runs at once.
        #[arg(long, default_value_t = 4)]
        concurrency: u16,
        /// Pools the workers serve (comma-separated).
        #[arg(long, default_value = "default", value_delimiter = ',')]
        pools: Vec<String>,
        /// Folder of function folders to publish at start (default: ./examples if present,
        /// else the built-in samples).
        #[arg(long)]
        examples: Option<PathBuf>,
    },
    /// Pack a function folder (function.toml at its root), or an Azure Functions app (host.json
    /// at its root, a folder per function), and publish it as a new version.
    #[command(
        after_help = "Examples:\n  warren publish ./resize      # prints: published resize version 3 (sha256 ...), now active\n  warren publish ./my-func-app # an Azure Functions app (custom handler): each function becomes a Warren function\n  warren publish app.zip       # a package made elsewhere\n\nThe manifest's `auth` (\"anonymous\", \"function\" or \"admin\") says who may invoke it; an app's local.settings.json\nis not published (give its values with `warren settings set`)."
    )]
    Publish {
        /// The function's or the app's folder, or a package (.tar.gz or .zip) made elsewhere.
        dir: PathBuf,
        /// An Azure Functions app only: the worker pool its functions run on (default: default).
        #[arg(long)]
        pool: Option<String>,
    },
    /// Invoke a function's active version; waits for the result unless --async.
    #[command(
        after_help = "Examples:\n  warren invoke hello --data '{\"name\": \"Ada\"}'     # the result on stdout; exit 1 if it failed\n  warren invoke resize --data-file photo.json --timeout 120\n  id=$(warren invoke resize --async --data-file - < photo.json)   # the id, once queued\n  warren invoke forward --each-line events.ndjson > ids.txt      # one async invocation per line"
    )]
    Invoke {
        /// Function name.
        name: String,
        /// The input, as text (JSON or anything else).
        #[arg(long, short = 'd', conflicts_with = "data_file")]
        data: Option<String>,
        /// Read the input from a file ('-' for stdin).
        #[arg(long)]
        data_file: Option<PathBuf>,
        /// Do not wait: print the invocation id once the broker has it.
        #[arg(long = "async")]
        asynchronous: bool,
        /// Invoke once per line of this NDJSON file ('-' for stdin): each line (a JSON value)
        /// is the input of its own asynchronous invocation. Lines go in bulk requests of up to
        /// 1,000; prints one id per line, in file order.
        #[arg(long, value_name = "FILE", conflicts_with_all = ["data", "data_file"])]
        each_line: Option<PathBuf>,
        /// With --each-line: each line is {"key": "...", "input": ...}, an idempotency key per
        /// input. A key used before (within the window) with the same input prints the first
        /// invocation's id and runs nothing; with another input the request is refused.
        #[arg(long, requires = "each_line")]
        keyed: bool,
        /// Seconds to wait for the result (sync only).
        #[arg(long, default_value_t = 30)]
        timeout: u64,
        /// Sent as `Idempotency-Key`: run at most once for this key (within management's
        /// window, 24 h by default). Repeating the command with the same key and input gets
        /// the first invocation (its id, and its result when waiting); another input is
        /// refused. Use it when a retry must not run the function twice.
        #[arg(long, value_name = "KEY", conflicts_with = "each_line")]
        idempotency_key: Option<String>,
        /// Run it later, this long from now (30s, 10m, 2h, 1d): printed is its id; it shows
        /// `scheduled` until then and can be cancelled (warren cancel ID). At most 90 days.
        #[arg(long = "in", value_name = "SPAN", value_parser = parse_span, conflicts_with_all = ["each_line", "idempotency_key", "at"])]
        in_: Option<u64>,
        /// Run it later, at this time: RFC 3339 (2026-12-24T06:00:00Z) or milliseconds since the epoch.
        #[arg(long, value_name = "TIME", conflicts_with_all = ["each_line", "idempotency_key"])]
        at: Option<String>,
    },
    /// Show one invocation: status, result, error, timings, worker and log lines.
    Get {
        /// The invocation id.
        id: String,
    },
    /// Cancel an invocation that is queued, scheduled or running: it never runs, or its process
    /// tree is killed (a warm handler's call goes on to its end); it is recorded `cancelled` and
    /// no outcome is stored over it. An invocation that has ended is refused (409), saying how.
    Cancel {
        /// The invocation id.
        id: String,
    },
    /// Print an invocation's log lines; with --follow, keep printing new ones until it is final.
    #[command(
        after_help = "Examples:\n  id=$(warren invoke resize --async --data-file big.json)\n  warren logs \"$id\" --follow     # exits 1 if the invocation failed"
    )]
    Logs {
        /// The invocation id.
        id: String,
        /// Wait for new lines until the invocation is final (polls every 500 ms).
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// API keys: admin keys, and function keys that may invoke one function and read its
    /// invocations. A key is shown once, when created; only its hash is kept.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// List published functions, or show one with its versions; activate an earlier version
    /// (rollback), pause and resume a function, or delete one.
    #[command(
        args_conflicts_with_subcommands = true,
        after_help = "Examples:\n  warren functions                    # every function, its active version and trigger\n  warren functions resize             # one function and its versions\n  warren functions activate resize 2  # roll back: version 2 serves from the next invoke\n  warren functions delete resize      # refused while it has open invocations, batches or a source\n  warren functions pause resize --for 2h   # its invocations wait; resume NAME starts them"
    )]
    Functions {
        /// A function name, to show its versions.
        name: Option<String>,
        #[command(subcommand)]
        action: Option<FunctionsCommand>,
    },
    /// List workers and their last heartbeat (`lost` when silent for 15 s).
    Workers,
    /// How long finished work is kept: management's defaults, each function's policy (its
    /// manifest's [retention] over the defaults), and what the last cleanup removed.
    #[command(
        after_help = "A function keeps its own spans in function.toml:\n  [retention]\n  succeeded = \"1d\"   # succeeded invocations, from their end\n  failed = \"90d\"     # failed, timed-out, dead and cancelled ones\n  versions = 5        # newest version numbers kept (0: all)\nThe defaults are warren-management's --retain-succeeded, --retain-failed and --retain-versions."
    )]
    Retention,
    /// A function's settings: environment variables given to its processes. Secret values are
    /// stored encrypted and never shown again.
    #[command(subcommand)]
    Settings(SettingsCommand),
    /// Dead letters: messages kept after their last attempt, or that no worker could take.
    #[command(subcommand)]
    Dead(DeadCommand),
    /// Batches: one invocation per item, progress, fan-in to a follow-up function.
    #[command(subcommand)]
    Batch(batch::BatchCommand),
    /// Functions with a timer trigger: schedule, next and last tick.
    Timers,
    /// Forwards of an invocation's result to its function's outputs.
    Deliveries {
        /// The invocation id.
        id: String,
        /// Try its failed deliveries again.
        #[arg(long)]
        retry: bool,
    },
}

#[derive(Subcommand, Debug)]
enum FunctionsCommand {
    /// Make a published version the active one again (or a later one), atomically, as a
    /// publish does: invokes from then on run it, and its triggers follow.
    Activate {
        name: String,
        /// The version number (`warren functions NAME` lists them).
        version: i64,
    },
    /// Delete a function with its versions and settings; its finished invocations stay.
    /// Refused while it has open invocations or batches, or consumes a source queue.
    Delete { name: String },
    /// Pause a function: its invocations are still accepted and queued, but none starts
    /// (workers set them aside, in order); its timer does not fire and its source does not
    /// consume. Invocations already running finish.
    #[command(
        after_help = "Examples:\n  warren functions pause sync-crm            # until warren functions resume sync-crm\n  warren functions pause sync-crm --for 2h   # resumes by itself in two hours"
    )]
    Pause {
        name: String,
        /// Resume by itself after this span: a whole number with s, m, h or d.
        #[arg(long = "for", value_name = "SPAN", value_parser = parse_span)]
        for_: Option<u64>,
    },
    /// Resume a paused function: what it held starts, in order of arrival, and its timer and
    /// source start again.
    Resume { name: String },
}

/// A span such as `90m` or `2h`, in seconds.
fn parse_span(s: &str) -> Result<u64, String> {
    match s.parse::<warren_wire::retention::Keep>() {
        Ok(warren_wire::retention::Keep::For(d)) => Ok(d.as_secs()),
        Ok(warren_wire::retention::Keep::Forever) => Err("give a span such as 2h (\"forever\" is not one)".into()),
        Err(_) => {
            Err(format!("{s:?} is not a span: write a whole number with s, m, h or d (\"90m\", \"2h\"), at least 1s"))
        }
    }
}

#[derive(Subcommand, Debug)]
enum KeysCommand {
    /// Create a key and print it (the only time it is shown).
    #[command(
        after_help = "Examples:\n  warren keys create ci-deploy --level admin\n  warren keys create billing-app --level function --function invoice\n\nA function's manifest says who may invoke it: auth = \"anonymous\" | \"function\" | \"admin\"."
    )]
    Create {
        /// Who or what uses the key.
        name: String,
        /// admin (everything) or function (invoke one function, read its invocations).
        #[arg(long, value_parser = ["admin", "function"])]
        level: String,
        /// The function a function key is for.
        #[arg(long, required_if_eq("level", "function"))]
        function: Option<String>,
    },
    /// List keys (never their secrets).
    List,
    /// Revoke a key: it is refused from now on.
    Revoke {
        /// The key's id (from `warren keys list`).
        id: String,
    },
}

#[derive(Subcommand, Debug)]
enum SettingsCommand {
    /// List a function's settings (secret values masked).
    List {
        /// Function name.
        function: String,
    },
    /// Set (or replace) a setting.
    Set {
        /// Function name.
        function: String,
        /// Variable name, e.g. API_URL.
        name: String,
        /// Its value ('-' reads it from stdin, which keeps secrets out of shell history).
        value: String,
        /// Store it encrypted; it is then never shown or logged.
        #[arg(long)]
        secret: bool,
    },
    /// Remove a setting.
    Rm {
        /// Function name.
        function: String,
        /// Variable name.
        name: String,
    },
}

#[derive(Subcommand, Debug)]
enum DeadCommand {
    /// List dead letters with the reason each one is there.
    List {
        /// Only this pool (default: every pool in use).
        #[arg(long)]
        pool: Option<String>,
        /// At most this many per pool.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Replay dead letters: each becomes a new attempt of its invocation (same id).
    Replay {
        /// Invocation ids to replay.
        ids: Vec<String>,
        /// Replay every dead letter (of --pool, or of all pools).
        #[arg(long, conflicts_with = "ids")]
        all: bool,
        /// Only this pool.
        #[arg(long)]
        pool: Option<String>,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    // Output piped into a reader that stops early (`warren get ID | head`) ends the command
    // quietly, as it does other Unix tools, instead of a panic on the closed pipe.
    #[cfg(unix)]
    // SAFETY: at the start of main, before any thread or I/O; SIG_DFL is a valid disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    warren_service::telemetry::init_tracing(LogFormat::from_env());
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("warren: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Where the CLI finds its defaults when flags and environment say nothing.
#[derive(serde::Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    url: Option<String>,
    key: Option<SecretString>,
}

const DEFAULT_URL: &str = "http://127.0.0.1:7070";

fn default_config_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("warren").join("config.toml"))
}

/// The config file: the one named (which must exist), or the default one if present.
fn read_config(named: Option<&std::path::Path>) -> anyhow::Result<ConfigFile> {
    let (path, must_exist) = match named {
        Some(p) => (p.to_path_buf(), true),
        None => match default_config_path() {
            Some(p) => (p, false),
            None => return Ok(ConfigFile::default()),
        },
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => return Ok(ConfigFile::default()),
        Err(e) => anyhow::bail!("cannot read the config file {}: {e}", path.display()),
    };
    toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("the config file {} is not valid (keys: url, key): {e}", path.display()))
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let needs_api = !matches!(cli.command, Command::Up { .. });
    let file = if needs_api { read_config(cli.config.as_deref())? } else { ConfigFile::default() };
    let base = cli.url.clone().or(file.url).unwrap_or_else(|| DEFAULT_URL.to_string());
    let key = cli.key.clone().or(file.key);
    let api = Client::new(&base, key.as_ref())?;
    match cli.command {
        Command::Batch(cmd) => batch::run(cmd, &api, cli.json).await,
        Command::Timers => batch::timers(&api, cli.json).await,
        Command::Deliveries { id, retry } => batch::deliveries(&api, &id, retry, cli.json).await,
        Command::Up { data_dir, listen, workers, concurrency, pools, examples } => {
            let examples = examples.or_else(|| {
                let local = PathBuf::from("examples");
                local.is_dir().then_some(local)
            });
            embedded::up(
                embedded::Options { data_dir, listen, workers, concurrency, pools, examples },
                warren_service::shutdown::shutdown_signal(),
            )
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Publish { dir, pool } => {
            let pkg = if dir.is_file() {
                // A package made elsewhere (.tar.gz or .zip, as `func pack` or `zip` makes one).
                std::fs::read(&dir).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", dir.display()))?
            } else {
                if dir.join("host.json").is_file() && dir.join("local.settings.json").is_file() {
                    eprintln!(
                        "note: local.settings.json is a developer's file and is not published; give the functions \
                         their settings with `warren settings set FUNCTION NAME VALUE` (--secret for connection strings)"
                    );
                }
                warren_wire::package::pack_dir(&dir)
                    .map_err(|e| anyhow::anyhow!("cannot pack {}: {e}", dir.display()))?
            };
            let v = api.publish(pkg, pool.as_deref()).await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(ExitCode::SUCCESS);
            }
            let shown = |f: &Value| {
                format!(
                    "{} version {} (sha256 {})",
                    f["name"].as_str().unwrap_or("?"),
                    f["version"],
                    f["sha256"].as_str().unwrap_or("?")
                )
            };
            match v["functions"].as_array() {
                Some(functions) => {
                    println!("published the Azure Functions app, {} functions, now active:", functions.len());
                    for f in functions {
                        println!("  {}", shown(f));
                    }
                }
                None => println!("published {}, now active", shown(&v)),
            }
            for note in v["notes"].as_array().into_iter().flatten() {
                eprintln!("note: {}", note.as_str().unwrap_or_default());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Invoke { name, each_line: Some(path), keyed, .. } => invoke_each_line(&api, &name, &path, keyed).await,
        Command::Invoke {
            name,
            data,
            data_file,
            asynchronous,
            timeout,
            each_line: None,
            idempotency_key,
            in_,
            at,
            ..
        } => {
            let input = match (data, data_file) {
                (Some(d), _) => d.into_bytes(),
                (None, Some(p)) if p.as_os_str() == "-" => {
                    let mut b = Vec::new();
                    std::io::stdin().read_to_end(&mut b)?;
                    b
                }
                (None, Some(p)) => {
                    std::fs::read(&p).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))?
                }
                (None, None) => Vec::new(),
            };
            let later = in_.is_some() || at.is_some();
            let wait = match (in_, at) {
                (Some(secs), _) => Wait::In(secs),
                (None, Some(at)) => Wait::At(at),
                _ if asynchronous => Wait::Async,
                _ => Wait::Sync(Duration::from_secs(timeout)),
            };
            let asynchronous = asynchronous || later;
            let Answer { status, body: v } = api.invoke(&name, input, wait, idempotency_key.as_deref()).await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else if status == 202 {
                println!("{}", v["id"].as_str().unwrap_or("?"));
                if !asynchronous {
                    eprintln!(
                        "still running after {timeout} s; follow it with: warren get {}",
                        v["id"].as_str().unwrap_or("?")
                    );
                }
            } else {
                print_result(&v);
            }
            Ok(exit_for(&v))
        }
        Command::Get { id } => {
            let v = api.invocation(&id).await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_invocation(&v);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Cancel { id } => {
            let v = api.cancel(&id).await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("{id} is cancelled ({} workers told)", v["workers_told"]);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Logs { id, follow } => {
            let mut printed = 0usize;
            loop {
                let v = api.invocation(&id).await?;
                let logs = v["logs"].as_array().cloned().unwrap_or_default();
                for l in logs.iter().skip(printed) {
                    if cli.json {
                        println!("{}", serde_json::to_string(l)?);
                    } else {
                        println!("[{}] {}", l["attempt"], l["line"].as_str().unwrap_or(""));
                    }
                }
                printed = printed.max(logs.len());
                let status = v["status"].as_str().unwrap_or("?");
                let fin = !matches!(status, "queued" | "running");
                if !follow || fin {
                    if follow && !cli.json {
                        eprintln!("invocation {id} is {status}");
                    }
                    return Ok(if fin { exit_for(&v) } else { ExitCode::SUCCESS });
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        Command::Keys(KeysCommand::Create { name, level, function }) => {
            let v = api.create_key(&name, &level, function.as_deref()).await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("{}", v["key"].as_str().unwrap_or("?"));
                let scope = v["function"].as_str().map(|f| format!(" for function {f}")).unwrap_or_default();
                eprintln!(
                    "created {} key {:?}{scope} (id {}); store it now: it is not shown again",
                    v["level"].as_str().unwrap_or("?"),
                    v["name"].as_str().unwrap_or("?"),
                    v["id"].as_str().unwrap_or("?")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Keys(KeysCommand::List) => {
            let v = api.keys().await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let list = v.as_array().cloned().unwrap_or_default();
                if list.is_empty() {
                    println!("no keys yet (besides the configured admin key): warren keys create NAME --level admin");
                }
                println!("{:<36} {:<9} {:<20} {:<24} STATE", "ID", "LEVEL", "FUNCTION", "NAME");
                for k in list {
                    println!(
                        "{:<36} {:<9} {:<20} {:<24} {}",
                        k["id"].as_str().unwrap_or("?"),
                        k["level"].as_str().unwrap_or("?"),
                        k["function"].as_str().unwrap_or("-"),
                        k["name"].as_str().unwrap_or("?"),
                        if k["revoked_ms"].is_null() { "active" } else { "revoked" }
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Keys(KeysCommand::Revoke { id }) => {
            let v = api.revoke_key(&id).await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("revoked key {id}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Functions { action: Some(FunctionsCommand::Activate { name, version }), .. } => {
            let v = api.activate(&name, version).await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("{name}: version {version} is active");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Functions { action: Some(FunctionsCommand::Pause { name, for_ }), .. } => {
            let v = api.pause(&name, for_).await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else if let Some(at) = v["resume_at_ms"].as_i64() {
                let secs = (at - warren_wire::time::now_ms()).max(0) / 1000;
                println!("{name} is paused: its invocations wait until it resumes by itself in {secs} s");
            } else {
                println!("{name} is paused: its invocations wait until warren functions resume {name}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Functions { action: Some(FunctionsCommand::Resume { name }), .. } => {
            let v = api.resume(&name).await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("{name} is resumed: what it held starts now");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Functions { action: Some(FunctionsCommand::Delete { name }), .. } => {
            let v = api.delete_function(&name).await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("deleted {name} (its finished invocations stay)");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Functions { name, action: None } => {
            let v = match &name {
                Some(n) => api.function(n).await?,
                None => api.functions().await?,
            };
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else if name.is_some() {
                println!(
                    "{} (active version {}, trigger: {}){}",
                    v["function"]["name"].as_str().unwrap_or("?"),
                    v["function"]["active_version"],
                    v["trigger"].as_str().unwrap_or("?"),
                    if v["function"]["paused_ms"].is_i64() { ", paused" } else { "" }
                );
                let r = &v["retention"];
                println!(
                    "  keeps succeeded {}, failed {}, {} versions",
                    r["succeeded"].as_str().unwrap_or("?"),
                    r["failed"].as_str().unwrap_or("?"),
                    versions_kept(&r["versions"])
                );
                for ver in v["versions"].as_array().into_iter().flatten() {
                    println!(
                        "  v{:<4} sha256 {}  {} bytes",
                        ver["version"],
                        ver["sha256"].as_str().unwrap_or("?"),
                        ver["size"]
                    );
                }
            } else {
                let list = v.as_array().cloned().unwrap_or_default();
                if list.is_empty() {
                    println!("no functions yet: warren publish DIR");
                }
                for f in list {
                    println!(
                        "{:<32} v{:<5} {}{}",
                        f["name"].as_str().unwrap_or("?"),
                        f["active_version"],
                        f["trigger"].as_str().unwrap_or(""),
                        if f["paused_ms"].is_i64() { "  (paused)" } else { "" }
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Dead(DeadCommand::List { pool, limit }) => {
            let v = api.dead_letters(pool.as_deref(), limit).await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                for (p, n) in v["counts"].as_object().into_iter().flatten() {
                    println!("pool {p}: {n} dead letters");
                }
                for d in v["items"].as_array().into_iter().flatten() {
                    println!(
                        "  {:<36} {:<20} attempt {:<3} {}",
                        d["id"].as_str().unwrap_or("(undecodable)"),
                        d["function"].as_str().unwrap_or("-"),
                        d["attempt"].as_u64().map(|a| a.to_string()).unwrap_or_else(|| "-".into()),
                        d["reason"].as_str().unwrap_or("")
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Dead(DeadCommand::Replay { ids, all, pool }) => {
            if ids.is_empty() && !all {
                anyhow::bail!("name the invocation ids to replay, or pass --all");
            }
            let v = api.replay(&ids, all, pool.as_deref()).await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let replayed = v["replayed"].as_array().map(Vec::len).unwrap_or(0);
                let skipped = v["skipped"].as_array().map(Vec::len).unwrap_or(0);
                println!("replayed {replayed}; skipped {skipped} (not dead any more); left {} in place", v["kept"]);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Settings(SettingsCommand::List { function }) => {
            let v = api.settings(&function).await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let list = v.as_array().cloned().unwrap_or_default();
                if list.is_empty() {
                    println!("{function} has no settings: warren settings set {function} NAME VALUE [--secret]");
                }
                for s in list {
                    let tag = if s["secret"].as_bool().unwrap_or(false) { " (secret)" } else { "" };
                    println!("{}={}{tag}", s["name"].as_str().unwrap_or("?"), s["value"].as_str().unwrap_or(""));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Settings(SettingsCommand::Set { function, name, value, secret }) => {
            let value = if value == "-" {
                let mut s = String::new();
                std::io::stdin().read_to_string(&mut s)?;
                s.trim_end_matches(['\n', '\r']).to_string()
            } else {
                value
            };
            let v = api.set_setting(&function, &name, &value, secret).await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("set {name} on {function}{}", if secret { " (secret, stored encrypted)" } else { "" });
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Settings(SettingsCommand::Rm { function, name }) => {
            let v = api.remove_setting(&function, &name).await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("removed {name} from {function}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Retention => {
            let v = api.retention().await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(ExitCode::SUCCESS);
            }
            let d = &v["defaults"];
            println!(
                "defaults: succeeded {}, failed {}, {} versions",
                d["succeeded"].as_str().unwrap_or("?"),
                d["failed"].as_str().unwrap_or("?"),
                versions_kept(&d["versions"])
            );
            let c = &v["cleanup"];
            let last = &c["last"];
            if last.is_object() {
                let took = last["finished_ms"].as_i64().unwrap_or(0) - last["started_ms"].as_i64().unwrap_or(0);
                println!(
                    "last cleanup: {} s ago by {}, took {} ms: removed {} invocations ({} log lines), {} batches, {} versions, {} ticks{}",
                    (warren_wire::time::now_ms() - last["finished_ms"].as_i64().unwrap_or(0)) / 1000,
                    c["holder"].as_str().unwrap_or("?"),
                    took,
                    last["invocations"],
                    last["log_lines"],
                    last["batches"],
                    last["versions"],
                    last["ticks"],
                    last["error"].as_str().map(|e| format!(" (stopped early: {e})")).unwrap_or_default()
                );
            } else {
                println!("no cleanup has run yet (every {} s)", c["every_secs"]);
            }
            println!("{:<32} {:>10} {:>10} {:>9}", "FUNCTION", "SUCCEEDED", "FAILED", "VERSIONS");
            for f in v["functions"].as_array().into_iter().flatten() {
                let r = &f["retention"];
                println!(
                    "{:<32} {:>10} {:>10} {:>9}",
                    f["name"].as_str().unwrap_or("?"),
                    r["succeeded"].as_str().unwrap_or("?"),
                    r["failed"].as_str().unwrap_or("?"),
                    versions_kept(&r["versions"])
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Workers => {
            let v = api.workers().await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let now = warren_wire::time::now_ms();
                println!(
                    "{:<40} {:<10} {:<16} {:>6} {:>9} {:>10}",
                    "WORKER", "STATE", "POOLS", "CONC", "IN-FLIGHT", "SEEN"
                );
                for w in v.as_array().into_iter().flatten() {
                    let seen = (now - w["last_seen_ms"].as_i64().unwrap_or(0)) / 1000;
                    println!(
                        "{:<40} {:<10} {:<16} {:>6} {:>9} {:>9}s",
                        w["id"].as_str().unwrap_or("?"),
                        w["state"].as_str().unwrap_or("?"),
                        w["pools"].as_str().unwrap_or("?"),
                        w["concurrency"].as_i64().unwrap_or(0),
                        w["in_flight"].as_i64().unwrap_or(0),
                        seen
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A policy's `versions`, with 0 said as "all".
fn versions_kept(v: &Value) -> String {
    match v.as_u64() {
        Some(0) => "all".into(),
        Some(n) => n.to_string(),
        None => "?".into(),
    }
}

fn exit_for(v: &Value) -> ExitCode {
    match v["status"].as_str() {
        Some("failed") | Some("timed_out") | Some("dead") => ExitCode::FAILURE,
        _ => ExitCode::SUCCESS,
    }
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => serde_json::to_string_pretty(other).unwrap_or_default(),
    }
}

/// `warren invoke NAME --each-line FILE`: one asynchronous invocation per non-blank line,
/// sent in bulk requests (`POST /api/functions/{name}/invocations`); the ids on stdout.
async fn invoke_each_line(api: &Client, name: &str, path: &std::path::Path, keyed: bool) -> anyhow::Result<ExitCode> {
    use std::io::BufRead;
    const LINES: usize = 1000;
    const BYTES: usize = 8 << 20;
    let input: Box<dyn BufRead> = if path.as_os_str() == "-" {
        Box::new(std::io::BufReader::new(std::io::stdin()))
    } else {
        let f = std::fs::File::open(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        Box::new(std::io::BufReader::new(f))
    };
    let (mut body, mut lines, mut first, mut queued) = (Vec::new(), 0usize, 0usize, 0usize);
    for (n, line) in input.split(b'\n').enumerate() {
        let line = line.map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        let blank = line.iter().all(u8::is_ascii_whitespace);
        if lines == 0 && blank {
            continue;
        }
        if lines == 0 {
            first = n + 1;
        }
        // Blank lines inside a request are kept (the server skips them), so that the line
        // numbers of its errors count the file's lines from `first`.
        body.extend_from_slice(&line);
        body.push(b'\n');
        lines += usize::from(!blank);
        if lines == LINES || body.len() >= BYTES {
            queued += send_lines(api, name, std::mem::take(&mut body), (first, n + 1), queued, keyed).await?;
            lines = 0;
        }
    }
    if lines > 0 {
        queued += send_lines(api, name, body, (first, usize::MAX), queued, keyed).await?;
    }
    eprintln!("{queued} invocations of {name} queued");
    Ok(ExitCode::SUCCESS)
}

/// Sends one bulk request; prints the ids it queued. An error says which lines of the file
/// it was about and what was queued before.
async fn send_lines(
    api: &Client,
    name: &str,
    body: Vec<u8>,
    lines: (usize, usize),
    before: usize,
    keyed: bool,
) -> anyhow::Result<usize> {
    let which = match lines.1 {
        usize::MAX => format!("lines {} to the end", lines.0),
        last => format!("lines {}-{last}", lines.0),
    };
    let Answer { status, body: v } = api.invoke_lines(name, body, keyed).await?;
    let ids = v["ids"].as_array().cloned().unwrap_or_default();
    for id in &ids {
        println!("{}", id.as_str().unwrap_or("?"));
    }
    if status != 202 {
        let msg = client::error_message(&v);
        anyhow::bail!(
            "{which}: {msg} (HTTP {status}; line numbers in it count from line {} of the file); {} invocations were queued before these{}",
            lines.0,
            before,
            if ids.is_empty() { String::new() } else { format!(", and the {} printed just now", ids.len()) }
        );
    }
    Ok(ids.len())
}

/// A finished sync invoke: the result on stdout; a failure's error and logs on stderr.
fn print_result(v: &Value) {
    match v["status"].as_str() {
        Some("succeeded") => {
            if let Some(b) = v["result_base64"].as_str() {
                println!("{b}");
            } else {
                println!("{}", show(&v["result"]));
            }
        }
        _ => {
            eprintln!("{}: {}", v["status"].as_str().unwrap_or("?"), v["error"].as_str().unwrap_or(""));
            for l in v["logs"].as_array().into_iter().flatten() {
                eprintln!("  | {}", l["line"].as_str().unwrap_or(""));
            }
            eprintln!("invocation {}", v["id"].as_str().unwrap_or("?"));
        }
    }
}

fn print_invocation(v: &Value) {
    println!("id        {}", v["id"].as_str().unwrap_or("?"));
    println!("function  {} v{}", v["function"].as_str().unwrap_or("?"), v["version"]);
    println!("status    {}", v["status"].as_str().unwrap_or("?"));
    println!("attempts  {}", v["attempts"]);
    if let Some(w) = v["worker"].as_str() {
        println!("worker    {w}");
    }
    if let Some(d) = v["duration_ms"].as_i64() {
        println!("duration  {d} ms");
    }
    if let Some(e) = v["error"].as_str() {
        println!("error     {e}");
    }
    if !v["result"].is_null() || v["result_base64"].is_string() {
        let r = v["result_base64"].as_str().map(|s| format!("(base64) {s}")).unwrap_or_else(|| show(&v["result"]));
        println!("result    {r}");
    }
    let attempts = v["attempt_history"].as_array().cloned().unwrap_or_default();
    if attempts.len() > 1 || attempts.iter().any(|a| a["status"] != "succeeded") {
        println!("attempt history");
        for a in attempts {
            println!(
                "  #{} {:<10} {:<24} {}",
                a["attempt"],
                a["status"].as_str().unwrap_or("?"),
                a["worker"].as_str().unwrap_or(""),
                a["error"].as_str().unwrap_or("")
            );
        }
    }
    let logs = v["logs"].as_array().cloned().unwrap_or_default();
    if !logs.is_empty() {
        println!("logs");
        for l in logs {
            println!("  [{}] {}", l["attempt"], l["line"].as_str().unwrap_or(""));
        }
    }
}
