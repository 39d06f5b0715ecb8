//! The CLI layer: one method per smolvm subcommand, each building the exact argv the
//! installed smolvm's dialect accepts and running it without a shell.
//!
//! Lifecycle calls return `Result<_, Error>`. [`Smolvm::machine_exec`] returns the guest's
//! output and exit code, and fails only when smolvm itself failed.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::config::{config, config_or_default};
use crate::dialect::{Dialect, Version};
use crate::error::{CommandLine, Error, Result, TAIL_LINES};
use crate::runner::{lock, marked, Invocation, ProcessRunner, RawOutput, Runner, Truncation};
use crate::sim::SimulatedRunner;
use crate::transcript;
use crate::validate::{
    format_timeout, validate_cidr, validate_env_key, validate_env_value, validate_guest_path,
    validate_image, validate_label, validate_machine_name, MAX_TIMEOUT,
};

/// A smolvm client: which binary, which runner, which timeout. Cheap to clone (an `Arc`).
///
/// ```no_run
/// use smolvm_harness::{CreateOptions, ExecOptions, Smolvm};
///
/// let smolvm = Smolvm::from_env();
/// smolvm.machine_create("web", &CreateOptions::image("alpine:latest").net())?;
/// smolvm.machine_start("web")?;
/// let out = smolvm.machine_exec("web", &["uname", "-a"], &ExecOptions::default())?;
/// assert!(out.success());
/// smolvm.machine_delete("web")?;
/// # Ok::<(), smolvm_harness::Error>(())
/// ```
#[derive(Clone)]
pub struct Smolvm {
    inner: Arc<Inner>,
}

struct Inner {
    /// As configured: a bare name (looked up on `PATH`) or a path.
    program: PathBuf,
    runner: Arc<dyn Runner>,
    /// Only the real runner's answers may be cached per binary across clients.
    process_runner: bool,
    timeout: Option<Duration>,
    env: Vec<(String, String)>,
    version_override: Option<Version>,
    version: OnceLock<Version>,
}

// The runner behind the `Arc` is only ever called through `&self`, and every lock inside the
// crate recovers from poisoning, so a panic cannot leave a client half-updated. Without
// these, `catch_unwind(|| smolvm.machine_list())` and anything holding a client would not
// compile.
impl std::panic::UnwindSafe for Smolvm {}
impl std::panic::RefUnwindSafe for Smolvm {}

impl fmt::Debug for Smolvm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Smolvm")
            .field("program", &self.inner.program)
            .field("runner", &self.inner.runner)
            .field("timeout", &self.timeout())
            .field("version", &self.inner.version.get())
            .finish()
    }
}

impl Smolvm {
    /// The binary named by `SMOLVM_BIN` (a name or a path), else `smolvm` on `PATH`.
    pub fn from_env() -> Smolvm {
        Smolvm::new(smolvm_bin_from_env())
    }

    /// A specific binary: a name looked up on `PATH`, or a path.
    pub fn new(program: impl Into<PathBuf>) -> Smolvm {
        Smolvm {
            inner: Arc::new(Inner {
                program: program.into(),
                runner: Arc::new(ProcessRunner),
                process_runner: true,
                timeout: None,
                env: Vec::new(),
                version_override: None,
                version: OnceLock::new(),
            }),
        }
    }

    /// A client whose runner is the in-process simulation of the newest supported smolvm.
    /// Nothing is spawned; see [`SimulatedRunner`] for what it simulates.
    ///
    /// ```
    /// use smolvm_harness::{CreateOptions, ExecOptions, Smolvm};
    /// let smolvm = Smolvm::simulated();
    /// smolvm.machine_create("demo", &CreateOptions::image("alpine").net()).unwrap();
    /// smolvm.machine_start("demo").unwrap();
    /// let out = smolvm.machine_exec("demo", &["echo", "hi"], &ExecOptions::default()).unwrap();
    /// assert_eq!(out.stdout_str(), "hi\n");
    /// ```
    pub fn simulated() -> Smolvm {
        Smolvm::simulated_version(Version::NEWEST_KNOWN)
    }

    /// A client over the simulation of a given smolvm version (e.g. `Version::new(0, 8, 0)`).
    pub fn simulated_version(version: Version) -> Smolvm {
        Smolvm::new("smolvm").with_runner(SimulatedRunner::new(version))
    }

    fn edit(&self, f: impl FnOnce(&mut Inner)) -> Smolvm {
        let mut inner = Inner {
            program: self.inner.program.clone(),
            runner: Arc::clone(&self.inner.runner),
            process_runner: self.inner.process_runner,
            timeout: self.inner.timeout,
            env: self.inner.env.clone(),
            version_override: self.inner.version_override,
            version: OnceLock::new(),
        };
        if let Some(v) = self.inner.version.get() {
            let _ = inner.version.set(*v);
        }
        f(&mut inner);
        Smolvm {
            inner: Arc::new(inner),
        }
    }

    /// The same client with another runner (a [`crate::ScriptedRunner`], a
    /// [`SimulatedRunner`], or your own). The detected version is forgotten.
    pub fn with_runner(&self, runner: impl Runner + 'static) -> Smolvm {
        self.edit(|i| {
            i.runner = Arc::new(runner);
            i.process_runner = false;
            i.version = OnceLock::new();
        })
    }

    /// The same client with another default host-side timeout per call (instead of
    /// `SMOLVM_HARNESS_TIMEOUT`, default 300 s). `pack create` uses the larger of this and
    /// `SMOLVM_HARNESS_PACK_TIMEOUT`.
    pub fn with_timeout(&self, timeout: Duration) -> Smolvm {
        self.edit(|i| i.timeout = Some(timeout))
    }

    /// The same client, with `KEY=VALUE` in the environment of the smolvm process (not of the
    /// guest): e.g. `SMOLVM_DATA_DIR` to isolate state.
    pub fn with_process_env(&self, key: impl Into<String>, value: impl Into<String>) -> Smolvm {
        let (key, value) = (key.into(), value.into());
        self.edit(|i| {
            i.env.push((key, value));
            // The environment can change which smolvm answers (a wrapper, SMOLVM_FAKE_VERSION).
            i.version = OnceLock::new();
        })
    }

    /// The same client, assuming this smolvm version instead of asking `--version`: for
    /// builds whose version string is unusual.
    pub fn with_version(&self, version: Version) -> Smolvm {
        self.edit(|i| {
            i.version_override = Some(version);
            i.version = OnceLock::new();
        })
    }

    /// The program as configured.
    pub fn program(&self) -> &Path {
        &self.inner.program
    }

    /// For a client that spawns real processes: the program and the extra process env, i.e.
    /// what another process needs to reach the same smolvm (the crash watcher and the
    /// next run's sweep). `None` for in-process runners, whose machines die with the process.
    pub(crate) fn process_target(&self) -> Option<(PathBuf, Vec<(String, String)>)> {
        self.inner
            .process_runner
            .then(|| (self.inner.program.clone(), self.inner.env.clone()))
    }

    /// Identifies the runner behind this client (shared by its clones): for in-process
    /// runners, one simulation or script is one smolvm state.
    pub(crate) fn runner_id(&self) -> usize {
        self.inner
            .runner
            .state_id()
            .unwrap_or_else(|| Arc::as_ptr(&self.inner.runner).cast::<()>() as usize)
    }

    /// The default host-side timeout of each call.
    pub fn timeout(&self) -> Duration {
        self.inner
            .timeout
            .unwrap_or_else(|| config_or_default().call_timeout)
    }

    /// True when this client can run smolvm: for the real runner, the binary resolves to an
    /// executable file (checked once per binary); for any other runner, always.
    pub fn is_available(&self) -> bool {
        if !self.inner.process_runner {
            return true;
        }
        static CACHE: OnceLock<Mutex<HashMap<PathBuf, bool>>> = OnceLock::new();
        let cache = CACHE.get_or_init(Default::default);
        if let Some(hit) = lock(cache).get(&self.inner.program) {
            return *hit;
        }
        let found = resolve_program(&self.inner.program).is_ok();
        lock(cache).insert(self.inner.program.clone(), found);
        found
    }

    /// The smolvm version, from `smolvm --version` (asked once per binary and cached), or the
    /// override given to [`Smolvm::with_version`].
    pub fn version(&self) -> Result<Version> {
        if let Some(v) = self.inner.version_override {
            return Ok(v);
        }
        if let Some(v) = self.inner.version.get() {
            return Ok(*v);
        }
        if !self.inner.process_runner {
            let v = self.probe_version()?;
            let _ = self.inner.version.set(v);
            return Ok(v);
        }
        // Keyed by binary and environment: the same program can front different smolvms (a
        // wrapper, or the fake CLI told which version to be through SMOLVM_FAKE_VERSION).
        type Key = (PathBuf, Vec<(String, String)>);
        static BY_BINARY: OnceLock<Mutex<HashMap<Key, Version>>> = OnceLock::new();
        let by_binary = BY_BINARY.get_or_init(Default::default);
        let key = (self.inner.program.clone(), version_env(&self.inner.env));
        // One probe per binary even when many test threads ask at once.
        static PROBING: Mutex<()> = Mutex::new(());
        let _probing = lock(&PROBING);
        if let Some(v) = lock(by_binary).get(&key).copied() {
            let _ = self.inner.version.set(v);
            return Ok(v);
        }
        // Across processes (nextest runs one per test): a small file per binary, keyed by its
        // path, size, modification time and the process env, so an upgrade is seen at once.
        let disk = version_cache_path(&self.inner.program, &key.1);
        let cached = disk.as_deref().and_then(read_version_cache);
        let v = match cached {
            Some(v) => v,
            None => {
                let v = self.probe_version()?;
                if let Some(path) = &disk {
                    write_version_cache(path, v);
                }
                v
            }
        };
        let _ = self.inner.version.set(v);
        lock(by_binary).insert(key, v);
        Ok(v)
    }

    fn probe_version(&self) -> Result<Version> {
        let args = vec!["--version".to_string()];
        let (cmd, out) = self.run(None, args, self.timeout())?;
        let out = check(&cmd, out)?;
        Version::parse_version_output(&String::from_utf8_lossy(&out.stdout)).map_err(|e| {
            Error::Parse {
                command: cmd.clone(),
                reason: e.to_string(),
            }
        })
    }

    /// The dialect of [`Smolvm::version`].
    pub fn dialect(&self) -> Result<Dialect> {
        Ok(Dialect::for_version(self.version()?))
    }

    /// `smolvm pack create --image IMAGE -o OUTPUT`. Returns the `.smolmachine` sidecar
    /// (`OUTPUT.smolmachine`), which is what [`CreateOptions::from_path`] needs; smolvm writes
    /// both files.
    pub fn pack_create(&self, image: &str, output: impl AsRef<Path>) -> Result<PathBuf> {
        validate_image(image)?;
        let output = output.as_ref();
        let out_str = path_arg("pack output", output)?;
        if out_str.is_empty() {
            return Err(Error::invalid("pack output", "must not be empty"));
        }
        let args = strings(&["pack", "create", "--image", image, "-o", &out_str]);
        let timeout = self.timeout().max(config_or_default().pack_timeout);
        let (cmd, out) = self.run(None, args, timeout)?;
        check(&cmd, out)?;
        let mut sidecar = output.as_os_str().to_owned();
        sidecar.push(".smolmachine");
        Ok(PathBuf::from(sidecar))
    }

    /// `smolvm machine create` in this smolvm's dialect: created, not started.
    ///
    /// Refuses, before spawning, a [`CreateOptions::from_path`] with CIDRs on smolvm < 1.8.0:
    /// those versions silently drop the egress policy (and 0.8.0 with `--net` would grant
    /// unrestricted network). Labels are sent only where supported (≥ 1.8.0).
    pub fn machine_create(&self, name: &str, options: &CreateOptions) -> Result<()> {
        validate_machine_name(name)?;
        options.validate()?;
        let dialect = self.dialect()?;
        let args = options.argv(name, dialect)?;
        let (cmd, out) = self.run(Some(name), args, self.timeout())?;
        check(&cmd, out)?;
        let values: Vec<String> = options
            .env
            .iter()
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty())
            .collect();
        if !values.is_empty() {
            lock(secrets_book()).insert(name.to_string(), values);
        }
        Ok(())
    }

    /// `smolvm machine start --name NAME`.
    pub fn machine_start(&self, name: &str) -> Result<()> {
        validate_machine_name(name)?;
        let args = strings(&["machine", "start", "--name", name]);
        let (cmd, out) = self.run(Some(name), args, self.timeout())?;
        check(&cmd, out).map(drop)
    }

    /// `smolvm machine stop --name NAME`. Stopping a machine that is not running succeeds.
    pub fn machine_stop(&self, name: &str) -> Result<()> {
        validate_machine_name(name)?;
        let args = strings(&["machine", "stop", "--name", name]);
        let (cmd, out) = self.run(Some(name), args, self.timeout())?;
        check(&cmd, out).map(drop)
    }

    /// `smolvm machine delete -f` in this smolvm's dialect. Idempotent: a machine that does
    /// not exist counts as deleted. `-f` is always sent: without it smolvm prompts, and on a
    /// closed stdin cancels and keeps the machine. On smolvm 0.8.0, whose delete leaves a
    /// running VM orphaned, the machine is stopped first.
    pub fn machine_delete(&self, name: &str) -> Result<()> {
        validate_machine_name(name)?;
        let dialect = self.dialect()?;
        if !dialect.delete_stops_running {
            // 0.8.0's stop exits 0 for a stopped or unknown machine, so any error here is real;
            // deleting anyway would drop the record of a VM that is still running.
            self.machine_stop(name)?;
        }
        let args = if dialect.name_flag {
            strings(&["machine", "delete", "-f", "--name", name])
        } else {
            strings(&["machine", "delete", "-f", name])
        };
        let (cmd, out) = self.run(Some(name), args, self.timeout())?;
        match check(&cmd, out) {
            Ok(_) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
        lock(secrets_book()).remove(name);
        Ok(())
    }

    /// `smolvm machine exec --name NAME [-w DIR] [--timeout T] [--env=K=V]… -- ARGV…`.
    ///
    /// A non-zero guest exit is **not** an error: it is in [`ExecOutput::code`]. It is an
    /// error when smolvm itself failed (machine not found, not running), which smolvm
    /// reports as exit 1 with its own `Error: …` line, so exec on a dead machine never looks
    /// like "the guest exited 1". The host-side limit is the guest timeout plus 10 s when a
    /// guest timeout is set, and never less than the client's default (both clamped to
    /// [`MAX_TIMEOUT`], 365 days, so a deadline always exists).
    ///
    /// Each of stdout and stderr is kept up to the output cap (`SMOLVM_HARNESS_OUTPUT_CAP`,
    /// default 64 MiB); see [`ExecOutput::stdout_dropped`].
    ///
    /// Exit 2 is always the guest's: smolvm's own usage errors are exit 2 too, but this crate
    /// validates the argv it sends, and a guest CLI printing its usage looks the same. On a
    /// bare VM (no image), a command that cannot be spawned at all is smolvm's exit 1
    /// `Error: agent operation failed: vm exec: failed to spawn command`, hence an error.
    pub fn machine_exec<S: AsRef<str>>(
        &self,
        name: &str,
        argv: &[S],
        options: &ExecOptions,
    ) -> Result<ExecOutput> {
        validate_machine_name(name)?;
        if argv.is_empty() {
            return Err(Error::invalid("exec argv", "must name a command to run"));
        }
        if let Some(i) = argv.iter().position(|a| a.as_ref().contains('\0')) {
            return Err(Error::invalid(
                "exec argv",
                format!("argument {i} contains NUL, which no argv can carry"),
            ));
        }
        options.validate()?;
        let mut args = strings(&["machine", "exec", "--name", name]);
        if let Some(dir) = &options.workdir {
            // The attached form keeps a directory that starts with `-` from being read as a flag.
            if dir.starts_with('-') {
                args.push(format!("-w={dir}"));
            } else {
                args.push("-w".into());
                args.push(dir.clone());
            }
        }
        let mut host_timeout = self.timeout();
        if let Some(t) = options.timeout {
            args.push("--timeout".into());
            args.push(format_timeout(t)?);
            host_timeout = host_timeout.max(t.saturating_add(Duration::from_secs(10)));
        }
        if options.stream {
            args.push("--stream".into());
        }
        for (k, v) in &options.env {
            args.push(format!("--env={k}={v}"));
        }
        args.push("--".into());
        args.extend(argv.iter().map(|a| a.as_ref().to_string()));
        let (cmd, out) = self.run(Some(name), args, host_timeout)?;
        if out.code != Some(0) && is_smolvm_error(&out) {
            return Err(failed(&cmd, out));
        }
        let Some(code) = out.code else {
            return Err(failed(&cmd, out));
        };
        Ok(ExecOutput {
            code,
            stdout: out.stdout,
            stderr: out.stderr,
            duration: out.duration,
            command: cmd.clone(),
            stdout_truncation: out.stdout_truncation,
            stderr_truncation: out.stderr_truncation,
        })
    }

    /// `smolvm machine cp SRC DST`: one side on the host, the other `machine:path`.
    /// An empty path on either side is [`Error::InvalidInput`] (the seed design silently
    /// copied nothing, which hid mistakes), as is a NUL byte in any part.
    ///
    /// ```
    /// use smolvm_harness::{CpPath, Smolvm, ScriptedRunner};
    /// let runner = ScriptedRunner::new();
    /// let smolvm = Smolvm::new("smolvm").with_runner(runner.clone());
    /// smolvm.machine_cp(CpPath::host("out/report.txt"), CpPath::guest("web", "/tmp/r.txt")).unwrap();
    /// assert_eq!(runner.argvs()[0], ["machine", "cp", "out/report.txt", "web:/tmp/r.txt"]);
    /// ```
    pub fn machine_cp(&self, src: impl Into<CpPath>, dst: impl Into<CpPath>) -> Result<()> {
        let (src, dst) = (src.into(), dst.into());
        for side in [&src, &dst] {
            if side.is_empty() {
                let what = match side {
                    CpPath::Host(_) => "host path",
                    CpPath::Guest { .. } => "guest path",
                };
                return Err(Error::invalid(
                    what,
                    "must not be empty: there is nothing to copy",
                ));
            }
        }
        let machine = match (&src, &dst) {
            (CpPath::Host(h), CpPath::Guest { machine, path }) => {
                let h = path_arg("host path", h)?;
                // smolvm reads any SRC containing `:` as `machine:path`; there is no escape.
                if h.contains(':') {
                    return Err(Error::invalid(
                        "host path",
                        format!(
                            "{h:?} contains `:`, which smolvm would read as `machine:path`; \
                             copy it to a path without `:` first"
                        ),
                    ));
                }
                validate_machine_name(machine)?;
                validate_guest_path(path)?;
                machine.clone()
            }
            (CpPath::Guest { machine, path }, CpPath::Host(h)) => {
                path_arg("host path", h)?;
                validate_machine_name(machine)?;
                validate_guest_path(path)?;
                machine.clone()
            }
            _ => {
                return Err(Error::invalid(
                    "cp paths",
                    "exactly one side must be a guest path (smolvm copies host<->machine only)",
                ))
            }
        };
        let args = vec!["machine".into(), "cp".into(), src.to_arg()?, dst.to_arg()?];
        let (cmd, out) = self.run(Some(&machine), args, self.timeout())?;
        check(&cmd, out).map(drop)
    }

    /// `smolvm machine ls --json`, sorted by name (smolvm's own order is not stable).
    pub fn machine_list(&self) -> Result<Vec<MachineInfo>> {
        let args = strings(&["machine", "ls", "--json"]);
        let (cmd, out) = self.run(None, args, self.timeout())?;
        let out = check(&cmd, out)?;
        let value: serde_json::Value =
            serde_json::from_slice(&out.stdout).map_err(|e| parse_error(&cmd, &out, e))?;
        let items = value.as_array().ok_or_else(|| Error::Parse {
            command: cmd.clone(),
            reason: "expected a JSON array".into(),
        })?;
        let mut list = items
            .iter()
            .map(|v| MachineInfo::from_json(v).ok_or_else(|| bad_entry(&cmd, v)))
            .collect::<Result<Vec<_>>>()?;
        list.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(list)
    }

    /// `smolvm machine status --name NAME --json`; `None` when the machine does not exist.
    ///
    /// smolvm (0.8.0 through 1.9.2) leaves an empty data directory with sparse disk images
    /// behind when asked about a name it does not know; to test whether a machine exists
    /// without that, look for it in [`Smolvm::machine_list`].
    pub fn machine_status(&self, name: &str) -> Result<Option<MachineInfo>> {
        validate_machine_name(name)?;
        let args = strings(&["machine", "status", "--name", name, "--json"]);
        let (cmd, out) = self.run(Some(name), args, self.timeout())?;
        let out = match check(&cmd, out) {
            Ok(out) => out,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        let value: serde_json::Value =
            serde_json::from_slice(&out.stdout).map_err(|e| parse_error(&cmd, &out, e))?;
        MachineInfo::from_json(&value)
            .map(Some)
            .ok_or_else(|| bad_entry(&cmd, &value))
    }

    /// Run one invocation through the runner, recording it in the machine's transcript.
    /// The command it returns (and puts in errors) also knows the machine's create-time env
    /// values, so that output quoted from a guest that printed them is scrubbed too.
    fn run(
        &self,
        machine: Option<&str>,
        args: Vec<String>,
        timeout: Duration,
    ) -> Result<(CommandLine, RawOutput)> {
        // Every method checks its own input with a precise message; this is the net under
        // them all, so that no NUL reaches a spawn (where it would be an I/O error).
        if let Some(i) = args.iter().position(|a| a.contains('\0')) {
            return Err(Error::invalid(
                "argument",
                format!("argument {i} of the smolvm command line contains NUL"),
            ));
        }
        if let Some((k, _)) =
            self.inner.env.iter().find(|(k, v)| {
                k.contains('\0') || v.contains('\0') || k.contains('=') || k.is_empty()
            })
        {
            return Err(Error::invalid(
                "process env",
                format!("{k:?}: a key must be non-empty without `=` or NUL, a value without NUL (value not shown)"),
            ));
        }
        if self
            .inner
            .program
            .as_os_str()
            .as_encoded_bytes()
            .contains(&0)
        {
            return Err(Error::invalid("smolvm binary", "the path contains NUL"));
        }
        let mut env = self.inner.env.clone();
        if self.inner.process_runner {
            // A ledgered `machine create`: marked so that, if we die, the watcher and later
            // sweeps can tell whether it still runs.
            if let Some(mark) = crate::cleanup::create_mark() {
                env.push((crate::cleanup::CREATE_MARK_ENV.to_string(), mark));
            }
        }
        let inv = Invocation {
            program: self.inner.program.clone(),
            args,
            env,
            timeout: Some(timeout.min(MAX_TIMEOUT)),
        };
        let result = self.inner.runner.run(&inv);
        let command = match machine {
            Some(m) => inv.command_line().with_secrets(&machine_secrets(m)),
            None => inv.command_line(),
        };
        let trace = config().map(|c| c.trace).unwrap_or(false);
        transcript::record(machine, &command, &result, trace);
        match result {
            Ok(out) => Ok((command, out)),
            Err(Error::NotFound { binary, .. }) if self.inner.process_runner => {
                Err(Error::NotFound {
                    looked: describe_lookup(&self.inner.program),
                    binary,
                })
            }
            Err(Error::Timeout {
                timeout,
                stdout,
                stderr,
                ..
            }) => Err(Error::Timeout {
                command,
                timeout,
                stdout,
                stderr,
            }),
            Err(Error::Spawn { source, .. }) => Err(Error::Spawn { command, source }),
            Err(e) => Err(e),
        }
    }
}

/// Env values given to `machine create`, per machine name, for as long as the machine may
/// exist: a guest can print them (`env`), and then they are in output an error quotes.
fn secrets_book() -> &'static Mutex<HashMap<String, Vec<String>>> {
    static BOOK: OnceLock<Mutex<HashMap<String, Vec<String>>>> = OnceLock::new();
    BOOK.get_or_init(Default::default)
}

fn machine_secrets(machine: &str) -> Vec<String> {
    lock(secrets_book())
        .get(machine)
        .cloned()
        .unwrap_or_default()
}

/// True if the binary from the environment (`SMOLVM_BIN`, else `smolvm` on `PATH`) resolves
/// to an executable file. Cheap: checked once per binary.
pub fn is_available() -> bool {
    Smolvm::from_env().is_available()
}

/// The value of `SMOLVM_BIN`, or `smolvm`.
pub(crate) fn smolvm_bin_from_env() -> PathBuf {
    match std::env::var_os("SMOLVM_BIN") {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => PathBuf::from("smolvm"),
    }
}

/// The environment that can change what a binary says it is: the client's process env and
/// every `SMOLVM_*` variable it inherits.
fn version_env(process_env: &[(String, String)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.to_string_lossy().into_owned())))
        .filter(|(k, _)| k.starts_with("SMOLVM_") && !k.starts_with("SMOLVM_HARNESS_"))
        .collect();
    env.sort();
    env.extend(process_env.iter().cloned());
    env
}

/// The on-disk version cache entry of a binary: `None` when the binary cannot be found (the
/// probe then reports that) or the configuration is unusable.
fn version_cache_path(program: &Path, env: &[(String, String)]) -> Option<PathBuf> {
    let resolved = resolve_program(program).ok()?;
    let resolved = std::fs::canonicalize(&resolved).unwrap_or(resolved);
    let meta = std::fs::metadata(&resolved).ok()?;
    let mtime = meta
        .modified()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_nanos();
    let mut key = format!("{}\0{}\0{mtime}", resolved.display(), meta.len());
    for (k, v) in env {
        key.push_str(&format!("\0{k}={v}"));
    }
    // Created and verified here, before anything is read from it or written to it: an unsafe
    // state directory only means no cache (the error surfaces where the state dir is needed).
    let dir = crate::state_dir::subdir("versions").ok()?;
    Some(dir.join(format!("{:016x}", crate::names::fnv1a_64(key.as_bytes()))))
}

/// The cached version, if the entry is a regular file of ours (opened without following
/// symlinks): a version planted by someone else would choose the dialect, e.g. one that
/// silently drops an egress policy.
fn read_version_cache(path: &Path) -> Option<Version> {
    use std::io::Read;
    let mut text = String::new();
    crate::state_dir::open(path, crate::state_dir::Access::Read)
        .ok()?
        .take(64)
        .read_to_string(&mut text)
        .ok()?;
    text.trim().parse().ok()
}

/// Best effort: a cache that cannot be written only costs the next process one probe. The
/// rename replaces whatever entry was there (a symlink itself, never its target).
fn write_version_cache(path: &Path, version: Version) {
    use std::io::Write;
    let Some(dir) = path.parent() else { return };
    if crate::state_dir::ensure_dir(dir).is_err() {
        return;
    }
    let tmp = dir.join(format!(".{}.tmp", std::process::id()));
    let written = crate::state_dir::open_or_replace(&tmp, crate::state_dir::Access::Write)
        .is_ok_and(|mut f| f.write_all(version.to_string().as_bytes()).is_ok());
    if !written || std::fs::rename(&tmp, path).is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}

/// Where `program` resolves: itself if it has a `/`, else the first executable file of that
/// name on `PATH`.
pub(crate) fn resolve_program(program: &Path) -> Result<PathBuf> {
    let has_dir = program.components().count() > 1 || program.is_absolute();
    if has_dir {
        if is_executable(program) {
            return Ok(program.to_path_buf());
        }
    } else if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(program);
            if is_executable(&candidate) {
                return Ok(candidate);
            }
        }
    }
    Err(Error::NotFound {
        binary: program.display().to_string(),
        looked: describe_lookup(program),
    })
}

fn describe_lookup(program: &Path) -> String {
    let from_env = std::env::var_os("SMOLVM_BIN").is_some_and(|v| Path::new(&v) == program);
    let has_dir = program.components().count() > 1 || program.is_absolute();
    match (from_env, has_dir) {
        (true, _) => format!("SMOLVM_BIN={} is not an executable file", program.display()),
        (false, true) => format!("{} is not an executable file", program.display()),
        (false, false) => format!("`{}` is not on PATH", program.display()),
    }
}

fn is_executable(path: &Path) -> bool {
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    if !meta.is_file() {
        return false;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        meta.permissions().mode() & 0o111 != 0
    }
    #[cfg(not(unix))]
    {
        true
    }
}

/// Source of a machine: an image reference, or a packed `.smolmachine` file. One or the
/// other, by construction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// `--image IMAGE`: a registry reference, or a local archive or directory (≥ 1.x).
    Image(String),
    /// `--from PATH`: a `.smolmachine` sidecar made by `pack create`.
    FromPath(PathBuf),
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

    /// Create from a packed `.smolmachine` file (`--from`); see [`Smolvm::pack_create`].
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
    /// 4 bytes or longer (see [`CommandLine::redact_output`]).
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
    /// [`CommandLine::redact_output`]).
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
    /// At least 1 ms; sent in whole milliseconds or seconds; longer than [`MAX_TIMEOUT`]
    /// (365 days) is sent as 365 days.
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
}

/// What a guest command produced. A non-zero [`ExecOutput::code`] is the guest's answer, not
/// an error.
#[derive(Clone, PartialEq, Eq)]
///
/// Past the output cap (`SMOLVM_HARNESS_OUTPUT_CAP`, default 64 MiB per stream, see
/// [`crate::Config`]) only the first and last halves of a stream are kept:
/// [`ExecOutput::stdout_dropped`] and [`ExecOutput::stdout_truncation`] say how much went
/// and where, and `Debug`, [`ExecOutput::assert_success`] and [`ExecOutput::expect_code`]
/// say so too. Outputs from [`crate::ScriptedRunner`] and [`crate::SimulatedRunner`] are
/// never capped.
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

/// One side of `machine cp`: a host path, or a path inside a machine. Typed, so that a host
/// path containing `:` is never misread as `machine:path`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CpPath {
    /// A path on the host.
    Host(PathBuf),
    /// A path inside a machine (relative paths are taken from `/`).
    Guest {
        /// The machine's name.
        machine: String,
        /// The path inside it.
        path: String,
    },
}

impl CpPath {
    /// A host path.
    pub fn host(path: impl Into<PathBuf>) -> CpPath {
        CpPath::Host(path.into())
    }

    /// A path inside `machine`.
    pub fn guest(machine: impl Into<String>, path: impl Into<String>) -> CpPath {
        CpPath::Guest {
            machine: machine.into(),
            path: path.into(),
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            CpPath::Host(p) => p.as_os_str().is_empty(),
            CpPath::Guest { path, .. } => path.is_empty(),
        }
    }

    fn to_arg(&self) -> Result<String> {
        match self {
            CpPath::Host(p) => path_arg("host path", p),
            CpPath::Guest { machine, path } => Ok(format!("{machine}:{path}")),
        }
    }
}

impl From<&Path> for CpPath {
    fn from(p: &Path) -> CpPath {
        CpPath::Host(p.to_path_buf())
    }
}

impl From<PathBuf> for CpPath {
    fn from(p: PathBuf) -> CpPath {
        CpPath::Host(p)
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
    fn parse(s: &str) -> MachineState {
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
    /// Read one entry of smolvm's JSON; `None` if it has no string `name`.
    pub fn from_json(v: &serde_json::Value) -> Option<MachineInfo> {
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

fn strings(words: &[&str]) -> Vec<String> {
    words.iter().map(|s| s.to_string()).collect()
}

fn path_arg(what: &'static str, p: &Path) -> Result<String> {
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

/// `Ok` for exit 0, else [`Error::Failed`].
fn check(cmd: &CommandLine, out: RawOutput) -> Result<RawOutput> {
    if out.code == Some(0) {
        Ok(out)
    } else {
        Err(failed(cmd, out))
    }
}

fn failed(cmd: &CommandLine, out: RawOutput) -> Error {
    Error::Failed {
        command: cmd.clone(),
        code: out.code,
        stdout: out.stdout_marked(),
        stderr: out.stderr_marked(),
    }
}

/// smolvm's own failures of `exec` are exit 1 with a last stderr line `Error: ` followed by
/// one of its error kinds (§0.4 of the CLI notes); a guest's exit 1 has no such line.
/// A guest that prints exactly such a line and exits 1 would be misread; that is the price of
/// the CLI's shared exit code, and the kinds are specific enough to make it unlikely.
fn is_smolvm_error(out: &RawOutput) -> bool {
    if out.code != Some(1) {
        return out.code.is_none();
    }
    let text = String::from_utf8_lossy(&out.stderr);
    let Some(last) = text.lines().rev().find(|l| !l.trim().is_empty()) else {
        return false;
    };
    let Some(rest) = last.strip_prefix("Error: ") else {
        return false;
    };
    [
        "vm not found: ",
        "agent operation failed: ",
        "config operation failed: ",
    ]
    .iter()
    .any(|kind| rest.starts_with(kind))
        || rest.contains("command output exceeded")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_cache_key_follows_the_binary_and_its_env() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bin = dir.path().join("smolvm");
        std::fs::write(&bin, "#!/bin/true\n").expect("write");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        let env = vec![("SMOLVM_FAKE_VERSION".to_string(), "0.8.0".to_string())];
        let a = version_cache_path(&bin, &env).expect("a cache path");
        assert_eq!(version_cache_path(&bin, &env), Some(a.clone()));
        assert_ne!(
            version_cache_path(&bin, &[]),
            Some(a.clone()),
            "env is part of the key"
        );
        // An upgrade in place (other size) is a new key.
        std::fs::write(&bin, "#!/bin/true\n# upgraded\n").expect("write");
        assert_ne!(version_cache_path(&bin, &env), Some(a.clone()));
        assert_eq!(version_cache_path(&dir.path().join("missing"), &env), None);

        let cache = dir.path().join("versions").join("k");
        write_version_cache(&cache, Version::new(0, 8, 2));
        assert_eq!(std::fs::read_to_string(&cache).expect("cached"), "0.8.2");
        assert_eq!(read_version_cache(&cache), Some(Version::new(0, 8, 2)));
    }

    #[cfg(unix)]
    #[test]
    fn a_planted_version_cache_entry_is_not_believed_nor_written_through() {
        let dir = tempfile::tempdir().expect("tempdir");
        let versions = dir.path().join("versions");
        std::fs::create_dir(&versions).expect("mkdir");
        let elsewhere = dir.path().join("elsewhere");
        std::fs::write(&elsewhere, "1.9.2").expect("write");
        let cache = versions.join("k");
        std::os::unix::fs::symlink(&elsewhere, &cache).expect("symlink");
        assert_eq!(
            read_version_cache(&cache),
            None,
            "a symlink is not believed"
        );
        write_version_cache(&cache, Version::new(0, 8, 2));
        assert_eq!(std::fs::read_to_string(&elsewhere).expect("read"), "1.9.2");
        assert_eq!(read_version_cache(&cache), Some(Version::new(0, 8, 2)));
        // Another user's file.
        std::os::unix::fs::chown(&cache, Some(12345), None).expect("chown (tests run as root)");
        assert_eq!(
            read_version_cache(&cache),
            None,
            "a foreign file is not believed"
        );
    }
}
