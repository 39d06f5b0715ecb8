//! Attacks on the workload features (issue 11): each `attack_*` test asserts a promise of the
//! docs (quoted above it) against the fake CLI, at process level where the behaviour is
//! reached through processes. A failing attack is a demonstrated defect.
//!
//! Run one: `cargo test --test attacks_workloads attack_NAME -- --nocapture`.

#![cfg(target_os = "linux")]

use std::path::Path;
use std::time::{Duration, Instant};

use smolvm_harness::{CreateOptions, Error, ExecOptions, Machine, Smolvm};

const SCENARIO: &str = "WORKLOADS_SCENARIO";

#[allow(dead_code)]
#[path = "common/attack_harness.rs"]
mod harness;
use harness::*;

/// This binary re-run as the child scenario `scenario`.
fn child(state_dir: &Path, scenario: &str, envs: &[(&str, &str)]) -> std::process::Command {
    child_of("workloads_child", SCENARIO, state_dir, scenario, envs)
}

/// Child scenarios (run by the attacks below through this same binary).
#[test]
fn workloads_child() {
    let Ok(scenario) = std::env::var(SCENARIO) else {
        return;
    };
    match scenario.as_str() {
        // A failing test whose machine saves artifacts (root from SMOLVM_HARNESS_ARTIFACTS).
        "fail-with-artifacts" => {
            let _vm = Machine::builder()
                .smolvm(plain())
                .image("alpine")
                .net()
                .test_name("planted")
                .start()
                .unwrap();
            panic!("the test fails");
        }
        // SMOLVM_HARNESS_STRICT_EGRESS=1 on a smolvm that does not enforce egress: the
        // builder and the client must both refuse, before any machine exists.
        "strict-egress" => {
            let by_builder = Machine::builder()
                .smolvm(plain())
                .image("alpine")
                .allow_cidr("10.0.0.0/8")
                .create();
            let by_client = plain().machine_create(
                "web",
                &CreateOptions::image("alpine").allow_cidr("10.0.0.0/8"),
            );
            println!(
                "\nRESULT builder={} client={}",
                kind(&by_builder.map(drop)),
                kind(&by_client)
            );
        }
        // Two machines with an egress policy in one process: one warning.
        "warn-egress" => {
            let a = Machine::builder()
                .smolvm(plain())
                .image("alpine")
                .allow_cidr("10.0.0.0/8")
                .create()
                .unwrap();
            let b = Machine::builder()
                .smolvm(plain())
                .image("alpine")
                .allow_host("127.0.0.1")
                .create()
                .unwrap();
            drop((a, b));
        }
        other => panic!("unknown scenario {other}"),
    }
}

fn kind(r: &Result<(), Error>) -> &'static str {
    match r {
        Ok(()) => "ok",
        Err(Error::Unsupported { .. }) => "unsupported",
        Err(Error::InvalidInput { .. }) => "invalid",
        Err(_) => "other",
    }
}

fn fake(state: &Path, version: &str) -> Smolvm {
    fake_at(state, version)
}

// ---------------------------------------------------------------------------------------
// Secrets
// ---------------------------------------------------------------------------------------

/// Promise (`Machine::console_log`): "the guest's console log … with the machine's secret
/// values scrubbed"; (`CreateOptions::env`) values are scrubbed from quoted output. The
/// scrub list is kept per machine *name*, process-wide: another smolvm state (another
/// `SMOLVM_DATA_DIR`, another fake state) with a machine of the same name replaces it, and
/// deleting that other machine forgets it. The first machine's secret then shows in clear.
#[test]
fn attack_secret_scrub_list_is_shared_by_machines_of_one_name_on_two_smolvms() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (sa, sb) = (fake(a.path(), "1.9.2"), fake(b.path(), "1.9.2"));
    const SECRET_A: &str = "alpha-secret-7d1e";
    let vm = Machine::builder()
        .smolvm(sa.clone())
        .name("wl-shared-name")
        .image("alpine")
        .net()
        .secret_env("TOKEN", SECRET_A)
        .start()
        .unwrap();
    vm.sh("echo token=$TOKEN > /dev/console")
        .unwrap()
        .assert_success();
    assert!(
        !vm.console_log().unwrap().contains(SECRET_A),
        "scrubbed at first"
    );

    // Another smolvm state, the same machine name, another secret; then deleted.
    sb.machine_create(
        "wl-shared-name",
        &CreateOptions::image("alpine")
            .net()
            .secret_env("TOKEN", "beta-secret-9c2f"),
    )
    .unwrap();
    let after_create = vm.console_log().unwrap();
    sb.machine_delete("wl-shared-name").unwrap();
    let after_delete = vm.console_log().unwrap();
    drop(vm);
    assert!(
        !after_create.contains(SECRET_A),
        "a same-named machine on another smolvm replaced this machine's scrub list:\n{after_create}"
    );
    assert!(
        !after_delete.contains(SECRET_A),
        "deleting a same-named machine on another smolvm forgot this machine's secrets:\n{after_delete}"
    );
}

/// The same flaw within one smolvm state and one process: a second `Smolvm::machine_create`
/// of a taken name fails with "already exists", but has already replaced the live machine's
/// scrub list with its own values (the builder is safe: it reserves the name first).
#[test]
fn attack_failed_create_of_a_taken_name_replaces_the_live_machines_scrub_list() {
    let st = tempfile::tempdir().unwrap();
    let s = fake(st.path(), "1.9.2");
    const SECRET: &str = "live-secret-4b8e";
    let vm = Machine::builder()
        .smolvm(s.clone())
        .name("wl-taken-name")
        .image("alpine")
        .net()
        .secret_env("TOKEN", SECRET)
        .start()
        .unwrap();
    vm.sh("echo token=$TOKEN > /dev/console")
        .unwrap()
        .assert_success();
    let second = Machine::builder()
        .smolvm(s.clone())
        .name("wl-taken-name")
        .image("alpine")
        .net()
        .secret_env("TOKEN", "other-secret-1a2b")
        .create();
    assert!(second.is_err(), "the name is taken");
    drop(second);
    // The builder refuses before calling smolvm (the name is reserved in this process);
    // the client does call it.
    let direct = s.machine_create(
        "wl-taken-name",
        &CreateOptions::image("alpine")
            .net()
            .secret_env("TOKEN", "other-secret-1a2b"),
    );
    assert!(direct.is_err(), "the name is taken");
    let log = vm.console_log().unwrap();
    drop(vm);
    assert!(
        !log.contains(SECRET),
        "a refused create of the same name unscrubbed the live machine's secret:\n{log}"
    );
}

/// Promise (guide, "Debugging a failing test"): a failing test's machines save "console.log
/// … secrets scrubbed"; (guide, "Secrets") "In output a message … quotes …, every value of 4
/// bytes or more is scrubbed". A secret given to one command (`MachineCommand::secret_env`,
/// the guide's own example) that the guest writes to its console is scrubbed neither from
/// `Error::NotReady` of `wait_for_log` (which quotes the log's tail) nor from the saved
/// `console.log`: only create-time values are remembered for scrubbing.
#[test]
fn attack_exec_secret_on_the_console_leaks_into_messages_and_artifacts() {
    const SESSION: &str = "sess-secret-0b9c44";
    let st = tempfile::tempdir().unwrap();
    let vm = Machine::builder()
        .smolvm(fake(st.path(), "1.9.2"))
        .image("alpine")
        .net()
        .start()
        .unwrap();
    vm.command(&["sh", "-c", "echo session=$SESSION > /dev/console"])
        .secret_env("SESSION", SESSION)
        .run()
        .unwrap()
        .assert_success();
    let err = vm
        .wait_for_log("never-printed", Duration::from_millis(200))
        .unwrap_err()
        .to_string();
    let (result, said) = smolvm_harness::diag::capture(|| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _vm = vm;
            panic!("the test fails");
        }))
    });
    assert!(result.is_err());
    let said = said.join("\n");
    let dir = said
        .lines()
        .find_map(|l| l.trim().strip_prefix("artifacts: "))
        .and_then(|rest| rest.split(" (").next())
        .map(std::path::PathBuf::from)
        .expect("the report names its artifacts");
    let console = std::fs::read_to_string(dir.join("console.log")).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    let mut leaks = Vec::new();
    if err.contains(SESSION) {
        leaks.push(format!(
            "wait_for_log's NotReady quotes a command's secret: {err}"
        ));
    }
    if console.contains(SESSION) {
        leaks.push(format!(
            "the saved console.log holds a command's secret:\n{console}"
        ));
    }
    assert!(leaks.is_empty(), "{}", leaks.join("\n\n"));
}

/// Promise (`CreateOptions::secret_env`): "Give every command of the machine a secret
/// environment variable". Each secret travels in a host variable named after its key, or
/// after its *position* when the key is not a plain identifier: key `0` (a plain
/// identifier) and a non-identifier key at position 0 both get `SMOLVM_HARNESS_SECRET_0`,
/// and the guest gets the wrong value under one of them.
#[test]
fn attack_secret_host_variables_collide_between_keys() {
    let st = tempfile::tempdir().unwrap();
    let vm = Machine::builder()
        .smolvm(fake(st.path(), "1.9.2"))
        .image("alpine")
        .net()
        .secret_env("db.password", "first-secret-aaaa")
        .secret_env("0", "second-secret-bbbb")
        .start()
        .unwrap();
    // Exec output is the guest's own, not scrubbed: the env shows which value went where.
    let env = vm.exec(&["env"]).unwrap().stdout_str();
    assert!(
        env.lines().any(|l| l == "db.password=first-secret-aaaa")
            && env.lines().any(|l| l == "0=second-secret-bbbb"),
        "the guest's secrets are mixed up:\n{env}"
    );
}

/// Promise (`MachineBuilder::secret_env` → `CreateOptions::secret_env`): the value reaches
/// "every later `start` and `exec` of this machine through this crate". After the machine
/// is deleted, a new machine of the same name without secrets must not be handed the old
/// secret (it is forgotten on delete) — checked here through a `Machine` guard's drop.
#[test]
fn probe_secret_forgotten_after_guard_drop() {
    let st = tempfile::tempdir().unwrap();
    let s = fake(st.path(), "1.9.2");
    {
        let _vm = Machine::builder()
            .smolvm(s.clone())
            .name("wl-forget")
            .image("alpine")
            .net()
            .secret_env("TOKEN", "forget-me-secret-1")
            .start()
            .unwrap();
    }
    s.machine_create("wl-forget", &CreateOptions::image("alpine").net())
        .unwrap();
    s.machine_start("wl-forget").unwrap();
    let out = s
        .machine_exec(
            "wl-forget",
            &["sh", "-c", "echo [$TOKEN]"],
            &ExecOptions::default(),
        )
        .unwrap();
    s.machine_delete("wl-forget").unwrap();
    assert_eq!(
        out.stdout_str(),
        "[]\n",
        "the old machine's secret reached a new one"
    );
}

/// Promise: "through any clone of this client" (`Smolvm::machine_create`); and a client made
/// the same way (`Smolvm::from_env()` twice) reaches the same machines. A second,
/// independently made client of the same binary and state must still deliver the secret.
#[test]
fn probe_secret_reaches_start_and_exec_of_another_client_of_the_same_binary() {
    let st = tempfile::tempdir().unwrap();
    fake(st.path(), "1.9.2")
        .machine_create(
            "wl-two-clients",
            &CreateOptions::image("alpine")
                .net()
                .secret_env("TOKEN", "two-clients-secret"),
        )
        .unwrap();
    let other = fake(st.path(), "1.9.2").with_timeout(Duration::from_secs(60));
    let started = other.machine_start("wl-two-clients");
    let out = other.machine_exec(
        "wl-two-clients",
        &[
            "sh",
            "-c",
            "test \"$TOKEN\" = two-clients-secret && echo same",
        ],
        &ExecOptions::default(),
    );
    other.machine_delete("wl-two-clients").unwrap();
    started.unwrap();
    assert_eq!(out.unwrap().stdout_str(), "same\n");
}

// ---------------------------------------------------------------------------------------
// extra_args
// ---------------------------------------------------------------------------------------

/// Promise (`CreateOptions::extra_args`): "Every guarantee of the crate still holds:
/// cleanup, the machine cap, generated names and ownership labels are decided around them."
/// Before smolvm 1.0.2 the machine name is a *positional* sent after the extra arguments: a
/// trailing flag that takes a value (`-w`, `--init`, `--gpu-vram`) swallows the name, smolvm
/// makes a machine with a random name, the crate believes it made its own, and the real
/// machine is never deleted.
#[test]
fn attack_extra_args_swallow_the_positional_name_before_1_0_2() {
    let mut leaks = Vec::new();
    for (version, extra) in [
        ("0.8.2", vec!["-w"]),
        ("1.0.0", vec!["--workdir"]),
        ("1.0.0", vec!["stray-word"]),
    ] {
        let st = tempfile::tempdir().unwrap();
        let s = fake(st.path(), version);
        let made = Machine::builder()
            .smolvm(s.clone())
            .image("alpine")
            .net()
            .extra_args(extra.iter().copied())
            .create();
        let name = made
            .as_ref()
            .map(|m| m.name().to_string())
            .map_err(|e| e.to_string());
        drop(made);
        let left = names(&s);
        for n in &left {
            let _ = s.machine_delete(n);
        }
        if !left.is_empty() {
            leaks.push(format!(
                "smolvm {version}, extra_args {extra:?}: the crate made {name:?} and left {left:?} behind"
            ));
        }
    }
    assert!(leaks.is_empty(), "{}", leaks.join("\n"));
}

// ---------------------------------------------------------------------------------------
// Egress honesty
// ---------------------------------------------------------------------------------------

/// Promise (`Smolvm::enforces_egress`): "refuses it with Error::Unsupported under
/// SMOLVM_HARNESS_STRICT_EGRESS=1", through the builder and `Smolvm::machine_create`.
#[test]
fn probe_strict_egress_refuses_through_builder_and_client() {
    let state_dir = tempfile::tempdir().unwrap();
    let fake_state = tempfile::tempdir().unwrap();
    let out = run_to_end(child(
        state_dir.path(),
        "strict-egress",
        &[
            ("SMOLVM_FAKE_STATE", fake_state.path().to_str().unwrap()),
            ("SMOLVM_FAKE_VERSION", "1.0.0"),
            ("SMOLVM_HARNESS_STRICT_EGRESS", "1"),
        ],
    ));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("RESULT builder=unsupported client=unsupported"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(names(&fake(fake_state.path(), "1.0.0")).is_empty());
}

/// Promise: "prints one warning per process when such a machine is created".
#[test]
fn probe_unenforced_egress_warns_once_per_process() {
    let state_dir = tempfile::tempdir().unwrap();
    let fake_state = tempfile::tempdir().unwrap();
    let out = run_to_end(child(
        state_dir.path(),
        "warn-egress",
        &[
            ("SMOLVM_FAKE_STATE", fake_state.path().to_str().unwrap()),
            ("SMOLVM_FAKE_VERSION", "1.0.0"),
        ],
    ));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{all}");
    assert_eq!(all.matches("does not enforce").count(), 1, "{all}");
}

// ---------------------------------------------------------------------------------------
// Readiness
// ---------------------------------------------------------------------------------------

/// Promise (module `readiness`): "Every wait polls … Running out of time is
/// Error::NotReady"; `wait_for_file(path, timeout)` waits "for at most timeout" like
/// `wait_until`. Each probe is a `machine exec` with the client's default timeout (300 s),
/// not bounded by the wait's deadline: against a guest whose exec hangs, a 300 ms wait lasts
/// as long as the hung exec.
#[test]
fn attack_wait_for_file_is_not_bounded_by_its_timeout() {
    let st = tempfile::tempdir().unwrap();
    let vm = Machine::builder()
        .smolvm(fake(st.path(), "1.9.2").with_process_env("SMOLVM_FAKE_LATENCY", "exec=8s"))
        .image("alpine")
        .net()
        .start()
        .unwrap();
    let t = Instant::now();
    let r = vm.wait_for_file("/never-there", Duration::from_millis(300));
    let took = t.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "a 300 ms wait took {took:?} ({r:?})"
    );
    assert!(matches!(r, Err(Error::NotReady { .. })), "{r:?}");
}

/// Promise (`Machine::wait_for_port`): a published port whose guest side has no listener
/// is "not yet"; and `NotReady` says what, how long and the last probe.
#[test]
fn probe_wait_for_published_port_without_listener_is_not_ready() {
    let st = tempfile::tempdir().unwrap();
    let vm = Machine::builder()
        .smolvm(fake(st.path(), "1.9.2"))
        .image("alpine")
        .net()
        .publish(8080)
        .secret_env("TOKEN", "port-probe-secret")
        .start()
        .unwrap();
    let err = vm
        .wait_for_port(8080, Duration::from_millis(500))
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::NotReady { .. }), "{text}");
    assert!(!text.contains("port-probe-secret"), "{text}");
}

// ---------------------------------------------------------------------------------------
// Artifacts
// ---------------------------------------------------------------------------------------

/// Promise (src/artifacts.rs): artifacts go under `<root>/<test>/<machine>/`, written
/// "never following a symlink there (the fallback root is in the shared temp directory)".
/// Only the last component is opened `O_NOFOLLOW`: a `<root>/<test>` planted as a symlink
/// to another directory makes a failing test delete that directory's `console.log` and
/// write its own there.
#[test]
fn attack_artifacts_follow_a_planted_directory_symlink() {
    let state_dir = tempfile::tempdir().unwrap();
    let fake_state = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("artifacts");
    let victim = tmp.path().join("victim");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&victim).unwrap();
    std::os::unix::fs::symlink(&victim, root.join("planted")).unwrap();
    // The machine name is generated; plant each possible `<machine>` is not needed: the
    // victim directory's own files are what is at stake one level down.
    let out = run_to_end(child(
        state_dir.path(),
        "fail-with-artifacts",
        &[
            ("SMOLVM_FAKE_STATE", fake_state.path().to_str().unwrap()),
            ("SMOLVM_FAKE_VERSION", "1.9.2"),
            ("SMOLVM_HARNESS_ARTIFACTS", root.to_str().unwrap()),
        ],
    ));
    assert!(!out.status.success());
    let written: Vec<String> = std::fs::read_dir(&victim)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        written.is_empty(),
        "a failing test wrote through the planted symlink into {}: {written:?}\n{}",
        victim.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------------------
// Ports
// ---------------------------------------------------------------------------------------

/// Promise (`MachineBuilder::start`): "when it failed because a host port picked by
/// `MachineBuilder::publish` was taken meanwhile, it is made again with other ports first".
/// A *fixed* host port (`port(HOST, GUEST)`) that is taken is not a picked port, and making
/// the machine again cannot help (the same port is sent each time); yet a builder that also
/// has one `publish` makes and deletes 5 machines before returning the error.
#[test]
fn attack_taken_fixed_port_is_retried_as_if_it_were_picked() {
    let st = tempfile::tempdir().unwrap();
    let log = st.path().join("calls.jsonl");
    let s = fake(st.path(), "1.9.2").with_process_env("SMOLVM_FAKE_LOG", log.to_str().unwrap());
    let holder = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let taken = holder.local_addr().unwrap().port();
    let r = Machine::builder()
        .smolvm(s.clone())
        .image("alpine")
        .net()
        .port(taken, 80)
        .publish(81)
        .start();
    assert!(r.is_err(), "the fixed host port is taken");
    drop(r);
    let calls = std::fs::read_to_string(&log).unwrap_or_default();
    let creates = calls.lines().filter(|l| l.contains("\"create\"")).count();
    assert!(names(&s).is_empty());
    assert_eq!(
        creates, 1,
        "a taken fixed port made {creates} machines:\n{calls}"
    );
}

// ---------------------------------------------------------------------------------------
// Secrets on smolvm 0.8.x: the refusal list
// ---------------------------------------------------------------------------------------

/// Promise (`CreateOptions::secret_env`, 0.8.1–0.9.x): "KEY must then not be a variable
/// smolvm itself reads (`HOME`, `PATH`, `TMPDIR`, `XDG_*`, `SMOLVM_*`, `RUST_*`, `LD_*`, …)".
/// The refusal is by prefix `LANG` (meant for `LANG`, `LANGUAGE`), which also refuses
/// ordinary secret names no program reads, such as `LANGFUSE_SECRET_KEY`.
#[test]
fn attack_0_8_secret_refusal_list_refuses_ordinary_keys() {
    let st = tempfile::tempdir().unwrap();
    let s = fake(st.path(), "0.8.2");
    let mut wrongly_refused = Vec::new();
    for key in ["LANGFUSE_SECRET_KEY", "LANGCHAIN_API_KEY", "SHELLY_TOKEN"] {
        let r = Machine::builder()
            .smolvm(s.clone())
            .image("alpine")
            .net()
            .secret_env(key, "ordinary-secret-77")
            .start();
        match r {
            Ok(vm) => {
                let out = vm.sh(&format!("echo ${key}")).unwrap();
                assert_eq!(out.stdout_str(), "ordinary-secret-77\n", "{key}");
            }
            Err(e) => wrongly_refused.push(format!("{key}: {e}")),
        }
    }
    assert!(wrongly_refused.is_empty(), "{}", wrongly_refused.join("\n"));
}

// ---------------------------------------------------------------------------------------
// Custom runners
// ---------------------------------------------------------------------------------------

/// A wrapper runner that forgets `Invocation::env` except the fake's state (a runner that
/// rebuilds the environment, or runs smolvm over ssh).
#[derive(Debug)]
struct DropsSecretEnv;

impl smolvm_harness::runner::Runner for DropsSecretEnv {
    fn run(
        &self,
        inv: &smolvm_harness::runner::Invocation,
    ) -> smolvm_harness::Result<smolvm_harness::runner::RawOutput> {
        let mut inv = inv.clone();
        inv.env.retain(|(k, _)| k.starts_with("SMOLVM_FAKE"));
        smolvm_harness::runner::ProcessRunner.run(&inv)
    }
}

/// Promise (`Runner`): a runner that runs real smolvm processes keeps the crate's
/// guarantees; one that drops the invocation's env breaks secrets. The failure should at
/// least be an error that names the secret, never a guest that silently lacks it.
#[test]
fn probe_runner_that_drops_env_fails_clearly() {
    let st = tempfile::tempdir().unwrap();
    let s = fake(st.path(), "1.9.2").with_runner(DropsSecretEnv);
    let r = Machine::builder()
        .smolvm(s.clone())
        .image("alpine")
        .net()
        .secret_env("TOKEN", "dropped-secret-55")
        .start();
    let err = r.map(drop).unwrap_err().to_string();
    assert!(err.contains("TOKEN") && err.contains("env_unset"), "{err}");
    assert!(!err.contains("dropped-secret-55"), "{err}");
    assert!(names(&fake(st.path(), "1.9.2")).is_empty());
}

// ---------------------------------------------------------------------------------------
// Debug / Display
// ---------------------------------------------------------------------------------------

/// Promise: secret values never appear in `Debug` of any type (builder, command, options).
#[test]
fn probe_debug_of_every_workload_type_hides_secrets() {
    const V: &str = "debug-secret-3c3c";
    let st = tempfile::tempdir().unwrap();
    let b = Machine::builder()
        .smolvm(fake(st.path(), "1.9.2"))
        .image("alpine")
        .net()
        .env("PLAIN", V)
        .secret_env("TOKEN", V);
    let shown = format!("{b:?}");
    assert!(!shown.contains(V), "{shown}");
    let vm = b.start().unwrap();
    let mut cmd = vm.command(&["true"]);
    cmd.secret_env("X", V).env("Y", V);
    let shown = format!("{cmd:?} {vm:?}");
    assert!(!shown.contains(V), "{shown}");
    let out = cmd.run().unwrap();
    let shown = format!("{out:?}");
    assert!(!shown.contains(V), "{shown}");
}

// ---------------------------------------------------------------------------------------
// Volumes
// ---------------------------------------------------------------------------------------

/// Promise (`CreateOptions::volume`): "The host directory must exist; it is sent absolute
/// and canonical. The guest path must be absolute"; system paths smolvm refuses are refused
/// before smolvm is called, also behind a symlink.
#[test]
fn probe_volume_inputs_are_refused_before_smolvm() {
    let st = tempfile::tempdir().unwrap();
    let s = fake(st.path(), "1.9.2");
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("f");
    std::fs::write(&file, "x").unwrap();
    let to_etc = tmp.path().join("etc-link");
    std::os::unix::fs::symlink("/etc", &to_etc).unwrap();
    let ok_dir = tmp.path().join("ok");
    std::fs::create_dir(&ok_dir).unwrap();
    let cases: Vec<(&str, CreateOptions)> = vec![
        (
            "missing",
            CreateOptions::image("alpine")
                .net()
                .volume(tmp.path().join("nope"), "/d"),
        ),
        (
            "file",
            CreateOptions::image("alpine").net().volume(&file, "/d"),
        ),
        (
            "symlink to /etc",
            CreateOptions::image("alpine").net().volume(&to_etc, "/d"),
        ),
        (
            "relative guest",
            CreateOptions::image("alpine").net().volume(&ok_dir, "d"),
        ),
        (
            "guest with colon",
            CreateOptions::image("alpine").net().volume(&ok_dir, "/a:b"),
        ),
        (
            "guest twice",
            CreateOptions::image("alpine")
                .net()
                .volume(&ok_dir, "/d")
                .volume_ro(tmp.path(), "/d"),
        ),
    ];
    for (what, opts) in cases {
        let r = s.machine_create("wl-vol", &opts);
        assert!(
            matches!(r, Err(Error::InvalidInput { .. })),
            "{what}: {r:?}"
        );
    }
    assert!(names(&s).is_empty());
    // A host path with `:` on 0.8.x.
    let colon = tmp.path().join("a:b");
    std::fs::create_dir(&colon).unwrap();
    let old = fake(st.path(), "0.8.2");
    let r = old.machine_create(
        "wl-vol",
        &CreateOptions::image("alpine").net().volume(&colon, "/d"),
    );
    assert!(matches!(r, Err(Error::InvalidInput { .. })), "{r:?}");
}
