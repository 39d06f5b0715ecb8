//! The machine guard: a smolvm machine that is deleted when its [`Machine`] goes away.
//!
//! Order of events over a guard's life, and why:
//!
//! 1. Everything is validated before anything happens, so bad input leaves nothing behind,
//!    and the name is claimed in-process, so no two live guards share one.
//! 2. A slot under `SMOLVM_HARNESS_MAX_MACHINES` is taken (booting many VMs at once is what
//!    hurts), then the name is registered with the cleanup machinery *before* `machine
//!    create`, so a crash at any later point is still cleaned up by the exit hook, the crash
//!    watcher or the next run's sweep.
//! 3. On drop the machine is deleted, then unregistered, then the slot is released (it is the
//!    last field, so it drops after `Drop::drop` ran): another process never boots into a
//!    slot whose machine still exists.

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::artifacts;
use crate::cleanup;
use crate::cli::{
    CpPath, CreateOptions, ExecOptions, ExecOutput, MachineInfo, PortMapping, Smolvm, Source,
};
use crate::config::{config, config_or_default, KeepPolicy};
use crate::diag;
use crate::error::{Error, Result};
use crate::names::{current_test_name, generate_name};
use crate::pack::Pack;
use crate::slots::{self, Slot};
use crate::transcript::{self, TranscriptEntry};
use crate::validate::validate_machine_name;

/// A smolvm machine owned by a test: created by [`MachineBuilder::create`] or
/// [`MachineBuilder::start`], deleted (`machine delete -f`) when dropped.
///
/// When the test is failing (the guard drops while the thread panics), the drop first saves
/// the machine's console log and transcript under `SMOLVM_HARNESS_ARTIFACTS` (see
/// [`crate::config::Artifacts`]), prints the machine's name, its last smolvm commands and
/// where the artifacts went, then honours `SMOLVM_HARNESS_KEEP` (see
/// [`MachineBuilder::keep_policy`]).
///
/// Cleanup does **not** run from drop when the process is killed, calls
/// `std::process::exit`, or the guard lives in a `static` or an rstest `#[once]` fixture; the
/// harness's exit hook, signal handler and next-run sweep cover those cases.
///
/// Escape hatches, as on `tempfile::TempDir`: [`Machine::keep`] (never delete),
/// [`Machine::disable_cleanup`] (switch deletion off in place) and [`Machine::delete`]
/// (delete now and see the error that drop can only log).
///
/// ```no_run
/// use smolvm_harness::Machine;
///
/// let vm = Machine::builder().image("alpine:latest").net().start()?;
/// let out = vm.sh("echo hello from $(uname -s)")?;
/// out.assert_success();
/// assert_eq!(out.stdout_str(), "hello from Linux\n");
/// # Ok::<(), smolvm_harness::Error>(())
/// ```
///
/// In unit mode the same code runs against a scripted runner:
///
/// ```
/// use smolvm_harness::{Machine, Reply, ScriptedRunner, Smolvm};
///
/// let runner = ScriptedRunner::new().on(
///     &["machine", "exec"],
///     Reply::stdout("hello\n"),
/// );
/// let smolvm = Smolvm::new("smolvm").with_runner(runner.clone());
/// {
///     let vm = Machine::builder().smolvm(smolvm).name("doc-vm").start().unwrap();
///     assert_eq!(vm.exec(&["echo", "hello"]).unwrap().stdout_str(), "hello\n");
/// }
/// let last = runner.argvs().pop().unwrap();
/// assert_eq!(last, ["machine", "delete", "-f", "--name", "doc-vm"]);
/// ```
#[must_use = "dropping a Machine deletes the VM at once"]
pub struct Machine {
    pub(crate) smolvm: Smolvm,
    pub(crate) name: String,
    /// False once the machine is no longer ours to delete: after `keep`, `delete`, a
    /// handled start failure, or `disable_cleanup(true)`.
    pub(crate) armed: bool,
    pub(crate) keep_policy: Option<KeepPolicy>,
    /// Why the machine is provably ours, should it have to be registered again.
    pub(crate) evidence: cleanup::Evidence,
    /// Plain, golden or clone: how it is deleted, and in which order.
    pub(crate) role: cleanup::Role,
    /// The published ports, as sent to `machine create` (a clone's, as remapped by `fork`).
    pub(crate) ports: Vec<PortMapping>,
    /// The test that made it (for failure artifacts): the builder's `test_name`, else
    /// [`current_test_name`] at create.
    pub(crate) test: String,
    /// The name, reserved on this smolvm state; released after `Drop::drop` has run.
    pub(crate) _reservation: cleanup::Reservation,
    /// Set when the harness itself saw this machine fail (a golden whose provisioning
    /// failed): its drop then reports and saves artifacts as for a failing test.
    pub(crate) failed: bool,
    /// A clone's hold on its golden: released after `Drop::drop` has deleted the clone, so
    /// the golden always goes after its clones.
    pub(crate) golden: Option<Arc<crate::golden::CloneLink>>,
    /// Last field: released after `Drop::drop` has deleted the machine.
    pub(crate) _slot: Option<Slot>,
}

impl fmt::Debug for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Machine")
            .field("name", &self.name)
            .field("cleanup", &self.armed)
            .finish()
    }
}

/// Where the machine comes from, as given to the builder.
#[derive(Clone, Debug)]
enum BuilderSource {
    Image(String),
    Path(PathBuf),
}

/// Builds a [`Machine`]: source, network, sizing, ports, volumes, env and secrets, labels,
/// name, client. By value, so a partly set up builder can be cloned and reused.
///
/// Without a source, the machine uses the image of `SMOLVM_HARNESS_IMAGE` (default
/// `alpine:latest`) with networking on, which smolvm ≥ 1.7.3 needs to pull it. With an
/// explicit [`MachineBuilder::image`], add [`MachineBuilder::net`] yourself for a registry
/// image.
///
/// ```
/// use smolvm_harness::{Machine, Smolvm};
///
/// let vm = Machine::builder()
///     .smolvm(Smolvm::simulated())
///     .image("alpine:3.20")
///     .net()
///     .cpus(2)
///     .mem_mib(512)
///     .publish(8080)
///     .allow_cidr("10.0.0.0/8")
///     .env("MODE", "test")
///     .secret_env("API_TOKEN", "tok-1234")
///     .start()
///     .unwrap();
/// let host = vm.host_port(8080).unwrap();
/// assert_ne!(host, 0);
/// // The guest has the secret; no command line, record or transcript does.
/// assert_eq!(vm.sh("echo $API_TOKEN").unwrap().stdout_str(), "tok-1234\n");
/// assert!(vm.transcript().iter().all(|e| !e.to_string().contains("tok-1234")));
/// ```
#[derive(Clone)]
#[must_use]
pub struct MachineBuilder {
    source: Option<BuilderSource>,
    /// Everything but the source and the labels (ownership labels go first).
    options: CreateOptions,
    /// Guest ports to publish on host ports picked at create.
    publish: Vec<u16>,
    labels: Vec<(String, String)>,
    name: Option<String>,
    smolvm: Option<Smolvm>,
    test_name: Option<String>,
    keep_policy: Option<KeepPolicy>,
}

impl fmt::Debug for MachineBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // CreateOptions' Debug shows env keys only: values may be secrets.
        f.debug_struct("MachineBuilder")
            .field("source", &self.source)
            .field("options", &self.options)
            .field("publish", &self.publish)
            .field("labels", &self.labels)
            .field("name", &self.name)
            .field("smolvm", &self.smolvm)
            .field("test_name", &self.test_name)
            .field("keep_policy", &self.keep_policy)
            .finish()
    }
}

impl Machine {
    /// Start describing a machine.
    pub fn builder() -> MachineBuilder {
        MachineBuilder {
            source: None,
            options: CreateOptions::image(String::new()),
            publish: Vec::new(),
            labels: Vec::new(),
            name: None,
            smolvm: None,
            test_name: None,
            keep_policy: None,
        }
    }
}

/// How many machines [`MachineBuilder::start`] makes when a picked host port turns out to be
/// taken at start (another process bound it between the pick and the start).
const PUBLISH_ATTEMPTS: u32 = 5;

impl MachineBuilder {
    /// Create from an image (`--image`): a registry reference, or on smolvm ≥ 1.x a local
    /// archive or directory. Replaces any earlier source.
    pub fn image(mut self, image: impl Into<String>) -> MachineBuilder {
        self.source = Some(BuilderSource::Image(image.into()));
        self
    }

    /// Create from a pack (`--from PACK.smolmachine`). Keep the [`Pack`] alive until the
    /// machine is created; a [`Pack::shared`] pack lives for the whole run anyway.
    pub fn from_pack(self, pack: &Pack) -> MachineBuilder {
        self.from_path(pack.path())
    }

    /// Create from a `.smolmachine` file made by `smolvm pack create` (`--from`).
    pub fn from_path(mut self, path: impl Into<PathBuf>) -> MachineBuilder {
        self.source = Some(BuilderSource::Path(path.into()));
        self
    }

    /// Turn networking on (`--net`).
    pub fn net(mut self) -> MachineBuilder {
        self.options = self.options.net();
        self
    }

    /// Set a guest environment variable for every command of the machine. Values are
    /// redacted as [`crate::CreateOptions::env`] says (output scrubbing from 4 bytes), but
    /// they are on smolvm's command line and in its record: for anything secret use
    /// [`MachineBuilder::secret_env`].
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> MachineBuilder {
        self.options = self.options.env(key, value);
        self
    }

    /// Give every command of the machine a secret environment variable whose value never
    /// appears on a command line, in smolvm's record, the ledger, transcripts or `Debug`;
    /// how it travels per smolvm version is in [`CreateOptions::secret_env`].
    pub fn secret_env(
        mut self,
        key: impl Into<String>,
        value: impl Into<String>,
    ) -> MachineBuilder {
        self.options = self.options.secret_env(key, value);
        self
    }

    /// Allow egress to this CIDR (`--allow-cidr`; networking is then on). Refused for a
    /// pack source on smolvm < 1.8.0, which would silently drop the policy; not enforced
    /// before smolvm 1.1.3 (see [`Smolvm::enforces_egress`]).
    pub fn allow_cidr(mut self, cidr: impl Into<String>) -> MachineBuilder {
        self.options = self.options.allow_cidr(cidr);
        self
    }

    /// Allow egress to a host by name (`--allow-host`; networking is then on): smolvm
    /// resolves it **on the host at create** (and again at each start); see
    /// [`CreateOptions::allow_host`].
    pub fn allow_host(mut self, host: impl Into<String>) -> MachineBuilder {
        self.options = self.options.allow_host(host);
        self
    }

    /// vCPUs (`--cpus`, 1–255; smolvm runs at most 16).
    pub fn cpus(mut self, cpus: u32) -> MachineBuilder {
        self.options = self.options.cpus(cpus);
        self
    }

    /// Memory ceiling in MiB (`--mem`, at least 64).
    pub fn mem_mib(mut self, mib: u32) -> MachineBuilder {
        self.options = self.options.mem_mib(mib);
        self
    }

    /// Storage disk size in GiB (`--storage`).
    pub fn storage_gib(mut self, gib: u32) -> MachineBuilder {
        self.options = self.options.storage_gib(gib);
        self
    }

    /// Overlay disk size in GiB (`--overlay`).
    pub fn overlay_gib(mut self, gib: u32) -> MachineBuilder {
        self.options = self.options.overlay_gib(gib);
        self
    }

    /// Publish guest port `guest` on host port `host` (`--port HOST:GUEST`); see
    /// [`CreateOptions::port`]. To have a free host port picked, use
    /// [`MachineBuilder::publish`].
    pub fn port(mut self, host: u16, guest: u16) -> MachineBuilder {
        self.options = self.options.port(host, guest);
        self
    }

    /// Publish guest port `guest` on a free host port picked at create (smolvm has no
    /// ephemeral host port: it refuses 0). Read it with [`Machine::host_port`]. If another
    /// process takes the picked port before the machine starts, [`MachineBuilder::start`]
    /// deletes the machine and makes it again with other ports (up to 5 machines); smolvm
    /// 0.8.x binds host ports only when the guest listens, so there a taken port shows up
    /// in the guest server instead, and a machine made with [`MachineBuilder::create`] and
    /// started later is not remade.
    pub fn publish(mut self, guest: u16) -> MachineBuilder {
        self.publish.push(guest);
        self
    }

    /// Mount host directory `host` read-write at `guest` (`--volume`); the host directory
    /// must exist (it is sent absolute and canonical), the guest path must be absolute.
    pub fn volume(mut self, host: impl Into<PathBuf>, guest: impl Into<String>) -> MachineBuilder {
        self.options = self.options.volume(host, guest);
        self
    }

    /// Mount host directory `host` read-only at `guest` (`--volume HOST:GUEST:ro`).
    pub fn volume_ro(
        mut self,
        host: impl Into<PathBuf>,
        guest: impl Into<String>,
    ) -> MachineBuilder {
        self.options = self.options.volume_ro(host, guest);
        self
    }

    /// `machine create` flags this crate does not model, with every guarantee kept; the
    /// flags it owns are refused. See [`CreateOptions::extra_args`].
    pub fn extra_args<I, S>(mut self, args: I) -> MachineBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.options = self.options.extra_args(args);
        self
    }

    /// Attach a label (`--label K=V`, sent on smolvm ≥ 1.8.0 only), after the labels that
    /// mark the machine as the harness's; their keys are reserved.
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> MachineBuilder {
        self.labels.push((key.into(), value.into()));
        self
    }

    /// Use this exact name instead of a generated one. It must follow smolvm's rules (see
    /// [`crate::validate::validate_machine_name`]) and not be taken: an existing machine of that name is
    /// an error, and is never deleted on your behalf.
    pub fn name(mut self, name: impl Into<String>) -> MachineBuilder {
        self.name = Some(name.into());
        self
    }

    /// Use this client instead of [`Smolvm::from_env`].
    pub fn smolvm(mut self, smolvm: Smolvm) -> MachineBuilder {
        self.smolvm = Some(smolvm);
        self
    }

    /// Name generated machines after this instead of [`crate::current_test_name`] (e.g. for
    /// machines made on a helper thread, whose name libtest does not set).
    pub fn test_name(mut self, test_name: impl Into<String>) -> MachineBuilder {
        self.test_name = Some(test_name.into());
        self
    }

    /// Decide for this machine what `SMOLVM_HARNESS_KEEP` decides for all: keep it when its
    /// test fails ([`KeepPolicy::OnFailure`]), always, or never.
    pub fn keep_policy(mut self, policy: KeepPolicy) -> MachineBuilder {
        self.keep_policy = Some(policy);
        self
    }

    /// Create the machine, not started.
    ///
    /// Input (name, image, env keys, CIDRs, labels, and what the installed smolvm can do
    /// safely) is checked first; an error there has no side effect. If `machine create`
    /// fails, whatever it may have left is deleted and its error returned. A generated name
    /// that is already taken (a kept machine of an earlier process with the same pid) is
    /// replaced by the next one, once.
    pub fn create(self) -> Result<Machine> {
        self.create_as(cleanup::Role::Machine)
    }

    /// The keep policy chosen on this builder, if one was.
    pub(crate) fn keep_policy_or_default(&self) -> Option<KeepPolicy> {
        self.keep_policy
    }

    /// The client the machine will be made with.
    pub(crate) fn client(&self) -> Smolvm {
        match &self.smolvm {
            Some(s) => s.clone(),
            None => Smolvm::from_env(),
        }
    }

    /// What describes the machine this builder makes (secret values not included), to tell
    /// two recipes apart.
    pub(crate) fn recipe_fingerprint(&self) -> Result<String> {
        Ok(format!("{:?} publish={:?}", self.options()?, self.publish))
    }

    /// The create options as they will be sent, before host ports are picked: for checks
    /// made before anything happens, and for what a golden's clones inherit.
    pub(crate) fn planned_options(&self) -> Result<CreateOptions> {
        self.options()
    }

    /// Every fixed port (`port(h, g)`) turned into `publish(g)`: a fresh host port per machine
    /// (a cold "clone" of a golden, as a fork remaps the golden's ports).
    pub(crate) fn ports_published_afresh(mut self) -> MachineBuilder {
        let fixed: Vec<u16> = self.options.ports().iter().map(|p| p.guest).collect();
        self.options = self.options.without_ports();
        self.publish.splice(0..0, fixed);
        self
    }

    /// Per-machine env and secrets on top of the recipe (a cold "clone" of a golden).
    pub(crate) fn with_extra_env(
        mut self,
        env: &[(String, String)],
        secrets: &[(String, String)],
    ) -> MachineBuilder {
        for (k, v) in env {
            self.options = self.options.env(k.clone(), v.clone());
        }
        for (k, v) in secrets {
            self.options = self.options.secret_env(k.clone(), v.clone());
        }
        self
    }

    /// [`MachineBuilder::create`] of a machine with a role (a golden).
    pub(crate) fn create_as(self, role: cleanup::Role) -> Result<Machine> {
        let smolvm = self.client();
        let options = self.options()?;
        if let Some(&guest) = self.publish.iter().find(|&&g| g == 0) {
            return Err(Error::invalid(
                "publish",
                format!("guest port {guest} is not a port"),
            ));
        }
        options.validate()?;
        let options = pick_host_ports(options, &self.publish)?;
        options.validate()?;
        // `Some(test name)` when the name is generated, so that a retry can make another.
        let (mut name, test_name) = match &self.name {
            Some(name) => (name.clone(), None),
            None => {
                let test = self.test_name.clone().unwrap_or_else(current_test_name);
                (generate_name(&config()?.prefix, &test), Some(test))
            }
        };
        validate_machine_name(&name)?;
        let dialect = smolvm.dialect()?;
        // Refusals that depend on the version (e.g. `--from` with CIDRs before 1.8.0).
        options.argv(&name, dialect)?;

        let keep = self.keep_policy.unwrap_or(config()?.keep);
        let mut reservation = cleanup::Reservation::take(&smolvm, &name)?;
        let slot = slots::acquire(&smolvm)?;
        let mut retried = false;
        loop {
            let evidence = evidence(&smolvm, &name, dialect.labels, test_name.is_some());
            cleanup::register(
                &smolvm,
                &name,
                evidence,
                keep,
                cleanup::Stage::Creating,
                role.clone(),
            )?;
            let err = match cleanup::create(&smolvm, &name, &options) {
                Ok(()) => {
                    return Ok(Machine {
                        smolvm,
                        name,
                        armed: true,
                        keep_policy: self.keep_policy,
                        evidence,
                        role,
                        ports: options.ports().to_vec(),
                        test: self.test_name.clone().unwrap_or_else(current_test_name),
                        _reservation: reservation,
                        failed: false,
                        golden: None,
                        _slot: slot,
                    })
                }
                Err(e) => e,
            };
            // Whatever the create may have left is deleted only if provably ours; a taken
            // name (often a machine kept for inspection) is never touched.
            cleanup::abandon(&smolvm, &name, &err);
            transcript::forget(&name);
            if cleanup::is_already_exists(&err) {
                if let (Some(test), false) = (&test_name, retried) {
                    retried = true;
                    name = generate_name(&config()?.prefix, test);
                    reservation = cleanup::Reservation::take(&smolvm, &name)?;
                    continue;
                }
            }
            return Err(err);
        }
    }

    /// Create the machine and start it. If starting fails, the machine is deleted and the
    /// start error returned; when it failed because a host port picked by
    /// [`MachineBuilder::publish`] was taken meanwhile, it is made again with other ports
    /// first.
    pub fn start(self) -> Result<Machine> {
        let attempts = if self.publish.is_empty() {
            1
        } else {
            PUBLISH_ATTEMPTS
        };
        let mut attempt = 1;
        loop {
            let mut machine = self.clone().create()?;
            let Err(err) = machine.smolvm.machine_start(&machine.name) else {
                return Ok(machine);
            };
            machine.armed = false;
            match machine.smolvm.machine_delete(&machine.name) {
                Ok(()) => {
                    cleanup::unregister(&machine.smolvm, &machine.name);
                    transcript::forget(&machine.name);
                }
                Err(e) => {
                    log_delete_failure(&machine.name, &e);
                    return Err(err);
                }
            }
            if attempt < attempts && is_port_taken(&err) && !self.fixed_port_taken(&err) {
                attempt += 1;
                diag::log(&format!(
                    "smolvm-harness: a published host port of machine {} was taken before it \
                     started; making it again with other ports (attempt {attempt} of {attempts})",
                    machine.name
                ));
                continue;
            }
            return Err(err);
        }
    }

    fn options(&self) -> Result<CreateOptions> {
        let mut options = match &self.source {
            Some(BuilderSource::Image(image)) => self
                .options
                .clone()
                .replace_source(Source::Image(image.clone())),
            Some(BuilderSource::Path(path)) => self
                .options
                .clone()
                .replace_source(Source::FromPath(path.clone())),
            None => self
                .options
                .clone()
                .replace_source(Source::Image(config()?.image.clone()))
                .net(),
        };
        let own = cleanup::ownership_labels();
        for (k, _) in &self.labels {
            // A user label with the same key would hide whose machine it is from the sweep.
            if own.iter().any(|(own_key, _)| own_key == k) {
                return Err(Error::invalid(
                    "label",
                    format!("{k:?} is reserved: the harness marks its machines with it"),
                ));
            }
        }
        for (k, v) in own {
            options = options.label(k, v);
        }
        for (k, v) in &self.labels {
            options = options.label(k.clone(), v.clone());
        }
        Ok(options)
    }
}

impl Machine {
    /// The machine's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The client the machine was created with.
    pub fn smolvm(&self) -> &Smolvm {
        &self.smolvm
    }

    /// Every published port (`port` and `publish` on the builder), in the order given.
    pub fn ports(&self) -> &[PortMapping] {
        &self.ports
    }

    /// The host port that reaches `guest` (the first, if several do); `None` when that guest
    /// port is not published.
    pub fn host_port(&self, guest: u16) -> Option<u16> {
        self.ports.iter().find(|p| p.guest == guest).map(|p| p.host)
    }

    /// Run `argv` in the machine. A non-zero guest exit is in [`ExecOutput::code`], not an
    /// error; see [`Smolvm::machine_exec`].
    pub fn exec<S: AsRef<str>>(&self, argv: &[S]) -> Result<ExecOutput> {
        self.smolvm
            .machine_exec(&self.name, argv, &ExecOptions::default())
    }

    /// A command to run in the machine, with env, working directory and timeout, in the
    /// manner of `std::process::Command`.
    ///
    /// ```no_run
    /// # fn f(vm: &smolvm_harness::Machine) -> smolvm_harness::Result<()> {
    /// use std::time::Duration;
    /// let out = vm
    ///     .command(&["make", "test"])
    ///     .env("CI", "1")
    ///     .workdir("/src")
    ///     .timeout(Duration::from_secs(120))
    ///     .run()?;
    /// out.assert_success();
    /// # Ok(()) }
    /// ```
    pub fn command<S: AsRef<str>>(&self, argv: &[S]) -> MachineCommand<'_> {
        MachineCommand {
            machine: self,
            argv: argv.iter().map(|a| a.as_ref().to_string()).collect(),
            options: ExecOptions::default(),
        }
    }

    /// Run a shell script: `sh -c SCRIPT`.
    pub fn sh(&self, script: &str) -> Result<ExecOutput> {
        self.exec(&["sh", "-c", script])
    }

    /// Copy a host file into the machine (`machine cp HOST NAME:GUEST`). An empty path is
    /// [`Error::InvalidInput`], as in [`Smolvm::machine_cp`].
    pub fn copy_in(&self, host: impl AsRef<Path>, guest: &str) -> Result<()> {
        self.smolvm.machine_cp(
            CpPath::host(host.as_ref()),
            CpPath::guest(self.name.as_str(), guest),
        )
    }

    /// Copy a file out of the machine (`machine cp NAME:GUEST HOST`). An empty path is
    /// [`Error::InvalidInput`].
    pub fn copy_out(&self, guest: &str, host: impl AsRef<Path>) -> Result<()> {
        self.smolvm.machine_cp(
            CpPath::guest(self.name.as_str(), guest),
            CpPath::host(host.as_ref()),
        )
    }

    /// Start the machine (again): `machine start`.
    pub fn start(&self) -> Result<()> {
        self.smolvm.machine_start(&self.name)
    }

    /// Stop the machine: `machine stop`. It still exists and can be started again.
    pub fn stop(&self) -> Result<()> {
        self.smolvm.machine_stop(&self.name)
    }

    /// `machine status --json`; `None` if the machine no longer exists.
    pub fn status(&self) -> Result<Option<MachineInfo>> {
        self.smolvm.machine_status(&self.name)
    }

    /// The smolvm commands run for this machine in this process, oldest first (at most
    /// [`crate::transcript::TRANSCRIPT_LEN`]).
    pub fn transcript(&self) -> Vec<TranscriptEntry> {
        transcript::transcript(&self.name)
    }

    /// Delete the machine now and return the error, which drop could only log. On success
    /// the machine is forgotten by the cleanup machinery; on failure it stays registered, so
    /// the exit hook and the next run's sweep try again.
    #[doc(alias = "close")]
    pub fn delete(mut self) -> Result<()> {
        self.armed = false;
        cleanup::delete(&self.smolvm, &self.name, &self.role)?;
        // (Only a golden can stay, and a golden's guard is never given to a user.)
        cleanup::unregister(&self.smolvm, &self.name);
        transcript::forget(&self.name);
        Ok(())
    }

    /// Keep the machine: never delete it, not on drop, not at exit, not in a later sweep.
    /// Prints the command that deletes it and returns its name.
    pub fn keep(mut self) -> String {
        self.armed = false;
        self.mark_kept();
        transcript::forget(&self.name);
        std::mem::take(&mut self.name)
    }

    /// Switch deletion off (`true`) or back on (`false`), in place; for debugging. While
    /// off, the machine counts as kept (see [`Machine::keep`]), so the exit hook and sweeps
    /// leave it alone too.
    pub fn disable_cleanup(&mut self, disable: bool) {
        if disable && self.armed {
            self.armed = false;
            self.mark_kept();
        } else if !disable && !self.armed {
            let keep = self.keep_policy.unwrap_or_else(|| config_or_default().keep);
            let registered = cleanup::register(
                &self.smolvm,
                &self.name,
                self.evidence,
                keep,
                cleanup::Stage::Created,
                self.role.clone(),
            );
            match registered {
                Ok(()) => {
                    self.armed = true;
                    if let Some(link) = &self.golden {
                        link.unkept();
                    }
                }
                Err(e) => diag::log(&format!(
                    "smolvm-harness: could not re-enable cleanup of machine {}: {e}",
                    self.name
                )),
            }
        }
    }

    fn mark_kept(&self) {
        cleanup::mark_kept(&self.smolvm, &self.name);
        if let Some(link) = &self.golden {
            // A golden deleted under a kept clone would break it.
            link.kept();
        }
        diag::log(&format!(
            "smolvm-harness: keeping machine {}; delete it with: {}",
            self.name,
            delete_command_for(&self.smolvm, &self.name, &self.role)
        ));
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        self.armed = false;
        let failing = std::thread::panicking() || self.failed;
        let policy = self.keep_policy.unwrap_or_else(|| config_or_default().keep);
        let action = drop_action(policy, failing);
        if failing {
            let transcript = transcript::transcript(&self.name);
            // Before the delete: the console log goes with the machine. A runner is user code.
            let saved = catch_unwind(AssertUnwindSafe(|| {
                artifacts::save(&self.smolvm, &self.name, &self.test, &transcript)
            }))
            .unwrap_or_else(|_| artifacts::Saved::Failed("the runner panicked".into()));
            diag::log(&failure_report(
                &self.smolvm,
                &self.name,
                &transcript,
                &saved,
                action,
            ));
        }
        if action == DropAction::Keep {
            self.mark_kept();
            transcript::forget(&self.name);
            return;
        }
        // A panic here while the test is already unwinding would abort the whole test
        // process (and every other test's cleanup); a runner is user code and may panic.
        let result = catch_unwind(AssertUnwindSafe(|| {
            cleanup::delete(&self.smolvm, &self.name, &self.role)
        }));
        match result {
            Ok(Ok(true)) => cleanup::unregister(&self.smolvm, &self.name),
            // A golden with clones someone else made stays (said by `delete`).
            Ok(Ok(false)) => cleanup::mark_kept(&self.smolvm, &self.name),
            Ok(Err(e)) => log_delete_failure(&self.name, &e),
            Err(_) => diag::log(&format!(
                "smolvm-harness: failed to delete machine {}: the runner panicked",
                self.name
            )),
        }
        transcript::forget(&self.name);
    }
}

/// What a guard does when it drops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DropAction {
    Delete,
    Keep,
}

fn drop_action(policy: KeepPolicy, failing: bool) -> DropAction {
    if policy.keeps(failing) {
        DropAction::Keep
    } else {
        DropAction::Delete
    }
}

/// The block printed when a machine's test fails: enough to find out what happened without
/// rerunning.
fn failure_report(
    smolvm: &Smolvm,
    name: &str,
    transcript: &[TranscriptEntry],
    saved: &artifacts::Saved,
    action: DropAction,
) -> String {
    let mut out = format!("smolvm-harness: test failed; machine {name}:\n");
    if transcript.is_empty() {
        out.push_str("  no smolvm commands recorded for it\n");
    } else {
        out.push_str("  last smolvm commands (oldest first):\n");
        for entry in transcript {
            out.push_str(&format!("    {entry}\n"));
        }
    }
    out.push_str(&saved.report_lines(&data_dir_command(smolvm, name)));
    out.push_str(match action {
        DropAction::Keep => "  kept for inspection (SMOLVM_HARNESS_KEEP)",
        DropAction::Delete => {
            "  deleting it now; set SMOLVM_HARNESS_KEEP=on-failure to keep it for inspection"
        }
    });
    out
}

/// The command that deletes `name`, as the user would type it: this client's program and
/// dialect, and its state-locating env (a machine in an isolated data dir is not found
/// without it).
pub(crate) fn delete_command(smolvm: &Smolvm, name: &str) -> String {
    if let Some(url) = smolvm.remote_url() {
        return curl_command(url, "DELETE", &format!("/api/v1/machines/{name}"));
    }
    if name_flag(smolvm) {
        command_text(smolvm, &["machine", "delete", "-f", "--name", name])
    } else {
        command_text(smolvm, &["machine", "delete", "-f", name])
    }
}

/// [`delete_command`] for a machine of this role: a golden is deleted with `--cascade` (its
/// clones first), never with a bare `delete -f`, which would leave its clones broken.
pub(crate) fn delete_command_for(smolvm: &Smolvm, name: &str, role: &cleanup::Role) -> String {
    match role {
        cleanup::Role::Golden { .. } => cascade_command(smolvm, name),
        _ => delete_command(smolvm, name),
    }
}

/// `machine delete --cascade --name NAME`, as the user would type it.
pub(crate) fn cascade_command(smolvm: &Smolvm, name: &str) -> String {
    if let Some(url) = smolvm.remote_url() {
        return curl_command(
            url,
            "DELETE",
            &format!("/api/v1/machines/{name}?cascade=true"),
        );
    }
    command_text(smolvm, &["machine", "delete", "--cascade", "--name", name])
}

fn data_dir_command(smolvm: &Smolvm, name: &str) -> String {
    if let Some(url) = smolvm.remote_url() {
        return format!(
            "`smolvm machine data-dir --name {name}` on the host of {url} (the API does not \
             serve it)"
        );
    }
    if name_flag(smolvm) {
        command_text(smolvm, &["machine", "data-dir", "--name", name])
    } else {
        command_text(smolvm, &["machine", "data-dir", name])
    }
}

/// The request as a `curl` command line, for a machine of a `smolvm serve` client (TLS
/// client files named by the variables, never inlined).
fn curl_command(url: &str, method: &str, path: &str) -> String {
    let mut words = vec![
        "curl".to_string(),
        "-fsS".to_string(),
        "-X".into(),
        method.into(),
    ];
    if let Some(sock) = url.strip_prefix("unix://") {
        words.push("--unix-socket".into());
        words.push(shell_word(sock));
        words.push(shell_word(&format!("http://localhost{path}")));
    } else {
        if url.starts_with("https://") {
            words.extend(
                [
                    "--cert",
                    "\"$SMOLVM_HARNESS_TLS_CERT\"",
                    "--key",
                    "\"$SMOLVM_HARNESS_TLS_KEY\"",
                    "--cacert",
                    "\"$SMOLVM_HARNESS_TLS_CA\"",
                ]
                .map(str::to_string),
            );
        }
        words.push(shell_word(&format!("{url}{path}")));
    }
    words.join(" ")
}

/// Names are positional before smolvm 1.0.2. When the version is unknown, the current form.
fn name_flag(smolvm: &Smolvm) -> bool {
    smolvm.dialect().map_or(true, |d| d.name_flag)
}

/// Only variables that say where smolvm keeps its state are shown (one list with the
/// ledger's): they are paths, and the command is wrong without them. Any other process env is
/// left out, since it might be a secret.
fn command_text(smolvm: &Smolvm, args: &[&str]) -> String {
    let mut words: Vec<String> = cleanup::state_env_to_show(smolvm)
        .into_iter()
        .map(|(k, v)| shell_word(&format!("{k}={v}")))
        .collect();
    words.push(shell_word(&smolvm.program().display().to_string()));
    words.extend(args.iter().map(|a| shell_word(a)));
    words.join(" ")
}

/// Quote for a POSIX shell, only when needed, so the usual command stays copy-pasteable and
/// readable.
fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

fn log_delete_failure(name: &str, err: &Error) {
    diag::log(&format!(
        "smolvm-harness: failed to delete machine {name}: {err}"
    ));
}

/// Why a machine of this name would be provably ours, decided before `machine create`:
/// labels where smolvm has them; else a generated name; else a chosen name only if no machine
/// had it just before (if the listing fails, assume it did: the cost is only a skipped
/// cleanup, never a deleted stranger).
fn evidence(smolvm: &Smolvm, name: &str, labels: bool, generated: bool) -> cleanup::Evidence {
    if labels {
        cleanup::Evidence::OwnerLabel
    } else if generated {
        cleanup::Evidence::GeneratedName
    } else {
        match smolvm.machine_list() {
            Ok(list) if !list.iter().any(|m| m.name == name) => {
                cleanup::Evidence::AbsentBeforeCreate
            }
            _ => cleanup::Evidence::None,
        }
    }
}

/// `options` with a free host port for each of `guests`: one the kernel hands out for
/// `127.0.0.1:0` (where smolvm ≥ 1.1 binds), not already asked for, released at once so
/// smolvm can bind it. Another process may take it before the start; `start` retries then.
fn pick_host_ports(mut options: CreateOptions, guests: &[u16]) -> Result<CreateOptions> {
    let mut taken: Vec<u16> = options.ports().iter().map(|p| p.host).collect();
    for &guest in guests {
        let mut picked = None;
        for _ in 0..16 {
            let port = std::net::TcpListener::bind(("127.0.0.1", 0))
                .and_then(|l| l.local_addr())
                .map_err(|source| Error::Io {
                    action: "pick a free host port",
                    path: PathBuf::from("127.0.0.1:0"),
                    source,
                })?
                .port();
            if !taken.contains(&port) {
                picked = Some(port);
                break;
            }
        }
        let Some(port) = picked else {
            return Err(Error::invalid(
                "publish",
                "the kernel kept handing out host ports already in use by this machine",
            ));
        };
        taken.push(port);
        options = options.port(port, guest);
    }
    Ok(options)
}

impl MachineBuilder {
    /// Whether the taken port is one given with `port()`: making the machine again with the
    /// same fixed port cannot help. smolvm names the port when another of its machines holds
    /// it; otherwise each fixed port is tried on the loopback.
    fn fixed_port_taken(&self, err: &Error) -> bool {
        let fixed: Vec<u16> = self.options.ports().iter().map(|p| p.host).collect();
        if fixed.is_empty() {
            return false;
        }
        if let Error::Failed { stderr, .. } = err {
            let text = String::from_utf8_lossy(stderr);
            let named = text
                .split("host port ")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse::<u16>().ok());
            if let Some(port) = named {
                return fixed.contains(&port);
            }
        }
        fixed
            .iter()
            .any(|&p| std::net::TcpListener::bind(("127.0.0.1", p)).is_err())
    }
}

/// smolvm's words for a host port that is taken at start: by another of its machines, or by
/// any other process (virtio-net's bind, 1.1+).
fn is_port_taken(err: &Error) -> bool {
    match err {
        Error::Failed { stderr, .. } => {
            let text = String::from_utf8_lossy(stderr);
            text.contains("is already in use by running machine")
                || text.contains("Address already in use")
        }
        _ => false,
    }
}

/// A command to run in a [`Machine`], built like `std::process::Command` (`&mut self`
/// setters, then [`MachineCommand::run`]). Made by [`Machine::command`].
#[derive(Debug)]
#[must_use = "a MachineCommand does nothing until .run() is called"]
pub struct MachineCommand<'a> {
    machine: &'a Machine,
    argv: Vec<String>,
    options: ExecOptions,
}

impl MachineCommand<'_> {
    /// Append an argument.
    pub fn arg(&mut self, arg: impl AsRef<str>) -> &mut Self {
        self.argv.push(arg.as_ref().to_string());
        self
    }

    /// Append arguments.
    pub fn args<I, S>(&mut self, args: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.argv
            .extend(args.into_iter().map(|a| a.as_ref().to_string()));
        self
    }

    /// Set a guest environment variable for this command (`--env=K=V`). The value is
    /// redacted as [`crate::ExecOptions::env`] says (output scrubbing from 4 bytes).
    pub fn env(&mut self, key: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.options = std::mem::take(&mut self.options).env(key, value);
        self
    }

    /// Set a secret guest environment variable for this command, off every command line
    /// (see [`crate::ExecOptions::secret_env`]).
    pub fn secret_env(&mut self, key: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.options = std::mem::take(&mut self.options).secret_env(key, value);
        self
    }

    /// Run in this guest directory (`-w`).
    #[doc(alias = "current_dir")]
    pub fn workdir(&mut self, dir: impl Into<String>) -> &mut Self {
        self.options = std::mem::take(&mut self.options).workdir(dir);
        self
    }

    /// Guest-side limit (`--timeout`): smolvm kills the command and it exits 124.
    pub fn timeout(&mut self, timeout: Duration) -> &mut Self {
        self.options = std::mem::take(&mut self.options).timeout(timeout);
        self
    }

    /// Run it and wait. A non-zero guest exit is in [`ExecOutput::code`], not an error.
    pub fn run(&self) -> Result<ExecOutput> {
        self.machine
            .smolvm
            .machine_exec(&self.machine.name, &self.argv, &self.options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::ScriptedRunner;

    #[test]
    fn drop_policy() {
        use DropAction::*;
        assert_eq!(drop_action(KeepPolicy::Never, true), Delete);
        assert_eq!(drop_action(KeepPolicy::Never, false), Delete);
        assert_eq!(drop_action(KeepPolicy::OnFailure, true), Keep);
        assert_eq!(drop_action(KeepPolicy::OnFailure, false), Delete);
        assert_eq!(drop_action(KeepPolicy::Always, true), Keep);
        assert_eq!(drop_action(KeepPolicy::Always, false), Keep);
    }

    #[test]
    fn commands_follow_the_dialect_and_show_state_env_only() {
        let new = Smolvm::new("smolvm").with_runner(ScriptedRunner::new());
        assert_eq!(
            delete_command(&new, "m1"),
            "smolvm machine delete -f --name m1"
        );
        assert_eq!(
            data_dir_command(&new, "m1"),
            "smolvm machine data-dir --name m1"
        );
        let old = Smolvm::new("smolvm").with_runner(ScriptedRunner::new().version("0.8.0"));
        assert_eq!(delete_command(&old, "m1"), "smolvm machine delete -f m1");
        assert_eq!(data_dir_command(&old, "m1"), "smolvm machine data-dir m1");

        let real = Smolvm::new("/opt/smol vm/smolvm")
            .with_version(crate::Version::new(1, 9, 2))
            .with_process_env("SMOLVM_DATA_DIR", "/tmp/state")
            .with_process_env("API_TOKEN", "hunter22");
        let cmd = delete_command(&real, "m1");
        assert_eq!(
            cmd,
            "SMOLVM_DATA_DIR=/tmp/state '/opt/smol vm/smolvm' machine delete -f --name m1"
        );
        assert!(!cmd.contains("hunter22"));
        // The fake CLI's state is what locates its machines: shown too.
        let fake = Smolvm::new("/t/smolvm-fake")
            .with_version(crate::Version::new(1, 9, 2))
            .with_process_env("SMOLVM_FAKE_STATE", "/tmp/fake state");
        assert_eq!(
            delete_command(&fake, "m1"),
            "'SMOLVM_FAKE_STATE=/tmp/fake state' /t/smolvm-fake machine delete -f --name m1"
        );
    }

    #[test]
    fn failure_report_names_machine_commands_and_logs() {
        let smolvm = Smolvm::new("smolvm").with_runner(ScriptedRunner::new());
        let entries = vec![TranscriptEntry {
            command: "smolvm machine exec --name m1 -- false".into(),
            outcome: "exit 1".into(),
            duration: Duration::from_millis(12),
        }];
        let off = artifacts::Saved::Off;
        let text = failure_report(&smolvm, "m1", &entries, &off, DropAction::Keep);
        assert!(text.contains("machine m1"), "{text}");
        assert!(
            text.contains("smolvm machine exec --name m1 -- false -> exit 1 (12ms)"),
            "{text}"
        );
        assert!(text.contains("agent-console.log"), "{text}");
        assert!(text.contains("smolvm machine data-dir --name m1"), "{text}");
        assert!(text.contains("kept"), "{text}");
        let text = failure_report(&smolvm, "m1", &[], &off, DropAction::Delete);
        assert!(text.contains("no smolvm commands"), "{text}");
        assert!(text.contains("deleting"), "{text}");
    }

    #[test]
    fn already_exists_in_both_wordings() {
        let fail = |stderr: &str| Error::Failed {
            command: crate::error::CommandLine::new("smolvm", &[]),
            code: Some(1),
            stdout: vec![],
            stderr: stderr.as_bytes().to_vec(),
        };
        assert!(cleanup::is_already_exists(&fail(
            "Error: config operation failed: create machine: machine 'a' already exists\n"
        )));
        assert!(cleanup::is_already_exists(&fail(
            "Error: config operation failed: create machine: machine 'a' already exists or is being created\n"
        )));
        assert!(!cleanup::is_already_exists(&fail(
            "Error: vm not found: a\n"
        )));
    }
}
