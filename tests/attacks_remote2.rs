//! Second hostile review of the remote mode (`Smolvm::remote`, `SMOLVM_HOST`, issue 13),
//! after the first round (`tests/attacks_remote.rs`) was fixed: the new ownership rule (the
//! server's own `createdAt` of the machine our create made), `abandon` keeping the record of a
//! create that may still land, the exit hook waiting for a signal teardown, and the per-call
//! deadline of our HTTP client.
//!
//! Tests named `defect_*` failed on the code they were written against: each showed a promise
//! of README "Remote smolvm: one variable, the same suite", the guide's "Remote smolvm
//! (`SMOLVM_HOST`)" or the crate's own docs broken, and says what is expected. All seven are
//! fixed and stay as regression tests (each was seen failing with its fix reverted). Tests
//! named `held_*` are probes whose promise held; they stay too.

#[path = "common/canned_api.rs"]
mod canned_api;
#[path = "common/serve.rs"]
mod serve;

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use canned_api::{Canned, RUNNING};
use serial_test::file_serial;
use serve::{finish, finish_status, ledger_names, rerun, wait_for, SimServer};
use smolvm_harness::{CpPath, Error, Machine, Smolvm};

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// This test binary again, running `attack2_child` with `role`.
fn child(role: &str, state: &Path) -> Command {
    let mut cmd = rerun("attack2_child");
    cmd.env("ATTACK2_CHILD", role)
        .env("SMOLVM_HARNESS_STATE_DIR", state);
    cmd
}

/// A unix-socket server answered by `conn` per connection, after the request head was read
/// (method, path); `/health` answers 1.9.2 itself.
fn raw_server(
    conn: impl Fn(&str, &str, UnixStream) + Send + Sync + 'static,
) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let conn = Arc::new(conn);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let conn = Arc::clone(&conn);
            std::thread::spawn(move || {
                let (method, path) = read_head(&mut stream);
                if path == "/health" {
                    let body = r#"{"status":"ok","version":"1.9.2","machines":{"total":0,"running":0},"uptime_seconds":1}"#;
                    let _ = write!(
                        stream,
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    return;
                }
                conn(&method, &path, stream);
            });
        }
    });
    let url = format!("unix://{}", sock.display());
    (dir, url)
}

/// The request line of a request whose head is read (its body, if any, is not).
fn read_head(conn: &mut UnixStream) -> (String, String) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if conn.read(&mut byte).unwrap_or(0) == 0 {
            break;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let mut first = head.lines().next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("").to_string();
    let path = first.next().unwrap_or("").to_string();
    (method, path)
}

/// Run `f` on a thread; its result, or `None` if it did not return within `limit`.
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit).ok()
}

// ---------------------------------------------------------------------------------------
// Ownership: the server's `createdAt` of the machine our create made
// ---------------------------------------------------------------------------------------

/// A canned server with one machine slot, `web`: listed (created at `1700000000` on the
/// server's clock) from our create until a `DELETE`. The create answers `create_answer`.
/// Returns the server and whether a `DELETE` of `web` came.
fn one_machine_server(create_answer: &'static str) -> (Canned, Arc<AtomicBool>) {
    let created = Arc::new(AtomicBool::new(false));
    let deleted = Arc::new(AtomicBool::new(false));
    let (c, d) = (Arc::clone(&created), Arc::clone(&deleted));
    let listed = r#"{"name":"web","state":"stopped","cpus":1,"memoryMb":512,"mounts":[],"ports":[],"network":false,"createdAt":1700000000}"#;
    let server = Canned::unix("1.9.2", move |method, path, _| {
        let exists = c.load(Ordering::SeqCst) && !d.load(Ordering::SeqCst);
        match (method, path) {
            ("GET", "/api/v1/machines") if exists => (
                200,
                "application/json",
                format!(r#"{{"machines":[{listed}]}}"#),
            ),
            ("GET", "/api/v1/machines") => (200, "application/json", r#"{"machines":[]}"#.into()),
            ("POST", "/api/v1/machines") => {
                c.store(true, Ordering::SeqCst);
                (200, "application/json", create_answer.to_string())
            }
            ("GET", "/api/v1/machines/web") if exists => (200, "application/json", listed.into()),
            ("DELETE", p) if p.starts_with("/api/v1/machines/web") => {
                d.store(true, Ordering::SeqCst);
                (200, "application/json", "{}".into())
            }
            _ => canned_api::json(404, "machine not found", "NOT_FOUND"),
        }
    });
    (server, deleted)
}

/// A child makes `web` (a chosen name, free before) on `server`, never drops it (a static, a
/// `#[once]` fixture) and exits: whether the exit hook deleted it.
fn chosen_name_forgotten_is_deleted_at_exit(create_answer: &'static str) -> (bool, String) {
    let state = tempfile::tempdir().unwrap();
    let (server, deleted) = one_machine_server(create_answer);
    let proc = child("create_web_forget", state.path())
        .env("SMOLVM_HOST", &server.url)
        .env("SMOLVM_HARNESS_WATCHER", "off")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (ok, text) = finish(proc, Duration::from_secs(60));
    assert!(ok, "{text}");
    assert!(text.contains("CREATED web"), "{text}");
    let text = format!(
        "{text}\nrequests: {:?}\nledger: {:?}",
        server.requests(),
        ledger_names(state.path())
    );
    (deleted.load(Ordering::SeqCst), text)
}

/// HELD (control for the next test). The create's answer carries `createdAt` (a number, as
/// smolvm's `MachineInfo` does): the exit hook deletes our forgotten `web`.
#[test]
#[file_serial(attacks_remote_env)]
fn held_a_forgotten_chosen_name_is_deleted_at_exit_over_the_api() {
    let answer = r#"{"name":"web","state":"created","cpus":1,"memoryMb":512,"mounts":[],"ports":[],"network":false,"createdAt":1700000000}"#;
    let (deleted, text) = chosen_name_forgotten_is_deleted_at_exit(answer);
    assert!(deleted, "our `web` leaked\n{text}");
}

/// DEFECT. A create that *succeeded*, but whose answer has no numeric `createdAt` (none, or
/// a string: a server version, a proxy or an implementation that spells it otherwise; the
/// crate reads it with `as_u64`, src/remote/api.rs `made_at`) leaves `Clock::Server {
/// made_at: None }` in the claim (src/cleanup/registry.rs `made_by`). `made_in_window`
/// (src/cleanup/owner.rs) then says "only a generated name can be ours", so our chosen name
/// `web`, free before, made by our create that returned success, is judged `NotOurs` by the
/// exit hook (and the signal thread, the watcher, the sweep): its record is dropped, silently,
/// and the machine leaks. Before the fix of round one, a create that succeeded was proof
/// enough (README: "a name you chose is proven ours … by a create that succeeded").
/// Expected: deleted. Suggested fix: when the answer has no usable `createdAt`, `made_by`
/// asks `GET /api/v1/machines/{name}` right after the create and keeps its `createdAt`
/// (as `register` already does for a machine registered again); failing that, `judge` of a
/// `Created` claim with `made_at: None` falls back to `CannotTell` (printed), never a silent
/// `NotOurs`.
#[test]
#[file_serial(attacks_remote_env)]
fn defect_a_create_answer_without_a_numeric_created_at_leaks_our_chosen_name() {
    for answer in [
        r#"{"name":"web","state":"created","cpus":1,"memoryMb":512,"mounts":[],"ports":[],"network":false}"#,
        r#"{"name":"web","state":"created","cpus":1,"memoryMb":512,"mounts":[],"ports":[],"network":false,"createdAt":"2023-11-14T22:13:20Z"}"#,
    ] {
        let (deleted, text) = chosen_name_forgotten_is_deleted_at_exit(answer);
        assert!(
            deleted,
            "our `web` (create answered {answer}) leaked at exit\n{text}"
        );
    }
}

/// DEFECT. Round one's fix judges a chosen name over the API by the server's `createdAt` of
/// the machine our create made (guide: "a chosen name someone re-made in another second is
/// left alone"). But when the exit hook (or the signal thread) cannot list, src/cleanup/
/// exit.rs `settle_own` takes `(None, Stage::Created)` with evidence other than
/// `OwnerLabel` as `Verdict::Ours` ("without labels our succeeded create is all the proof
/// there is") and deletes by name: over the API the evidence is never `OwnerLabel`, so a
/// listing that fails (a 500 from one bad record, a list over the output cap, a slow list
/// past its timeout) while a `DELETE` works deletes *someone else's* `web`, which was re-made
/// (here: `createdAt` 500 s after ours) after ours went. Expected: no `DELETE` of a machine
/// whose `createdAt` is not our create's. Suggested fix: over the API, when the list fails,
/// look at `GET /api/v1/machines/{name}` and judge its `createdAt` (or leave the entry to the
/// watcher and the next sweep, `Verdict::Pending`), never delete unproven.
#[test]
#[file_serial(attacks_remote_env)]
fn defect_a_failed_listing_at_exit_deletes_someone_elses_chosen_name() {
    let state = tempfile::tempdir().unwrap();
    let created = Arc::new(AtomicBool::new(false));
    let deleted = Arc::new(AtomicBool::new(false));
    let (c, d) = (Arc::clone(&created), Arc::clone(&deleted));
    let ours = r#"{"name":"web","state":"created","cpus":1,"memoryMb":512,"mounts":[],"ports":[],"network":false,"createdAt":1700000000}"#;
    let theirs = r#"{"name":"web","state":"running","cpus":1,"memoryMb":512,"mounts":[],"ports":[],"network":false,"createdAt":1700000500}"#;
    let server = Canned::unix("1.9.2", move |method, path, _| match (method, path) {
        ("GET", "/api/v1/machines") if c.load(Ordering::SeqCst) => {
            canned_api::json(500, "failed to read a machine record", "INTERNAL_ERROR")
        }
        ("GET", "/api/v1/machines") => (200, "application/json", r#"{"machines":[]}"#.into()),
        ("POST", "/api/v1/machines") => {
            c.store(true, Ordering::SeqCst);
            (200, "application/json", ours.into())
        }
        // Ours was deleted meanwhile, and someone made their own `web`.
        ("GET", "/api/v1/machines/web") => (200, "application/json", theirs.into()),
        ("DELETE", p) if p.starts_with("/api/v1/machines/web") => {
            d.store(true, Ordering::SeqCst);
            (200, "application/json", "{}".into())
        }
        _ => canned_api::json(404, "machine not found", "NOT_FOUND"),
    });
    let proc = child("create_web_forget", state.path())
        .env("SMOLVM_HOST", &server.url)
        .env("SMOLVM_HARNESS_WATCHER", "off")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (ok, text) = finish(proc, Duration::from_secs(60));
    assert!(ok, "{text}");
    assert!(text.contains("CREATED web"), "{text}");
    assert!(
        !deleted.load(Ordering::SeqCst),
        "someone else's `web` (createdAt 1700000500; ours was 1700000000) was deleted at exit \
         unlooked-at\n{text}\nrequests: {:?}",
        server.requests()
    );
}

// ---------------------------------------------------------------------------------------
// A create that may still land
// ---------------------------------------------------------------------------------------

/// DEFECT. README (ownership, before smolvm 1.8, which is every server over the API): "a
/// name you chose is proven ours only by a create that succeeded: if that create fails,
/// times out or is interrupted, a machine of that name is left alone (it may be one someone
/// made meanwhile), and the command that deletes it is printed." Over the API, a create of
/// `web` that the server answers 408 (its request limit; the create goes on and lands 3 s
/// later) keeps its record (`abandon`, round one's fix). The next sweep then finds `web`
/// listed, takes the create as over, and `judge` (src/cleanup/owner.rs `made_in_window`,
/// `Clock::Server { made_at: None }` with `AbsentBeforeCreate`) says `NotOurs`, not
/// `CannotTell`: the entry is removed and the machine left alone *silently* (the CLI path
/// says `CannotTell` and prints the delete command). The machine is very likely ours, and
/// nobody is told. Expected: left alone (it is), and the sweep prints the command that
/// deletes it. Suggested fix: in `made_in_window`, `Clock::Server { made_at: None }` with
/// `AbsentBeforeCreate` returns true (so `judge` reaches its `CannotTell` arm for a claim
/// still `Creating`); a `Created` claim without `made_at` as in the test above.
#[test]
#[file_serial(attacks_remote_env)]
fn defect_a_chosen_name_whose_create_timed_out_and_landed_is_left_without_a_word() {
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let server = SimServer::start_with(
        dir.path(),
        "1.9.2",
        &[
            ("SMOLVM_FAKE_SERVE_TIMEOUT", "1"),
            ("SMOLVM_FAKE_LATENCY", "create=3s"),
        ],
    );
    let proc = child("create_web_times_out", state.path())
        .env("SMOLVM_HOST", &server.url)
        .env("SMOLVM_HARNESS_WATCHER", "off")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (ok, text) = finish(proc, Duration::from_secs(60));
    assert!(ok, "{text}");
    assert!(text.contains("CREATE FAILED"), "{text}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.machines().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(server.machines(), vec!["web".to_string()], "landed");
    assert_eq!(
        ledger_names(state.path()),
        vec!["web".to_string()],
        "{text}"
    );
    let sweep = child("sweep", state.path())
        .env("SMOLVM_HOST", &server.url)
        .env("SMOLVM_HARNESS_WATCHER", "off")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (ok, swept) = finish(sweep, Duration::from_secs(60));
    assert!(ok, "{swept}");
    // Left alone: it may be someone else's.
    assert_eq!(server.machines(), vec!["web".to_string()], "{swept}");
    assert!(
        swept.contains("web was not deleted") && swept.contains("delete"),
        "the sweep dropped the entry of `web` (very likely ours) without a word:\n{text}\n---\n{swept}"
    );
}

/// HELD. A socket path reused by another server: a process made `web` on server one and
/// was SIGKILLed; server one is gone, and server two now listens on the same socket with its
/// own `web`, made by hand (another second on its clock). The next sweep, under the same URL,
/// judges by the `createdAt` our create was answered: server two's `web` stays, and the
/// entry goes.
#[test]
#[file_serial(attacks_remote_env)]
fn held_a_reused_socket_path_never_costs_the_new_server_its_chosen_name() {
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let mut one = SimServer::start_on(dir.path(), dir.path().join("one"), "1.9.2", &[]);
    let held = dir.path().join("held");
    let mut proc = child("hold_web", state.path())
        .env("SMOLVM_HOST", &one.url)
        .env("SMOLVM_HARNESS_WATCHER", "off")
        .env("ATTACK2_HELD", &held)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if !wait_for(&held, Duration::from_secs(30)) {
        proc.kill().unwrap();
        let (_, text) = finish_status(proc, Duration::from_secs(10));
        panic!("child never held\n{text}");
    }
    proc.kill().unwrap();
    proc.wait().unwrap();
    assert_eq!(ledger_names(state.path()), vec!["web".to_string()]);
    let url = one.url.clone();
    one.stop();
    drop(one);
    let _ = std::fs::remove_file(dir.path().join("api.sock"));
    let two = SimServer::start_on(
        dir.path(),
        dir.path().join("two"),
        "1.9.2",
        &[("SMOLVM_FAKE_CLOCK_SKEW", "100")],
    );
    assert_eq!(two.url, url, "the same socket");
    two.cli()
        .machine_create("web", &smolvm_harness::CreateOptions::image("alpine").net())
        .unwrap();
    let sweep = child("sweep", state.path())
        .env("SMOLVM_HOST", &two.url)
        .env("SMOLVM_HARNESS_WATCHER", "off")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (ok, swept) = finish(sweep, Duration::from_secs(60));
    assert!(ok, "{swept}");
    assert_eq!(two.machines(), vec!["web".to_string()], "{swept}");
    assert!(ledger_names(state.path()).is_empty(), "{swept}");
}

/// A simulated server on loopback TCP (a free port), over the fake state `state`: the child
/// (killed and reaped by the caller) and its URL, `http://127.0.0.1:PORT`.
fn tcp_sim_server(state: &Path) -> (std::process::Child, String) {
    let mut child = Command::new(serve::FAKE)
        .args(["serve", "start", "--listen", "127.0.0.1:0"])
        .env("SMOLVM_FAKE_STATE", state)
        .env("SMOLVM_FAKE_VERSION", "1.9.2")
        .env_remove("SMOLVM_FAKE_LATENCY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = serve::await_listening(&mut child);
    (child, url)
}

/// DEFECT (round one's spelling defect, its TCP half). One server on loopback TCP, two
/// spellings of it: `http://localhost:P` and `http://127.0.0.1:P` (README: "a server on this
/// host (a unix socket or loopback TCP)"; both are what users write). Round one made
/// `unix://` paths canonical, but `Endpoint` (src/remote/endpoint.rs) keeps the host as
/// written, so the ledger target (`Target::remote`, the URL string) differs: a machine left
/// by a SIGKILLed process that used `localhost` is never seen by the next run's sweep under
/// `127.0.0.1` (and the machine cap and name reservations split in two likewise).
/// Expected: the sweep reaches it. Suggested fix: canonicalize `localhost` to `127.0.0.1`
/// (and an IPv6 literal to its `Ipv6Addr` display form) in `Endpoint::parse`, or group
/// ledger entries by the resolved socket address.
#[test]
#[file_serial(attacks_remote_env)]
fn defect_the_next_sweep_misses_a_leak_under_localhost_when_run_with_127_0_0_1() {
    let fake = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let (mut server, url) = tcp_sim_server(fake.path());
    let port = url.rsplit(':').next().unwrap().to_string();
    let as_localhost = format!("http://localhost:{port}");
    let as_ip = format!("http://127.0.0.1:{port}");
    let held = fake.path().join("held");
    let mut proc = child("hold_generated", state.path())
        .env("SMOLVM_HOST", &as_localhost)
        .env("SMOLVM_HARNESS_WATCHER", "off")
        .env("ATTACK2_HELD", &held)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if !wait_for(&held, Duration::from_secs(30)) {
        proc.kill().unwrap();
        let (_, text) = finish_status(proc, Duration::from_secs(10));
        let _ = server.kill();
        panic!("child never held\n{text}");
    }
    proc.kill().unwrap();
    proc.wait().unwrap();
    let left = || {
        smolvm_harness::sim::read_fake_state(fake.path())
            .map(|ms| ms.len())
            .unwrap_or(0)
    };
    assert_eq!(left(), 1, "left by the SIGKILL");
    let sweep = child("sweep", state.path())
        .env("SMOLVM_HOST", &as_ip)
        .env("SMOLVM_HARNESS_WATCHER", "off")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (ok, swept) = finish(sweep, Duration::from_secs(60));
    assert!(ok, "{swept}");
    let remaining = left();
    // Control: the sweep under the spelling it was ledgered with deletes it.
    let control = child("sweep", state.path())
        .env("SMOLVM_HOST", &as_localhost)
        .env("SMOLVM_HARNESS_WATCHER", "off")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (ok, controlled) = finish(control, Duration::from_secs(60));
    let after_control = left();
    let _ = server.kill();
    let _ = server.wait();
    assert!(ok && after_control == 0, "{controlled}");
    assert_eq!(
        remaining, 0,
        "the sweep of {as_ip} left the machine ledgered under {as_localhost}\n{swept}"
    );
}

/// HELD. `Golden::shared` over one server across two processes of one run
/// (`SMOLVM_HARNESS_RUN_ID`, as nextest runs a suite): the golden is made once, each process
/// forks its clone over the API, and after both exit the crash watcher retires the golden once
/// its grace (here 1 s) is over: nothing is left on the server, nothing in the ledger.
#[test]
#[file_serial(attacks_remote_env)]
fn held_a_run_shared_golden_over_the_api_is_made_once_and_retired_after_its_grace() {
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let server = SimServer::start(dir.path(), "1.9.2");
    let spawn = || {
        child("shared_golden", state.path())
            .env("SMOLVM_HOST", &server.url)
            .env("SMOLVM_HARNESS_RUN_ID", "attacks-remote2-run")
            .env("SMOLVM_HARNESS_GOLDEN_GRACE", "1s")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (ok_a, text_a) = finish(a, Duration::from_secs(90));
    let (ok_b, text_b) = finish(b, Duration::from_secs(90));
    assert!(ok_a && ok_b, "{text_a}\n---\n{text_b}");
    let goldens = |t: &str| t.matches("GOLDEN ").count();
    assert_eq!(goldens(&text_a) + goldens(&text_b), 2);
    let name_of = |t: &str| {
        t.lines()
            .find_map(|l| l.strip_prefix("GOLDEN "))
            .map(str::to_string)
    };
    assert_eq!(name_of(&text_a), name_of(&text_b), "one golden for the run");
    assert!(
        name_of(&text_a).is_some_and(|n| n.starts_with("Some(")),
        "{text_a}"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(server.machines().is_empty() && ledger_names(state.path()).is_empty())
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        server.machines().is_empty(),
        "left on the server: {:?}; ledger: {:?}\n{text_a}\n---\n{text_b}",
        server.machines(),
        ledger_names(state.path())
    );
    assert!(ledger_names(state.path()).is_empty());
}

/// DEFECT. `may_still_land` (src/cleanup/registry.rs) takes any answer but 408 as "the
/// server is done" ("a 500 included"). A `504 Gateway Timeout` (or 502) is not the server's
/// answer but a proxy's in front of it (an nginx or a load balancer before `smolvm serve`
/// on another host, its own 60 s read timeout under a slow pull): the create goes on behind
/// it. `abandon` lists at once, finds nothing yet, judges `Gone`, and removes the record
/// *and its ledger entry*; the create lands 2 s later and no layer (exit hook, watcher, next
/// sweep) ever hears of it: round one's 408 leak, through a proxy. Expected: the next sweep
/// deletes the machine that landed. Suggested fix: treat 502 and 504 (a gateway's, the
/// request may have reached the server) like 408 in `may_still_land`.
#[test]
#[file_serial(attacks_remote_env)]
fn defect_a_create_a_proxy_timed_out_504_lands_later_and_leaks() {
    // Control: the server's own 408 (round one's fix) keeps the entry, and the sweep deletes.
    let (deleted, text) = create_answered_then_landed(408);
    assert!(deleted, "after a 408: {text}");
    let (deleted, text) = create_answered_then_landed(504);
    assert!(deleted, "after a 504: {text}");
}

/// A child's create (a generated name) is answered `status`, and the machine lands on the
/// server 2 s later; then the next run's sweep. Whether the landed machine was deleted.
fn create_answered_then_landed(status: u16) -> (bool, String) {
    let state = tempfile::tempdir().unwrap();
    let made: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
    let deleted = Arc::new(AtomicBool::new(false));
    let (m, d) = (Arc::clone(&made), Arc::clone(&deleted));
    let server = Canned::unix("1.9.2", move |method, path, body| {
        let listed = if d.load(Ordering::SeqCst) {
            None
        } else {
            m.lock().unwrap().clone()
        };
        match (method, path) {
            ("GET", "/api/v1/machines") => {
                let items = listed
                    .map(|n| {
                        format!(
                            r#"{{"name":"{n}","state":"stopped","cpus":1,"memoryMb":512,"mounts":[],"ports":[],"network":true,"createdAt":1700000000}}"#
                        )
                    })
                    .unwrap_or_default();
                (
                    200,
                    "application/json",
                    format!(r#"{{"machines":[{items}]}}"#),
                )
            }
            ("POST", "/api/v1/machines") => {
                let v: serde_json::Value = serde_json::from_str(body).unwrap();
                let name = v["name"].as_str().unwrap().to_string();
                let m = Arc::clone(&m);
                // The server goes on with the create behind the proxy: it lands in 2 s.
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_secs(2));
                    *m.lock().unwrap() = Some(name);
                });
                if status == 408 {
                    canned_api::json(408, "request timed out", "TIMEOUT")
                } else {
                    (
                        status,
                        "text/html",
                        "<html><body><h1>504 Gateway Time-out</h1></body></html>".into(),
                    )
                }
            }
            ("DELETE", _) => {
                d.store(true, Ordering::SeqCst);
                (200, "application/json", "{}".into())
            }
            _ => canned_api::json(404, "machine not found", "NOT_FOUND"),
        }
    });
    let proc = child("create_generated_fails", state.path())
        .env("SMOLVM_HOST", &server.url)
        .env("SMOLVM_HARNESS_WATCHER", "off")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (ok, text) = finish(proc, Duration::from_secs(60));
    assert!(ok, "{text}");
    assert!(text.contains("CREATE FAILED"), "{text}");
    // It lands.
    let deadline = Instant::now() + Duration::from_secs(10);
    while made.lock().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(made.lock().unwrap().is_some());
    let entries = ledger_names(state.path());
    let sweep = child("sweep", state.path())
        .env("SMOLVM_HOST", &server.url)
        .env("SMOLVM_HARNESS_WATCHER", "off")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (ok, swept) = finish(sweep, Duration::from_secs(60));
    assert!(ok, "{swept}");
    let shown = format!(
        "the create that landed behind the {status} leaked: {:?} (ledger entries after the \
         failed create: {entries:?})\n{text}\n{swept}",
        made.lock().unwrap()
    );
    (deleted.load(Ordering::SeqCst), shown)
}

/// HELD. A server down when the crash watcher looks, up again later: a SIGKILLed process
/// leaves a machine (watcher on) while its server is stopped; the watcher cannot list, and
/// the entry stays; with the server back, the watcher or the next run's sweep deletes it.
#[test]
#[file_serial(attacks_remote_env)]
fn held_a_server_down_for_the_watcher_is_settled_once_it_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let mut server = SimServer::start(dir.path(), "1.9.2");
    let held = dir.path().join("held");
    let mut proc = child("hold_generated", state.path())
        .env("SMOLVM_HOST", &server.url)
        .env("ATTACK2_HELD", &held)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_for(&held, Duration::from_secs(30)), "child never held");
    server.stop();
    proc.kill().unwrap();
    proc.wait().unwrap();
    // The watcher's turn, against a dead socket.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(ledger_names(state.path()).len(), 1, "the entry stays");
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
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
        "{:?}\n{swept}",
        server.machines()
    );
    assert!(ledger_names(state.path()).is_empty(), "{swept}");
}

// ---------------------------------------------------------------------------------------
// The per-call deadline, and odd bodies
// ---------------------------------------------------------------------------------------

/// HELD. "The whole exchange is bounded by the call's timeout" (round one's fix): an
/// 8 MiB copy-in to a server that reads 256 bytes every 100 ms and never answers fails within
/// the 1 s timeout (here in about 2 s). (The write timeout is set once per 64 KiB piece and
/// `write_all` retries after a partial write, so one piece can overrun by one more timeout;
/// on loopback sockets, whose buffers free in 64 KiB steps, that is all it can do.)
#[test]
fn held_an_upload_to_a_slow_reading_server_is_bounded_by_the_call_timeout() {
    let (_dir, url) = raw_server(|method, _path, mut conn| {
        if method == "GET" {
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{RUNNING}",
                RUNNING.len()
            );
            return;
        }
        // The upload: 256 bytes every 100 ms, never an answer.
        let mut buf = [0u8; 256];
        let until = Instant::now() + Duration::from_secs(120);
        while Instant::now() < until {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    });
    let host = tempfile::tempdir().unwrap();
    let file = host.path().join("big.bin");
    std::fs::write(&file, vec![7u8; 8 * 1024 * 1024]).unwrap();
    let started = Instant::now();
    let result = within(Duration::from_secs(10), move || {
        let smolvm = Smolvm::remote(&url)
            .unwrap()
            .with_timeout(Duration::from_secs(1));
        smolvm
            .machine_cp(CpPath::host(&file), CpPath::guest("web", "/tmp/big.bin"))
            .map_err(|e| e.to_string())
    });
    match result {
        Some(r) => assert!(r.is_err(), "a server that never answered: {r:?}"),
        None => panic!(
            "the upload still runs {:?} after it started, with a 1 s timeout",
            started.elapsed()
        ),
    }
}

/// HELD. A server that sends its head at once, then trickles the body (a byte every
/// 200 ms of a 1000-byte `Content-Length`): the call fails within its timeout.
#[test]
fn held_a_trickled_body_is_bounded_by_the_call_timeout() {
    let (_dir, url) = raw_server(|_, _, mut conn| {
        let _ = conn.write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"machines\":[",
        );
        let until = Instant::now() + Duration::from_secs(120);
        while Instant::now() < until {
            if conn.write_all(b" ").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    let result = within(Duration::from_secs(15), move || {
        Smolvm::remote(&url)
            .unwrap()
            .with_timeout(Duration::from_secs(1))
            .machine_list()
            .map_err(|e| e.to_string())
    });
    let result = result.expect("bounded by the 1 s timeout");
    assert!(result.is_err(), "{result:?}");
}

/// HELD. `Content-Length` lies: longer than the body (then the connection closes) is an
/// error, never a hang or a half-read answer taken for whole; shorter than what follows is
/// cut at the length.
#[test]
fn held_content_length_lies_are_errors_or_cut() {
    let (_dir, url) = raw_server(|_, path, mut conn| {
        let body = r#"{"machines":[]}"#;
        let len = if path.ends_with("machines") {
            body.len() + 40
        } else {
            body.len()
        };
        let _ = write!(
            conn,
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len}\r\nconnection: close\r\n\r\n{body}garbage-after-the-body"
        );
    });
    let smolvm = Smolvm::remote(&url)
        .unwrap()
        .with_timeout(Duration::from_secs(5));
    let err = smolvm
        .machine_list()
        .expect_err("a body shorter than its length");
    assert!(
        matches!(err, Error::Unreachable { .. } | Error::Parse { .. }),
        "{err:?}"
    );
    // `/api/v1/machines/web`: the length is right, the trailing garbage is not read as JSON.
    let status = smolvm.machine_status("web");
    assert!(
        matches!(status, Err(Error::Parse { .. })),
        "`{{\"machines\":[]}}` is not a machine: {status:?}"
    );
}

/// DEFECT (low severity: smolvm's own server honours `Connection: close`). A server (or a
/// proxy in front of it) that answers with a whole chunked body, its last chunk included, and
/// keeps the connection open: the client reads on until EOF (src/remote/http.rs `exchange`:
/// only a `Content-Length` ends the read loop early), so a complete answer becomes "no whole
/// answer within the call's timeout". Expected: the answer, as soon as its last chunk came.
/// Suggested fix: for a chunked body, stop reading once `dechunk` finds the last chunk.
#[test]
fn defect_a_whole_chunked_answer_on_a_connection_kept_open_times_out() {
    let (_dir, url) = raw_server(|_, _, mut conn| {
        let body = r#"{"machines":[]}"#;
        let _ = write!(
            conn,
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
            body.len()
        );
        std::thread::sleep(Duration::from_secs(30));
    });
    let result = within(Duration::from_secs(20), move || {
        Smolvm::remote(&url)
            .unwrap()
            .with_timeout(Duration::from_secs(2))
            .machine_list()
            .map(|list| list.len())
            .map_err(|e| e.to_string())
    })
    .expect("bounded");
    assert_eq!(result, Ok(0), "a whole chunked answer");
}

// ---------------------------------------------------------------------------------------
// Signals and the exit hook
// ---------------------------------------------------------------------------------------

/// A child holds `machines` machines over the API (never dropped), and runs an exec that
/// hangs on the server; `signal` reaches it. Its exit status, its output, and what is left.
fn signal_during_hung_exec(
    signal: i32,
    machines: usize,
    latency: &str,
    limit: Duration,
) -> (ExitStatus, String, Vec<String>) {
    signal_during_hung_exec_with(signal, machines, latency, limit, &[])
}

fn signal_during_hung_exec_with(
    signal: i32,
    machines: usize,
    latency: &str,
    limit: Duration,
    env: &[(&str, &str)],
) -> (ExitStatus, String, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let server = SimServer::start_with(dir.path(), "1.9.2", &[("SMOLVM_FAKE_LATENCY", latency)]);
    let held = dir.path().join("held");
    let proc = child("hold_and_exec", state.path())
        .env("SMOLVM_HOST", &server.url)
        .env("SMOLVM_HARNESS_WATCHER", "off")
        .env("ATTACK2_HELD", &held)
        .env("ATTACK2_MACHINES", machines.to_string())
        .env("SMOLVM_HARNESS_MAX_MACHINES", "8")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if !wait_for(&held, Duration::from_secs(60)) {
        // SAFETY: a signal to our own child, not yet reaped.
        unsafe {
            libc::kill(proc.id() as libc::pid_t, libc::SIGKILL);
        }
        let (_, text) = finish_status(proc, Duration::from_secs(10));
        panic!("child never held\n{text}");
    }
    std::thread::sleep(Duration::from_millis(700));
    // SAFETY: a signal to our own child, not yet reaped.
    unsafe {
        libc::kill(proc.id() as libc::pid_t, signal);
    }
    let (status, text) = finish_status(proc, limit);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.machines().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    (status, text, server.machines())
}

/// HELD. SIGTERM and SIGINT while an exec hangs on the server, the machine never dropped:
/// round one's fix has the exit hook wait for the signal thread; the process still ends *by
/// that signal* (the status nextest and shells report), and the machine is deleted.
#[test]
#[file_serial(attacks_remote_env)]
fn held_a_signal_during_a_hung_exec_still_ends_the_process_by_that_signal() {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let (status, text, left) =
            signal_during_hung_exec(signal, 1, "exec=60s", Duration::from_secs(45));
        assert_eq!(status.signal(), Some(signal), "{status:?}\n{text}");
        assert!(left.is_empty(), "{left:?}\n{text}");
    }
}

/// HELD. The same over the CLI (the fake, `SMOLVM_FAKE_LATENCY=exec=60s`): SIGTERM and
/// SIGINT during a hung `machine exec`, the machine never dropped: the process ends by that
/// signal, and the machine is deleted.
#[test]
#[file_serial(attacks_remote_env)]
fn held_over_the_cli_a_signal_during_a_hung_exec_ends_the_process_by_that_signal() {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let dir = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let fake = dir.path().join("fake");
        let held = dir.path().join("held");
        let proc = child("hold_and_exec", state.path())
            .env("SMOLVM_BIN", serve::FAKE)
            .env("SMOLVM_FAKE_STATE", &fake)
            .env("SMOLVM_FAKE_LATENCY", "exec=60s")
            .env("SMOLVM_HARNESS_WATCHER", "off")
            .env("ATTACK2_HELD", &held)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        assert!(wait_for(&held, Duration::from_secs(30)), "child never held");
        std::thread::sleep(Duration::from_millis(700));
        // SAFETY: a signal to our own child, not yet reaped.
        unsafe {
            libc::kill(proc.id() as libc::pid_t, signal);
        }
        let (status, text) = finish_status(proc, Duration::from_secs(45));
        assert_eq!(status.signal(), Some(signal), "{status:?}\n{text}");
        let left = smolvm_harness::sim::read_fake_state(&fake)
            .map(|ms| ms.len())
            .unwrap_or(0);
        assert_eq!(left, 0, "{text}");
    }
}

/// Was a DEFECT, now fixed. The exit hook waits for the signal thread's teardown at most twice
/// one call's bound (`signal_teardown_limit`, src/cleanup/exit.rs; 120 s by default, 4 s
/// here), while that teardown may take far longer:
/// one `machine ls` and one delete per machine, each bounded by `CLEANUP_TIMEOUT` (60 s).
/// With three machines held as statics on a server whose deletes hang, the exit hook gives
/// up after 122 s and returns, and the process *exits as a success* (libtest's 0: the test
/// whose exec the signal cut passed) under the signal thread, which is still deleting:
/// SIGTERM's exit status is lost (nextest, CI and shells see a pass) and the teardown is cut
/// mid-call. Expected: the process ends by SIGTERM. Suggested fix: when the wait runs out,
/// re-raise the signal from the exit hook itself (`emulate_default_handler(signal)`, the
/// signal kept in a static), never return into a successful exit; or bound the signal
/// teardown as a whole below the exit hook's wait.
#[test]
#[file_serial(attacks_remote_env)]
fn defect_a_long_signal_teardown_ends_the_process_as_a_success() {
    // Calls bounded at 2 s: the exit hook waits 4 s for a teardown that needs 8 s (a list and
    // three hanging deletes), then must end the process by SIGTERM itself.
    let (status, text, _) = signal_during_hung_exec_with(
        libc::SIGTERM,
        3,
        "exec=300s,delete=300s",
        Duration::from_secs(60),
        &[("SMOLVM_HARNESS_TIMEOUT", "2s")],
    );
    assert_eq!(
        status.signal(),
        Some(libc::SIGTERM),
        "SIGTERM, and the process ended with {status:?}\n{text}"
    );
}

// ---------------------------------------------------------------------------------------
// Child side
// ---------------------------------------------------------------------------------------

/// The child side of the process-level tests above (a no-op in a normal run).
#[test]
#[ignore = "run by the tests above in a child process"]
fn attack2_child() {
    let Ok(role) = std::env::var("ATTACK2_CHILD") else {
        return;
    };
    let smolvm = Smolvm::from_env();
    match role.as_str() {
        "create_web_forget" => {
            let vm = Machine::builder()
                .smolvm(smolvm)
                .image("alpine")
                .name("web")
                .create()
                .unwrap();
            println!("CREATED {}", vm.name());
            std::mem::forget(vm);
        }
        "create_web_times_out" => {
            let err = Machine::builder()
                .smolvm(smolvm)
                .image("alpine")
                .net()
                .name("web")
                .create()
                .expect_err("the server answers 408 after 1 s");
            println!("CREATE FAILED: {err}");
        }
        "hold_web" => {
            let vm = Machine::builder()
                .smolvm(smolvm)
                .image("alpine")
                .net()
                .name("web")
                .create()
                .unwrap();
            let held = PathBuf::from(std::env::var("ATTACK2_HELD").unwrap());
            std::fs::write(&held, vm.name()).unwrap();
            std::thread::sleep(Duration::from_secs(120));
        }
        "hold_generated" => {
            let vm = Machine::builder()
                .smolvm(smolvm)
                .image("alpine")
                .net()
                .create()
                .unwrap();
            let held = PathBuf::from(std::env::var("ATTACK2_HELD").unwrap());
            std::fs::write(&held, vm.name()).unwrap();
            std::thread::sleep(Duration::from_secs(120));
        }
        "shared_golden" => {
            let build =
                |g: smolvm_harness::GoldenBuilder| g.smolvm(smolvm.clone()).image("alpine").net();
            let golden = smolvm_harness::Golden::shared("attacks-remote2-golden", build).unwrap();
            let clone = golden.fork().unwrap();
            assert_eq!(clone.exec(&["echo", "ok"]).unwrap().stdout_str(), "ok\n");
            println!("GOLDEN {:?}", golden.name());
        }
        "create_generated_fails" => {
            let err = Machine::builder()
                .smolvm(smolvm)
                .image("alpine")
                .net()
                .create()
                .expect_err("the server (or its proxy) answers a timeout");
            println!("CREATE FAILED: {err}");
        }
        "sweep" => {
            let swept = smolvm_harness::sweep(&smolvm).unwrap();
            println!("SWEPT {swept:?}");
        }
        "hold_and_exec" => {
            let count: usize = std::env::var("ATTACK2_MACHINES")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(1);
            let vms: Vec<Machine> = (0..count)
                .map(|_| {
                    Machine::builder()
                        .smolvm(smolvm.clone())
                        .image("alpine")
                        .net()
                        .start()
                        .unwrap()
                })
                .collect();
            let held = PathBuf::from(std::env::var("ATTACK2_HELD").unwrap());
            std::fs::write(&held, vms[0].name()).unwrap();
            let out = vms[0].exec(&["sleep", "1000"]);
            println!("EXEC RETURNED {out:?}");
            // As statics or `#[once]` fixtures: no guard drops them.
            for vm in vms {
                std::mem::forget(vm);
            }
        }
        other => panic!("unknown role {other}"),
    }
}
