//! `smolvm-fake serve start`: a simulated `smolvm serve` HTTP API, out of process.
//!
//! Every request becomes one or more runs of the fake CLI itself (this executable, in the
//! CLI dialect of the version played, environment inherited), so the API and the CLI share
//! the machines, the locking, the `SMOLVM_FAKE_*` knobs and what `/proc` shows, as the real
//! server and CLI share their SQLite database. What the API adds is its own habits
//! (smolvm-cli-more.md §9.2): 200 on create, exec and files boot a stopped machine, delete
//! stops first, `exitCode` as data, `{"error","code"}` bodies and axum's plain-text
//! rejections, per-version body limits and route sets.
//!
//! Env values never reach a child's argv: an exec or create variable goes to the child as
//! `-e KEY`, its value in the child's environment (the CLI's value-from-env form, v0.8.1+).

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::{Command as Process, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use super::fake::{default_fake_state_dir, read_fake_state, STATE_ENV, VERSION_ENV};
use super::state::SimMachine;
use crate::Version;

/// `SMOLVM_FAKE_SERVE_TIMEOUT=<secs>`: the server's per-request timeout (smolvm's tower
/// `TimeoutLayer`, 300 s); past it the route answers 408 and the CLI child goes on.
pub const SERVE_TIMEOUT_ENV: &str = "SMOLVM_FAKE_SERVE_TIMEOUT";

/// `smolvm-fake serve [start] [-l|--listen ADDR]`: serves until SIGTERM/SIGINT; the exit code.
pub(crate) fn serve_main(args: &[String]) -> i32 {
    match serve(args) {
        Ok(()) => 0,
        Err(msg) => {
            eprintln!("Error: {msg}");
            1
        }
    }
}

/// Where the server listens.
enum Listen {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

/// `ListenTarget::parse`: a socket address is TCP, `unix://PATH` or `/PATH` a unix socket.
fn parse_listen(value: &str) -> Result<Listen, String> {
    if let Ok(addr) = value.parse::<SocketAddr>() {
        return Ok(Listen::Tcp(addr));
    }
    if let Some(path) = value.strip_prefix("unix://") {
        return Ok(Listen::Unix(PathBuf::from(path)));
    }
    if value.starts_with('/') {
        return Ok(Listen::Unix(PathBuf::from(value)));
    }
    Err(format!(
        "config operation failed: parse listen address: invalid address '{value}': expected a \
         valid ADDR:PORT or a unix:// path"
    ))
}

fn default_listen() -> Listen {
    let dir = std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    Listen::Unix(dir.join("smolvm.sock"))
}

fn serve(args: &[String]) -> Result<(), String> {
    let mut rest = args;
    if rest.first().map(String::as_str) == Some("start") {
        rest = &rest[1..];
    }
    let mut listen = None;
    let mut i = 0;
    while i < rest.len() {
        let word = rest[i].as_str();
        i += 1;
        let value_of = |i: &mut usize| -> Result<String, String> {
            let v = rest
                .get(*i)
                .cloned()
                .ok_or_else(|| format!("a value is required for '{word}'"))?;
            *i += 1;
            Ok(v)
        };
        match word {
            "-l" | "--listen" => listen = Some(parse_listen(&value_of(&mut i)?)?),
            w if w.starts_with("--listen=") => {
                listen = Some(parse_listen(&w["--listen=".len()..])?)
            }
            // Accepted and without effect here: logging, CORS and sandboxing of the real one.
            "-v" | "--verbose" | "--json-logs" => {}
            "--cors-origin" | "--seccomp" | "--landlock" => {
                value_of(&mut i)?;
            }
            other => return Err(format!("smolvm-fake serve: unexpected argument '{other}'")),
        }
    }
    let version = match std::env::var(VERSION_ENV)
        .ok()
        .filter(|v| !v.trim().is_empty())
    {
        Some(v) => v
            .parse()
            .map_err(|e| format!("smolvm-fake: {VERSION_ENV}={v:?}: {e}"))?,
        None => Version::NEWEST_KNOWN,
    };
    let timeout = match std::env::var(SERVE_TIMEOUT_ENV)
        .ok()
        .filter(|v| !v.trim().is_empty())
    {
        Some(v) => Duration::from_secs(v.trim().parse().map_err(|_| {
            format!("smolvm-fake: {SERVE_TIMEOUT_ENV}={v:?}: expected whole seconds")
        })?),
        None => Duration::from_secs(300),
    };
    let exe = std::env::current_exe().map_err(|e| format!("smolvm-fake serve: {e}"))?;
    let scratch = scratch_dir()?;
    let api = Arc::new(Api {
        version,
        exe,
        state_dir: std::env::var_os(STATE_ENV)
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(default_fake_state_dir),
        scratch: scratch.clone(),
        started: Instant::now(),
        counter: AtomicU64::new(0),
        timeout,
    });

    let listen = listen.unwrap_or_else(default_listen);
    let socket = match &listen {
        Listen::Unix(p) => Some(p.clone()),
        Listen::Tcp(_) => None,
    };
    install_signal_handler(socket.clone(), scratch)?;
    match listen {
        Listen::Unix(path) => {
            // Like smolvm's `UnixSocketGuard::bind`: whatever is at the path goes first.
            let _ = std::fs::remove_file(&path);
            let listener = UnixListener::bind(&path)
                .map_err(|e| format!("smolvm-fake serve: bind {}: {e}", path.display()))?;
            announce(&format!("unix://{}", path.display()));
            for stream in listener.incoming().flatten() {
                let api = Arc::clone(&api);
                std::thread::spawn(move || api.connection(stream));
            }
        }
        Listen::Tcp(addr) => {
            let listener = TcpListener::bind(addr)
                .map_err(|e| format!("smolvm-fake serve: bind {addr}: {e}"))?;
            let local = listener.local_addr().map_err(|e| e.to_string())?;
            announce(&format!("http://{local}"));
            for stream in listener.incoming().flatten() {
                let api = Arc::clone(&api);
                std::thread::spawn(move || api.connection(stream));
            }
        }
    }
    Ok(())
}

fn announce(url: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "smolvm API server listening on {url}");
    let _ = out.flush();
}

/// A private directory for the bytes of file uploads and downloads in transit.
fn scratch_dir() -> Result<PathBuf, String> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = std::env::temp_dir().join(format!("smolvm-fake-serve-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| format!("smolvm-fake serve: create {}: {e}", dir.display()))?;
    Ok(dir)
}

/// SIGTERM/SIGINT: the real server's words, its socket removed, exit 0 (VMs live on).
fn install_signal_handler(socket: Option<PathBuf>, scratch: PathBuf) -> Result<(), String> {
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .map_err(|e| format!("smolvm-fake serve: signals: {e}"))?;
    std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            let _ = writeln!(
                io::stderr(),
                "Shutting down server (VMs continue running)..."
            );
            if let Some(path) = &socket {
                let _ = std::fs::remove_file(path);
            }
            let _ = std::fs::remove_dir_all(&scratch);
            std::process::exit(0);
        }
    });
    Ok(())
}

/// One answer: status, content type, body.
struct Reply(u16, &'static str, Vec<u8>);

fn ok(v: Value) -> Reply {
    Reply(200, "application/json", v.to_string().into_bytes())
}

fn api_error(status: u16, code: &str, msg: impl Into<String>) -> Reply {
    let body = json!({"error": msg.into(), "code": code});
    Reply(status, "application/json", body.to_string().into_bytes())
}

fn plain(status: u16, text: impl Into<String>) -> Reply {
    Reply(
        status,
        "text/plain; charset=utf-8",
        text.into().into_bytes(),
    )
}

fn not_found(name: &str) -> Reply {
    api_error(404, "NOT_FOUND", format!("machine '{name}' not found"))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Payload Too Large",
        422 => "Unprocessable Entity",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        _ => "Internal Server Error",
    }
}

/// axum's default body limit, which smolvm kept until v1.7.0 raised it to 100 MiB.
const OLD_BODY_LIMIT: usize = 2 * 1024 * 1024;
const NEW_BODY_LIMIT: usize = 100 * 1024 * 1024;
const HEAD_LIMIT: usize = 64 * 1024;

/// What a CLI child said.
struct Out {
    code: i32,
    stdout: Vec<u8>,
    stderr: String,
}

impl Out {
    /// The first `Error: …` line without its prefix (or the first line), for the API error.
    fn message(&self) -> String {
        let line = self
            .stderr
            .lines()
            .find(|l| l.starts_with("Error: ") || l.starts_with("error: "))
            .or_else(|| self.stderr.lines().find(|l| !l.trim().is_empty()))
            .unwrap_or("")
            .trim();
        line.strip_prefix("Error: ")
            .or_else(|| line.strip_prefix("error: "))
            .unwrap_or(line)
            .to_string()
    }
}

struct Api {
    version: Version,
    exe: PathBuf,
    state_dir: PathBuf,
    scratch: PathBuf,
    started: Instant,
    counter: AtomicU64,
    timeout: Duration,
}

/// A parsed request.
struct Request {
    method: String,
    path: String,
    query: String,
    body: Vec<u8>,
}

impl Api {
    fn at_least(&self, major: u32, minor: u32, patch: u32) -> bool {
        self.version >= Version::new(major, minor, patch)
    }

    /// v1.x API shapes (MachineInfo fields, 422 on unknown exec fields, validation).
    fn new_api(&self) -> bool {
        self.at_least(1, 0, 0)
    }

    fn connection<S: Read + Write>(self: Arc<Self>, stream: S) {
        let mut reader = BufReader::new(stream);
        let reply = match self.read_request(&mut reader) {
            Ok(req) => self.dispatch(req),
            Err(None) => return,
            Err(Some(reply)) => reply,
        };
        let Reply(status, content_type, body) = reply;
        let head = format!(
            "HTTP/1.1 {status} {}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n",
            reason(status),
            body.len()
        );
        let stream = reader.get_mut();
        let _ = stream.write_all(head.as_bytes());
        let _ = stream.write_all(&body);
        let _ = stream.flush();
    }

    /// `Err(None)`: the peer went away before a request; `Err(Some)`: answer this instead.
    fn read_request<S: Read>(&self, reader: &mut BufReader<S>) -> Result<Request, Option<Reply>> {
        let mut head = Vec::new();
        loop {
            let before = head.len();
            match reader.read_until(b'\n', &mut head) {
                Ok(0) if head.is_empty() => return Err(None),
                Ok(0) => return Err(Some(plain(400, "incomplete request head"))),
                Ok(_) => {}
                Err(_) => return Err(None),
            }
            if head.len() > HEAD_LIMIT {
                return Err(Some(plain(431, "request head too large")));
            }
            let line = &head[before..];
            if line == b"\r\n" || line == b"\n" {
                break;
            }
        }
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Request::new(&mut headers);
        match parsed.parse(&head) {
            Ok(httparse::Status::Complete(_)) => {}
            _ => return Err(Some(plain(400, "malformed request head"))),
        }
        let method = parsed.method.unwrap_or("").to_string();
        let target = parsed.path.unwrap_or("/").to_string();
        let mut length = 0usize;
        for h in parsed.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                length = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse().ok())
                    .ok_or_else(|| Some(plain(400, "invalid content-length")))?;
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                return Err(Some(plain(
                    501,
                    "smolvm-fake serve: chunked request bodies are not simulated; send \
                     content-length",
                )));
            }
        }
        let limit = if self.at_least(1, 7, 0) {
            NEW_BODY_LIMIT
        } else {
            OLD_BODY_LIMIT
        };
        if length > limit {
            // Read what was sent first (bounded): a client still writing its body would get
            // a reset instead of the answer.
            let _ = io::copy(
                &mut reader.by_ref().take(length.min(2 * NEW_BODY_LIMIT) as u64),
                &mut io::sink(),
            );
            return Err(Some(plain(
                413,
                "Failed to buffer the request body: length limit exceeded",
            )));
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return Err(None);
        }
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p.to_string(), q.to_string()),
            None => (target, String::new()),
        };
        Ok(Request {
            method,
            path,
            query,
            body,
        })
    }

    /// Runs the route on its own thread so that the request timeout can answer 408 while
    /// the CLI child goes on, as a dropped tower future leaves smolvm's work running.
    fn dispatch(self: &Arc<Self>, req: Request) -> Reply {
        let (tx, rx) = mpsc::channel();
        let api = Arc::clone(self);
        std::thread::spawn(move || {
            let _ = tx.send(api.route(&req));
        });
        match rx.recv_timeout(self.timeout) {
            Ok(reply) => reply,
            // The real 408 body was never observed (smolvm-cli-more.md §9.2): this is the
            // shape of smolvm's own `ApiError::Timeout`, an assumption.
            Err(mpsc::RecvTimeoutError::Timeout) => api_error(408, "TIMEOUT", "request timed out"),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                api_error(500, "INTERNAL_ERROR", "smolvm-fake serve: route panicked")
            }
        }
    }

    fn route(&self, req: &Request) -> Reply {
        let segments: Vec<&str> = req.path.trim_start_matches('/').split('/').collect();
        let q = &req.query;
        let body = &req.body;
        let fork_api = self.at_least(1, 2, 5);
        match (req.method.as_str(), segments.as_slice()) {
            ("GET", ["health"]) => self.health(),
            ("GET", ["api", "v1", "machines"]) => self.list(),
            ("POST", ["api", "v1", "machines"]) => self.create(body),
            ("GET", ["api", "v1", "machines", name]) => self.get(&decode(name)),
            ("DELETE", ["api", "v1", "machines", name]) => self.delete(&decode(name), q),
            ("POST", ["api", "v1", "machines", name, "start"]) => self.start(&decode(name), q),
            ("POST", ["api", "v1", "machines", name, "stop"]) => self.stop(&decode(name)),
            ("POST", ["api", "v1", "machines", name, "exec"]) => self.exec(&decode(name), body),
            ("POST", ["api", "v1", "machines", name, "fork"]) if fork_api => {
                self.fork(&decode(name), body)
            }
            ("PUT", ["api", "v1", "machines", name, "files", rest @ ..]) if !rest.is_empty() => {
                self.put_file(&decode(name), &decode(&rest.join("/")), body)
            }
            ("GET", ["api", "v1", "machines", name, "files", rest @ ..]) if !rest.is_empty() => {
                self.get_file(&decode(name), &decode(&rest.join("/")))
            }
            _ => Reply(404, "text/plain; charset=utf-8", Vec::new()),
        }
    }

    // --- the CLI, as a child ------------------------------------------------------------

    /// Runs the fake CLI with `args`, `env` added to its environment (never to argv), and
    /// `stdin` piped when given (else null).
    fn cli(&self, args: &[String], env: &[(String, String)], stdin: Option<&[u8]>) -> Out {
        let mut cmd = Process::new(&self.exe);
        cmd.args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            });
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                return Out {
                    code: -1,
                    stdout: Vec::new(),
                    stderr: format!("Error: smolvm-fake serve: spawn: {e}"),
                }
            }
        };
        if let (Some(bytes), Some(mut pipe)) = (stdin, child.stdin.take()) {
            let bytes = bytes.to_vec();
            // A writer thread: the child may not read its stdin before filling stdout.
            std::thread::spawn(move || {
                let _ = pipe.write_all(&bytes);
            });
        }
        match child.wait_with_output() {
            Ok(o) => Out {
                code: o.status.code().unwrap_or(-1),
                stdout: o.stdout,
                stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
            },
            Err(e) => Out {
                code: -1,
                stdout: Vec::new(),
                stderr: format!("Error: smolvm-fake serve: wait: {e}"),
            },
        }
    }

    fn run(&self, args: &[&str]) -> Out {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        self.cli(&args, &[], None)
    }

    /// `-n/--name N` or the positional name, per version (create, delete: v1.0.2).
    fn name_args(&self, name: &str) -> Vec<String> {
        if self.at_least(1, 0, 2) {
            vec!["--name".into(), name.into()]
        } else {
            vec![name.into()]
        }
    }

    /// The machines as the fake stores them: ports, mounts and egress, which `ls --json`
    /// only counts. An unreadable state is no machines.
    fn records(&self) -> BTreeMap<String, SimMachine> {
        read_fake_state(&self.state_dir)
            .unwrap_or_default()
            .into_iter()
            .map(|m| (m.name.clone(), m))
            .collect()
    }

    fn record(&self, name: &str) -> Option<SimMachine> {
        self.records().remove(name)
    }

    // --- MachineInfo --------------------------------------------------------------------

    /// `MachineInfo` of the version played, from a CLI JSON record and the stored machine.
    fn info(&self, cli: &Value, m: Option<&SimMachine>) -> Value {
        let name = cli["name"].as_str().unwrap_or_default();
        let ports: Vec<Value> = m
            .map(|m| {
                m.ports
                    .iter()
                    .map(|(h, g)| json!({"host": h, "guest": g}))
                    .collect()
            })
            .unwrap_or_default();
        let mounts: Vec<Value> = m
            .map(|m| {
                m.mounts
                    .iter()
                    .enumerate()
                    .map(|(i, mt)| {
                        json!({"tag": format!("smolvm{i}"), "source": mt.source,
                               "target": mt.target, "readonly": mt.read_only})
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut o = Map::new();
        o.insert("name".into(), json!(name));
        o.insert("state".into(), cli["state"].clone());
        o.insert("cpus".into(), cli["cpus"].clone());
        o.insert("memoryMb".into(), cli["memory_mib"].clone());
        if !cli["pid"].is_null() {
            o.insert("pid".into(), cli["pid"].clone());
        }
        o.insert("mounts".into(), json!(mounts));
        o.insert("ports".into(), json!(ports));
        o.insert("network".into(), cli["network"].clone());
        for (from, to) in [("storage_gb", "storageGb"), ("overlay_gb", "overlayGb")] {
            if !cli[from].is_null() {
                o.insert(to.into(), cli[from].clone());
            }
        }
        o.insert("createdAt".into(), cli["created_at"].clone());
        if self.new_api() {
            let flag = |k: &str| json!(cli[k].as_bool().unwrap_or(false));
            o.insert("gpu".into(), flag("gpu"));
            o.insert("cuda".into(), flag("cuda"));
            if let Some(cidrs) = m.and_then(|m| m.allowed_cidrs.clone()) {
                o.insert("allowedCidrs".into(), json!(cidrs));
            }
            if let Some(hosts) = m.map(|m| &m.allowed_hosts).filter(|h| !h.is_empty()) {
                o.insert("allowedHosts".into(), json!(hosts));
            }
            // `ls --json` keeps the record's `forkable` (false here); the API's is whether
            // this boot was started forkable, which the fake keeps in its state.
            let forkable = m.is_some_and(|m| m.forkable);
            o.insert("forkable".into(), json!(forkable));
            o.insert("forkpointHeld".into(), flag("forkpoint_held"));
        }
        Value::Object(o)
    }

    /// `GET …/{name}`'s answer after an operation: `status --json` of the CLI.
    fn info_reply(&self, name: &str) -> Reply {
        let out = self.run(&["machine", "status", "--name", name, "--json"]);
        if out.code != 0 {
            return self.failure(&out, 500);
        }
        match serde_json::from_slice::<Value>(&out.stdout) {
            Ok(v) => ok(self.info(&v, self.record(name).as_ref())),
            Err(e) => api_error(
                500,
                "INTERNAL_ERROR",
                format!("smolvm-fake serve: status --json: {e}"),
            ),
        }
    }

    /// A failed CLI run as the API's error, by what smolvm's message says.
    fn failure(&self, out: &Out, default_status: u16) -> Reply {
        let msg = out.message();
        let lower = msg.to_ascii_lowercase();
        if lower.contains("already exists") {
            api_error(409, "CONFLICT", msg)
        } else if (lower.contains("not found") || lower.contains("vm not found"))
            && !lower.contains("image")
            && !lower.contains("mount source")
        {
            api_error(404, "NOT_FOUND", msg)
        } else if default_status == 400 {
            api_error(400, "BAD_REQUEST", msg)
        } else {
            api_error(500, "INTERNAL_ERROR", msg)
        }
    }

    // --- routes -------------------------------------------------------------------------

    fn health(&self) -> Reply {
        let out = self.run(&["machine", "ls", "--json"]);
        let list: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let running = list.iter().filter(|m| m["state"] == "running").count();
        ok(json!({
            "status": "ok",
            "version": self.version.to_string(),
            "machines": {"total": list.len(), "running": running},
            "uptime_seconds": self.started.elapsed().as_secs(),
        }))
    }

    fn list(&self) -> Reply {
        let out = self.run(&["machine", "ls", "--json"]);
        if out.code != 0 {
            return self.failure(&out, 500);
        }
        let list: Vec<Value> = match serde_json::from_slice(&out.stdout) {
            Ok(l) => l,
            Err(e) => {
                return api_error(
                    500,
                    "INTERNAL_ERROR",
                    format!("smolvm-fake serve: ls --json: {e}"),
                )
            }
        };
        let records = self.records();
        let machines: Vec<Value> = list
            .iter()
            .map(|v| self.info(v, v["name"].as_str().and_then(|n| records.get(n))))
            .collect();
        ok(json!({ "machines": machines }))
    }

    fn get(&self, name: &str) -> Reply {
        if self.record(name).is_none() {
            return not_found(name);
        }
        self.info_reply(name)
    }

    fn create(&self, body: &[u8]) -> Reply {
        let v = match parse_json(body) {
            Ok(v) => v,
            Err(r) => return r,
        };
        let new = self.new_api();
        let mut types: Vec<(&str, Kind)> = vec![
            ("name", Kind::Str),
            ("cpus", Kind::Uint),
            ("memoryMb", Kind::Uint),
            ("mounts", Kind::Array),
            ("ports", Kind::Array),
            ("network", Kind::Bool),
            ("gpu", Kind::Bool),
            ("storageGb", Kind::Uint),
            ("overlayGb", Kind::Uint),
            ("allowedCidrs", Kind::Array),
            ("image", Kind::Str),
            ("from", Kind::Str),
        ];
        if new {
            types.extend([
                ("env", Kind::Array),
                ("workdir", Kind::Str),
                ("allowedHosts", Kind::Array),
            ]);
        }
        if let Err(r) = check_types(&v, &types, &["name"]) {
            return r;
        }
        let name = v["name"].as_str().unwrap_or_default();
        if new && v.get("secrets").is_some_and(|s| !s.is_null()) {
            return api_error(
                400,
                "BAD_REQUEST",
                "secret references are not supported through the API; use the CLI's \
                 --secret-env/--secret-file",
            );
        }
        if new && v["cpus"].as_u64() == Some(0) {
            return api_error(400, "BAD_REQUEST", "cpus must be at least 1");
        }
        let mut args: Vec<String> = vec!["machine".into(), "create".into()];
        let mut env: Vec<(String, String)> = Vec::new();
        let mut opt = |flag: &str, value: String| {
            args.push(format!("--{flag}"));
            args.push(value);
        };
        if let Some(i) = v["image"].as_str() {
            opt("image", i.into());
        }
        if let Some(f) = v["from"].as_str() {
            opt("from", f.into());
        }
        // v0.8.2 accepted `cpus: 0` and host port 0 (200, nothing validated); the CLI would
        // refuse them, so they are left out there: the record keeps the defaults.
        if let Some(c) = v["cpus"].as_u64().filter(|c| new || *c > 0) {
            opt("cpus", c.to_string());
        }
        if let Some(m) = v["memoryMb"].as_u64() {
            opt("mem", m.to_string());
        }
        if let Some(s) = v["storageGb"].as_u64() {
            opt("storage", s.to_string());
        }
        if let Some(o) = v["overlayGb"].as_u64() {
            opt("overlay", o.to_string());
        }
        for p in v["ports"].as_array().into_iter().flatten() {
            let (h, g) = (
                p["host"].as_u64().unwrap_or(0),
                p["guest"].as_u64().unwrap_or(0),
            );
            if !new && (h == 0 || g == 0) {
                continue;
            }
            opt("port", format!("{h}:{g}"));
        }
        for m in v["mounts"].as_array().into_iter().flatten() {
            let ro = if m["readonly"].as_bool() == Some(true) {
                ":ro"
            } else {
                ""
            };
            opt(
                "volume",
                format!(
                    "{}:{}{ro}",
                    m["source"].as_str().unwrap_or(""),
                    m["target"].as_str().unwrap_or("")
                ),
            );
        }
        // v0.8.2 kept the egress policy in server memory only, never in the database, and
        // dropped env and workdir: none of it reaches the record.
        if new {
            for c in v["allowedCidrs"].as_array().into_iter().flatten() {
                opt("allow-cidr", c.as_str().unwrap_or("").into());
            }
            for h in v["allowedHosts"].as_array().into_iter().flatten() {
                opt("allow-host", h.as_str().unwrap_or("").into());
            }
            for e in v["env"].as_array().into_iter().flatten() {
                let (k, val) = match env_pair(e) {
                    Ok(p) => p,
                    Err(r) => return r,
                };
                opt("env", k.clone());
                env.push((k, val));
            }
            if let Some(w) = v["workdir"].as_str() {
                opt("workdir", w.into());
            }
        }
        if v["network"].as_bool() == Some(true) {
            args.push("--net".into());
        }
        args.extend(self.name_args(name));
        let out = self.cli(&args, &env, None);
        if out.code != 0 {
            let lower = out.message().to_ascii_lowercase();
            if lower.contains("injected failure") || lower.starts_with("agent operation failed") {
                return api_error(500, "INTERNAL_ERROR", out.message());
            }
            // smolvm's API answers its own wording for a duplicate name.
            if lower.contains("already exists") {
                return api_error(409, "CONFLICT", format!("machine '{name}' already exists"));
            }
            return api_error(400, "BAD_REQUEST", out.message());
        }
        self.info_reply(name)
    }

    fn start(&self, name: &str, query: &str) -> Reply {
        if self.record(name).is_none() {
            return not_found(name);
        }
        let mut args: Vec<String> = vec!["machine".into(), "start".into(), "--name".into()];
        args.push(name.into());
        if self.at_least(1, 2, 5) && query_flag(query, "forkable") {
            args.push("--forkable".into());
        }
        let out = self.cli(&args, &[], None);
        if out.code != 0 {
            return self.start_failure(&out);
        }
        self.info_reply(name)
    }

    fn start_failure(&self, out: &Out) -> Reply {
        let msg = out.message();
        if self.new_api() && msg.to_ascii_lowercase().contains("in use") {
            return api_error(409, "PORT_IN_USE", msg);
        }
        let msg = msg
            .strip_prefix("config operation failed: start machine: ")
            .unwrap_or(&msg);
        api_error(
            500,
            "INTERNAL_ERROR",
            format!("failed to start machine: {msg}"),
        )
    }

    fn stop(&self, name: &str) -> Reply {
        if self.record(name).is_none() {
            return not_found(name);
        }
        // 200 also when not running: the CLI says so and exits 0.
        let out = self.run(&["machine", "stop", "--name", name]);
        if out.code != 0 {
            return self.failure(&out, 500);
        }
        self.info_reply(name)
    }

    fn delete(&self, name: &str, query: &str) -> Reply {
        let records = self.records();
        let Some(m) = records.get(name) else {
            return not_found(name);
        };
        let cascade = self.at_least(1, 7, 0) && query_flag(query, "cascade");
        let clones: Vec<&str> = records
            .values()
            .filter(|c| c.golden.as_deref() == Some(name) && !c.broken)
            .map(|c| c.name.as_str())
            .collect();
        if !clones.is_empty() && !cascade {
            return api_error(
                409,
                "CONFLICT",
                format!(
                    "machine '{name}' is the fork base for {} clone(s) ({}); delete the clones \
                     first or use cascade=true",
                    clones.len(),
                    clones.join(", ")
                ),
            );
        }
        // The API stops first in every version (the CLI only from v0.8.1).
        if m.state.as_str() == "running" {
            let _ = self.run(&["machine", "stop", "--name", name]);
        }
        let mut args: Vec<String> = vec!["machine".into(), "delete".into(), "-f".into()];
        if cascade {
            args.push("--cascade".into());
        }
        args.extend(self.name_args(name));
        let out = self.cli(&args, &[], None);
        if out.code != 0 {
            return self.failure(&out, 500);
        }
        ok(json!({ "deleted": name }))
    }

    /// Exec and files boot a stopped machine first (`ensure_running_and_persist`).
    fn ensure_running(&self, name: &str) -> Result<(), Reply> {
        let Some(m) = self.record(name) else {
            return Err(not_found(name));
        };
        if m.state.as_str() == "running" {
            return Ok(());
        }
        let out = self.run(&["machine", "start", "--name", name]);
        if out.code != 0 {
            return Err(self.start_failure(&out));
        }
        Ok(())
    }

    fn exec(&self, name: &str, body: &[u8]) -> Reply {
        let v = match parse_json(body) {
            Ok(v) => v,
            Err(r) => return r,
        };
        const KNOWN: [&str; 7] = [
            "command",
            "env",
            "secrets",
            "workdir",
            "timeoutSecs",
            "stdin",
            "background",
        ];
        if self.new_api() {
            if let Some(unknown) = v
                .as_object()
                .and_then(|o| o.keys().find(|k| !KNOWN.contains(&k.as_str())))
            {
                return plain(
                    422,
                    format!(
                        "Failed to deserialize the JSON body into the target type: {unknown}: \
                         unknown field `{unknown}`, expected one of `command`, `env`, \
                         `secrets`, `workdir`, `timeoutSecs`, `stdin`, `background`"
                    ),
                );
            }
        }
        let types = [
            ("command", Kind::Array),
            ("env", Kind::Array),
            ("workdir", Kind::Str),
            ("timeoutSecs", Kind::Uint),
            ("stdin", Kind::Str),
            ("background", Kind::Bool),
        ];
        if let Err(r) = check_types(&v, &types, &["command"]) {
            return r;
        }
        if self.new_api() && v.get("secrets").is_some_and(|s| !s.is_null()) {
            return api_error(
                400,
                "BAD_REQUEST",
                "secret references are not supported through the API; use the CLI's \
                 --secret-env/--secret-file",
            );
        }
        let command: Vec<String> = v["command"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| c.as_str().map(str::to_string).unwrap_or_default())
            .collect();
        if command.is_empty() {
            return api_error(400, "BAD_REQUEST", "command cannot be empty");
        }
        let mut args: Vec<String> = vec!["machine".into(), "exec".into(), "--name".into()];
        args.push(name.into());
        let mut env = Vec::new();
        for e in v["env"].as_array().into_iter().flatten() {
            let (k, val) = match env_pair(e) {
                Ok(p) => p,
                Err(r) => return r,
            };
            if !self.at_least(0, 8, 1) {
                // 0.8.0's `-e KEY` drops the variable; a `KEY=VALUE` in argv would show the
                // value in /proc. Refusing is the honest answer.
                return api_error(
                    400,
                    "BAD_REQUEST",
                    "smolvm-fake serve: exec env needs smolvm 0.8.1+ (0.8.0 has no -e KEY)",
                );
            }
            args.push("-e".into());
            args.push(k.clone());
            env.push((k, val));
        }
        if let Some(w) = v["workdir"].as_str() {
            args.extend(["-w".into(), w.into()]);
        }
        if let Some(t) = v["timeoutSecs"].as_u64().filter(|t| *t > 0) {
            args.extend(["--timeout".into(), format!("{t}s")]);
        }
        let stdin = v["stdin"].as_str().map(|s| s.as_bytes().to_vec());
        if stdin.is_some() {
            args.push("-i".into());
        }
        args.push("--".into());
        args.extend(command);
        if let Err(r) = self.ensure_running(name) {
            return r;
        }
        if v["background"].as_bool() == Some(true) {
            return self.exec_background(&args, &env);
        }
        let out = self.cli(&args, &env, stdin.as_deref());
        if is_smolvm_error(&out) {
            return self.failure(&out, 500);
        }
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut answer = json!({"exitCode": out.code, "stdout": stdout, "stderr": out.stderr});
        if self.new_api() {
            answer["stdoutB64"] = json!(b64(&out.stdout));
            answer["stderrB64"] = json!(b64(out.stderr.as_bytes()));
        }
        ok(answer)
    }

    /// `background: true`: answered at once with `pid=N`; the child runs on, reaped by a
    /// thread.
    fn exec_background(&self, args: &[String], env: &[(String, String)]) -> Reply {
        let child = Process::new(&self.exe)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        match child {
            Ok(mut c) => {
                let pid = c.id();
                std::thread::spawn(move || {
                    let _ = c.wait();
                });
                let mut answer = json!({"exitCode": 0, "stdout": format!("pid={pid}\n"),
                                        "stderr": ""});
                if self.new_api() {
                    answer["stdoutB64"] = json!(b64(format!("pid={pid}\n").as_bytes()));
                    answer["stderrB64"] = json!("");
                }
                ok(answer)
            }
            Err(e) => api_error(500, "INTERNAL_ERROR", format!("smolvm-fake serve: {e}")),
        }
    }

    fn scratch_file(&self) -> PathBuf {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        self.scratch.join(format!("xfer-{n}"))
    }

    fn put_file(&self, name: &str, guest: &str, body: &[u8]) -> Reply {
        if let Err(r) = self.ensure_running(name) {
            return r;
        }
        let host = self.scratch_file();
        if let Err(e) = std::fs::write(&host, body) {
            return api_error(500, "INTERNAL_ERROR", format!("write upload: {e}"));
        }
        let guest = format!("/{}", guest.trim_start_matches('/'));
        let out = self.cli(
            &[
                "machine".into(),
                "cp".into(),
                host.display().to_string(),
                format!("{name}:{guest}"),
            ],
            &[],
            None,
        );
        let _ = std::fs::remove_file(&host);
        if out.code != 0 {
            return self.failure(&out, 500);
        }
        ok(json!({"path": guest, "size": body.len()}))
    }

    fn get_file(&self, name: &str, guest: &str) -> Reply {
        if let Err(r) = self.ensure_running(name) {
            return r;
        }
        let host = self.scratch_file();
        let guest = format!("/{}", guest.trim_start_matches('/'));
        let out = self.cli(
            &[
                "machine".into(),
                "cp".into(),
                format!("{name}:{guest}"),
                host.display().to_string(),
            ],
            &[],
            None,
        );
        if out.code != 0 {
            let _ = std::fs::remove_file(&host);
            return self.failure(&out, 500);
        }
        let read = std::fs::read(&host);
        let _ = std::fs::remove_file(&host);
        match read {
            Ok(bytes) => Reply(200, "application/octet-stream", bytes),
            Err(e) => api_error(500, "INTERNAL_ERROR", format!("read download: {e}")),
        }
    }

    fn fork(&self, golden: &str, body: &[u8]) -> Reply {
        let v = match parse_json(body) {
            Ok(v) => v,
            Err(r) => return r,
        };
        let types = [
            ("name", Kind::Str),
            ("ports", Kind::Array),
            ("env", Kind::Array),
        ];
        if let Err(r) = check_types(&v, &types, &[]) {
            return r;
        }
        if v.get("secrets").is_some_and(|s| !s.is_null()) {
            return api_error(
                400,
                "BAD_REQUEST",
                "secret references are not supported through the API",
            );
        }
        let Some(clone) = v["name"].as_str() else {
            return api_error(400, "BAD_REQUEST", "clone name is required");
        };
        if v["env"].as_array().is_some_and(|e| !e.is_empty()) {
            // The CLI's `fork -e` takes only KEY=VALUE: the value would be in the child's
            // argv, where /proc shows it. Not simulated rather than leaked.
            return api_error(
                400,
                "BAD_REQUEST",
                "smolvm-fake serve: fork env is not simulated (the CLI's fork -e needs the \
                 value in argv)",
            );
        }
        if self.record(golden).is_none() {
            return not_found(golden);
        }
        let mut args: Vec<String> = vec!["machine".into(), "fork".into()];
        for p in v["ports"].as_array().into_iter().flatten() {
            args.push("-p".into());
            args.push(format!(
                "{}:{}",
                p["host"].as_u64().unwrap_or(0),
                p["guest"].as_u64().unwrap_or(0)
            ));
        }
        args.extend([
            "--golden".into(),
            golden.into(),
            "--name".into(),
            clone.into(),
        ]);
        let out = self.cli(&args, &[], None);
        if out.code != 0 {
            let msg = out.message();
            let lower = msg.to_ascii_lowercase();
            return if lower.contains("already exists")
                || lower.contains("not running forkable")
                || lower.contains("paused")
                || lower.contains("frozen")
            {
                api_error(409, "CONFLICT", msg)
            } else if out.code == 2 || lower.contains("clone name") {
                api_error(400, "BAD_REQUEST", msg)
            } else {
                self.failure(&out, 500)
            };
        }
        self.info_reply(clone)
    }
}

/// A smolvm error rather than the guest's own exit status: the CLI's `Error: …` line for
/// a failure before or around the command (agent, config, the fake itself).
fn is_smolvm_error(out: &Out) -> bool {
    if out.code == 0 || out.code == 124 {
        return false;
    }
    if out.code < 0 || out.code == 2 && out.stderr.starts_with("error: ") {
        return true;
    }
    out.stderr.lines().any(|l| {
        [
            "Error: agent operation failed",
            "Error: config operation failed",
            "Error: smolvm-fake",
            "Error: sim:",
            "Error: vm not found",
        ]
        .iter()
        .any(|p| l.starts_with(p))
    })
}

/// `{name, value}` of an API env entry; a name that `-e KEY` cannot carry is refused.
fn env_pair(e: &Value) -> Result<(String, String), Reply> {
    let k = e["name"].as_str().unwrap_or_default();
    let val = e["value"].as_str().unwrap_or_default();
    let valid = !k.is_empty()
        && !k.starts_with(|c: char| c.is_ascii_digit())
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(api_error(
            400,
            "BAD_REQUEST",
            format!("invalid env key '{k}': must match [A-Za-z_][A-Za-z0-9_]*"),
        ));
    }
    // The child's own configuration must stay the server's.
    if k.starts_with("SMOLVM_FAKE_") {
        return Err(api_error(
            400,
            "BAD_REQUEST",
            format!("smolvm-fake serve: env key '{k}' is reserved for the fake"),
        ));
    }
    Ok((k.to_string(), val.to_string()))
}

fn query_flag(query: &str, key: &str) -> bool {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .any(|(k, v)| k == key && v == "true")
}

/// axum's `Json` rejection for a body that is not JSON: 400 plain text.
fn parse_json(body: &[u8]) -> Result<Value, Reply> {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) if v.is_object() => Ok(v),
        Ok(_) => Err(plain(
            422,
            "Failed to deserialize the JSON body into the target type: invalid type: expected \
             struct",
        )),
        Err(e) => Err(plain(
            400,
            format!("Failed to parse the request body as JSON: {e}"),
        )),
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Str,
    Uint,
    Bool,
    Array,
}

/// serde's 422 for a missing required field or a value of the wrong JSON type.
fn check_types(v: &Value, types: &[(&str, Kind)], required: &[&str]) -> Result<(), Reply> {
    let reject = |msg: String| {
        plain(
            422,
            format!("Failed to deserialize the JSON body into the target type: {msg}"),
        )
    };
    for r in required {
        if v.get(*r).is_none() {
            return Err(reject(format!("missing field `{r}`")));
        }
    }
    for (field, kind) in types {
        let Some(value) = v.get(*field) else { continue };
        if value.is_null() && !required.contains(field) {
            continue;
        }
        let (fits, expected) = match kind {
            Kind::Str => (value.is_string(), "a string"),
            Kind::Uint => (value.is_u64(), "an unsigned integer"),
            Kind::Bool => (value.is_boolean(), "a boolean"),
            Kind::Array => (value.is_array(), "a sequence"),
        };
        if !fits {
            let got = match value {
                Value::Null => "null".to_string(),
                Value::Bool(b) => format!("boolean `{b}`"),
                Value::Number(n) => format!("number `{n}`"),
                Value::String(s) => format!("string {s:?}"),
                Value::Array(_) => "sequence".to_string(),
                Value::Object(_) => "map".to_string(),
            };
            return Err(reject(format!(
                "{field}: invalid type: {got}, expected {expected}"
            )));
        }
    }
    Ok(())
}

/// Percent-decoding of a path segment or the `{*path}` tail.
fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// Standard base64 with padding (`stdoutB64`).
fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn base64_and_decode() {
        assert_eq!(b64(b""), "");
        assert_eq!(b64(b"f"), "Zg==");
        assert_eq!(b64(b"fo"), "Zm8=");
        assert_eq!(b64(b"foo"), "Zm9v");
        assert_eq!(b64(b"hi\n"), "aGkK");
        assert_eq!(decode("tmp/a%20b.txt"), "tmp/a b.txt");
        assert_eq!(decode("50%"), "50%");
        assert_eq!(decode("%2"), "%2");
    }

    #[test]
    fn listen_targets() {
        assert!(matches!(parse_listen("127.0.0.1:0"), Ok(Listen::Tcp(_))));
        assert!(
            matches!(parse_listen("unix:///x/a.sock"), Ok(Listen::Unix(p)) if p == Path::new("/x/a.sock"))
        );
        assert!(matches!(parse_listen("/x/a.sock"), Ok(Listen::Unix(_))));
        assert!(parse_listen("foo:bar")
            .err()
            .is_some_and(|e| e.contains("invalid address 'foo:bar'")));
    }
}
