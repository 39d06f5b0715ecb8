//! A simulated `smolvm serve` as a process of its own (`smolvm-fake serve start`), for the
//! tests that run the harness over the API: its machines live in a fake state directory that
//! the fake CLI reads too, so a test can list what is left with either front end.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const FAKE: &str = env!("CARGO_BIN_EXE_smolvm-fake");

/// A running server; SIGTERMed and reaped on drop.
pub struct SimServer {
    child: Option<Child>,
    pub url: String,
    pub state: PathBuf,
    pub version: String,
    pub socket: PathBuf,
    listen: String,
    env: Vec<(String, String)>,
}

impl SimServer {
    /// A server on a unix socket in `dir`, with its state in `dir/state`.
    pub fn start(dir: &Path, version: &str) -> SimServer {
        SimServer::start_with(dir, version, &[])
    }

    pub fn start_with(dir: &Path, version: &str, env: &[(&str, &str)]) -> SimServer {
        SimServer::start_on(dir, dir.join("state"), version, env)
    }

    /// A server on a unix socket in `dir`, over the fake state `state`.
    pub fn start_on(dir: &Path, state: PathBuf, version: &str, env: &[(&str, &str)]) -> SimServer {
        let socket = dir.join("api.sock");
        let mut server = SimServer {
            child: None,
            url: String::new(),
            state,
            version: version.to_string(),
            listen: format!("unix://{}", socket.display()),
            socket,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let mut child = Command::new(FAKE)
            .args(["serve", "start", "--listen", &self.listen])
            .env("SMOLVM_FAKE_STATE", &self.state)
            .env("SMOLVM_FAKE_VERSION", &self.version)
            .env_remove("SMOLVM_FAKE_FAIL")
            .env_remove("SMOLVM_FAKE_HANG")
            .env_remove("SMOLVM_FAKE_LATENCY")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start smolvm-fake serve");
        self.url = await_listening(&mut child);
        self.child = Some(child);
    }

    /// Stop the server (SIGTERM, as smolvm's own; its VMs, here the fake's machines, stay).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill only sends a signal to our own child, not yet reaped.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start it again on the same socket and state.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Start it again with these extra variables (the fake's knobs) instead of the old ones.
    pub fn restart_with(&mut self, env: &[(&str, &str)]) {
        self.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.restart();
    }

    /// The extra variables it runs with.
    pub fn env(&self) -> &[(String, String)] {
        &self.env
    }

    /// The fake's machines, by name (the CLI's view of the same state).
    pub fn machines(&self) -> Vec<String> {
        smolvm_harness::sim::read_fake_state(&self.state)
            .map(|ms| ms.into_iter().map(|m| m.name).collect())
            .unwrap_or_default()
    }

    /// A CLI client of the same state, to make machines "by hand" behind the server (on the
    /// server's host: with its clock).
    pub fn cli(&self) -> smolvm_harness::Smolvm {
        let mut cli = smolvm_harness::Smolvm::new(FAKE)
            .with_process_env("SMOLVM_FAKE_STATE", self.state.display().to_string())
            .with_process_env("SMOLVM_FAKE_VERSION", &self.version)
            .with_version(self.version.parse().expect("a version"));
        for (k, v) in &self.env {
            if k == "SMOLVM_FAKE_CLOCK_SKEW" {
                cli = cli.with_process_env(k, v);
            }
        }
        cli
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The URL a just-started `smolvm serve` (real or fake) prints when it is ready
/// (`smolvm API server listening on <url>`), read from its piped stdout within 20 s; past
/// that the child is killed and the caller panics.
pub fn await_listening(child: &mut Child) -> String {
    let stdout = child.stdout.take().expect("the server's stdout, piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if let Some(url) = line.strip_prefix("smolvm API server listening on ") {
                    return url.to_string();
                }
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("no `listening on` line from the server within 20 s");
            }
        }
    }
}

/// Wait until `path` exists, at most `limit`; whether it does.
pub fn wait_for(path: &Path, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while !path.exists() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// This test binary again, running only the (ignored) child-process subject `test`, in the
/// environment of a user who set none of the harness's variables: no `SMOLVM_HOST`,
/// `SMOLVM_BIN`, `SMOLVM_HARNESS_REQUIRE`, `_KEEP`, `_RUN_ID`, and nothing of nextest's (so a
/// `Golden::shared` is the child's alone under nextest as under cargo test). The caller adds
/// what the scenario sets.
pub fn rerun(test: &str) -> Command {
    let mut cmd = Command::new(std::env::current_exe().expect("the test binary"));
    cmd.args(["--exact", test, "--nocapture", "--include-ignored"])
        .env_remove("SMOLVM_HOST")
        .env_remove("SMOLVM_BIN")
        .env_remove("SMOLVM_HARNESS_REQUIRE")
        .env_remove("SMOLVM_HARNESS_KEEP")
        .env_remove("SMOLVM_HARNESS_RUN_ID");
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("NEXTEST") {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// Wait for a child (bounded; killed past `limit`), returning (success, stdout + stderr).
pub fn finish(child: Child, limit: Duration) -> (bool, String) {
    let (status, text) = finish_status(child, limit);
    (status.success(), text)
}

/// [`finish`], with the exit status itself (a signal, say).
pub fn finish_status(mut child: Child, limit: Duration) -> (std::process::ExitStatus, String) {
    use std::io::Read;
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let mut text = String::new();
            if let Some(mut s) = child.stdout.take() {
                let _ = s.read_to_string(&mut text);
            }
            if let Some(mut s) = child.stderr.take() {
                let _ = s.read_to_string(&mut text);
            }
            return (status, text);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("child did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The machine names of the ledger entries in the harness state directory `state`, sorted.
pub fn ledger_names(state: &Path) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(state.join("ledger")) else {
        return Vec::new();
    };
    let mut names: Vec<String> = dir
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .filter_map(|e| {
            let v: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(e.path()).ok()?).ok()?;
            Some(v["name"].as_str()?.to_string())
        })
        .collect();
    names.sort();
    names
}
