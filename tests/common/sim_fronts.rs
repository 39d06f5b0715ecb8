//! Both front ends of the simulation under test (the in-process `SimulatedRunner` and the
//! `smolvm-fake` process), driven by argv, and host-side helpers for the ports they publish:
//! shared by tests/sim_workloads.rs and tests/sim_fork.rs.

#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use smolvm_harness::runner::{Invocation, Runner};
use smolvm_harness::sim::{
    read_fake_state, SimMachine, SimulatedRunner, FAIL_ENV, HANG_ENV, LATENCY_ENV, LOG_ENV,
    STATE_ENV, VERSION_ENV,
};
use smolvm_harness::Version;

pub const FAKE: &str = env!("CARGO_BIN_EXE_smolvm-fake");
pub const HELPER_ARG: &str = "__smolvm-fake-serve";

#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// One simulated smolvm: in-process, or the fake binary with its own state dir.
pub enum Front {
    Mem(SimulatedRunner),
    Fake {
        dir: tempfile::TempDir,
        version: Version,
        cwd: Option<PathBuf>,
    },
}

impl Front {
    pub fn both(v: Version) -> [Front; 2] {
        [Front::Mem(SimulatedRunner::new(v)), Front::fake(v)]
    }

    pub fn fake(v: Version) -> Front {
        Front::Fake {
            dir: tempfile::tempdir().unwrap(),
            version: v,
            cwd: None,
        }
    }

    pub fn version(&self) -> Version {
        match self {
            Front::Mem(r) => r.version(),
            Front::Fake { version, .. } => *version,
        }
    }

    pub fn label(&self) -> String {
        match self {
            Front::Mem(r) => format!("in-process {}", r.version()),
            Front::Fake { version, .. } => format!("fake {version}"),
        }
    }

    pub fn state_dir(&self) -> Option<PathBuf> {
        match self {
            Front::Mem(_) => None,
            Front::Fake { dir, .. } => Some(dir.path().join("state")),
        }
    }

    pub fn log(&self) -> Option<PathBuf> {
        match self {
            Front::Mem(_) => None,
            Front::Fake { dir, .. } => Some(dir.path().join("log.jsonl")),
        }
    }

    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Out {
        match self {
            Front::Mem(r) => {
                let o = r
                    .run(&Invocation {
                        program: "smolvm".into(),
                        args: args.iter().map(|s| s.to_string()).collect(),
                        env: env
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .collect(),
                        timeout: Some(Duration::from_secs(30)),
                    })
                    .unwrap();
                Out {
                    code: o.code.unwrap(),
                    stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
                    stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
                }
            }
            Front::Fake { dir, version, cwd } => {
                let mut c = Command::new(FAKE);
                c.args(args)
                    .env(STATE_ENV, dir.path().join("state"))
                    .env(VERSION_ENV, version.to_string())
                    .env(LOG_ENV, dir.path().join("log.jsonl"))
                    .env_remove(FAIL_ENV)
                    .env_remove(LATENCY_ENV)
                    .env_remove(HANG_ENV)
                    .envs(env.iter().copied())
                    .stdin(Stdio::null());
                if let Some(cwd) = cwd {
                    c.current_dir(cwd);
                }
                let o = c.output().unwrap();
                Out {
                    code: o.status.code().unwrap(),
                    stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
                    stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
                }
            }
        }
    }

    pub fn run(&self, args: &[&str]) -> Out {
        self.run_env(args, &[])
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert_eq!(o.code, 0, "{} {args:?}: {o:?}", self.label());
        o.stdout
    }

    /// `machine create` with the name where this version wants it.
    pub fn create_args(&self, name: &str, extra: &[&str]) -> Vec<String> {
        let mut w: Vec<String> = vec!["machine".into(), "create".into()];
        w.extend(extra.iter().map(|s| s.to_string()));
        if self.version() >= Version::new(1, 0, 2) {
            w.extend(["--name".into(), name.into()]);
        } else {
            w.push(name.into());
        }
        w
    }

    pub fn create(&self, name: &str, extra: &[&str]) -> Out {
        let args = self.create_args(name, extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.run(&args)
    }

    pub fn delete(&self, name: &str) -> Out {
        if self.version() >= Version::new(1, 0, 2) {
            self.run(&["machine", "delete", "-f", "--name", name])
        } else {
            self.run(&["machine", "delete", "-f", name])
        }
    }

    pub fn data_dir(&self, name: &str) -> Out {
        if self.version() >= Version::new(1, 0, 2) {
            self.run(&["machine", "data-dir", "--name", name])
        } else {
            self.run(&["machine", "data-dir", name])
        }
    }

    pub fn machine(&self, name: &str) -> Option<SimMachine> {
        match self {
            Front::Mem(r) => r.machine(name),
            Front::Fake { dir, .. } => read_fake_state(dir.path().join("state"))
                .unwrap()
                .into_iter()
                .find(|m| m.name == name),
        }
    }

    /// `start`, retried while a just-closed host port still reads as in use: a child that
    /// another test is spawning at that instant holds a copy of the socket until its `exec`
    /// (the notes' advice for real smolvm too: retry start on "in use").
    pub fn start(&self, name: &str) {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let o = self.run(&["machine", "start", "--name", name]);
            if o.code == 0 {
                return;
            }
            assert!(
                o.stderr.contains("Address already in use") && Instant::now() < end,
                "{} start {name}: {o:?}",
                self.label()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn sh(&self, name: &str, script: &str) -> Out {
        self.run(&["machine", "exec", "--name", name, "--", "sh", "-c", script])
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A connection's whole answer; `Err` if nothing listens.
pub fn exchange(port: u16, request: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    if !request.is_empty() {
        // The forwarder may close before reading anything: that is the answer.
        let _ = s.write_all(request);
    }
    let _ = s.shutdown(Shutdown::Write);
    let mut buf = Vec::new();
    match s.read_to_end(&mut buf) {
        Ok(_) => Ok(buf),
        Err(e) if e.kind() == ErrorKind::ConnectionReset => Ok(buf),
        Err(e) => Err(e),
    }
}

/// Bind `port` as a foreign process would, once the machine's copy is surely closed.
pub fn squat(port: u16) -> TcpListener {
    assert!(refused(port));
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpListener::bind(("127.0.0.1", port)) {
            Ok(l) => return l,
            Err(e) if Instant::now() > end => panic!("bind {port}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Nothing listens on `port`. Retried for a while: a child process that another test is
/// spawning at this instant can hold a copy of a just-closed socket until its `exec`.
pub fn refused(port: u16) -> bool {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => return true,
            _ if Instant::now() > end => return false,
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Pids of the fake's port helpers serving `state_dir`.
pub fn helpers_of(state_dir: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let zombie = std::fs::read_to_string(e.path().join("stat"))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(true);
        if !zombie
            && args.get(1).map(String::as_str) == Some(HELPER_ARG)
            && args.get(2).map(String::as_str) == Some(&*state_dir.to_string_lossy())
        {
            pids.push(pid);
        }
    }
    pids
}

/// Wait (the helper's own poll is about 200 ms) until no helper serves `state_dir`.
pub fn helpers_gone_within(state_dir: &Path, limit: Duration) -> bool {
    let end = Instant::now() + limit;
    loop {
        if helpers_of(state_dir).is_empty() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
