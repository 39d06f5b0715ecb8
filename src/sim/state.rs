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
}

impl SimState {
    /// The word smolvm uses in `ls --json` and `status`.
    pub fn as_str(self) -> &'static str {
        match self {
            SimState::Created => "created",
            SimState::Running => "running",
            SimState::Stopped => "stopped",
        }
    }

    fn parse(s: &str) -> Option<SimState> {
        Some(match s {
            "created" => SimState::Created,
            "running" => SimState::Running,
            "stopped" => SimState::Stopped,
            _ => return None,
        })
    }
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
        }
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
        put("state", json!(self.state.as_str()));
        put("cpus", json!(self.cpus));
        put("memory_mib", json!(self.memory_mib));
        put("pid", json!(self.pid));
        put("mounts", json!(0));
        put("ports", json!(0));
        put("created_at", json!(self.created_at));
        put("storage_gb", Value::Null);
        put("overlay_gb", Value::Null);
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
        s.machines.push(m);
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
