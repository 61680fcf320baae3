//! The `handyman` command line: `serve`, and the client commands that talk to a server.
//!
//! Exit codes: 0 success; `wait`: 1 when a task ended otherwise than `succeeded`, 2 on
//! timeout; 3 when the server refused the request or could not be reached; 64 on a usage
//! error.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use serde_json::{json, Value};

use crate::client::{Client, ClientError};
use crate::server::{self, ServeOptions};

#[derive(Parser, Debug)]
#[command(
    name = "handyman",
    version,
    about = "Handyman: background tasks run as sandboxed WASM handlers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Debug, Clone)]
struct ClientOpts {
    /// The server's URL.
    #[arg(
        long,
        global = true,
        default_value = "http://127.0.0.1:7411",
        env = "HANDYMAN_SERVER"
    )]
    server: String,
    /// A file holding the bearer token the server wants.
    #[arg(long, global = true, env = "HANDYMAN_TOKEN_FILE")]
    token_file: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server.
    Serve {
        /// TOML: [core], [pools.NAME] slots, [groups.NAME] weight/cap/floor, [api].
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long, default_value = "./handyman-data")]
        data_dir: PathBuf,
        /// Holds KIND.wasm components and optional KIND.toml settings.
        #[arg(long, default_value = "./plugins")]
        plugins: PathBuf,
        #[arg(long, default_value = "127.0.0.1:7411")]
        listen: String,
        /// Requests must carry `Authorization: Bearer <the file's content>`.
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// Where compiled components are cached (default: DATA_DIR/compiled).
        #[arg(long)]
        cache_dir: Option<PathBuf>,
    },
    /// Submit a task; prints its id.
    Submit {
        #[arg(long)]
        kind: String,
        #[arg(long)]
        group: Option<String>,
        #[arg(long, allow_hyphen_values = true)]
        priority: Option<i32>,
        /// The payload, JSON by convention (sent as its text).
        #[arg(long, conflicts_with = "payload_file")]
        payload: Option<String>,
        #[arg(long)]
        payload_file: Option<PathBuf>,
        /// e.g. 30s, 5m.
        #[arg(long)]
        max_runtime: Option<String>,
        #[arg(long)]
        max_retries: Option<u32>,
        #[arg(long)]
        dedup_key: Option<String>,
        /// Ids of tasks that must succeed first, comma separated.
        #[arg(long, value_delimiter = ',')]
        after: Vec<u64>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Show a task.
    Status {
        id: u64,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// List tasks.
    List {
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        group: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Cancel a task.
    Cancel {
        id: u64,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Why is this task not running?
    Explain {
        id: u64,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Wait until tasks end: exit 0 when all succeeded, 1 when any ended otherwise, 2 on timeout.
    Wait {
        #[arg(required = true)]
        ids: Vec<u64>,
        #[arg(long, default_value = "60s")]
        timeout: String,
        #[command(flatten)]
        client: ClientOpts,
    },
}

/// Entry point of the `handyman` binary.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 64 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("handyman: {e}");
            ExitCode::from(3)
        }
    }
}

fn client(opts: &ClientOpts) -> Result<Client, ClientError> {
    let token = match &opts.token_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .map_err(|e| {
                    ClientError::Usage(format!("cannot read token file {}: {e}", p.display()))
                })?
                .trim()
                .to_string(),
        ),
        None => None,
    };
    Ok(Client::new(&opts.server, token))
}

fn duration(text: &str, what: &str) -> Result<Duration, ClientError> {
    humantime::parse_duration(text)
        .map_err(|e| ClientError::Usage(format!("{what} {text:?}: {e} (try 30s, 5m, 1h)")))
}

fn run(command: Command) -> Result<ExitCode, Box<dyn std::error::Error>> {
    match command {
        Command::Serve {
            config,
            data_dir,
            plugins,
            listen,
            token_file,
            cache_dir,
        } => {
            server::serve(ServeOptions {
                config,
                data_dir,
                plugins,
                listen,
                token_file,
                cache_dir,
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Submit {
            kind,
            group,
            priority,
            payload,
            payload_file,
            max_runtime,
            max_retries,
            dedup_key,
            after,
            client: opts,
        } => {
            let mut spec = serde_json::Map::new();
            spec.insert("kind".into(), json!(kind));
            if let Some(g) = group {
                spec.insert("group".into(), json!(g));
            }
            if let Some(p) = priority {
                spec.insert("priority".into(), json!(p));
            }
            let payload = match (payload, payload_file) {
                (Some(p), _) => Some(p),
                (None, Some(f)) => Some(std::fs::read_to_string(&f).map_err(|e| {
                    ClientError::Usage(format!("cannot read payload file {}: {e}", f.display()))
                })?),
                (None, None) => None,
            };
            if let Some(p) = payload {
                spec.insert("payload".into(), json!(p));
            }
            if let Some(m) = max_runtime {
                let d = duration(&m, "--max-runtime")?;
                spec.insert("max_runtime_ms".into(), json!(d.as_millis() as u64));
            }
            if let Some(r) = max_retries {
                spec.insert("max_retries".into(), json!(r));
            }
            if let Some(k) = dedup_key {
                spec.insert("dedup_key".into(), json!(k));
            }
            if !after.is_empty() {
                let deps: Vec<Value> = after.iter().map(|id| json!({ "task": id })).collect();
                spec.insert("depends_on".into(), Value::Array(deps));
            }
            let answer = client(&opts)?.post_json("/v1/tasks", &Value::Object(spec))?;
            let id = answer
                .get("id")
                .and_then(Value::as_u64)
                .ok_or_else(|| ClientError::BadAnswer(format!("no id in {answer}")))?;
            println!("{id}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Status {
            id,
            json,
            client: opts,
        } => {
            let task = client(&opts)?.get_json(&format!("/v1/tasks/{id}"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&task)?);
            } else {
                print_status(&task);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::List {
            state,
            group,
            json,
            client: opts,
        } => {
            let c = client(&opts)?;
            let mut all = Vec::new();
            let mut after = 0u64;
            loop {
                let mut path = format!("/v1/tasks?limit=1000&after={after}");
                if let Some(s) = &state {
                    path.push_str(&format!("&state={}", encode(s)));
                }
                if let Some(g) = &group {
                    path.push_str(&format!("&group={}", encode(g)));
                }
                let page = c.get_json(&path)?;
                if let Some(tasks) = page.get("tasks").and_then(Value::as_array) {
                    all.extend(tasks.iter().cloned());
                }
                match page.get("next_after").and_then(Value::as_u64) {
                    Some(n) => after = n,
                    None => break,
                }
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&Value::Array(all))?);
            } else {
                println!(
                    "{:>8}  {:<10}  {:<16}  {:<16}  {:>7}",
                    "ID", "STATE", "KIND", "GROUP", "ATTEMPT"
                );
                for t in &all {
                    println!(
                        "{:>8}  {:<10}  {:<16}  {:<16}  {:>7}",
                        t["id"],
                        t["state"].as_str().unwrap_or("?"),
                        t["kind"].as_str().unwrap_or("?"),
                        t["group"].as_str().unwrap_or("?"),
                        t["attempt"]
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Cancel { id, client: opts } => {
            let answer = client(&opts)?.post_json(&format!("/v1/tasks/{id}/cancel"), &json!({}))?;
            match answer.get("outcome").and_then(Value::as_str) {
                Some("already_terminal") => println!(
                    "task {id} had already ended: {}",
                    answer["state"].as_str().unwrap_or("?")
                ),
                Some("interrupting") => println!("task {id} is running: interrupting it"),
                Some(other) => println!("task {id}: {other}"),
                None => println!("{answer}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Explain { id, client: opts } => {
            let answer = client(&opts)?.get_json(&format!("/v1/tasks/{id}/explain"))?;
            print!("{}", answer["text"].as_str().unwrap_or_default());
            Ok(ExitCode::SUCCESS)
        }
        Command::Wait {
            ids,
            timeout,
            client: opts,
        } => {
            let timeout = duration(&timeout, "--timeout")?;
            let c = client(&opts)?;
            let start = Instant::now();
            let mut pending = ids.clone();
            let mut all_succeeded = true;
            let mut pause = Duration::from_millis(20);
            loop {
                let mut still = Vec::new();
                for id in pending {
                    let task = c.get_json(&format!("/v1/tasks/{id}"))?;
                    match task["state"].as_str() {
                        Some("succeeded") => {}
                        Some(s @ ("failed" | "cancelled")) => {
                            all_succeeded = false;
                            eprintln!(
                                "task {id} {s}: {}",
                                task["reason"].as_str().unwrap_or("no reason given")
                            );
                        }
                        _ => still.push(id),
                    }
                }
                pending = still;
                if pending.is_empty() {
                    return Ok(ExitCode::from(if all_succeeded { 0 } else { 1 }));
                }
                if start.elapsed() >= timeout {
                    let list: Vec<String> = pending.iter().map(u64::to_string).collect();
                    eprintln!("timed out waiting for tasks {}", list.join(", "));
                    return Ok(ExitCode::from(2));
                }
                std::thread::sleep(pause.min(timeout.saturating_sub(start.elapsed())));
                pause = (pause * 2).min(Duration::from_millis(250));
            }
        }
    }
}

fn print_status(t: &Value) {
    let s = |k: &str| t[k].as_str().unwrap_or("-").to_string();
    println!("id:        {}", t["id"]);
    println!("kind:      {}", s("kind"));
    println!("group:     {}", s("group"));
    println!("pool:      {}", s("pool"));
    println!("state:     {}", s("state"));
    println!("attempt:   {}", t["attempt"]);
    println!(
        "failures:  {} of {} retries",
        t["failures"], t["max_retries"]
    );
    if let Some(r) = t["reason"].as_str() {
        println!("reason:    {r}");
    }
    if let Some(p) = t["progress"].as_f64() {
        println!("progress:  {:.0}%", p * 100.0);
    }
    if let Some(o) = t.get("output") {
        match o.as_str() {
            Some(text) => println!("output:    {text}"),
            None => println!("output:    {o}"),
        }
    }
    if let Some(attempts) = t["attempts"].as_array() {
        for a in attempts {
            let cleanup = a["cleanup"]
                .as_str()
                .map(|c| format!("; cleanup {c}"))
                .unwrap_or_default();
            println!(
                "attempt {}: {}{cleanup}",
                a["attempt"],
                a["outcome"].as_str().unwrap_or("?")
            );
        }
    }
}

/// Percent-encodes a query value.
fn encode(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
