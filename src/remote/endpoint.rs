//! Where a `smolvm serve` API listens: the forms of `SMOLVM_HOST` and [`crate::Smolvm::remote`].
//!
//! The canonical URL is what the ledger records and messages show, so it must never carry a
//! credential: a `user:password@` part is refused, and client certificates are named by
//! variables (`SMOLVM_HARNESS_TLS_*`) that every process reads from its own environment.

use std::fmt;
use std::path::PathBuf;

use crate::error::{Error, Result};

/// A parsed smolvm API address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Endpoint {
    /// `unix:///abs/path.sock`: a server on this host.
    Unix(PathBuf),
    /// `http://host:port` or, with `tls`, `https://host:port`.
    Tcp {
        /// A name, an IPv4 address, or an IPv6 address without its brackets.
        host: String,
        port: u16,
        tls: bool,
    },
}

impl Endpoint {
    /// Parse `unix:///abs/path.sock`, `http://host:port` or `https://host:port` (a trailing
    /// `/` is allowed; a path, query, fragment or `user@` part is not).
    pub(crate) fn parse(url: &str) -> Result<Endpoint> {
        // A URL with a `user:password@` part is never quoted back.
        let shown = if url.contains('@') {
            "the URL (not shown: it holds credentials)".to_string()
        } else {
            format!("{url:?}")
        };
        let bad = |why: &str| {
            Error::invalid(
                "smolvm host URL",
                format!(
                    "{shown}: {why} (expected unix:///abs/path.sock, http://host:port or \
                     https://host:port)"
                ),
            )
        };
        if url.contains('\0') || url.chars().any(char::is_whitespace) {
            return Err(bad("contains NUL or whitespace"));
        }
        // Schemes are case-insensitive (RFC 3986): `HTTP://h:1` is `http://h:1`.
        let lowered;
        let url = match url.split_once("://") {
            Some((scheme, rest)) if scheme.bytes().any(|b| b.is_ascii_uppercase()) => {
                lowered = format!("{}://{rest}", scheme.to_ascii_lowercase());
                lowered.as_str()
            }
            _ => url,
        };
        if let Some(path) = url.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(bad("a unix socket path must be absolute"));
            }
            if path.contains(['?', '#']) {
                return Err(bad("a unix socket URL has no query or fragment"));
            }
            let path = clean(path).ok_or_else(|| bad("the path names no socket"))?;
            return Ok(Endpoint::Unix(path));
        }
        let (rest, tls) = if let Some(rest) = url.strip_prefix("http://") {
            (rest, false)
        } else if let Some(rest) = url.strip_prefix("https://") {
            (rest, true)
        } else {
            return Err(bad("unknown scheme"));
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains('@') {
            // A credential would end up in the ledger and in every message.
            return Err(bad("credentials in the URL are refused"));
        }
        if authority.contains(['/', '?', '#']) {
            return Err(bad("the API is at the root: no path, query or fragment"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed `[`"))?;
            let port = after
                .strip_prefix(':')
                .ok_or_else(|| bad("a port is required"))?;
            if host.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(bad("not an IPv6 address in brackets"));
            }
            (host, port)
        } else {
            let (host, port) = authority
                .rsplit_once(':')
                .ok_or_else(|| bad("a port is required"))?;
            let name_ok = !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_');
            if !name_ok {
                return Err(bad("not a host name or address"));
            }
            (host, port)
        };
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad("the port must be 1-65535"))?;
        Ok(Endpoint::Tcp {
            // Host names are case-insensitive: one spelling, one target.
            host: host.to_ascii_lowercase(),
            port,
            tls,
        })
    }

    /// Whether the server is on this host, so that host paths (a pack's sidecar) mean the
    /// same to it: a unix socket, or TCP to a loopback address or `localhost`.
    pub(crate) fn is_local(&self) -> bool {
        match self {
            Endpoint::Unix(_) => true,
            Endpoint::Tcp { host, .. } => {
                host == "localhost"
                    || host
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            }
        }
    }

    /// What names one server whatever the spelling: the URL, with the loopback host's names
    /// (`localhost`, `127.0.0.1`, `::1`) made one, since a user writes either for a server
    /// on this host.
    pub(crate) fn server_key(&self) -> String {
        match self {
            Endpoint::Tcp { host, port, tls }
                if matches!(host.as_str(), "localhost" | "127.0.0.1" | "::1") =>
            {
                let scheme = if *tls { "https" } else { "http" };
                format!("{scheme}://loopback:{port}")
            }
            _ => self.to_string(),
        }
    }

    /// The `Host` header.
    pub(crate) fn host_header(&self) -> String {
        match self {
            Endpoint::Unix(_) => "localhost".to_string(),
            Endpoint::Tcp { host, port, .. } if host.contains(':') => format!("[{host}]:{port}"),
            Endpoint::Tcp { host, port, .. } => format!("{host}:{port}"),
        }
    }
}

/// `path` without `.`, `..`, repeated or trailing `/`, worked out on the text (as URLs are):
/// one socket, one spelling, so the ledger, the machine cap and the sweep see one server.
/// `None` for the root itself.
fn clean(path: &str) -> Option<PathBuf> {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return None;
    }
    Some(PathBuf::from(format!("/{}", parts.join("/"))))
}

impl fmt::Display for Endpoint {
    /// The canonical URL: recorded in the ledger, shown in messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(path) => write!(f, "unix://{}", path.display()),
            Endpoint::Tcp { tls, .. } => {
                let scheme = if *tls { "https" } else { "http" };
                write!(f, "{scheme}://{}", self.host_header())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_forms_parse_and_print_back() {
        for url in [
            "unix:///run/smolvm/api.sock",
            "http://127.0.0.1:8080",
            "https://smolvm.example:8443",
            "http://[::1]:9000",
        ] {
            assert_eq!(Endpoint::parse(url).unwrap().to_string(), url);
        }
        // One server, one spelling: the ledger, the cap and the sweep group by it.
        for (given, canonical) in [
            ("http://h:1/", "http://h:1"),
            ("http://LocalHost:1", "http://localhost:1"),
            ("HTTP://h:1", "http://h:1"),
            ("Unix:///a.sock", "unix:///a.sock"),
            (
                "unix:///run/smolvm/api.sock/",
                "unix:///run/smolvm/api.sock",
            ),
            (
                "unix:///run//x/../smolvm/./api.sock",
                "unix:///run/smolvm/api.sock",
            ),
        ] {
            assert_eq!(Endpoint::parse(given).unwrap().to_string(), canonical);
        }
        assert!(Endpoint::parse("http://LOCALHOST:1").unwrap().is_local());
    }

    #[test]
    fn bad_urls_are_invalid_input() {
        for url in [
            "",
            "unix://relative.sock",
            "unix:///",
            "unix:///a/..",
            "unix:///a.sock?x=1",
            "tcp://h:1",
            "http://h",
            "http://h:0",
            "http://h:99999",
            "http://user:pw@h:1",
            "http://h:1/api",
            "http://h:1?x",
            "http://[::1:1",
            "http://[nothex]:1",
            "http://:1",
            "http://h h:1",
            "h:1",
        ] {
            let err = Endpoint::parse(url).unwrap_err();
            assert!(matches!(err, Error::InvalidInput { .. }), "{url}: {err}");
        }
        let err = Endpoint::parse("https://ci:hunter22@h:1").unwrap_err();
        assert!(!err.to_string().contains("hunter22"), "{err}");
    }

    #[test]
    fn the_loopback_names_are_one_server() {
        let key = |u: &str| Endpoint::parse(u).unwrap().server_key();
        assert_eq!(key("http://localhost:7070"), key("http://127.0.0.1:7070"));
        assert_eq!(key("http://[::1]:7070"), key("http://LOCALHOST:7070"));
        assert_ne!(key("http://localhost:7070"), key("http://localhost:7071"));
        assert_ne!(key("http://localhost:7070"), key("https://localhost:7070"));
        assert_ne!(key("http://10.0.0.1:7070"), key("http://127.0.0.1:7070"));
        assert_eq!(key("unix:///a/../b.sock"), "unix:///b.sock");
    }

    #[test]
    fn local_is_a_socket_or_loopback() {
        let local = |u: &str| Endpoint::parse(u).unwrap().is_local();
        assert!(local("unix:///a.sock"));
        assert!(local("http://127.0.0.1:1"));
        assert!(local("http://localhost:1"));
        assert!(local("http://[::1]:1"));
        assert!(!local("http://10.0.0.1:1"));
        assert!(!local("https://ci-vm.example:1"));
    }
}
