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
pub(crate) use program::{resolve_program, smolvm_bin_from_env, smolvm_host_from_env};

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::config::{config, config_or_default};
use crate::dialect::{Dialect, Version};
use crate::error::{CommandLine, Error, Result};
use crate::remote::{self, ApiFacts, Endpoint, Remote};
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
    /// A client of `smolvm serve` ([`Smolvm::remote`], `SMOLVM_HOST`): every operation is a
    /// request to it, and no process is spawned.
    remote: Option<Arc<Remote>>,
    /// `SMOLVM_HOST` was set to something this build cannot use: every call fails with this
    /// (never a silent fall back to a local CLI).
    bad_host: Option<String>,
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
    /// With `SMOLVM_HOST` set, the `smolvm serve` API it names ([`Smolvm::remote`]); else the
    /// binary named by `SMOLVM_BIN` (a name or a path), else `smolvm` on `PATH`.
    ///
    /// A `SMOLVM_HOST` that cannot be used (malformed, `https://` without the `remote-tls`
    /// feature or its certificates) never falls back to a local smolvm: the client is not
    /// [available](Smolvm::is_available) and every call fails with the reason.
    pub fn from_env() -> Smolvm {
        match program::smolvm_host_from_env() {
            Some(url) => Smolvm::remote_or_unusable(&url),
            None => Smolvm::new(smolvm_bin_from_env()),
        }
    }

    /// [`Smolvm::remote`], or a client whose every call fails with the reason it cannot be.
    pub(crate) fn remote_or_unusable(url: &str) -> Smolvm {
        Smolvm::remote(url).unwrap_or_else(|e| {
            let mut client = Smolvm::new("smolvm");
            if let Some(inner) = Arc::get_mut(&mut client.inner) {
                inner.program = PathBuf::from("SMOLVM_HOST");
                inner.process_runner = false;
                inner.cache_version = false;
                inner.bad_host = Some(e.to_string());
            }
            client
        })
    }

    /// A client of the `smolvm serve` API at `url`: `unix:///abs/path.sock`,
    /// `http://host:port`, or `https://host:port` (feature `remote-tls`, with the client
    /// certificate, key and CA in `SMOLVM_HARNESS_TLS_CERT`, `_KEY`, `_CA`). The public API is
    /// the same as over the CLI, and so is the cleanup: machines are ledgered with the URL
    /// (never a credential), and the crash watcher and the next run's sweep reach the same
    /// server. A malformed URL is [`Error::InvalidInput`]; nothing is sent until a call.
    ///
    /// Where the API differs from the CLI, the CLI's behaviour is kept or the option is
    /// refused ([`Error::Unsupported`]): secrets and raw flags at create (labels are not sent:
    /// the API has none), egress
    /// policies before 1.1.0, host paths on a server of another host; `exec` and copies
    /// need a running machine (the server would start it). See the guide's "Remote smolvm".
    ///
    /// ```
    /// use smolvm_harness::Smolvm;
    /// let smolvm = Smolvm::remote("unix:///run/smolvm/api.sock").unwrap();
    /// assert_eq!(smolvm.remote_url(), Some("unix:///run/smolvm/api.sock"));
    /// assert!(Smolvm::remote("tcp://h:1").is_err());
    /// ```
    pub fn remote(url: &str) -> Result<Smolvm> {
        let endpoint = Endpoint::parse(url)?;
        if !cfg!(feature = "remote") {
            return Err(Error::invalid(
                "smolvm host URL",
                "smolvm-harness was built without its `remote` feature",
            ));
        }
        if let Endpoint::Tcp { tls: true, .. } = endpoint {
            #[cfg(feature = "remote-tls")]
            crate::remote::tls::check_env()?;
            #[cfg(not(feature = "remote-tls"))]
            return Err(Error::invalid(
                "smolvm host URL",
                format!(
                    "{url}: https:// needs smolvm-harness built with its `remote-tls` feature \
                     (features = [\"remote-tls\"] in your Cargo.toml)"
                ),
            ));
        }
        let remote = Remote::new(endpoint);
        Ok(Smolvm {
            inner: Arc::new(Inner {
                program: PathBuf::from(remote.url()),
                runner: Arc::new(ProcessRunner),
                process_runner: false,
                cache_version: false,
                timeout: None,
                env: Vec::new(),
                version_override: None,
                version: OnceLock::new(),
                remote: Some(Arc::new(remote)),
                bad_host: None,
            }),
        })
    }

    /// The URL of the `smolvm serve` API this client talks to; `None` for the CLI.
    pub fn remote_url(&self) -> Option<&str> {
        self.inner.remote.as_deref().map(Remote::url)
    }

    /// The API client, or the reason `SMOLVM_HOST` cannot be used.
    fn api(&self) -> Result<Option<&Remote>> {
        if let Some(why) = &self.inner.bad_host {
            return Err(Error::invalid("SMOLVM_HOST", why.clone()));
        }
        Ok(self.inner.remote.as_deref())
    }

    /// What the server's API can do, for its version.
    fn api_facts(&self) -> Result<ApiFacts> {
        Ok(ApiFacts::of(self.version()?))
    }

    /// Whether machines of this client outlive the process (real smolvm processes, or a
    /// server): then they are ledgered, capped and swept.
    pub(crate) fn outlives_process(&self) -> bool {
        self.inner.process_runner || self.inner.remote.is_some()
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
                remote: None,
                bad_host: None,
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
            remote: self.inner.remote.clone(),
            bad_host: self.inner.bad_host.clone(),
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
            // A runner runs a CLI: the client is no longer one of a server.
            i.remote = None;
            i.bad_host = None;
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

    /// The program as configured (for a client of `smolvm serve`, its URL: see
    /// [`Smolvm::remote_url`]).
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
    ///
    /// For a client of `smolvm serve`: `GET /health` answered, within 10 s at most (or the
    /// client's timeout if shorter), checked once per URL and process.
    pub fn is_available(&self) -> bool {
        match self.api() {
            Err(_) => return false,
            Ok(Some(remote)) => {
                return remote_health(remote, self.timeout().min(HEALTH_PROBE_LIMIT), true).is_ok()
            }
            Ok(None) => {}
        }
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
        if let Some(remote) = self.api()? {
            let v = remote_health(remote, self.timeout(), false)?;
            let _ = self.inner.version.set(v);
            return Ok(v);
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

    /// The dialect of [`Smolvm::version`]. Over the API: no labels (the API has none, so
    /// ownership rests on the ledger alone), and fork from 1.2.5 (its API route).
    pub fn dialect(&self) -> Result<Dialect> {
        let mut dialect = Dialect::for_version(self.version()?);
        if self.inner.remote.is_some() {
            let facts = ApiFacts::of(dialect.version);
            dialect.labels = false;
            dialect.fork = facts.fork;
            dialect.cascade = facts.cascade;
        }
        Ok(dialect)
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
    ///
    /// For a client of `smolvm serve` (whose API cannot pack) on this host (a unix socket, or
    /// loopback TCP), the local smolvm CLI (`SMOLVM_BIN`) packs, and the server reads the
    /// result from the same paths; for a server on another host, [`Error::Unsupported`].
    pub fn pack_create(&self, image: &str, output: impl AsRef<Path>) -> Result<PathBuf> {
        validate_image(image)?;
        if let Some(remote) = self.api()? {
            if !remote.endpoint().is_local() {
                return Err(Error::Unsupported {
                    what: "pack create on a remote smolvm",
                    version: self.version()?,
                    reason: "the API cannot pack, and a pack made here is not on the server's \
                             host; create from an image",
                });
            }
            let local = Smolvm::new(smolvm_bin_from_env()).with_timeout(self.timeout());
            if !local.is_available() {
                return Err(Error::Unsupported {
                    what: "pack create over the smolvm API",
                    version: self.version()?,
                    reason: "the API cannot pack: packs are made by the local smolvm CLI \
                             (SMOLVM_BIN, else smolvm on PATH), and none is installed here; \
                             create from an image",
                });
            }
            return local.pack_create(image, output);
        }
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
        if let Some(remote) = self.api()? {
            options.check_version(dialect)?;
            self.remember_values(name, options.env_values());
            let made = remote.create(name, options, self.api_facts()?, self.timeout());
            let made_at = self.scrubbed(name, made)?;
            self.remember_made_at(name, made_at);
            if options.restricts_egress() && !dialect.enforces_egress {
                warn_unenforced_egress(dialect.version);
            }
            return Ok(());
        }
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
        if let Some(remote) = self.api()? {
            return self.scrubbed(name, remote.start(name, false, self.timeout()));
        }
        let args = strings(&["machine", "start", "--name", name]);
        let env = self.secret_plan(name).host_vars;
        let (cmd, out) = self.run_with(Some(name), args, env, &[], self.timeout())?;
        check(&cmd, out).map(drop)
    }

    /// `smolvm machine stop --name NAME`. Stopping a machine that is not running succeeds.
    pub fn machine_stop(&self, name: &str) -> Result<()> {
        validate_machine_name(name)?;
        if let Some(remote) = self.api()? {
            return self.scrubbed(name, remote.stop(name, self.timeout()));
        }
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
        if let Some(remote) = self.api()? {
            // The API's delete stops the machine first, on every version.
            self.scrubbed(name, remote.delete(name, false, self.timeout()))?;
            self.forget_machine(name);
            return Ok(());
        }
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
        let mut host_timeout = self.timeout();
        if let Some(t) = options.guest_timeout() {
            host_timeout = host_timeout.max(t.saturating_add(Duration::from_secs(10)));
        }
        if let Some(remote) = self.api()? {
            self.remember_values(name, options.values_to_scrub());
            let argv: Vec<String> = argv.iter().map(|a| a.as_ref().to_string()).collect();
            let (cmd, out) =
                self.scrubbed(name, remote.exec(name, &argv, options, host_timeout))?;
            let cmd = cmd.with_secrets(&self.machine_secrets(name));
            let code = out.code.unwrap_or(-1);
            return Ok(ExecOutput::from_run(code, cmd, out));
        }
        let dialect = self.dialect()?;
        let (args, env) = options.argv(name, argv, dialect, &self.secret_plan(name))?;
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
        let (src, dst) = (src.into(), dst.into());
        let (machine, args) = copy::argv(&src, &dst)?;
        if let Some(remote) = self.api()? {
            return self.remote_cp(remote, &src, &dst);
        }
        let (cmd, out) = self.run(Some(&machine), args, self.timeout())?;
        check(&cmd, out).map(drop)
    }

    /// `smolvm machine ls --json`, sorted by name (smolvm's own order is not stable).
    pub fn machine_list(&self) -> Result<Vec<MachineInfo>> {
        if let Some(remote) = self.api()? {
            return remote.list(self.timeout());
        }
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
        if let Some(remote) = self.api()? {
            return self.scrubbed(name, remote.status(name, self.timeout()));
        }
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
        if let Some(remote) = self.api()? {
            return self.scrubbed(name, remote.start(name, true, self.timeout()));
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
        if let Some(remote) = self.api()? {
            let (ports, made_at) =
                self.scrubbed(clone, remote.fork(golden, clone, options, self.timeout()))?;
            self.remember_made_at(clone, made_at);
            return Ok(ports);
        }
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
    ///
    /// Over the API a plain `DELETE` has no prompt: it refuses a golden with clones (409),
    /// and otherwise deletes it, which is what the caller does next anyway.
    pub(crate) fn golden_has_clones(&self, name: &str) -> Result<bool> {
        validate_machine_name(name)?;
        if let Some(remote) = self.api()? {
            return match remote.delete(name, false, self.timeout()) {
                Ok(()) => Ok(false),
                Err(Error::Api { status: 409, .. }) => Ok(true),
                Err(e) => Err(e),
            };
        }
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
        if let Some(remote) = self.api()? {
            self.scrubbed(name, remote.delete(name, true, self.timeout()))?;
            self.forget_machine(name);
            return Ok(());
        }
        let args = strings(&["machine", "delete", "--cascade", "--name", name]);
        let (cmd, out) = self.run(Some(name), args, self.timeout())?;
        check_deleted(&cmd, out)?;
        self.forget_machine(name);
        Ok(())
    }

    /// `smolvm machine data-dir --name NAME` (positional NAME before 1.0.2): the host
    /// directory that holds the machine's disks and its guest console log
    /// (`agent-console.log`). An unknown machine is an error ([`Error::is_not_found`]).
    ///
    /// Not over the API (its logs route is a stream): [`Error::Unsupported`].
    pub fn machine_data_dir(&self, name: &str) -> Result<PathBuf> {
        validate_machine_name(name)?;
        if self.api()?.is_some() {
            return Err(Error::Unsupported {
                what: "the guest console log (machine data-dir, console_log, wait_for_log) over \
                       the smolvm API",
                version: self.version()?,
                reason: "the API does not serve the console log, and a machine's files are on \
                         the server's host; wait with wait_for_port, wait_for_file or wait_until",
            });
        }
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
        // Every method of a remote client returns before it would run a CLI.
        if let Some(why) = &self.inner.bad_host {
            return Err(Error::invalid("SMOLVM_HOST", why.clone()));
        }
        if self.inner.remote.is_some() {
            return Err(Error::invalid(
                "smolvm call",
                "this operation has no smolvm API equivalent",
            ));
        }
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

impl Smolvm {
    /// `machine cp` as the API's file routes: host bytes up, or guest bytes down.
    fn remote_cp(&self, remote: &Remote, src: &CpPath, dst: &CpPath) -> Result<()> {
        match (src, dst) {
            (CpPath::Host(host), CpPath::Guest { machine, path }) => {
                let facts = self.api_facts()?;
                // Checked before reading: a file far over the limit is not read into memory.
                let size = std::fs::metadata(host)
                    .map_err(|e| Error::io("read", host, e))?
                    .len();
                if usize::try_from(size).map_or(true, |n| n > facts.upload_limit) {
                    return Err(remote::upload_too_large(size, facts));
                }
                let bytes = std::fs::read(host).map_err(|e| Error::io("read", host, e))?;
                let sent = remote.upload(machine, path, bytes, facts, self.timeout());
                self.scrubbed(machine, sent)
            }
            (CpPath::Guest { machine, path }, CpPath::Host(host)) => {
                let bytes =
                    self.scrubbed(machine, remote.download(machine, path, self.timeout()))?;
                std::fs::write(host, bytes).map_err(|e| Error::io("write", host, e))
            }
            // `copy::argv` refused the other combinations already.
            _ => Err(Error::invalid(
                "copy",
                "one side on the host, the other in a machine",
            )),
        }
    }
}

impl Smolvm {
    /// An API error of `machine`'s, also scrubbing the env and secret values the machine was
    /// given earlier (a server's message or a guest's output may quote them), as the CLI's
    /// command lines do.
    fn scrubbed<T>(&self, machine: &str, result: Result<T>) -> Result<T> {
        result.map_err(|e| {
            let known = self.machine_secrets(machine);
            if known.is_empty() {
                return e;
            }
            match e {
                Error::Api {
                    request,
                    status,
                    code,
                    message,
                } => {
                    let request = request.with_secrets(&known);
                    let message = request.redact_output(&message);
                    Error::Api {
                        request,
                        status,
                        code,
                        message,
                    }
                }
                Error::Unreachable { request, source } => Error::Unreachable {
                    request: request.with_secrets(&known),
                    source,
                },
                Error::Parse { command, reason } => Error::Parse {
                    command: command.with_secrets(&known),
                    reason: command.with_secrets(&known).redact_output(&reason),
                },
                other => other,
            }
        })
    }
}

/// How long [`Smolvm::is_available`] waits for a server's `/health` at most.
const HEALTH_PROBE_LIMIT: Duration = Duration::from_secs(10);

/// `GET /health`, once per URL and process when it answers: the version (a server is not
/// replaced by another version under the same URL while tests run). A failure is cached
/// only for availability (`for_availability`), as the CLI's binary lookup is: every skip
/// guard of a suite against a dead host must not wait for it again.
fn remote_health(remote: &Remote, timeout: Duration, for_availability: bool) -> Result<Version> {
    let cached = lock(health_seen()).get(remote.url()).cloned();
    match cached {
        Some(Ok(v)) => return Ok(v),
        Some(Err(why)) if for_availability => {
            return Err(Error::Unreachable {
                request: CommandLine::request("GET", remote.url(), "/health", None, Vec::new()),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotConnected,
                    format!("earlier in this process: {why}"),
                ),
            })
        }
        Some(Err(_)) | None => {}
    }
    let result = remote.health(timeout);
    let seen = match &result {
        Ok(v) => Ok(*v),
        Err(e) => Err(e.to_string()),
    };
    lock(health_seen()).insert(remote.url().to_string(), seen);
    result
}

/// What `GET /health` of each server said in this process: its version, or why not.
fn health_seen() -> &'static Mutex<HashMap<String, std::result::Result<Version, String>>> {
    static SEEN: OnceLock<Mutex<HashMap<String, std::result::Result<Version, String>>>> =
        OnceLock::new();
    SEEN.get_or_init(Default::default)
}

/// Why the server at `url` was found unavailable in this process, if it was: for the skip
/// guards' message (a missing socket, a refused connection and a TLS failure need different
/// fixes).
pub(crate) fn health_failure(url: &str) -> Option<String> {
    let canonical = Endpoint::parse(url).ok()?.to_string();
    lock(health_seen()).get(&canonical)?.clone().err()
}

/// True if smolvm can be used as the environment says: with `SMOLVM_HOST` set, its server
/// answered `GET /health` (see [`Smolvm::is_available`]); else the binary from `SMOLVM_BIN`
/// (else `smolvm` on `PATH`) resolves to an executable file. Cheap: checked once per binary
/// or server.
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

/// A server's `createdAt` of each machine our create or fork made there, by (smolvm, machine
/// name), until the cleanup registry takes it ([`Smolvm::server_made_at`]).
fn made_at_book() -> &'static Mutex<HashMap<BookKey, u64>> {
    static BOOK: OnceLock<Mutex<HashMap<BookKey, u64>>> = OnceLock::new();
    BOOK.get_or_init(Default::default)
}

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
        let scope = if let Some(url) = self.remote_url() {
            format!("remote:{url}")
        } else if self.inner.process_runner {
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
        lock(made_at_book()).remove(&key);
    }

    fn remember_made_at(&self, machine: &str, made_at: Option<u64>) {
        let key = self.book_key(machine);
        match made_at {
            Some(t) => lock(made_at_book()).insert(key, t),
            None => lock(made_at_book()).remove(&key),
        };
    }

    /// The server's own `createdAt` of the machine our last create (or fork) of `machine`
    /// made on it: ownership over the API is judged on the server's clock, never ours.
    pub(crate) fn server_made_at(&self, machine: &str) -> Option<u64> {
        lock(made_at_book()).remove(&self.book_key(machine))
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
