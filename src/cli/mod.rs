//! The smolvm client: one method per subcommand, each checking its input, building the exact
//! argv the installed smolvm's dialect accepts and running it without a shell.
//!
//! Lifecycle calls return `Result<_, Error>`. [`Smolvm::machine_exec`] returns the guest's
//! output and exit code, and fails only when smolvm itself failed.
//!
//! The pieces: `options` (what a caller asks of create and exec, and its argv), `copy` (the
//! two sides of `machine cp`), `output` (what smolvm answers), `program` (which binary) and
//! `version_cache` (asking `--version` once per binary, across processes).

mod copy;
mod options;
mod output;
mod program;
mod version_cache;

pub use copy::CpPath;
pub use options::{CreateOptions, ExecOptions, ForkOptions, PortMapping, Source};
pub use output::{ExecOutput, MachineInfo, MachineState};
pub(crate) use program::{resolve_program, smolvm_bin_from_env};

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::config::{config, config_or_default};
use crate::dialect::{Dialect, Version};
use crate::error::{CommandLine, Error, Result};
use crate::runner::{lock, Invocation, ProcessRunner, RawOutput, Runner};
use crate::sim::SimulatedRunner;
use crate::transcript;
use crate::validate::{validate_image, validate_machine_name, MAX_TIMEOUT};
use options::{path_arg, strings, SecretPlan};
use program::describe_lookup;

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
    /// The runner spawns real smolvm processes (not [`Runner::in_process`]): its machines
    /// are ledgered, capped and share packs across processes.
    process_runner: bool,
    /// Only the crate's own process runner's answers may be cached per binary across
    /// clients and processes: another runner may answer differently for the same binary.
    cache_version: bool,
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
                cache_version: true,
                timeout: None,
                env: Vec::new(),
                version_override: None,
                version: OnceLock::new(),
            }),
        }
    }

    /// A client whose runner is the in-process simulation of the newest supported smolvm.
    /// Nothing is spawned; see [`SimulatedRunner`](crate::sim::SimulatedRunner) for what it
    /// simulates.
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
            cache_version: self.inner.cache_version,
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
    /// [`SimulatedRunner`](crate::sim::SimulatedRunner), or your own). The detected version
    /// is forgotten.
    ///
    /// A runner of yours that runs real smolvm processes keeps every guarantee of the crate
    /// (crash cleanup, the machine cap, packs shared across processes); one that answers
    /// in-process says so with [`Runner::in_process`]. See [`Runner`] for the contract and
    /// the one thing other processes cannot do through your runner.
    pub fn with_runner<R: Runner + 'static>(&self, runner: R) -> Smolvm {
        let process = !runner.in_process();
        let ours = std::any::type_name::<R>() == std::any::type_name::<ProcessRunner>();
        if process && !ours {
            custom_runner_notice(&runner, &self.inner.program);
        }
        self.edit(|i| {
            i.runner = Arc::new(runner);
            i.process_runner = process;
            i.cache_version = ours;
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
        if !self.inner.cache_version {
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
        if !self.inner.cache_version {
            let v = self.probe_version()?;
            let _ = self.inner.version.set(v);
            return Ok(v);
        }
        let v = version_cache::version_of(&self.inner.program, &self.inner.env, || {
            self.probe_version()
        })?;
        let _ = self.inner.version.set(v);
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

    /// Whether this smolvm enforces egress policies (`allow_cidr`, `allow_host`): from
    /// 1.1.3. Before, the TSI backend ignores the allow-list (upstream's own fix note,
    /// `f8f7d148`): a machine "restricted" to one CIDR can reach anything. The crate then
    /// prints one warning per process when such a machine is created, or refuses it with
    /// [`Error::Unsupported`] under `SMOLVM_HARNESS_STRICT_EGRESS=1`. A test of isolation
    /// can skip itself on `Ok(false)`.
    ///
    /// ```
    /// use smolvm_harness::{Smolvm, Version};
    /// assert!(Smolvm::simulated().enforces_egress().unwrap());
    /// assert!(!Smolvm::simulated_version(Version::new(0, 8, 2)).enforces_egress().unwrap());
    /// ```
    pub fn enforces_egress(&self) -> Result<bool> {
        Ok(self.dialect()?.enforces_egress)
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
    ///
    /// With an egress policy on smolvm < 1.1.3, which does not enforce it, prints one warning
    /// per process (or refuses, under `SMOLVM_HARNESS_STRICT_EGRESS=1`): see
    /// [`Smolvm::enforces_egress`]. Secrets ([`CreateOptions::secret_env`]) are remembered
    /// for the machine's later `start` and `exec` calls through any clone of this client
    /// until [`Smolvm::machine_delete`].
    pub fn machine_create(&self, name: &str, options: &CreateOptions) -> Result<()> {
        validate_machine_name(name)?;
        options.validate()?;
        let dialect = self.dialect()?;
        let args = options.argv(name, dialect)?;
        if options.restricts_egress() && !dialect.enforces_egress {
            warn_unenforced_egress(dialect.version);
        }
        // Known before the call, so that an error quoting a guest's output is scrubbed too;
        // added to (never replacing) what a live machine of that name already has, in case
        // this create is refused as a duplicate.
        self.remember_values(name, options.env_values());
        let (cmd, out) = self.run(Some(name), args, self.timeout())?;
        let out = check(&cmd, out)?;
        // smolvm says which machine it made; an extra argument read as the name (before
        // 1.0.2, where the name is a positional) would make another one, which nothing of
        // ours would ever delete.
        if let Some(made) = output::created_name(&String::from_utf8_lossy(&out.stdout)) {
            if made != name {
                let deleted = self.machine_delete(&made);
                return Err(Error::invalid(
                    "extra create argument",
                    format!(
                        "smolvm made machine {made:?} instead of {name:?}: an extra argument was \
                         read as the machine name ({})",
                        match deleted {
                            Ok(()) => "it was deleted".to_string(),
                            Err(e) => format!("deleting it failed: {e}"),
                        }
                    ),
                ));
            }
        }
        let plan = options.secret_plan(dialect);
        self.remember_plan(name, plan);
        Ok(())
    }

    /// `smolvm machine start --name NAME`.
    ///
    /// The machine's secret host variables (from [`CreateOptions::secret_env`]) are in the
    /// smolvm process's environment: smolvm reads them at every start.
    pub fn machine_start(&self, name: &str) -> Result<()> {
        validate_machine_name(name)?;
        let args = strings(&["machine", "start", "--name", name]);
        let env = self.secret_plan(name).host_vars;
        let (cmd, out) = self.run_with(Some(name), args, env, &[], self.timeout())?;
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
        check_deleted(&cmd, out)?;
        self.forget_machine(name);
        Ok(())
    }

    /// `smolvm machine exec --name NAME [-w DIR] [--timeout T] [--env=K=V]… -- ARGV…`.
    ///
    /// A non-zero guest exit is **not** an error: it is in [`ExecOutput::code`]. It is an
    /// error when smolvm itself failed (machine not found, not running), which smolvm
    /// reports as exit 1 with its own `Error: …` line, so exec on a dead machine never looks
    /// like "the guest exited 1". The host-side limit is the guest timeout plus 10 s when a
    /// guest timeout is set, and never less than the client's default (both clamped to
    /// [`MAX_TIMEOUT`](crate::validate::MAX_TIMEOUT), 365 days, so a deadline always exists).
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
        let dialect = self.dialect()?;
        let (args, env) = options.argv(name, argv, dialect, &self.secret_plan(name))?;
        let mut host_timeout = self.timeout();
        if let Some(t) = options.guest_timeout() {
            host_timeout = host_timeout.max(t.saturating_add(Duration::from_secs(10)));
        }
        // The guest may print them anywhere (its console log too): scrubbed from everything
        // quoted of this machine from now on, until it is deleted.
        self.remember_values(name, options.values_to_scrub());
        let (cmd, out) = self.run_with(Some(name), args, env, &[], host_timeout)?;
        if out.code != Some(0) && is_smolvm_error(&out) {
            return Err(failed(&cmd, out));
        }
        let Some(code) = out.code else {
            return Err(failed(&cmd, out));
        };
        Ok(ExecOutput::from_run(code, cmd, out))
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
        let (machine, args) = copy::argv(&src.into(), &dst.into())?;
        let (cmd, out) = self.run(Some(&machine), args, self.timeout())?;
        check(&cmd, out).map(drop)
    }

    /// `smolvm machine ls --json`, sorted by name (smolvm's own order is not stable).
    pub fn machine_list(&self) -> Result<Vec<MachineInfo>> {
        let args = strings(&["machine", "ls", "--json"]);
        let (cmd, out) = self.run(None, args, self.timeout())?;
        let out = check(&cmd, out)?;
        output::parse_list(&cmd, &out)
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
        output::parse_status(&cmd, &out).map(Some)
    }

    /// `smolvm machine start --name NAME --forkable`: start a stopped machine so that it can
    /// be forked (smolvm ≥ 1.0.0). smolvm ignores `--forkable` for a machine that is already
    /// running (it says so and exits 0), so this refuses a running machine instead.
    pub fn machine_start_forkable(&self, name: &str) -> Result<()> {
        validate_machine_name(name)?;
        let dialect = self.dialect()?;
        dialect.require(
            dialect.fork,
            "machine start --forkable",
            "smolvm has fork from 1.0.0",
        )?;
        if let Some(info) = self.machine_status(name)? {
            if info.state == MachineState::Running {
                return Err(Error::invalid(
                    "forkable start",
                    format!(
                        "machine {name} is already running, and smolvm would ignore --forkable; \
                         stop it first"
                    ),
                ));
            }
        }
        let args = strings(&["machine", "start", "--name", name, "--forkable"]);
        let env = self.secret_plan(name).host_vars;
        let (cmd, out) = self.run_with(Some(name), args, env, &[], self.timeout())?;
        check(&cmd, out).map(drop)
    }

    /// `smolvm machine fork --golden GOLDEN --name CLONE` (positional before 1.0.2): a
    /// copy-on-write clone of a golden started with [`Smolvm::machine_start_forkable`],
    /// running. The first fork freezes the golden for good; from smolvm 1.7.6 it can be
    /// forked again any number of times. Returns the clone's published ports: each of the
    /// golden's is remapped to a fresh host port, read from smolvm's remap lines.
    ///
    /// The clone inherits the golden's record, secrets included: its later `exec` calls get
    /// the golden's secret host variables, and those of `options`.
    pub fn machine_fork(
        &self,
        golden: &str,
        clone: &str,
        options: &ForkOptions,
    ) -> Result<Vec<PortMapping>> {
        validate_machine_name(golden)?;
        validate_machine_name(clone)?;
        options.validate()?;
        let dialect = self.dialect()?;
        let golden_plan = self.secret_plan(golden);
        let (args, plan) = options.argv(golden, clone, dialect, &golden_plan)?;
        let mut values = self.machine_secrets(golden);
        values.extend(options.values());
        self.remember_values(clone, values);
        // smolvm reads the golden's secrets when it boots the clone.
        let env = plan.host_vars.clone();
        let (cmd, out) = self.run_with(Some(clone), args, env, &[], self.timeout())?;
        let out = check(&cmd, out)?;
        self.remember_plan(clone, plan);
        Ok(output::parse_fork_remaps(&String::from_utf8_lossy(
            &out.stderr,
        )))
    }

    /// Whether the golden `name` still has clones (which, once ours are deleted, someone
    /// else made from it): a plain `machine delete` (no `-f`) refuses a golden with clones,
    /// and otherwise asks `[y/N]`, which the closed stdin of every smolvm call answers No, so
    /// nothing is deleted either way.
    pub(crate) fn golden_has_clones(&self, name: &str) -> Result<bool> {
        validate_machine_name(name)?;
        let args = strings(&["machine", "delete", "--name", name]);
        let (cmd, out) = self.run(Some(name), args, self.timeout())?;
        match check(&cmd, out) {
            Ok(_) => Ok(false),
            Err(e) if e.is_not_found() => Ok(false),
            Err(Error::Failed { ref stderr, .. })
                if String::from_utf8_lossy(stderr).contains("is the fork base for") =>
            {
                Ok(true)
            }
            Err(e) => Err(e),
        }
    }

    /// Remember the secrets of a machine another process created with `options` (a golden
    /// shared by the run), so that this process's forks and execs of it supply them.
    pub(crate) fn adopt_secrets(&self, name: &str, options: &CreateOptions) -> Result<()> {
        let dialect = self.dialect()?;
        self.remember_values(name, options.env_values());
        let plan = options.secret_plan(dialect);
        self.remember_plan(name, plan);
        Ok(())
    }

    /// `smolvm machine delete --cascade --name NAME` (smolvm ≥ 1.7.0): delete a golden's
    /// clones, then the golden, without a prompt. Unlike `delete -f`, which deletes a golden
    /// under its live clones and leaves them broken. A machine that does not exist counts as
    /// deleted.
    pub fn machine_delete_cascade(&self, name: &str) -> Result<()> {
        validate_machine_name(name)?;
        let dialect = self.dialect()?;
        dialect.require(
            dialect.cascade,
            "machine delete --cascade",
            "smolvm has --cascade from 1.7.0",
        )?;
        let args = strings(&["machine", "delete", "--cascade", "--name", name]);
        let (cmd, out) = self.run(Some(name), args, self.timeout())?;
        check_deleted(&cmd, out)?;
        self.forget_machine(name);
        Ok(())
    }

    /// `smolvm machine data-dir --name NAME` (positional NAME before 1.0.2): the host
    /// directory that holds the machine's disks and its guest console log
    /// (`agent-console.log`). An unknown machine is an error ([`Error::is_not_found`]).
    pub fn machine_data_dir(&self, name: &str) -> Result<PathBuf> {
        validate_machine_name(name)?;
        let args = if self.dialect()?.name_flag {
            strings(&["machine", "data-dir", "--name", name])
        } else {
            strings(&["machine", "data-dir", name])
        };
        let (cmd, out) = self.run(Some(name), args, self.timeout())?;
        let out = check(&cmd, out)?;
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().map(str::trim).find(|l| !l.is_empty());
        match line {
            Some(dir) if Path::new(dir).is_absolute() => Ok(PathBuf::from(dir)),
            _ => Err(Error::Parse {
                command: cmd,
                reason: format!("expected an absolute directory, got {text:?}"),
            }),
        }
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
        self.run_with(machine, args, Vec::new(), &[], timeout)
    }

    /// [`Smolvm::run`] with extra smolvm process env (secret host variables) and extra
    /// values to scrub from what the command line quotes (this call's secrets).
    fn run_with(
        &self,
        machine: Option<&str>,
        args: Vec<String>,
        extra_env: Vec<(String, String)>,
        extra_secrets: &[String],
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
        env.extend(extra_env);
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
        let mut secrets = extra_secrets.to_vec();
        if let Some(m) = machine {
            secrets.extend(self.machine_secrets(m));
        }
        let command = inv.command_line().with_secrets(&secrets);
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

/// True if the binary from the environment (`SMOLVM_BIN`, else `smolvm` on `PATH`) resolves
/// to an executable file. Cheap: checked once per binary.
pub fn is_available() -> bool {
    Smolvm::from_env().is_available()
}

/// Env and secret values of each machine, by (smolvm, machine name), for as long as the
/// machine may exist: a guest can print them (`env`, its console), and then they are in
/// output a message, a wait's report or an artifact quotes.
fn secrets_book() -> &'static Mutex<HashMap<BookKey, Vec<String>>> {
    static BOOK: OnceLock<Mutex<HashMap<BookKey, Vec<String>>>> = OnceLock::new();
    BOOK.get_or_init(Default::default)
}

/// (which smolvm, machine name): see [`Smolvm::book_key`].
type BookKey = (String, String);

/// How each machine's secrets reach it, by (smolvm, machine name): kept in memory only, for
/// as long as the machine may exist.
fn plan_book() -> &'static Mutex<HashMap<BookKey, SecretPlan>> {
    static BOOK: OnceLock<Mutex<HashMap<BookKey, SecretPlan>>> = OnceLock::new();
    BOOK.get_or_init(Default::default)
}

impl Smolvm {
    /// Which smolvm a machine name belongs to: the program and its process env for real
    /// processes (any client of the same binary and state reaches the machine), the runner's
    /// state otherwise.
    fn book_key(&self, name: &str) -> BookKey {
        let scope = if self.inner.process_runner {
            let env: Vec<String> = self
                .inner
                .env
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            format!("{}\0{}", self.inner.program.display(), env.join("\0"))
        } else {
            format!("in-process:{}", self.runner_id())
        };
        (scope, name.to_string())
    }

    /// `text` (guest output, a console log) with every env and secret value known for
    /// `machine` on this smolvm scrubbed out, as errors scrub the output they quote.
    pub(crate) fn scrub_output(&self, machine: &str, text: &str) -> String {
        CommandLine::new("smolvm", &[])
            .with_secrets(&self.machine_secrets(machine))
            .redact_output(text)
    }

    fn machine_secrets(&self, machine: &str) -> Vec<String> {
        lock(secrets_book())
            .get(&self.book_key(machine))
            .cloned()
            .unwrap_or_default()
    }

    /// Add values to scrub for `machine`, keeping the ones it has.
    fn remember_values(&self, machine: &str, values: Vec<String>) {
        let values: Vec<String> = values.into_iter().filter(|v| !v.is_empty()).collect();
        if values.is_empty() {
            return;
        }
        let mut book = lock(secrets_book());
        let known = book.entry(self.book_key(machine)).or_default();
        for v in values {
            if !known.contains(&v) {
                known.push(v);
            }
        }
    }

    /// How `machine`'s secrets reach it from now on (nothing to remember if it has none).
    fn remember_plan(&self, machine: &str, plan: SecretPlan) {
        if !plan.host_vars.is_empty() || !plan.per_exec.is_empty() {
            lock(plan_book()).insert(self.book_key(machine), plan);
        }
    }

    /// The machine is deleted: forget its secrets and values.
    fn forget_machine(&self, machine: &str) {
        let key = self.book_key(machine);
        lock(secrets_book()).remove(&key);
        lock(plan_book()).remove(&key);
    }

    fn secret_plan(&self, name: &str) -> SecretPlan {
        lock(plan_book())
            .get(&self.book_key(name))
            .cloned()
            .unwrap_or_default()
    }
}

/// One warning per process: a policy the installed smolvm does not enforce is worse than
/// none if the test believes it.
fn warn_unenforced_egress(version: Version) {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        crate::diag::log(&format!(
            "smolvm-harness: warning: smolvm {version} does not enforce --allow-cidr/--allow-host \
             (enforced from 1.1.3): machines of this process with an egress policy can reach \
             any address; set SMOLVM_HARNESS_STRICT_EGRESS=1 to refuse them instead"
        ));
    }
}

/// Once per process: what other processes cannot do through a custom runner.
fn custom_runner_notice(runner: &dyn fmt::Debug, program: &Path) {
    static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
        crate::diag::log(&format!(
            "smolvm-harness: note: custom runner {runner:?}: crash cleanup (watcher, next-run \
             sweep) reaches smolvm by running {} directly, not through the runner",
            program.display()
        ));
    }
}

/// A delete's outcome: a machine that does not exist counts as deleted (deletes are
/// idempotent), any other failure is an error.
fn check_deleted(cmd: &CommandLine, out: RawOutput) -> Result<()> {
    match check(cmd, out) {
        Ok(_) => Ok(()),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(e),
    }
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
