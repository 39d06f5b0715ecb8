//! Golden machines: provision once, fork a copy-on-write clone per test.
//!
//! A [`Golden`] is a machine created, started with `--forkable` and provisioned once; each
//! [`Golden::fork`] is `machine fork`, a clone that is an ordinary [`Machine`] guard. Where
//! fork cannot be used (smolvm before 1.7.6, a platform without fork, a smoke fork that
//! failed), the same calls give a cold machine built from the same recipe instead, and say
//! once why.
//!
//! Teardown order is a guarantee, in every layer (drop, exit hook, signal thread, crash
//! watcher, next-run sweep): clones are deleted before their golden, and a golden is deleted
//! with `--cascade`, never with a bare `delete -f` (which would leave live clones broken). A
//! kept clone keeps its golden.

use std::collections::HashMap;
use std::fmt;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::cleanup::{self, Role, SharedGolden};
use crate::cli::{ForkOptions, Smolvm};
use crate::config::{config, KeepPolicy};
use crate::diag;
use crate::error::{Error, Result};
use crate::machine::{Machine, MachineBuilder};
use crate::names::{current_test_name, fnv1a_64, generate_name};
use crate::pack::Pack;
use crate::runner::lock;
use crate::slots;
use crate::state_dir::{self, Access};

/// What provisions a golden: run once on it, before its first fork.
type Provision = Arc<dyn Fn(&Machine) -> Result<()> + Send + Sync>;

/// How long a golden shared by a run ([`Golden::shared`]) outlives the last process that
/// held it, unless `SMOLVM_HARNESS_GOLDEN_GRACE` says otherwise.
pub const DEFAULT_GOLDEN_GRACE: Duration = Duration::from_secs(30);

/// A provisioned machine that tests fork clones of. Made by [`Golden::builder`] or
/// [`Golden::shared`]; see the module docs of the crate ("Golden machines") for the pattern.
///
/// ```
/// use smolvm_harness::{Golden, Smolvm};
///
/// let golden = Golden::builder()
///     .smolvm(Smolvm::simulated())
///     .image("alpine:latest")
///     .net()
///     .provision(|m| m.sh("echo provisioned > /etc/app.conf")?.check())
///     .create()?;
/// let a = golden.fork()?;
/// let b = golden.fork()?;
/// assert_eq!(a.sh("cat /etc/app.conf")?.stdout_str(), "provisioned\n");
/// a.sh("echo mine > /etc/app.conf")?.assert_success();
/// assert_eq!(b.sh("cat /etc/app.conf")?.stdout_str(), "provisioned\n"); // copy-on-write
/// # Ok::<(), smolvm_harness::Error>(())
/// ```
#[derive(Clone)]
pub struct Golden {
    inner: Arc<Inner>,
}

struct Inner {
    smolvm: Smolvm,
    /// What a cold machine is made from (and what the golden was made from).
    recipe: MachineBuilder,
    provision: Option<Provision>,
    mode: Mode,
    /// Clones that stay (kept): the golden stays with them.
    kept_clones: AtomicUsize,
}

enum Mode {
    /// Clones are forks of the golden machine `name`.
    Fork {
        name: String,
        /// The golden's guard, when this process made it and ends it. A shared golden joined
        /// from another process has none: the run retires it.
        guard: Mutex<Option<Box<Machine>>>,
    },
    /// Every fork is a cold machine made from the recipe, for this reason.
    Cold { reason: String },
}

impl fmt::Debug for Golden {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Golden");
        match &self.inner.mode {
            Mode::Fork { name, .. } => d.field("forks", &name),
            Mode::Cold { reason } => d.field("cold", &reason),
        };
        d.finish()
    }
}

/// Builds a [`Golden`]: every source, network, env, secret, port, volume and sizing option of
/// [`MachineBuilder`], the client, and the provisioning step.
#[derive(Clone)]
#[must_use]
pub struct GoldenBuilder {
    machine: MachineBuilder,
    provision: Option<Provision>,
}

impl fmt::Debug for GoldenBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GoldenBuilder")
            .field("machine", &self.machine)
            .field("provision", &self.provision.is_some())
            .finish()
    }
}

macro_rules! delegate {
    ($($(#[$doc:meta])* $name:ident($($arg:ident: $ty:ty),*);)*) => {
        $(
            $(#[$doc])*
            pub fn $name(mut self, $($arg: $ty),*) -> GoldenBuilder {
                self.machine = self.machine.$name($($arg),*);
                self
            }
        )*
    };
}

impl GoldenBuilder {
    delegate! {
        /// The image (see [`MachineBuilder::image`]).
        image(image: impl Into<String>);
        /// A pack as the source (see [`MachineBuilder::from_pack`]).
        from_pack(pack: &Pack);
        /// A `.smolmachine` file as the source (see [`MachineBuilder::from_path`]).
        from_path(path: impl Into<PathBuf>);
        /// Networking on (see [`MachineBuilder::net`]).
        net();
        /// Guest env of the golden, inherited by every clone (see [`MachineBuilder::env`]).
        env(key: impl Into<String>, value: impl Into<String>);
        /// A secret of the golden, inherited by every clone (see
        /// [`MachineBuilder::secret_env`]). Note that whatever the golden's processes hold in
        /// memory at the first fork is in every clone too.
        secret_env(key: impl Into<String>, value: impl Into<String>);
        /// Egress to a CIDR (see [`MachineBuilder::allow_cidr`]).
        allow_cidr(cidr: impl Into<String>);
        /// Egress to a host (see [`MachineBuilder::allow_host`]).
        allow_host(host: impl Into<String>);
        /// vCPUs, for the golden and every clone (see [`MachineBuilder::cpus`]).
        cpus(cpus: u32);
        /// Memory (see [`MachineBuilder::mem_mib`]).
        mem_mib(mib: u32);
        /// Storage disk (see [`MachineBuilder::storage_gib`]). Keep it small: a fork's cost
        /// grows with the golden's data on disk.
        storage_gib(gib: u32);
        /// Overlay disk (see [`MachineBuilder::overlay_gib`]).
        overlay_gib(gib: u32);
        /// A published port of the golden (see [`MachineBuilder::port`]); each clone gets it
        /// remapped to a fresh host port, read with [`Machine::host_port`].
        port(host: u16, guest: u16);
        /// A guest port to publish on a free host port (see [`MachineBuilder::publish`]);
        /// remapped per clone like [`GoldenBuilder::port`].
        publish(guest: u16);
        /// A host directory (see [`MachineBuilder::volume`]). Clones share it with the golden
        /// and with each other.
        volume(host: impl Into<PathBuf>, guest: impl Into<String>);
        /// A read-only host directory (see [`MachineBuilder::volume_ro`]).
        volume_ro(host: impl Into<PathBuf>, guest: impl Into<String>);
        /// Create flags the crate does not model (see [`MachineBuilder::extra_args`]).
        extra_args(args: Vec<String>);
        /// A label (see [`MachineBuilder::label`]). smolvm copies labels into clones.
        label(key: impl Into<String>, value: impl Into<String>);
        /// The client (see [`MachineBuilder::smolvm`]).
        smolvm(smolvm: Smolvm);
        /// The keep policy of the golden and of its clones (see
        /// [`MachineBuilder::keep_policy`]).
        keep_policy(policy: KeepPolicy);
    }

    /// Run `f` once on the golden after it started, before its first fork (install packages,
    /// copy the build, start services). No exec runs in the golden after it: every exec of
    /// `f` must have returned (a process `f` leaves running in the background is frozen
    /// mid-way and resumes in each clone). In the cold fallback, `f` runs on every machine.
    pub fn provision(
        mut self,
        f: impl Fn(&Machine) -> Result<()> + Send + Sync + 'static,
    ) -> GoldenBuilder {
        self.provision = Some(Arc::new(f));
        self
    }

    /// Make the golden: create, start with `--forkable`, provision, and fork one clone to
    /// check that forking works here (deleted at once). Where fork cannot be used, no
    /// machine is made now, and [`Golden::fork`] makes cold machines (said once per process).
    /// Input is checked first, with no side effect on error.
    pub fn create(self) -> Result<Golden> {
        self.create_with(None, None)
    }

    /// `name_hint`: what generated names of the golden say (a shared golden's key).
    fn create_with(self, shared: Option<SharedGolden>, name_hint: Option<&str>) -> Result<Golden> {
        let smolvm = self.machine.client();
        let options = self.machine.planned_options()?;
        options.validate()?;
        let dialect = smolvm.dialect()?;
        options.check_version(dialect)?;
        let cold = |reason: String| Golden {
            inner: Arc::new(Inner {
                smolvm: smolvm.clone(),
                recipe: self.machine.clone(),
                provision: self.provision.clone(),
                mode: Mode::Cold { reason },
                kept_clones: AtomicUsize::new(0),
            }),
        };
        if let Some(reason) = no_fork_reason(dialect.version) {
            say_cold_once(&reason, &reason);
            return Ok(cold(reason));
        }
        let role = Role::Golden { shared };
        let mut guard = self
            .machine
            .clone()
            .test_name(format!(
                "golden-{}",
                name_hint.unwrap_or(&current_test_name())
            ))
            .create_as(role)?;
        let made =
            smolvm
                .machine_start_forkable(guard.name())
                .and_then(|()| match &self.provision {
                    Some(provision) => provision(&guard),
                    None => Ok(()),
                });
        if let Err(e) = made {
            // Said as the golden's, with its transcript and console log saved as for a
            // failing test, before the guard deletes it: every test that needed this golden
            // fails with this error.
            diag::log(&format!(
                "smolvm-harness: making golden machine {} failed (start --forkable or its \
                 provisioning step): {e}",
                guard.name()
            ));
            guard.failed = true;
            drop(guard);
            return Err(e);
        }
        let golden = Golden {
            inner: Arc::new(Inner {
                smolvm: smolvm.clone(),
                recipe: self.machine.clone(),
                provision: self.provision.clone(),
                mode: Mode::Fork {
                    name: guard.name().to_string(),
                    guard: Mutex::new(Some(Box::new(guard))),
                },
                kept_clones: AtomicUsize::new(0),
            }),
        };
        // The first fork freezes the golden, which then runs nothing: it gives its machine
        // slot to the clone (with a cap of 1, the smoke fork could not run otherwise).
        if let Mode::Fork { guard, .. } = &golden.inner.mode {
            if let Some(g) = lock(guard).as_mut() {
                g._slot = None;
            }
        }
        // A smoke fork: the golden is frozen by it either way, so its outcome decides. Only
        // smolvm refusing it means "cannot fork here"; anything else (a timeout, a full
        // machine cap, a missing binary) is an error, and says nothing about forking.
        match golden.fork_clone(&ForkOptions::default()) {
            Ok(clone) => {
                clone.delete()?;
                Ok(golden)
            }
            Err(e @ Error::Failed { .. }) => {
                say_cold_once(
                    "a first fork failed",
                    &format!(
                        "a first fork of a golden failed on smolvm {}: {e}",
                        dialect.version
                    ),
                );
                let reason = format!("a first fork failed on smolvm {}", dialect.version);
                // Dropping the only handle deletes the golden (with --cascade).
                drop(golden);
                Ok(cold(reason))
            }
            Err(e) => Err(e),
        }
    }
}

impl Golden {
    /// Start describing a golden.
    pub fn builder() -> GoldenBuilder {
        GoldenBuilder {
            machine: Machine::builder(),
            provision: None,
        }
    }

    /// A fresh clone for the calling test: an ordinary [`Machine`] guard (exec, cp, readiness,
    /// ports remapped for the clone, transcript, artifacts, keep policy, every cleanup layer),
    /// named like any generated machine. In the cold fallback, a machine made and provisioned
    /// from the same recipe.
    pub fn fork(&self) -> Result<Machine> {
        self.fork_with(ForkOptions::default())
    }

    /// [`Golden::fork`] with env and secrets for this clone only (`fork --env`,
    /// `--secret-env`; smolvm ≥ 1.7.0, which forking needs anyway). In the cold fallback they
    /// are the machine's own env and secrets.
    pub fn fork_with(&self, options: ForkOptions) -> Result<Machine> {
        options.validate()?;
        match &self.inner.mode {
            Mode::Fork { .. } => self.fork_clone(&options),
            Mode::Cold { .. } => {
                // Like a clone's, each machine's ports are fresh host ports: the recipe's
                // fixed ones would collide from the second machine on.
                let machine = self
                    .inner
                    .recipe
                    .clone()
                    .ports_published_afresh()
                    .with_extra_env(options.env_pairs(), options.secret_pairs())
                    .start()?;
                if let Some(provision) = &self.inner.provision {
                    provision(&machine)?;
                }
                Ok(machine)
            }
        }
    }

    /// Whether [`Golden::fork`] forks (`true`) or makes cold machines (`false`; the reason
    /// was printed once).
    pub fn forks(&self) -> bool {
        matches!(self.inner.mode, Mode::Fork { .. })
    }

    /// The golden machine's name, when it forks.
    pub fn name(&self) -> Option<&str> {
        match &self.inner.mode {
            Mode::Fork { name, .. } => Some(name),
            Mode::Cold { .. } => None,
        }
    }

    /// The golden of `key` for the whole test run: made (and provisioned) once per process
    /// under `cargo test`, and once per run across processes when the run has an id (under
    /// nextest, `NEXTEST_RUN_ID`; otherwise set `SMOLVM_HARNESS_RUN_ID`), like
    /// [`Pack::shared`]. `build` describes it, starting from [`Golden::builder`]; it runs in
    /// every process, and only the first one to need the golden provisions it.
    ///
    /// It is never leaked: a golden of one process is deleted at its exit (after its
    /// clones); a golden shared across processes is deleted once no process of the run has
    /// held it for `SMOLVM_HARNESS_GOLDEN_GRACE` (default 30 s), by the crash watcher (also
    /// when every test process was killed), or else by the next run's sweep. A later test
    /// that needs it after that makes a new one.
    ///
    /// One key, one recipe: a second call with the same key and another recipe (image,
    /// options, client) is [`Error::InvalidInput`] in the process that made the golden (the
    /// provisioning closure cannot be compared, and in another process of the run the first
    /// recipe wins). A golden that could not be made is not remembered: the next test that
    /// needs it tries again, and fails the same way if the cause stays; the failure is said
    /// as the golden's, and its transcript and console log are saved as for a failing test.
    ///
    /// ```
    /// use smolvm_harness::{Golden, Smolvm};
    ///
    /// // One smolvm (here one simulation): a golden is shared per key and smolvm.
    /// let smolvm = Smolvm::simulated();
    /// let build = |g: smolvm_harness::GoldenBuilder| g.smolvm(smolvm.clone()).image("alpine").net();
    /// let a = Golden::shared("doc-shared", build)?;
    /// let b = Golden::shared("doc-shared", build)?;
    /// assert!(std::sync::Arc::ptr_eq(&a, &b));
    /// # Ok::<(), smolvm_harness::Error>(())
    /// ```
    pub fn shared(
        key: &str,
        build: impl FnOnce(GoldenBuilder) -> GoldenBuilder,
    ) -> Result<Arc<Golden>> {
        validate_key(key)?;
        let builder = build(Golden::builder());
        let smolvm = builder.machine.client();
        let scope = cleanup::target_digest(&smolvm)
            .unwrap_or_else(|| format!("in-process-{}", smolvm.runner_id()));
        let slot = Arc::clone(
            lock(shared_cache())
                .entry(format!("{key}\0{scope}"))
                .or_default(),
        );
        // Held while making it: a second caller waits; other keys are not held up.
        let mut slot = lock(&slot);
        let recipe = builder.machine.recipe_fingerprint()?;
        if let Some((first, golden)) = slot.as_ref() {
            if *first != recipe {
                return Err(Error::invalid(
                    "golden key",
                    format!(
                        "{key:?} was first made from another recipe (image, options or \
                         client); give each recipe its own key"
                    ),
                ));
            }
            return Ok(Arc::clone(golden));
        }
        let run = cleanup::run_id();
        let golden = match (run, cleanup::target_digest(&smolvm)) {
            (Some(run), Some(target)) => shared_across_processes(builder, key, &run, &target)?,
            _ => builder.create_with(None, Some(key))?,
        };
        let golden = Arc::new(golden);
        *slot = Some((recipe, Arc::clone(&golden)));
        Ok(golden)
    }

    /// Fork a registered clone, as a guard.
    fn fork_clone(&self, options: &ForkOptions) -> Result<Machine> {
        let Mode::Fork { name: golden, .. } = &self.inner.mode else {
            return Err(Error::invalid("fork", "this golden does not fork"));
        };
        let smolvm = &self.inner.smolvm;
        let test = current_test_name();
        let name = generate_name(&config()?.prefix, &test);
        let keep = self
            .inner
            .recipe
            .keep_policy_or_default()
            .unwrap_or(config()?.keep);
        let reservation = cleanup::Reservation::take(smolvm, &name)?;
        let slot = slots::acquire(smolvm)?;
        let role = Role::Clone {
            golden: golden.clone(),
        };
        cleanup::register(
            smolvm,
            &name,
            cleanup::Evidence::GeneratedName,
            keep,
            cleanup::Stage::Creating,
            role.clone(),
        )?;
        let ports = match cleanup::fork(smolvm, golden, &name, options) {
            Ok(ports) => ports,
            Err(e) => {
                cleanup::abandon(smolvm, &name, &e);
                crate::transcript::forget(&name);
                return Err(e);
            }
        };
        Ok(Machine {
            smolvm: smolvm.clone(),
            name,
            armed: true,
            keep_policy: self.inner.recipe.keep_policy_or_default(),
            evidence: cleanup::Evidence::GeneratedName,
            role,
            ports,
            test,
            _reservation: reservation,
            failed: false,
            golden: Some(Arc::new(CloneLink {
                inner: Arc::clone(&self.inner),
                kept: AtomicUsize::new(0),
            })),
            _slot: slot,
        })
    }
}

/// A clone's hold on its golden (in [`Machine`]): the golden goes only after every clone,
/// and stays if one of them is kept.
pub(crate) struct CloneLink {
    inner: Arc<Inner>,
    /// 1 while this clone is kept.
    kept: AtomicUsize,
}

impl CloneLink {
    /// The clone is kept: so is the golden.
    pub(crate) fn kept(&self) {
        if self.kept.swap(1, Ordering::SeqCst) == 0 {
            self.inner.kept_clones.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// The clone is deleted after all (cleanup switched back on).
    pub(crate) fn unkept(&self) {
        if self.kept.swap(0, Ordering::SeqCst) == 1 {
            self.inner.kept_clones.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let Mode::Fork { guard, .. } = &mut self.mode else {
            return;
        };
        let Some(guard) = guard.get_mut().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        let kept = self.kept_clones.load(Ordering::SeqCst);
        if kept > 0 {
            diag::log(&format!(
                "smolvm-harness: golden machine {} stays because {kept} clone(s) of it are kept",
                guard.name()
            ));
            let _ = guard.keep();
        }
        // Otherwise the guard's drop deletes it with --cascade; every clone of ours is gone,
        // since each held this `Inner`.
    }
}

/// Why this smolvm cannot fork a golden for every test, if it cannot.
fn no_fork_reason(version: crate::Version) -> Option<String> {
    if !cfg!(any(target_os = "linux", target_os = "macos")) {
        return Some("smolvm forks on Linux and macOS only".to_string());
    }
    if !version.dialect().reforkable {
        return Some(format!(
            "smolvm {version} cannot fork one golden more than once (smolvm 1.7.6 and later can)"
        ));
    }
    None
}

/// Say once per process (per kind of reason) why goldens make cold machines.
fn say_cold_once(kind: &str, reason: &str) {
    static SAID: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    let mut said = lock(SAID.get_or_init(Default::default));
    if !said.iter().any(|r| r == kind) {
        said.push(kind.to_string());
        diag::log(&format!(
            "smolvm-harness: goldens make a cold machine (create, start, provision) per fork: \
             {reason}"
        ));
    }
}

fn validate_key(key: &str) -> Result<()> {
    let ok = !key.is_empty()
        && key.len() <= 64
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "golden key",
            format!("{key:?}: 1 to 64 of letters, digits, `-`, `_`, `.`, `:`"),
        ))
    }
}

/// A key's golden in this process, with the recipe it was made from.
type GoldenSlot = Arc<Mutex<Option<(String, Arc<Golden>)>>>;

fn shared_cache() -> &'static Mutex<HashMap<String, GoldenSlot>> {
    static CACHE: OnceLock<Mutex<HashMap<String, GoldenSlot>>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// One golden per run and key across processes, under a lock in the state directory: the
/// first process makes it, the others join it (and hold it while they run).
fn shared_across_processes(
    builder: GoldenBuilder,
    key: &str,
    run: &str,
    target: &str,
) -> Result<Golden> {
    let dir_key = format!(
        "{:016x}",
        fnv1a_64(format!("{run}\0{key}\0{target}").as_bytes())
    );
    let root = state_dir::root()?;
    let dir = cleanup::golden_dir_in(&root, &dir_key);
    state_dir::ensure_dir(&root.join("goldens"))?;
    state_dir::ensure_dir(&dir)?;
    let lock_path = dir.join("lock");
    let lock_file = state_dir::open_or_replace(&lock_path, Access::Lock)?;
    lock_file
        .lock()
        .map_err(|e| Error::io("lock shared golden", &lock_path, e))?;
    let record = dir.join("golden");
    let smolvm = builder.machine.client();
    if let Some(known) = read_record(&record) {
        match known {
            Record::Cold(reason) => {
                return builder_cold(builder, reason);
            }
            Record::Fork(name) => {
                let alive = smolvm.machine_list()?.iter().any(|m| m.name == name);
                if alive {
                    cleanup::hold_golden(&dir_key)?;
                    let options = builder.machine.planned_options()?;
                    smolvm.adopt_secrets(&name, &options)?;
                    return Ok(Golden {
                        inner: Arc::new(Inner {
                            smolvm,
                            recipe: builder.machine,
                            provision: builder.provision,
                            mode: Mode::Fork {
                                name,
                                guard: Mutex::new(None),
                            },
                            kept_clones: AtomicUsize::new(0),
                        }),
                    });
                }
            }
        }
    }
    let shared = SharedGolden {
        key: dir_key.clone(),
        grace_secs: config()?.golden_grace.as_secs(),
    };
    // Held before it exists: nothing retires a golden under the process still making it.
    cleanup::hold_golden(&dir_key)?;
    let golden = builder.create_with(Some(shared), Some(key))?;
    let text = match &golden.inner.mode {
        Mode::Fork { name, .. } => format!("fork\n{name}\n"),
        Mode::Cold { reason } => format!("cold\n{reason}\n"),
    };
    state_dir::open_or_replace(&record, Access::Write)?
        .write_all(text.as_bytes())
        .map_err(|e| Error::io("record shared golden", &record, e))?;
    drop(lock_file);
    Ok(golden)
}

enum Record {
    Fork(String),
    Cold(String),
}

/// The shared golden's record, believed only if it is a regular file of ours.
fn read_record(path: &std::path::Path) -> Option<Record> {
    if !state_dir::is_own_file(path) {
        return None;
    }
    let mut text = String::new();
    state_dir::open(path, Access::Read)
        .ok()?
        .read_to_string(&mut text)
        .ok()?;
    let mut lines = text.lines();
    match (lines.next()?, lines.next()?) {
        ("fork", name) if crate::validate::validate_machine_name(name).is_ok() => {
            Some(Record::Fork(name.to_string()))
        }
        ("cold", reason) => Some(Record::Cold(reason.to_string())),
        _ => None,
    }
}

fn builder_cold(builder: GoldenBuilder, reason: String) -> Result<Golden> {
    let smolvm = builder.machine.client();
    say_cold_once(&reason, &reason);
    Ok(Golden {
        inner: Arc::new(Inner {
            smolvm,
            recipe: builder.machine,
            provision: builder.provision,
            mode: Mode::Cold { reason },
            kept_clones: AtomicUsize::new(0),
        }),
    })
}
