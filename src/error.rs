//! The one error type, and the redacted command line every message is built from.
//!
//! Every message is meant to be read alone in a CI log: it names the command (with the
//! values of `--env` redacted), the exit code, and the tail of smolvm's output.
//!
//! What is scrubbed, exactly: every `--env` value is replaced by `<redacted>` in command lines
//! (messages, transcripts, traces, `Debug`), whatever its length. In output quoted by a
//! message or a `Debug` print, every env value of [`MIN_SCRUB_LEN`] bytes or more is replaced,
//! over the whole output before it is cut to its tail, also where the output and the value
//! disagree on line endings (LF vs CRLF). Shorter values are not scrubbed from output: see
//! [`CommandLine::redact_output`] for why.
//!
//! [`Error`] and [`Result`] are also at the crate root.

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
        "`{command}` timed out after {timeout:?} and was killed{}{}",
        dropped_note(stdout, stderr),
        tail_suffix(stderr, command)
    )]
    Timeout {
        /// The command line, redacted.
        command: CommandLine,
        /// The host-side limit that expired.
        timeout: Duration,
        /// What the process wrote to stdout before it was killed (past the output cap, the
        /// kept head and tail around a line that says how much was dropped; see
        /// [`crate::runner::Truncation`]).
        stdout: Vec<u8>,
        /// What the process wrote to stderr before it was killed (capped like `stdout`).
        stderr: Vec<u8>,
    },

    /// smolvm ran and reported failure: a non-zero exit of a lifecycle call, or smolvm's own
    /// `Error:` line from `machine exec` (machine not found, not running).
    #[error(
        "{command} failed ({}{}){}",
        exit_text(*code),
        dropped_note(stdout, stderr),
        tail_suffix(stderr, command)
    )]
    Failed {
        /// The command line, redacted.
        command: CommandLine,
        /// The exit code; `None` when smolvm was killed by a signal.
        code: Option<i32>,
        /// Everything smolvm wrote to stdout (past the output cap, the kept head and tail
        /// around a line that says how much was dropped; see [`crate::runner::Truncation`]).
        stdout: Vec<u8>,
        /// Everything smolvm wrote to stderr (capped like `stdout`).
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

    /// A readiness wait ([`crate::Machine::wait_until`] and its siblings) ran out of time.
    #[error("timed out after {waited:?} waiting for {what}; last probe: {last}")]
    NotReady {
        /// What was awaited, e.g. `guest port 8080 via host 127.0.0.1:41234`.
        what: String,
        /// How long the wait lasted.
        waited: Duration,
        /// What the last probe saw (its output or error, secrets scrubbed).
        last: String,
    },

    /// A `smolvm serve` API answered a request with an error ([`crate::Smolvm::remote`],
    /// `SMOLVM_HOST`): its JSON `{"error", "code"}`, or the plain text of a 400, 413 or 422.
    /// The request is shown as `METHOD URL PATH` with its body, env values redacted.
    ///
    /// ```
    /// # use smolvm_harness::Error;
    /// fn gone(e: &Error) -> bool {
    ///     matches!(e, Error::Api { status: 404, .. }) // or, for any front end: e.is_not_found()
    /// }
    /// ```
    #[error("{request} answered {status}{}: {}", code.as_deref().map(|c| format!(" {c}")).unwrap_or_default(), request.redact_output(message))]
    Api {
        /// The request, redacted.
        request: CommandLine,
        /// The HTTP status.
        status: u16,
        /// smolvm's error code (`NOT_FOUND`, `CONFLICT`, `BAD_REQUEST`, `PORT_IN_USE`, …);
        /// `None` for a plain-text answer.
        code: Option<String>,
        /// smolvm's message, or the plain-text body (capped; the env values of the request
        /// and of the machine scrubbed).
        message: String,
    },

    /// A `smolvm serve` API could not be reached, or stopped answering: connection refused,
    /// no socket, a TLS failure, or no answer within the call's timeout.
    #[error("{request}: could not reach the smolvm API: {source}")]
    Unreachable {
        /// The request, redacted.
        request: CommandLine,
        /// The I/O error.
        #[source]
        source: io::Error,
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
            Error::Api { request, .. } | Error::Unreachable { request, .. } => Some(request),
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
    /// 'NAME' not found`; over the API, a 404 with code `NOT_FOUND`). Nothing else counts: an
    /// idempotent delete must not swallow other failures that happen to say "not found" (a
    /// route the server does not have is a 404 without that code).
    pub fn is_not_found(&self) -> bool {
        match self {
            Error::Api { status, code, .. } => {
                *status == 404 && code.as_deref() == Some("NOT_FOUND")
            }
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
pub(crate) const TAIL_LINES: usize = 20;

/// At most this many bytes of a quoted tail: twenty lines of a stream with no newline in it
/// could be the whole (capped) stream.
const TAIL_BYTES: usize = 8 * 1024;

fn tail_suffix(stderr: &[u8], command: &CommandLine) -> String {
    let tail = command.quote_tail(stderr, TAIL_LINES);
    let tail = tail.trim_end();
    if tail.is_empty() {
        String::new()
    } else if tail.contains('\n') {
        format!(":\n{tail}")
    } else {
        format!(": {tail}")
    }
}

/// `; 1.9 GiB of stdout dropped by the output cap` for the streams whose bytes carry a drop
/// marker, so a message says so even when the marker is far above the quoted tail.
fn dropped_note(stdout: &[u8], stderr: &[u8]) -> String {
    let mut note = String::new();
    for (name, bytes) in [("stdout", stdout), ("stderr", stderr)] {
        let dropped = dropped_in(bytes);
        if dropped > 0 {
            note.push_str(&format!(
                "; {} of {name} dropped by the output cap",
                human_bytes(dropped)
            ));
        }
    }
    note
}

/// The total of the drop markers in `bytes` (see [`insert_drop_marker`]).
pub(crate) fn dropped_in(bytes: &[u8]) -> u64 {
    let text = String::from_utf8_lossy(bytes);
    text.lines().filter_map(parse_marker).sum()
}

const MARKER_START: &str = "[… ";
const MARKER_BYTES: &str = " bytes) of ";
const MARKER_END: &str = " dropped here by the output cap …]";

/// The line that stands for the bytes the runner dropped from a stream.
pub(crate) fn drop_marker(stream: &str, dropped: u64) -> String {
    format!(
        "{MARKER_START}{} ({dropped}{MARKER_BYTES}{stream}{MARKER_END}",
        human_bytes(dropped)
    )
}

/// The dropped byte count of a marker line, or `None` for any other line.
fn parse_marker(line: &str) -> Option<u64> {
    let rest = line.strip_prefix(MARKER_START)?.strip_suffix(MARKER_END)?;
    let (before, _stream) = rest.split_once(MARKER_BYTES)?;
    let (_, count) = before.rsplit_once('(')?;
    count.parse().ok()
}

/// `kept` with a marker line at `at`, where the runner dropped `dropped` bytes: what errors
/// carry, since their byte fields have no room for a separate count.
pub(crate) fn insert_drop_marker(kept: &[u8], at: usize, dropped: u64, stream: &str) -> Vec<u8> {
    let at = at.min(kept.len());
    let marker = drop_marker(stream, dropped);
    let mut out = Vec::with_capacity(kept.len() + marker.len() + 2);
    out.extend_from_slice(&kept[..at]);
    out.push(b'\n');
    out.extend_from_slice(marker.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(&kept[at..]);
    out
}

/// `2.0 GiB`, `12.5 MiB`, `300 bytes`.
pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} bytes");
    }
    // Display only: the exact count is next to it where it matters.
    #[allow(clippy::cast_precision_loss)]
    let mut v = n as f64 / 1024.0;
    let mut unit = UNITS[0];
    for u in &UNITS[1..] {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

/// The last `n` lines of `text` (and at most [`TAIL_BYTES`]), with a line saying how many
/// came before. Only ever called on text that is already redacted.
fn tail_of(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.trim_end().lines().collect();
    let start = lines.len().saturating_sub(n);
    let mut tail = lines[start..].join("\n");
    let mut cut_bytes = 0;
    if tail.len() > TAIL_BYTES {
        let mut from = tail.len() - TAIL_BYTES;
        while !tail.is_char_boundary(from) {
            from += 1;
        }
        cut_bytes = from;
        tail = tail[from..].to_string();
    }
    let mut out = String::new();
    match (start, cut_bytes) {
        (0, 0) => {}
        (lines, 0) => out.push_str(&format!("[… {lines} earlier lines]\n")),
        (0, bytes) => out.push_str(&format!("[… {bytes} earlier bytes]\n")),
        (lines, bytes) => {
            out.push_str(&format!("[… {lines} earlier lines and {bytes} bytes]\n"));
        }
    }
    out.push_str(&tail);
    out
}

/// Placeholder written in place of a secret.
pub const REDACTED: &str = "<redacted>";

/// Values shorter than this are redacted from command lines but not scrubbed from output
/// (see [`CommandLine::redact_output`]).
pub const MIN_SCRUB_LEN: usize = 4;

/// A command line as it may be shown: program and arguments, with every `--env`/`-e` value
/// replaced by `<redacted>`, whatever its length.
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
    /// An API request (`METHOD URL PATH BODY`), shown without shell quoting.
    request: bool,
    program: String,
    args: Vec<String>,
    secrets: Vec<String>,
    /// What is searched for in output: each secret of `MIN_SCRUB_LEN` bytes or more, in its
    /// LF and CRLF spellings, longest first.
    scrub: Vec<String>,
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
        CommandLine::build(program.into(), args, secrets)
    }

    /// The same command line, also scrubbing `extra` values from quoted output (the env a
    /// machine was created with, which its guest can print).
    pub(crate) fn with_secrets(&self, extra: &[String]) -> CommandLine {
        if extra.is_empty() {
            return self.clone();
        }
        let mut secrets = self.0.secrets.clone();
        secrets.extend(extra.iter().cloned());
        let mut line = CommandLine::build(self.0.program.clone(), self.0.args.clone(), secrets);
        if self.0.request {
            if let Some(inner) = std::sync::Arc::get_mut(&mut line.0) {
                inner.request = true;
            }
        }
        line
    }

    /// An API request as errors and transcripts show it: `METHOD URL PATH` and the body
    /// already redacted by the caller (`shown_body`), with `secrets` (the values taken out of
    /// it) scrubbed from anything quoted with it.
    pub(crate) fn request(
        method: &str,
        url: &str,
        path: &str,
        shown_body: Option<String>,
        secrets: Vec<String>,
    ) -> CommandLine {
        let mut args = vec![url.to_string(), path.to_string()];
        args.extend(shown_body);
        let mut line = CommandLine::build(method.to_string(), args, secrets);
        if let Some(inner) = std::sync::Arc::get_mut(&mut line.0) {
            inner.request = true;
        }
        line
    }

    fn build(program: String, args: Vec<String>, secrets: Vec<String>) -> CommandLine {
        let secrets = ordered(secrets);
        let mut scrub = Vec::new();
        for s in secrets.iter().filter(|s| s.len() >= MIN_SCRUB_LEN) {
            // A guest (or a terminal between) may print a multi-line value with either line
            // ending, whichever one the value was given with.
            let lf = s.replace("\r\n", "\n");
            let crlf = lf.replace('\n', "\r\n");
            scrub.extend([s.clone(), lf, crlf]);
        }
        CommandLine(std::sync::Arc::new(CommandLineInner {
            request: false,
            program,
            args,
            secrets,
            scrub: ordered(scrub),
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

    /// Replace every secret value of [`MIN_SCRUB_LEN`] (4) bytes or more in `text` by
    /// `<redacted>`, in its LF and its CRLF spelling alike.
    ///
    /// Shorter values are left in output (they are still redacted from every command line):
    /// a string of one to three bytes (`1`, `on`, `dev`) occurs by chance in almost any text,
    /// so scrubbing it would garble every quoted line, and such a value is guessed more
    /// easily than it is hidden. Give secrets four bytes or more.
    ///
    /// Where the runner dropped the middle of a stream (a drop-marker line, see
    /// [`crate::runner::Truncation`]), a secret cut in two by the drop is scrubbed on each side as
    /// far as [`MIN_SCRUB_LEN`] bytes or more of it remain there.
    pub fn redact_output(&self, text: &str) -> String {
        if self.0.scrub.is_empty() {
            return text.to_string();
        }
        // Split at marker lines: a secret cannot span one (the bytes between are gone), but
        // a piece of one can end or begin at it.
        let mut out = String::with_capacity(text.len());
        let mut piece = String::new();
        let mut after_marker = false;
        for line in text.split_inclusive('\n') {
            if parse_marker(line.trim_end_matches(['\r', '\n'])).is_some() {
                out.push_str(&self.scrub_piece(&piece, after_marker, true));
                out.push_str(line);
                piece.clear();
                after_marker = true;
            } else {
                piece.push_str(line);
            }
        }
        out.push_str(&self.scrub_piece(&piece, after_marker, false));
        out
    }

    /// Redact all of `bytes`, then keep its last `n` lines: redacting first means a secret
    /// cut by the tail, or over several lines, is still found whole.
    pub(crate) fn quote_tail(&self, bytes: &[u8], n: usize) -> String {
        tail_of(&self.redact_output(&String::from_utf8_lossy(bytes)), n)
    }

    /// Scrub one piece of output; `starts_cut`/`ends_cut` say whether a drop marker is
    /// right before or after it (the newline the marker brought is not part of the output).
    fn scrub_piece(&self, piece: &str, starts_cut: bool, ends_cut: bool) -> String {
        let mut out = piece.to_string();
        for secret in &self.0.scrub {
            out = out.replace(secret.as_str(), REDACTED);
        }
        if ends_cut {
            let body = out.strip_suffix('\n').unwrap_or(&out);
            if let Some(k) = self.cut_secret_len(body, true) {
                let keep = body.len() - k;
                out = format!("{}{REDACTED}\n", &body[..keep]);
            }
        }
        if starts_cut {
            if let Some(k) = self.cut_secret_len(&out, false) {
                out = format!("{REDACTED}{}", &out[k..]);
            }
        }
        out
    }

    /// The length of the longest piece (of [`MIN_SCRUB_LEN`] bytes or more) of a secret that
    /// `text` ends with as the secret's start (`at_end`), or begins with as its end.
    fn cut_secret_len(&self, text: &str, at_end: bool) -> Option<usize> {
        let mut best: Option<usize> = None;
        for secret in &self.0.scrub {
            for k in MIN_SCRUB_LEN..secret.len() {
                if best.is_some_and(|b| b >= k) {
                    continue;
                }
                let piece = if at_end {
                    secret.get(..k)
                } else {
                    secret.get(secret.len() - k..)
                };
                let Some(piece) = piece else { continue };
                let found = if at_end {
                    text.ends_with(piece)
                } else {
                    text.starts_with(piece)
                };
                if found {
                    best = Some(k);
                }
            }
        }
        best
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
        if self.0.request {
            for arg in &self.0.args {
                write!(f, " {arg}")?;
            }
            return Ok(());
        }
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
    fn a_secret_cut_by_the_output_cap_is_scrubbed_on_both_sides() {
        let cl = CommandLine::new("smolvm", &argv(&["machine", "exec", "--env=K=0123456789"]));
        // The runner kept "..01234" and "6789..": the 5 between went with the dropped bytes.
        let kept = b"head 012346789 end".to_vec();
        let at = "head 01234".len();
        let text = String::from_utf8(insert_drop_marker(&kept, at, 1 << 31, "stdout")).unwrap();
        let shown = cl.redact_output(&text);
        assert!(
            !shown.contains("01234") && !shown.contains("6789"),
            "{shown}"
        );
        assert!(
            shown.starts_with(
                "head <redacted>\n[… 2.0 GiB (2147483648 bytes) of stdout dropped here"
            ),
            "{shown}"
        );
        assert!(shown.ends_with(" …]\n<redacted> end"), "{shown}");
        // Under MIN_SCRUB_LEN bytes of it on a side cannot be told from chance text.
        let kept = b"x 012y".to_vec();
        let text = String::from_utf8(insert_drop_marker(&kept, 5, 9, "stderr")).unwrap();
        assert!(cl.redact_output(&text).starts_with("x 012\n"));
        assert_eq!(dropped_in(text.as_bytes()), 9);
        assert_eq!(
            dropped_in(b"[\xe2\x80\xa6 1 bytes) of stdout dropped here by the output cap"),
            0
        );
    }

    #[test]
    fn messages_count_what_the_cap_dropped() {
        let stdout = insert_drop_marker(b"aaaa", 2, 2_040_109_465, "stdout");
        let stderr = insert_drop_marker(b"first\nlast words\n", 6, 10, "stderr");
        let err = Error::Failed {
            command: CommandLine::new("smolvm", &argv(&["machine", "start"])),
            code: Some(1),
            stdout,
            stderr,
        };
        let shown = err.to_string();
        assert!(
            shown.starts_with(
                "smolvm machine start failed (exit 1; 1.9 GiB of stdout dropped by the output \
                 cap; 10 bytes of stderr dropped by the output cap):\nfirst\n"
            ),
            "{shown}"
        );
        assert!(shown.ends_with("last words"), "{shown}");
        assert_eq!(human_bytes(1023), "1023 bytes");
        assert_eq!(human_bytes(64 << 20), "64.0 MiB");
    }

    #[test]
    fn a_long_tail_is_cut_to_its_last_bytes() {
        let line = "x".repeat(3 * TAIL_BYTES);
        let shown = tail_of(&line, TAIL_LINES);
        assert!(shown.starts_with(&format!("[… {} earlier bytes]\n", 2 * TAIL_BYTES)));
        assert!(shown.len() < TAIL_BYTES + 100);
    }

    #[test]
    fn error_is_send_sync() {
        fn check<T: Send + Sync + 'static>() {}
        check::<Error>();
    }
}
