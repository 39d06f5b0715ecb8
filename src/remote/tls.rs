//! `https://` smolvm servers (feature `remote-tls`): smolvm 1.9.2's `serve` over TCP with
//! mTLS requires a client certificate, so every connection presents one.
//!
//! The three PEM paths come from each process's own environment (`SMOLVM_HARNESS_TLS_CERT`,
//! `SMOLVM_HARNESS_TLS_KEY`, `SMOLVM_HARNESS_TLS_CA`), never from the URL or the ledger. The
//! server must be signed by the given CA: no system roots, since a smolvm server's certificate
//! is the operator's own. Messages name variables and paths, never what the files hold.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{AlertDescription, ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use crate::error::Error;
use crate::runner::lock;

/// The client certificate chain (PEM), leaf first.
pub(crate) const CERT_VAR: &str = "SMOLVM_HARNESS_TLS_CERT";
/// The client certificate's private key (PEM, PKCS#8, SEC1 or PKCS#1).
pub(crate) const KEY_VAR: &str = "SMOLVM_HARNESS_TLS_KEY";
/// The CA (PEM, one or more certificates) that signed the server's certificate.
pub(crate) const CA_VAR: &str = "SMOLVM_HARNESS_TLS_CA";

/// Open a TLS session over `tcp` to `host` (a DNS name or an IP address), presenting the
/// client certificate named by the environment. The handshake is finished before this returns,
/// so a server certificate we refuse, or a client certificate the server refuses, is an error
/// here rather than in the middle of a request.
pub(crate) fn connect(
    tcp: TcpStream,
    host: &str,
) -> io::Result<StreamOwned<ClientConnection, TcpStream>> {
    connect_with(tcp, host, &Paths::from_env()?)
}

/// Check the three variables and their files now, so a misconfigured `https://` host fails
/// before the first request (and before any machine is created).
pub(crate) fn check_env() -> Result<(), Error> {
    Paths::from_env()
        .and_then(|paths| config(&paths))
        .map(|_| ())
        .map_err(|e| Error::invalid("TLS files (SMOLVM_HARNESS_TLS_*)", e.to_string()))
}

/// The three PEM files of one client identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Paths {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
}

impl Paths {
    /// All three variables or none is a choice; a partial set is a mistake worth naming.
    fn from_env() -> io::Result<Paths> {
        let get = |var: &str| std::env::var_os(var).filter(|v| !v.is_empty());
        let (cert, key, ca) = (get(CERT_VAR), get(KEY_VAR), get(CA_VAR));
        match (cert, key, ca) {
            (Some(cert), Some(key), Some(ca)) => Ok(Paths {
                cert: cert.into(),
                key: key.into(),
                ca: ca.into(),
            }),
            (cert, key, ca) => {
                let missing: Vec<&str> = [(CERT_VAR, &cert), (KEY_VAR, &key), (CA_VAR, &ca)]
                    .into_iter()
                    .filter(|(_, v)| v.is_none())
                    .map(|(name, _)| name)
                    .collect();
                Err(invalid(format!(
                    "an https smolvm host needs {CERT_VAR}, {KEY_VAR} and {CA_VAR} (PEM paths: \
                     client certificate, its key, and the CA of the server's certificate; \
                     smolvm serve requires client certificates over TLS); not set: {}",
                    missing.join(", ")
                )))
            }
        }
    }
}

/// [`connect`] with the paths given, so tests need no environment.
fn connect_with(
    mut tcp: TcpStream,
    host: &str,
    paths: &Paths,
) -> io::Result<StreamOwned<ClientConnection, TcpStream>> {
    let config = config(paths)?;
    let name = ServerName::try_from(host.to_string()).map_err(|_| {
        invalid(format!(
            "{host:?} is neither a DNS name nor an IP address (needed to check the server's \
             certificate)"
        ))
    })?;
    let mut conn = ClientConnection::new(config, name)
        .map_err(|e| io::Error::other(format!("TLS to {host}: {e}")))?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp)
            .map_err(|e| handshake_error(e, host))?;
    }
    settle(&mut conn, &mut tcp, host)?;
    Ok(StreamOwned::new(conn, tcp))
}

/// How long to wait, after a TLS 1.3 handshake, for the server's first message. Servers
/// (rustls, OpenSSL, Go) send their session tickets at once: the wait normally costs one
/// round trip.
const SETTLE: Duration = Duration::from_millis(500);

/// TLS 1.3 finishes the client's side of the handshake before the server has checked the
/// client certificate: its verdict is either its session tickets or an alert. Wait for that
/// first message, so a refused certificate is an error of [`connect`] with a message saying
/// so, not a bare "received fatal alert" from the first read of the response. A server that
/// sends no tickets costs [`SETTLE`] once; it is then remembered and not waited for again
/// (a refusal then shows at the first read, still an error, never a hang).
fn settle(conn: &mut ClientConnection, tcp: &mut TcpStream, host: &str) -> io::Result<()> {
    let server = format!("{host}:{}", tcp.peer_addr()?.port());
    if conn.protocol_version() != Some(rustls::ProtocolVersion::TLSv1_3)
        || lock(silent()).contains(&server)
    {
        return Ok(());
    }
    let before = tcp.read_timeout()?;
    let wait = before.map_or(SETTLE, |t| t.min(SETTLE));
    tcp.set_read_timeout(Some(wait))?;
    let read = conn.read_tls(tcp);
    tcp.set_read_timeout(before)?;
    match read {
        Ok(0) => Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            format!(
                "TLS to {host}: the server closed the connection right after the handshake; \
                 it most likely refused the client certificate ({CERT_VAR}, {KEY_VAR})"
            ),
        )),
        Ok(_) => {
            // Process what came: tickets are kept, an alert is the server's refusal.
            conn.process_new_packets()
                .map(|_| ())
                .map_err(|e| handshake_error(io::Error::new(io::ErrorKind::InvalidData, e), host))
        }
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            lock(silent()).insert(server);
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
        Err(e) => Err(handshake_error(e, host)),
    }
}

/// The servers (`host:port`) found to send nothing after a TLS 1.3 handshake.
fn silent() -> &'static Mutex<HashSet<String>> {
    static SILENT: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    SILENT.get_or_init(Default::default)
}

/// Say which side refused the handshake and which variables to look at.
fn handshake_error(e: io::Error, host: &str) -> io::Error {
    let kind = e.kind();
    let tls = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    let msg = match tls {
        Some(rustls::Error::InvalidCertificate(why)) => format!(
            "TLS to {host}: the server's certificate was refused ({why}); it must be signed by \
             the CA in {CA_VAR} and name {host}"
        ),
        Some(rustls::Error::AlertReceived(alert)) if refuses_client_cert(*alert) => format!(
            "TLS to {host}: the server refused the client certificate (alert {alert:?}); it \
             must be signed by the CA smolvm serve trusts (SMOLVM_SERVE_TLS_CLIENT_CA), see \
             {CERT_VAR} and {KEY_VAR}"
        ),
        Some(other) => format!("TLS to {host}: handshake failed: {other}"),
        None => format!("TLS to {host}: handshake failed: {e}"),
    };
    io::Error::new(kind, msg)
}

/// The alerts a server sends when it does not accept the client's certificate.
fn refuses_client_cert(alert: AlertDescription) -> bool {
    matches!(
        alert,
        AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnknownCA
            | AlertDescription::AccessDenied
            | AlertDescription::CertificateRequired
            | AlertDescription::DecryptError
            | AlertDescription::HandshakeFailure
    )
}

/// The client configuration of `paths`, built once per process (the files are read once).
fn config(paths: &Paths) -> io::Result<Arc<ClientConfig>> {
    static CACHE: OnceLock<Mutex<HashMap<Paths, Arc<ClientConfig>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(config) = lock(cache).get(paths) {
        return Ok(config.clone());
    }
    // Built outside the lock: reading files must not hold other connections up. Two threads
    // may both build it; the first one stored wins, and both are equal.
    let built = Arc::new(build(paths)?);
    Ok(lock(cache).entry(paths.clone()).or_insert(built).clone())
}

fn build(paths: &Paths) -> io::Result<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(CA_VAR, &paths.ca)? {
        roots.add(cert).map_err(|e| {
            invalid(format!(
                "{CA_VAR} ({}): not a usable CA certificate: {e}",
                paths.ca.display()
            ))
        })?;
    }
    let chain = certificates(CERT_VAR, &paths.cert)?;
    let key = PrivateKeyDer::from_pem_file(&paths.key)
        .map_err(|e| pem_error(KEY_VAR, &paths.key, e, "PRIVATE KEY"))?;
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| io::Error::other(format!("TLS: {e}")))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| {
                invalid(format!(
                    "{CERT_VAR} ({}) and {KEY_VAR} ({}) do not make a client identity: {e}",
                    paths.cert.display(),
                    paths.key.display()
                ))
            })?;
    // The exchange speaks HTTP/1.1 only; a server offering h2 must not pick it.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Every certificate in a PEM file; none is an error.
fn certificates(var: &str, path: &Path) -> io::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(var, path, e, "CERTIFICATE"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(var, path, e, "CERTIFICATE"))?;
    if certs.is_empty() {
        return Err(pem_error(
            var,
            path,
            pem::Error::NoItemsFound,
            "CERTIFICATE",
        ));
    }
    Ok(certs)
}

/// A PEM error in words of our own: the parser's own messages quote the offending line or
/// base64 detail, which may be part of a private key.
fn pem_error(var: &str, path: &Path, e: pem::Error, wanted: &str) -> io::Error {
    let why = match e {
        pem::Error::Io(io) => format!("cannot read it: {io}"),
        pem::Error::NoItemsFound => format!("no {wanted} section in it"),
        pem::Error::MissingSectionEnd { .. } => "a PEM section has no END line".to_string(),
        pem::Error::IllegalSectionStart { .. } => "a malformed PEM BEGIN line".to_string(),
        pem::Error::Base64Decode(_) => "a PEM section is not valid base64".to_string(),
        _ => "not a readable PEM file".to_string(),
    };
    invalid(format!("{var} ({}): {why}", path.display()))
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::thread::JoinHandle;

    use rustls::pki_types::PrivateKeyDer;
    use rustls::server::WebPkiClientVerifier;
    use rustls::version::{TLS12, TLS13};
    use rustls::{ServerConfig, ServerConnection, SupportedProtocolVersion};

    use crate::remote::http;
    use crate::remote::Endpoint;

    const T: Duration = Duration::from_secs(10);

    fn data(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/tls")
            .join(name)
    }

    fn paths(cert: &str, key: &str, ca: &str) -> Paths {
        Paths {
            cert: data(cert),
            key: data(key),
            ca: data(ca),
        }
    }

    fn ours() -> Paths {
        paths("client.pem", "client.key", "ca.pem")
    }

    /// A one-connection mTLS server on 127.0.0.1: `cert`/`key` its identity, client
    /// certificates required from `client_ca`. It answers one request with a JSON 200 and
    /// returns the request head; a failed handshake is its `Err`.
    fn serve_once(
        cert: &str,
        key: &str,
        client_ca: &str,
        versions: &[&'static SupportedProtocolVersion],
    ) -> (u16, JoinHandle<Result<String, String>>) {
        serve_once_with(cert, key, client_ca, versions, 2)
    }

    /// [`serve_once`], sending `tickets` TLS 1.3 session tickets (rustls's default is 2).
    fn serve_once_with(
        cert: &str,
        key: &str,
        client_ca: &str,
        versions: &[&'static SupportedProtocolVersion],
        tickets: usize,
    ) -> (u16, JoinHandle<Result<String, String>>) {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(data(client_ca)).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .unwrap();
        let chain = CertificateDer::pem_file_iter(data(cert))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(data(key)).unwrap();
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .unwrap();
        config.send_tls13_tickets = tickets;
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let handle = std::thread::spawn(move || {
            let (sock, _) = listener.accept().map_err(|e| e.to_string())?;
            sock.set_read_timeout(Some(T)).map_err(|e| e.to_string())?;
            sock.set_write_timeout(Some(T)).map_err(|e| e.to_string())?;
            let conn = ServerConnection::new(config).map_err(|e| e.to_string())?;
            let mut tls = StreamOwned::new(conn, sock);
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                match tls.read(&mut byte).map_err(|e| e.to_string())? {
                    0 => return Err("closed before the request ended".into()),
                    _ => head.push(byte[0]),
                }
            }
            let body = br#"{"status":"ok","version":"1.9.2"}"#;
            write!(
                tls,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n",
                body.len()
            )
            .map_err(|e| e.to_string())?;
            tls.write_all(body).map_err(|e| e.to_string())?;
            tls.conn.send_close_notify();
            tls.flush().map_err(|e| e.to_string())?;
            Ok(String::from_utf8_lossy(&head).into_owned())
        });
        (port, handle)
    }

    fn tcp(port: u16) -> TcpStream {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        s.set_write_timeout(Some(T)).unwrap();
        s
    }

    /// Every base64 line of every test PEM file: none may appear in a message.
    fn pem_lines() -> Vec<String> {
        let mut lines = Vec::new();
        for entry in std::fs::read_dir(data("")).unwrap() {
            let path = entry.unwrap().path();
            if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("pem" | "key")
            ) {
                let text = std::fs::read_to_string(&path).unwrap();
                lines.extend(
                    text.lines()
                        .filter(|l| !l.starts_with("-----") && l.len() > 16)
                        .map(str::to_string),
                );
            }
        }
        assert!(lines.len() > 20);
        lines
    }

    fn assert_no_pem(msg: &str) {
        assert!(!msg.contains("-----"), "{msg}");
        for line in pem_lines() {
            assert!(!msg.contains(&line[..16]), "PEM content in {msg}");
        }
    }

    #[test]
    fn handshake_with_client_certificate_then_bytes_flow_both_ways() {
        for versions in [&[&TLS13][..], &[&TLS12][..]] {
            let (port, server) = serve_once("server.pem", "server.key", "ca.pem", versions);
            let mut s = connect_with(tcp(port), "127.0.0.1", &ours()).unwrap();
            s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            let mut answer = Vec::new();
            s.read_to_end(&mut answer).unwrap();
            let answer = String::from_utf8(answer).unwrap();
            assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
            assert!(answer.ends_with(r#"{"status":"ok","version":"1.9.2"}"#));
            let head = server.join().unwrap().unwrap();
            assert!(head.starts_with("GET /health HTTP/1.1"), "{head}");
        }
    }

    #[test]
    fn the_server_name_may_be_a_dns_name() {
        let (port, server) = serve_once("server.pem", "server.key", "ca.pem", &[&TLS13]);
        let mut s = connect_with(tcp(port), "localhost", &ours()).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).unwrap();
        server.join().unwrap().unwrap();
    }

    #[test]
    fn a_client_certificate_of_another_ca_is_an_error_of_connect() {
        // TLS 1.3 is the case where the client's handshake ends before the server's verdict.
        for versions in [&[&TLS13][..], &[&TLS12][..]] {
            let (port, server) = serve_once("server.pem", "server.key", "ca.pem", versions);
            let other = paths("other-client.pem", "other-client.key", "ca.pem");
            let err = connect_with(tcp(port), "127.0.0.1", &other).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains("refused the client certificate"), "{msg}");
            assert!(msg.contains(CERT_VAR) && msg.contains(KEY_VAR), "{msg}");
            assert_no_pem(&msg);
            assert!(server.join().unwrap().is_err());
        }
    }

    #[test]
    fn a_server_that_sends_no_tickets_is_waited_for_once_and_a_refusal_is_still_an_error() {
        // "localhost": no other test's server is remembered under that name.
        let (port, server) = serve_once_with("server.pem", "server.key", "ca.pem", &[&TLS13], 0);
        let mut s = connect_with(tcp(port), "localhost", &ours()).unwrap();
        assert!(lock(silent()).contains(&format!("localhost:{port}")));
        s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).unwrap();
        assert!(answer.starts_with(b"HTTP/1.1 200 OK"));
        server.join().unwrap().unwrap();

        // Refused without tickets: the refusal comes as the first read's error, not a hang.
        let (port, server) = serve_once_with("server.pem", "server.key", "ca.pem", &[&TLS13], 0);
        let other = paths("other-client.pem", "other-client.key", "ca.pem");
        let outcome = connect_with(tcp(port), "localhost", &other).and_then(|mut s| {
            s.write_all(b"GET / HTTP/1.1\r\n\r\n")?;
            s.read_to_end(&mut Vec::new())
        });
        assert!(outcome.is_err(), "{outcome:?}");
        assert!(server.join().unwrap().is_err());
    }

    #[test]
    fn a_server_certificate_of_another_ca_is_refused() {
        let (port, server) =
            serve_once("other-server.pem", "other-server.key", "ca.pem", &[&TLS13]);
        let err = connect_with(tcp(port), "127.0.0.1", &ours()).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("the server's certificate was refused"),
            "{msg}"
        );
        assert!(msg.contains(CA_VAR), "{msg}");
        assert_no_pem(&msg);
        assert!(server.join().unwrap().is_err());
    }

    #[test]
    fn a_server_certificate_for_another_name_is_refused() {
        let (port, server) = serve_once("server.pem", "server.key", "ca.pem", &[&TLS13]);
        let err = connect_with(tcp(port), "smolvm.example", &ours()).unwrap_err();
        assert!(err
            .to_string()
            .contains("the server's certificate was refused"));
        assert!(server.join().unwrap().is_err());
    }

    #[test]
    fn missing_files_name_the_variable_and_path() {
        for (p, var) in [
            (paths("nosuch.pem", "client.key", "ca.pem"), CERT_VAR),
            (paths("client.pem", "nosuch.key", "ca.pem"), KEY_VAR),
            (paths("client.pem", "client.key", "nosuch-ca.pem"), CA_VAR),
        ] {
            let err = build(&p).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
            let msg = err.to_string();
            assert!(msg.starts_with(var), "{msg}");
            assert!(
                msg.contains("nosuch") && msg.contains("cannot read"),
                "{msg}"
            );
        }
    }

    #[test]
    fn a_pem_without_what_it_should_hold_is_refused_without_quoting_it() {
        let dir = tempfile::tempdir().unwrap();
        let bad_start = dir.path().join("bad-start.pem");
        std::fs::write(&bad_start, "-----BEGIN sekrit-line\nAAAA\n").unwrap();
        let bad_b64 = dir.path().join("bad-b64.pem");
        std::fs::write(
            &bad_b64,
            "-----BEGIN CERTIFICATE-----\nsekrit!!base64*\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let no_end = dir.path().join("no-end.pem");
        std::fs::write(&no_end, "-----BEGIN PRIVATE KEY-----\nsekritAAAA\n").unwrap();
        let cases = [
            // A key where the certificate chain belongs, a certificate where the key belongs.
            (
                paths("client.key", "client.key", "ca.pem"),
                CERT_VAR,
                "no CERTIFICATE section in it",
            ),
            (
                paths("client.pem", "client.pem", "ca.pem"),
                KEY_VAR,
                "no PRIVATE KEY section in it",
            ),
            (
                paths("client.pem", "client.key", "server.key"),
                CA_VAR,
                "no CERTIFICATE section in it",
            ),
            // A key that is not the certificate's.
            (
                paths("client.pem", "other-client.key", "ca.pem"),
                CERT_VAR,
                "client identity",
            ),
            (
                Paths {
                    ca: bad_start.clone(),
                    ..ours()
                },
                CA_VAR,
                "a malformed PEM BEGIN line",
            ),
            (
                Paths {
                    cert: bad_b64,
                    ..ours()
                },
                CERT_VAR,
                "a PEM section is not valid base64",
            ),
            (
                Paths {
                    key: no_end,
                    ..ours()
                },
                KEY_VAR,
                "a PEM section has no END line",
            ),
            (
                Paths {
                    key: bad_start,
                    ..ours()
                },
                KEY_VAR,
                "a malformed PEM BEGIN line",
            ),
        ];
        for (p, var, why) in cases {
            let err = build(&p).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
            let msg = err.to_string();
            let path = match var {
                CERT_VAR => &p.cert,
                KEY_VAR => &p.key,
                _ => &p.ca,
            };
            if why == "client identity" {
                assert!(msg.starts_with(var) && msg.contains(why), "{msg}");
            } else {
                // Our words only: the PEM parser's own messages quote the offending line (as
                // text or as a byte list) or a base64 symbol.
                assert_eq!(msg, format!("{var} ({}): {why}", path.display()));
            }
            assert!(!msg.contains("sekrit"), "{msg}");
            assert!(!msg.contains("115, 101, 107, 114, 105, 116"), "{msg}");
            assert_no_pem(&msg);
        }
    }

    #[test]
    fn the_config_is_built_once_per_path_triple() {
        let a = config(&ours()).unwrap();
        let b = config(&ours()).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let other = config(&paths("other-client.pem", "other-client.key", "ca.pem")).unwrap();
        assert!(!Arc::ptr_eq(&a, &other));
    }

    struct EnvGuard(Vec<(&'static str, Option<std::ffi::OsString>)>);

    impl EnvGuard {
        fn save() -> EnvGuard {
            EnvGuard(
                [CERT_VAR, KEY_VAR, CA_VAR]
                    .into_iter()
                    .map(|v| (v, std::env::var_os(v)))
                    .collect(),
            )
        }
    }

    impl Drop for EnvGuard {
        fn drop(&mut self) {
            for (var, value) in &self.0 {
                match value {
                    Some(v) => std::env::set_var(var, v),
                    None => std::env::remove_var(var),
                }
            }
        }
    }

    /// The one test that reads the environment: partial sets, then a whole request through
    /// the HTTP exchange over `https://`.
    #[test]
    #[serial_test::serial]
    fn env_variables_then_a_request_through_http_send() {
        let _restore = EnvGuard::save();
        for var in [CERT_VAR, KEY_VAR, CA_VAR] {
            std::env::remove_var(var);
        }
        let msg = check_env().unwrap_err().to_string();
        assert!(
            msg.contains(&format!("not set: {CERT_VAR}, {KEY_VAR}, {CA_VAR}")),
            "{msg}"
        );

        std::env::set_var(CERT_VAR, data("client.pem"));
        std::env::set_var(KEY_VAR, "");
        let err = check_env().unwrap_err();
        assert!(
            matches!(
                &err,
                Error::InvalidInput {
                    what: "TLS files (SMOLVM_HARNESS_TLS_*)",
                    ..
                }
            ),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("not set: {KEY_VAR}, {CA_VAR}")),
            "{msg}"
        );

        std::env::set_var(KEY_VAR, data("client.key"));
        std::env::set_var(CA_VAR, data("nosuch-ca.pem"));
        let msg = check_env().unwrap_err().to_string();
        assert!(
            msg.contains(CA_VAR) && msg.contains("nosuch-ca.pem"),
            "{msg}"
        );

        std::env::set_var(CA_VAR, data("ca.pem"));
        check_env().unwrap();

        let (port, server) = serve_once("server.pem", "server.key", "ca.pem", &[&TLS13]);
        let endpoint = Endpoint::parse(&format!("https://127.0.0.1:{port}")).unwrap();
        let response = http::send(&endpoint, "GET", "/health", None, T, 1 << 20).unwrap();
        assert_eq!(response.status, 200);
        assert!(response.is_json());
        assert_eq!(response.body, br#"{"status":"ok","version":"1.9.2"}"#);
        let head = server.join().unwrap().unwrap();
        assert!(head.starts_with("GET /health HTTP/1.1\r\n"), "{head}");

        // The same through the public client: `Smolvm::remote` of an https URL.
        let (port, server) = serve_once("server.pem", "server.key", "ca.pem", &[&TLS13]);
        let smolvm = crate::Smolvm::remote(&format!("https://127.0.0.1:{port}")).unwrap();
        assert_eq!(smolvm.version().unwrap(), crate::Version::new(1, 9, 2));
        server.join().unwrap().unwrap();

        // Without a client identity, `connect` fails before a byte is sent (the listener
        // never even accepts).
        std::env::remove_var(CERT_VAR);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let endpoint = Endpoint::parse(&format!("https://127.0.0.1:{port}")).unwrap();
        let err = http::send(&endpoint, "GET", "/health", None, T, 1 << 20).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains(CERT_VAR));
        // ... and `Smolvm::remote` refuses the URL up front.
        let err = crate::Smolvm::remote(&format!("https://127.0.0.1:{port}")).unwrap_err();
        assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
        assert!(err.to_string().contains(CERT_VAR), "{err}");
    }
}
