//! The on-disk ledger: one small JSON file per machine a process may have created, so that
//! another process (the crash watcher, a later run's sweep) can finish its cleanup.
//!
//! Guarantees:
//! * an entry is written (temp file + rename) before `machine create` starts, and says what
//!   [`judge`](super::owner::judge) needs: the owner (unique across namespaces and boots), the
//!   ownership evidence, the stage, the keep policy, and how to reach the same smolvm state;
//! * it never holds a guest env value or any other secret: only the smolvm program, the
//!   client's *process* env (e.g. `SMOLVM_DATA_DIR`) and the state-locating variables;
//! * only files that are ours, in a directory that is ours and closed to others, are believed
//!   (an entry names a program that the watcher runs).

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::owner::{Claim, Clock, Evidence, Owner, Role, SharedGolden, Stage};
use crate::config::{config_or_default, KeepPolicy};
use crate::dialect::Version;
use crate::error::{Error, Result};
use crate::Smolvm;

/// Variables, inherited by smolvm from us, that decide which machines it sees. Recorded so a
/// later sweep only judges entries against the same smolvm state (otherwise a run with
/// another `SMOLVM_DATA_DIR` would see "no such machine" and forget a real leak), and shown
/// in printed commands (a kept machine in an isolated state is not found without them).
/// `SMOLVM_FAKE_*` are the crate's own fake smolvm's.
pub(crate) const STATE_ENV: &[&str] = &[
    "SMOLVM_DATA_DIR",
    "XDG_DATA_HOME",
    "XDG_CACHE_HOME",
    "XDG_RUNTIME_DIR",
    "HOME",
    "SMOLVM_CONFIG",
    "SMOLVM_AGENT_ROOTFS",
    "SMOLVM_FAKE_STATE",
    "SMOLVM_FAKE_VERSION",
    // The fake's call log: the watcher's calls for an entry go where its process logged.
    "SMOLVM_FAKE_LOG",
    // Where the fake keeps its state when `SMOLVM_FAKE_STATE` is unset.
    "TMPDIR",
];

/// What a printed smolvm command needs in front of it to reach the same machines: the
/// state-locating variables the client sets, and the smolvm ones inherited from us
/// (`SMOLVM_DATA_DIR`, the fake's state). Inherited `HOME`, `XDG_*` and `TMPDIR` are left out:
/// any shell of the same user has them. Values are paths, never secrets (other process env is omitted).
pub(crate) fn state_env_to_show(smolvm: &Smolvm) -> Vec<(String, String)> {
    let Some((_, process_env)) = smolvm.process_target() else {
        return Vec::new();
    };
    let mut shown: Vec<(String, String)> = process_env
        .into_iter()
        .filter(|(k, _)| STATE_ENV.contains(&k.as_str()))
        .collect();
    for key in STATE_ENV.iter().filter(|k| k.starts_with("SMOLVM_")) {
        if shown.iter().all(|(k, _)| k != key) {
            if let Ok(v) = std::env::var(key) {
                shown.push((key.to_string(), v));
            }
        }
    }
    shown
}

/// Ledger format; entries of another format are left alone. Entries of a `smolvm serve`
/// client are format 3 (an older harness reading them as format 2 would run their URL as a
/// program); CLI entries stay format 2, which every harness since 0.1 reads.
const FORMAT: u64 = 2;
const FORMAT_REMOTE: u64 = 3;

/// What reaches one smolvm state: the program and the env that tells smolvm where its state
/// is. Two clients with equal targets see the same machines.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Target {
    /// Absolute when configured with a directory part; a bare name is looked up on `PATH`.
    pub(crate) program: PathBuf,
    /// The client's extra process env, in order.
    pub(crate) process_env: Vec<(String, String)>,
    /// The effective values of [`STATE_ENV`] for the smolvm process (client env first, then
    /// ours), only those set.
    pub(crate) state_env: BTreeMap<String, String>,
    /// For a client of `smolvm serve`: its canonical URL (never a credential: see
    /// [`crate::Smolvm::remote`]); `program` and the env are then empty.
    pub(crate) remote: Option<String>,
}

impl Target {
    /// `None` for in-process runners, whose machines die with the process.
    pub(crate) fn of(smolvm: &Smolvm) -> Option<Target> {
        if let Some(url) = smolvm.remote_url() {
            return Some(Target {
                program: PathBuf::new(),
                process_env: Vec::new(),
                state_env: BTreeMap::new(),
                remote: Some(url.to_string()),
            });
        }
        let (program, process_env) = smolvm.process_target()?;
        // A bare name is resolved here, on our PATH: the watcher and later sweeps must run
        // the binary that made the machine, whatever their own PATH says.
        let program =
            crate::cli::resolve_program(&program).unwrap_or_else(|_| absolute_program(program));
        let mut state_env = BTreeMap::new();
        for key in STATE_ENV {
            let client = process_env.iter().rev().find(|(k, _)| k == key);
            let value = match client {
                Some((_, v)) => Some(v.clone()),
                None => std::env::var(key).ok(),
            };
            if let Some(v) = value {
                state_env.insert(key.to_string(), v);
            }
        }
        Some(Target {
            program,
            process_env,
            state_env,
            remote: None,
        })
    }

    /// A client that reaches this target from any process, through the process runner: the
    /// same program, the same process env, and the state-locating variables the original
    /// smolvm inherited (another process, such as the shared watcher, may have other ones).
    pub(crate) fn client(&self, version: Option<Version>) -> Smolvm {
        if let Some(url) = &self.remote {
            // TLS client certificates come from this process's own environment.
            let smolvm = Smolvm::remote_or_unusable(url);
            return match version {
                Some(v) => smolvm.with_version(v),
                None => smolvm,
            };
        }
        let mut smolvm = Smolvm::new(self.program.clone());
        for (k, v) in &self.state_env {
            if self.process_env.iter().all(|(pk, _)| pk != k) {
                smolvm = smolvm.with_process_env(k.clone(), v.clone());
            }
        }
        for (k, v) in &self.process_env {
            smolvm = smolvm.with_process_env(k.clone(), v.clone());
        }
        if let Some(v) = version {
            smolvm = smolvm.with_version(v);
        }
        smolvm
    }
}

impl Target {
    /// Whether two targets reach the same smolvm state: equal, or the same server under two
    /// spellings of the loopback host (a machine left under one is swept under the other).
    pub(crate) fn same_server(&self, other: &Target) -> bool {
        match (&self.remote, &other.remote) {
            (Some(a), Some(b)) => {
                let key = |u: &str| crate::remote::Endpoint::parse(u).map(|e| e.server_key());
                a == b || matches!((key(a), key(b)), (Ok(x), Ok(y)) if x == y)
            }
            _ => self == other,
        }
    }

    /// What a message calls it: the server's URL, or the program.
    pub(crate) fn describe(&self) -> String {
        match &self.remote {
            Some(url) => url.clone(),
            None => self.program.display().to_string(),
        }
    }

    /// 8 hex digits naming this target in ledger file names and create marks.
    pub(crate) fn digest(&self) -> String {
        let mut h: u32 = 0x811c_9dc5;
        let mut eat = |bytes: &[u8]| {
            for b in bytes.iter().chain([&0u8]) {
                h = (h ^ u32::from(*b)).wrapping_mul(0x0100_0193);
            }
        };
        eat(self.program.as_os_str().as_encoded_bytes());
        if let Some(url) = &self.remote {
            eat(b"remote");
            eat(url.as_bytes());
        }
        for (k, v) in &self.process_env {
            eat(k.as_bytes());
            eat(v.as_bytes());
        }
        for (k, v) in &self.state_env {
            eat(k.as_bytes());
            eat(v.as_bytes());
        }
        format!("{h:08x}")
    }
}

/// A relative path with a directory part (`./bin/smolvm`) is made absolute, so the watcher
/// and later sweeps reach the same binary from anywhere; a bare name stays a `PATH` lookup.
pub(crate) fn absolute_program(program: PathBuf) -> PathBuf {
    let has_dir = program.components().count() > 1;
    if has_dir && program.is_relative() {
        if let Ok(cwd) = std::env::current_dir() {
            return cwd.join(program);
        }
    }
    program
}

/// One ledger file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) claim: Claim,
    pub(crate) target: Target,
    pub(crate) smolvm_version: Option<Version>,
    /// Unix seconds when the entry was first written.
    pub(crate) created_at: u64,
    /// Kept on purpose: no layer deletes it.
    pub(crate) kept: bool,
}

impl Entry {
    pub(crate) fn new(claim: Claim, target: Target, version: Option<Version>) -> Result<Entry> {
        if target.program.to_str().is_none() {
            return Err(Error::invalid(
                "smolvm program path",
                format!(
                    "{} is not valid UTF-8, so the crash ledger cannot record it",
                    target.program.display()
                ),
            ));
        }
        Ok(Entry {
            claim,
            target,
            smolvm_version: version,
            created_at: now(),
            kept: false,
        })
    }

    /// The entry's file stem, `<name>.<owner nonce>.<target digest>`, which is also the mark
    /// its create process carries: one process may hold one name on two smolvm states, and
    /// their entries (and creates) must not be confused. Machine names never contain `.`.
    pub(crate) fn key(&self) -> String {
        format!(
            "{}.{}.{}",
            self.claim.name,
            self.claim.owner.nonce,
            self.target.digest()
        )
    }

    pub(crate) fn to_json(&self) -> Result<String> {
        let c = &self.claim;
        let program =
            self.target.program.to_str().ok_or_else(|| {
                Error::invalid("smolvm program path", "not valid UTF-8".to_string())
            })?;
        let owner = owner_json(&c.owner);
        let mut o = serde_json::Map::new();
        let format = if self.target.remote.is_some() {
            FORMAT_REMOTE
        } else {
            FORMAT
        };
        o.insert("format".into(), format.into());
        o.insert("name".into(), c.name.clone().into());
        o.insert("owner".into(), owner);
        o.insert("owner_token".into(), c.owner.token().into());
        if let Some(run) = &c.run_id {
            o.insert("run_id".into(), run.clone().into());
        }
        o.insert("evidence".into(), c.evidence.as_str().into());
        o.insert("stage".into(), c.stage.as_str().into());
        o.insert("keep".into(), keep_word(c.keep).into());
        o.insert("registered_at".into(), c.registered_at.into());
        if let Some(t) = c.created_by {
            o.insert("created_by".into(), t.into());
        }
        if let Clock::Server { made_at: Some(t) } = c.clock {
            o.insert("made_at".into(), t.into());
        }
        match &c.role {
            Role::Machine => {}
            Role::Golden { shared } => {
                o.insert("role".into(), "golden".into());
                if let Some(sg) = shared {
                    o.insert("shared_key".into(), sg.key.clone().into());
                    o.insert("grace_secs".into(), sg.grace_secs.into());
                }
            }
            Role::Clone { golden } => {
                o.insert("role".into(), "clone".into());
                o.insert("golden".into(), golden.clone().into());
            }
        }
        o.insert("program".into(), program.into());
        if let Some(url) = &self.target.remote {
            o.insert("remote".into(), url.clone().into());
        }
        let env: Vec<serde_json::Value> = self
            .target
            .process_env
            .iter()
            .map(|(k, v)| serde_json::Value::from(vec![k.clone(), v.clone()]))
            .collect();
        o.insert("process_env".into(), env.into());
        let state: serde_json::Map<String, serde_json::Value> = self
            .target
            .state_env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().into()))
            .collect();
        o.insert("state_env".into(), state.into());
        if let Some(v) = self.smolvm_version {
            o.insert("smolvm_version".into(), v.to_string().into());
        }
        o.insert("created_at".into(), self.created_at.into());
        o.insert("kept".into(), self.kept.into());
        serde_json::to_string_pretty(&serde_json::Value::Object(o))
            .map_err(|e| Error::invalid("ledger entry", e.to_string()))
    }

    pub(crate) fn from_json(text: &str) -> Option<Entry> {
        let v: serde_json::Value = serde_json::from_str(text).ok()?;
        let str_of = |key: &str| v.get(key).and_then(|x| x.as_str()).map(str::to_string);
        let remote = match v.get("format")?.as_u64()? {
            FORMAT => None,
            // A remote entry names a canonical URL (so no program is ever run for it).
            FORMAT_REMOTE => Some(str_of("remote").filter(|u| {
                crate::remote::Endpoint::parse(u).is_ok_and(|e| e.to_string() == *u)
            })?),
            _ => return None,
        };
        let owner = owner_from_json(v.get("owner")?)?;
        let process_env = v
            .get("process_env")?
            .as_array()?
            .iter()
            .map(|pair| {
                let pair = pair.as_array()?;
                Some((
                    pair.first()?.as_str()?.to_string(),
                    pair.get(1)?.as_str()?.to_string(),
                ))
            })
            .collect::<Option<Vec<_>>>()?;
        let state_env = v
            .get("state_env")?
            .as_object()?
            .iter()
            .map(|(k, x)| Some((k.clone(), x.as_str()?.to_string())))
            .collect::<Option<BTreeMap<_, _>>>()?;
        let role = match str_of("role").as_deref() {
            None | Some("machine") => Role::Machine,
            Some("golden") => Role::Golden {
                shared: match str_of("shared_key") {
                    Some(key) if valid_key(&key) => Some(SharedGolden {
                        key,
                        grace_secs: v.get("grace_secs").and_then(|x| x.as_u64()).unwrap_or(0),
                    }),
                    Some(_) => return None,
                    None => None,
                },
            },
            Some("clone") => Role::Clone {
                golden: str_of("golden")?,
            },
            Some(_) => return None,
        };
        Some(Entry {
            claim: Claim {
                role,
                name: str_of("name")?,
                owner,
                run_id: str_of("run_id"),
                evidence: Evidence::parse(&str_of("evidence")?)?,
                stage: Stage::parse(&str_of("stage")?)?,
                keep: parse_keep(&str_of("keep")?)?,
                registered_at: v.get("registered_at")?.as_u64()?,
                created_by: v.get("created_by").and_then(|x| x.as_u64()),
                clock: if remote.is_some() {
                    Clock::Server {
                        made_at: v.get("made_at").and_then(|x| x.as_u64()),
                    }
                } else {
                    Clock::Local
                },
            },
            target: Target {
                program: PathBuf::from(str_of("program")?),
                process_env,
                state_env,
                remote,
            },
            smolvm_version: str_of("smolvm_version").and_then(|s| s.parse().ok()),
            created_at: v.get("created_at").and_then(|x| x.as_u64()).unwrap_or(0),
            kept: v.get("kept").and_then(|x| x.as_bool()).unwrap_or(false),
        })
    }
}

/// A process identity as JSON (ledger entries, golden holders).
pub(crate) fn owner_json(owner: &Owner) -> serde_json::Value {
    let mut o = serde_json::Map::new();
    o.insert("pid".into(), owner.pid.into());
    if let Some(s) = owner.start {
        o.insert("start".into(), s.into());
    }
    if let Some(ns) = &owner.pid_ns {
        o.insert("pid_ns".into(), ns.clone().into());
    }
    if let Some(b) = &owner.boot_id {
        o.insert("boot_id".into(), b.clone().into());
    }
    o.insert("nonce".into(), owner.nonce.clone().into());
    serde_json::Value::Object(o)
}

/// [`owner_json`] read back; `None` if anything is missing or malformed.
pub(crate) fn owner_from_json(o: &serde_json::Value) -> Option<Owner> {
    let o_str = |key: &str| o.get(key).and_then(|x| x.as_str()).map(str::to_string);
    Some(Owner {
        pid: u32::try_from(o.get("pid")?.as_u64()?).ok()?,
        start: o.get("start").and_then(|x| x.as_u64()),
        pid_ns: o_str("pid_ns"),
        boot_id: o_str("boot_id"),
        nonce: o_str("nonce")?,
    })
}

/// A shared golden's key names a directory under the state directory: plain characters only,
/// so an entry cannot point elsewhere.
pub(crate) fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 64
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn keep_word(keep: KeepPolicy) -> &'static str {
    match keep {
        KeepPolicy::Never => "never",
        KeepPolicy::OnFailure => "on-failure",
        KeepPolicy::Always => "always",
    }
}

fn parse_keep(word: &str) -> Option<KeepPolicy> {
    match word {
        "never" => Some(KeepPolicy::Never),
        "on-failure" => Some(KeepPolicy::OnFailure),
        "always" => Some(KeepPolicy::Always),
        _ => None,
    }
}

pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `$SMOLVM_HARNESS_STATE_DIR/ledger`.
pub(crate) fn dir() -> PathBuf {
    config_or_default().state_dir.join("ledger")
}

pub(crate) fn path_in(dir: &Path, entry: &Entry) -> PathBuf {
    dir.join(format!("{}.json", entry.key()))
}

/// Write a new entry (or replace one) in `dir`, creating the directory closed to others.
pub(crate) fn write(dir: &Path, entry: &Entry) -> Result<PathBuf> {
    ensure_dir(dir)?;
    let path = path_in(dir, entry);
    write_atomically(&path, &entry.to_json()?)?;
    Ok(path)
}

/// The ledger directory, and the state directory above it, created closed to others and
/// verified (`crate::state_dir`).
fn ensure_dir(dir: &Path) -> Result<()> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        crate::state_dir::root_at(parent)?;
    }
    crate::state_dir::ensure_dir(dir)
}

/// Write to a temp file beside `path`, then rename: a reader (a sweep, the watcher) sees the
/// old entry or the new one, never half of one.
pub(crate) fn write_atomically(path: &Path, text: &str) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let mut options = fs::OpenOptions::new();
    // create_new: never write through something planted under the temp name.
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600).custom_flags(libc::O_NOFOLLOW);
    }
    let _ = fs::remove_file(&tmp);
    let written = options
        .open(&tmp)
        .and_then(|mut f| f.write_all(text.as_bytes()));
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io("write ledger entry", &tmp, e));
    }
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        Error::io("write ledger entry", path, e)
    })
}

/// `Ok(None)` when there is no such file.
pub(crate) fn read(path: &Path) -> io::Result<Option<Entry>> {
    if fs::symlink_metadata(path).is_ok() && !crate::state_dir::is_own_file(path) {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "not a regular file of ours",
        ));
    }
    match fs::read_to_string(path) {
        Ok(text) => Entry::from_json(&text).map(Some).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "not a ledger entry this crate wrote",
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Every readable entry. Temp files and foreign files are skipped; nothing here fails, since
/// a sweep or watcher should do what it can with the rest.
pub(crate) fn read_all(dir: &Path) -> Vec<(PathBuf, Entry)> {
    if !trusted(dir) {
        return Vec::new();
    }
    let Ok(listing) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut entries = Vec::new();
    for item in listing.flatten() {
        let path = item.path();
        let name = item.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || !name.ends_with(".json") {
            continue;
        }
        if let Ok(Some(entry)) = read(&path) {
            entries.push((path, entry));
        }
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    entries
}

pub(crate) fn remove(path: &Path) {
    let _ = fs::remove_file(path);
}

/// A directory (not a symlink) of ours that no one else can enter or write to. Reading
/// changes nothing, so this only checks what `crate::state_dir` makes sure of when writing.
fn trusted(dir: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        fs::symlink_metadata(dir)
            .is_ok_and(|m| m.is_dir() && m.uid() == effective_uid() && m.mode() & 0o077 == 0)
    }
    #[cfg(not(unix))]
    {
        dir.is_dir()
    }
}

#[cfg(unix)]
fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(program: &str) -> Target {
        Target {
            program: PathBuf::from(program),
            process_env: vec![("SMOLVM_FAKE_STATE".into(), "/tmp/s".into())],
            state_env: BTreeMap::from([("HOME".to_string(), "/root".to_string())]),
            remote: None,
        }
    }

    #[test]
    fn a_server_entry_is_format_3_with_its_url_and_reads_back() {
        let mut e = entry("m1");
        e.claim.clock = Clock::Server {
            made_at: Some(1_700_000_001),
        };
        e.target = Target {
            program: PathBuf::new(),
            process_env: Vec::new(),
            state_env: BTreeMap::new(),
            remote: Some("unix:///run/smolvm/api.sock".into()),
        };
        let text = e.to_json().unwrap();
        assert!(text.contains("\"format\": 3"), "{text}");
        assert!(
            text.contains("\"remote\": \"unix:///run/smolvm/api.sock\""),
            "{text}"
        );
        assert_eq!(Entry::from_json(&text), Some(e.clone()));
        assert_ne!(e.target.digest(), target("").digest());
        // An entry naming something that is not a canonical URL is not believed.
        for bad in ["unix://relative", "http://user:pw@h:1", "/bin/sh"] {
            let planted = text.replace("unix:///run/smolvm/api.sock", bad);
            assert_eq!(Entry::from_json(&planted), None, "{bad}");
        }
        // Nor a format-2 entry that claims a URL: format 2 is the CLI's.
        let as_cli = text.replace("\"format\": 3", "\"format\": 2");
        assert_eq!(
            Entry::from_json(&as_cli).map(|e| e.target.remote),
            Some(None)
        );
    }

    pub(crate) fn entry(name: &str) -> Entry {
        Entry {
            claim: Claim {
                name: name.into(),
                owner: Owner {
                    pid: 4242,
                    start: Some(99),
                    pid_ns: Some("pid:[4026531836]".into()),
                    boot_id: Some("b".into()),
                    nonce: "abcdefghij".into(),
                },
                run_id: Some("run-1".into()),
                evidence: Evidence::OwnerLabel,
                stage: Stage::Creating,
                keep: KeepPolicy::OnFailure,
                registered_at: 1_700_000_000,
                created_by: None,
                role: Role::Machine,
                clock: Clock::Local,
            },
            target: target("/usr/bin/smolvm"),
            smolvm_version: Some(Version::new(1, 9, 2)),
            created_at: 1_700_000_000,
            kept: false,
        }
    }

    #[test]
    fn roles_round_trip_and_bad_keys_are_refused() {
        for role in [
            Role::Machine,
            Role::Golden { shared: None },
            Role::Golden {
                shared: Some(SharedGolden {
                    key: "0123abcd".into(),
                    grace_secs: 30,
                }),
            },
            Role::Clone {
                golden: "smt-golden-x".into(),
            },
        ] {
            let mut e = entry("m");
            e.claim.role = role.clone();
            let back = Entry::from_json(&e.to_json().unwrap()).unwrap();
            assert_eq!(back.claim.role, role);
        }
        let mut e = entry("m");
        e.claim.role = Role::Golden {
            shared: Some(SharedGolden {
                key: "../../etc".into(),
                grace_secs: 1,
            }),
        };
        assert!(Entry::from_json(&e.to_json().unwrap()).is_none());
    }

    #[test]
    fn entries_round_trip_and_other_formats_are_ignored() {
        let e = entry("smt-a-1");
        let json = e.to_json().unwrap();
        assert_eq!(Entry::from_json(&json), Some(e.clone()));
        assert!(
            json.contains("\"owner_token\": \"4242-abcdefghij\""),
            "{json}"
        );
        let mut minimal = e.clone();
        minimal.claim.owner.start = None;
        minimal.claim.owner.pid_ns = None;
        minimal.claim.owner.boot_id = None;
        minimal.claim.run_id = None;
        minimal.smolvm_version = None;
        minimal.claim.evidence = Evidence::None;
        minimal.claim.stage = Stage::Created;
        minimal.claim.keep = KeepPolicy::Always;
        minimal.claim.created_by = Some(1_700_000_002);
        assert_eq!(Entry::from_json(&minimal.to_json().unwrap()), Some(minimal));
        assert_eq!(Entry::from_json(r#"{"format": 1, "name": "x"}"#), None);
        assert_eq!(Entry::from_json("not json"), None);
    }

    #[test]
    fn files_are_written_atomically_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = dir.path().join("ledger");
        let e = entry("smt-b-1");
        let path = write(&ledger, &e).unwrap();
        assert_eq!(
            path,
            ledger.join(format!("smt-b-1.abcdefghij.{}.json", e.target.digest()))
        );
        fs::write(ledger.join(".smt-c-1.x.json.1.tmp"), "{").unwrap();
        fs::write(ledger.join("garbage.json"), "{").unwrap();
        assert_eq!(read_all(&ledger), vec![(path.clone(), e)]);
        assert_eq!(read(&ledger.join("missing.json")).unwrap(), None);
        assert!(read_all(&dir.path().join("nowhere")).is_empty());
    }

    #[test]
    fn an_unwritable_ledger_is_an_io_error_that_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        fs::write(&file, "x").unwrap();
        let err = write(&file.join("ledger"), &entry("smt-d-1")).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err}");
        assert!(err.to_string().contains("not-a-dir"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn a_ledger_others_can_enter_or_a_planted_file_is_not_believed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let ledger = dir.path().join("ledger");
        write(&ledger, &entry("smt-d-1")).unwrap();
        assert_eq!(read_all(&ledger).len(), 1);
        fs::set_permissions(&ledger, fs::Permissions::from_mode(0o755)).unwrap();
        assert!(read_all(&ledger).is_empty());
        // Writing closes it again (it is ours), and then it is believed again.
        write(&ledger, &entry("smt-d-2")).unwrap();
        assert_eq!(read_all(&ledger).len(), 2);
        // A symlinked ledger directory is not ours to trust.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&ledger, &link).unwrap();
        assert!(read_all(&link).is_empty());
        assert!(write(&link, &entry("smt-d-3")).is_err());
        // A symlink planted as an entry is not read.
        let elsewhere = dir.path().join("elsewhere.json");
        fs::write(&elsewhere, entry("smt-d-4").to_json().unwrap()).unwrap();
        std::os::unix::fs::symlink(&elsewhere, ledger.join("smt-d-4.x.json")).unwrap();
        assert_eq!(read_all(&ledger).len(), 2);
        // A file owned by another user is not read.
        let foreign = ledger.join("smt-d-5.x.json");
        fs::write(&foreign, entry("smt-d-5").to_json().unwrap()).unwrap();
        if effective_uid() == 0 {
            std::os::unix::fs::chown(&foreign, Some(12345), None).unwrap();
            assert_eq!(read_all(&ledger).len(), 2);
        }
    }

    #[test]
    fn relative_programs_become_absolute_but_names_stay_lookups() {
        assert_eq!(absolute_program("smolvm".into()), PathBuf::from("smolvm"));
        assert_eq!(
            absolute_program("/x/smolvm".into()),
            PathBuf::from("/x/smolvm")
        );
        let rel = absolute_program("bin/smolvm".into());
        assert!(rel.is_absolute() && rel.ends_with("bin/smolvm"));
    }
}
