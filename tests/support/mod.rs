//! Starts the real `handyman` binary and talks to it, for the integration tests.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_handyman");

/// `HANDYMAN_PLUGINS_DIR`, or `<repo>/plugins/dist`.
pub fn plugins_dist() -> PathBuf {
    std::env::var_os("HANDYMAN_PLUGINS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins/dist"))
}

/// A plugins dir of the test's own, with the named kinds linked from the built ones and the
/// given `KIND.toml` texts. Fails (does not skip) when a component is missing.
pub fn plugins(dir: &Path, kinds: &[(&str, &str)]) -> PathBuf {
    let dist = plugins_dist();
    let out = dir.join("plugins");
    std::fs::create_dir_all(&out).expect("create plugins dir");
    for (kind, toml) in kinds {
        let wasm = dist.join(format!("{kind}.wasm"));
        assert!(
            wasm.is_file(),
            "missing handler component {}: build the example plugins first \
             (bash plugins/build.sh) or point HANDYMAN_PLUGINS_DIR at a directory that holds {kind}.wasm",
            wasm.display()
        );
        std::os::unix::fs::symlink(&wasm, out.join(format!("{kind}.wasm"))).expect("link wasm");
        if !toml.is_empty() {
            std::fs::write(out.join(format!("{kind}.toml")), toml).expect("write toml");
        }
    }
    out
}

/// A running server; killed when dropped.
pub struct Server {
    pub child: Child,
    pub url: String,
    pub data_dir: PathBuf,
    pub plugins: PathBuf,
    pub config: Option<PathBuf>,
    pub extra: Vec<String>,
    pub agent: ureq::Agent,
    pub token: Option<String>,
}

impl Server {
    pub fn start(data_dir: &Path, plugins: &Path, config: Option<&Path>, extra: &[&str]) -> Server {
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--plugins")
            .arg(plugins)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--cache-dir")
            .arg(Path::new(env!("CARGO_TARGET_TMPDIR")).join("handyman-compiled"))
            .args(extra);
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.with_extension("log"))
            .expect("server log");
        cmd.env("HANDYMAN_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        let mut child = cmd.spawn().expect("start handyman serve");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let mut reader = BufReader::new(stdout);
            let _ = reader.read_line(&mut line);
            let _ = tx.send(line);
            // Keep draining so the server never blocks on a full pipe.
            let mut sink = String::new();
            while reader.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
                sink.clear();
            }
        });
        let line = match rx.recv_timeout(Duration::from_secs(180)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "server did not start within 180 s; its log: {}",
                    std::fs::read_to_string(data_dir.with_extension("log")).unwrap_or_default()
                );
            }
        };
        let url = line
            .trim()
            .strip_prefix("handyman listening on ")
            .unwrap_or_else(|| {
                panic!(
                    "unexpected first line {line:?}; log: {}",
                    std::fs::read_to_string(data_dir.with_extension("log")).unwrap_or_default()
                )
            })
            .to_string();
        let token = extra
            .iter()
            .position(|a| *a == "--token-file")
            .and_then(|i| extra.get(i + 1))
            .map(|p| {
                std::fs::read_to_string(p)
                    .expect("token")
                    .trim()
                    .to_string()
            });
        let server = Server {
            child,
            url,
            data_dir: data_dir.to_path_buf(),
            plugins: plugins.to_path_buf(),
            config: config.map(Path::to_path_buf),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            agent: ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(30))
                .build(),
            token,
        };
        let start = Instant::now();
        loop {
            if server
                .agent
                .get(&format!("{}/healthz", server.url))
                .call()
                .is_ok()
            {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "healthz never answered"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    /// Starts another server on the same data dir and plugins.
    pub fn restart(&self) -> Server {
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        Server::start(
            &self.data_dir,
            &self.plugins,
            self.config.as_deref(),
            &extra,
        )
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.with_extension("log")).unwrap_or_default()
    }

    fn req(&self, method: &str, path: &str) -> ureq::Request {
        let r = self.agent.request(method, &format!("{}{}", self.url, path));
        match &self.token {
            Some(t) => r.set("Authorization", &format!("Bearer {t}")),
            None => r,
        }
    }

    /// (status, body as JSON or as a string).
    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let req = self.req(method, path);
        let result = match body {
            Some(b) => req.set("Content-Type", "application/json").send_string(b),
            None => req.call(),
        };
        let resp = match result {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{method} {path}: {e}"),
        };
        let status = resp.status();
        let text = resp.into_string().expect("body");
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    pub fn get(&self, path: &str) -> Value {
        let (status, v) = self.call("GET", path, None);
        assert_eq!(status, 200, "GET {path}: {v}");
        v
    }

    pub fn submit(&self, spec: &Value) -> Value {
        let (status, v) = self.call("POST", "/v1/tasks", Some(&spec.to_string()));
        assert_eq!(status, 201, "submit {spec}: {v}");
        v
    }

    pub fn task(&self, id: u64) -> Value {
        self.get(&format!("/v1/tasks/{id}"))
    }

    /// Waits until task `id` is in a terminal state; returns its status.
    pub fn wait_terminal(&self, id: u64, timeout: Duration) -> Value {
        let start = Instant::now();
        loop {
            let t = self.task(id);
            if matches!(
                t["state"].as_str(),
                Some("succeeded" | "failed" | "cancelled")
            ) {
                return t;
            }
            assert!(
                start.elapsed() < timeout,
                "task {id} did not end in {timeout:?}: {t}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs a client command of the binary against this server.
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(BIN);
        cmd.args(args).arg("--server").arg(&self.url);
        if let Some(i) = self.extra.iter().position(|a| a == "--token-file") {
            cmd.arg("--token-file").arg(&self.extra[i + 1]);
        }
        cmd.stdin(Stdio::null())
            .output()
            .expect("run handyman client")
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).trim().to_string()
}
