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
