//! Every error shape of the `smolvm serve` API (smolvm-cli-more.md §9.2) maps to the crate's
//! `Error`, with the request in the message and no env value anywhere; the exit code of exec
//! is data; an unreachable or silent server is `is_available() == false` in bounded time.
//!
//! The server here is canned: a unix socket answered by hand with exactly the status,
//! content type and body each case needs (the simulated `smolvm serve` produces the same
//! shapes from real flows: tests/sim_serve.rs, tests/remote.rs).

#[path = "common/canned_api.rs"]
mod canned_api;

use std::io::Write;
use std::os::unix::net::UnixListener;
use std::time::Duration;

use canned_api::{json, plain, read_request, Answer, Canned, RUNNING};
use smolvm_harness::{CpPath, CreateOptions, Error, ExecOptions, Smolvm};

/// (status, code) of an `Error::Api`.
fn api_of(e: &Error) -> (u16, Option<String>) {
    match e {
        Error::Api { status, code, .. } => (*status, code.clone()),
        other => panic!("expected Error::Api, got {other:?}"),
    }
}

#[test]
fn not_found_is_not_found_and_deletes_are_idempotent() {
    let s = Canned::unix("1.9.2", |_, _, _| {
        json(404, "machine 'web' not found", "NOT_FOUND")
    });
    let smolvm = s.client();
    let err = smolvm.machine_start("web").unwrap_err();
    assert_eq!(api_of(&err), (404, Some("NOT_FOUND".into())));
    assert!(err.is_not_found());
    let text = err.to_string();
    assert!(
        text.contains("POST")
            && text.contains("/api/v1/machines/web/start")
            && text.contains("404 NOT_FOUND"),
        "{text}"
    );
    assert_eq!(smolvm.machine_status("web").unwrap(), None);
    smolvm
        .machine_delete("web")
        .expect("a missing machine counts as deleted");
}

#[test]
fn a_route_the_server_lacks_is_not_a_missing_machine() {
    // 0.8.2 has no fork route: a bare 404, no error code.
    let s = Canned::unix("1.9.2", |_, _, _| plain(404, ""));
    let err = s.client().machine_delete("web").unwrap_err();
    assert_eq!(api_of(&err), (404, None));
    assert!(!err.is_not_found(), "{err}");
}

#[test]
fn conflicts_bad_requests_and_server_errors_keep_code_and_message() {
    let cases: Vec<(Answer, u16, Option<&str>, &str)> = vec![
        (json(409, "machine 'web' already exists", "CONFLICT"), 409, Some("CONFLICT"), "already exists"),
        (json(409, "port 8080 is in use", "PORT_IN_USE"), 409, Some("PORT_IN_USE"), "port 8080"),
        (json(400, "invalid CIDR '10.0.0.0/99'", "BAD_REQUEST"), 400, Some("BAD_REQUEST"), "invalid CIDR"),
        (json(500, "failed to start machine: agent operation failed", "INTERNAL_ERROR"), 500, Some("INTERNAL_ERROR"), "failed to start"),
        (json(503, "server is shutting down", "UNAVAILABLE"), 503, Some("UNAVAILABLE"), "shutting down"),
        (json(408, "request timed out", "TIMEOUT"), 408, Some("TIMEOUT"), "timed out"),
        (json(401, "client certificate required", "UNAUTHORIZED"), 401, Some("UNAUTHORIZED"), "SMOLVM_HARNESS_TLS_CERT"),
        (json(403, "forbidden", "FORBIDDEN"), 403, Some("FORBIDDEN"), "SMOLVM_HARNESS_TLS_CERT"),
        (json(500, "process still alive", "CLONE_IDENTITY_REJUVENATION_FAILED"), 500, Some("CLONE_IDENTITY_REJUVENATION_FAILED"), "still alive"),
        (plain(400, "Failed to parse the request body as JSON: expected value at line 1 column 1"), 400, None, "Failed to parse"),
        (plain(422, "Failed to deserialize the JSON body into the target type: timeout_secs: unknown field `timeout_secs`"), 422, None, "unknown field"),
        (plain(413, "Failed to buffer the request body: length limit exceeded"), 413, None, "2 MiB"),
    ];
    for (answer, status, code, says) in cases {
        let a = answer.clone();
        let s = Canned::unix("1.9.2", move |_, _, _| a.clone());
        let err = s.client().machine_start("web").unwrap_err();
        assert_eq!(
            api_of(&err),
            (status, code.map(str::to_string)),
            "{answer:?}"
        );
        let text = err.to_string();
        assert!(text.contains(says), "{answer:?}: {text}");
        assert!(text.contains("/api/v1/machines/web/start"), "{text}");
        assert!(!err.is_not_found());
    }
}

#[test]
fn create_conflict_is_already_exists_and_the_body_is_shown_redacted() {
    let s = Canned::unix("1.9.2", |_, _, body| {
        // A server that quotes the request back must not leak it either.
        json(
            409,
            &format!("machine 'web' already exists ({})", body.replace('"', "'")),
            "CONFLICT",
        )
    });
    let opts = CreateOptions::image("alpine").env("API_TOKEN", "hunter2-value");
    let err = s.client().machine_create("web", &opts).unwrap_err();
    assert_eq!(api_of(&err), (409, Some("CONFLICT".into())));
    let text = format!("{err} {err:?}");
    assert!(!text.contains("hunter2-value"), "{text}");
    assert!(
        text.contains("API_TOKEN") && text.contains("<redacted>"),
        "{text}"
    );
    // The value did go to the server, in the body.
    assert!(s.requests()[0].2.contains("hunter2-value"));
}

#[test]
fn exec_exit_code_is_data_not_an_error() {
    let s = Canned::unix("1.9.2", |method, path, _| match (method, path) {
        ("GET", "/api/v1/machines/web") => (200, "application/json", RUNNING.to_string()),
        _ => (
            200,
            "application/json",
            r#"{"exitCode":3,"stdout":"out\n","stderr":"err\n"}"#.to_string(),
        ),
    });
    let out = s
        .client()
        .machine_exec("web", &["sh", "-c", "exit 3"], &ExecOptions::default())
        .unwrap();
    assert_eq!(out.code(), 3);
    assert_eq!(out.stdout_str(), "out\n");
    assert_eq!(out.stderr_str(), "err\n");
}

#[test]
fn exec_errors_never_show_env_values() {
    let s = Canned::unix("1.9.2", |method, path, body| match (method, path) {
        ("GET", "/api/v1/machines/web") => (200, "application/json", RUNNING.to_string()),
        _ => json(
            400,
            &format!("bad env: {}", body.replace('"', "'")),
            "BAD_REQUEST",
        ),
    });
    let opts = ExecOptions::default()
        .env("PLAIN", "visible-but-redacted")
        .secret_env("TOKEN", "s3cr3t-token");
    let err = s.client().machine_exec("web", &["env"], &opts).unwrap_err();
    let text = format!("{err} {err:?}");
    for value in ["s3cr3t-token", "visible-but-redacted"] {
        assert!(!text.contains(value), "{value} in {text}");
    }
    let transcript = smolvm_harness::transcript::transcript("web");
    let all: String = transcript.iter().map(|e| e.to_string()).collect();
    assert!(
        !all.contains("s3cr3t-token") && all.contains("/exec"),
        "{all}"
    );
}

#[test]
fn exec_and_copies_on_a_stopped_machine_are_refused_like_the_cli() {
    let s = Canned::unix("1.9.2", |method, path, _| match (method, path) {
        ("GET", "/api/v1/machines/web") => (
            200,
            "application/json",
            RUNNING.replace("running", "stopped"),
        ),
        _ => panic!("no request may reach the server: {method} {path}"),
    });
    let smolvm = s.client();
    let err = smolvm
        .machine_exec("web", &["true"], &ExecOptions::default())
        .unwrap_err();
    assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
    let file = tempfile::NamedTempFile::new().unwrap();
    let err = smolvm
        .machine_cp(CpPath::host(file.path()), CpPath::guest("web", "/tmp/x"))
        .unwrap_err();
    assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
    assert!(s.requests().iter().all(|(m, _, _)| m == "GET"));
}

#[test]
fn uploads_over_the_limit_of_0_8_are_refused_before_sending() {
    let s = Canned::unix("0.8.2", |_, _, _| {
        (200, "application/json", RUNNING.to_string())
    });
    let big = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(big.path(), vec![b'x'; 2 * 1024 * 1024 + 1]).unwrap();
    let err = s
        .client()
        .machine_cp(CpPath::host(big.path()), CpPath::guest("web", "/tmp/big"))
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidInput { what: "upload", .. }),
        "{err}"
    );
    assert!(err.to_string().contains("2 MiB"), "{err}");
    assert!(
        s.requests().iter().all(|(m, _, _)| m != "PUT"),
        "{:?}",
        s.requests()
    );
}

#[test]
fn what_0_8_would_drop_is_refused_before_sending() {
    let s = Canned::unix("0.8.2", |m, p, _| panic!("nothing may be sent: {m} {p}"));
    let smolvm = s.client();
    for opts in [
        CreateOptions::image("alpine").allow_cidr("10.0.0.0/8"),
        CreateOptions::image("alpine").env("A", "1"),
    ] {
        let err = smolvm.machine_create("web", &opts).unwrap_err();
        assert!(matches!(err, Error::Unsupported { .. }), "{opts:?}: {err}");
    }
    assert!(s.requests().is_empty());
}

#[test]
fn json_expected_and_not_given_is_a_parse_error() {
    let s = Canned::unix("1.9.2", |_, _, _| plain(200, "<html>proxy</html>"));
    let err = s.client().machine_list().unwrap_err();
    assert!(matches!(err, Error::Parse { .. }), "{err}");
    assert!(err.to_string().contains("GET"), "{err}");
}

#[test]
fn a_missing_socket_is_unreachable_and_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("unix://{}/nothing.sock", dir.path().display());
    let smolvm = Smolvm::remote(&url).unwrap();
    assert!(!smolvm.is_available());
    let err = smolvm.machine_list().unwrap_err();
    assert!(matches!(err, Error::Unreachable { .. }), "{err}");
}

#[test]
fn a_server_that_never_answers_is_unavailable_in_bounded_time() {
    // Accepts (the kernel's backlog does) and never answers.
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("silent.sock");
    let _listener = UnixListener::bind(&sock).unwrap();
    let url = format!("unix://{}", sock.display());
    let smolvm = Smolvm::remote(&url)
        .unwrap()
        .with_timeout(Duration::from_millis(500));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(smolvm.is_available()));
    // A generous watchdog, not a speed claim: without read timeouts this never returns.
    let available = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("is_available() must return");
    assert!(!available);
}

#[test]
fn a_tcp_port_nobody_listens_on_is_unavailable() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let smolvm = Smolvm::remote(&format!("http://127.0.0.1:{port}")).unwrap();
    assert!(!smolvm.is_available());
    assert!(matches!(
        smolvm.version().unwrap_err(),
        Error::Unreachable { .. }
    ));
}

#[test]
fn malformed_urls_are_invalid_input() {
    for url in [
        "",
        "tcp://h:1",
        "unix://rel.sock",
        "http://u:p@h:1",
        "http://h",
    ] {
        let err = Smolvm::remote(url).unwrap_err();
        assert!(matches!(err, Error::InvalidInput { .. }), "{url}: {err}");
    }
}

#[test]
fn a_machine_s_env_is_scrubbed_from_later_errors_and_their_public_fields() {
    // The server echoes everything it ever got; a later error quotes the create's env.
    let s = Canned::unix("1.9.2", |method, path, body| match (method, path) {
        ("POST", "/api/v1/machines") => (200, "application/json", RUNNING.to_string()),
        ("GET", "/api/v1/machines/web") => (200, "application/json", RUNNING.to_string()),
        ("POST", "/api/v1/machines/web/exec") => plain(200, &format!("not json, but {body}")),
        _ => json(
            500,
            "boot failed: DB_PASSWORD=create-time-pass-1",
            "INTERNAL_ERROR",
        ),
    });
    let smolvm = s.client();
    smolvm
        .machine_create(
            "web",
            &CreateOptions::image("alpine")
                .net()
                .env("DB_PASSWORD", "create-time-pass-1"),
        )
        .unwrap();
    let err = smolvm.machine_start("web").unwrap_err();
    let Error::Api { message, .. } = &err else {
        panic!("{err:?}")
    };
    assert!(!message.contains("create-time-pass-1"), "{message}");
    assert!(
        !format!("{err} {err:?}").contains("create-time-pass-1"),
        "{err}"
    );
    let opts = ExecOptions::default().secret_env("TOKEN", "exec-time-secret-2");
    let err = smolvm.machine_exec("web", &["env"], &opts).unwrap_err();
    assert!(matches!(err, Error::Parse { .. }), "{err}");
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains("exec-time-secret-2"), "{shown}");
}

#[test]
fn a_server_that_closes_without_answering_is_unreachable_not_a_parse_error() {
    // It reads the request, then dies (closes): the request may have acted, but nothing
    // came back, which is the server being unreachable, not an answer we cannot read.
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("dies.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let (_, path, _) = read_request(&mut conn);
            if path == "/health" {
                let body = r#"{"status":"ok","version":"1.9.2"}"#;
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
            }
        }
    });
    let smolvm = Smolvm::remote(&format!("unix://{}", sock.display())).unwrap();
    let err = smolvm.machine_list().unwrap_err();
    assert!(matches!(err, Error::Unreachable { .. }), "{err}");
    assert!(err.to_string().contains("closed the connection"), "{err}");
}

#[test]
fn exec_output_is_byte_exact_from_the_base64_fields() {
    // `stdoutB64` (1.x) wins over the lossy `stdout`: bytes that are not UTF-8 survive.
    let s = Canned::unix("1.9.2", |method, path, _| match (method, path) {
        ("GET", "/api/v1/machines/web") => (200, "application/json", RUNNING.to_string()),
        _ => (
            200,
            "application/json",
            r#"{"exitCode":0,"stdout":"\ufffd\n","stderr":"","stdoutB64":"/wo=","stderrB64":""}"#
                .to_string(),
        ),
    });
    let out = s
        .client()
        .machine_exec("web", &["cat", "/bin/blob"], &ExecOptions::default())
        .unwrap();
    assert_eq!(out.stdout(), [0xff, b'\n']);
    // Not base64 at all: a parse error, never silently the lossy text.
    let s = Canned::unix("1.9.2", |method, path, _| match (method, path) {
        ("GET", "/api/v1/machines/web") => (200, "application/json", RUNNING.to_string()),
        _ => (
            200,
            "application/json",
            r#"{"exitCode":0,"stdout":"x","stderr":"","stdoutB64":"%%%"}"#.to_string(),
        ),
    });
    let err = s
        .client()
        .machine_exec("web", &["true"], &ExecOptions::default())
        .unwrap_err();
    assert!(matches!(err, Error::Parse { .. }), "{err}");
}

#[test]
fn a_server_that_keeps_the_connection_open_is_not_waited_for() {
    // It answers with a Content-Length and keeps the socket open (ignoring `Connection:
    // close`): the answer is whole, so the call returns, well inside its timeout.
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("open.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let _ = read_request(&mut conn);
            let body = r#"{"status":"ok","version":"1.9.2"}"#;
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            held.push(conn);
        }
    });
    let smolvm = Smolvm::remote(&format!("unix://{}", sock.display()))
        .unwrap()
        .with_timeout(Duration::from_secs(120));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(smolvm.version().map(|v| v.to_string())));
    let got = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("answered without waiting for the close");
    assert_eq!(got.unwrap(), "1.9.2");
}

#[test]
fn host_paths_on_a_server_of_another_host_are_refused_before_any_request() {
    // A server elsewhere (nothing listens there: any request would fail differently).
    let smolvm = Smolvm::remote("http://192.0.2.1:7070")
        .unwrap()
        .with_version("1.9.2".parse().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let pack = dir.path().join("app.smolmachine");
    std::fs::write(&pack, b"pack").unwrap();
    for opts in [
        CreateOptions::from_path(&pack).net(),
        CreateOptions::image("alpine")
            .net()
            .volume(dir.path(), "/data"),
    ] {
        let err = smolvm.machine_create("web", &opts).unwrap_err();
        assert!(matches!(err, Error::Unsupported { .. }), "{opts:?}: {err}");
        assert!(err.to_string().contains("its own host"), "{err}");
    }
    let err = smolvm
        .pack_create("alpine", dir.path().join("p"))
        .unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
}

#[test]
fn is_available_caps_its_wait_below_the_call_timeout() {
    // README: a server that does not answer `/health` within 10 s is unavailable. With the
    // default call timeout (300 s), a silent server must still be given up well before the
    // 60 s watchdog (a bound, not a speed claim).
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("silent.sock");
    let _listener = UnixListener::bind(&sock).unwrap();
    let smolvm = Smolvm::remote(&format!("unix://{}", sock.display())).unwrap();
    assert!(
        smolvm.timeout() > Duration::from_secs(60),
        "{:?}",
        smolvm.timeout()
    );
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(smolvm.is_available()));
    let available = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("is_available() gave up on its own");
    assert!(!available);
}
