//! Without root, or as root without one capability (dropped from the bounding set with
//! setpriv), `fault apply` and `fault stop` exit 1 naming what is missing and what needs it,
//! before anything is touched; run as root they go on as usual. Run one at a time
//! (`--test-threads=1`); each test leaves nothing behind.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output};

use fault_tests::{
    anchor, assert_no_leftovers, fault_bin, fault_ok, require_root, write_policy, Cgroup,
    FaultApply, Netns, PolicyFile, STATE_DIR,
};

/// `fault ARGS` through setpriv with `how` (setpriv's options).
fn fault_with(how: &[&str], args: &[&str]) -> Output {
    Command::new("setpriv")
        .args(how)
        .arg(fault_bin())
        .args(args)
        .output()
        .expect("run setpriv")
}

const NOBODY: &[&str] = &[
    "--reuid=65534",
    "--regid=65534",
    "--clear-groups",
    "--inh-caps=-all",
];

fn policy(name: &str, cgroup: &Cgroup, body: &str) -> PolicyFile {
    let file = write_policy(&format!(
        "apiVersion: fault/v1\nkind: FaultPolicy\nmetadata:\n  name: {name}\nspec:\n  \
         duration: 60s\n  targets:\n    - cgroup: {}\n{body}",
        cgroup.path().display()
    ));
    // Readable by the unprivileged user too, so that what refuses it is the capability.
    std::fs::set_permissions(file.path(), std::fs::Permissions::from_mode(0o644))
        .expect("chmod the policy");
    file
}

const NETWORK: &str = "  network:\n    - direction: egress\n      drop: {probability: 10%}\n";
const CLOCK: &str = "  clock:\n    - name: ahead\n      offset: 5s\n";

#[track_caller]
fn assert_refused(out: &Output, names: &[&str], what: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{what}: exit 1 expected:\n{err}"
    );
    for n in names {
        assert!(err.contains(n), "{what}: the refusal names {n}:\n{err}");
    }
}

fn no_record(name: &str) -> bool {
    !Path::new(STATE_DIR).join(format!("{name}.json")).exists()
}

#[test]
fn each_missing_capability_is_named_and_nothing_is_applied() {
    require_root();
    {
        let ns = Netns::new("privs");
        let cgroup = Cgroup::new("privs");
        let _anchor = anchor(&cgroup, &ns);
        let net = policy("privs-net", &cgroup, NETWORK);
        let clock = policy("privs-clock", &cgroup, CLOCK);
        let cases = [
            (
                "net_admin",
                &net,
                "privs-net",
                "CAP_NET_ADMIN",
                "attaching programs",
            ),
            ("bpf", &net, "privs-net", "CAP_BPF", "eBPF programs"),
            (
                "sys_admin",
                &net,
                "privs-net",
                "CAP_SYS_ADMIN",
                "network namespaces",
            ),
            (
                "sys_ptrace",
                &clock,
                "privs-clock",
                "CAP_SYS_PTRACE",
                "ptrace",
            ),
            (
                "kill",
                &clock,
                "privs-clock",
                "CAP_KILL",
                "stopping and continuing",
            ),
        ];
        for (cap, file, name, named, why) in cases {
            let drop = format!("--bounding-set=-{cap}");
            let path = file.path().to_str().unwrap();
            let out = fault_with(&[&drop, "--inh-caps=-all"], &["apply", path]);
            assert_refused(&out, &[named, why], &format!("without {named}"));
            assert!(no_record(name), "without {named}: a record was written");
        }
        // As nobody: every capability the policy needs is named, and the files of root.
        let out = fault_with(NOBODY, &["apply", net.path().to_str().unwrap()]);
        assert_refused(
            &out,
            &["CAP_BPF", "CAP_NET_ADMIN", "CAP_DAC_OVERRIDE"],
            "as nobody",
        );
        // The same policy applies as root.
        let mut apply = FaultApply::start(net.path(), "privs-net");
        apply.wait_ready();
        drop(apply);
    }
    assert_no_leftovers();
}

#[test]
fn an_unprivileged_stop_is_refused_and_the_run_goes_on() {
    require_root();
    {
        let ns = Netns::new("privstop");
        let cgroup = Cgroup::new("privstop");
        let _anchor = anchor(&cgroup, &ns);
        let file = policy("privs-stop", &cgroup, NETWORK);
        let mut apply = FaultApply::start(file.path(), "privs-stop");
        apply.wait_ready();
        let out = fault_with(NOBODY, &["stop", "privs-stop"]);
        assert_refused(
            &out,
            &["CAP_KILL", "signalling the run's loader"],
            "stop as nobody",
        );
        assert!(apply.try_wait().is_none(), "the run goes on");
        assert!(!no_record("privs-stop"), "its record stays");
        fault_ok(["stop", "privs-stop"]);
        drop(apply);
    }
    assert_no_leftovers();
}

/// Mode (permission bits) and owner of `path`.
fn mode_of(path: &Path) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::metadata(path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display()));
    (m.mode() & 0o7777, m.uid())
}

/// What a run writes (its record, its event log, its pins) is root's alone: directories
/// 0700, files 0600, whatever they were before and whatever the umask.
#[test]
fn a_runs_records_and_pins_are_roots_alone() {
    require_root();
    {
        let ns = Netns::new("privmode");
        let cgroup = Cgroup::new("privmode");
        let _anchor = anchor(&cgroup, &ns);
        // An older version left the directory open to all: the run tightens it.
        std::fs::create_dir_all(STATE_DIR).unwrap();
        std::fs::set_permissions(STATE_DIR, std::fs::Permissions::from_mode(0o755)).unwrap();
        let file = policy("privs-mode", &cgroup, &format!("{NETWORK}{CLOCK}"));
        let mut apply = FaultApply::start(file.path(), "privs-mode");
        apply.wait_ready();
        let run = Path::new(STATE_DIR).join("privs-mode");
        let pins = Path::new("/sys/fs/bpf/fault");
        let mut cases = vec![
            (Path::new(STATE_DIR).to_path_buf(), 0o700),
            (Path::new(STATE_DIR).join("privs-mode.json"), 0o600),
            (run.clone(), 0o700),
            (run.join("events.jsonl"), 0o600),
            (pins.to_path_buf(), 0o700),
            (pins.join("privs-mode"), 0o700),
        ];
        let pinned = std::fs::read_dir(pins.join("privs-mode")).expect("the run's pins");
        cases.extend(pinned.flatten().map(|e| (e.path(), 0o600)));
        assert!(cases.len() > 7, "maps are pinned: {cases:?}");
        for (path, mode) in cases {
            assert_eq!(
                mode_of(&path),
                (mode, 0),
                "{}: mode {mode:o}, owned by root",
                path.display()
            );
        }
        // Nobody can read the record.
        let state = Path::new(STATE_DIR).join("privs-mode.json");
        let out = Command::new("setpriv")
            .args(NOBODY)
            .arg("cat")
            .arg(&state)
            .output()
            .expect("run setpriv");
        assert!(!out.status.success(), "nobody read {}", state.display());
        drop(apply);
    }
    assert_no_leftovers();
}

/// A name that would leave /run/fault or the pin directory, or is too long for one file
/// name, is refused with exit 2, in a policy and on the command line.
#[test]
fn a_name_cannot_escape_fault_directories() {
    let long = "a".repeat(201);
    for name in ["../x", "/etc", "a/b", "\"a\\0b\"", "..", long.as_str()] {
        let file = write_policy(&format!(
            "apiVersion: fault/v1\nkind: FaultPolicy\nmetadata:\n  name: {name}\nspec:\n  \
             duration: 60s\n  targets:\n    - cgroup: /x\n{NETWORK}"
        ));
        let out = Command::new(fault_bin())
            .args(["check", file.path().to_str().unwrap()])
            .output()
            .expect("run fault check");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "name {name}: {err}");
        assert!(err.contains("metadata.name"), "name {name}: {err}");
    }
    for name in ["../x", "..", "/etc/passwd", "a\u{1}b", long.as_str()] {
        for cmd in ["stop", "logs"] {
            let out = Command::new(fault_bin())
                .args([cmd, name])
                .output()
                .expect("run fault");
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "fault {cmd} {name:?}: {err}");
        }
    }
}
