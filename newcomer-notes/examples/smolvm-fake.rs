fn main() {
    std::process::exit(smolvm_harness::sim::fake_cli_main());
}
