//! Secrets in quoted output: every message and `Debug` print that quotes smolvm's or the
//! guest's output scrubs env values of 4 bytes or more from the whole output before cutting
//! it to its tail, whichever line endings either side uses; shorter values are redacted from
//! command lines only, as documented.

use std::panic::{catch_unwind, AssertUnwindSafe};

use smolvm_harness::error::MIN_SCRUB_LEN;
use smolvm_harness::{
    CreateOptions, Error, ExecOptions, ExecOutput, Reply, ScriptedRunner, Smolvm,
};

/// A PEM-like multi-line value: every line is distinctive, so a leak of any one is visible.
const PEM: &str = "-----BEGIN PRIVATE KEY-----\n\
                   MIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n\
                   BKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj\n\
                   MzEfYyjiWA4R4/M2bS1GB4t7NXp98C3S\n\
                   C1n4tdTWLIGRNFb3c3mN0wCzzyhObqDE\n\
                   -----END PRIVATE KEY-----";

fn pem_lines() -> Vec<&'static str> {
    PEM.lines().collect()
}

fn client(runner: &ScriptedRunner) -> Smolvm {
    Smolvm::new("smolvm").with_runner(runner.clone())
}

/// `n` filler lines.
fn filler(tag: &str, n: usize) -> String {
    (0..n).map(|i| format!("{tag} line {i}\n")).collect()
}

/// The message of the panic `f` raises.
fn panic_message(f: impl FnOnce()) -> String {
    let payload = catch_unwind(AssertUnwindSafe(f)).expect_err("expected a panic");
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

fn assert_no_line_of(secret_lines: &[&str], shown: &str) {
    for line in secret_lines {
        assert!(!shown.contains(line), "{line:?} leaked in:\n{shown}");
    }
}

/// An exec on a scripted smolvm answering `reply`, with `KEY` set to `value`.
fn exec_with_secret(value: &str, reply: Reply) -> ExecOutput {
    let runner = ScriptedRunner::new().on(&["machine", "exec"], reply);
    client(&runner)
        .machine_exec("m", &["env"], &ExecOptions::default().env("KEY", value))
        .expect("exec")
}

#[test]
fn a_pem_secret_across_the_tail_cut_is_scrubbed_by_assert_success_and_expect_code() {
    // Twenty lines of tail: the cut falls inside the key, whose last lines are quoted.
    let stdout = format!("{}{PEM}\n{}", filler("head", 100), filler("after", 17));
    let out = exec_with_secret(PEM, Reply::with(3, stdout.clone(), stdout));
    let msg = panic_message(|| {
        out.assert_success();
    });
    assert!(msg.contains("after line 16"), "{msg}");
    assert!(msg.contains("<redacted>"), "{msg}");
    assert_no_line_of(&pem_lines(), &msg);
    let msg = panic_message(|| {
        out.expect_code(0);
    });
    assert_no_line_of(&pem_lines(), &msg);
    assert_no_line_of(&pem_lines(), &format!("{out:?}"));
}

#[test]
fn a_secret_near_the_start_of_a_long_output_stays_out_of_messages() {
    let secret = "tok-0123456789abcdef";
    let stdout = format!("{secret}\n{}", filler("noise", 300));
    let out = exec_with_secret(secret, Reply::with(1, stdout.clone(), stdout));
    let msg = panic_message(|| {
        out.assert_success();
    });
    assert!(msg.contains("earlier lines"), "{msg}");
    assert!(!msg.contains(secret), "{msg}");
    assert!(!format!("{out:?}").contains(secret));
    assert!(format!("{out:?}").contains("<redacted>"));
}

#[test]
fn crlf_output_of_an_lf_secret_and_lf_output_of_a_crlf_secret_are_scrubbed() {
    let crlf_out = format!("{}\r\n", PEM.replace('\n', "\r\n"));
    let out = exec_with_secret(PEM, Reply::with(1, crlf_out.clone(), crlf_out));
    let msg = panic_message(|| {
        out.expect_code(0);
    });
    assert_no_line_of(&pem_lines(), &msg);
    assert_no_line_of(&pem_lines(), &format!("{out:?}"));

    let crlf_secret = PEM.replace('\n', "\r\n");
    let lf_out = format!("{PEM}\n");
    let out = exec_with_secret(&crlf_secret, Reply::with(1, lf_out.clone(), lf_out));
    let msg = panic_message(|| {
        out.assert_success();
    });
    assert_no_line_of(&pem_lines(), &msg);
    assert_no_line_of(&pem_lines(), &format!("{out:?}"));
}

#[test]
fn error_display_and_debug_scrub_the_whole_stderr_and_create_time_env() {
    // The create-time env of a machine is scrubbed from later calls' errors too.
    let stderr = format!(
        "{}{}\r\n{}Error: config operation failed: boom\n",
        filler("log", 50),
        PEM.replace('\n', "\r\n"),
        filler("more", 12)
    );
    let runner = ScriptedRunner::new().on(&["machine", "start"], Reply::fail(1, stderr));
    let smolvm = client(&runner);
    smolvm
        .machine_create("m-pem", &CreateOptions::image("alpine").env("KEY", PEM))
        .expect("create");
    let err = smolvm.machine_start("m-pem").unwrap_err();
    assert!(matches!(err, Error::Failed { .. }), "{err}");
    let shown = err.to_string();
    assert!(
        shown.contains("Error: config operation failed: boom"),
        "{shown}"
    );
    assert!(shown.contains("<redacted>"), "{shown}");
    assert_no_line_of(&pem_lines(), &shown);
    assert_no_line_of(&pem_lines(), &format!("{err:?}"));
    smolvm.machine_delete("m-pem").expect("delete");
}

#[test]
fn a_timeout_error_scrubs_its_stderr() {
    let mut hang = Reply::hang();
    hang.stderr = format!("{PEM}\n{}", filler("tick", 18)).into_bytes();
    let runner = ScriptedRunner::new().on(&["machine", "exec"], hang);
    let err = client(&runner)
        .machine_exec("m", &["sleep", "9"], &ExecOptions::default().env("K", PEM))
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    assert_no_line_of(&pem_lines(), &err.to_string());
    assert_no_line_of(&pem_lines(), &format!("{err:?}"));
}

#[test]
fn short_values_are_redacted_from_command_lines_but_not_from_output() {
    assert_eq!(MIN_SCRUB_LEN, 4);
    let stdout = "value=abc\nother=wxyz\n";
    let runner = ScriptedRunner::new().on(&["machine", "exec"], Reply::with(1, stdout, stdout));
    let out = client(&runner)
        .machine_exec(
            "m",
            &["env"],
            &ExecOptions::default()
                .env("SHORT", "abc")
                .env("LONG", "wxyz"),
        )
        .expect("exec");
    // Command lines: both redacted, whatever the length.
    let cmd = out.command().to_string();
    assert!(cmd.contains("--env=SHORT=<redacted>"), "{cmd}");
    assert!(cmd.contains("--env=LONG=<redacted>"), "{cmd}");
    assert!(!cmd.contains("abc") && !cmd.contains("wxyz"), "{cmd}");
    // Output: the 4-byte value is scrubbed, the 3-byte one is left, as documented.
    let msg = panic_message(|| {
        out.assert_success();
    });
    assert!(msg.contains("other=<redacted>"), "{msg}");
    assert!(msg.contains("value=abc"), "{msg}");
    let debug = format!("{out:?}");
    assert!(debug.contains("other=<redacted>") && debug.contains("value=abc"));
    // Transcripts hold command lines only: both redacted there too.
    let runner = ScriptedRunner::new();
    let smolvm = client(&runner);
    smolvm
        .machine_create("m-short", &CreateOptions::image("alpine").env("S", "abc"))
        .expect("create");
    let recorded = smolvm_harness::transcript::transcript("m-short");
    assert!(
        recorded
            .iter()
            .any(|e| e.command.contains("--env=S=<redacted>")),
        "{recorded:?}"
    );
    assert!(recorded.iter().all(|e| !e.command.contains("abc")));
    smolvm.machine_delete("m-short").expect("delete");
}
