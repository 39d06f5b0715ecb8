//! A blocking HTTP/1.1 exchange, as small as `smolvm serve` needs: one request per
//! connection (`Connection: close`), the body framed by `Content-Length` or chunked (parsed
//! by `httparse`), over a unix socket, TCP, or TLS (feature `remote-tls`).
//!
//! Each call has one deadline (its timeout), which bounds the connect and every read and
//! write, so a server that accepts and never answers, or trickles its answer, costs at most
//! the call's timeout; and every open socket is listed, so the signal cleanup can shut the
//! ones in flight ([`cancel_in_flight`]) the way it kills smolvm processes.

use std::collections::HashMap;
use std::io;
#[cfg(feature = "remote")]
use std::io::{Read, Write};
#[cfg(feature = "remote")]
use std::net::ToSocketAddrs;
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
#[cfg(feature = "remote")]
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;
#[cfg(feature = "remote")]
use std::time::Instant;

use super::Endpoint;
use crate::runner::lock;

/// A whole response.
#[derive(Debug, Clone)]
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) content_type: Option<String>,
    pub(crate) body: Vec<u8>,
}

impl Response {
    pub(crate) fn is_json(&self) -> bool {
        self.content_type
            .as_deref()
            .is_some_and(|t| t.to_ascii_lowercase().starts_with("application/json"))
    }
}

/// One request body: its content type and bytes.
#[cfg_attr(not(feature = "remote"), allow(dead_code))]
pub(crate) struct Body<'a> {
    pub(crate) content_type: &'static str,
    pub(crate) bytes: &'a [u8],
}

/// The largest response head read; `smolvm serve` sends a handful of headers.
#[cfg(feature = "remote")]
const MAX_HEAD: usize = 64 * 1024;

/// Send one request and read the whole response. `path` is already percent-encoded
/// ([`encode_path`]). `timeout` bounds the whole call (connect, writes, reads); `max_body`
/// bounds what is kept of the response (more is an error, not a truncated JSON). Without
/// the `remote` feature, always an error.
#[cfg(not(feature = "remote"))]
pub(crate) fn send(
    _endpoint: &Endpoint,
    _method: &str,
    _path: &str,
    _body: Option<Body<'_>>,
    _timeout: Duration,
    _max_body: usize,
) -> io::Result<Response> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "smolvm-harness was built without its `remote` feature",
    ))
}

/// [`send`] over a socket, for builds with the `remote` feature.
#[cfg(feature = "remote")]
pub(crate) fn send(
    endpoint: &Endpoint,
    method: &str,
    path: &str,
    body: Option<Body<'_>>,
    timeout: Duration,
    max_body: usize,
) -> io::Result<Response> {
    // One deadline for the whole call: a server that trickles its answer a byte at a time
    // cannot stretch it (each read and write gets only what is left).
    let deadline = Instant::now() + timeout.max(Duration::from_millis(1));
    let call = Call {
        endpoint,
        method,
        path,
        body,
        max_body,
        deadline,
    };
    match endpoint {
        Endpoint::Unix(path_) => {
            let s = UnixStream::connect(path_)?;
            let clock = Socket::Unix(s.try_clone()?);
            clock.time_left(deadline)?;
            let _listed = Listed::new(Socket::Unix(s.try_clone()?));
            exchange(s, &clock, call)
        }
        Endpoint::Tcp { host, port, tls } => {
            let s = connect_tcp(host, *port, timeout)?;
            let clock = Socket::Tcp(s.try_clone()?);
            clock.time_left(deadline)?;
            s.set_nodelay(true)?;
            let _listed = Listed::new(Socket::Tcp(s.try_clone()?));
            if *tls {
                #[cfg(feature = "remote-tls")]
                {
                    let stream = super::tls::connect(s, host)?;
                    return exchange(stream, &clock, call);
                }
                #[cfg(not(feature = "remote-tls"))]
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "https needs smolvm-harness built with the `remote-tls` feature",
                ));
            }
            exchange(s, &clock, call)
        }
    }
}

/// One request, as [`exchange`] sends it.
#[cfg(feature = "remote")]
struct Call<'a> {
    endpoint: &'a Endpoint,
    method: &'a str,
    path: &'a str,
    body: Option<Body<'a>>,
    max_body: usize,
    deadline: Instant,
}

#[cfg(feature = "remote")]
/// Connect to the first address of `host` that answers, each try bounded by what is left of
/// `timeout`.
fn connect_tcp(host: &str, port: u16, timeout: Duration) -> io::Result<TcpStream> {
    let deadline = Instant::now() + timeout;
    let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{host}: no address"));
    for addr in (host, port).to_socket_addrs()? {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connecting took over {timeout:?}"),
            ));
        }
        match TcpStream::connect_timeout(&addr, left) {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// The protocol over any byte stream; `clock` is its socket, whose timeouts are set to what
/// is left of the call's deadline before each read and write.
#[cfg(feature = "remote")]
fn exchange<S: Read + Write>(
    mut stream: S,
    clock: &Socket,
    call: Call<'_>,
) -> io::Result<Response> {
    let Call {
        endpoint,
        method,
        path,
        body,
        max_body,
        deadline,
    } = call;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nAccept: application/json\r\n",
        endpoint.host_header()
    );
    let payload: &[u8] = match &body {
        Some(b) => {
            head.push_str(&format!("Content-Type: {}\r\n", b.content_type));
            b.bytes
        }
        None => &[],
    };
    head.push_str(&format!("Content-Length: {}\r\n\r\n", payload.len()));
    write_by(&mut stream, clock, deadline, head.as_bytes())?;
    write_by(&mut stream, clock, deadline, payload)?;
    clock.time_left(deadline)?;
    stream.flush()?;

    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 16 * 1024];
    loop {
        clock.time_left(deadline)?;
        let n = read_some(&mut stream, &mut chunk)?;
        if n == 0 {
            // Not garbage from the server: it stopped answering (died, or our own teardown shut
            // the socket). The request may still have acted.
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the server closed the connection before answering",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Response::new(&mut headers);
        let len = match parsed
            .parse(&buf)
            .map_err(|e| bad(&format!("not an HTTP response: {e}")))?
        {
            httparse::Status::Partial if buf.len() > MAX_HEAD => {
                return Err(bad("response head too large"))
            }
            httparse::Status::Partial => continue,
            httparse::Status::Complete(len) => len,
        };
        let status = parsed.code.unwrap_or(0);
        let header = |name: &str| {
            parsed
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
        };
        let content_type = header("content-type");
        let chunked =
            header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        let length = header("content-length").and_then(|v| v.parse::<usize>().ok());
        let mut rest = buf.split_off(len);
        // `Connection: close`: the end of the stream ends the body in every framing. Read it
        // all (bounded), then frame.
        // A server that keeps the connection open anyway is not waited for once the body is
        // whole: its `Content-Length` is there, or its last chunk.
        let limit = max_body.saturating_mul(2).saturating_add(MAX_HEAD);
        let whole = |rest: &[u8]| {
            if chunked {
                rest.ends_with(b"0\r\n\r\n") && dechunk(rest).is_ok()
            } else {
                length.is_some_and(|n| rest.len() >= n)
            }
        };
        while !whole(&rest) {
            clock.time_left(deadline)?;
            let n = read_some(&mut stream, &mut chunk)?;
            if n == 0 {
                break;
            }
            rest.extend_from_slice(&chunk[..n]);
            if rest.len() > limit {
                return Err(bad(&format!(
                    "response body over {max_body} bytes (SMOLVM_HARNESS_OUTPUT_CAP)"
                )));
            }
        }
        let body = if chunked {
            dechunk(&rest)?
        } else if let Some(n) = length {
            if rest.len() < n {
                return Err(bad("the response body is shorter than its Content-Length"));
            }
            rest.truncate(n);
            rest
        } else {
            rest
        };
        if body.len() > max_body {
            return Err(bad(&format!(
                "response body over {max_body} bytes (SMOLVM_HARNESS_OUTPUT_CAP)"
            )));
        }
        return Ok(Response {
            status,
            content_type,
            body,
        });
    }
}

/// Write all of `bytes`, each `write` given only what is left of the call (a reader that
/// takes a few bytes at a time cannot stretch it, as `write_all` with one timeout would).
#[cfg(feature = "remote")]
fn write_by<S: Write>(
    stream: &mut S,
    clock: &Socket,
    deadline: Instant,
    mut bytes: &[u8],
) -> io::Result<()> {
    while !bytes.is_empty() {
        clock.time_left(deadline)?;
        match stream.write(bytes) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "the server stopped reading the request",
                ))
            }
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the server did not take the request in time",
                ))
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(feature = "remote")]
/// `read`, where a peer that closes a TLS stream without `close_notify` (or a reset after
/// the whole answer) counts as the end of the stream.
fn read_some<S: Read>(stream: &mut S, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match stream.read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // A socket read timeout on unix.
                return Err(io::Error::new(io::ErrorKind::TimedOut, "no answer in time"));
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(feature = "remote")]
fn dechunk(mut data: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let (skip, size) = match httparse::parse_chunk_size(data) {
            Ok(httparse::Status::Complete(found)) => found,
            Ok(httparse::Status::Partial) => return Err(bad("truncated chunked body")),
            Err(_) => return Err(bad("bad chunk size")),
        };
        data = &data[skip..];
        let size = usize::try_from(size).map_err(|_| bad("chunk too large"))?;
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 || &data[size..size + 2] != b"\r\n" {
            return Err(bad("truncated chunk"));
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

#[cfg(feature = "remote")]
fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

/// Percent-encode a path for a URL, keeping `/` (the `{*path}` of the files route) and the
/// unreserved characters.
#[cfg(feature = "remote")]
pub(crate) fn encode_path(path: &str) -> String {
    const KEEP: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~')
        .remove(b'/');
    percent_encoding::utf8_percent_encode(path, KEEP).to_string()
}

/// Without the `remote` feature nothing is ever sent: the path as it is.
#[cfg(not(feature = "remote"))]
pub(crate) fn encode_path(path: &str) -> String {
    path.to_string()
}

/// An open socket, as the signal cleanup can shut it and a call's deadline bounds it.
#[cfg_attr(not(feature = "remote"), allow(dead_code))]
enum Socket {
    Unix(UnixStream),
    Tcp(TcpStream),
}

#[cfg(feature = "remote")]
impl Socket {
    /// Set the read and write timeouts to what is left until `deadline`; past it, an error.
    fn time_left(&self, deadline: Instant) -> io::Result<()> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no whole answer within the call's timeout",
            ));
        }
        match self {
            Socket::Unix(s) => {
                s.set_read_timeout(Some(left))?;
                s.set_write_timeout(Some(left))
            }
            Socket::Tcp(s) => {
                s.set_read_timeout(Some(left))?;
                s.set_write_timeout(Some(left))
            }
        }
    }
}

/// Sockets of requests in flight, by id, with the pid that opened each (a child forked
/// without exec inherits the list and must not shut its parent's).
fn in_flight() -> &'static Mutex<HashMap<u64, (u32, Socket)>> {
    static IN_FLIGHT: OnceLock<Mutex<HashMap<u64, (u32, Socket)>>> = OnceLock::new();
    IN_FLIGHT.get_or_init(Default::default)
}

/// A socket's place in [`in_flight`], for as long as its request runs.
#[cfg_attr(not(feature = "remote"), allow(dead_code))]
struct Listed(u64);

#[cfg(feature = "remote")]
impl Listed {
    fn new(socket: Socket) -> Listed {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        lock(in_flight()).insert(id, (std::process::id(), socket));
        Listed(id)
    }
}

impl Drop for Listed {
    fn drop(&mut self) {
        lock(in_flight()).remove(&self.0);
    }
}

/// Shut every request of this process still in flight (its read or write then fails at
/// once). For the signal cleanup: a call blocked on a slow server must not hold it for the
/// call's whole timeout. The server may still finish what it was asked (a create): the
/// ledger entry of such a machine then stays for the watcher and the next run's sweep.
pub(crate) fn cancel_in_flight() -> usize {
    let me = std::process::id();
    let map = lock(in_flight());
    let mut n = 0;
    for (pid, socket) in map.values() {
        if *pid != me {
            continue;
        }
        n += 1;
        let _ = match socket {
            Socket::Unix(s) => s.shutdown(Shutdown::Both),
            Socket::Tcp(s) => s.shutdown(Shutdown::Both),
        };
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(feature = "remote")]
    fn dechunk_reassembles_and_refuses_truncation() {
        let body = b"4\r\nWiki\r\n5;ext=1\r\npedia\r\n0\r\n\r\n";
        assert_eq!(dechunk(body).unwrap(), b"Wikipedia");
        assert!(dechunk(b"4\r\nWik").is_err());
        assert!(dechunk(b"zz\r\n").is_err());
    }

    #[test]
    #[cfg(feature = "remote")]
    fn paths_are_percent_encoded_but_slashes_kept() {
        assert_eq!(encode_path("/tmp/a b%.txt"), "/tmp/a%20b%25.txt");
        assert_eq!(encode_path("/é"), "/%C3%A9");
    }
}
