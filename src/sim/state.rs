//! Machine records, their JSON forms (smolvm's `ls --json`, the fake's `state.json`) and the
//! `.smolmachine` manifest written by the simulated `pack create`.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Map, Value};

use super::grammar::Features;

/// smolvm's default vCPU count (`DEFAULT_MICROVM_CPU_COUNT`).
pub(crate) const DEFAULT_CPUS: u32 = 4;
/// smolvm's default memory in MiB.
pub(crate) const DEFAULT_MEM_MIB: u32 = 8192;
/// First fake PID handed out; far from real low PIDs so nobody mistakes it for one.
const FIRST_PID: u32 = 40_001;

/// The lifecycle state of a simulated machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SimState {
    /// Created, never started.
    Created,
    /// Started and not stopped since.
    Running,
    /// Stopped after running.
    Stopped,
    /// A golden after its first `machine fork`: its VM is paused for good as the fork base
    /// (smolvm's `frozen` from 1.3.0; `unreachable` before).
    Frozen,
}

impl SimState {
    /// The word smolvm uses in `ls --json` and `status`.
    pub fn as_str(self) -> &'static str {
        match self {
            SimState::Created => "created",
            SimState::Running => "running",
            SimState::Stopped => "stopped",
            SimState::Frozen => "frozen",
        }
    }

    /// The word smolvm `version` prints: a frozen golden reads `unreachable` before 1.3.0.
    pub(crate) fn word(self, f: Features) -> &'static str {
        match self {
            SimState::Frozen if !f.frozen_state() => "unreachable",
            s => s.as_str(),
        }
    }

    /// Whether the machine's VMM process is alive (running, or paused as a fork base): it
    /// holds its pid and its host ports.
    pub(crate) fn vmm_alive(self) -> bool {
        matches!(self, SimState::Running | SimState::Frozen)
    }

    fn parse(s: &str) -> Option<SimState> {
        Some(match s {
            "created" => SimState::Created,
            "running" => SimState::Running,
            "stopped" => SimState::Stopped,
            "frozen" => SimState::Frozen,
            _ => return None,
        })
    }
}

/// A `-v/--volume` mount as smolvm stores it: the canonical host directory, the guest path
/// and whether it is read-only.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SimMount {
    /// Canonical host directory.
    pub source: String,
    /// Absolute guest path.
    pub target: String,
    /// `:ro`.
    pub read_only: bool,
}

/// The host path behind the normalised absolute guest path `full` when it lies under a
/// `-v` mount (the deepest mount wins), and whether that mount is read-only.
pub(crate) fn mounted_path(mounts: &[SimMount], full: &str) -> Option<(std::path::PathBuf, bool)> {
    mounts
        .iter()
        .filter_map(|m| {
            let target = m.target.trim_end_matches('/');
            let rest = if full == target {
                ""
            } else {
                full.strip_prefix(target)?.strip_prefix('/')?
            };
            Some((target.len(), m, rest))
        })
        .max_by_key(|(len, _, _)| *len)
        .map(|(_, m, rest)| {
            let base = std::path::Path::new(&m.source);
            let path = if rest.is_empty() {
                base.to_path_buf()
            } else {
                base.join(rest)
            };
            (path, m.read_only)
        })
}

/// Where a secret's value comes from; the value itself is never stored.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SimSecretRef {
    /// `--secret-env GUEST=HOSTVAR`: the host variable's name.
    Env(String),
    /// `--secret-file GUEST=/abs`: the file's path.
    File(String),
}

/// What a guest server does with a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ListenKind {
    /// busybox `httpd -h DIR`: GET of the guest files under DIR.
    Httpd { dir: String },
    /// `nc -lk -p PORT -e cat`: echoes what it reads.
    Echo,
}

/// A server listening in the guest, until the machine stops.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Listener {
    pub(crate) port: u16,
    pub(crate) kind: ListenKind,
}

/// A snapshot of one simulated machine record, including what `ls --json` does not show
/// (env, stored CIDRs, files copied in), so tests can check what smolvm would have stored.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SimMachine {
    /// The machine name.
    pub name: String,
    /// Lifecycle state.
    pub state: SimState,
    /// A fake PID while running (smolvm keeps it after a stop only in odd cases; we clear it).
    pub pid: Option<u32>,
    /// Creation time, Unix seconds.
    pub created_at: u64,
    /// `--image`, or the image recorded in the `--from` pack.
    pub image: Option<String>,
    /// The `--from` path, when created from a pack.
    pub from: Option<String>,
    /// Whether networking is on.
    pub network: bool,
    /// Stored `--allow-cidr` ranges; `None` is smolvm's `allowed_cidrs: null` (unrestricted
    /// when `network` is on).
    pub allowed_cidrs: Option<Vec<String>>,
    /// Env pairs in order, duplicates kept, as smolvm stores them.
    pub env: Vec<(String, String)>,
    /// Labels (always empty before v1.8.0).
    pub labels: BTreeMap<String, String>,
    /// vCPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// Default working directory of exec (`-w` at create, or the pack's).
    pub workdir: Option<String>,
    /// Workload command given after `--` at create (v1.0.0+).
    pub cmd: Vec<String>,
    /// Files copied in with `machine cp`, by normalised guest path.
    pub files: BTreeMap<String, Vec<u8>>,
    /// Started at least once (the image is pulled on the first start only).
    pub booted: bool,
    /// `--storage` in GiB, as given.
    pub storage_gb: Option<u64>,
    /// `--overlay` in GiB, as given.
    pub overlay_gb: Option<u64>,
    /// `-p` mappings, `(host, guest)`, in order.
    pub ports: Vec<(u16, u16)>,
    /// `-v` mounts, in order (their virtiofs tags are `smolvm0`, `smolvm1`, …).
    pub mounts: Vec<SimMount>,
    /// `--allow-host` names (smolvm's `dns_filter_hosts`); their resolved addresses are in
    /// [`SimMachine::allowed_cidrs`].
    pub allowed_hosts: Vec<String>,
    /// Secret references by guest variable name: where values come from, never values.
    pub secret_refs: BTreeMap<String, SimSecretRef>,
    /// `--dns` (v1.3.0+).
    pub dns: Option<String>,
    /// How many times the machine was started; a server of an earlier boot is gone.
    pub boots: u64,
    /// Started with `machine start --forkable` (this boot): it can be forked, and `ls -v`
    /// says `Forkable: enabled`. Kept while frozen; cleared by `stop`.
    pub forkable: bool,
    /// For a fork clone, the golden it was forked from (smolvm keeps this only in its
    /// database record: `ls --json` has no such field).
    pub golden: Option<String>,
    /// A clone whose golden was deleted with `delete -f` while it lived: its copy-on-write
    /// backing files are gone, so its exec, cp and start fail.
    pub broken: bool,
    pub(crate) listeners: Vec<Listener>,
    /// Directories made in the guest with `mkdir`.
    pub(crate) dirs: BTreeSet<String>,
    /// The fake's port-forwarding helper processes of the current boot.
    pub(crate) helpers: Vec<u32>,
}

impl SimMachine {
    pub(crate) fn new(name: String, created_at: u64) -> SimMachine {
        SimMachine {
            name,
            state: SimState::Created,
            pid: None,
            created_at,
            image: None,
            from: None,
            network: false,
            allowed_cidrs: None,
            env: Vec::new(),
            labels: BTreeMap::new(),
            cpus: DEFAULT_CPUS,
            memory_mib: DEFAULT_MEM_MIB,
            workdir: None,
            cmd: Vec::new(),
            files: BTreeMap::new(),
            booted: false,
            storage_gb: None,
            overlay_gb: None,
            ports: Vec::new(),
            mounts: Vec::new(),
            allowed_hosts: Vec::new(),
            secret_refs: BTreeMap::new(),
            dns: None,
            boots: 0,
            forkable: false,
            golden: None,
            broken: false,
            listeners: Vec::new(),
            dirs: BTreeSet::new(),
            helpers: Vec::new(),
        }
    }

    /// The guest variable names of the stored secret references.
    pub fn secret_ref_names(&self) -> Vec<String> {
        self.secret_refs.keys().cloned().collect()
    }

    /// The guest ports a server listens on now (cleared when the machine stops).
    pub fn guest_listening_ports(&self) -> Vec<u16> {
        self.listeners.iter().map(|l| l.port).collect()
    }

    /// Whether this machine is frozen as a fork base.
    pub fn is_frozen(&self) -> bool {
        self.state == SimState::Frozen
    }

    /// Whether exec runs inside an image container (timeouts append a message there).
    pub(crate) fn has_image(&self) -> bool {
        self.image.is_some()
    }

    /// The object smolvm prints for this machine in `ls --json` / `status --json`.
    /// Keys come out alphabetical, as smolvm's do (serde_json's map is a BTreeMap).
    pub(crate) fn list_json(&self, f: Features) -> Value {
        let mut o = Map::new();
        let mut put = |k: &str, v: Value| {
            o.insert(k.to_string(), v);
        };
        put("name", json!(self.name));
        put("state", json!(self.state.word(f)));
        put("cpus", json!(self.cpus));
        put("memory_mib", json!(self.memory_mib));
        put("pid", json!(self.pid));
        put("mounts", json!(self.mounts.len()));
        put("ports", json!(self.ports.len()));
        put("created_at", json!(self.created_at));
        put("storage_gb", json!(self.storage_gb));
        put("overlay_gb", json!(self.overlay_gb));
        put("image", json!(self.image));
        put("entrypoint", json!([]));
        put("cmd", json!(self.cmd));
        put("ephemeral", json!(false));
        put("gpu", json!(false));
        put("gpu_vram_mib", Value::Null);
        put("restart_policy", json!("never"));
        put("restart_max_retries", json!(0));
        put("restart_count", json!(0));
        put("health_cmd", Value::Null);
        put("health_interval_secs", Value::Null);
        put("health_timeout_secs", Value::Null);
        put("health_retries", Value::Null);
        put("health_startup_grace_secs", Value::Null);
        put("network", json!(self.network));
        if f.labels() {
            put("labels", json!(self.labels));
            put("cuda", json!(false));
            put("forkable", json!(false));
            put("cuda_fork_pool_size", Value::Null);
            put("cuda_vram_limit_mib", Value::Null);
            put("forkpoint_held", json!(false));
        }
        Value::Object(o)
    }

    fn to_state_json(&self) -> Value {
        let files: Map<String, Value> = self
            .files
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(hex_encode(v))))
            .collect();
        json!({
            "name": self.name,
            "state": self.state.as_str(),
            "pid": self.pid,
            "created_at": self.created_at,
            "image": self.image,
            "from": self.from,
            "network": self.network,
            "allowed_cidrs": self.allowed_cidrs,
            "env": self.env.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>(),
            "labels": self.labels,
            "cpus": self.cpus,
            "memory_mib": self.memory_mib,
            "workdir": self.workdir,
            "cmd": self.cmd,
            "files": files,
            "booted": self.booted,
            "storage_gb": self.storage_gb,
            "overlay_gb": self.overlay_gb,
            "ports": self.ports,
            "mounts": self.mounts.iter().map(|m| json!([m.source, m.target, m.read_only])).collect::<Vec<_>>(),
            "dns_filter_hosts": self.allowed_hosts,
            "secret_refs": self.secret_refs.iter().map(|(k, r)| match r {
                SimSecretRef::Env(v) => (k.clone(), json!({"from_env": v})),
                SimSecretRef::File(p) => (k.clone(), json!({"from_file": p})),
            }).collect::<Map<String, Value>>(),
            "dns": self.dns,
            "boots": self.boots,
            "forkable": self.forkable,
            "golden": self.golden,
            "broken": self.broken,
            "listeners": self.listeners.iter().map(|l| match &l.kind {
                ListenKind::Httpd { dir } => json!({"port": l.port, "httpd": dir}),
                ListenKind::Echo => json!({"port": l.port, "echo": true}),
            }).collect::<Vec<_>>(),
            "dirs": self.dirs,
            "helpers": self.helpers,
        })
    }

    fn from_state_json(v: &Value) -> Result<SimMachine, String> {
        let name = str_field(v, "name")?.ok_or("machine without a name")?;
        let mut m = SimMachine::new(name, v["created_at"].as_u64().unwrap_or(0));
        m.state = SimState::parse(v["state"].as_str().unwrap_or(""))
            .ok_or_else(|| format!("machine {:?}: bad state", m.name))?;
        m.pid = v["pid"].as_u64().and_then(|p| u32::try_from(p).ok());
        m.image = str_field(v, "image")?;
        m.from = str_field(v, "from")?;
        m.network = v["network"].as_bool().unwrap_or(false);
        m.allowed_cidrs = match &v["allowed_cidrs"] {
            Value::Array(a) => Some(strings(a)),
            _ => None,
        };
        m.env = pairs(&v["env"]);
        m.labels = string_map(&v["labels"]);
        m.cpus = v["cpus"]
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(DEFAULT_CPUS);
        m.memory_mib = v["memory_mib"]
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(DEFAULT_MEM_MIB);
        m.workdir = str_field(v, "workdir")?;
        m.cmd = v["cmd"].as_array().map(|a| strings(a)).unwrap_or_default();
        if let Value::Object(files) = &v["files"] {
            for (path, hex) in files {
                let bytes = hex
                    .as_str()
                    .and_then(hex_decode)
                    .ok_or_else(|| format!("machine {:?}: bad file {path:?}", m.name))?;
                m.files.insert(path.clone(), bytes);
            }
        }
        m.booted = v["booted"].as_bool().unwrap_or(false);
        m.storage_gb = v["storage_gb"].as_u64();
        m.overlay_gb = v["overlay_gb"].as_u64();
        m.ports = v["ports"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| {
                        let h = u16::try_from(p[0].as_u64()?).ok()?;
                        let g = u16::try_from(p[1].as_u64()?).ok()?;
                        Some((h, g))
                    })
                    .collect()
            })
            .unwrap_or_default();
        m.mounts = v["mounts"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|t| {
                        Some(SimMount {
                            source: t[0].as_str()?.to_string(),
                            target: t[1].as_str()?.to_string(),
                            read_only: t[2].as_bool()?,
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        m.allowed_hosts = v["dns_filter_hosts"]
            .as_array()
            .map(|a| strings(a))
            .unwrap_or_default();
        if let Value::Object(refs) = &v["secret_refs"] {
            for (k, r) in refs {
                let r = match (r["from_env"].as_str(), r["from_file"].as_str()) {
                    (Some(e), _) => SimSecretRef::Env(e.to_string()),
                    (_, Some(p)) => SimSecretRef::File(p.to_string()),
                    _ => return Err(format!("machine {:?}: bad secret ref {k:?}", m.name)),
                };
                m.secret_refs.insert(k.clone(), r);
            }
        }
        m.dns = str_field(v, "dns")?;
        m.boots = v["boots"].as_u64().unwrap_or(0);
        m.forkable = v["forkable"].as_bool().unwrap_or(false);
        m.golden = str_field(v, "golden")?;
        m.broken = v["broken"].as_bool().unwrap_or(false);
        m.listeners = v["listeners"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|l| {
                        let port = u16::try_from(l["port"].as_u64()?).ok()?;
                        let kind = match l["httpd"].as_str() {
                            Some(dir) => ListenKind::Httpd {
                                dir: dir.to_string(),
                            },
                            None => ListenKind::Echo,
                        };
                        Some(Listener { port, kind })
                    })
                    .collect()
            })
            .unwrap_or_default();
        m.dirs = v["dirs"]
            .as_array()
            .map(|a| strings(a).into_iter().collect())
            .unwrap_or_default();
        m.helpers = v["helpers"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| u32::try_from(p.as_u64()?).ok())
                    .collect()
            })
            .unwrap_or_default();
        Ok(m)
    }
}

/// Everything the simulated smolvm remembers between invocations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct State {
    /// In creation order; smolvm promises no order, and this one is as good as any.
    pub(crate) machines: Vec<SimMachine>,
    pub(crate) next_pid: u32,
    /// Names that have a data directory (also junk ones for unknown names, §0.7): delete
    /// prints its "Cleaning up" line only for these.
    pub(crate) data_dirs: BTreeSet<String>,
    /// Feeds generated `vm-xxxxxxxx` names.
    pub(crate) name_seq: u64,
}

impl Default for State {
    fn default() -> State {
        State {
            machines: Vec::new(),
            next_pid: FIRST_PID,
            data_dirs: BTreeSet::new(),
            name_seq: 0,
        }
    }
}

/// The `format` tag of the fake's `state.json`.
const STATE_FORMAT: &str = "smolvm-sim-state";

impl State {
    pub(crate) fn get(&self, name: &str) -> Option<&SimMachine> {
        self.machines.iter().find(|m| m.name == name)
    }

    pub(crate) fn get_mut(&mut self, name: &str) -> Option<&mut SimMachine> {
        self.machines.iter_mut().find(|m| m.name == name)
    }

    pub(crate) fn remove(&mut self, name: &str) {
        self.machines.retain(|m| m.name != name);
    }

    pub(crate) fn take_pid(&mut self) -> u32 {
        let pid = self.next_pid;
        self.next_pid = self.next_pid.checked_add(1).unwrap_or(FIRST_PID);
        pid
    }

    pub(crate) fn to_json_text(&self) -> String {
        let v = json!({
            "format": STATE_FORMAT,
            "version": 1,
            "next_pid": self.next_pid,
            "name_seq": self.name_seq,
            "data_dirs": self.data_dirs,
            "machines": self.machines.iter().map(SimMachine::to_state_json).collect::<Vec<_>>(),
        });
        // Pretty, so that a person debugging a test can read it.
        serde_json::to_string_pretty(&v).unwrap_or_default() + "\n"
    }

    pub(crate) fn from_json_text(text: &str) -> Result<State, String> {
        if text.trim().is_empty() {
            return Ok(State::default());
        }
        let v: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if v["format"] != STATE_FORMAT {
            return Err(format!("not a {STATE_FORMAT} file"));
        }
        let machines = v["machines"]
            .as_array()
            .map(|a| a.iter().map(SimMachine::from_state_json).collect())
            .unwrap_or_else(|| Ok(Vec::new()))?;
        Ok(State {
            machines,
            next_pid: v["next_pid"]
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(FIRST_PID),
            data_dirs: v["data_dirs"]
                .as_array()
                .map(|a| strings(a).into_iter().collect())
                .unwrap_or_default(),
            name_seq: v["name_seq"].as_u64().unwrap_or(0),
        })
    }
}

/// What `pack create` records in `OUT.smolmachine`, and `create --from` reads back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Manifest {
    pub(crate) image: String,
    pub(crate) cpus: u32,
    pub(crate) memory_mib: u32,
    pub(crate) network: bool,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) workdir: Option<String>,
    pub(crate) entrypoint: Vec<String>,
}

/// The `format` tag of a simulated `.smolmachine`.
pub(crate) const MANIFEST_FORMAT: &str = "smolvm-sim-pack";

impl Manifest {
    pub(crate) fn to_json_text(&self) -> String {
        let v = json!({
            "format": MANIFEST_FORMAT,
            "version": 1,
            "image": self.image,
            "cpus": self.cpus,
            "memory_mib": self.memory_mib,
            "network": self.network,
            "env": self.env.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>(),
            "workdir": self.workdir,
            "entrypoint": self.entrypoint,
        });
        serde_json::to_string_pretty(&v).unwrap_or_default() + "\n"
    }

    pub(crate) fn from_bytes(bytes: &[u8]) -> Option<Manifest> {
        let v: Value = serde_json::from_slice(bytes).ok()?;
        if v["format"] != MANIFEST_FORMAT {
            return None;
        }
        Some(Manifest {
            image: v["image"].as_str()?.to_string(),
            cpus: v["cpus"]
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(DEFAULT_CPUS),
            memory_mib: v["memory_mib"]
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(DEFAULT_MEM_MIB),
            network: v["network"].as_bool().unwrap_or(false),
            env: pairs(&v["env"]),
            workdir: v["workdir"].as_str().map(str::to_string),
            entrypoint: v["entrypoint"]
                .as_array()
                .map(|a| strings(a))
                .unwrap_or_default(),
        })
    }
}

/// The name of a machine's data directory under `vms/`: the first 16 hex digits of the
/// SHA-256 of its name, as smolvm's `vm_data_dir` makes it.
pub(crate) fn data_dir_hash(name: &str) -> String {
    sha256(name.as_bytes())[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A plain SHA-256 (FIPS 180-4), small enough not to need a dependency for one hash.
fn sha256(data: &[u8]) -> [u8; 32] {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64).wrapping_mul(8)).to_be_bytes());
    for block in msg.chunks(64) {
        let mut w = [0u32; 64];
        for (i, word) in block.chunks(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = h;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[i])
                .wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            hh = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 32];
    for (i, x) in h.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&x.to_be_bytes());
    }
    out
}

fn str_field(v: &Value, key: &str) -> Result<Option<String>, String> {
    match &v[key] {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        _ => Err(format!("field {key:?} is not a string")),
    }
}

fn strings(a: &[Value]) -> Vec<String> {
    a.iter()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect()
}

fn pairs(v: &Value) -> Vec<(String, String)> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| Some((p[0].as_str()?.to_string(), p[1].as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

fn string_map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|o| {
            o.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

fn hex_encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let nibble = |c: u8| (c as char).to_digit(16);
    s.as_bytes()
        .chunks(2)
        .map(|pair| Some((nibble(pair[0])? * 16 + nibble(pair[1])?) as u8))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Version;

    #[test]
    fn data_dir_hash_is_sha256_prefix() {
        // sha256("") and sha256("abc") from FIPS 180-2's examples.
        assert_eq!(data_dir_hash(""), "e3b0c44298fc1c14");
        assert_eq!(data_dir_hash("abc"), "ba7816bf8f01cfea");
        let long = "a".repeat(200);
        assert_eq!(data_dir_hash(&long).len(), 16);
    }

    #[test]
    fn state_round_trips_through_json() {
        let mut s = State::default();
        let mut m = SimMachine::new("web".into(), 1_700_000_000);
        m.state = SimState::Running;
        m.pid = Some(s.take_pid());
        m.image = Some("alpine".into());
        m.allowed_cidrs = Some(vec!["10.0.0.0/8".into()]);
        m.env = vec![("A".into(), "1".into()), ("A".into(), "2".into())];
        m.labels.insert("k".into(), "v".into());
        m.files.insert("/tmp/x".into(), vec![0, 1, 254, 255]);
        let mut clone = m.clone();
        m.state = SimState::Frozen;
        m.forkable = true;
        clone.name = "web-c".into();
        clone.golden = Some("web".into());
        clone.broken = true;
        s.machines.push(m);
        s.machines.push(clone);
        s.data_dirs.insert("junk".into());
        let back = State::from_json_text(&s.to_json_text()).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.next_pid, FIRST_PID + 1);
        assert!(State::from_json_text("{\"format\":\"other\"}").is_err());
        assert_eq!(State::from_json_text("").unwrap(), State::default());
    }

    #[test]
    fn list_json_has_labels_only_from_1_8_0() {
        let m = SimMachine::new("a".into(), 5);
        let old = m.list_json(Features::new(Version::new(0, 8, 0)));
        let new = m.list_json(Features::new(Version::new(1, 9, 2)));
        assert!(old.get("labels").is_none());
        assert_eq!(new["labels"], json!({}));
        for v in [&old, &new] {
            for key in [
                "name",
                "state",
                "cpus",
                "memory_mib",
                "pid",
                "created_at",
                "image",
                "network",
                "ephemeral",
            ] {
                assert!(v.get(key).is_some(), "{key}");
            }
        }
        assert_eq!(old["state"], "created");
        assert_eq!(old["pid"], Value::Null);
    }

    #[test]
    fn mounted_paths_map_to_the_deepest_mount() {
        let mount = |source: &str, target: &str, read_only| SimMount {
            source: source.into(),
            target: target.into(),
            read_only,
        };
        let mounts = [
            mount("/h/a", "/data", false),
            mount("/h/b", "/data/ro", true),
        ];
        let host = |p: &str| mounted_path(&mounts, p).map(|(h, ro)| (h.display().to_string(), ro));
        assert_eq!(host("/data"), Some(("/h/a".into(), false)));
        assert_eq!(host("/data/x/y"), Some(("/h/a/x/y".into(), false)));
        assert_eq!(host("/data/ro/f"), Some(("/h/b/f".into(), true)));
        assert_eq!(host("/datax"), None);
        assert_eq!(host("/"), None);
    }

    #[test]
    fn manifest_round_trips_and_rejects_foreign_files() {
        let m = Manifest {
            image: "alpine:3.20".into(),
            cpus: 2,
            memory_mib: 1024,
            network: false,
            env: vec![("A".into(), "b".into())],
            workdir: Some("/app".into()),
            entrypoint: vec!["/bin/sh".into()],
        };
        assert_eq!(Manifest::from_bytes(m.to_json_text().as_bytes()), Some(m));
        assert_eq!(Manifest::from_bytes(b"\x7fELF..."), None);
        assert_eq!(Manifest::from_bytes(b"{\"image\":\"x\"}"), None);
    }

    #[test]
    fn hex_round_trip() {
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(hex_decode(&hex_encode(&all)), Some(all));
        assert_eq!(hex_decode("abc"), None);
        assert_eq!(hex_decode("zz"), None);
    }
}
