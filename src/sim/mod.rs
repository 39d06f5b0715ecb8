//! A stateful simulation of the smolvm CLI, for tests that cannot (or should not) boot VMs.
//!
//! One implementation of smolvm's grammar and behaviour backs two front ends:
//!
//! - [`SimulatedRunner`], a [`crate::runner::Runner`] that answers in-process from shared state;
//! - the `smolvm-fake` binary (`fixtures/smolvm-fake.rs`, a thin `main` over
//!   [`fake_cli_main`]), a real process that keeps its state in a directory, so that the
//!   process runner, timeouts, kills and parallel processes are exercised for real. A crate
//!   that depends on this one builds its own copy from three lines (README, "Running your
//!   real-mode tests without smolvm").
//!
//! Both parse argv exactly as the chosen smolvm version does (0.8.0 through 1.9.2: the
//! positional-name dialect before 1.0.2, `--name` after, `--label` from 1.8.0, …) and answer
//! with smolvm's exit codes and texts: clap usage errors are exit 2 with `error: …`, runtime
//! errors exit 1 with one `Error: …` line, `exec` passes the guest's code through.
//!
//! # What is simulated
//!
//! `--version`; `pack create --image IMG -o OUT`; `machine` (alias `vm`) `create`, `start`,
//! `stop`, `delete` (alias `rm`), `exec`, `cp`, `ls` (alias `list`), `status`, `data-dir` and
//! `fork` (below),
//! with the flags the harness uses (those [`crate::Smolvm`]'s methods send; the full grammar,
//! per version, is in this module's `grammar.rs`). Any other flag is clap's
//! `unexpected argument` error; other real subcommands (`serve openapi`, `machine run`, …)
//! fail with exit 1 `Error: sim: subcommand not simulated: …`. The fake binary also serves
//! the HTTP API (`smolvm-fake serve start`, below).
//!
//! ## Workload flags of `machine create`
//!
//! - `--cpus N` (clap `u8`: `256` is exit 2 `256 is not in 0..=255`), `--mem MiB` (`u32`,
//!   `512M` is exit 2 `invalid digit found in string`), `--storage GiB`, `--overlay GiB`
//!   (`u64`). `VmResources::validate` runs at run time: `Error: config operation failed:
//!   validate resources: …` (exit 1) for 0 CPUs, under 64 MiB (`(got N MiB)`), a zero disk;
//!   over 16 CPUs only prints smolvm's `warning: requested N vCPUs …` on stderr. With `--from`
//!   v0.8.x skips the validation, as smolvm does. `ls --json`/`status --json` show `cpus`,
//!   `memory_mib`, `storage_gb`, `overlay_gb`.
//! - `-p/--port HOST:GUEST` or `PORT` (repeatable): `PortMapping::parse`'s texts, exit 2
//!   (`error: invalid value '0:80' for '--port <HOST:GUEST>': host port 0 is not valid for VM
//!   port forwarding`, …); a host port given twice is exit 1 `Error: config operation failed:
//!   validate ports: duplicate host port H: each host port can only be mapped once` in every
//!   version. JSON `ports` is a count.
//! - `-v/--volume HOST:GUEST[:ro|:rw]` (repeatable), checked at run time (exit 1) in smolvm's
//!   order and words: format (v0.8.x splits at every `:`, 1.4.0+ from the right, so a bad
//!   mode becomes part of the host path), host exists (`mount source not found: HOST`, as
//!   given), is a directory, is not protected (`/`, `/var`, under `/var/run`, `/var/log`,
//!   `/etc`, `/usr`, `/bin`, `/sbin`, `/lib`, `/proc`, `/sys`, `/dev`, `/run`; `/boot` from
//!   1.9.0, the simulation's choice of version), guest absolute, no duplicate target. HOST is
//!   resolved against the smolvm process's working directory (the test process's, in
//!   process) and stored canonical. JSON `mounts` is a count. The guest sees the host
//!   directory under GUEST, live (see "Guests").
//! - `--allow-host HOST` (repeatable; implies `--net`). Hermetic, no DNS: an IP literal is
//!   kept (`/32`, `/128`); `localhost` is `127.0.0.1/32` and `::1/128`; a name that is
//!   `invalid`, ends in `.invalid` or is not a well-formed host name fails like an unknown
//!   name (`Error: config operation failed: --allow-host: failed to resolve 'x.invalid':
//!   failed to lookup address information: Name or service not known`); any other name
//!   resolves to one stable address in 198.18.0.0/15 (FNV-1a of the lower-cased name, folded
//!   into the range's 17 bits). `host:443` is the port-suffix error. The CIDRs (hosts first,
//!   then `--allow-cidr`) and the names are stored ([`SimMachine::allowed_cidrs`],
//!   [`SimMachine::allowed_hosts`]); nothing is resolved again at start. Before 1.8.0
//!   `--from` drops it unread.
//! - `--secret-env GUEST=HOSTVAR`, `--secret-file GUEST=/abs` (1.0.0+; before, clap's
//!   `unexpected argument`): §2.2's checks (exit 1); stored as references
//!   ([`SimMachine::secret_refs`]: variable names and paths, never values). `--from`
//!   ignores them silently.
//! - `--dns IPv4` (1.3.0+; clap `invalid IPv4 address syntax`), stored, implies `--net`.
//!
//! Value names in clap messages: `--cpus <N>`, `--mem <MiB>`, `--storage <GiB>`,
//! `--overlay <GiB>`, `--volume <HOST:GUEST[:ro]>`, `--port <HOST:GUEST>`,
//! `--allow-host <HOSTNAME>`, `--secret-env <KEY=HOST_VAR>`, `--secret-file <KEY=PATH>`,
//! `--dns <IP>` (the last three are the simulation's choice).
//!
//! ## Fork: goldens and clones
//!
//! From 1.0.0, `machine start --name G --forkable` starts G forkable (before: clap's
//! `unexpected argument '--forkable' found`); on a machine that is already running it prints
//! `Machine 'G' already running (PID: n)`, exits 0 and leaves it as it was. `stop` clears
//! forkability ([`SimMachine::forkable`]).
//!
//! `machine fork --golden G -n/--name C` (1.0.2+; `machine fork G C` on 1.0.0 and 1.0.1;
//! before 1.0.0 clap's `unrecognized subcommand 'fork'`) takes `-p/--port H:G` pins and
//! `--forkable` (always refused), and from 1.7.0 `-e/--env K=V`, `--secret-env`,
//! `--secret-file` (`--count`, `--wait-ready`, `--hold` and the rest are not simulated).
//! Without `--name` (1.0.2+) it is exit 1 `Error: config operation failed: fork: --name is
//! required for one clone; …`. Otherwise it prints `Freezing golden 'G' as fork base...` on
//! stderr first, even when it then fails, and checks, in smolvm's order and words: the clone
//! name (`config operation failed: clone name: clone name contains invalid character: '.'`),
//! the `-e` entries (`config operation failed: fork env: invalid key '1BAD': must match
//! [A-Za-z_][A-Za-z0-9_]*`; the simulation's `expected KEY=VALUE, got 'K'` and `value of 'K'
//! must not contain a newline`), the secret refs (as create's), `--forkable` (`nested fork is
//! not supported …`), a taken clone name (`agent operation failed: fork: machine 'C' already
//! exists`), then the golden: unknown (`vm not found: G`); not running, or before 1.7.0
//! running without `--forkable` (``… golden 'G' is not running forkable; start it with
//! `machine start --forkable --name G` ``); running without `--forkable` from 1.7.0 (`…
//! golden FORK failed: ERR EINVAL no memfd-backed RAM (start the golden VM with
//! SMOLVM_FORKABLE=1)`); frozen, on 1.7.3 to 1.7.5 only (`… golden 'G' is already paused; a
//! valid retained checkpoint is required`). Then the clone's secret refs (the golden's, with
//! the fork's replacing same-named ones) are resolved from smolvm's environment as at a
//! start. A failed fork changes nothing.
//!
//! On success it prints one `  port H->P (golden) remapped to H2->P (clone)` line per golden
//! forward (H2 the `-p` pin for P, else a fresh port from binding `127.0.0.1:0`; pins for
//! other guest ports are added as they are), `Booting clone 'C' from snapshot...`, on stdout
//! `Machine 'C' running (PID: n)`, then `Forked 'G' -> 'C'. Golden stays frozen as the fork
//! base (do not start it again while clones exist).`, exit 0. The clone's record is a copy
//! of the golden's (labels, env, secret refs, CPUs, memory, mounts, image, `created_at`) with
//! its own name, pid and ports, [`SimMachine::golden`] set and `forkable` false; `-e` values
//! replace same-named env entries and are written to `/etc/smolvm/fork-env` (`K=V` lines,
//! `{name}` and `{index}` (0) replaced). Its guest files, directories and servers (a `httpd`
//! started in the golden answers on the clone's ports) are copies of the golden's, private
//! from then on; mounts are the same host directories. Its console log holds one line.
//!
//! The golden becomes [`SimState::Frozen`] for good (`frozen` in `ls`/`status` from 1.3.0,
//! `unreachable` before; its VMM stays, with its pid and bound host ports, but nothing in it
//! answers). Exec and cp into it fail with the simulation's `Error: agent operation failed:
//! connect: machine 'G' is frozen as a fork base: its VM is paused and its agent does not
//! answer`. From 1.3.0 `start` is refused (`'G' is frozen because it is the fork base for N
//! live clone(s) (C1, C2)`, or with no running clone `… because it retains a reusable fork
//! checkpoint; stop it before restarting, or fork it again`) and so is `stop` while clones
//! run (`machine 'G' is the fork base for N live clone(s) (…); stop or delete the clones
//! first`); a `stop` otherwise ends it (state `stopped`). Before 1.3.0 `start` says it is
//! already running and `stop` stops it. `delete` without `-f` of a golden with clones is
//! refused before the prompt (`machine 'G' is the fork base for N clone(s) (…); delete the
//! clones first, use --cascade to remove them too, or --force to break them`); `delete -f`
//! goes ahead and marks its clones [`SimMachine::broken`]: their exec, cp and start then fail
//! with `agent operation failed: vm exec: clone disk: backing file of clone 'C' is gone:
//! golden 'G' was deleted (No such file or directory (os error 2))` (`file upload`, `start
//! machine`, … for the others), while `ls --json` still lists them. `delete --cascade --name
//! G` (1.7.0+; clap's error before) deletes the clones, then G, with no prompt. `ls --json`
//! has no golden or clone field (its `forkable` stays false, as smolvm's does for a CLI
//! golden); `ls -v` adds `  Forkable: enabled` before `  Created:` for a forkable machine.
//!
//! ## Secrets at `start` and `exec`
//!
//! `start` resolves the record's refs, `exec` the record's plus its own `--secret-*`, each
//! time, from the smolvm process's environment (in process: the [`crate::runner::Invocation`]
//! env, then the test process's, as for `-e KEY`) or the file (O_NOFOLLOW, 1 MiB, trailing
//! `\r`/`\n` cut). A missing one is exit 1 `Error: config operation failed: resolve secret
//! 'GUEST': env_unset` (`file_read_failed`, `file_too_large`) with no state change. The guest
//! sees `GUEST=value` after the machine env and `-e`, in guest-name order.
//!
//! ## `ls -v`, `data-dir`, the console log
//!
//! `ls` prints smolvm's table (`NAME STATE CPUS MEMORY MOUNTS PORTS STORAGE OVERLAY`, 88
//! dashes; default disks 20 and 10 GiB); `-v` adds `  PID: n`, `  Mount: SRC -> DST (ro)`,
//! `  Port: H -> G`, `  Network: enabled`, `  Env: K=V`, `  Workdir: DIR`,
//! `  Created: SECS` and a blank line, as smolvm does (secret refs and labels are not shown).
//!
//! `machine data-dir NAME` (`--name NAME` from 1.0.2) prints the machine's data directory,
//! a real directory `DATA/vms/<first 16 hex digits of sha256(NAME)>`, where `DATA` is the
//! fake's state directory, or for [`SimulatedRunner`] a private temp dir removed when its
//! last clone drops. An unknown name prints a path on 0.8.0 and is `Error: vm not found: N`
//! from 0.8.1. `delete` removes the directory.
//!
//! Every `start` writes boot lines (a `Linux version …` banner, then
//! `smolvm-agent: starting (machine 'N', boot B)` and `smolvm-agent: ready`) to
//! `agent-console.log` in it: appended across boots before 1.7.0, a fresh file at each boot
//! from 1.7.0. Guest output redirected to `/dev/console` or `/dev/kmsg` is appended.
//!
//! ## Guests
//!
//! Guests of `exec` on a running machine can run: `echo`, `true`, `false`, `env` (the
//! machine's env with the exec's `-e` and secrets on top, nothing else), `pwd`, `cat` (guest
//! files, stdin, `/proc/net/tcp` and `/proc/net/tcp6`), `grep [-qFvix] [-e] PATTERN [FILE]…`
//! (a basic-regex subset: literals, `.`, `*`, `^`, `$`; stdin when no file; exit 1 on no
//! match, 2 with `grep: F: No such file or directory`), `test`/`[` (`-f -d -e -s -n -z`,
//! `=`, `!=`, integer comparisons, `!`), `mkdir [-p]`, `rm [-f] [-r]`, `httpd`, `sh -c` with
//! a tiny shell (`;`, `&&`, `||`, `|`, quotes, `$VAR`, `exit N`, `[N]>FILE`, `[N]>>FILE`,
//! `>&2`, `2>&1`, to guest files, `/dev/null`, `/dev/console`, `/dev/kmsg`), `sleep`
//! (really sleeps; `--timeout` stops it with exit 124, and on image machines appends
//! `\ncommand timed out after Nms` to stderr) and `head -c N /dev/zero`. Anything else exits
//! 127 with `sim: command not simulated: NAME (…)` on stderr. File writes, `mkdir`, `rm`,
//! console output and servers are applied to the machine as they happen (dropped if it has
//! stopped or rebooted meanwhile) and stay until `delete`; servers end at `stop`.
//!
//! Paths under a `-v` mount's GUEST are the host directory's, read and written as they are
//! at that instant (`cat`, `grep`, `head`, `test`, redirections, `mkdir`, `rm`, `cp`, and the
//! files `httpd` serves), by both front ends; the state holds none of them. Under a `:ro`
//! mount a write fails as on Linux: `sh: can't create F: Read-only file system`,
//! `mkdir: can't create directory 'D': Read-only file system`, `rm: can't remove 'F':
//! Read-only file system` (exit 1).
//!
//! `httpd [-p [IP:]PORT] [-h DIR] [-v]` (busybox; `-f` is not simulated) daemonizes: it
//! returns 0 at once and serves, until the machine stops, `GET`/`HEAD` of guest files under
//! DIR (`/` is `/index.html`) with `HTTP/1.0 200 OK` and the body, else `404 Not Found`, then
//! closes. A second server on the same guest port fails with `httpd: bind: Address in use`
//! (exit 1). It shows in `/proc/net/tcp6` (busybox binds `[::]`) as a LISTEN (`0A`) row with
//! the port in hex (`:1F90`); `/proc/net/tcp` has only its header. `nc` is not simulated.
//!
//! ## Published ports
//!
//! From 1.1.0 (virtio-net) `start` binds `127.0.0.1:HOST` for every `-p` (not `[::1]`). A
//! host port of another running simulated machine is exit 1 `Error: config operation failed:
//! start machine: host port H is already in use by running machine 'X'`; one held by any
//! other process is exit 1 `Error: config operation failed: start machine: failed to start
//! virtio network runtime: Address already in use (os error 98)`; the machine is then not
//! started. A connection to a forward whose guest port has no server is accepted and closed
//! before any byte (EOF), as smolvm's forwarder does; with a server, it reaches the server.
//! Before 1.1.0 (TSI) the host port is bound only when a guest server starts on the mapped
//! guest port; if it is taken, the server fails with `httpd: bind: Address in use`. Every
//! host port closes before `stop`/`delete` returns, and at a reboot.
//!
//! In process, each host port has a thread that holds only a weak reference to the runner's
//! state and polls every 10 ms; `stop`/`delete` join it, and it ends by itself when the last
//! clone of the runner drops. The fake's `start` (or the `exec` whose server opens a TSI
//! port) binds the ports itself, then hands them to a detached helper process: its own
//! executable, `smolvm-fake __smolvm-fake-serve STATE_DIR MACHINE BOOT FD:HOST:GUEST…`, in
//! its own session with null stdio, its pid recorded in the machine. The helper reads the
//! machine's files from the state dir under the lock at each connection; `stop`/`delete` kill
//! it (after checking its command line) and wait until it is gone; it also exits by itself
//! within about 200 ms of its machine being gone, stopped or rebooted, or of the state
//! directory disappearing (it never re-creates it).
//!
//! Without `--stream`, output over 11 MiB per stream is truncated before 1.0.0 and is an
//! exit 1 error from 1.0.0, as in smolvm (`MAX_EXEC_OUTPUT`).
//!
//! # Knobs
//!
//! Keys are the subcommands in [`KNOB_KEYS`]. `fail` makes a well-formed call exit 1 with
//! `Error: agent operation failed: KEY: injected failure` (no state change); `latency` sleeps
//! before answering (outside any lock, so parallel calls overlap); `hang` never answers: the
//! in-process runner returns [`crate::Error::Timeout`] after the invocation's timeout, the
//! fake sleeps until it is killed. Usage errors (exit 2) are answered at once, as smolvm
//! answers them before doing any work.
//!
//! # The fake CLI's environment
//!
//! | variable | meaning |
//! |---|---|
//! | `SMOLVM_FAKE_STATE=DIR` | state is kept in `DIR/state.json`, guarded by an exclusive lock on `DIR/lock` held only for each read-modify-write; unset: [`default_fake_state_dir`] (`$TMPDIR/smolvm-fake-<uid>`, created 0700), shared by every fake of this user that is not given a directory |
//! | `SMOLVM_FAKE_VERSION=X.Y.Z` | the smolvm version to behave as (default 1.9.2) |
//! | `SMOLVM_FAKE_FAIL=start,exec` | subcommands that fail |
//! | `SMOLVM_FAKE_LATENCY=create=50ms,exec=20ms` | per-subcommand latency (humantime units) |
//! | `SMOLVM_FAKE_HANG=exec` | subcommands that sleep forever |
//! | `SMOLVM_FAKE_LOG=FILE` | append one JSON line per invocation (below) |
//! | `SMOLVM_FAKE_SERVE_TIMEOUT=SECS` | `serve`: the per-request timeout (default 300) |
//! | `SMOLVM_FAKE_CLOCK_SKEW=SECS` | the simulated host's clock runs this far ahead (negative: behind) of the real one, for creation times: a server on another host |
//!
//! An unusable state directory, an unknown knob key or a bad value is exit 1 with an
//! `Error: smolvm-fake: …` line. `delete` without `-f` reads its `[y/N]` answer from stdin
//! (EOF means no, so it prints `Cancelled`).
//!
//! The log line, written while holding the state lock right after the state change (for
//! `exec`, when the guest has finished):
//!
//! ```text
//! {"argv":["machine","create","--env=TOKEN=<redacted>","web"],"code":0,"machines":1,"pid":4242,"t_us":1767225600000000}
//! ```
//!
//! `argv` is the arguments without the program name, with every `-e`/`--env` value replaced
//! by `<redacted>` (values may be secrets; `--secret-env`/`--secret-file` carry only names and
//! paths, and are kept); `pid` is the fake process's own PID; `machines`
//! is the machine count after the command. A call killed while sleeping (latency, hang,
//! `sleep`) writes no line.
//!
//! # The simulated `smolvm serve` API (fake binary, feature `remote`)
//!
//! `smolvm-fake serve [start] [-l|--listen ADDR]` plays `smolvm serve start` of the version
//! played (smolvm-cli-more.md §9): `ADDR` is `unix:///abs/path.sock` or `/abs/path.sock` (an
//! existing file there is removed first), or `IP:PORT` for TCP (port 0 allowed); the default
//! is `unix://$XDG_RUNTIME_DIR/smolvm.sock`, else `/tmp/smolvm.sock`; anything else with a
//! `:` is exit 1 `… parse listen address: invalid address '…'`. It prints `smolvm API server
//! listening on unix:///…` (or `on http://127.0.0.1:PORT`, the real port) on stdout and
//! serves until SIGTERM/SIGINT, which print `Shutting down server (VMs continue
//! running)...` on stderr, remove the socket and exit 0. `-v`, `--json-logs`,
//! `--cors-origin`, `--seccomp` and `--landlock` are accepted and do nothing. Without the
//! crate's `remote` feature, `serve` is exit 1 with a message saying so.
//!
//! Each request is answered by running this same fake CLI as a child (argv in the version's
//! dialect, environment inherited, stdin null), so the API and the CLI share
//! `SMOLVM_FAKE_STATE`, its lock and its knobs (a `SMOLVM_FAKE_LATENCY=create=…` slows an API
//! create; the child shows in `/proc` as `smolvm-fake machine create …`). Env values (exec
//! and create `env`) go to the child as `-e KEY` with the value in its environment, never in
//! argv; 0.8.0, which has no `-e KEY`, refuses exec env with 400. Routes: `GET /health`
//! (`/api/v1/health` is 404), `POST/GET /api/v1/machines`, `GET/DELETE …/{name}`
//! (`?cascade=true` from 1.7.0; a golden with clones without it is 409), `POST …/start`
//! (`?forkable=true` from 1.2.5), `…/stop`, `…/exec` (`exitCode` as data; auto-starts),
//! `PUT/GET …/files/{*path}` (auto-start; through `machine cp`) and, from 1.2.5, `…/fork`
//! (its `env` is refused: the CLI's `fork -e` would need the value in argv). Shapes: v1.9.2
//! from 1.0.0, v0.8.2 before (no validation, `env`/`workdir`/`allowedCidrs` of create
//! dropped, unknown exec fields ignored, 2 MiB body limit until 1.7.0, then 100 MiB). Errors
//! are `{"error","code"}` JSON, except axum's plain-text 400 (malformed JSON), 422 (type
//! error, unknown exec field at 1.x) and 413. `SMOLVM_FAKE_SERVE_TIMEOUT=SECS` (default
//! 300, smolvm's tower timeout) bounds each request: past it the answer is 408 `TIMEOUT` (a
//! guessed body: the real one was never observed) and the child goes on. Not served: SSE
//! (`exec/stream`, `logs`), `fork-release`, `/readyz`, `/metrics`, the OpenAPI document.
//!
//! # The simulated `.smolmachine`
//!
//! `pack create --image IMG -o OUT` writes `OUT`, a small shell stub that only says it
//! cannot run, and, unless `--single-file`, `OUT.smolmachine`, a JSON manifest that
//! `machine create --from PATH` reads back:
//!
//! ```text
//! {"format":"smolvm-sim-pack","version":1,"image":"alpine","cpus":4,"memory_mib":8192,
//!  "network":false,"env":[["K","V"]],"workdir":null,"entrypoint":[]}
//! ```
//!
//! A real smolvm pack is not readable by the simulation and vice versa.
//!
//! # Deliberate differences from smolvm
//!
//! Summary lines after `Created machine: N`, the text tables of `ls`, help texts and clap's
//! `tip:` lines are not reproduced; the `cp` progress bar is not printed; the VM is never
//! `unreachable`/`failed` (except a frozen golden before 1.3.0); the HEAD note about an
//! unexpected executable name is not printed; `exec -d`, `cp --mode/--uid/--gid`, fork
//! batches, `--wait-ready`/`--hold`, `fork-release`, `--outbound-localhost-only`,
//! `--net-backend` and every flag not listed above are not simulated; `--allow-host` names
//! are not resolved again at start, and egress is not enforced.
//!
//! Messages and exit codes read from smolvm's own source (`smol-machines/smolvm` at v0.8.0,
//! v0.8.2 and 1.9.2) are reproduced word for word; `tests/fidelity.rs` pins them.
//! Where it gives none, the wording is the simulation's own: the `clap` message for an
//! empty `--image`, an empty or path-separator or trailing-hyphen name, `cp` of a guest
//! path with `.`/`..` or of a missing file, the 1.0.0+ output-cap error, `pack` write
//! failures, the tail of the registry-without-network message after "can never succeed",
//! the `config operation failed: start machine:` prefix of both taken-port errors, the
//! console log's lines, busybox's messages (`mkdir`, `rm`, `grep`, `sh: can't create`), the
//! `httpd` answers' headers, the `.invalid`/198.18.0.0/15 resolution rules, and the fork
//! texts marked as the simulation's above (exec into a frozen golden, a broken clone, the
//! `-e` format and newline errors, the prefix-less `start` refusal, the cascade's output,
//! which is each machine's `delete -f` lines, clones first).
//!
//! ```
//! use smolvm_harness::sim::SimulatedRunner;
//! use smolvm_harness::runner::{Invocation, Runner};
//!
//! let runner = SimulatedRunner::newest();
//! let call = |args: &[&str]| {
//!     runner.run(&Invocation {
//!         program: "smolvm".into(),
//!         args: args.iter().map(|s| s.to_string()).collect(),
//!         env: Vec::new(),
//!         timeout: None,
//!     })
//! };
//! call(&["machine", "create", "--name", "web", "--image", "alpine", "--net"]).unwrap();
//! call(&["machine", "start", "--name", "web"]).unwrap();
//! let out = call(&["machine", "exec", "--name", "web", "--", "echo", "hi"]).unwrap();
//! assert_eq!((out.code, out.stdout), (Some(0), b"hi\n".to_vec()));
//! assert_eq!(runner.machine_names(), ["web"]);
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

mod apply;
mod fake;
mod grammar;
mod guest;
mod net;
mod runner;
#[cfg(feature = "remote")]
mod serve;
mod state;

pub use fake::{
    default_fake_state_dir, fake_cli_main, read_fake_state, FAIL_ENV, HANG_ENV, LATENCY_ENV,
    LOG_ENV, STATE_ENV, VERSION_ENV,
};
pub use runner::SimulatedRunner;
#[cfg(feature = "remote")]
pub use serve::SERVE_TIMEOUT_ENV;
pub use state::{SimMachine, SimMount, SimSecretRef, SimState};

use apply::{apply, Ctx, Step};
use grammar::{Command, Features};
use guest::{Effect, GuestEnd};
use net::HostNet;
use state::State;

/// The subcommand keys the knobs (`fail`, `latency`, `hang`) accept.
pub const KNOB_KEYS: &[&str] = &[
    "version", "pack", "create", "start", "stop", "delete", "exec", "cp", "ls", "status",
    "data-dir", "fork",
];

/// smolvm's per-stream cap on non-streaming exec output (`MAX_EXEC_OUTPUT`, 11 MiB).
const MAX_EXEC_OUTPUT: usize = 11 * 1024 * 1024;

/// What one simulated smolvm process printed and how it exited.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct SimOutput {
    pub(crate) code: i32,
    pub(crate) stdout: Vec<u8>,
    pub(crate) stderr: Vec<u8>,
}

/// Failure injection, by subcommand key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Knobs {
    pub(crate) fail: BTreeSet<String>,
    pub(crate) latency: BTreeMap<String, Duration>,
    pub(crate) hang: BTreeSet<String>,
}

/// Where the state lives: a mutex in-process, a locked file for the fake.
pub(crate) trait Backend {
    /// Apply `f` to the state with exclusive access and persist what it changed; when the
    /// step is final, log its exit code before giving up the access.
    fn transact(&self, f: &mut dyn FnMut(&mut State) -> Step) -> Result<Step, String>;
    /// Log a finished exec, whose code is known only after the guest ran outside the lock.
    fn log_exec(&self, code: i32, machines: usize);
    /// Apply a running guest's change to the state with exclusive access, without logging.
    fn effect(&self, f: &mut dyn FnMut(&mut State)) -> Result<(), String>;
}

/// One invocation, as the driver needs it.
pub(crate) struct Call<'a> {
    pub(crate) args: &'a [String],
    pub(crate) features: Features,
    pub(crate) knobs: &'a Knobs,
    /// smolvm's own environment (for `-e KEY`).
    pub(crate) lookup_env: &'a dyn Fn(&str) -> Option<String>,
    /// The answer to delete's prompt; asked only when a delete without `-f` needs it.
    pub(crate) confirm_delete: &'a dyn Fn() -> bool,
    /// The host-side limit: past it, the process would have been killed.
    pub(crate) host_deadline: Option<Instant>,
    /// `hang` sleeps forever (the fake) instead of until the host deadline (in-process).
    pub(crate) hang_forever: bool,
    /// Where machines' data directories are made.
    pub(crate) data_root: &'a Path,
    /// Who serves published ports.
    pub(crate) net: &'a dyn HostNet,
}

/// How an invocation ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    Exit(SimOutput),
    /// Killed at the host deadline, with what it had printed by then.
    HostTimeout {
        stdout: Vec<u8>,
        stderr: Vec<u8>,
    },
}

fn runtime_error(msg: &str) -> SimOutput {
    SimOutput {
        code: 1,
        stdout: Vec::new(),
        stderr: format!("Error: {msg}\n").into_bytes(),
    }
}

/// Sleep `d`, or until `deadline` if that comes first; false if the deadline cut it short.
fn sleep_within(d: Duration, deadline: Option<Instant>) -> bool {
    let now = Instant::now();
    match deadline {
        Some(dl) if now.checked_add(d).is_none_or(|end| end >= dl) => {
            thread::sleep(dl.saturating_duration_since(now));
            false
        }
        _ => {
            thread::sleep(d);
            true
        }
    }
}

fn entropy() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ (u64::from(std::process::id()) << 32)
}

fn finish(backend: &dyn Backend, out: SimOutput) -> Result<Outcome, String> {
    match backend.transact(&mut |_| Step::Done(out.clone()))? {
        Step::Done(out) => Ok(Outcome::Exit(out)),
        Step::Guest(_) => Err("internal error: a finished call asked for a guest".into()),
    }
}

/// Apply smolvm's output cap to a non-streaming exec (§4).
fn cap_output(out: SimOutput, stream: bool, f: Features) -> SimOutput {
    if stream || (out.stdout.len() <= MAX_EXEC_OUTPUT && out.stderr.len() <= MAX_EXEC_OUTPUT) {
        return out;
    }
    if f.v1() {
        return runtime_error(&format!(
            "agent operation failed: vm exec: command output exceeded {MAX_EXEC_OUTPUT} bytes \
             (stdout: {} bytes, stderr: {} bytes). Use streaming exec (--stream) for large \
             output",
            out.stdout.len(),
            out.stderr.len()
        ));
    }
    let mut out = out;
    out.stdout.truncate(MAX_EXEC_OUTPUT);
    out.stderr.truncate(MAX_EXEC_OUTPUT);
    out
}

/// Run one invocation: parse, knobs, apply under the backend's lock, then the guest (if
/// any) outside it.
pub(crate) fn drive(call: &Call<'_>, backend: &dyn Backend) -> Result<Outcome, String> {
    let f = call.features;
    let cmd = match grammar::parse(call.args, f) {
        Ok(cmd) => cmd,
        Err(usage) => return finish(backend, usage),
    };
    if let Some(key) = cmd.key() {
        if let Some(d) = call.knobs.latency.get(key) {
            if !sleep_within(*d, call.host_deadline) {
                return Ok(Outcome::HostTimeout {
                    stdout: Vec::new(),
                    stderr: Vec::new(),
                });
            }
        }
        if call.knobs.hang.contains(key) {
            if call.hang_forever {
                loop {
                    thread::sleep(Duration::from_secs(3600));
                }
            }
            if let Some(deadline) = call.host_deadline {
                thread::sleep(deadline.saturating_duration_since(Instant::now()));
            }
            return Ok(Outcome::HostTimeout {
                stdout: Vec::new(),
                stderr: Vec::new(),
            });
        }
        if call.knobs.fail.contains(key) {
            let msg = format!("agent operation failed: {key}: injected failure");
            return finish(backend, runtime_error(&msg));
        }
    }
    let delete_confirmed = matches!(
        cmd,
        Command::Delete {
            force: false,
            cascade: false,
            ..
        }
    ) && (call.confirm_delete)();
    let ctx = Ctx {
        features: f,
        now_secs: apply::now_secs(),
        lookup_env: call.lookup_env,
        delete_confirmed,
        entropy: entropy(),
        data_root: call.data_root,
        net: call.net,
    };
    match backend.transact(&mut |state| apply(&cmd, state, &ctx))? {
        Step::Done(out) => Ok(Outcome::Exit(out)),
        Step::Guest(job) => {
            let host = |effect: &Effect| -> Result<(), String> {
                let mut result = Ok(());
                backend.effect(&mut |state| {
                    result = apply::guest_effect(state, &ctx, &job.machine, job.boot, effect);
                })?;
                result
            };
            guest_end(
                guest::run(&job, call.host_deadline, &host),
                &job,
                f,
                backend,
            )
        }
    }
}

fn guest_end(
    end: GuestEnd,
    job: &guest::GuestJob,
    f: Features,
    backend: &dyn Backend,
) -> Result<Outcome, String> {
    match end {
        GuestEnd::Exited(out) => {
            let out = cap_output(out, job.stream, f);
            backend.log_exec(out.code, job.machines);
            Ok(Outcome::Exit(out))
        }
        GuestEnd::HostTimeout { stdout, stderr } => Ok(Outcome::HostTimeout { stdout, stderr }),
    }
}

/// Check knob keys; the message lists the valid ones.
pub(crate) fn check_knob_key(key: &str) -> Result<(), String> {
    if KNOB_KEYS.contains(&key) {
        Ok(())
    } else {
        Err(format!(
            "unknown subcommand key {key:?} (known: {})",
            KNOB_KEYS.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Version;

    #[test]
    fn output_cap_truncates_before_1_0_0_and_fails_after() {
        let big = SimOutput {
            code: 0,
            stdout: vec![0; MAX_EXEC_OUTPUT + 1],
            stderr: Vec::new(),
        };
        let old = cap_output(big.clone(), false, Features::new(Version::new(0, 8, 0)));
        assert_eq!((old.code, old.stdout.len()), (0, MAX_EXEC_OUTPUT));
        let new = cap_output(big.clone(), false, Features::new(Version::new(1, 0, 0)));
        assert_eq!(new.code, 1);
        assert!(new.stdout.is_empty());
        assert!(String::from_utf8_lossy(&new.stderr).starts_with("Error: "));
        let streamed = cap_output(big, true, Features::new(Version::new(1, 9, 2)));
        assert_eq!(streamed.stdout.len(), MAX_EXEC_OUTPUT + 1);
    }

    #[test]
    fn sleep_within_stops_at_deadline() {
        let start = Instant::now();
        assert!(!sleep_within(
            Duration::from_secs(10),
            Some(start + Duration::from_millis(30))
        ));
        assert!(start.elapsed() < Duration::from_secs(2));
        assert!(sleep_within(Duration::from_millis(1), None));
    }

    #[test]
    fn knob_keys_are_checked() {
        assert!(check_knob_key("exec").is_ok());
        assert!(check_knob_key("run")
            .unwrap_err()
            .contains("known: version, pack"));
    }
}
