//! Hostile review of the remote mode (`Smolvm::remote`, `SMOLVM_HOST`, issue 13): each test
//! attacks one promise of README "Remote smolvm: one variable, the same suite" or the guide's
//! "Remote smolvm (`SMOLVM_HOST`)", the way a demanding user (or a hostile server) would.
//!
//! Tests named `defect_*` failed on the code they were written against: each showed a
//! promise broken, and says what is expected. All ten are fixed and stay as regression tests.
//! Tests named `held_*` are probes whose promise held; they stay too.
//!
//! Servers: the simulated `smolvm serve` (`smolvm-fake serve`, `tests/common/serve.rs`), or a
//! canned server answered by hand here (a unix socket or loopback TCP) for what no honest
//! server does (trickling answers, odd bodies).

#[path = "common/canned_api.rs"]
mod canned_api;
#[path = "common/serve.rs"]
mod serve;

use std::io::Write;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use canned_api::{read_request, Canned, RUNNING, STOPPED};
use serial_test::file_serial;
use serve::{finish, ledger_names, rerun, wait_for, SimServer};
use smolvm_harness::{CreateOptions, Error, ExecOptions, Machine, MachineState, Smolvm};

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// This test binary again, running `attack_child` with `role`.
fn child(role: &str, state: &Path) -> Command {
    let mut cmd = rerun("attack_child");
    cmd.env("ATTACK_CHILD", role)
        .env("SMOLVM_HARNESS_STATE_DIR", state);
    cmd
}

// ---------------------------------------------------------------------------------------
// Ownership
// ---------------------------------------------------------------------------------------

/// HELD (control for the next test). A machine never dropped (`mem::forget`, as a static or
/// a `#[once]` fixture is) is deleted by the exit hook over the API.
#[test]
#[file_serial(attacks_remote_env)]
fn held_exit_hook_deletes_a_forgotten_machine_over_the_api() {
    exit_hook_with_server_clock_skew(0);
}

/// Was a DEFECT, now fixed. A server on another host has its own clock. `judge`
/// (src/cleanup/owner.rs, `made_in_window`) compared the API's `createdAt` (the *server's*
/// clock) with `registered_at`/`created_by` (*our* clock) with 1 s of slack: against a
/// server whose clock is an hour ahead (`SMOLVM_FAKE_CLOCK_SKEW` in the server's env), a
/// machine with a name we generated was judged `NotOurs`, its ledger entry dropped, and it
/// leaked from every layer that judges (exit hook, signal thread, watcher, sweep). Now the
/// claim keeps the server's own `createdAt` from the create's answer. Expected: the exit hook
/// deletes it.
#[test]
#[file_serial(attacks_remote_env)]
fn defect_a_server_clock_ahead_makes_the_exit_hook_leak_our_machine() {
    exit_hook_with_server_clock_skew(3600);
}

fn exit_hook_with_server_clock_skew(skew: i64) {
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let skew_text = skew.to_string();
    let server = SimServer::start_with(
        dir.path(),
        "1.9.2",
        &[("SMOLVM_FAKE_CLOCK_SKEW", skew_text.as_str())],
    );
    let release = dir.path().join("release");
    let held = dir.path().join("release.held");
    let proc = child("forget_then_exit", state.path())
        .env("SMOLVM_HOST", &server.url)
        .env("SMOLVM_HARNESS_WATCHER", "off")
        .env("ATTACK_RELEASE", &release)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(wait_for(&held, Duration::from_secs(30)), "child never held");
    assert_eq!(server.machines().len(), 1, "{:?}", server.machines());
    std::fs::write(&release, "").unwrap();
    let (ok, text) = finish(proc, Duration::from_secs(60));
    assert!(ok, "{text}");
    assert!(
        server.machines().is_empty(),
        "our machine leaked (server clock {skew} s ahead): {:?}; ledger: {:?}\n{text}",
        server.machines(),
        ledger_names(state.path())
    );
}

/// Was a DEFECT, now fixed: the dangerous direction of the clock comparison above. A chosen
/// name (`web`) held as a static: someone deletes our `web` on the server and makes their
/// own `web` a few seconds later. Against a server whose clock is behind ours by those
/// seconds, their machine's `createdAt` fell inside our create's window (our clock), `judge`
/// said `Ours`, and the exit hook deleted *their* machine. Now only the server's `createdAt`
/// of the machine our create made counts. Expected: someone else's `web` stays.
#[test]
#[file_serial(attacks_remote_env)]
fn defect_a_server_clock_behind_makes_the_exit_hook_delete_someone_elses_machine() {
    remade_by_someone_else_with_server_clock_behind(true);
}

/// HELD (control for the test above). Same sequence, one clock: someone else's `web` stays.
#[test]
#[file_serial(attacks_remote_env)]
fn held_a_chosen_name_remade_by_someone_else_stays_at_exit() {
    remade_by_someone_else_with_server_clock_behind(false);
}

fn remade_by_someone_else_with_server_clock_behind(behind: bool) {
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    // The server's host clock is behind ours by the 3 s the other user waits below, so
    // their machine's `createdAt` is inside our create's window on our clock.
    let skew = if behind { "-3" } else { "0" };
    let server = SimServer::start_with(dir.path(), "1.9.2", &[("SMOLVM_FAKE_CLOCK_SKEW", skew)]);
    let release = dir.path().join("release");
    let held = dir.path().join("release.held");
    let proc = child("forget_web_then_exit", state.path())
        .env("SMOLVM_HOST", &server.url)
        .env("SMOLVM_HARNESS_WATCHER", "off")
        .env("ATTACK_RELEASE", &release)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(wait_for(&held, Duration::from_secs(30)), "child never held");
    let entry: serde_json::Value = {
        let dir = state.path().join("ledger");
        let file = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .find(|e| e.file_name().to_string_lossy().ends_with(".json"))
            .expect("a ledger entry");
        serde_json::from_str(&std::fs::read_to_string(file.path()).unwrap()).unwrap()
    };
    assert_eq!(entry["evidence"], "absent-before-create", "{entry}");
    assert!(entry["created_by"].as_u64().is_some(), "created: {entry}");
    // Someone else, by hand, a few seconds later: ours goes, theirs comes.
    std::thread::sleep(Duration::from_secs(3));
    let cli = server.cli();
    cli.machine_delete("web").unwrap();
    cli.machine_create("web", &CreateOptions::image("alpine").net())
        .unwrap();
    std::fs::write(&release, "").unwrap();
    let (ok, text) = finish(proc, Duration::from_secs(60));
    assert!(ok, "{text}");
    assert_eq!(
        server.machines(),
        vec!["web".to_string()],
        "someone else's `web` was deleted\n{text}"
    );
}

/// DEFECT. One server, two spellings of its URL (`unix:///d/x/../api.sock` and
/// `unix:///d/api.sock`; likewise `localhost` and `127.0.0.1`): the ledger groups entries by
/// the URL string (`Target::remote`, src/cleanup/ledger.rs; `sweep` filters `e.target ==
/// target`, src/cleanup/sweep.rs), so the next run's sweep under the other spelling never
/// sees the machine a SIGKILLed process left (watcher off: the sweep is the last layer).
/// The same split doubles the machine cap and the name reservations per server.
/// Expected: the sweep reaches the entries of the same server, however it was spelled.
#[test]
#[file_serial(attacks_remote_env)]
fn defect_the_next_sweep_misses_a_leak_under_another_spelling_of_the_same_socket() {
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let server = SimServer::start(dir.path(), "1.9.2");
    std::fs::create_dir(dir.path().join("x")).unwrap();
    let other_spelling = format!("unix://{}/x/../api.sock", dir.path().display());
    assert_ne!(other_spelling, server.url);
    let release = dir.path().join("never");
    let held = dir.path().join("never.held");
    let mut proc = child("hold", state.path())
        .env("SMOLVM_HOST", &other_spelling)
        .env("SMOLVM_HARNESS_WATCHER", "off")
        .env("ATTACK_RELEASE", &release)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_for(&held, Duration::from_secs(30)), "child never held");
    proc.kill().unwrap();
    proc.wait().unwrap();
    assert_eq!(server.machines().len(), 1, "left by the SIGKILL");
    assert_eq!(ledger_names(state.path()).len(), 1, "its entry stays");
    let sweep = child("sweep", state.path())
        .env("SMOLVM_HOST", &server.url)
        .env("SMOLVM_HARNESS_WATCHER", "off")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (ok, text) = finish(sweep, Duration::from_secs(60));
    assert!(ok, "{text}");
    assert!(
        server.machines().is_empty(),
        "the sweep of {} left {:?} (ledgered under {other_spelling})\n{text}",
        server.url,
        server.machines()
    );
}

/// DEFECT. `Endpoint::parse` documents "a trailing `/` is allowed", and for `http://` it is
/// dropped; for `unix://` it is kept in the socket path (`/d/api.sock/`), so connecting fails
/// (ENOTDIR) and a live server is "not available": the skip guards skip the whole suite.
/// Expected: `unix:///d/api.sock/` reaches the server at `/d/api.sock` (and prints without
/// the slash, so the ledger groups it with the plain spelling).
#[test]
fn defect_a_trailing_slash_on_a_unix_url_makes_a_live_server_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let server = SimServer::start(dir.path(), "1.9.2");
    let smolvm = Smolvm::remote(&format!("{}/", server.url)).expect("a trailing / is allowed");
    assert!(
        smolvm.is_available(),
        "{:?} with a trailing / is not available: {:?}",
        server.url,
        smolvm.version()
    );
    assert_eq!(smolvm.remote_url(), Some(server.url.as_str()));
}

/// DEFECT. `Endpoint::is_local` (src/remote/endpoint.rs) compares the host with
/// `"localhost"` case-sensitively; host names are case-insensitive (RFC 4343), so
/// `http://LOCALHOST:port` is taken for another host and a pack (`from_path`) is refused as
/// "a host path on a remote smolvm". Expected: the create is sent, as for `localhost`.
#[test]
fn defect_localhost_in_capitals_is_taken_for_a_remote_host() {
    let server = Canned::tcp("1.9.2", |method, _, _| match method {
        "POST" => (
            200,
            "application/json",
            STOPPED.replace("stopped", "created"),
        ),
        _ => (
            404,
            "application/json",
            r#"{"error":"no","code":"NOT_FOUND"}"#.into(),
        ),
    });
    let port = server.port.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pack = dir.path().join("app.smolmachine");
    std::fs::write(&pack, b"pack").unwrap();
    for host in ["localhost", "LOCALHOST"] {
        let smolvm = Smolvm::remote(&format!("http://{host}:{port}")).unwrap();
        let result = smolvm.machine_create("web", &CreateOptions::from_path(&pack));
        assert!(
            !matches!(result, Err(Error::Unsupported { .. })),
            "{host}: {result:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Server trouble
// ---------------------------------------------------------------------------------------

/// DEFECT. "`is_available()`: `GET /health` answered, within 10 s at most" and "every
/// socket has read and write timeouts, so a server that accepts and never answers costs at
/// most the call's timeout" (src/remote/http.rs). The timeout is per `read`, not per call: a
/// server that trickles its answer a byte at a time (a stuck proxy, a hostile server) holds
/// `is_available()` (and every call, including the exit hook's and the signal thread's
/// bounded deletes) for as long as it trickles: the 64 KiB head limit at 5 bytes/s is
/// hours. Expected: the whole exchange is bounded by the call's timeout (a deadline checked
/// before each read, the read timeout set to what is left).
#[test]
fn defect_a_trickling_server_holds_is_available_past_its_bound() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let _ = read_request(&mut conn);
                let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nx-pad: ");
                let deadline = Instant::now() + Duration::from_secs(120);
                while Instant::now() < deadline {
                    if conn.write_all(b"a").is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            });
        }
    });
    let url = format!("unix://{}", sock.display());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let smolvm = Smolvm::remote(&url)
            .unwrap()
            .with_timeout(Duration::from_secs(1));
        let _ = tx.send(smolvm.is_available());
    });
    // 10 s is the documented bound; 1 s is the client's timeout. Generous slack.
    match rx.recv_timeout(Duration::from_secs(25)) {
        Ok(available) => assert!(!available, "a trickling server is not available"),
        Err(_) => panic!("is_available() still waiting on a trickling server after 25 s"),
    }
}

/// HELD. A server that accepts and never answers: `is_available()` is false within the
/// client's timeout, and so is any call.
#[test]
fn held_a_silent_server_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = Arc::clone(&held);
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            keep.lock().unwrap().push(conn);
        }
    });
    let url = format!("unix://{}", sock.display());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let smolvm = Smolvm::remote(&url)
            .unwrap()
            .with_timeout(Duration::from_secs(1));
        let available = smolvm.is_available();
        let list = smolvm.machine_list();
        let _ = tx.send((available, list.is_err()));
    });
    let (available, list_failed) = rx
        .recv_timeout(Duration::from_secs(25))
        .expect("bounded by the 1 s timeout");
    assert!(!available && list_failed);
}

/// HELD. Garbage, a 200 that is not JSON, a wrong `version`, an oversized body: typed
/// errors, never a panic or a hang.
#[test]
fn held_garbage_answers_are_typed_errors() {
    let server = Canned::unix("not-a-version", |_, path, _| {
        if path == "/api/v1/machines" {
            (200, "text/html", "<html>proxy login</html>".into())
        } else {
            (200, "application/json", "{".into())
        }
    });
    let smolvm = Smolvm::remote(&server.url).unwrap();
    assert!(matches!(smolvm.version(), Err(Error::Parse { .. })));
    let smolvm = smolvm.with_version("1.9.2".parse().unwrap());
    assert!(matches!(smolvm.machine_list(), Err(Error::Parse { .. })));
    assert!(matches!(
        smolvm.machine_status("web"),
        Err(Error::Parse { .. })
    ));
}

/// DEFECT. A create the server answers 408 (its 300 s request limit, `TimeoutLayer`, with
/// the create going on behind it: smolvm-cli-more.md §9.2) or that our own timeout cuts
/// (`Error::Unreachable`) is not over on the server. `abandon` (src/cleanup/registry.rs)
/// lists at once, finds nothing yet, judges `Gone` with `CreateState::Over`, and removes the
/// record *and the ledger entry*; the create lands seconds later and no layer (exit hook,
/// watcher, next sweep) ever hears of it. Over the CLI the timed-out create is killed and
/// reaped, so `Over` was true there. Expected: the entry stays (stage `creating`, a server's
/// create pending until listed or `REMOTE_CREATE_BOUND`), and the watcher or the next
/// sweep deletes the machine when it lands.
#[test]
#[file_serial(attacks_remote_env)]
fn defect_a_create_the_server_timed_out_lands_later_and_leaks() {
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let server = SimServer::start_with(
        dir.path(),
        "1.9.2",
        &[
            ("SMOLVM_FAKE_SERVE_TIMEOUT", "1"),
            ("SMOLVM_FAKE_LATENCY", "create=4s"),
        ],
    );
    let proc = child("create_times_out", state.path())
        .env("SMOLVM_HOST", &server.url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (ok, text) = finish(proc, Duration::from_secs(60));
    assert!(ok, "{text}");
    assert!(text.contains("CREATE FAILED"), "{text}");
    // The create lands on the server after the client gave up.
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.machines().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let landed = server.machines();
    let entries = ledger_names(state.path());
    // Give the crash watcher its chance, then run the next run's sweep.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !server.machines().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let sweep = child("sweep", state.path())
        .env("SMOLVM_HOST", &server.url)
        .env("SMOLVM_HARNESS_WATCHER", "off")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (ok, swept) = finish(sweep, Duration::from_secs(60));
    assert!(ok, "{swept}");
    assert!(
        server.machines().is_empty(),
        "the create that landed after the 408 leaked: {:?} (landed: {landed:?}; ledger \
         entries when it landed: {entries:?})\n{text}\n{swept}",
        server.machines()
    );
}

/// DEFECT. "Each of stdout and stderr is kept up to the output cap; see
/// `ExecOutput::stdout_dropped`" (`Smolvm::machine_exec`). Over the API the whole response
/// body is bounded by `max(2 × cap, 16 MiB)` (`Remote::call`, src/remote/api.rs) and past it
/// the exec is an *error* (`response body over … bytes`), not truncated output: a guest
/// that prints more than that (or less, in control characters, which JSON escapes six-fold)
/// fails where the CLI returns its output with the middle dropped. Expected: `Ok`, stdout
/// kept to the cap and the rest counted in `stdout_dropped()`.
#[test]
#[file_serial(attacks_remote_env)]
fn defect_exec_output_past_twice_the_cap_is_an_error_not_truncated() {
    let state = tempfile::tempdir().unwrap();
    let proc = child("big_exec", state.path())
        .env("SMOLVM_HARNESS_OUTPUT_CAP", "1KiB")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (ok, text) = finish(proc, Duration::from_secs(120));
    assert!(ok, "{text}");
}

/// DEFECT. SIGTERM while an exec hangs on the server (`SMOLVM_FAKE_LATENCY=exec=60s` in
/// the server's env), the machine held as a static or a `#[once]` fixture is (no guard
/// drops it). The signal thread shuts the exec's socket (`http::cancel_in_flight`): good,
/// the call returns at once. But then the test's thread goes on, the test ends, libtest
/// returns from `main`, and the exit hook (src/cleanup/exit.rs `exit_hook`) runs
/// `settle_own` *while the signal thread is still settling*: its `cancel_in_flight` (and
/// `kill_in_flight`, over the CLI) shuts the signal thread's own `DELETE` ("the server closed
/// the connection before answering"), its drain finds nothing (the signal thread took it
/// all), and the process exits under the signal thread. The machine is "left to the crash
/// watcher", and with the watcher off (or killed with the job) it leaks until a next sweep.
/// Expected: the exit hook, seeing a signal teardown under way (`SIGNALLED`), neither
/// cancels nor returns until that teardown is done (bounded), and the machine is deleted.
/// (With a guard that drops, its own `DELETE` usually wins the race: flaky, not safe.)
#[test]
#[file_serial(attacks_remote_env)]
fn defect_sigterm_during_a_hung_exec_the_exit_hook_cancels_the_signal_teardown() {
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let server = SimServer::start_with(
        dir.path(),
        "1.9.2",
        &[("SMOLVM_FAKE_LATENCY", "exec=60s,stop=2s,delete=2s")],
    );
    let release = dir.path().join("never");
    let held = dir.path().join("never.held");
    let proc = child("hold_and_exec", state.path())
        .env("SMOLVM_HOST", &server.url)
        .env("SMOLVM_HARNESS_WATCHER", "off")
        .env("ATTACK_RELEASE", &release)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(wait_for(&held, Duration::from_secs(30)), "child never held");
    // Let the exec reach the server.
    std::thread::sleep(Duration::from_millis(700));
    // SAFETY: a signal to our own child, not yet reaped.
    unsafe {
        libc::kill(proc.id() as libc::pid_t, libc::SIGTERM);
    }
    // Well under the 300 s call timeout the exec would otherwise wait for.
    let (_, text) = finish(proc, Duration::from_secs(45));
    // The main thread's exec returns an error (its socket was shut), never the guest's answer.
    assert!(!text.contains("EXEC RETURNED OK"), "{text}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !server.machines().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        server.machines().is_empty(),
        "{:?}\n{text}",
        server.machines()
    );
    assert!(ledger_names(state.path()).is_empty(), "{text}");
}

// ---------------------------------------------------------------------------------------
// Secrets
// ---------------------------------------------------------------------------------------

/// DEFECT. An exec answer the client cannot read (a 200 without a numeric `exitCode`, or
/// not JSON) becomes `Error::Parse` whose `reason` quotes the response body
/// (`parse_error`/`shown`, src/remote/api.rs), and `Error::Parse`'s message is not scrubbed
/// (only `Error::Api` runs `redact_output`): the guest's output, which here holds the exec's
/// secret, is printed verbatim by `unwrap()`, in CI logs. Expected: the per-exec (and
/// machine) secret values are scrubbed from every message that quotes the server.
#[test]
fn defect_an_unreadable_exec_answer_quotes_the_secret_in_the_error() {
    const SECRET: &str = "s3cr3t-exec-token-0xA1";
    for body in [
        format!(r#"{{"exitCode":null,"stdout":"TOKEN={SECRET}\n","stderr":""}}"#),
        format!("TOKEN={SECRET}\n"),
    ] {
        let body: &'static str = Box::leak(body.into_boxed_str());
        let server = Canned::unix("1.9.2", move |method, _, _| match method {
            "GET" => (200, "application/json", RUNNING.into()),
            _ => (200, "application/json", body.to_string()),
        });
        let smolvm = Smolvm::remote(&server.url).unwrap();
        let err = smolvm
            .machine_exec(
                "web",
                &["sh", "-c", "echo TOKEN=$TOKEN"],
                &ExecOptions::default().secret_env("TOKEN", SECRET),
            )
            .expect_err("an unreadable answer is an error");
        let shown = format!("{err} / {err:?}");
        assert!(
            !shown.contains(SECRET),
            "the secret is in the error: {shown}"
        );
    }
}

/// HELD. An `Error::Api` whose server message echoes the exec's secret is scrubbed.
#[test]
fn held_an_api_error_echoing_the_secret_is_scrubbed() {
    const SECRET: &str = "s3cr3t-echoed-by-server";
    let server = Canned::unix("1.9.2", |method, _, _| match method {
        "GET" => (200, "application/json", RUNNING.into()),
        _ => (
            422,
            "text/plain",
            format!("Failed to deserialize the JSON body: env[0].value: unexpected \"{SECRET}\""),
        ),
    });
    let smolvm = Smolvm::remote(&server.url).unwrap();
    let err = smolvm
        .machine_exec(
            "web",
            &["true"],
            &ExecOptions::default().secret_env("TOKEN", SECRET),
        )
        .unwrap_err();
    let shown = format!("{err} / {err:?}");
    assert!(matches!(err, Error::Api { status: 422, .. }), "{shown}");
    assert!(!shown.contains(SECRET), "{shown}");
}

/// HELD. While the simulated server runs a slow exec (its per-request fake CLI child), no
/// process's argv holds the exec's secret or env value (`/proc/*/cmdline`), and neither do
/// the transcript nor trace output (`SMOLVM_HARNESS_TRACE=1`).
#[test]
#[file_serial(attacks_remote_env)]
fn held_no_argv_on_the_host_holds_an_exec_secret() {
    const SECRET: &str = "s3cr3t-argv-probe-77";
    let dir = tempfile::tempdir().unwrap();
    let server = SimServer::start_with(dir.path(), "1.9.2", &[("SMOLVM_FAKE_LATENCY", "exec=3s")]);
    let smolvm = Smolvm::remote(&server.url).unwrap();
    let vm = Machine::builder()
        .smolvm(smolvm)
        .image("alpine")
        .net()
        .start()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(|| {
            let out = vm
                .command(&["sh", "-c", "echo $TOKEN"])
                .secret_env("TOKEN", SECRET)
                .run();
            let _ = tx.send(out.map(|o| o.stdout_str().to_string()));
        });
        let deadline = Instant::now() + Duration::from_millis(2500);
        let mut scanned = 0;
        while Instant::now() < deadline {
            for entry in std::fs::read_dir("/proc").unwrap().flatten() {
                let Ok(argv) = std::fs::read(entry.path().join("cmdline")) else {
                    continue;
                };
                scanned += 1;
                let argv = String::from_utf8_lossy(&argv).replace('\0', " ");
                assert!(!argv.contains(SECRET), "in argv: {argv}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(scanned > 0);
    });
    let out = rx.recv().unwrap().unwrap();
    assert_eq!(out, format!("{SECRET}\n"));
    let transcript: String = vm.transcript().iter().map(|e| format!("{e}\n")).collect();
    assert!(!transcript.contains(SECRET), "{transcript}");
}

// ---------------------------------------------------------------------------------------
// Behaviour parity
// ---------------------------------------------------------------------------------------

/// HELD. On a 0.8.2 server: an upload over 2 MiB is refused before anything is sent (no
/// status look, no PUT), and so is an egress policy (no POST).
#[test]
fn held_0_8_2_refuses_big_uploads_and_egress_before_sending() {
    let server = Canned::unix("0.8.2", |method, _, _| match method {
        "GET" => (200, "application/json", RUNNING.into()),
        _ => (200, "application/json", "{}".into()),
    });
    let smolvm = Smolvm::remote(&server.url).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.bin");
    std::fs::write(&big, vec![7u8; 2 * 1024 * 1024 + 1]).unwrap();
    let err = smolvm
        .machine_cp(
            smolvm_harness::CpPath::host(&big),
            smolvm_harness::CpPath::guest("web", "/tmp/big.bin"),
        )
        .unwrap_err();
    assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
    let err = smolvm
        .machine_create(
            "web",
            &CreateOptions::image("alpine").allow_cidr("10.0.0.0/8"),
        )
        .unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    assert!(server.requests().is_empty(), "{:?}", server.requests());
}

/// HELD. Copying into a stopped machine is refused, as by the CLI, and does not start it.
#[test]
fn held_copy_into_a_stopped_machine_is_refused_not_auto_started() {
    let dir = tempfile::tempdir().unwrap();
    let server = SimServer::start(dir.path(), "1.9.2");
    let smolvm = Smolvm::remote(&server.url).unwrap();
    let vm = Machine::builder()
        .smolvm(smolvm)
        .image("alpine")
        .net()
        .start()
        .unwrap();
    vm.stop().unwrap();
    let host = dir.path().join("f.txt");
    std::fs::write(&host, "x").unwrap();
    let err = vm.copy_in(&host, "/tmp/f.txt").unwrap_err();
    assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
    assert_eq!(vm.status().unwrap().unwrap().state, MachineState::Stopped);
}

/// HELD. `Pack::shared` and `Golden::shared` over the API of a server on this host: the
/// local CLI (`SMOLVM_BIN`) packs, the server creates from the pack's path, a run-shared
/// golden forks over the API, and the guards leave nothing on the server.
#[test]
#[file_serial(attacks_remote_env)]
fn held_shared_pack_and_golden_over_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let server = SimServer::start(dir.path(), "1.9.2");
    let proc = child("shared_pack_and_golden", state.path())
        .env("SMOLVM_HOST", &server.url)
        .env("SMOLVM_BIN", serve::FAKE)
        .env("SMOLVM_FAKE_STATE", dir.path().join("local-cli-state"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (ok, text) = finish(proc, Duration::from_secs(90));
    assert!(ok, "{text}");
    assert!(text.contains("PACKED AND FORKED"), "{text}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !server.machines().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        server.machines().is_empty(),
        "{:?}\n{text}",
        server.machines()
    );
}

/// HELD. A malformed `SMOLVM_HOST` never falls back to a local smolvm, even with
/// `SMOLVM_BIN` naming a working fake: not available, the create fails, no machine anywhere.
#[test]
#[file_serial(attacks_remote_env)]
fn held_a_malformed_host_never_falls_back_to_smolvm_bin() {
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let fake_state = dir.path().join("fake");
    let proc = child("malformed_host", state.path())
        .env("SMOLVM_HOST", "http://no-port-here")
        .env("SMOLVM_BIN", serve::FAKE)
        .env("SMOLVM_FAKE_STATE", &fake_state)
        .env("SMOLVM_HARNESS_WATCHER", "off")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (ok, text) = finish(proc, Duration::from_secs(60));
    assert!(ok, "{text}");
    let left = smolvm_harness::sim::read_fake_state(&fake_state)
        .map(|ms| ms.len())
        .unwrap_or(0);
    assert_eq!(left, 0, "the local fake was used\n{text}");
}

// ---------------------------------------------------------------------------------------
// Child side
// ---------------------------------------------------------------------------------------

/// The child side of the process-level tests above (a no-op in a normal run).
#[test]
#[ignore = "run by the tests above in a child process"]
fn attack_child() {
    let Ok(role) = std::env::var("ATTACK_CHILD") else {
        return;
    };
    let smolvm = Smolvm::from_env();
    let release = std::env::var("ATTACK_RELEASE").map(PathBuf::from);
    let hold = |vm: &Machine| {
        let release = release.clone().unwrap();
        std::fs::write(format!("{}.held", release.display()), vm.name()).unwrap();
        wait_for(&release, Duration::from_secs(40));
    };
    match role.as_str() {
        "forget_then_exit" => {
            let vm = Machine::builder()
                .smolvm(smolvm)
                .image("alpine")
                .net()
                .start()
                .unwrap();
            hold(&vm);
            // As a static or a `#[once]` fixture: never dropped; the exit hook settles it.
            std::mem::forget(vm);
        }
        "hold" => {
            let vm = Machine::builder()
                .smolvm(smolvm)
                .image("alpine")
                .net()
                .start()
                .unwrap();
            hold(&vm);
        }
        "sweep" => {
            let swept = smolvm_harness::sweep(&smolvm).unwrap();
            println!("SWEPT {swept:?}");
        }
        "malformed_host" => {
            assert!(smolvm.remote_url().is_none());
            assert!(!smolvm.is_available());
            assert!(!smolvm_harness::is_available());
            let err = Machine::builder()
                .smolvm(smolvm.clone())
                .image("alpine")
                .net()
                .start()
                .unwrap_err();
            assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
            assert!(smolvm.machine_list().is_err());
            assert!(smolvm.pack_create("alpine", "/tmp/never-packed").is_err());
        }
        "create_times_out" => {
            let err = Machine::builder()
                .smolvm(smolvm)
                .image("alpine")
                .net()
                .start()
                .expect_err("the server answers 408 after 1 s");
            println!("CREATE FAILED: {err}");
        }
        "big_exec" => {
            // 17 MiB of guest output, over max(2 × 1 KiB, 16 MiB).
            let stdout = "a".repeat(17 * 1024 * 1024);
            let body: &'static str = Box::leak(
                format!(r#"{{"exitCode":0,"stdout":"{stdout}","stderr":""}}"#).into_boxed_str(),
            );
            let server = Canned::unix("1.9.2", move |method, _, _| match method {
                "GET" => (200, "application/json", RUNNING.into()),
                _ => (200, "application/json", body.to_string()),
            });
            let smolvm = Smolvm::remote(&server.url).unwrap();
            let out = smolvm
                .machine_exec("web", &["cat", "/big"], &ExecOptions::default())
                .expect("output over the cap is truncated, not an error");
            assert!(out.stdout_dropped() > 0);
            assert!(out.stdout().len() <= 1024, "{}", out.stdout().len());
        }
        "hold_and_exec" => {
            let vm = Machine::builder()
                .smolvm(smolvm)
                .image("alpine")
                .net()
                .start()
                .unwrap();
            let release = release.clone().unwrap();
            std::fs::write(format!("{}.held", release.display()), vm.name()).unwrap();
            let out = vm.exec(&["sleep", "1000"]);
            if out.is_ok() {
                println!("EXEC RETURNED OK");
            }
            println!("EXEC RETURNED {out:?}");
            // As a static or a `#[once]` fixture: no guard drops it; the teardown under way
            // (the signal thread's) is the one that deletes it.
            std::mem::forget(vm);
        }
        "forget_web_then_exit" => {
            let vm = Machine::builder()
                .smolvm(smolvm)
                .image("alpine")
                .net()
                .name("web")
                .start()
                .unwrap();
            hold(&vm);
            std::mem::forget(vm);
        }
        "shared_pack_and_golden" => {
            let pack = smolvm_harness::Pack::shared_with(&smolvm, "alpine").unwrap();
            let again = smolvm_harness::Pack::shared_with(&smolvm, "alpine").unwrap();
            assert!(Arc::ptr_eq(&pack, &again));
            let vm = Machine::builder()
                .smolvm(smolvm.clone())
                .from_pack(&pack)
                .start()
                .unwrap();
            assert_eq!(vm.exec(&["echo", "hi"]).unwrap().stdout_str(), "hi\n");
            drop(vm);
            let build =
                |g: smolvm_harness::GoldenBuilder| g.smolvm(smolvm.clone()).image("alpine").net();
            let golden = smolvm_harness::Golden::shared("attack-remote-golden", build).unwrap();
            let same = smolvm_harness::Golden::shared("attack-remote-golden", build).unwrap();
            assert!(Arc::ptr_eq(&golden, &same));
            let clone = golden.fork().unwrap();
            assert_eq!(clone.exec(&["echo", "ok"]).unwrap().stdout_str(), "ok\n");
            println!("PACKED AND FORKED");
        }
        other => panic!("unknown role {other}"),
    }
}
