//! Published ports: host listeners on `127.0.0.1:HOST` that forward each connection to the
//! simulated server listening on the guest port, if any.
//!
//! The front ends differ only in who runs the accept loops: threads of the in-process runner,
//! or a detached helper process of the fake. Both answer connections with [`serve_conn`].

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::time::Duration;

use super::state::{mounted_path, ListenKind, SimMachine, SimState};

/// A host port bound for a machine's `-p HOST:GUEST` mapping.
pub(crate) struct Bound {
    pub(crate) listener: TcpListener,
    pub(crate) host: u16,
    pub(crate) guest: u16,
}

/// Who serves bound host ports, and stops serving them.
pub(crate) trait HostNet {
    /// Serve `ports` for `machine` while its boot `boot` runs; the fake returns the pid of
    /// the helper process to record.
    fn serve(&self, machine: &str, boot: u64, ports: Vec<Bound>) -> Result<Option<u32>, String>;
    /// Close every host port of `machine` before returning (stop, delete); `helpers` are the
    /// recorded helper pids.
    fn release(&self, machine: &str, helpers: &[u32]);
}

/// Bind `127.0.0.1:port` as smolvm's forwarder does (IPv4 loopback only here).
pub(crate) fn bind(port: u16) -> io::Result<TcpListener> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port))
}

/// Bind `127.0.0.1:0`: a fresh free host port, as smolvm picks a clone's remapped ports.
pub(crate) fn bind_any() -> io::Result<TcpListener> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
}

/// How long an accept loop sleeps when nothing is pending.
pub(crate) const ACCEPT_POLL: Duration = Duration::from_millis(10);

/// Answer one connection to guest port `guest`. `snapshot` gives the machine as it is now,
/// or `None` once it is gone, stopped or rebooted. Without a guest server on that port the
/// connection is closed at once (EOF before any byte), as smolvm's forwarder does when the
/// guest refuses.
pub(crate) fn serve_conn(
    mut stream: TcpStream,
    guest: u16,
    snapshot: &dyn Fn() -> Option<SimMachine>,
) {
    // A frozen golden's forwards stay bound by its paused VMM, but nothing answers.
    let kind = snapshot()
        .filter(|m| m.state == SimState::Running)
        .and_then(|m| {
            m.listeners
                .iter()
                .find(|l| l.port == guest)
                .map(|l| l.kind.clone())
        });
    let Some(kind) = kind else {
        let _ = stream.shutdown(Shutdown::Both);
        return;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    match kind {
        ListenKind::Echo => {
            let mut buf = [0u8; 8192];
            loop {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if stream.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
        }
        ListenKind::Httpd { dir } => {
            let head = read_head(&mut stream);
            // The files as they are when the request arrives.
            let response = match snapshot() {
                Some(m) => http_response(&m, &dir, &head),
                None => Vec::new(),
            };
            let _ = stream.write_all(&response);
        }
    }
    let _ = stream.shutdown(Shutdown::Both);
}

/// Read up to the blank line that ends a request head (or 16 KiB, or EOF).
fn read_head(stream: &mut TcpStream) -> Vec<u8> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while head.len() < 16 * 1024 {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                head.extend_from_slice(&buf[..n]);
                if head.windows(4).any(|w| w == b"\r\n\r\n")
                    || head.windows(2).any(|w| w == b"\n\n")
                {
                    break;
                }
            }
        }
    }
    head
}

/// busybox `httpd`'s answer to a request head, reduced to what tests need: GET/HEAD of a file
/// under `dir` (`/` means `/index.html`), HTTP/1.0, then close.
pub(crate) fn http_response(m: &SimMachine, dir: &str, head: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(head);
    let mut words = text.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let status = |code: &str| {
        format!(
            "HTTP/1.0 {code}\r\nContent-type: text/html\r\nConnection: close\r\n\r\n<HTML><HEAD><TITLE>{code}</TITLE></HEAD>\n<BODY><H1>{code}</H1>\n</BODY></HTML>\n"
        )
        .into_bytes()
    };
    if method != "GET" && method != "HEAD" {
        return status("501 Not Implemented");
    }
    let path = target.split(['?', '#']).next().unwrap_or("");
    if !path.starts_with('/') || path.split('/').any(|s| s == "..") {
        return status("400 Bad Request");
    }
    let path = if path.ends_with('/') {
        format!("{path}index.html")
    } else {
        path.to_string()
    };
    let full = format!("{}{}", dir.trim_end_matches('/'), path);
    // A file under a `-v` mount is read from the host directory, as it is now.
    let body = match mounted_path(&m.mounts, &full) {
        Some((host, _)) => host.is_file().then(|| std::fs::read(&host).ok()).flatten(),
        None => m.files.get(&full).cloned(),
    };
    match body {
        Some(body) => {
            let mut out = format!(
                "HTTP/1.0 200 OK\r\nContent-type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                content_type(&full),
                body.len()
            )
            .into_bytes();
            if method == "GET" {
                out.extend_from_slice(&body);
            }
            out
        }
        None => status("404 Not Found"),
    }
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next() {
        Some("html" | "htm") => "text/html",
        Some("txt") => "text/plain",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::state::Listener;

    #[test]
    fn httpd_serves_files_under_its_dir() {
        let mut m = SimMachine::new("m".into(), 0);
        m.files.insert("/www/index.html".into(), b"hello".to_vec());
        m.listeners.push(Listener {
            port: 80,
            kind: ListenKind::Httpd { dir: "/www".into() },
        });
        let ok = http_response(&m, "/www", b"GET / HTTP/1.0\r\n\r\n");
        let ok = String::from_utf8(ok).unwrap();
        assert!(ok.starts_with("HTTP/1.0 200 OK\r\n"), "{ok}");
        assert!(ok.ends_with("\r\n\r\nhello"), "{ok}");
        let missing = http_response(&m, "/www", b"GET /nope HTTP/1.0\r\n\r\n");
        assert!(String::from_utf8(missing)
            .unwrap()
            .starts_with("HTTP/1.0 404 Not Found\r\n"));
        let escape = http_response(&m, "/www", b"GET /../etc/passwd HTTP/1.0\r\n\r\n");
        assert!(String::from_utf8(escape).unwrap().contains("400"));
    }
}
