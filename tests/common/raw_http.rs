//! A raw HTTP/1.1 client for tests against `smolvm-fake serve` (test-only; copied from the
//! remote spike): one request per connection (`Connection: close`), bodies framed by
//! `Content-Length`, chunked or EOF, over a unix socket or TCP. Deliberately independent of
//! the crate's own client (`src/remote/`), so the server is checked on its own.

#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

/// Where the server listens: `unix:///abs/path.sock` or `http://host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp(String),
}

impl Endpoint {
    /// Parses the forms of `SMOLVM_HOST`; `https://` needs the TLS half (not in the spike).
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        if let Some(path) = url.strip_prefix("unix://") {
            if path.starts_with('/') {
                return Ok(Endpoint::Unix(PathBuf::from(path)));
            }
            return Err(format!("`{url}`: a unix socket path must be absolute"));
        }
        if let Some(rest) = url.strip_prefix("http://") {
            let authority = rest.trim_end_matches('/');
            if authority.is_empty() || authority.contains('/') || authority.contains('@') {
                // A userinfo part would be a credential in the ledger and in messages.
                return Err(format!("`{url}`: expected http://host:port"));
            }
            return Ok(Endpoint::Tcp(authority.to_string()));
        }
        Err(format!(
            "`{url}`: expected unix:///abs/path.sock, http://host:port or https://host:port"
        ))
    }

    /// The form recorded in the ledger and shown in messages.
    pub fn display(&self) -> String {
        match self {
            Endpoint::Unix(p) => format!("unix://{}", p.display()),
            Endpoint::Tcp(a) => format!("http://{a}"),
        }
    }
}

/// A whole response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// Largest response head we read; `smolvm serve` sends a handful of headers.
const MAX_HEAD: usize = 64 * 1024;

/// One request, one connection. `path` must already be percent-encoded ([`encode_path`]).
pub fn request(
    endpoint: &Endpoint,
    method: &str,
    path: &str,
    body: Option<(&str, &[u8])>,
    timeout: Option<Duration>,
) -> io::Result<Response> {
    match endpoint {
        Endpoint::Unix(p) => {
            let s = UnixStream::connect(p)?;
            s.set_read_timeout(timeout)?;
            s.set_write_timeout(timeout)?;
            exchange(s, "localhost", method, path, body)
        }
        Endpoint::Tcp(a) => {
            let s = TcpStream::connect(a.as_str())?;
            s.set_read_timeout(timeout)?;
            s.set_write_timeout(timeout)?;
            exchange(s, a, method, path, body)
        }
    }
}

/// The protocol over any byte stream (unix, TCP, or rustls's `StreamOwned` later).
pub fn exchange<S: Read + Write>(
    mut stream: S,
    host: &str,
    method: &str,
    path: &str,
    body: Option<(&str, &[u8])>,
) -> io::Result<Response> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    let payload: &[u8] = match body {
        Some((content_type, bytes)) => {
            head.push_str(&format!("Content-Type: {content_type}\r\n"));
            bytes
        }
        None => &[],
    };
    head.push_str(&format!("Content-Length: {}\r\n\r\n", payload.len()));
    stream.write_all(head.as_bytes())?;
    stream.write_all(payload)?;
    stream.flush()?;

    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(bad("connection closed before the response head"));
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Response::new(&mut headers);
        match parsed
            .parse(&buf)
            .map_err(|e| bad(&format!("bad response head: {e}")))?
        {
            httparse::Status::Partial if buf.len() > MAX_HEAD => {
                return Err(bad("response head too large"))
            }
            httparse::Status::Partial => continue,
            httparse::Status::Complete(len) => {
                let status = parsed.code.unwrap_or(0);
                let header = |name: &str| {
                    parsed
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
                };
                let content_type = header("content-type");
                let chunked = header("transfer-encoding")
                    .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
                let length = header("content-length").and_then(|v| v.parse::<usize>().ok());
                let mut rest = buf.split_off(len);
                // Connection: close makes EOF the end in every framing; read it all, then frame.
                stream.read_to_end(&mut rest)?;
                let body = if chunked {
                    dechunk(&rest)?
                } else if let Some(n) = length {
                    if rest.len() < n {
                        return Err(bad("response body shorter than Content-Length"));
                    }
                    rest.truncate(n);
                    rest
                } else {
                    rest
                };
                return Ok(Response {
                    status,
                    content_type,
                    body,
                });
            }
        }
    }
}

fn dechunk(mut data: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = find(data, b"\r\n").ok_or_else(|| bad("truncated chunk size"))?;
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| bad("bad chunk size"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            return Err(bad("truncated chunk"));
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

/// Percent-encodes a path for a URL, keeping `/` (the `{*path}` of the files route).
pub fn encode_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}
