//! Process-level tests of the `smolvm-fake` binary: lifecycle on both dialects, failure
//! injection, the JSON log (and its redaction), and parallel processes sharing one state.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use smolvm_harness::runner::{Invocation, ProcessRunner, Runner};
use smolvm_harness::sim::{
    read_fake_state, SimState, FAIL_ENV, HANG_ENV, LATENCY_ENV, LOG_ENV, STATE_ENV, VERSION_ENV,
};
use smolvm_harness::Error;

const FAKE: &str = env!("CARGO_BIN_EXE_smolvm-fake");

/// One fake installation: a state dir, a log file, a version and knobs.
struct Fake {
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl Fake {
    fn new(version: &str) -> Fake {
        let dir = tempfile::tempdir().expect("tempdir");
        let env = vec![
            (
                STATE_ENV.into(),
                dir.path().join("state").display().to_string(),
            ),
            (VERSION_ENV.into(), version.into()),
            (
                LOG_ENV.into(),
                dir.path().join("log.jsonl").display().to_string(),
            ),
        ];
        Fake { dir, env }
    }

    fn with(mut self, key: &str, value: &str) -> Fake {
        self.env.push((key.into(), value.into()));
        self
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(FAKE);
        c.args(args)
            .envs(self.env.iter().cloned())
            .stdin(Stdio::null());
        // Knobs from the developer's shell must not leak into the test.
        for var in [FAIL_ENV, LATENCY_ENV, HANG_ENV] {
            if !self.env.iter().any(|(k, _)| k == var) {
                c.env_remove(var);
            }
        }
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("spawn smolvm-fake")
    }

    /// Run and require exit 0; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: stderr {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn invocation(&self, args: &[&str], timeout: Duration) -> Invocation {
        Invocation {
            program: FAKE.into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            env: self.env.clone(),
            timeout: Some(timeout),
        }
    }

    fn log_lines(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(self.dir.path().join("log.jsonl")).unwrap_or_default();
        text.lines()
            .map(|l| serde_json::from_str(l).expect("each log line is JSON"))
            .collect()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log.jsonl")).unwrap_or_default()
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn names_in_ls(json: &str) -> BTreeSet<String> {
    let v: Value = serde_json::from_str(json).expect("ls --json is JSON");
    v.as_array()
        .expect("an array")
        .iter()
        .map(|m| m["name"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn lifecycle(version: &str, create: &[&str], delete: &[&str]) {
    let fake = Fake::new(version);
    assert_eq!(fake.ok(&["--version"]), format!("smolvm {version}\n"));
    assert_eq!(fake.ok(&["machine", "ls", "--json"]), "[]\n");
    assert_eq!(fake.ok(create), "Created machine: web\n");

    let ls: Value = serde_json::from_str(&fake.ok(&["machine", "ls", "--json"])).unwrap();
    assert_eq!(ls[0]["name"], "web");
    assert_eq!(ls[0]["state"], "created");
    assert_eq!(ls[0]["image"], "alpine");
    assert_eq!(ls[0]["network"], true);
    assert_eq!(ls[0].get("labels").is_some(), version == "1.9.2");

    let started = fake.ok(&["machine", "start", "--name", "web"]);
    assert!(
        started.starts_with("Machine 'web' running (PID: "),
        "{started}"
    );
    let pid = read_fake_state(fake.state_dir()).unwrap()[0].pid;
    assert!(pid.is_some());

    assert_eq!(
        fake.ok(&["machine", "exec", "--name", "web", "--", "echo", "hello"]),
        "hello\n"
    );
    assert_eq!(
        fake.ok(&["machine", "exec", "--name", "web", "--env=B=3", "--", "env"]),
        "A=1\nB=3\n"
    );
    let exit = fake.run(&[
        "machine", "exec", "--name", "web", "--", "sh", "-c", "exit 7",
    ]);
    assert_eq!(exit.status.code(), Some(7));

    let host_in = fake.path("in.bin");
    std::fs::write(&host_in, [0u8, 1, 2, 255]).unwrap();
    fake.ok(&["machine", "cp", &host_in, "web:/data/in.bin"]);
    let host_out = fake.path("out.bin");
    fake.ok(&["machine", "cp", "web:/data/in.bin", &host_out]);
    assert_eq!(std::fs::read(&host_out).unwrap(), [0u8, 1, 2, 255]);

    assert_eq!(
        fake.ok(&["machine", "stop", "--name", "web"]),
        "Stopping machine 'web'...\nStopped machine: web\n"
    );
    let machines = read_fake_state(fake.state_dir()).unwrap();
    assert_eq!(machines[0].state, SimState::Stopped);
    assert_eq!(machines[0].files.get("/data/in.bin").map(Vec::len), Some(4));
    assert_eq!(
        machines[0].env,
        [
            ("A".to_string(), "1".to_string()),
            ("B".to_string(), "2".to_string())
        ]
    );

    assert_eq!(
        fake.ok(delete),
        "Cleaning up data directory for vm: web\nDeleted machine: web\n"
    );
    assert_eq!(fake.ok(&["machine", "ls", "--json"]), "[]\n");
    assert_eq!(fake.ok(&["machine", "ls"]), "No machines found\n");
    assert!(read_fake_state(fake.state_dir()).unwrap().is_empty());
}

#[test]
fn lifecycle_on_0_8_0() {
    lifecycle(
        "0.8.0",
        &[
            "machine",
            "create",
            "--image",
            "alpine",
            "--net",
            "-e",
            "A=1",
            "--env=B=2",
            "web",
        ],
        &["machine", "delete", "-f", "web"],
    );
}

#[test]
fn lifecycle_on_1_9_2() {
    lifecycle(
        "1.9.2",
        &[
            "vm",
            "create",
            "--name",
            "web",
            "-I",
            "alpine",
            "--net",
            "-e",
            "A=1",
            "--env=B=2",
        ],
        &["machine", "rm", "-f", "--name", "web"],
    );
}

/// Without `SMOLVM_FAKE_STATE` the fake keeps machines in `$TMPDIR/smolvm-fake-<uid>`,
/// created 0700, across invocations: `SMOLVM_BIN` alone is enough for a downstream crate.
#[test]
fn missing_state_dir_defaults_to_a_private_dir_under_tmpdir() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(FAKE)
            .args(args)
            .env_remove(STATE_ENV)
            .env("TMPDIR", tmp.path())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        out
    };
    run(&[
        "machine", "create", "--name", "web", "--image", "alpine", "--net",
    ]);
    let ls = run(&["machine", "ls", "--json"]);
    assert!(String::from_utf8_lossy(&ls.stdout).contains("\"web\""));
    // SAFETY: getuid has no preconditions and cannot fail.
    let dir = tmp
        .path()
        .join(format!("smolvm-fake-{}", unsafe { libc::getuid() }));
    let names: Vec<String> = read_fake_state(&dir)
        .unwrap()
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert_eq!(names, ["web"]);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "{mode:o}");
}

/// A default directory that someone else could control is refused, naming the way out.
#[test]
fn unusable_default_state_dir_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    // SAFETY: getuid has no preconditions and cannot fail.
    let dir = tmp
        .path()
        .join(format!("smolvm-fake-{}", unsafe { libc::getuid() }));
    std::os::unix::fs::symlink(tmp.path(), &dir).unwrap();
    let out = Command::new(FAKE)
        .arg("--version")
        .env_remove(STATE_ENV)
        .env("TMPDIR", tmp.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = stderr(&out);
    assert!(
        text.starts_with("Error: smolvm-fake: SMOLVM_FAKE_STATE is not set and the default"),
        "{text}"
    );
    assert!(text.contains("not a directory"), "{text}");
}

#[test]
fn bad_configuration_is_a_clear_error() {
    for (var, value, needle) in [
        (VERSION_ENV, "one.two", "SMOLVM_FAKE_VERSION"),
        (FAIL_ENV, "strat", "unknown subcommand key \"strat\""),
        (LATENCY_ENV, "exec=20", "time unit needed"),
        (HANG_ENV, "nope", "unknown subcommand key"),
    ] {
        let out = Fake::new("1.9.2").with(var, value).run(&["--version"]);
        assert_eq!(out.status.code(), Some(1), "{var}");
        assert!(stderr(&out).contains(needle), "{var}: {}", stderr(&out));
    }
}

#[test]
fn injected_failure_exits_1_and_changes_nothing() {
    let fake = Fake::new("1.9.2").with(FAIL_ENV, "start, exec");
    fake.ok(&["machine", "create", "-n", "web", "-I", "alpine", "--net"]);
    let out = fake.run(&["machine", "start", "--name", "web"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "Error: agent operation failed: start: injected failure\n"
    );
    assert_eq!(
        read_fake_state(fake.state_dir()).unwrap()[0].state,
        SimState::Created
    );
    // A usage error is still a usage error: smolvm parses before it does any work.
    let usage = fake.run(&["machine", "start", "--nmae", "web"]);
    assert_eq!(usage.status.code(), Some(2));
}

#[test]
fn latency_is_outside_the_lock_so_parallel_calls_overlap() {
    let fake = Arc::new(Fake::new("1.9.2").with(LATENCY_ENV, "ls=400ms"));
    let start = Instant::now();
    fake.ok(&["machine", "ls"]);
    assert!(start.elapsed() >= Duration::from_millis(400));

    let start = Instant::now();
    let threads: Vec<_> = (0..6)
        .map(|_| {
            let fake = Arc::clone(&fake);
            thread::spawn(move || fake.ok(&["machine", "ls", "--json"]))
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), "[]\n");
    }
    // Serialised they would take 2.4 s.
    assert!(
        start.elapsed() < Duration::from_millis(1800),
        "took {:?}",
        start.elapsed()
    );
}

#[test]
fn hang_is_killed_by_the_host_timeout_and_leaves_the_state_usable() {
    let fake = Fake::new("1.9.2").with(HANG_ENV, "exec");
    fake.ok(&["machine", "create", "-n", "web", "-I", "alpine", "--net"]);
    fake.ok(&["machine", "start", "--name", "web"]);
    let start = Instant::now();
    let err = ProcessRunner
        .run(&fake.invocation(
            &["machine", "exec", "--name", "web", "--", "true"],
            Duration::from_millis(300),
        ))
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    assert!(start.elapsed() < Duration::from_secs(5));
    // The killed process held no lock: the next call answers at once.
    let start = Instant::now();
    assert!(fake
        .ok(&["machine", "ls", "--json"])
        .contains("\"running\""));
    assert!(start.elapsed() < Duration::from_secs(2));
}

#[test]
fn guest_sleep_really_sleeps_and_timeout_gives_124() {
    let fake = Fake::new("0.8.0");
    fake.ok(&["machine", "create", "--image", "alpine", "--net", "web"]);
    fake.ok(&["machine", "start", "--name", "web"]);

    let start = Instant::now();
    fake.ok(&["machine", "exec", "--name", "web", "--", "sleep", "0.3"]);
    assert!(start.elapsed() >= Duration::from_millis(300));

    let start = Instant::now();
    let out = fake.run(&[
        "machine",
        "exec",
        "--name",
        "web",
        "--timeout",
        "200ms",
        "--",
        "sleep",
        "10",
    ]);
    assert_eq!(out.status.code(), Some(124));
    assert_eq!(stderr(&out), "\ncommand timed out after 200ms");
    assert!(start.elapsed() < Duration::from_secs(5));

    // Without a guest timeout, the host-side one kills smolvm itself.
    let err = ProcessRunner
        .run(&fake.invocation(
            &["machine", "exec", "--name", "web", "--", "sleep", "30"],
            Duration::from_millis(300),
        ))
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
}

#[test]
fn log_has_one_redacted_line_per_invocation() {
    let fake = Fake::new("1.9.2");
    fake.ok(&[
        "machine",
        "create",
        "-n",
        "web",
        "-I",
        "alpine",
        "--net",
        "--env=TOKEN=hunter22",
        "-e",
        "PASS=sekret-two",
        "--label",
        "team=a",
    ]);
    fake.ok(&["machine", "start", "--name", "web"]);
    let out = fake.ok(&[
        "machine",
        "exec",
        "--name",
        "web",
        "-e",
        "K=third-secret",
        "--",
        "echo",
        "-e",
        "shown",
    ]);
    assert_eq!(out, "-e shown\n");
    let usage = fake.run(&["machine", "create", "web", "--env=X=usage-secret"]);
    assert_eq!(usage.status.code(), Some(2));
    // The values are on the record, as in smolvm's own database; only the log is scrubbed.
    let env = read_fake_state(fake.state_dir()).unwrap()[0].env.clone();
    assert!(env.contains(&("TOKEN".to_string(), "hunter22".to_string())));
    fake.ok(&["machine", "delete", "-f", "--name", "web"]);

    let text = fake.log_text();
    for secret in ["hunter22", "sekret-two", "third-secret", "usage-secret"] {
        assert!(
            !text.contains(secret),
            "{secret} leaked into the log:\n{text}"
        );
    }
    let lines = fake.log_lines();
    assert_eq!(lines.len(), 5, "{text}");
    let argv = |i: usize| -> Vec<String> {
        lines[i]["argv"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect()
    };
    assert!(argv(0).contains(&"--env=TOKEN=<redacted>".to_string()));
    assert!(argv(0).contains(&"PASS=<redacted>".to_string()));
    assert!(argv(0).contains(&"team=a".to_string()));
    assert_eq!(
        argv(2)[4..],
        ["-e", "K=<redacted>", "--", "echo", "-e", "shown"]
    );
    let codes: Vec<i64> = lines.iter().map(|l| l["code"].as_i64().unwrap()).collect();
    assert_eq!(codes, [0, 0, 0, 2, 0]);
    let counts: Vec<i64> = lines
        .iter()
        .map(|l| l["machines"].as_i64().unwrap())
        .collect();
    assert_eq!(counts, [1, 1, 1, 1, 0]);
    let mut last = 0;
    for l in &lines {
        assert!(l["pid"].as_u64().unwrap() > 0);
        let t = l["t_us"].as_u64().unwrap();
        assert!(t >= last && t > 1_600_000_000_000_000);
        last = t;
    }
}

#[test]
fn parallel_processes_keep_one_consistent_state() {
    const PROCS: usize = 64;
    let fake = Arc::new(Fake::new("1.9.2").with(LATENCY_ENV, "create=20ms"));
    let threads: Vec<_> = (0..PROCS)
        .map(|i| {
            let fake = Arc::clone(&fake);
            thread::spawn(move || {
                let name = format!("m{i}");
                let own = fake.run(&["machine", "create", "-n", &name, "-I", "alpine", "--net"]);
                // Everyone also races for the same name: exactly one may win it.
                let shared =
                    fake.run(&["machine", "create", "-n", "shared", "-I", "alpine", "--net"]);
                (own.status.code(), shared.status.code(), stderr(&shared))
            })
        })
        .collect();
    let mut shared_wins = 0;
    for t in threads {
        let (own, shared, shared_err) = t.join().unwrap();
        assert_eq!(own, Some(0));
        match shared {
            Some(0) => shared_wins += 1,
            Some(1) => assert!(shared_err.contains("already exists or is being created")),
            other => panic!("unexpected exit {other:?}: {shared_err}"),
        }
    }
    assert_eq!(shared_wins, 1);

    let names = names_in_ls(&fake.ok(&["machine", "ls", "--json"]));
    assert_eq!(names.len(), PROCS + 1);
    assert!(names.contains("shared") && names.contains(&format!("m{}", PROCS - 1)));
    assert_eq!(read_fake_state(fake.state_dir()).unwrap().len(), PROCS + 1);

    let lines = fake.log_lines();
    assert_eq!(lines.len(), 2 * PROCS + 1);
    let max = lines
        .iter()
        .map(|l| l["machines"].as_i64().unwrap())
        .max()
        .unwrap();
    assert_eq!(max, PROCS as i64 + 1);
    // Counts in log order never jump by more than one create at a time.
    let mut prev = 0;
    for l in &lines {
        let n = l["machines"].as_i64().unwrap();
        assert!(n == prev || n == prev + 1, "count went {prev} -> {n}");
        prev = n;
    }
}

#[test]
fn delete_without_force_reads_the_answer_from_stdin() {
    let fake = Fake::new("0.8.0");
    fake.ok(&["machine", "create", "--image", "alpine", "web"]);
    let out = fake.run(&["machine", "delete", "web"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "Cancelled\n");
    assert_eq!(read_fake_state(fake.state_dir()).unwrap().len(), 1);

    let mut child = fake
        .command(&["machine", "delete", "web"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"y\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "Deleted machine: web\n"
    );
    assert_eq!(stderr(&out), "Delete machine 'web'? [y/N] ");
    assert!(read_fake_state(fake.state_dir()).unwrap().is_empty());
}

#[test]
fn large_output_follows_the_per_version_cap() {
    const TWENTY_MB: usize = 20_000_000;
    const CAP: usize = 11 * 1024 * 1024;
    let argv = |stream: bool| {
        let mut a = vec!["machine", "exec", "--name", "web"];
        if stream {
            a.push("--stream");
        }
        a.extend(["--", "head", "-c", "20000000", "/dev/zero"]);
        a
    };
    for (version, create) in [
        ("0.8.0", vec!["machine", "create", "web"]),
        ("1.9.2", vec!["machine", "create", "--name", "web"]),
    ] {
        let fake = Fake::new(version);
        fake.ok(&create);
        fake.ok(&["machine", "start", "--name", "web"]);
        let run = |stream| {
            ProcessRunner
                .run(&fake.invocation(&argv(stream), Duration::from_secs(60)))
                .unwrap()
        };
        let streamed = run(true);
        assert_eq!(streamed.code, Some(0));
        assert_eq!(streamed.stdout.len(), TWENTY_MB);
        assert!(streamed.stdout.iter().all(|b| *b == 0));

        let buffered = run(false);
        if version == "0.8.0" {
            // Silently truncated.
            assert_eq!(buffered.code, Some(0));
            assert_eq!(buffered.stdout.len(), CAP);
        } else {
            assert_eq!(buffered.code, Some(1));
            assert!(buffered.stdout.is_empty());
            assert!(String::from_utf8_lossy(&buffered.stderr)
                .starts_with("Error: agent operation failed: vm exec: command output exceeded"));
        }
    }
}

#[test]
fn pack_writes_stub_and_manifest_that_create_from_reads() {
    let fake = Fake::new("1.9.2");
    let out = fake.path("app");
    let printed = fake.ok(&[
        "pack",
        "create",
        "--image",
        "alpine:3.20",
        "-o",
        &out,
        "--cpus",
        "2",
    ]);
    assert!(printed.contains(&format!("Assets: {out}.smolmachine (")));
    assert!(Path::new(&out).is_file());
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(format!("{out}.smolmachine")).unwrap()).unwrap();
    assert_eq!(manifest["format"], "smolvm-sim-pack");
    assert_eq!(manifest["image"], "alpine:3.20");
    assert_eq!(manifest["cpus"], 2);

    let from = format!("{out}.smolmachine");
    fake.ok(&[
        "machine", "create", "--name", "web", "--from", &from, "-e", "X=1",
    ]);
    let m = &read_fake_state(fake.state_dir()).unwrap()[0];
    assert_eq!(m.image.as_deref(), Some("alpine:3.20"));
    assert_eq!(m.from.as_deref(), Some(from.as_str()));
    assert_eq!(m.cpus, 2, "--cpus at its default keeps the pack's value");
    assert!(!m.network);
    // A pack is not a registry image: no network needed, no pull at start.
    let started = fake.run(&["machine", "start", "--name", "web"]);
    assert_eq!(stderr(&started), "Starting machine 'web'...\n");
    // Only the pack is logged as such.
    let packs = fake
        .log_lines()
        .iter()
        .filter(|l| l["argv"][0] == "pack")
        .count();
    assert_eq!(packs, 1);
}
