//! The examples, run as tests: each example file is compiled here as a module, so its flow
//! runs against the simulation and the fake CLI in every `cargo test`, and the unit tests
//! inside `examples/launch_flow.rs` run too (an example's own `#[test]`s otherwise run only
//! with `cargo test --example NAME`).

#[allow(dead_code)]
#[path = "../examples/quickstart.rs"]
mod quickstart;

#[allow(dead_code)]
#[path = "../examples/packed.rs"]
mod packed;

#[allow(dead_code)]
#[path = "../examples/launch_flow.rs"]
mod launch_flow;

use smolvm_harness::Smolvm;

fn quickstart_output(backend: &quickstart::Backend) -> String {
    let mut out = Vec::new();
    let result = quickstart::run(backend, &mut out);
    let text = String::from_utf8(out).expect("utf-8 output");
    if let Err(e) = result {
        panic!("quickstart failed: {e}\n{text}");
    }
    text
}

/// The first line says which smolvm; every step shows its commands; the end confirms that
/// no machine is left.
fn check_quickstart(text: &str, first_line_starts: &str) {
    let first = text.lines().next().unwrap_or_default();
    assert!(first.starts_with(first_line_starts), "{text}");
    for step in [
        "[1] create and start machine ",
        "[2] exec with an env variable",
        "[3] exec in a working directory",
        "[4] exec a command that exits 3",
        "[5] copy a file in",
        "[6] stop",
        "[7] delete",
    ] {
        assert!(text.contains(step), "missing step {step:?}:\n{text}");
    }
    for command in [
        " machine create --name ",
        " machine start --name ",
        " --env=GREETING=<redacted> -- sh -c ",
        " -w /tmp -- pwd",
        " machine cp ",
        " machine stop --name ",
    ] {
        assert!(
            text.contains(command),
            "missing command {command:?}:\n{text}"
        );
    }
    assert!(text.contains("      -> exit 3 in "), "{text}");
    // The env value is shown as the guest's output, never in a command line.
    let commands: Vec<&str> = text.lines().filter(|l| l.starts_with("    $ ")).collect();
    assert!(!commands.is_empty(), "{text}");
    assert!(
        commands.iter().all(|c| !c.contains("hello from the host")),
        "{text}"
    );
    assert!(
        text.contains("\nno machine left (checked with `machine ls`)\n"),
        "{text}"
    );
}

#[test]
fn quickstart_on_the_simulation() {
    let backend = quickstart::Backend::simulated("for a test");
    let text = quickstart_output(&backend);
    check_quickstart(
        &text,
        "using the in-process simulation (Smolvm::simulated()): for a test",
    );
}

#[test]
fn quickstart_on_the_fake_cli_with_a_state_dir_of_its_own() {
    let fake = Smolvm::new(env!("CARGO_BIN_EXE_smolvm-fake"));
    let backend = quickstart::Backend::fake(fake, None).expect("fake backend");
    let text = quickstart_output(&backend);
    check_quickstart(&text, "using the fake smolvm CLI: ");
    assert!(
        text.lines()
            .next()
            .unwrap_or_default()
            .ends_with(", removed at the end)"),
        "{text}"
    );
}

#[test]
fn packed_on_the_simulation() {
    packed::run(&Smolvm::simulated()).expect("packed example");
}

/// Like a guarded test, the quickstart treats a `SMOLVM_BIN` that is set but does not resolve
/// as an error, not as a reason to fall back to the simulation (run in a child, since it reads
/// the process environment).
#[test]
fn quickstart_refuses_a_wrong_smolvm_bin() {
    if std::env::var_os("EXAMPLES_TEST_CHILD").is_some() {
        match quickstart::Backend::detect() {
            Ok(_) => println!("\nFELL BACK"),
            Err(e) => println!("\nERR {e}"),
        }
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "quickstart_refuses_a_wrong_smolvm_bin",
            "--nocapture",
        ])
        .env("EXAMPLES_TEST_CHILD", "1")
        .env("SMOLVM_BIN", "/nonexistent/smolvm")
        .output()
        .expect("run the child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.contains("ERR SMOLVM_BIN=/nonexistent/smolvm is not an executable file"),
        "{stdout}"
    );
}
