//! Blast-radius guards and damaged records: targets that reach the whole host (the cgroup2
//! root, pid 1, a kernel thread, fault's own cgroup and its ancestors, a cgroup with most of
//! the host's processes) are refused with exit 2 unless the policy says
//! `allow_host_wide: true`; an exited process is refused either way. Every apply here is a
//! `--dry-run`, which runs exactly the checks `fault apply` runs and attaches nothing, so
//! the overrides prove the guards let the target through without faulting the host.

use std::{
    path::Path,
    process::{Command, Output, Stdio},
    time::Duration,
};

use fault_tests::{
    assert_no_leftovers, cgroup2_mount, enter_cgroup, fault, fault_bin, require_root, spawn_in,
    write_policy, Cgroup,
};

/// A policy on `target` (a YAML flow mapping), host-wide targets allowed or not.
fn policy(name: &str, target: &str, allow: bool) -> String {
    format!(
        "apiVersion: fault/v1\nkind: FaultPolicy\nmetadata: {{name: {name}}}\nspec:\n  \
         duration: 1m\n  allow_host_wide: {allow}\n  targets: [{target}]\n  network: \
         [{{direction: egress, match: {{cidrs: [203.0.113.0/24]}}, drop: {{probability: 1%}}}}]\n"
    )
}

/// `fault apply --dry-run` of `yaml`, run from inside `from` (a cgroup) if given.
fn dry_run(yaml: &str, from: Option<&Path>) -> Output {
    let file = write_policy(yaml);
    let mut cmd = Command::new(fault_bin());
    cmd.args(["apply", "--dry-run"])
        .arg(file.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(cg) = from {
        enter_cgroup(&mut cmd, cg);
    }
    spawn_in(None, None, cmd).wait_output(Duration::from_secs(60))
}

fn said(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Refused with exit 2, naming `why` and the override; then let through with it.
fn guarded(target: &str, why: &str, from: Option<&Path>) {
    let out = dry_run(&policy("t-guard", target, false), from);
    let text = said(&out);
    assert_eq!(out.status.code(), Some(2), "{target} refused: {text}");
    assert!(
        text.contains(why) && text.contains("allow_host_wide: true"),
        "{target}: the refusal says {why:?} and how to override: {text}"
    );
    let out = dry_run(&policy("t-guard", target, true), from);
    assert!(out.status.success(), "{target} allowed: {}", said(&out));
}

#[test]
fn host_wide_targets_are_refused_unless_the_policy_allows_them() {
    require_root();
    {
        let mount = cgroup2_mount();
        guarded("{cgroup: .}", "is the cgroup2 root", None);
        guarded(
            &format!("{{cgroup: {}}}", mount.display()),
            "is the cgroup2 root",
            None,
        );
        guarded("{pid: 1}", "the host's init", None);
        guarded("{pid: 2}", "kernel thread", None);
        // fault run from inside a test cgroup, aimed at it and at its parent.
        let own = Cgroup::new("guard-own");
        guarded(
            &format!("{{cgroup: {}}}", own.path().display()),
            "is fault's own cgroup",
            Some(own.path()),
        );
        let up = Cgroup::new("guard-up");
        let below = up.path().join("fault");
        std::fs::create_dir(&below).expect("a child cgroup");
        guarded(
            &format!("{{cgroup: {}}}", up.path().display()),
            "holds fault's own cgroup",
            Some(&below),
        );
        std::fs::remove_dir(&below).expect("remove the child cgroup");
        // A sibling of fault's own cgroup is fine without the override.
        let out = dry_run(
            &policy(
                "t-guard",
                &format!("{{cgroup: {}}}", up.path().display()),
                false,
            ),
            Some(own.path()),
        );
        assert!(out.status.success(), "{}", said(&out));
    }
    assert_no_leftovers();
}

#[test]
fn a_cgroup_with_most_of_the_hosts_processes_is_host_wide() {
    require_root();
    {
        let host = std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
            .count();
        let crowd = Cgroup::new("guard-crowd");
        let mut sleepers = Vec::new();
        for _ in 0..2 * host.max(20) {
            let mut sleep = Command::new("sleep");
            sleep.arg("120");
            sleepers.push(spawn_in(Some(&crowd), None, sleep));
        }
        guarded(
            &format!("{{cgroup: {}}}", crowd.path().display()),
            "of the host's",
            None,
        );
        drop(sleepers);
    }
    assert_no_leftovers();
}

#[test]
fn an_exited_process_is_refused_even_when_host_wide_targets_are_allowed() {
    require_root();
    // A child that exited and is not reaped yet: a zombie.
    let mut child = Command::new("true").spawn().expect("spawn true");
    let pid = child.id();
    let stat = || std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !stat().contains(") Z ") {
        assert!(
            std::time::Instant::now() < deadline,
            "no zombie: {}",
            stat()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    for allow in [false, true] {
        let out = dry_run(&policy("t-zombie", &format!("{{pid: {pid}}}"), allow), None);
        let text = said(&out);
        assert_eq!(out.status.code(), Some(2), "{text}");
        assert!(text.contains("has exited"), "{text}");
    }
    child.wait().expect("reap the zombie");
    assert_no_leftovers();
}

#[test]
fn a_damaged_record_hides_no_other_run_and_stop_removes_it() {
    require_root();
    let path = Path::new("/run/fault/t-damaged.json");
    std::fs::create_dir_all("/run/fault").unwrap();
    std::fs::write(path, b"{\"name\": \"t-damaged\", \"pid\": ").unwrap();
    let status = fault(["status"]);
    let text = said(&status);
    assert!(status.status.success(), "status works past it: {text}");
    assert!(
        text.contains("t-damaged") && text.contains("fault stop t-damaged"),
        "{text}"
    );
    let stop = fault(["stop", "t-damaged"]);
    assert!(stop.status.success(), "{}", said(&stop));
    assert!(!path.exists(), "the damaged record is removed");
    // Names that are no policy's are usage errors, not a quiet success.
    for name in ["..", "-", "a/b"] {
        let out = fault(["stop", name]);
        assert_eq!(
            out.status.code(),
            Some(2),
            "fault stop {name}: {}",
            said(&out)
        );
    }
    let _ = std::fs::remove_dir("/run/fault");
    assert_no_leftovers();
}
