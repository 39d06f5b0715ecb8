//! What smolvm answers: a guest command's [`ExecOutput`] and the [`MachineInfo`] of
//! `machine ls`/`status`, read from the CLI's JSON. Output shown in `Debug` and panic
//! messages has the command's secrets scrubbed, and bytes dropped by the output cap are
//! marked where they went.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::error::{CommandLine, Error, Result, TAIL_LINES};
use crate::runner::{marked, RawOutput, Truncation};

/// What a guest command produced. A non-zero [`ExecOutput::code`] is the guest's answer, not
/// an error.
///
/// Past the output cap (`SMOLVM_HARNESS_OUTPUT_CAP`, default 64 MiB per stream, see
/// [`crate::config::Config`]) only the first and last halves of a stream are kept:
/// [`ExecOutput::stdout_dropped`] and [`ExecOutput::stdout_truncation`] say how much went
/// and where, and `Debug`, [`ExecOutput::assert_success`] and [`ExecOutput::expect_code`]
/// say so too. Outputs from [`crate::ScriptedRunner`] and [`crate::sim::SimulatedRunner`] are
/// never capped.
#[derive(Clone, PartialEq, Eq)]
pub struct ExecOutput {
    code: i32,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    duration: Duration,
    command: CommandLine,
    stdout_truncation: Option<Truncation>,
    stderr_truncation: Option<Truncation>,
}

impl fmt::Debug for ExecOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = |bytes: &[u8], t, stream| {
            self.command
                .redact_output(&String::from_utf8_lossy(&marked(bytes, t, stream)))
        };
        f.debug_struct("ExecOutput")
            .field("command", &self.command.to_string())
            .field("code", &self.code)
            .field(
                "stdout",
                &shown(&self.stdout, self.stdout_truncation, "stdout"),
            )
            .field(
                "stderr",
                &shown(&self.stderr, self.stderr_truncation, "stderr"),
            )
            .field("duration", &self.duration)
            .finish()
    }
}

impl ExecOutput {
    /// Build one by hand (for tests of code that consumes exec results).
    pub fn new(code: i32, stdout: impl Into<Vec<u8>>, stderr: impl Into<Vec<u8>>) -> ExecOutput {
        ExecOutput {
            code,
            stdout: stdout.into(),
            stderr: stderr.into(),
            duration: Duration::ZERO,
            command: CommandLine::new("smolvm", &[]),
            stdout_truncation: None,
            stderr_truncation: None,
        }
    }

    /// The guest's exit code (124 when smolvm's `--timeout` killed it).
    pub fn code(&self) -> i32 {
        self.code
    }

    /// True when the guest exited 0.
    pub fn success(&self) -> bool {
        self.code == 0
    }

    /// stdout as bytes, exactly (past the output cap, its head and tail joined; see
    /// [`ExecOutput::stdout_truncation`]).
    pub fn stdout(&self) -> &[u8] {
        &self.stdout
    }

    /// stderr as bytes, exactly (past the output cap, its head and tail joined).
    pub fn stderr(&self) -> &[u8] {
        &self.stderr
    }

    /// How many bytes of stdout the output cap dropped (0 when all was kept).
    pub fn stdout_dropped(&self) -> u64 {
        self.stdout_truncation.map_or(0, |t| t.dropped)
    }

    /// How many bytes of stderr the output cap dropped (0 when all was kept).
    pub fn stderr_dropped(&self) -> u64 {
        self.stderr_truncation.map_or(0, |t| t.dropped)
    }

    /// Where stdout was cut and how much was dropped; `None` when all was kept.
    pub fn stdout_truncation(&self) -> Option<Truncation> {
        self.stdout_truncation
    }

    /// Where stderr was cut and how much was dropped; `None` when all was kept.
    pub fn stderr_truncation(&self) -> Option<Truncation> {
        self.stderr_truncation
    }

    /// stdout as text (invalid UTF-8 replaced).
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// stderr as text (invalid UTF-8 replaced).
    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// How long the call took, spawn to exit.
    pub fn duration(&self) -> Duration {
        self.duration
    }

    /// The command that ran, env values redacted.
    pub fn command(&self) -> &CommandLine {
        &self.command
    }

    /// Panic unless the guest exited 0, with the command, the code and the tails of stdout
    /// and stderr (secrets scrubbed from all of the output before it is cut to its tail,
    /// as [`CommandLine::redact_output`] says; bytes dropped by the output cap counted).
    /// Returns `self` for chaining.
    ///
    /// ```should_panic
    /// smolvm_harness::ExecOutput::new(3, "", "boom").assert_success();
    /// ```
    #[track_caller]
    pub fn assert_success(&self) -> &ExecOutput {
        if !self.success() {
            panic!("{}", self.describe("expected exit 0"));
        }
        self
    }

    /// Panic unless the guest exited `code`. Returns `self` for chaining.
    ///
    /// ```
    /// smolvm_harness::ExecOutput::new(3, "", "").expect_code(3);
    /// ```
    #[track_caller]
    pub fn expect_code(&self, code: i32) -> &ExecOutput {
        if self.code != code {
            panic!("{}", self.describe(&format!("expected exit {code}")));
        }
        self
    }

    /// `Ok` if the guest exited 0, else an [`Error::Failed`](crate::Error::Failed) with the
    /// command, the code and the output (secrets redacted as everywhere): for code that
    /// returns `Result`, such as a golden's provisioning step.
    ///
    /// ```
    /// assert!(smolvm_harness::ExecOutput::new(0, "", "").check().is_ok());
    /// let err = smolvm_harness::ExecOutput::new(3, "", "boom").check().unwrap_err();
    /// assert!(err.to_string().contains("exit 3"), "{err}");
    /// ```
    pub fn check(&self) -> crate::Result<()> {
        if self.success() {
            return Ok(());
        }
        Err(crate::Error::Failed {
            command: self.command.clone(),
            code: Some(self.code),
            stdout: marked(&self.stdout, self.stdout_truncation, "stdout"),
            stderr: marked(&self.stderr, self.stderr_truncation, "stderr"),
        })
    }

    /// The output of a finished `machine exec`: the guest exited `code`.
    pub(super) fn from_run(code: i32, command: CommandLine, out: RawOutput) -> ExecOutput {
        ExecOutput {
            code,
            stdout: out.stdout,
            stderr: out.stderr,
            duration: out.duration,
            command,
            stdout_truncation: out.stdout_truncation,
            stderr_truncation: out.stderr_truncation,
        }
    }

    fn describe(&self, expectation: &str) -> String {
        let section = |bytes: &[u8], t: Option<Truncation>, stream: &str| {
            let heading = match t {
                Some(t) => format!(
                    "--- {stream} (tail; {} dropped by the output cap) ---",
                    crate::error::human_bytes(t.dropped)
                ),
                None => format!("--- {stream} (tail) ---"),
            };
            let tail = self
                .command
                .quote_tail(&marked(bytes, t, stream), TAIL_LINES);
            format!("{heading}\n{tail}")
        };
        format!(
            "{expectation}, got exit {} from `{}` after {:?}\n{}\n{}",
            self.code,
            self.command,
            self.duration,
            section(&self.stdout, self.stdout_truncation, "stdout"),
            section(&self.stderr, self.stderr_truncation, "stderr"),
        )
    }
}

/// A machine's state as `ls --json` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MachineState {
    /// Created, never started.
    Created,
    /// Running.
    Running,
    /// Stopped.
    Stopped,
    /// Failed.
    Failed,
    /// Recorded as running, but its agent does not answer.
    Unreachable,
    /// A fork base (≥ 1.x).
    Frozen,
    /// A state this crate does not know yet.
    Other(String),
}

impl MachineState {
    pub(crate) fn parse(s: &str) -> MachineState {
        match s {
            "created" => MachineState::Created,
            "running" => MachineState::Running,
            "stopped" => MachineState::Stopped,
            "failed" => MachineState::Failed,
            "unreachable" => MachineState::Unreachable,
            "frozen" => MachineState::Frozen,
            other => MachineState::Other(other.to_string()),
        }
    }
}

/// One machine, from `machine ls --json` or `machine status --json`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachineInfo {
    /// Its name.
    pub name: String,
    /// Its state, probed live by smolvm.
    pub state: MachineState,
    /// The VM process id as recorded (may be stale).
    pub pid: Option<u32>,
    /// Creation time, Unix seconds.
    pub created_at: Option<u64>,
    /// The image, if it was created from one.
    pub image: Option<String>,
    /// Labels (smolvm ≥ 1.8.0; empty before).
    pub labels: BTreeMap<String, String>,
    /// Whether networking is on.
    pub network: Option<bool>,
}

impl MachineInfo {
    /// Read one entry of smolvm's JSON (its CLI's snake_case fields); `None` if it has no
    /// string `name`.
    fn from_json(v: &serde_json::Value) -> Option<MachineInfo> {
        let name = v.get("name")?.as_str()?.to_string();
        let labels = v
            .get("labels")
            .and_then(|l| l.as_object())
            .map(|o| {
                o.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        Some(MachineInfo {
            name,
            state: MachineState::parse(v.get("state").and_then(|s| s.as_str()).unwrap_or("")),
            pid: v
                .get("pid")
                .and_then(|p| p.as_u64())
                .and_then(|p| u32::try_from(p).ok()),
            created_at: v.get("created_at").and_then(|c| c.as_u64()),
            image: v.get("image").and_then(|i| i.as_str()).map(str::to_string),
            labels,
            network: v.get("network").and_then(|n| n.as_bool()),
        })
    }
}

/// The machines of `machine ls --json`'s output, sorted by name (smolvm's own order is not
/// stable).
pub(super) fn parse_list(cmd: &CommandLine, out: &RawOutput) -> Result<Vec<MachineInfo>> {
    let value: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| parse_error(cmd, out, e))?;
    let items = value.as_array().ok_or_else(|| Error::Parse {
        command: cmd.clone(),
        reason: "expected a JSON array".into(),
    })?;
    let mut list = items
        .iter()
        .map(|v| MachineInfo::from_json(v).ok_or_else(|| bad_entry(cmd, v)))
        .collect::<Result<Vec<_>>>()?;
    list.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(list)
}

/// The machine of `machine status --json`'s output.
pub(super) fn parse_status(cmd: &CommandLine, out: &RawOutput) -> Result<MachineInfo> {
    let value: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| parse_error(cmd, out, e))?;
    MachineInfo::from_json(&value).ok_or_else(|| bad_entry(cmd, &value))
}

fn parse_error(cmd: &CommandLine, out: &RawOutput, e: serde_json::Error) -> Error {
    // Redacted whole, then cut: a secret across the cut would otherwise show its start.
    let text = cmd.redact_output(&String::from_utf8_lossy(&out.stdout));
    Error::Parse {
        command: cmd.clone(),
        reason: format!("{e}; output began {:?}", head_chars(&text, 200)),
    }
}

fn bad_entry(cmd: &CommandLine, v: &serde_json::Value) -> Error {
    let shown = cmd.redact_output(&v.to_string());
    Error::Parse {
        command: cmd.clone(),
        reason: format!("machine entry without a name: {}", head_chars(&shown, 200)),
    }
}

/// At most the first `n` bytes of `s`, cut at a character boundary.
fn head_chars(s: &str, n: usize) -> &str {
    let mut end = n.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The clone's ports from `machine fork`'s stderr lines
/// `  port 18080->80 (golden) remapped to 41234->80 (clone)`.
pub(super) fn parse_fork_remaps(stderr: &str) -> Vec<super::PortMapping> {
    stderr
        .lines()
        .filter_map(|line| {
            let rest = line.trim().strip_prefix("port ")?;
            let (_, clone) = rest.split_once(" remapped to ")?;
            let pair = clone.strip_suffix(" (clone)")?;
            let (host, guest) = pair.split_once("->")?;
            Some(super::PortMapping {
                host: host.trim().parse().ok()?,
                guest: guest.trim().parse().ok()?,
            })
        })
        .collect()
}

/// The name in `machine create`'s first line, `Created machine: NAME`, if it printed one.
pub(super) fn created_name(stdout: &str) -> Option<String> {
    stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("Created machine: "))
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
}
