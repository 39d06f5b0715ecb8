//! The one error type, and the redacted command line every message is built from.
//!
//! Every message is meant to be read alone in a CI log: it names the command (with the
//! values of `--env` redacted), the exit code, and the tail of smolvm's output.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::dialect::Version;

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong between a Rust call and smolvm.
///
/// Variants are matched on by callers that branch (a timeout is not a non-zero exit), so the
/// enum is public; it is `#[non_exhaustive]` so new cases can be added.
///
/// ```
/// use smolvm_harness::{Error, Smolvm, ScriptedRunner, Reply};
///
/// let runner = ScriptedRunner::new()
///     .on(&["machine", "start"], Reply::fail(1, "Error: vm not found: web\n"));
/// let smolvm = Smolvm::new("smolvm").with_runner(runner);
/// let err = smolvm.machine_start("web").unwrap_err();
/// assert!(matches!(err, Error::Failed { .. }));
/// assert_eq!(
///     err.to_string(),
///     "smolvm machine start --name web failed (exit 1): Error: vm not found: web"
/// );
/// ```
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The smolvm binary could not be found.
    #[error(
        "smolvm not found: {looked}. Install smolvm (see https://github.com/smol-machines/smolvm) \
         or set SMOLVM_BIN to the path of its binary"
    )]
    NotFound {
        /// What was asked for (`smolvm`, or the value of `SMOLVM_BIN`).
        binary: String,
        /// Where it was looked for, in words.
        looked: String,
    },

    /// The process could not be started, or its pipes failed.
    #[error("failed to run `{command}`: {source}")]
    Spawn {
        /// The command line, redacted.
        command: CommandLine,
        /// The I/O error from the operating system.
        #[source]
        source: io::Error,
    },

    /// smolvm did not finish within the host-side timeout; it was killed and reaped.
    #[error(
        "`{command}` timed out after {timeout:?} and was killed{}",
        tail_suffix(stderr, command)
    )]
    Timeout {
        /// The command line, redacted.
        command: CommandLine,
        /// The host-side limit that expired.
        timeout: Duration,
        /// What the process wrote to stdout before it was killed.
        stdout: Vec<u8>,
        /// What the process wrote to stderr before it was killed.
        stderr: Vec<u8>,
    },

    /// smolvm ran and reported failure: a non-zero exit of a lifecycle call, or smolvm's own
    /// `Error:` line from `machine exec` (machine not found, not running).
    #[error("{command} failed ({}){}", exit_text(*code), tail_suffix(stderr, command))]
    Failed {
        /// The command line, redacted.
        command: CommandLine,
        /// The exit code; `None` when smolvm was killed by a signal.
        code: Option<i32>,
        /// Everything smolvm wrote to stdout.
        stdout: Vec<u8>,
        /// Everything smolvm wrote to stderr.
        stderr: Vec<u8>,
    },

    /// Input rejected before smolvm was called.
    #[error("invalid {what}: {reason}")]
    InvalidInput {
        /// What was invalid: `machine name`, `env key`, `CIDR`, `timeout`, …
        what: &'static str,
        /// Why, in words; never contains an env value.
        reason: String,
    },

    /// A machine name is held by another live [`crate::Machine`] of this process on the same
    /// smolvm (independent simulations and other smolvm states do not collide).
    #[error(
        "machine name {name:?} is in use by another live Machine of this process on the same \
         smolvm; give each machine its own name, or let the harness generate one"
    )]
    NameInUse {
        /// The name.
        name: String,
    },

    /// smolvm's output could not be understood.
    #[error("could not parse the output of `{command}`: {reason}")]
    Parse {
        /// The command line, redacted.
        command: CommandLine,
        /// What was wrong with it.
        reason: String,
    },

    /// The installed smolvm cannot do what was asked, safely.
    #[error("{what} is not supported by smolvm {version}: {reason}")]
    Unsupported {
        /// The feature or combination asked for.
        what: &'static str,
        /// The version in use.
        version: Version,
        /// Why it is refused and what to do instead.
        reason: &'static str,
    },

    /// A file operation of the harness itself (temp dirs, ledger, locks) failed.
    #[error("failed to {action} `{}`: {source}", path.display())]
    Io {
        /// What the harness was doing, e.g. `create pack directory`.
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

// `Debug` prints the message so that `unwrap()` and `main() -> Result` stay readable.
impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Error {
    /// The redacted command line, for variants that ran (or tried to run) smolvm.
    pub fn command(&self) -> Option<&CommandLine> {
        match self {
            Error::Spawn { command, .. }
            | Error::Timeout { command, .. }
            | Error::Failed { command, .. }
            | Error::Parse { command, .. } => Some(command),
            _ => None,
        }
    }

    /// smolvm's exit code, for [`Error::Failed`].
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            Error::Failed { code, .. } => *code,
            _ => None,
        }
    }

    /// True when smolvm said the machine does not exist (`Error: vm not found: NAME`, or the
    /// `status --json` wording `Error: config operation failed: machine status: machine
    /// 'NAME' not found`). Nothing else counts: an idempotent delete must not swallow other
    /// failures that happen to say "not found".
    pub fn is_not_found(&self) -> bool {
        match self {
            Error::Failed { stderr, .. } => String::from_utf8_lossy(stderr).lines().any(|l| {
                l.starts_with("Error: vm not found:")
                    || (l.starts_with("Error: config operation failed: machine status: machine '")
                        && l.trim_end().ends_with("' not found"))
            }),
            _ => false,
        }
    }

    pub(crate) fn invalid(what: &'static str, reason: impl Into<String>) -> Error {
        Error::InvalidInput {
            what,
            reason: reason.into(),
        }
    }

    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Error {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

fn exit_text(code: Option<i32>) -> String {
    match code {
        Some(c) => format!("exit {c}"),
        None => "killed by a signal".to_string(),
    }
}

/// How much of smolvm's stderr an error message quotes.
const TAIL_LINES: usize = 20;

fn tail_suffix(stderr: &[u8], command: &CommandLine) -> String {
    let tail = command.redact_output(&tail_lines(stderr, TAIL_LINES));
    let tail = tail.trim_end();
    if tail.is_empty() {
        String::new()
    } else if tail.contains('\n') {
        format!(":\n{tail}")
    } else {
        format!(": {tail}")
    }
}

/// The last `n` lines of `bytes`, lossily decoded.
pub(crate) fn tail_lines(bytes: &[u8], n: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.trim_end().lines().collect();
    let start = lines.len().saturating_sub(n);
    let mut out = String::new();
    if start > 0 {
        out.push_str(&format!("[… {start} earlier lines]\n"));
    }
    out.push_str(&lines[start..].join("\n"));
    out
}

/// Placeholder written in place of a secret.
pub const REDACTED: &str = "<redacted>";

/// A command line as it may be shown: program and arguments, with every `--env`/`-e` value
/// replaced by `<redacted>`.
///
/// The secret values themselves are kept (never displayed) only so that they can also be
/// scrubbed from output quoted in messages, e.g. a guest that echoed its environment.
///
/// Shared behind an `Arc`: it travels in every error, transcript entry and exec output, and
/// keeps [`Error`] small.
#[derive(Clone, PartialEq, Eq)]
pub struct CommandLine(std::sync::Arc<CommandLineInner>);

#[derive(PartialEq, Eq)]
struct CommandLineInner {
    program: String,
    args: Vec<String>,
    secrets: Vec<String>,
}

impl CommandLine {
    /// Build from a program and its exact argv; env values are redacted here, once.
    pub fn new(program: impl Into<String>, argv: &[String]) -> CommandLine {
        let mut args = Vec::with_capacity(argv.len());
        let mut secrets = Vec::new();
        let mut after_separator = false;
        let mut value_is_env = false;
        for arg in argv {
            if after_separator {
                // Guest argv is the user's own; it is shown as given.
                args.push(arg.clone());
                continue;
            }
            if value_is_env {
                value_is_env = false;
                args.push(redact_pair(arg, &mut secrets));
                continue;
            }
            if arg == "--" {
                after_separator = true;
                args.push(arg.clone());
            } else if arg == "-e" || arg == "--env" {
                value_is_env = true;
                args.push(arg.clone());
            } else if let Some(pair) = arg
                .strip_prefix("--env=")
                .or_else(|| arg.strip_prefix("-e="))
            {
                let flag = &arg[..arg.len() - pair.len()];
                args.push(format!("{flag}{}", redact_pair(pair, &mut secrets)));
            } else {
                args.push(arg.clone());
            }
        }
        CommandLine(std::sync::Arc::new(CommandLineInner {
            program: program.into(),
            args,
            secrets: ordered(secrets),
        }))
    }

    /// The same command line, also scrubbing `extra` values from quoted output (the env a
    /// machine was created with, which its guest can print).
    pub(crate) fn with_secrets(&self, extra: &[String]) -> CommandLine {
        if extra.is_empty() {
            return self.clone();
        }
        let mut secrets = self.0.secrets.clone();
        secrets.extend(extra.iter().cloned());
        CommandLine(std::sync::Arc::new(CommandLineInner {
            program: self.0.program.clone(),
            args: self.0.args.clone(),
            secrets: ordered(secrets),
        }))
    }

    /// The program as configured (`smolvm`, or the value of `SMOLVM_BIN`).
    pub fn program(&self) -> &str {
        &self.0.program
    }

    /// The redacted arguments.
    pub fn args(&self) -> &[String] {
        &self.0.args
    }

    /// Replace every secret value (of 4 or more bytes) in `text` by `<redacted>`.
    ///
    /// Shorter values are left alone: scrubbing `1` or `on` from all output would make it
    /// unreadable, and such values are not secrets.
    pub fn redact_output(&self, text: &str) -> String {
        let mut out = text.to_string();
        for secret in &self.0.secrets {
            if secret.len() >= 4 {
                out = out.replace(secret.as_str(), REDACTED);
            }
        }
        out
    }
}

/// Longest first and without repeats, so that a secret that is part of a longer one cannot
/// break the longer one's match and leave its tail in clear.
fn ordered(mut secrets: Vec<String>) -> Vec<String> {
    secrets.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    secrets.dedup();
    secrets
}

fn redact_pair(pair: &str, secrets: &mut Vec<String>) -> String {
    match pair.split_once('=') {
        Some((key, value)) => {
            if !value.is_empty() {
                secrets.push(value.to_string());
            }
            format!("{key}={REDACTED}")
        }
        None => pair.to_string(),
    }
}

impl fmt::Display for CommandLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.program)?;
        for arg in &self.0.args {
            f.write_str(" ")?;
            if arg.is_empty()
                || arg
                    .chars()
                    .any(|c| c.is_whitespace() || c == '\'' || c == '"')
            {
                write!(f, "'{}'", arg.replace('\'', r"'\''"))?;
            } else {
                f.write_str(arg)?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for CommandLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secrets field.
        write!(f, "CommandLine({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(words: &[&str]) -> Vec<String> {
        words.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn env_values_are_redacted_in_every_form() {
        let cl = CommandLine::new(
            "smolvm",
            &argv(&[
                "machine",
                "exec",
                "--name",
                "m",
                "--env=TOKEN=hunter22",
                "-e",
                "A=sekret",
                "--env",
                "B=x=y",
                "-e=C=-dash",
                "--",
                "echo",
                "--env=GUEST=shown",
            ]),
        );
        let shown = cl.to_string();
        assert_eq!(
            shown,
            "smolvm machine exec --name m --env=TOKEN=<redacted> -e A=<redacted> --env \
             B=<redacted> -e=C=<redacted> -- echo --env=GUEST=shown"
        );
        assert!(!format!("{cl:?}").contains("hunter22"));
        assert_eq!(
            cl.redact_output("x hunter22 y sekret x=y"),
            "x <redacted> y <redacted> x=y"
        );
    }

    #[test]
    fn a_secret_inside_a_longer_one_does_not_expose_its_tail() {
        let cl = CommandLine::new(
            "smolvm",
            &argv(&[
                "machine",
                "exec",
                "--env=A=abcd",
                "--env=B=abcdefgh-TAIL",
                "--env=C=abcd",
            ]),
        );
        assert_eq!(
            cl.redact_output("leak: abcdefgh-TAIL abcd"),
            "leak: <redacted> <redacted>"
        );
        let more = cl.with_secrets(&["zzzz-create-time".to_string()]);
        assert_eq!(more.redact_output("x zzzz-create-time"), "x <redacted>");
        assert_eq!(more.to_string(), cl.to_string());
    }

    #[test]
    fn not_found_means_only_smolvms_two_wordings() {
        let failed = |stderr: &str| Error::Failed {
            command: CommandLine::new("smolvm", &[]),
            code: Some(1),
            stdout: vec![],
            stderr: stderr.as_bytes().to_vec(),
        };
        assert!(failed("Error: vm not found: m\n").is_not_found());
        assert!(
            failed("Error: config operation failed: machine status: machine 'm' not found\n")
                .is_not_found()
        );
        assert!(!failed("Error: agent operation failed: file 'x' not found\n").is_not_found());
        assert!(!failed("guest said Error: vm not found: m\n").is_not_found());
    }

    #[test]
    fn failed_message_quotes_stderr_and_scrubs_secrets() {
        let err = Error::Failed {
            command: CommandLine::new("smolvm", &argv(&["machine", "create", "--env=K=topsecret"])),
            code: Some(1),
            stdout: vec![],
            stderr: b"Error: saw topsecret\n".to_vec(),
        };
        assert_eq!(
            err.to_string(),
            "smolvm machine create --env=K=<redacted> failed (exit 1): Error: saw <redacted>"
        );
        assert_eq!(format!("{err:?}"), err.to_string());
    }

    #[test]
    fn error_is_send_sync() {
        fn check<T: Send + Sync + 'static>() {}
        check::<Error>();
    }
}
