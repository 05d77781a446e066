//! The `warren batch`, `warren timers` and `warren deliveries` commands.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Subcommand;
use futures_util::StreamExt;
use serde_json::Value;

use crate::client::Client;

#[derive(Subcommand, Debug)]
pub(crate) enum BatchCommand {
    /// Submit a batch: one invocation per item, then wait and show progress until it ends.
    ///
    /// FILE holds NDJSON (one JSON item per line; streamed, so it can be any size) or one JSON
    /// array (read whole). Examples:
    ///   warren batch submit items.ndjson --function resize
    ///   warren batch submit items.json --function resize --then report --no-wait
    ///   warren batch submit orders.ndjson --function ship --keyed
    #[command(verbatim_doc_comment)]
    Submit {
        /// The items ('-' reads NDJSON from stdin).
        file: PathBuf,
        /// The function each item is given to.
        #[arg(long, short = 'f')]
        function: String,
        /// A follow-up function, invoked once with every item's result when all are final.
        #[arg(long)]
        then: Option<String>,
        /// Print the batch id once submitted instead of following its progress.
        #[arg(long)]
        no_wait: bool,
        /// Each item is {"key": "...", "input": ...}, an idempotency key per item. An item whose
        /// key was used before (within management's window, 24 h by default) with the same
        /// input is not run again (counted as repeated); with another input the submission
        /// stops there. Submitting the same file again after a failure is then safe.
        #[arg(long)]
        keyed: bool,
    },
    /// Show a batch: total, items per status, state, follow-up.
    Status {
        /// The batch id.
        id: String,
        /// Keep showing progress until the batch ends.
        #[arg(long)]
        follow: bool,
    },
    /// List recent batches.
    List {
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Cancel a batch: queued items are not run; running ones finish (or, with --running,
    /// are stopped: their process trees killed, recorded cancelled).
    Cancel {
        /// The batch id.
        id: String,
        /// Stop the items running now too.
        #[arg(long)]
        running: bool,
    },
}

const SHOWN: [&str; 7] = ["queued", "running", "succeeded", "failed", "timed_out", "dead", "cancelled"];

fn count(b: &Value, status: &str) -> i64 {
    b["counts"][status].as_i64().unwrap_or(0)
}

/// `[#####.....] 4500/10000  succeeded 4400  failed 100  running 8  queued 5492`
fn progress_line(b: &Value) -> String {
    let total = b["total"].as_i64().unwrap_or(0);
    let done = total - count(b, "queued") - count(b, "running");
    let width = 30usize;
    let filled = if total > 0 { ((done.max(0) as usize * width) / total as usize).min(width) } else { width };
    let mut line = format!("[{}{}] {done}/{total}", "#".repeat(filled), ".".repeat(width - filled));
    for s in SHOWN {
        let n = count(b, s);
        if n > 0 {
            line.push_str(&format!("  {s} {n}"));
        }
    }
    line.push_str(&format!("  ({})", b["state"].as_str().unwrap_or("?")));
    line
}

fn summary(b: &Value) -> String {
    let mut s = format!(
        "batch {} {}: {} items of {}",
        b["id"].as_str().unwrap_or("?"),
        b["state"].as_str().unwrap_or("?"),
        b["total"],
        b["function"].as_str().unwrap_or("?")
    );
    for st in SHOWN {
        let n = count(b, st);
        if n > 0 {
            s.push_str(&format!(", {n} {st}"));
        }
    }
    if let Some(f) = b["followup_invocation"].as_str() {
        s.push_str(&format!("\nfollow-up {} invoked: warren get {f}", b["then"].as_str().unwrap_or("?")));
    }
    if let Some(e) = b["error"].as_str() {
        s.push_str(&format!("\nnote: {e}"));
    }
    s
}

fn ended(b: &Value) -> bool {
    match b["state"].as_str() {
        Some("done") => true,
        Some("cancelled") => !b["finished_ms"].is_null(),
        _ => false,
    }
}

/// Polls a batch and redraws its progress line until it ends; prints the summary.
async fn follow(api: &Client, id: &str, json: bool) -> anyhow::Result<ExitCode> {
    let tty = std::io::stderr().is_terminal();
    let mut last = String::new();
    loop {
        let b = api.batch(id).await?;
        let line = progress_line(&b);
        if !json && line != last {
            if tty {
                eprint!("\r\x1b[2K{line}");
            } else {
                eprintln!("{line}");
            }
            let _ = std::io::stderr().flush();
            last = line;
        }
        if ended(&b) {
            if !json && tty {
                eprintln!();
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&b)?);
            } else {
                println!("{}", summary(&b));
            }
            let bad = ["failed", "timed_out", "dead"].iter().any(|s| count(&b, s) > 0);
            return Ok(if bad { ExitCode::from(2) } else { ExitCode::SUCCESS });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub(crate) async fn run(cmd: BatchCommand, api: &Client, json: bool) -> anyhow::Result<ExitCode> {
    match cmd {
        BatchCommand::Submit { file, function, then, no_wait, keyed } => {
            let sent = Arc::new(AtomicU64::new(0));
            let (body, content_type, size) = if file.as_os_str() == "-" {
                let stream = tokio_util::io::ReaderStream::new(tokio::io::stdin());
                (counted(stream, sent.clone()), "application/x-ndjson", None)
            } else {
                let f = tokio::fs::File::open(&file)
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
                let size = f.metadata().await.map(|m| m.len()).ok();
                let array = first_byte(&file)? == Some(b'[');
                let stream = tokio_util::io::ReaderStream::with_capacity(f, 256 << 10);
                let ct = if array { "application/json" } else { "application/x-ndjson" };
                (counted(stream, sent.clone()), ct, size)
            };
            // Upload progress, while the items stream in.
            let show = (!json && std::io::stderr().is_terminal()).then(|| {
                let sent = sent.clone();
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(Duration::from_millis(250)).await;
                        let n = sent.load(Ordering::Relaxed);
                        match size {
                            Some(s) if s > 0 => eprint!("\r\x1b[2Kuploading {}% ({n} bytes)", n * 100 / s),
                            _ => eprint!("\r\x1b[2Kuploading {n} bytes"),
                        }
                    }
                })
            });
            let submitted = api.submit_batch(&function, then.as_deref(), keyed, content_type, body).await;
            if let Some(task) = show {
                task.abort();
                eprint!("\r\x1b[2K");
            }
            let b = submitted?;
            let id = b["id"].as_str().unwrap_or_default().to_string();
            let repeated = match b["repeated"].as_i64() {
                Some(n) if n > 0 => format!(" ({n} repeated keys used before: not run again)"),
                _ => String::new(),
            };
            if no_wait {
                if json {
                    println!("{}", serde_json::to_string_pretty(&b)?);
                } else {
                    println!("{id}");
                    eprintln!(
                        "{} items submitted{repeated}; follow with: warren batch status {id} --follow",
                        b["total"]
                    );
                }
                return Ok(ExitCode::SUCCESS);
            }
            if !json {
                eprintln!("batch {id}: {} items submitted{repeated}", b["total"]);
            }
            follow(api, &id, json).await
        }
        BatchCommand::Status { id, follow: true } => follow(api, &id, json).await,
        BatchCommand::Status { id, follow: false } => {
            let b = api.batch(&id).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&b)?);
            } else {
                println!("{}", progress_line(&b));
                println!("{}", summary(&b));
            }
            Ok(ExitCode::SUCCESS)
        }
        BatchCommand::List { limit } => {
            let v = api.batches(limit).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let list = v["batches"].as_array().cloned().unwrap_or_default();
                if list.is_empty() {
                    println!("no batches yet: warren batch submit FILE --function NAME");
                }
                for b in list {
                    println!(
                        "{}  {:<16} {}",
                        b["id"].as_str().unwrap_or("?"),
                        b["function"].as_str().unwrap_or("?"),
                        progress_line(&b)
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        BatchCommand::Cancel { id, running } => {
            let b = api.cancel_batch(&id, running).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&b)?);
            } else if running {
                println!(
                    "cancelled: {} items will not run or were stopped ({} running ones)",
                    count(&b, "cancelled"),
                    b["stopped"]
                );
            } else {
                println!("cancelled: {} items will not run; running ones finish", count(&b, "cancelled"));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn first_byte(path: &PathBuf) -> anyhow::Result<Option<u8>> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let mut buf = [0u8; 4096];
    let n = f.read(&mut buf)?;
    Ok(buf[..n].iter().copied().find(|b| !b.is_ascii_whitespace()))
}

fn counted<S>(stream: S, sent: Arc<AtomicU64>) -> reqwest::Body
where
    S: futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send + Sync + 'static,
{
    reqwest::Body::wrap_stream(stream.map(move |part| {
        if let Ok(p) = &part {
            sent.fetch_add(p.len() as u64, Ordering::Relaxed);
        }
        part
    }))
}

/// `warren timers`.
pub(crate) async fn timers(api: &Client, json: bool) -> anyhow::Result<ExitCode> {
    let v = api.timers().await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let list = v["timers"].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        println!("no timer functions: add a [timer] section with a schedule to a function.toml");
    }
    for t in list {
        println!(
            "{:<20} {:<18} {:<14} next {}  last {}",
            t["function"].as_str().unwrap_or("?"),
            t["schedule"].as_str().unwrap_or("?"),
            t["timezone"].as_str().unwrap_or("UTC"),
            t["next_tick"].as_str().unwrap_or("-"),
            t["last_tick"].as_str().unwrap_or("-"),
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `warren deliveries ID [--retry]`.
pub(crate) async fn deliveries(api: &Client, id: &str, retry: bool, json: bool) -> anyhow::Result<ExitCode> {
    if retry {
        let v = api.retry_deliveries(id).await?;
        if !json {
            println!("{} failed deliveries will be tried again", v["retried"]);
        }
    }
    let v = api.deliveries(id).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let list = v["deliveries"].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        println!("no outputs applied to this invocation");
    }
    for d in list {
        println!(
            "output {:<2} {:<10} attempts {:<3} {}{}",
            d["output"].as_i64().unwrap_or(0) + 1,
            d["status"].as_str().unwrap_or("?"),
            d["attempts"],
            d["target"].as_str().unwrap_or("?"),
            d["last_error"].as_str().map(|e| format!("  ({e})")).unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}
