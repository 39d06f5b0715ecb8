//! The operations of the CLI client as requests to `smolvm serve` (smolvm-cli-more.md §9):
//! bodies for the server's version, its answers read back into the crate's types, and every
//! error shape of the API mapped to [`Error`].
//!
//! Where the API does something the CLI does not, this keeps the CLI's behaviour (the
//! harness promises one behaviour whatever the front end):
//! * exec and file copies start a stopped machine on the server; here they refuse, as the
//!   CLI does, after a status look (a machine stopped between the look and the call is
//!   started by the server: that race is accepted);
//! * v0.8.2 validates nothing and ignores unknown or misspelled fields: every body is built
//!   from validated options, field by field for the server's version, and what a version
//!   would drop is refused instead ([`Error::Unsupported`]);
//! * v0.8.2 does not persist `allowedCidrs` (lost on restart and on a CLI start): an egress
//!   policy is refused before 1.1.0;
//! * uploads over the server's body limit (2 MiB before 1.7.0, 100 MiB after) are refused
//!   before sending.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::http::{self, Body, Response};
use super::Endpoint;
use crate::cli::{
    CreateOptions, ExecOptions, ForkOptions, MachineInfo, MachineState, PortMapping, Source,
};
use crate::config::config_or_default;
use crate::dialect::Version;
use crate::error::{CommandLine, Error, Result};
use crate::runner::{Capture, RawOutput};

/// What the API of one smolvm version has (smolvm-cli-more.md §9.2).
#[derive(Clone, Copy, Debug)]
pub(crate) struct ApiFacts {
    pub(crate) version: Version,
    /// `env`/`workdir` on create: not in 0.8.2 (silently dropped), in 1.9.2. Assumed from
    /// 1.0.0, when the CLI's create got `--env`.
    pub(crate) create_env: bool,
    /// `allowedCidrs` persisted with the machine: from 1.1.0.
    pub(crate) persists_cidrs: bool,
    /// `allowedHosts` on create: known in 1.9.2's API, not in 0.8.2's.
    pub(crate) allowed_hosts: bool,
    /// The request body limit of the files route.
    pub(crate) upload_limit: usize,
    /// `POST …/fork` and `start?forkable=true`: from 1.2.5.
    pub(crate) fork: bool,
    /// `DELETE …?cascade=true`: from 1.7.0, as the CLI's `--cascade`.
    pub(crate) cascade: bool,
}

impl ApiFacts {
    pub(crate) fn of(version: Version) -> ApiFacts {
        let at_least = |a, b, c| version >= Version::new(a, b, c);
        ApiFacts {
            version,
            create_env: at_least(1, 0, 0),
            persists_cidrs: at_least(1, 1, 0),
            allowed_hosts: at_least(1, 9, 0),
            upload_limit: if at_least(1, 7, 0) {
                100 * 1024 * 1024
            } else {
                2 * 1024 * 1024
            },
            fork: at_least(1, 2, 5),
            cascade: at_least(1, 7, 0),
        }
    }
}

/// A client of one `smolvm serve`.
#[derive(Debug)]
pub(crate) struct Remote {
    endpoint: Endpoint,
    url: String,
}

/// A request body and how it is shown (values redacted).
enum Payload {
    Json(Value),
    Bytes(Vec<u8>),
}

impl Remote {
    pub(crate) fn new(endpoint: Endpoint) -> Remote {
        let url = endpoint.to_string();
        Remote { endpoint, url }
    }

    /// The canonical URL (what the ledger records).
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    pub(crate) fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// `GET /health`: the server's version.
    pub(crate) fn health(&self, timeout: Duration) -> Result<Version> {
        let (req, resp) = self.call(None, "GET", "/health".into(), None, vec![], timeout)?;
        let v = json_of(&req, &resp)?;
        let text = v.get("version").and_then(Value::as_str).unwrap_or_default();
        text.parse().map_err(|_| Error::Parse {
            command: req.clone(),
            reason: format!("no smolvm version in the health answer: {}", shown(&resp)),
        })
    }

    /// `POST /api/v1/machines`, created not started: the server's `createdAt` of it.
    pub(crate) fn create(
        &self,
        name: &str,
        options: &CreateOptions,
        facts: ApiFacts,
        timeout: Duration,
    ) -> Result<Option<u64>> {
        let body = create_body(name, options, facts, &self.endpoint)?;
        let secrets = options.env.iter().map(|(_, v)| v.clone()).collect();
        self.call(
            Some(name),
            "POST",
            "/api/v1/machines".into(),
            Some(Payload::Json(body)),
            secrets,
            timeout,
        )
        .map(|(_, resp)| made_at(&resp))
    }

    pub(crate) fn start(&self, name: &str, forkable: bool, timeout: Duration) -> Result<()> {
        let query = if forkable { "?forkable=true" } else { "" };
        let path = format!("{}/start{query}", machine_path(name));
        self.call(Some(name), "POST", path, None, vec![], timeout)
            .map(drop)
    }

    pub(crate) fn stop(&self, name: &str, timeout: Duration) -> Result<()> {
        let path = format!("{}/stop", machine_path(name));
        self.call(Some(name), "POST", path, None, vec![], timeout)
            .map(drop)
    }

    /// `DELETE`, idempotent: a missing machine counts as deleted. Without `cascade`, a golden
    /// with clones is refused (409) and kept.
    pub(crate) fn delete(&self, name: &str, cascade: bool, timeout: Duration) -> Result<()> {
        let query = if cascade { "?cascade=true" } else { "" };
        let path = format!("{}{query}", machine_path(name));
        match self.call(Some(name), "DELETE", path, None, vec![], timeout) {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `GET /api/v1/machines`, sorted by name.
    pub(crate) fn list(&self, timeout: Duration) -> Result<Vec<MachineInfo>> {
        let (req, resp) = self.call(
            None,
            "GET",
            "/api/v1/machines".into(),
            None,
            vec![],
            timeout,
        )?;
        let v = json_of(&req, &resp)?;
        let Some(items) = v.get("machines").and_then(Value::as_array) else {
            return Err(parse_error(&req, &resp, "expected {\"machines\": [...]}"));
        };
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            out.push(
                machine_info(item)
                    .ok_or_else(|| parse_error(&req, &resp, "a machine without a name"))?,
            );
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// `GET /api/v1/machines/{name}`; `None` for 404 `NOT_FOUND`.
    pub(crate) fn status(&self, name: &str, timeout: Duration) -> Result<Option<MachineInfo>> {
        match self.call(Some(name), "GET", machine_path(name), None, vec![], timeout) {
            Ok((req, resp)) => {
                let v = json_of(&req, &resp)?;
                machine_info(&v)
                    .map(Some)
                    .ok_or_else(|| parse_error(&req, &resp, "a machine without a name"))
            }
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The CLI does not start a stopped machine for `exec` or `cp`; the API would.
    fn require_running(&self, name: &str, what: &str, timeout: Duration) -> Result<()> {
        match self.status(name, timeout)? {
            Some(info) if info.state == MachineState::Running => Ok(()),
            Some(info) => Err(Error::invalid(
                "machine state",
                format!(
                    "{what} needs machine {name:?} running, and it is {:?}: start it first \
                     (smolvm serve would start it; the CLI does not, and the harness keeps the \
                     CLI's behaviour)",
                    info.state
                ),
            )),
            None => Err(Error::Api {
                request: CommandLine::request("GET", &self.url, &machine_path(name), None, vec![]),
                status: 404,
                code: Some("NOT_FOUND".into()),
                message: format!("machine '{name}' not found"),
            }),
        }
    }

    /// `POST …/exec`: the guest's exit code is data, not an error.
    pub(crate) fn exec(
        &self,
        name: &str,
        argv: &[String],
        options: &ExecOptions,
        timeout: Duration,
    ) -> Result<(CommandLine, RawOutput)> {
        self.require_running(name, "exec", timeout)?;
        // Per-exec secrets travel in the body (the API resolves `secrets` refs on the server's
        // host, not ours); the body is never shown with their values.
        let env: Vec<&(String, String)> = options.env.iter().chain(&options.secret_env).collect();
        let mut body = json!({ "command": argv });
        if !env.is_empty() {
            body["env"] = env
                .iter()
                .map(|(k, v)| json!({"name": k, "value": v}))
                .collect();
        }
        if let Some(dir) = &options.workdir {
            body["workdir"] = json!(dir);
        }
        if let Some(t) = options.timeout {
            body["timeoutSecs"] = json!(t.as_secs().max(1));
        }
        let secrets = env.iter().map(|(_, v)| v.clone()).collect();
        let started = Instant::now();
        let path = format!("{}/exec", machine_path(name));
        // The answer is one JSON document, read whole: both streams up to the cap each, as
        // JSON strings (an escape is up to 6 bytes per byte of output), and never less than
        // `MIN_EXEC_BODY`; past that, an error. What is read is cut to the cap as the CLI's
        // output is.
        let cap = usize::try_from(config_or_default().output_cap).unwrap_or(usize::MAX);
        let max = cap.saturating_mul(12).max(MIN_EXEC_BODY);
        let body = Some(Payload::Json(body));
        let (req, resp) =
            self.call_capped(Some(name), "POST", path, body, secrets, timeout, max)?;
        let v = json_of(&req, &resp)?;
        let Some(code) = v.get("exitCode").and_then(Value::as_i64) else {
            return Err(parse_error(&req, &resp, "no exitCode"));
        };
        // Byte for byte where the server sends base64 (1.x), as the CLI's output is; the
        // plain field (lossy UTF-8) otherwise.
        let text = |k: &str| -> Result<Vec<u8>> {
            if let Some(encoded) = v.get(format!("{k}B64")).and_then(Value::as_str) {
                return decode_b64(encoded)
                    .ok_or_else(|| parse_error(&req, &resp, &format!("{k}B64 is not base64")));
            }
            Ok(v.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .as_bytes()
                .to_vec())
        };
        let cap = config_or_default().output_cap;
        let capped = |bytes: Vec<u8>| {
            let mut c = Capture::new(cap);
            c.push(&bytes);
            c.finish()
        };
        let (stdout, stdout_truncation) = capped(text("stdout")?);
        let (stderr, stderr_truncation) = capped(text("stderr")?);
        let out = RawOutput {
            code: Some(i32::try_from(code).unwrap_or(i32::MAX)),
            stdout,
            stderr,
            duration: started.elapsed(),
            stdout_truncation,
            stderr_truncation,
        };
        Ok((req, out))
    }

    /// `PUT …/files/{path}`.
    pub(crate) fn upload(
        &self,
        name: &str,
        guest: &str,
        bytes: Vec<u8>,
        facts: ApiFacts,
        timeout: Duration,
    ) -> Result<()> {
        if bytes.len() > facts.upload_limit {
            return Err(upload_too_large(bytes.len() as u64, facts));
        }
        self.require_running(name, "copying into the machine", timeout)?;
        let path = format!("{}/files{}", machine_path(name), http::encode_path(guest));
        self.call(
            Some(name),
            "PUT",
            path,
            Some(Payload::Bytes(bytes)),
            vec![],
            timeout,
        )
        .map(drop)
    }

    /// `GET …/files/{path}`.
    pub(crate) fn download(&self, name: &str, guest: &str, timeout: Duration) -> Result<Vec<u8>> {
        self.require_running(name, "copying out of the machine", timeout)?;
        let path = format!("{}/files{}", machine_path(name), http::encode_path(guest));
        let (_, resp) = self.call(Some(name), "GET", path, None, vec![], timeout)?;
        Ok(resp.body)
    }

    /// `POST …/{golden}/fork`: the clone's ports as the server remapped them, and its
    /// `createdAt`.
    pub(crate) fn fork(
        &self,
        golden: &str,
        clone: &str,
        options: &ForkOptions,
        timeout: Duration,
    ) -> Result<(Vec<PortMapping>, Option<u64>)> {
        let env: Vec<String> = options
            .env
            .iter()
            .chain(&options.secret_env)
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let mut body = json!({ "name": clone });
        if !env.is_empty() {
            body["env"] = json!(env);
        }
        let secrets = options
            .env
            .iter()
            .chain(&options.secret_env)
            .map(|(_, v)| v.clone())
            .collect();
        let path = format!("{}/fork", machine_path(golden));
        let (req, resp) = self.call(
            Some(clone),
            "POST",
            path,
            Some(Payload::Json(body)),
            secrets,
            timeout,
        )?;
        let v = json_of(&req, &resp)?;
        Ok((ports_of(&v), made_at(&resp)))
    }

    /// One request, recorded in the machine's transcript; any answer but 2xx is an error.
    fn call(
        &self,
        machine: Option<&str>,
        method: &'static str,
        path: String,
        body: Option<Payload>,
        secrets: Vec<String>,
        timeout: Duration,
    ) -> Result<(CommandLine, Response)> {
        let cap = usize::try_from(config_or_default().output_cap).unwrap_or(usize::MAX);
        let max = cap.saturating_mul(2).max(MIN_BODY);
        self.call_capped(machine, method, path, body, secrets, timeout, max)
    }

    /// [`Remote::call`], reading at most `max` bytes of answer.
    #[allow(clippy::too_many_arguments)]
    fn call_capped(
        &self,
        machine: Option<&str>,
        method: &'static str,
        path: String,
        body: Option<Payload>,
        secrets: Vec<String>,
        timeout: Duration,
        max: usize,
    ) -> Result<(CommandLine, Response)> {
        let shown_body = body.as_ref().map(|b| match b {
            Payload::Json(v) => cap_text(&redact_json(v).to_string(), SHOWN_BODY),
            Payload::Bytes(bytes) => format!("<{} bytes>", bytes.len()),
        });
        let req = CommandLine::request(method, &self.url, &path, shown_body, secrets);
        let bytes;
        let body = match &body {
            Some(Payload::Json(v)) => {
                bytes = v.to_string().into_bytes();
                Some(Body {
                    content_type: "application/json",
                    bytes: &bytes,
                })
            }
            Some(Payload::Bytes(b)) => Some(Body {
                content_type: "application/octet-stream",
                bytes: b,
            }),
            None => None,
        };
        let started = Instant::now();
        let result = http::send(&self.endpoint, method, &path, body, timeout, max);
        let result = result.map_err(|e| {
            if crate::cleanup::terminating() && e.kind() == std::io::ErrorKind::ConnectionAborted {
                // Our own teardown shut the socket (`cancel_in_flight`), not the server.
                std::io::Error::new(
                    std::io::ErrorKind::Interrupted,
                    "cancelled by the harness's cleanup (the process is ending)",
                )
            } else {
                e
            }
        });
        let outcome = match &result {
            Ok(r) => format!("{} {}", r.status, reason(r.status)),
            Err(e) => format!("no answer: {e}"),
        };
        crate::transcript::record_line(machine, &req, outcome, started.elapsed());
        let resp = result.map_err(|source| {
            if source.kind() == std::io::ErrorKind::InvalidData {
                // The server answered, with something that is not a response we can read.
                Error::Parse {
                    command: req.clone(),
                    reason: req.redact_output(&source.to_string()),
                }
            } else {
                Error::Unreachable {
                    request: req.clone(),
                    source,
                }
            }
        })?;
        if (200..300).contains(&resp.status) {
            return Ok((req, resp));
        }
        Err(api_error(req, &resp))
    }
}

/// An upload over the server's body limit, refused before anything is sent.
pub(crate) fn upload_too_large(size: u64, facts: ApiFacts) -> Error {
    Error::invalid(
        "upload",
        format!(
            "{size} bytes is over the {} MiB body limit of the smolvm {} API",
            facts.upload_limit / (1024 * 1024),
            facts.version
        ),
    )
}

/// At least this much of a response is read whatever the output cap (an error body, a
/// listing of many machines).
const MIN_BODY: usize = 16 * 1024 * 1024;
/// At least this much of an exec answer is read, whatever the output cap: a guest's output
/// over the cap is cut to it (as over the CLI), not an error, up to this size.
const MIN_EXEC_BODY: usize = 256 * 1024 * 1024;
/// How much of a request body a message shows.
const SHOWN_BODY: usize = 2048;
/// How much of an error body a message quotes.
const QUOTED_ANSWER: usize = 2048;

/// `/api/v1/machines/{name}` (names are validated: no character needs encoding).
fn machine_path(name: &str) -> String {
    format!("/api/v1/machines/{}", http::encode_path(name))
}

/// The error a non-2xx answer means: `{"error","code"}` JSON, or axum's plain text (400
/// malformed JSON, 413 body too large, 422 unknown field or wrong type).
fn api_error(request: CommandLine, resp: &Response) -> Error {
    // smolvm's own errors are JSON; axum's extractor rejections are plain text.
    let json: Option<Value> = resp
        .is_json()
        .then(|| serde_json::from_slice(&resp.body).ok())
        .flatten();
    let (code, message) = match json
        .as_ref()
        .and_then(|v| v.get("error").and_then(Value::as_str))
    {
        Some(msg) => (
            json.as_ref()
                .and_then(|v| v.get("code"))
                .and_then(Value::as_str)
                .map(str::to_string),
            msg.to_string(),
        ),
        None => (None, String::from_utf8_lossy(&resp.body).trim().to_string()),
    };
    let mut message = cap_text(&message, QUOTED_ANSWER);
    if message.is_empty() {
        message = reason(resp.status).to_string();
    }
    match resp.status {
        401 | 403 => message.push_str(
            " (a server with mTLS wants SMOLVM_HARNESS_TLS_CERT, _KEY and _CA set to PEM files)",
        ),
        413 => {
            message.push_str(" (the body is over the server's limit: 2 MiB before smolvm 1.7.0)")
        }
        _ => {}
    }
    // Scrubbed here, not only when shown: the field is public.
    let message = request.redact_output(&message);
    Error::Api {
        request,
        status: resp.status,
        code,
        message,
    }
}

fn json_of(req: &CommandLine, resp: &Response) -> Result<Value> {
    serde_json::from_slice(&resp.body)
        .map_err(|e| parse_error(req, resp, &format!("not JSON ({e})")))
}

fn parse_error(req: &CommandLine, resp: &Response, why: &str) -> Error {
    Error::Parse {
        command: req.clone(),
        reason: req.redact_output(&format!("{why}: {}", shown(resp))),
    }
}

fn shown(resp: &Response) -> String {
    cap_text(&String::from_utf8_lossy(&resp.body), QUOTED_ANSWER)
}

fn cap_text(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &text[..end], text.len())
}

/// The body as shown: every `env[].value` and `stdin` replaced, `env: ["K=V"]` cut at `=`.
fn redact_json(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(items) = v.get_mut("env").and_then(Value::as_array_mut) {
        for item in items {
            if let Some(obj) = item.as_object_mut() {
                if obj.contains_key("value") {
                    obj.insert("value".into(), json!("<redacted>"));
                }
            } else if let Some(pair) = item.as_str() {
                let key = pair.split('=').next().unwrap_or_default();
                *item = json!(format!("{key}=<redacted>"));
            }
        }
    }
    if v.get("stdin").is_some() {
        v["stdin"] = json!("<redacted>");
    }
    v
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Payload Too Large",
        422 => "Unprocessable Entity",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// The create body for the server's version, or what it cannot take, refused.
fn create_body(
    name: &str,
    o: &CreateOptions,
    facts: ApiFacts,
    endpoint: &Endpoint,
) -> Result<Value> {
    let v = facts.version;
    let refuse = |what: &'static str, reason: &'static str| {
        Err(Error::Unsupported {
            what,
            version: v,
            reason,
        })
    };
    if !o.secret_env.is_empty() {
        return refuse(
            "secret env over the smolvm API",
            "the API rejects secret references on create (always 400); pass the secret per \
             exec with ExecOptions::secret_env, or use the CLI",
        );
    }
    if !o.extra_args.is_empty() {
        return refuse(
            "extra_args over the smolvm API",
            "raw CLI flags have no API equivalent; use the CLI (unset SMOLVM_HOST)",
        );
    }
    // Labels are not sent: the API has none (0.8.2 through 1.9.2 ignore them), as the CLI
    // before 1.8.0 has none; `Dialect::labels` says so, and ownership rests on the ledger.
    if !o.allow_cidrs.is_empty() && !facts.persists_cidrs {
        return refuse(
            "--allow-cidr over the smolvm API",
            "before 1.1.0 the server keeps allowedCidrs only in memory: lost on a restart and \
             ignored by a CLI start; upgrade the server, or use the CLI",
        );
    }
    if !o.allow_hosts.is_empty() && !facts.allowed_hosts {
        return refuse(
            "--allow-host over the smolvm API",
            "this server's API has no allowedHosts (known from 1.9.2); use the CLI",
        );
    }
    if !o.env.is_empty() && !facts.create_env {
        return refuse(
            "machine env over the smolvm API",
            "the 0.8.x API drops env on create silently; pass it per exec",
        );
    }
    let local = endpoint.is_local();
    if !local && (matches!(o.source, Source::FromPath(_)) || !o.volumes.is_empty()) {
        return refuse(
            "a host path (pack or volume) on a remote smolvm",
            "the server reads paths on its own host; use an image, or a server on this host",
        );
    }
    let mut body = json!({ "name": name, "network": o.net || o.restricts_egress() });
    match &o.source {
        Source::Image(image) => body["image"] = json!(image),
        Source::FromPath(p) => body["from"] = json!(p.to_string_lossy()),
    }
    if let Some(c) = o.cpus {
        body["cpus"] = json!(c);
    }
    if let Some(m) = o.mem_mib {
        body["memoryMb"] = json!(m);
    }
    if let Some(s) = o.storage_gib {
        body["storageGb"] = json!(s);
    }
    if let Some(s) = o.overlay_gib {
        body["overlayGb"] = json!(s);
    }
    if !o.ports.is_empty() {
        body["ports"] = o
            .ports
            .iter()
            .map(|p| json!({"host": p.host, "guest": p.guest}))
            .collect();
    }
    if !o.volumes.is_empty() {
        body["mounts"] = o
            .volumes
            .iter()
            .map(|m| json!({"source": m.host.to_string_lossy(), "target": m.guest, "readonly": m.read_only}))
            .collect();
    }
    if !o.allow_cidrs.is_empty() {
        body["allowedCidrs"] = json!(o.allow_cidrs);
    }
    if !o.allow_hosts.is_empty() {
        body["allowedHosts"] = json!(o.allow_hosts);
    }
    if !o.env.is_empty() {
        body["env"] = o
            .env
            .iter()
            .map(|(k, v)| json!({"name": k, "value": v}))
            .collect();
    }
    Ok(body)
}

/// The API's `MachineInfo` (camelCase, no labels, `createdAt` in Unix seconds).
fn machine_info(v: &Value) -> Option<MachineInfo> {
    let name = v.get("name")?.as_str()?.to_string();
    let state = v.get("state").and_then(Value::as_str).unwrap_or("unknown");
    Some(MachineInfo {
        name,
        state: MachineState::parse(state),
        pid: v
            .get("pid")
            .and_then(Value::as_u64)
            .and_then(|p| u32::try_from(p).ok()),
        created_at: v.get("createdAt").and_then(Value::as_u64),
        image: v.get("image").and_then(Value::as_str).map(str::to_string),
        labels: Default::default(),
        network: v.get("network").and_then(Value::as_bool),
    })
}

/// Standard base64 (the API's `stdoutB64`), or `None` when it is not.
#[cfg(feature = "remote")]
fn decode_b64(text: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

/// Without the `remote` feature no answer is ever read.
#[cfg(not(feature = "remote"))]
fn decode_b64(_text: &str) -> Option<Vec<u8>> {
    None
}

/// The `createdAt` of the `MachineInfo` a create or fork answered with.
fn made_at(resp: &Response) -> Option<u64> {
    serde_json::from_slice::<Value>(&resp.body)
        .ok()?
        .get("createdAt")?
        .as_u64()
}

fn ports_of(v: &Value) -> Vec<PortMapping> {
    v.get("ports")
        .and_then(Value::as_array)
        .map(|ports| {
            ports
                .iter()
                .filter_map(|p| {
                    let host = u16::try_from(p.get("host")?.as_u64()?).ok()?;
                    let guest = u16::try_from(p.get("guest")?.as_u64()?).ok()?;
                    Some(PortMapping { host, guest })
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_bodies_never_hold_env_values() {
        let body = json!({"command": ["env"], "env": [{"name": "TOKEN", "value": "hunter22"}], "stdin": "pw"});
        let shown = redact_json(&body).to_string();
        assert!(
            !shown.contains("hunter22") && !shown.contains("\"pw\""),
            "{shown}"
        );
        let fork = json!({"name": "c", "env": ["TOKEN=hunter22"]});
        assert_eq!(redact_json(&fork)["env"][0], "TOKEN=<redacted>");
    }

    #[test]
    fn facts_per_version() {
        let old = ApiFacts::of(Version::new(0, 8, 2));
        assert!(!old.persists_cidrs && !old.create_env && !old.fork);
        assert_eq!(old.upload_limit, 2 * 1024 * 1024);
        let new = ApiFacts::of(Version::new(1, 9, 2));
        assert!(new.persists_cidrs && new.create_env && new.fork && new.cascade);
    }
}
