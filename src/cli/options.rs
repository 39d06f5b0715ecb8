//! What a caller asks of `machine create` and `machine exec`, and the exact argv each becomes.
//! Options are plain values built by value; validation and argv building are separate steps
//! so that a caller (the machine builder) can check input and version refusals before any
//! side effect. Env values never show in `Debug`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::dialect::Dialect;
use crate::error::{Error, Result};
use crate::validate::{
    format_timeout, validate_cidr, validate_env_key, validate_env_value, validate_image,
    validate_label,
};

/// Source of a machine: an image reference, or a packed `.smolmachine` file. One or the
/// other, by construction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// `--image IMAGE`: a registry reference, or a local archive or directory (≥ 1.x).
    Image(String),
    /// `--from PATH`: a `.smolmachine` sidecar made by `pack create`.
    FromPath(PathBuf),
}

/// One published port: connections to `127.0.0.1:host` on the host reach `guest` in the
/// machine (`-p HOST:GUEST`, TCP only).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortMapping {
    /// The host port.
    pub host: u16,
    /// The guest port.
    pub guest: u16,
}

/// Options of `machine create`, built by value.
///
/// ```
/// use smolvm_harness::CreateOptions;
/// let opts = CreateOptions::image("alpine:latest")
///     .allow_cidr("10.0.0.0/8")
///     .env("TOKEN", "secret")
///     .label("team", "infra");
/// // Env values never show in Debug output.
/// assert!(!format!("{opts:?}").contains("secret"));
/// ```
#[derive(Clone, PartialEq, Eq)]
#[must_use]
pub struct CreateOptions {
    source: Source,
    net: bool,
    allow_cidrs: Vec<String>,
    env: Vec<(String, String)>,
    labels: Vec<(String, String)>,
}

impl fmt::Debug for CreateOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreateOptions")
            .field("source", &self.source)
            .field("net", &self.net)
            .field("allow_cidrs", &self.allow_cidrs)
            .field("env", &redacted_env(&self.env))
            .field("labels", &self.labels)
            .finish()
    }
}

impl CreateOptions {
    /// Create from an image reference (`--image`).
    pub fn image(image: impl Into<String>) -> CreateOptions {
        CreateOptions::with_source(Source::Image(image.into()))
    }

    /// Create from a packed `.smolmachine` file (`--from`); see
    /// [`Smolvm::pack_create`](crate::Smolvm::pack_create).
    pub fn from_path(path: impl Into<PathBuf>) -> CreateOptions {
        CreateOptions::with_source(Source::FromPath(path.into()))
    }

    fn with_source(source: Source) -> CreateOptions {
        CreateOptions {
            source,
            net: false,
            allow_cidrs: Vec::new(),
            env: Vec::new(),
            labels: Vec::new(),
        }
    }

    /// Turn networking on (`--net`). A registry image needs it on smolvm ≥ 1.7.3, which
    /// pulls inside the guest; CIDRs turn it on by themselves.
    pub fn net(mut self) -> CreateOptions {
        self.net = true;
        self
    }

    /// Allow egress to this CIDR (`--allow-cidr`); `--net` is then sent explicitly, since
    /// with `--from` some versions do not infer it.
    pub fn allow_cidr(mut self, cidr: impl Into<String>) -> CreateOptions {
        self.allow_cidrs.push(cidr.into());
        self
    }

    /// Set a guest environment variable (sent as `--env=K=V`, so a value starting with `-`
    /// survives). The value is redacted from every command line in messages, transcripts
    /// and logs; in quoted output (a guest that prints its env) it is scrubbed when it is
    /// 4 bytes or longer (see
    /// [`CommandLine::redact_output`](crate::error::CommandLine::redact_output)).
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> CreateOptions {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Attach a label (`--label K=V`, smolvm ≥ 1.8.0; not sent to older versions).
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> CreateOptions {
        self.labels.push((key.into(), value.into()));
        self
    }

    /// The source.
    pub fn source(&self) -> &Source {
        &self.source
    }

    /// The labels, in the order given.
    pub fn labels(&self) -> &[(String, String)] {
        &self.labels
    }

    /// The non-empty env values: the client remembers them per machine to scrub them from
    /// output quoted later (a guest can print its env).
    pub(super) fn env_values(&self) -> Vec<String> {
        self.env
            .iter()
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty())
            .collect()
    }

    pub(crate) fn validate(&self) -> Result<()> {
        match &self.source {
            Source::Image(image) => validate_image(image)?,
            Source::FromPath(p) => {
                path_arg("from path", p)?;
                if !p.is_file() {
                    return Err(Error::invalid(
                        "from path",
                        format!(
                            "{} is not a file (expected a .smolmachine made by `pack create`)",
                            p.display()
                        ),
                    ));
                }
            }
        }
        for c in &self.allow_cidrs {
            validate_cidr(c)?;
        }
        for (k, v) in &self.env {
            validate_env_key(k)?;
            validate_env_value(k, v)?;
        }
        for (k, v) in &self.labels {
            validate_label(k, v)?;
        }
        Ok(())
    }

    /// The exact argv for `dialect` (after validation).
    pub(crate) fn argv(&self, name: &str, dialect: Dialect) -> Result<Vec<String>> {
        let mut args = strings(&["machine", "create"]);
        if dialect.name_flag {
            args.extend(strings(&["--name", name]));
        }
        match &self.source {
            Source::Image(image) => args.extend(strings(&["--image", image])),
            Source::FromPath(p) => {
                if !self.allow_cidrs.is_empty() && !dialect.from_keeps_egress {
                    return Err(Error::Unsupported {
                        what: "--from together with --allow-cidr",
                        version: dialect.version,
                        reason: "smolvm before 1.8.0 silently drops the egress policy of a \
                                 machine created --from a pack (0.8.0 with --net even grants \
                                 unrestricted network); upgrade smolvm to 1.8.0 or later, or \
                                 create from an image",
                    });
                }
                args.push("--from".into());
                args.push(path_arg("from path", p)?);
            }
        }
        if self.net || !self.allow_cidrs.is_empty() {
            args.push("--net".into());
        }
        for c in &self.allow_cidrs {
            args.push("--allow-cidr".into());
            args.push(c.clone());
        }
        for (k, v) in &self.env {
            args.push(format!("--env={k}={v}"));
        }
        if dialect.labels {
            for (k, v) in &self.labels {
                args.push("--label".into());
                args.push(format!("{k}={v}"));
            }
        }
        if !dialect.name_flag {
            args.push(name.to_string());
        }
        Ok(args)
    }
}

/// Options of `machine exec`.
///
/// ```
/// use std::time::Duration;
/// use smolvm_harness::ExecOptions;
/// let opts = ExecOptions::default()
///     .env("MODE", "test")
///     .workdir("/srv")
///     .timeout(Duration::from_secs(30));
/// # let _ = opts;
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
#[must_use]
pub struct ExecOptions {
    env: Vec<(String, String)>,
    workdir: Option<String>,
    timeout: Option<Duration>,
    stream: bool,
}

impl fmt::Debug for ExecOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExecOptions")
            .field("env", &redacted_env(&self.env))
            .field("workdir", &self.workdir)
            .field("timeout", &self.timeout)
            .field("stream", &self.stream)
            .finish()
    }
}

impl ExecOptions {
    /// Set a guest environment variable for this command (overrides the machine's own by
    /// key). The value is redacted from every command line in messages, transcripts and
    /// logs; in quoted output it is scrubbed when it is 4 bytes or longer (see
    /// [`CommandLine::redact_output`](crate::error::CommandLine::redact_output)).
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> ExecOptions {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Run in this guest directory (`-w`).
    pub fn workdir(mut self, dir: impl Into<String>) -> ExecOptions {
        self.workdir = Some(dir.into());
        self
    }

    /// Guest-side timeout (`--timeout`): smolvm kills the command and reports exit 124.
    /// At least 1 ms; sent in whole milliseconds or seconds; longer than
    /// [`MAX_TIMEOUT`](crate::validate::MAX_TIMEOUT) (365 days) is sent as 365 days.
    pub fn timeout(mut self, timeout: Duration) -> ExecOptions {
        self.timeout = Some(timeout);
        self
    }

    /// Ask smolvm to stream the output (`--stream`) instead of buffering it in the agent.
    /// Needed for output over 11 MiB per stream, which smolvm ≥ 1.0 otherwise refuses (exit 1)
    /// and 0.8.x silently truncates; it also keeps stdout and stderr from being reordered.
    /// The crate still captures everything and returns it when the command ends.
    pub fn stream(mut self) -> ExecOptions {
        self.stream = true;
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        for (k, v) in &self.env {
            validate_env_key(k)?;
            validate_env_value(k, v)?;
        }
        if let Some(dir) = &self.workdir {
            if dir.is_empty() || dir.contains('\0') {
                return Err(Error::invalid("workdir", format!("{dir:?}")));
            }
        }
        if let Some(t) = self.timeout {
            format_timeout(t)?;
        }
        Ok(())
    }

    /// The exact argv of `machine exec` running `command` in `name` (after validation).
    pub(super) fn argv<S: AsRef<str>>(&self, name: &str, command: &[S]) -> Result<Vec<String>> {
        let mut args = strings(&["machine", "exec", "--name", name]);
        if let Some(dir) = &self.workdir {
            // The attached form keeps a directory that starts with `-` from being read as a flag.
            if dir.starts_with('-') {
                args.push(format!("-w={dir}"));
            } else {
                args.push("-w".into());
                args.push(dir.clone());
            }
        }
        if let Some(t) = self.timeout {
            args.push("--timeout".into());
            args.push(format_timeout(t)?);
        }
        if self.stream {
            args.push("--stream".into());
        }
        for (k, v) in &self.env {
            args.push(format!("--env={k}={v}"));
        }
        args.push("--".into());
        args.extend(command.iter().map(|a| a.as_ref().to_string()));
        Ok(args)
    }

    /// The guest-side timeout, if one was set.
    pub(super) fn guest_timeout(&self) -> Option<Duration> {
        self.timeout
    }
}

/// Owned argv words.
pub(super) fn strings(words: &[&str]) -> Vec<String> {
    words.iter().map(|s| s.to_string()).collect()
}

/// A path as one argv word: smolvm's argv is UTF-8, and no argv can carry NUL.
pub(super) fn path_arg(what: &'static str, p: &Path) -> Result<String> {
    let s = p
        .to_str()
        .ok_or_else(|| Error::invalid(what, format!("{} is not valid UTF-8", p.display())))?;
    if s.contains('\0') {
        return Err(Error::invalid(what, format!("{s:?} contains NUL")));
    }
    Ok(s.to_string())
}

fn redacted_env(env: &[(String, String)]) -> Vec<String> {
    env.iter()
        .map(|(k, _)| format!("{k}={}", crate::error::REDACTED))
        .collect()
}
