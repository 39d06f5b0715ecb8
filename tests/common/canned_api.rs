//! A canned `smolvm serve`: a unix socket or loopback TCP port answered by hand with exactly
//! the status, content type and body a test needs (an error shape of §9.2, garbage, a server
//! that closes early). `/health` answers with the given version; every other request goes to
//! the test's `route` and is recorded.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::sync::{Arc, Mutex};

use smolvm_harness::Smolvm;

/// One answer: status, content type, body.
pub type Answer = (u16, &'static str, String);

/// A request as the server saw it: method, path, body.
pub type Request = (String, String, String);

type Route = dyn Fn(&str, &str, &str) -> Answer + Send + Sync;

/// A running canned server (its threads end with the test process).
pub struct Canned {
    _dir: tempfile::TempDir,
    pub url: String,
    pub port: Option<u16>,
    seen: Arc<Mutex<Vec<Request>>>,
}

impl Canned {
    /// On a unix socket in a temp dir.
    pub fn unix(
        version: &'static str,
        route: impl Fn(&str, &str, &str) -> Answer + Send + Sync + 'static,
    ) -> Canned {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("api.sock");
        let listener = UnixListener::bind(&sock).expect("bind");
        let seen = serve(
            move || listener.accept().ok().map(|(c, _)| c),
            version,
            route,
        );
        Canned {
            url: format!("unix://{}", sock.display()),
            _dir: dir,
            port: None,
            seen,
        }
    }

    /// On 127.0.0.1, a free port.
    pub fn tcp(
        version: &'static str,
        route: impl Fn(&str, &str, &str) -> Answer + Send + Sync + 'static,
    ) -> Canned {
        let dir = tempfile::tempdir().expect("tempdir");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("local addr").port();
        let seen = serve(
            move || listener.accept().ok().map(|(c, _)| c),
            version,
            route,
        );
        Canned {
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
            port: Some(port),
            seen,
        }
    }

    pub fn client(&self) -> Smolvm {
        Smolvm::remote(&self.url).expect("a valid URL")
    }

    /// What it was asked, `/health` excluded.
    pub fn requests(&self) -> Vec<Request> {
        self.seen.lock().unwrap().clone()
    }
}

/// Answer every connection `accept` gives, each on a thread of its own; the requests seen.
fn serve<S: Read + Write + Send + 'static>(
    mut accept: impl FnMut() -> Option<S> + Send + 'static,
    version: &'static str,
    route: impl Fn(&str, &str, &str) -> Answer + Send + Sync + 'static,
) -> Arc<Mutex<Vec<Request>>> {
    let seen: Arc<Mutex<Vec<Request>>> = Arc::default();
    let (log, route): (_, Arc<Route>) = (Arc::clone(&seen), Arc::new(route));
    std::thread::spawn(move || {
        while let Some(conn) = accept() {
            let (log, route) = (Arc::clone(&log), Arc::clone(&route));
            std::thread::spawn(move || answer(conn, version, &log, &*route));
        }
    });
    seen
}

fn answer<S: Read + Write>(mut conn: S, version: &str, log: &Mutex<Vec<Request>>, route: &Route) {
    let (method, path, body) = read_request(&mut conn);
    let (status, ctype, text) = if path == "/health" {
        (
            200,
            "application/json",
            format!(
                r#"{{"status":"ok","version":"{version}","machines":{{"total":0,"running":0}},"uptime_seconds":1}}"#
            ),
        )
    } else {
        log.lock()
            .unwrap()
            .push((method.clone(), path.clone(), body.clone()));
        route(&method, &path, &body)
    };
    let _ = write!(
        conn,
        "HTTP/1.1 {status} X\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
        text.len()
    );
}

/// (method, path, body) of one request, read by hand.
pub fn read_request<S: Read>(conn: &mut S) -> Request {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if conn.read(&mut byte).unwrap_or(0) == 0 {
            break;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let mut first = head.lines().next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("").to_string();
    let path = first.next().unwrap_or("").to_string();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    let _ = conn.read_exact(&mut body);
    (method, path, String::from_utf8_lossy(&body).to_string())
}

/// smolvm's JSON error body.
pub fn json(status: u16, error: &str, code: &str) -> Answer {
    (
        status,
        "application/json",
        format!(r#"{{"error":"{error}","code":"{code}"}}"#),
    )
}

/// axum's plain-text rejection.
pub fn plain(status: u16, text: &str) -> Answer {
    (status, "text/plain; charset=utf-8", text.to_string())
}

/// `MachineInfo` of `web`, running or stopped.
pub const RUNNING: &str = r#"{"name":"web","state":"running","cpus":1,"memoryMb":512,"mounts":[],"ports":[],"network":false,"createdAt":1}"#;
pub const STOPPED: &str = r#"{"name":"web","state":"stopped","cpus":1,"memoryMb":512,"mounts":[],"ports":[],"network":false,"createdAt":1}"#;
