//! `smolvm-fake serve start`: the simulated `smolvm serve` API, a real process on a real
//! socket, talked to with raw HTTP (tests/common/raw_http.rs), in its v1.9.2 and v0.8.2
//! shapes (smolvm-cli-more.md §9).
#![cfg(feature = "remote")]

#[path = "common/raw_http.rs"]
mod raw_http;
#[path = "common/serve.rs"]
mod serve;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use raw_http::{encode_path, request, Endpoint, Response};
use serde_json::{json, Value};
use smolvm_harness::sim::read_fake_state;

const FAKE: &str = env!("CARGO_BIN_EXE_smolvm-fake");
const NEW: &str = "1.9.2";
const OLD: &str = "0.8.2";

/// A running `smolvm-fake serve start` with its own state; killed on drop.
struct Server {
    child: Child,
    endpoint: Endpoint,
    socket: Option<PathBuf>,
    state: PathBuf,
    version: &'static str,
    dir: tempfile::TempDir,
}

impl Server {
    fn start(version: &'static str) -> Server {
        Server::start_with(version, &[])
    }

    fn start_with(version: &'static str, env: &[(&str, &str)]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("api.sock");
        Server::spawn(version, env, dir, &format!("unix://{}", socket.display()))
    }

    fn spawn(
        version: &'static str,
        env: &[(&str, &str)],
        dir: tempfile::TempDir,
        listen: &str,
    ) -> Server {
        let state = dir.path().join("state");
        let mut child = Command::new(FAKE)
            .args(["serve", "start", "--listen", listen])
            .env("SMOLVM_FAKE_STATE", &state)
            .env("SMOLVM_FAKE_VERSION", version)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let url = serve::await_listening(&mut child);
        let (endpoint, socket) = if let Some(p) = url.strip_prefix("unix://") {
            (Endpoint::Unix(PathBuf::from(p)), Some(PathBuf::from(p)))
        } else {
            let authority = url.strip_prefix("http://").unwrap().to_string();
            (Endpoint::Tcp(authority), None)
        };
        Server {
            child,
            endpoint,
            socket,
            state,
            version,
            dir,
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<(&str, &[u8])>) -> Response {
        request(
            &self.endpoint,
            method,
            path,
            body,
            Some(Duration::from_secs(30)),
        )
        .unwrap()
    }

    fn get(&self, path: &str) -> Response {
        self.call("GET", path, None)
    }

    fn post(&self, path: &str, body: Value) -> Response {
        let bytes = body.to_string().into_bytes();
        self.call("POST", path, Some(("application/json", &bytes)))
    }

    fn post_raw(&self, path: &str, body: &str) -> Response {
        self.call("POST", path, Some(("application/json", body.as_bytes())))
    }

    fn create(&self, name: &str) -> Value {
        let r = self.post("/api/v1/machines", json!({ "name": name }));
        assert_eq!(r.status, 200, "{}", r.text());
        r.json().unwrap()
    }

    fn exec(&self, name: &str, body: Value) -> Response {
        self.post(&format!("/api/v1/machines/{name}/exec"), body)
    }

    /// The fake CLI on the same state, as a user would run it beside the server.
    fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(FAKE)
            .args(args)
            .env("SMOLVM_FAKE_STATE", &self.state)
            .env("SMOLVM_FAKE_VERSION", self.version)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn api_error(r: &Response, status: u16, code: &str) -> String {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(r.content_type.as_deref(), Some("application/json"));
    let v = r.json().unwrap();
    assert_eq!(v["code"], code, "{v}");
    v["error"].as_str().unwrap().to_string()
}

fn plain_text(r: &Response, status: u16) -> String {
    assert_eq!(r.status, status, "{}", r.text());
    assert!(
        r.content_type
            .as_deref()
            .is_some_and(|c| c.starts_with("text/plain")),
        "{:?}",
        r.content_type
    );
    assert!(r.json().is_none(), "not JSON: {}", r.text());
    r.text()
}

fn lifecycle(version: &'static str) {
    let s = Server::start(version);
    let h = s.get("/health");
    assert_eq!(h.status, 200);
    let h = h.json().unwrap();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["version"], version);
    assert_eq!(h["machines"], json!({"total": 0, "running": 0}));
    assert!(h["uptime_seconds"].is_u64());
    assert_eq!(s.get("/api/v1/health").status, 404);

    let info = s.create("api1");
    assert_eq!(info["name"], "api1");
    assert_eq!(info["state"], "created");
    assert!(
        info["createdAt"].is_u64() && info["memoryMb"].is_u64(),
        "{info}"
    );
    assert_eq!(info["ports"], json!([]));
    assert_eq!(info["mounts"], json!([]));
    assert!(info.get("labels").is_none());
    assert_eq!(info.get("forkable").is_some(), version == NEW, "{info}");
    assert_eq!(info.get("gpu").is_some(), version == NEW, "{info}");

    let again = s.post("/api/v1/machines", json!({"name": "api1"}));
    assert_eq!(
        api_error(&again, 409, "CONFLICT"),
        "machine 'api1' already exists"
    );

    let got = s.get("/api/v1/machines/api1").json().unwrap();
    assert_eq!(got["name"], "api1");
    let list = s.get("/api/v1/machines").json().unwrap();
    assert_eq!(list["machines"].as_array().unwrap().len(), 1);

    // Stop of a machine that never ran: 200, and 0.8.2 kept `created` (so does the fake).
    let stopped = s.post("/api/v1/machines/api1/stop", json!({}));
    assert_eq!(stopped.status, 200, "{}", stopped.text());
    assert_eq!(stopped.json().unwrap()["state"], "created");

    let started = s.post("/api/v1/machines/api1/start", json!({}));
    assert_eq!(started.status, 200, "{}", started.text());
    let started = started.json().unwrap();
    assert_eq!(started["state"], "running");
    assert!(started["pid"].is_u64());
    let h = s.get("/health").json().unwrap();
    assert_eq!(h["machines"], json!({"total": 1, "running": 1}));

    let stopped = s.post("/api/v1/machines/api1/stop", json!({}));
    assert_eq!(stopped.json().unwrap()["state"], "stopped");

    let gone = s.call("DELETE", "/api/v1/machines/api1", None);
    assert_eq!(gone.status, 200);
    assert_eq!(gone.json().unwrap(), json!({"deleted": "api1"}));
    let missing = s.get("/api/v1/machines/api1");
    assert_eq!(
        api_error(&missing, 404, "NOT_FOUND"),
        "machine 'api1' not found"
    );
    api_error(
        &s.call("DELETE", "/api/v1/machines/api1", None),
        404,
        "NOT_FOUND",
    );
    api_error(
        &s.post("/api/v1/machines/nosuch/start", json!({})),
        404,
        "NOT_FOUND",
    );
    assert_eq!(s.get("/api/v1/nothing").status, 404);
}

#[test]
fn lifecycle_v1_9_2() {
    lifecycle(NEW);
}

#[test]
fn lifecycle_v0_8_2() {
    lifecycle(OLD);
}

/// Delete stops a running machine first, in every version (the CLI's own delete does not
/// before 0.8.1): the fake's log shows the `stop` before the `delete`.
#[test]
fn delete_stops_a_running_machine_first() {
    let log_dir = tempfile::tempdir().unwrap();
    let log = log_dir.path().join("fake.log");
    let log_str = log.display().to_string();
    let s = Server::start_with("0.8.0", &[("SMOLVM_FAKE_LOG", &log_str)]);
    s.create("run1");
    assert_eq!(s.post("/api/v1/machines/run1/start", json!({})).status, 200);
    let gone = s.call("DELETE", "/api/v1/machines/run1", None);
    assert_eq!(gone.status, 200, "{}", gone.text());
    assert!(read_fake_state(&s.state).unwrap().is_empty());
    let subcommands: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["argv"][1]
                .as_str()
                .unwrap()
                .to_string()
        })
        .filter(|sub| sub != "status" && sub != "ls")
        .collect();
    assert_eq!(subcommands, ["create", "start", "stop", "delete"]);
}

#[test]
fn error_shapes_v1_9_2() {
    let s = Server::start(NEW);
    s.create("e1");
    // Malformed JSON: axum's plain-text 400.
    let bad = s.post_raw("/api/v1/machines/e1/exec", "{bad");
    assert!(plain_text(&bad, 400).starts_with("Failed to parse the request body as JSON: "));
    let bad = s.post_raw("/api/v1/machines", "{\"name\":");
    assert!(plain_text(&bad, 400).starts_with("Failed to parse the request body as JSON: "));
    // An empty command: the API's own JSON 400.
    let empty = s.exec("e1", json!({"command": []}));
    assert_eq!(
        api_error(&empty, 400, "BAD_REQUEST"),
        "command cannot be empty"
    );
    // A misspelled field: 422 plain text naming it.
    let unknown = s.exec("e1", json!({"command": ["true"], "timeout_secs": 3}));
    let text = plain_text(&unknown, 422);
    assert!(
        text.starts_with(
            "Failed to deserialize the JSON body into the target type: timeout_secs: unknown \
             field `timeout_secs`, expected one of `command`"
        ),
        "{text}"
    );
    // A type error: 422 plain text.
    let typed = s.post("/api/v1/machines", json!({"name": "t1", "cpus": "two"}));
    assert!(plain_text(&typed, 422).contains("cpus: invalid type"));
    // Create validation (the CLI's own checks, answered as 400).
    for body in [
        json!({"name": "bad name!"}),
        json!({"name": "v1", "cpus": 0}),
        json!({"name": "v2", "ports": [{"host": 0, "guest": 80}]}),
        json!({"name": "v3", "ports": [{"host": 18090, "guest": 80}, {"host": 18090, "guest": 81}]}),
        json!({"name": "v4", "network": true, "allowedCidrs": ["10.0.0.0/33"]}),
        json!({"name": "v5", "image": "alpine"}),
        json!({"name": "v6", "secrets": {"K": {"from_env": "HOME"}}}),
    ] {
        let r = s.post("/api/v1/machines", body.clone());
        api_error(&r, 400, "BAD_REQUEST");
    }
    let names: Vec<String> = read_fake_state(&s.state)
        .unwrap()
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert_eq!(names, ["e1"], "no refused create left a machine");
    // 1.7.0+: a 3 MiB upload is under the limit.
    let big = vec![b'x'; 3 * 1024 * 1024];
    let put = s.call(
        "PUT",
        "/api/v1/machines/e1/files/tmp/big",
        Some(("application/octet-stream", &big)),
    );
    assert_eq!(put.status, 200, "{}", put.text());
    assert_eq!(put.json().unwrap()["size"], big.len());
}

#[test]
fn error_shapes_and_leniency_v0_8_2() {
    let s = Server::start(OLD);
    s.create("o1");
    let bad = s.post_raw("/api/v1/machines/o1/exec", "{bad");
    assert!(plain_text(&bad, 400).starts_with("Failed to parse the request body as JSON: "));
    let empty = s.exec("o1", json!({"command": []}));
    assert_eq!(
        api_error(&empty, 400, "BAD_REQUEST"),
        "command cannot be empty"
    );
    // A misspelled field is dropped silently: the command runs.
    let lenient = s.exec("o1", json!({"command": ["true"], "timeout_secs": 3}));
    assert_eq!(lenient.status, 200, "{}", lenient.text());
    let lenient = lenient.json().unwrap();
    assert_eq!(lenient["exitCode"], 0);
    assert!(lenient.get("stdoutB64").is_none(), "{lenient}");
    // Nothing validated: cpus 0 and host port 0 answer 200.
    assert_eq!(
        s.post("/api/v1/machines", json!({"name": "o2", "cpus": 0}))
            .status,
        200
    );
    assert_eq!(
        s.post(
            "/api/v1/machines",
            json!({"name": "o3", "ports": [{"host": 0, "guest": 80}]})
        )
        .status,
        200
    );
    // env, workdir and allowedCidrs are not kept.
    let r = s.post(
        "/api/v1/machines",
        json!({"name": "o4", "network": true, "allowedCidrs": ["10.0.0.0/8"],
               "env": [{"name": "A", "value": "1"}], "workdir": "/srv", "labels": {"x": "y"}}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let o4 = read_fake_state(&s.state)
        .unwrap()
        .into_iter()
        .find(|m| m.name == "o4")
        .unwrap();
    assert_eq!(o4.allowed_cidrs, None);
    assert!(o4.env.is_empty() && o4.workdir.is_none());
    assert!(o4.network);
    // Over axum's default 2 MiB: 413 plain text.
    let big = vec![b'x'; 3 * 1024 * 1024];
    let put = s.call(
        "PUT",
        "/api/v1/machines/o1/files/tmp/big",
        Some(("application/octet-stream", &big)),
    );
    assert_eq!(
        plain_text(&put, 413),
        "Failed to buffer the request body: length limit exceeded"
    );
    // No fork route before 1.2.5.
    s.create("g0");
    assert_eq!(
        s.post("/api/v1/machines/g0/fork", json!({"name": "c0"}))
            .status,
        404
    );
}

#[test]
fn create_keeps_env_and_egress_on_v1_9_2_and_ignores_labels() {
    let s = Server::start(NEW);
    let r = s.post(
        "/api/v1/machines",
        json!({"name": "n1", "network": true, "allowedCidrs": ["10.0.0.0/8"],
               "env": [{"name": "A", "value": "1"}], "workdir": "/srv",
               "labels": {"x": "y"}, "noSuchField": 1,
               "ports": [{"host": 18123, "guest": 80}]}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let info = r.json().unwrap();
    assert_eq!(info["allowedCidrs"], json!(["10.0.0.0/8"]));
    assert_eq!(info["ports"], json!([{"host": 18123, "guest": 80}]));
    assert!(info.get("labels").is_none());
    let m = read_fake_state(&s.state).unwrap().remove(0);
    assert_eq!(m.env, [("A".to_string(), "1".to_string())]);
    assert_eq!(m.workdir.as_deref(), Some("/srv"));
    assert!(m.labels.is_empty());
}

fn exec_data_env_and_autostart(version: &'static str) {
    let s = Server::start(version);
    s.create("x1");
    // The machine is only created: exec boots it first.
    let r = s.exec(
        "x1",
        json!({"command": ["sh", "-c", "echo \"$GREETING\"; echo oops >&2; exit 3"],
               "env": [{"name": "GREETING", "value": "hello there"}]}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json().unwrap();
    assert_eq!(v["exitCode"], 3, "{v}");
    assert_eq!(v["stdout"], "hello there\n");
    assert_eq!(v["stderr"], "oops\n");
    if version == NEW {
        assert_eq!(v["stdoutB64"], "aGVsbG8gdGhlcmUK");
        assert_eq!(v["stderrB64"], "b29wcwo=");
    } else {
        assert!(v.get("stdoutB64").is_none());
    }
    let info = s.get("/api/v1/machines/x1").json().unwrap();
    assert_eq!(info["state"], "running");
    // An exec into a machine that is not there is the API's 404, not an exitCode.
    api_error(
        &s.exec("nosuch", json!({"command": ["true"]})),
        404,
        "NOT_FOUND",
    );
}

#[test]
fn exec_exit_code_env_and_auto_start_v1_9_2() {
    exec_data_env_and_autostart(NEW);
}

#[test]
fn exec_exit_code_env_and_auto_start_v0_8_2() {
    exec_data_env_and_autostart(OLD);
}

/// A boot failure is a 500 with smolvm's `failed to start machine: …`, for start and for the
/// auto-start of exec.
#[test]
fn boot_failure_is_a_500() {
    let s = Server::start_with(NEW, &[("SMOLVM_FAKE_FAIL", "start")]);
    s.create("f1");
    let r = s.post("/api/v1/machines/f1/start", json!({}));
    assert!(api_error(&r, 500, "INTERNAL_ERROR").starts_with("failed to start machine: "));
    let r = s.exec("f1", json!({"command": ["true"]}));
    assert!(api_error(&r, 500, "INTERNAL_ERROR").starts_with("failed to start machine: "));
}

#[test]
fn port_taken_at_start_is_port_in_use_on_v1_9_2() {
    let s = Server::start(NEW);
    let port = 18000 + (std::process::id() % 2000) as u16;
    for name in ["p1", "p2"] {
        let r = s.post(
            "/api/v1/machines",
            json!({"name": name, "ports": [{"host": port, "guest": 80}]}),
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(s.post("/api/v1/machines/p1/start", json!({})).status, 200);
    let r = s.post("/api/v1/machines/p2/start", json!({}));
    api_error(&r, 409, "PORT_IN_USE");
}

fn files_round_trip(version: &'static str) {
    let s = Server::start(version);
    s.create("fs1");
    let path = encode_path("/tmp/my file.txt");
    let put = s.call(
        "PUT",
        &format!("/api/v1/machines/fs1/files{path}"),
        Some(("application/octet-stream", b"hello\x00world")),
    );
    assert_eq!(put.status, 200, "{}", put.text());
    assert_eq!(
        put.json().unwrap(),
        json!({"path": "/tmp/my file.txt", "size": 11})
    );
    // The upload booted the machine.
    assert_eq!(
        s.get("/api/v1/machines/fs1").json().unwrap()["state"],
        "running"
    );
    let get = s.get(&format!("/api/v1/machines/fs1/files{path}"));
    assert_eq!(get.status, 200);
    assert_eq!(
        get.content_type.as_deref(),
        Some("application/octet-stream")
    );
    assert_eq!(get.body, b"hello\x00world");
    // And the guest sees it where the URL said.
    let cat = s.exec("fs1", json!({"command": ["cat", "/tmp/my file.txt"]}));
    assert_eq!(cat.json().unwrap()["exitCode"], 0);
    // GET also boots a stopped machine.
    assert_eq!(s.post("/api/v1/machines/fs1/stop", json!({})).status, 200);
    let get = s.get(&format!("/api/v1/machines/fs1/files{path}"));
    assert_eq!(get.status, 200, "{}", get.text());
    assert_eq!(
        s.get("/api/v1/machines/fs1").json().unwrap()["state"],
        "running"
    );
}

#[test]
fn files_round_trip_v1_9_2() {
    files_round_trip(NEW);
}

#[test]
fn files_round_trip_v0_8_2() {
    files_round_trip(OLD);
}

#[test]
fn fork_and_cascade_delete_v1_9_2() {
    let s = Server::start(NEW);
    let port = 20000 + (std::process::id() % 2000) as u16;
    let r = s.post(
        "/api/v1/machines",
        json!({"name": "gold", "ports": [{"host": port, "guest": 80}]}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let started = s.post("/api/v1/machines/gold/start?forkable=true", json!({}));
    assert_eq!(started.json().unwrap()["forkable"], true);
    let clone = s.post("/api/v1/machines/gold/fork", json!({"name": "c1"}));
    assert_eq!(clone.status, 200, "{}", clone.text());
    let clone = clone.json().unwrap();
    assert_eq!(clone["name"], "c1");
    assert_eq!(clone["state"], "running");
    let ports = clone["ports"].as_array().unwrap();
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0]["guest"], 80);
    assert_ne!(ports[0]["host"], port, "the clone's port is remapped");
    // A clone name that is taken, a golden that is not there.
    api_error(
        &s.post("/api/v1/machines/gold/fork", json!({"name": "c1"})),
        409,
        "CONFLICT",
    );
    api_error(
        &s.post("/api/v1/machines/nosuch/fork", json!({"name": "c2"})),
        404,
        "NOT_FOUND",
    );
    // The golden has a clone: no delete without cascade.
    let refused = s.call("DELETE", "/api/v1/machines/gold", None);
    assert!(api_error(&refused, 409, "CONFLICT").contains("c1"));
    assert_eq!(read_fake_state(&s.state).unwrap().len(), 2);
    let gone = s.call("DELETE", "/api/v1/machines/gold?cascade=true", None);
    assert_eq!(gone.status, 200, "{}", gone.text());
    assert_eq!(gone.json().unwrap(), json!({"deleted": "gold"}));
    assert!(read_fake_state(&s.state).unwrap().is_empty());
}

#[test]
fn cli_and_api_see_the_same_machines() {
    let s = Server::start(NEW);
    let out = s.cli(&["machine", "create", "--name", "from-cli"]);
    assert!(out.status.success(), "{out:?}");
    s.create("from-api");
    let list = s.get("/api/v1/machines").json().unwrap();
    let mut names: Vec<&str> = list["machines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["from-api", "from-cli"]);
    let ls = s.cli(&["machine", "ls", "--json"]);
    let ls: Vec<Value> = serde_json::from_slice(&ls.stdout).unwrap();
    assert!(ls.iter().any(|m| m["name"] == "from-api"));
    // Started by the CLI, running for the API.
    assert!(s
        .cli(&["machine", "start", "--name", "from-cli"])
        .status
        .success());
    assert_eq!(
        s.get("/api/v1/machines/from-cli").json().unwrap()["state"],
        "running"
    );
}

/// The fake processes of this server's state (its own `SMOLVM_FAKE_STATE` in their
/// environment), as (pid, argv).
fn fake_processes(state: &Path) -> Vec<(u32, Vec<String>)> {
    let marker = format!("SMOLVM_FAKE_STATE={}", state.display());
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if !environ.split(|b| *b == 0).any(|e| e == marker.as_bytes()) {
            continue;
        }
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let argv = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        found.push((pid, argv));
    }
    found
}

/// Polls `fake_processes` until `pred` holds for one of them, while `busy` is not finished.
fn wait_for_process(state: &Path, pred: impl Fn(&[String]) -> bool) -> Option<(u32, Vec<String>)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(p) = fake_processes(state).into_iter().find(|(_, a)| pred(a)) {
            return Some(p);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[test]
fn an_api_create_is_a_fake_create_process() {
    let s = Server::start_with(NEW, &[("SMOLVM_FAKE_LATENCY", "create=2s")]);
    let endpoint = s.endpoint.clone();
    let call = std::thread::spawn(move || {
        let body = json!({"name": "slow1"}).to_string().into_bytes();
        request(
            &endpoint,
            "POST",
            "/api/v1/machines",
            Some(("application/json", &body)),
            Some(Duration::from_secs(30)),
        )
        .unwrap()
    });
    let seen = wait_for_process(&s.state, |argv| {
        argv.first().is_some_and(|a| a.ends_with("smolvm-fake"))
            && argv.iter().any(|a| a == "create")
    });
    let r = call.join().unwrap();
    let (_, argv) = seen.expect("no fake `machine create` process seen during the API create");
    assert_eq!(argv[1..3], ["machine", "create"]);
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn no_env_value_in_any_fake_argv() {
    const SECRET: &str = "s3cr3t-value-4711";
    let s = Server::start_with(NEW, &[("SMOLVM_FAKE_LATENCY", "exec=1500ms,create=1500ms")]);
    let endpoint = s.endpoint.clone();
    let call = std::thread::spawn(move || {
        let post = |path: &str, body: Value| {
            let body = body.to_string().into_bytes();
            request(
                &endpoint,
                "POST",
                path,
                Some(("application/json", &body)),
                Some(Duration::from_secs(30)),
            )
            .unwrap()
        };
        let c = post(
            "/api/v1/machines",
            json!({"name": "sec1", "env": [{"name": "TOKEN", "value": SECRET}]}),
        );
        assert_eq!(c.status, 200, "{}", c.text());
        post(
            "/api/v1/machines/sec1/exec",
            json!({"command": ["sh", "-c", "echo $PASS"],
                   "env": [{"name": "PASS", "value": SECRET}]}),
        )
    });
    let mut seen_create = false;
    let mut seen_exec = false;
    while !call.is_finished() {
        for (pid, argv) in fake_processes(&s.state) {
            assert!(
                !argv.iter().any(|a| a.contains(SECRET)),
                "pid {pid} shows an env value: {argv:?}"
            );
            seen_create |= argv.iter().any(|a| a == "create");
            seen_exec |= argv.iter().any(|a| a == "exec");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let r = call.join().unwrap();
    assert!(
        seen_create && seen_exec,
        "the scan saw the create and the exec"
    );
    // And the values did reach the machine and the guest.
    assert_eq!(r.json().unwrap()["stdout"], format!("{SECRET}\n"));
    let m = read_fake_state(&s.state).unwrap().remove(0);
    assert_eq!(m.env, [("TOKEN".to_string(), SECRET.to_string())]);
}

#[test]
fn sigterm_removes_the_socket() {
    let mut s = Server::start(NEW);
    let socket = s.socket.clone().unwrap();
    assert!(socket.exists());
    let pid = s.child.id() as libc::pid_t;
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = s.child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let mut err = String::new();
    use std::io::Read;
    s.child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(err.contains("Shutting down server (VMs continue running)..."));
    assert!(!socket.exists(), "socket file left behind");
}

#[test]
fn an_existing_file_at_the_socket_path_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    std::fs::write(&socket, b"stale").unwrap();
    let url = format!("unix://{}", socket.display());
    let s = Server::spawn(NEW, &[], dir, &url);
    assert_eq!(s.get("/health").status, 200);
    assert!(s.dir.path().join("api.sock").exists());
}

#[test]
fn tcp_port_zero_prints_the_real_port() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::spawn(NEW, &[], dir, "127.0.0.1:0");
    match &s.endpoint {
        Endpoint::Tcp(a) => assert!(!a.ends_with(":0"), "{a}"),
        Endpoint::Unix(_) => panic!("expected TCP"),
    }
    assert_eq!(s.get("/health").json().unwrap()["version"], NEW);
}

#[test]
fn a_bad_listen_address_is_exit_1() {
    let out = Command::new(FAKE)
        .args(["serve", "start", "--listen", "foo:bar"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains(
        "parse listen address: invalid address 'foo:bar': expected a valid ADDR:PORT or a \
         unix:// path"
    ));
}

#[test]
fn the_request_timeout_answers_408_and_the_child_goes_on() {
    let s = Server::start_with(
        NEW,
        &[
            ("SMOLVM_FAKE_SERVE_TIMEOUT", "1"),
            ("SMOLVM_FAKE_LATENCY", "create=2500ms"),
        ],
    );
    let r = s.post("/api/v1/machines", json!({"name": "late1"}));
    api_error(&r, 408, "TIMEOUT");
    // The create finishes behind the 408, as smolvm's work does behind tower's timeout.
    let deadline = Instant::now() + Duration::from_secs(10);
    while read_fake_state(&s.state).unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the create never finished");
        std::thread::sleep(Duration::from_millis(50));
    }
}
