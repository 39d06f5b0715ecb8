//! `Pack`: the pack command, the lifetime of its files, and packing once per image per run,
//! across threads (scripted runner) and across processes (a fake smolvm script).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use smolvm_harness::runner::{Invocation, RawOutput, Runner};
use smolvm_harness::{Error, Pack, Reply, ScriptedRunner, Smolvm};

fn client(runner: &ScriptedRunner) -> Smolvm {
    Smolvm::new("smolvm").with_runner(runner.clone())
}

fn pack_calls(runner: &ScriptedRunner) -> Vec<Vec<String>> {
    runner
        .argvs()
        .into_iter()
        .filter(|a| a.first().map(String::as_str) == Some("pack"))
        .collect()
}

#[test]
fn create_packs_into_a_fresh_directory_and_returns_the_sidecar() {
    let runner = ScriptedRunner::new();
    let pack = Pack::create_with(&client(&runner), "alpine:3.20").unwrap();
    let dir = pack.path().parent().unwrap().to_path_buf();
    assert!(dir.is_dir());
    assert_eq!(pack.path(), dir.join("pack.smolmachine"));
    assert_eq!(pack.image(), "alpine:3.20");
    let out = dir.join("pack");
    assert_eq!(
        runner.argvs(),
        vec![vec![
            "pack".to_string(),
            "create".into(),
            "--image".into(),
            "alpine:3.20".into(),
            "-o".into(),
            out.to_str().unwrap().into(),
        ]]
    );
    assert!(format!("{pack:?}").contains("alpine:3.20"));
}

#[test]
fn dropping_a_pack_removes_its_files() {
    let runner = ScriptedRunner::new();
    let pack = Pack::create_with(&client(&runner), "alpine").unwrap();
    fs::write(pack.path(), b"sidecar").unwrap();
    let dir = pack.path().parent().unwrap().to_path_buf();
    drop(pack);
    assert!(!dir.exists());
}

#[test]
fn keep_persists_the_files() {
    let runner = ScriptedRunner::new();
    let pack = Pack::create_with(&client(&runner), "alpine").unwrap();
    fs::write(pack.path(), b"sidecar").unwrap();
    let expected = pack.path().to_path_buf();
    let kept = pack.keep();
    assert_eq!(kept, expected);
    assert!(kept.is_file());
    fs::remove_dir_all(kept.parent().unwrap()).unwrap();
}

#[test]
fn disable_cleanup_and_close() {
    let runner = ScriptedRunner::new();
    let mut pack = Pack::create_with(&client(&runner), "alpine").unwrap();
    let dir = pack.path().parent().unwrap().to_path_buf();
    pack.disable_cleanup(true);
    drop(pack);
    assert!(dir.is_dir());
    fs::remove_dir_all(&dir).unwrap();

    let pack = Pack::create_with(&client(&runner), "alpine").unwrap();
    let dir = pack.path().parent().unwrap().to_path_buf();
    pack.close().unwrap();
    assert!(!dir.exists());
}

#[test]
fn a_failed_pack_returns_the_error_and_leaves_nothing() {
    let runner = ScriptedRunner::new().on(&["pack"], Reply::fail(1, "Error: pull failed: 404\n"));
    let err = Pack::create_with(&client(&runner), "nope:1").unwrap_err();
    assert!(err.to_string().contains("pull failed"), "{err}");
    let out = PathBuf::from(&runner.argvs()[0][5]);
    assert!(!out.parent().unwrap().exists());
}

#[test]
fn an_empty_image_is_refused_before_anything_runs() {
    let runner = ScriptedRunner::new();
    for image in ["", "  ", "-rf"] {
        let err = Pack::create_with(&client(&runner), image).unwrap_err();
        assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
        let err = Pack::shared_with(&client(&runner), image).unwrap_err();
        assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
    }
    assert!(runner.calls().is_empty());
}

/// Makes `pack create` slow, so that eight threads really do ask while the first is packing.
#[derive(Debug)]
struct SlowPack(ScriptedRunner);

impl Runner for SlowPack {
    fn run(&self, inv: &Invocation) -> smolvm_harness::Result<RawOutput> {
        if inv.args.first().map(String::as_str) == Some("pack") {
            thread::sleep(Duration::from_millis(200));
        }
        self.0.run(inv)
    }

    fn in_process(&self) -> bool {
        self.0.in_process()
    }
}

#[test]
fn shared_packs_once_for_eight_threads_asking_at_once() {
    let runner = ScriptedRunner::new();
    let smolvm = Smolvm::new("smolvm").with_runner(SlowPack(runner.clone()));
    let barrier = Arc::new(Barrier::new(8));
    let packs: Vec<Arc<Pack>> = (0..8)
        .map(|_| {
            let (smolvm, barrier) = (smolvm.clone(), Arc::clone(&barrier));
            thread::spawn(move || {
                barrier.wait();
                Pack::shared_with(&smolvm, "shared-eight-threads:1").unwrap()
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    assert_eq!(pack_calls(&runner).len(), 1);
    assert!(packs.iter().all(|p| Arc::ptr_eq(p, &packs[0])));
    // Another image is packed separately.
    let other = Pack::shared_with(&smolvm, "shared-eight-threads:2").unwrap();
    assert_ne!(other.path(), packs[0].path());
    assert_eq!(pack_calls(&runner).len(), 2);
}

#[test]
fn a_failed_shared_pack_is_retried_by_the_next_caller() {
    let runner = ScriptedRunner::new().on_times(
        &["pack"],
        1,
        Reply::fail(1, "Error: pull failed: timeout\n"),
    );
    let smolvm = client(&runner);
    assert!(Pack::shared_with(&smolvm, "shared-retry:1").is_err());
    let pack = Pack::shared_with(&smolvm, "shared-retry:1").unwrap();
    assert_eq!(pack_calls(&runner).len(), 2);
    let again = Pack::shared_with(&smolvm, "shared-retry:1").unwrap();
    assert!(Arc::ptr_eq(&pack, &again));
    assert_eq!(pack_calls(&runner).len(), 2);
}

// ---- A real process runner over a fake smolvm, for the on-disk, cross-process cache. ----

/// A smolvm that only knows `--version` and `pack create`. It logs each `-o` to `log` next to
/// the path it was called by, fails while a file `fail` is there, and takes 300 ms to pack.
#[cfg(unix)]
const FAKE_SMOLVM: &str = r#"#!/bin/sh
dir=$(dirname "$0")
case "$1" in
  --version) echo "smolvm 1.9.2"; exit 0 ;;
  pack)
    out=""
    while [ $# -gt 0 ]; do
      if [ "$1" = "-o" ]; then out="$2"; fi
      shift
    done
    echo "$out" >> "$dir/log"
    if [ -e "$dir/fail" ]; then echo "Error: pack failed: no space left" >&2; exit 1; fi
    sleep 0.3
    echo data > "$out" && echo sidecar > "$out.smolmachine"
    exit 0 ;;
esac
echo "Error: unexpected: $*" >&2
exit 1
"#;

/// The fake, written once per build; each test reaches it through its own symlink, so that
/// each test has its own log and its own cache key (the program path).
///
/// Why a symlink and not a copy per test: exec of a file that any process still has open for
/// writing fails with ETXTBSY, and a concurrent fork in another test inherits such handles;
/// writing one file once, before it is ever run, avoids that race.
#[cfg(unix)]
fn fake_smolvm() -> (tempfile::TempDir, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    use std::sync::OnceLock;
    static SCRIPT: OnceLock<PathBuf> = OnceLock::new();
    let script = SCRIPT.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let path = dir.join("fake-smolvm-pack-v1.sh");
        if fs::read_to_string(&path).ok().as_deref() != Some(FAKE_SMOLVM) {
            let tmp = dir.join(format!("fake-smolvm-pack.{}.tmp", std::process::id()));
            fs::write(&tmp, FAKE_SMOLVM).unwrap();
            fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755)).unwrap();
            fs::rename(&tmp, &path).unwrap();
        }
        // Run it once, waiting out any ETXTBSY from handles inherited by a concurrent fork.
        for _ in 0..100 {
            match std::process::Command::new(&path).arg("--version").output() {
                Ok(out) if out.status.success() => break,
                _ => thread::sleep(Duration::from_millis(20)),
            }
        }
        path
    });
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let link = dir.path().join("smolvm");
    std::os::unix::fs::symlink(script, &link).unwrap();
    (dir, link)
}

#[cfg(unix)]
fn logged_outputs(dir: &Path) -> Vec<PathBuf> {
    fs::read_to_string(dir.join("log"))
        .unwrap_or_default()
        .lines()
        .map(PathBuf::from)
        .collect()
}

#[cfg(unix)]
#[test]
fn shared_on_disk_marks_done_only_after_success_and_retries_a_failure() {
    let (dir, program) = fake_smolvm();
    let smolvm = Smolvm::new(&program);
    fs::write(dir.path().join("fail"), b"").unwrap();
    let err = Pack::shared_with(&smolvm, "disk-retry:1").unwrap_err();
    assert!(err.to_string().contains("no space left"), "{err}");
    let outputs = logged_outputs(dir.path());
    assert_eq!(outputs.len(), 1);
    let cache_dir = outputs[0].parent().unwrap().to_path_buf();
    assert!(cache_dir.join("lock").is_file());
    assert!(
        !cache_dir.join("done").exists(),
        "a failed pack must not be marked done"
    );

    fs::remove_file(dir.path().join("fail")).unwrap();
    let pack = Pack::shared_with(&smolvm, "disk-retry:1").unwrap();
    assert_eq!(logged_outputs(dir.path()).len(), 2);
    assert_eq!(pack.path(), cache_dir.join("pack.smolmachine"));
    assert!(pack.path().is_file());
    assert!(cache_dir.join("done").is_file());

    // Shared packs outlive their `Arc`s: other processes may be using them.
    drop(pack);
    let again = Pack::shared_with(&smolvm, "disk-retry:1").unwrap();
    assert!(again.path().is_file());
    assert_eq!(logged_outputs(dir.path()).len(), 2);
}

/// Set in the children of `shared_packs_once_across_processes`: the fake smolvm to use.
const HELPER_ENV: &str = "SMOLVM_HARNESS_TEST_PACK_HELPER";

/// Not a test of its own: packs through the shared cache when run as a child below.
#[test]
fn shared_pack_helper() {
    let Some(program) = std::env::var_os(HELPER_ENV) else {
        return;
    };
    let pack = Pack::shared_with(&Smolvm::new(program), "cross-process:1").unwrap();
    println!("\nPACK={}", pack.path().display());
}

#[cfg(unix)]
#[test]
fn shared_packs_once_across_processes() {
    use std::process::{Command, Stdio};
    let (dir, program) = fake_smolvm();
    let state = dir.path().join("state");
    let run_id = format!("xproc-{}", std::process::id());
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..2)
        .map(|_| {
            Command::new(&exe)
                .args([
                    "--exact",
                    "shared_pack_helper",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(HELPER_ENV, &program)
                .env("SMOLVM_HARNESS_STATE_DIR", &state)
                .env("SMOLVM_HARNESS_RUN_ID", &run_id)
                // The run id must come from SMOLVM_HARNESS_RUN_ID even under nextest.
                .env_remove("NEXTEST_RUN_ID")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut paths = Vec::new();
    for child in children {
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = stdout
            .lines()
            .find_map(|l| l.strip_prefix("PACK="))
            .unwrap_or_else(|| panic!("no PACK= line in {stdout}"));
        paths.push(PathBuf::from(path));
    }
    assert_eq!(paths[0], paths[1]);
    assert_eq!(logged_outputs(dir.path()).len(), 1, "packed more than once");
    assert!(paths[0].starts_with(state.join("packs").join(&run_id)));
    assert!(paths[0].is_file());
    assert!(paths[0].parent().unwrap().join("done").is_file());
}

#[test]
fn packing_without_smolvm_is_not_found_with_advice() {
    let missing = Smolvm::new("/nonexistent/bin/smolvm");
    for err in [
        Pack::create_with(&missing, "alpine").unwrap_err(),
        Pack::shared_with(&missing, "alpine").unwrap_err(),
    ] {
        assert!(matches!(err, Error::NotFound { .. }), "{err}");
        assert!(err.to_string().contains("SMOLVM_BIN"), "{err}");
    }
}
