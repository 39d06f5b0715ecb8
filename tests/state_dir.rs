//! The state directory (`SMOLVM_HARNESS_STATE_DIR`) against another local user: a squatted,
//! symlinked or too-open directory, and entries planted in it.
//!
//! The configuration is read once per process, so every scenario runs in a CHILD process:
//! this test binary re-run with `--exact state_dir_child --nocapture` and
//! `STATE_DIR_SCENARIO` naming the scenario (the child test returns at once without it). The
//! child drives the public API against the fake smolvm CLI and asserts what it sees; the
//! parent prepares the directory beforehand and checks afterwards what was (not) written.
//! Tests run as root here, which is what lets the parent `chown` entries to another uid.
//! Every wait is bounded.

#![cfg(unix)]

use std::fs;
use std::os::unix::fs::{chown, symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use smolvm_harness::{Machine, Pack, Smolvm};

const FAKE: &str = env!("CARGO_BIN_EXE_smolvm-fake");
const SCENARIO: &str = "STATE_DIR_SCENARIO";
const FAKE_STATE: &str = "STATE_DIR_FAKE_STATE";
const STRANGER: u32 = 12345;
const CHILD_LIMIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------
// Child side
// ---------------------------------------------------------------------------------------

fn fake() -> Smolvm {
    let state = std::env::var(FAKE_STATE).expect("STATE_DIR_FAKE_STATE");
    Smolvm::new(FAKE)
        .with_process_env("SMOLVM_FAKE_STATE", state)
        .with_process_env("SMOLVM_FAKE_VERSION", "1.9.2")
}

fn start_machine() -> smolvm_harness::Result<Machine> {
    Machine::builder()
        .smolvm(fake())
        .image("alpine")
        .net()
        .start()
}

/// Every use of an unsafe state directory fails, with a message that says why and what to do.
fn expect_refused(why: &str) {
    let errors = [
        ("machine", start_machine().map(drop).err()),
        ("pack", Pack::shared_with(&fake(), "alpine").map(drop).err()),
    ];
    for (what, err) in errors {
        let err = err
            .unwrap_or_else(|| panic!("{what}: used an unsafe state directory"))
            .to_string();
        assert!(err.contains(why), "{what}: {err}");
        assert!(err.contains("SMOLVM_HARNESS_STATE_DIR"), "{what}: {err}");
        println!("\nREFUSED {what}: {err}");
    }
}

#[test]
fn state_dir_child() {
    let Ok(scenario) = std::env::var(SCENARIO) else {
        return;
    };
    match scenario.as_str() {
        "refused_symlink" => expect_refused("it is a symbolic link"),
        "refused_foreign" => expect_refused(&format!("it belongs to uid {STRANGER} (you are 0)")),
        "pack" => {
            let pack = Pack::shared_with(&fake(), "alpine").expect("a pack");
            println!("\nPACK {}", pack.path().display());
        }
        "machine" => {
            let vm = start_machine().expect("a machine");
            drop(vm);
        }
        other => panic!("unknown scenario {other}"),
    }
}

// ---------------------------------------------------------------------------------------
// Parent side
// ---------------------------------------------------------------------------------------

struct Base {
    _tmp: tempfile::TempDir,
    path: PathBuf,
}

fn base() -> Base {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().to_path_buf();
    fs::create_dir(path.join("fake")).expect("fake state dir");
    Base { _tmp: tmp, path }
}

/// Run `scenario` in a child that must succeed; its output.
fn child(base: &Base, scenario: &str, env: &[(&str, &Path)], unset: &[&str]) -> String {
    let (ok, text) = run_child(base, scenario, env, unset);
    assert!(ok, "child {scenario} failed:\n{text}");
    text
}

/// Run `scenario` in a child with `env` (and the fake's state under `base`), bounded:
/// whether it succeeded, and its output.
fn run_child(base: &Base, scenario: &str, env: &[(&str, &Path)], unset: &[&str]) -> (bool, String) {
    let out_path = base.path.join(format!("{scenario}.out"));
    let out = fs::File::create(&out_path).expect("output file");
    let mut cmd = Command::new(std::env::current_exe().expect("test binary"));
    cmd.args([
        "--exact",
        "state_dir_child",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(SCENARIO, scenario)
    .env(FAKE_STATE, base.path.join("fake"))
    .env("SMOLVM_HARNESS_WATCHER", "off")
    .env("SMOLVM_HARNESS_RUN_ID", "state-dir-test")
    .env_remove("NEXTEST_RUN_ID")
    .stdin(Stdio::null())
    .stdout(out.try_clone().expect("dup"))
    .stderr(out);
    for var in unset {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut proc = cmd.spawn().expect("spawn child");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = proc.try_wait().expect("wait") {
            break Some(status);
        }
        if started.elapsed() > CHILD_LIMIT {
            let _ = proc.kill();
            let _ = proc.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = fs::read_to_string(&out_path).unwrap_or_default();
    match status {
        Some(s) => (s.success(), text),
        None => panic!("child {scenario} did not finish in {CHILD_LIMIT:?}:\n{text}"),
    }
}

fn state_env(dir: &Path) -> [(&'static str, &Path); 1] {
    [("SMOLVM_HARNESS_STATE_DIR", dir)]
}

fn mode_of(path: &Path) -> u32 {
    fs::symlink_metadata(path).expect("stat").mode() & 0o7777
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// FNV-1a 64, as the crate names a pack's cache directory.
fn fnv1a_64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Where `Pack::shared` of `alpine` on the fake keeps its files in `state`.
fn pack_cache_dir(state: &Path) -> PathBuf {
    let key = format!("{FAKE}\0alpine");
    state
        .join("packs/state-dir-test")
        .join(format!("{:016x}", fnv1a_64(key.as_bytes())))
}

fn fake_machine_count(base: &Base) -> usize {
    let out = Smolvm::new(FAKE)
        .with_process_env(
            "SMOLVM_FAKE_STATE",
            base.path.join("fake").to_string_lossy(),
        )
        .machine_list()
        .expect("machine ls on the fake");
    out.len()
}

#[test]
fn a_symlinked_state_dir_is_refused_and_nothing_is_written_through_it() {
    let base = base();
    let target = base.path.join("target");
    fs::create_dir(&target).expect("mkdir");
    let link = base.path.join("state");
    symlink(&target, &link).expect("symlink");
    let out = child(&base, "refused_symlink", &state_env(&link), &[]);
    assert!(
        out.contains("REFUSED machine") && out.contains("REFUSED pack"),
        "{out}"
    );
    assert_eq!(
        listing(&target),
        Vec::<String>::new(),
        "written through the link"
    );
    assert_eq!(fake_machine_count(&base), 0);
}

#[test]
fn a_state_dir_of_another_user_is_refused_and_nothing_is_written_in_it() {
    let base = base();
    let state = base.path.join("state");
    fs::create_dir(&state).expect("mkdir");
    fs::set_permissions(&state, fs::Permissions::from_mode(0o755)).expect("chmod");
    chown(&state, Some(STRANGER), Some(STRANGER)).expect("chown (tests run as root)");
    let out = child(&base, "refused_foreign", &state_env(&state), &[]);
    assert!(
        out.contains("REFUSED machine") && out.contains("REFUSED pack"),
        "{out}"
    );
    assert_eq!(
        listing(&state),
        Vec::<String>::new(),
        "written in a stranger's dir"
    );
    assert_eq!(fs::metadata(&state).expect("stat").uid(), STRANGER);
    assert_eq!(
        mode_of(&state),
        0o755,
        "a stranger's dir is not ours to chmod"
    );
    assert_eq!(fake_machine_count(&base), 0);
}

#[test]
fn a_too_open_state_dir_of_ours_is_tightened_and_a_strangers_subdir_refused() {
    let base = base();
    let state = base.path.join("state");
    fs::create_dir(&state).expect("mkdir");
    fs::set_permissions(&state, fs::Permissions::from_mode(0o777)).expect("chmod");
    // What another user could have made while it was open: their own `packs/`.
    let packs = state.join("packs");
    fs::create_dir(&packs).expect("mkdir");
    chown(&packs, Some(STRANGER), Some(STRANGER)).expect("chown");
    let out = child(&base, "machine", &state_env(&state), &[]);
    assert_eq!(mode_of(&state), 0o700, "{out}");
    assert!(out.contains("had mode 0777; set it to 0700"), "{out}");
    for sub in ["slots", "versions", "ledger"] {
        if state.join(sub).exists() {
            assert_eq!(mode_of(&state.join(sub)), 0o700, "{sub}");
        }
    }
    assert!(state.join("slots").is_dir(), "{out}");
    let (ok, out) = run_child(&base, "pack", &state_env(&state), &[]);
    assert!(!ok, "a stranger's packs/ was used:\n{out}");
    assert!(out.contains(&format!("belongs to uid {STRANGER}")), "{out}");
    assert_eq!(listing(&packs), Vec::<String>::new());
}

/// Plant a finished-looking pack in the cache: `done` and `pack` regular files of ours, and
/// the sidecar as `plant` makes it.
fn plant_pack(state: &Path, plant: impl FnOnce(&Path)) -> PathBuf {
    let dir = pack_cache_dir(state);
    fs::create_dir_all(&dir).expect("mkdir");
    for p in [&state.to_path_buf(), &state.join("packs"), &dir] {
        fs::set_permissions(p, fs::Permissions::from_mode(0o700)).expect("chmod");
    }
    fs::set_permissions(
        state.join("packs/state-dir-test"),
        fs::Permissions::from_mode(0o700),
    )
    .expect("chmod");
    fs::write(dir.join("done"), "alpine\n").expect("done");
    fs::write(dir.join("pack"), "#!/bin/sh\n").expect("pack");
    let sidecar = dir.join("pack.smolmachine");
    plant(&sidecar);
    sidecar
}

fn assert_repacked(out: &str, sidecar: &Path) {
    assert!(
        out.contains(&format!("PACK {}", sidecar.display())),
        "{out}"
    );
    let meta = fs::symlink_metadata(sidecar).expect("stat");
    assert!(meta.is_file(), "still a symlink:\n{out}");
    assert_eq!(meta.uid(), 0, "{out}");
    let text = fs::read_to_string(sidecar).expect("read");
    assert!(
        !text.contains("EVIL"),
        "the planted pack was believed:\n{out}"
    );
    assert!(text.contains("alpine"), "{text}");
}

#[test]
fn a_planted_symlinked_pack_is_not_believed() {
    let base = base();
    let state = base.path.join("state");
    let evil = base.path.join("evil.smolmachine");
    fs::write(&evil, "EVIL").expect("write");
    let sidecar = plant_pack(&state, |p| symlink(&evil, p).expect("symlink"));
    let out = child(&base, "pack", &state_env(&state), &[]);
    assert_repacked(&out, &sidecar);
    assert_eq!(fs::read_to_string(&evil).expect("read"), "EVIL");
}

#[test]
fn a_planted_pack_of_another_user_is_not_believed() {
    let base = base();
    let state = base.path.join("state");
    let sidecar = plant_pack(&state, |p| {
        fs::write(p, "EVIL").expect("write");
        chown(p, Some(STRANGER), Some(STRANGER)).expect("chown");
    });
    let out = child(&base, "pack", &state_env(&state), &[]);
    assert_repacked(&out, &sidecar);
}

#[test]
fn a_planted_symlink_slot_file_is_not_written_through() {
    let base = base();
    let state = base.path.join("state");
    let slots = state.join("slots");
    fs::create_dir_all(&slots).expect("mkdir");
    fs::set_permissions(&state, fs::Permissions::from_mode(0o700)).expect("chmod");
    // Pointing at a file that does not exist yet: opening through it would create it.
    let victim = base.path.join("created-through-the-link");
    symlink(&victim, slots.join("slot-0.lock")).expect("symlink");
    let cap = PathBuf::from("1");
    let out = child(
        &base,
        "machine",
        &[
            ("SMOLVM_HARNESS_STATE_DIR", &state),
            ("SMOLVM_HARNESS_MAX_MACHINES", &cap),
        ],
        &[],
    );
    assert!(!victim.exists(), "created through the planted link:\n{out}");
    let meta = fs::symlink_metadata(slots.join("slot-0.lock")).expect("stat");
    assert!(meta.is_file() && meta.uid() == 0, "{out}");
}

#[test]
fn a_strangers_locked_slot_file_does_not_hold_the_slot_forever() {
    let base = base();
    let state = base.path.join("state");
    let slots = state.join("slots");
    fs::create_dir_all(&slots).expect("mkdir");
    fs::set_permissions(&state, fs::Permissions::from_mode(0o700)).expect("chmod");
    let planted = slots.join("slot-0.lock");
    fs::write(&planted, "").expect("write");
    chown(&planted, Some(STRANGER), Some(STRANGER)).expect("chown");
    // The stranger holds the lock for the whole test.
    let held = fs::File::open(&planted).expect("open");
    held.lock().expect("lock");
    let (cap, timeout) = (PathBuf::from("1"), PathBuf::from("5s"));
    let out = child(
        &base,
        "machine",
        &[
            ("SMOLVM_HARNESS_STATE_DIR", &state),
            ("SMOLVM_HARNESS_MAX_MACHINES", &cap),
            ("SMOLVM_HARNESS_TIMEOUT", &timeout),
        ],
        &[],
    );
    assert!(out.contains("belongs to uid 12345"), "{out}");
    let meta = fs::symlink_metadata(&planted).expect("stat");
    assert_eq!(
        meta.uid(),
        0,
        "the stranger's file was not replaced:\n{out}"
    );
    drop(held);
}

#[test]
fn the_default_state_dir_is_in_temp_with_the_uid() {
    let base = base();
    let xdg = base.path.join("xdg");
    fs::create_dir(&xdg).expect("mkdir");
    let tmp = base.path.join("tmp");
    fs::create_dir(&tmp).expect("mkdir");
    let user = PathBuf::from("someone");
    let out = child(
        &base,
        "machine",
        &[("TMPDIR", &tmp), ("USER", &user), ("XDG_RUNTIME_DIR", &xdg)],
        &["SMOLVM_HARNESS_STATE_DIR"],
    );
    // Tests run as root: uid 0, whatever $USER says.
    let state = tmp.join("smolvm-harness-0");
    assert!(state.join("slots").is_dir(), "{out}");
    assert_eq!(mode_of(&state), 0o700);
    assert_eq!(listing(&tmp), vec!["smolvm-harness-0".to_string()]);
    assert!(listing(&xdg).is_empty());
}

/// The crash watcher's files: a planted `watcher.log` or `watcher.lock` symlink is replaced,
/// never written through (it would append to any file the victim can write), and a ledger
/// directory planted as a symlink is refused with a clear error.
#[test]
fn planted_watcher_files_and_ledger_are_not_followed() {
    let base = base();
    let state = base.path.join("state");
    fs::create_dir(&state).expect("mkdir");
    fs::set_permissions(&state, fs::Permissions::from_mode(0o700)).expect("chmod");
    let victim = base.path.join("victim");
    fs::write(&victim, "victim's file\n").expect("victim");
    std::os::unix::fs::symlink(&victim, state.join("watcher.log")).expect("plant log");
    std::os::unix::fs::symlink(&victim, state.join("watcher.lock")).expect("plant lock");
    let watcher_on = PathBuf::from("on");
    let out = child(
        &base,
        "machine",
        &[
            ("SMOLVM_HARNESS_STATE_DIR", &state),
            ("SMOLVM_HARNESS_WATCHER", &watcher_on),
        ],
        &[],
    );
    assert_eq!(
        fs::read_to_string(&victim).expect("victim"),
        "victim's file\n",
        "written through a planted symlink:\n{out}"
    );
    for planted in ["watcher.log", "watcher.lock"] {
        let meta = fs::symlink_metadata(state.join(planted)).expect("stat");
        assert!(meta.is_file(), "{planted} was not replaced:\n{out}");
    }

    let elsewhere = base.path.join("elsewhere");
    fs::create_dir(&elsewhere).expect("mkdir");
    fs::set_permissions(&elsewhere, fs::Permissions::from_mode(0o700)).expect("chmod");
    let state = base.path.join("state2");
    fs::create_dir(&state).expect("mkdir");
    fs::set_permissions(&state, fs::Permissions::from_mode(0o700)).expect("chmod");
    std::os::unix::fs::symlink(&elsewhere, state.join("ledger")).expect("plant ledger");
    let (ok, out) = run_child(&base, "machine", &state_env(&state), &[]);
    assert!(!ok, "a machine was made with a planted ledger:\n{out}");
    assert!(out.contains("it is a symbolic link"), "{out}");
    assert!(listing(&elsewhere).is_empty(), "{out}");
}
