//! Failure artifacts, at process level: this test binary re-runs its own ignored subject
//! (`subject::with_a_machine`) as a child test process that makes a machine (on a scripted
//! runner whose `machine data-dir` is a temp dir holding a console log) and then panics or
//! passes. The parent looks at what the child left under the artifacts root and what it
//! printed on stderr. The child's environment decides where artifacts go, as a user's does.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const SECRET: &str = "s3cr3t-artifact-token";
const TEST_DIR: &str = "subject__with_a_machine";

mod subject {
    use smolvm_harness::{Machine, Reply, ScriptedRunner, Smolvm};

    /// Run only by the drivers below, which set its variables.
    #[test]
    #[ignore = "a subject for the artifact drivers"]
    fn with_a_machine() {
        let var = |k: &str| std::env::var(k).expect(k);
        let runner = ScriptedRunner::new().on(
            &["machine", "data-dir"],
            Reply::stdout(format!("{}\n", var("ARTIFACTS_TEST_DATA_DIR"))),
        );
        let vm = Machine::builder()
            .smolvm(Smolvm::new("smolvm").with_runner(runner))
            .name(var("ARTIFACTS_TEST_MACHINE"))
            .env("TOKEN", super::SECRET)
            .create()
            .unwrap();
        vm.exec(&["echo", "hi"]).unwrap();
        if var("ARTIFACTS_TEST_OUTCOME") == "fail" {
            panic!("the subject fails on purpose");
        }
    }
}

/// A data dir with a console log and a startup error log, both quoting the secret.
fn data_dir(tmp: &Path) -> PathBuf {
    let dir = tmp.join("data");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("agent-console.log"),
        format!("[boot] kernel up\napp: token is {SECRET}\n"),
    )
    .unwrap();
    std::fs::write(
        dir.join("agent-startup-error.log"),
        format!("agent failed with {SECRET}\n"),
    )
    .unwrap();
    dir
}

/// The subject as a child, with `envs`; `SMOLVM_HARNESS_ARTIFACTS` and `CARGO_TARGET_DIR`
/// only as given.
fn run_subject(tmp: &Path, machine: &str, outcome: &str, envs: &[(&str, &str)]) -> Output {
    run_subject_as(
        &std::env::current_exe().unwrap(),
        tmp,
        machine,
        outcome,
        envs,
    )
}

/// [`run_subject`] with the test binary at `exe`.
fn run_subject_as(
    exe: &Path,
    tmp: &Path,
    machine: &str,
    outcome: &str,
    envs: &[(&str, &str)],
) -> Output {
    let state = tmp.join("state");
    let mut cmd = Command::new(exe);
    cmd.args([
        "--exact",
        "subject::with_a_machine",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .current_dir(tmp)
    .env("SMOLVM_HARNESS_STATE_DIR", &state)
    .env("SMOLVM_HARNESS_WATCHER", "off")
    .env_remove("SMOLVM_HARNESS_KEEP")
    .env_remove("SMOLVM_HARNESS_ARTIFACTS")
    .env_remove("CARGO_TARGET_DIR")
    // The parent's name under nextest would name the child's test too.
    .env_remove("NEXTEST_TEST_NAME")
    .env("ARTIFACTS_TEST_DATA_DIR", data_dir(tmp))
    .env("ARTIFACTS_TEST_MACHINE", machine)
    .env("ARTIFACTS_TEST_OUTCOME", outcome)
    .stdin(Stdio::null());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The failing subject's artifacts, checked in full at `dir`.
fn assert_artifacts(out: &Output, dir: &Path, machine: &str) {
    let err = stderr(out);
    assert!(!out.status.success(), "the subject must fail: {err}");
    assert!(
        err.contains(&format!(
            "artifacts: {} (console.log, transcript.txt, agent-startup-error.log)",
            dir.display()
        )),
        "{err}"
    );
    assert!(
        !err.contains("logs: agent-console.log in its data directory"),
        "{err}"
    );
    let console = std::fs::read_to_string(dir.join("console.log")).unwrap();
    assert_eq!(console, "[boot] kernel up\napp: token is <redacted>\n");
    let transcript = std::fs::read_to_string(dir.join("transcript.txt")).unwrap();
    assert!(
        transcript.contains(&format!(
            "smolvm machine exec --name {machine} -- echo hi -> exit 0"
        )),
        "{transcript}"
    );
    assert!(
        transcript.contains("--env=TOKEN=<redacted>"),
        "{transcript}"
    );
    let startup = std::fs::read_to_string(dir.join("agent-startup-error.log")).unwrap();
    assert_eq!(startup, "agent failed with <redacted>\n");
    for text in [&console, &transcript, &startup, &err] {
        assert!(!text.contains(SECRET), "{text}");
    }
}

#[test]
fn a_failing_test_leaves_artifacts_under_smolvm_harness_artifacts() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("art");
    let out = run_subject(
        tmp.path(),
        "art-fail",
        "fail",
        &[("SMOLVM_HARNESS_ARTIFACTS", root.to_str().unwrap())],
    );
    assert_artifacts(&out, &root.join(TEST_DIR).join("art-fail"), "art-fail");
}

#[test]
fn a_passing_test_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("art");
    let out = run_subject(
        tmp.path(),
        "art-pass",
        "pass",
        &[("SMOLVM_HARNESS_ARTIFACTS", root.to_str().unwrap())],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!root.exists(), "{root:?} was written");
    assert!(!stderr(&out).contains("artifacts:"), "{}", stderr(&out));
}

#[test]
fn never_writes_nothing_and_keeps_the_data_dir_hint() {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("tgt");
    let out = run_subject(
        tmp.path(),
        "art-never",
        "fail",
        &[
            ("SMOLVM_HARNESS_ARTIFACTS", "never"),
            ("CARGO_TARGET_DIR", target.to_str().unwrap()),
        ],
    );
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(!target.exists(), "{target:?} was written");
    assert!(
        err.contains(
            "logs: agent-console.log in its data directory, printed by: smolvm machine data-dir --name art-never"
        ),
        "{err}"
    );
    assert!(
        err.contains("no artifacts saved: SMOLVM_HARNESS_ARTIFACTS=never"),
        "{err}"
    );
    assert!(!err.contains("artifacts: /"), "{err}");
}

#[test]
fn a_relative_artifacts_path_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = run_subject(
        tmp.path(),
        "art-relative",
        "pass",
        &[("SMOLVM_HARNESS_ARTIFACTS", "art")],
    );
    let err = format!("{}{}", stderr(&out), String::from_utf8_lossy(&out.stdout));
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("SMOLVM_HARNESS_ARTIFACTS"), "{err}");
    assert!(!tmp.path().join("art").exists());
}

#[test]
fn cargo_target_dir_is_honoured_relative_to_the_current_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let out = run_subject(
        tmp.path(),
        "art-target",
        "fail",
        &[("CARGO_TARGET_DIR", "rel-target")],
    );
    let dir = tmp
        .path()
        .join("rel-target/smolvm-harness")
        .join(TEST_DIR)
        .join("art-target");
    assert_artifacts(&out, &dir, "art-target");
}

/// This test binary, copied to `<tmp>/t/debug/deps/`, with a `CACHEDIR.TAG` in `<tmp>/t` if
/// `tag`: a target directory laid out as cargo does, whatever built this one.
fn binary_in_target(tmp: &Path, tag: bool) -> PathBuf {
    let target = tmp.join("t");
    let deps = target.join("debug/deps");
    std::fs::create_dir_all(&deps).unwrap();
    if tag {
        std::fs::write(
            target.join("CACHEDIR.TAG"),
            "Signature: 8a477f597d28d172789f06886806bc55\n",
        )
        .unwrap();
    }
    let exe = deps.join("artifacts-copy");
    let from = std::env::current_exe().unwrap();
    if std::fs::hard_link(&from, &exe).is_err() {
        std::fs::copy(&from, &exe).unwrap();
    }
    exe
}

#[test]
fn without_cargo_target_dir_the_binary_s_target_dir_is_used() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = binary_in_target(tmp.path(), true);
    let out = run_subject_as(
        &exe,
        tmp.path(),
        "art-default",
        "fail",
        &[("CARGO_MANIFEST_DIR", "/nonexistent/manifest")],
    );
    let dir = tmp
        .path()
        .join("t/smolvm-harness")
        .join(TEST_DIR)
        .join("art-default");
    assert_artifacts(&out, &dir, "art-default");
}

#[test]
fn without_a_target_dir_tag_the_manifest_dir_s_target_is_used() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = binary_in_target(tmp.path(), false);
    let manifest = tmp.path().join("m");
    let out = run_subject_as(
        &exe,
        tmp.path(),
        "art-manifest",
        "fail",
        &[("CARGO_MANIFEST_DIR", manifest.to_str().unwrap())],
    );
    let dir = manifest
        .join("target/smolvm-harness")
        .join(TEST_DIR)
        .join("art-manifest");
    assert_artifacts(&out, &dir, "art-manifest");
}
