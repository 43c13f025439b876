//! fault's `container:` target on a real Docker Engine (Debian's dockerd 20.10, private to
//! each test: tests/src/docker.rs), as issue 12 asks: a container podman does not know is
//! found through the Engine API on /var/run/docker.sock by its name or its id, and resolves
//! to the cgroup that holds its process; a clock offset reaches that process and is undone;
//! a name docker does not know either is refused with exit 2, saying so.

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{SystemTime, UNIX_EPOCH};

use fault_tests::{
    assert_no_leftovers, fault, fault_bin, output_of, require_root, vdso_of, write_policy,
    DockerContainer, Dockerd, FaultApply,
};

/// The offset of the clock rule, in seconds.
const OFFSET_S: i64 = 5;

fn policy(name: &str, target: &str) -> String {
    format!(
        "apiVersion: fault/v1\nkind: FaultPolicy\nmetadata:\n  name: {name}\nspec:\n  \
         duration: 2m\n  targets: [{{container: {target}}}]\n  clock: [{{name: ahead, offset: \
         {OFFSET_S}s}}]\n"
    )
}

fn dry_run(file: &Path) -> Output {
    output_of(
        Command::new(fault_bin())
            .args(["apply", "--dry-run"])
            .arg(file),
    )
}

fn text_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// fault asks podman first: the docker path is the one taken only if podman has none.
#[track_caller]
fn assert_podman_has_none(name: &str) {
    let out = output_of(Command::new("podman").args(["container", "exists", name]));
    assert_eq!(
        out.status.code(),
        Some(1),
        "podman must have no container {name} (exit 1 of `podman container exists`): {}",
        text_of(&out)
    );
}

/// The container's processes, from its cgroup.
fn procs_of(c: &DockerContainer) -> Vec<u32> {
    let file = c.cgroup_dir().join("cgroup.procs");
    std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("reading {}: {e}", file.display()))
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn has_stub(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/maps")).is_ok_and(|m| m.contains("fault-clock"))
}

fn wall_s() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64
}

/// How far ahead of the host a process that `docker exec` starts in the container reads the
/// time (busybox `date +%s`): the bounds, in whole seconds, of `seen - host` over the exec.
fn exec_reads_ahead(c: &DockerContainer) -> (i64, i64) {
    let before = wall_s();
    let out = c.exec(&["date", "+%s"]);
    let after = wall_s();
    assert!(out.status.success(), "docker exec date: {}", text_of(&out));
    let seen: i64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("date printed {:?}: {e}", text_of(&out)));
    (seen - after, seen - before)
}

#[test]
fn a_docker_container_resolves_by_name_and_by_id_to_the_cgroup_of_its_process() {
    require_root();
    {
        let dockerd = Dockerd::start();
        let c = dockerd.run("resolve", &["sleep", "1000"]);
        let pid = c.pid();
        let cgroup = c.cgroup_dir();
        assert!(
            procs_of(&c).contains(&pid),
            "docker's pid {pid} is in {}: {:?}",
            cgroup.display(),
            procs_of(&c)
        );
        let cgroup_id = std::fs::metadata(&cgroup)
            .unwrap_or_else(|e| panic!("stat {}: {e}", cgroup.display()))
            .ino();
        for name in [c.name(), c.id(), &c.id()[..12]] {
            assert_podman_has_none(name);
            let file = write_policy(&policy("t-docker-resolve", name));
            let out = dry_run(file.path());
            let text = text_of(&out);
            assert!(out.status.success(), "{name}: {text}");
            let line = format!(
                "container {name} -> cgroup {} (id {cgroup_id})",
                cgroup.display()
            );
            assert!(text.contains(&line), "{name}: `{line}` in:\n{text}");
        }
    }
    assert_no_leftovers();
}

#[test]
fn a_clock_offset_reaches_a_docker_containers_process_and_is_undone() {
    require_root();
    {
        let dockerd = Dockerd::start();
        let c = dockerd.run("clock", &["sleep", "1000"]);
        let pid = c.pid();
        assert_podman_has_none(c.name());
        let pristine = vdso_of(std::process::id());
        assert!(vdso_of(pid) == pristine, "before apply: the pristine vDSO");
        let (lo, hi) = exec_reads_ahead(&c);
        assert!(lo <= 0 && hi >= 0, "before apply: true time, {lo}..{hi} s");

        let file = write_policy(&policy("t-docker-clock", c.name()));
        let mut apply = FaultApply::start_verbose(file.path(), "t-docker-clock");
        apply.wait_ready();
        let log = apply.log();
        assert!(log.contains(&format!("patched process {pid} ")), "{log}");
        assert!(
            vdso_of(pid) != pristine && has_stub(pid),
            "while applied: the container's process {pid} has a patched vDSO and fault's \
             stub\n{log}"
        );
        // The exec hold reaches what `docker exec` starts there, from its first read.
        let (lo, hi) = exec_reads_ahead(&c);
        assert!(
            lo <= OFFSET_S && hi >= OFFSET_S,
            "while applied: a process exec'd in the container reads {lo}..{hi} s ahead, \
             expected {OFFSET_S} s\n{}",
            apply.log()
        );

        let (exit, log) = apply.stop();
        assert!(exit.success(), "{log}");
        assert!(
            vdso_of(pid) == pristine,
            "after revert: the container's process {pid} has the pristine vDSO again\n{log}"
        );
        assert!(has_stub(pid), "the inert stub mapping stays, as documented");
        let (lo, hi) = exec_reads_ahead(&c);
        assert!(lo <= 0 && hi >= 0, "after revert: true time, {lo}..{hi} s");
        // Reverted, not ended: the container still runs its process.
        assert_eq!(c.pid(), pid, "the container's process survives the fault");
    }
    assert_no_leftovers();
}

#[test]
fn a_name_docker_does_not_know_either_is_refused_with_exit_2() {
    require_root();
    {
        let _dockerd = Dockerd::start();
        let name = format!("fault-d-nosuch-{}", std::process::id());
        assert_podman_has_none(&name);
        let file = write_policy(&policy("t-docker-nosuch", &name));
        for out in [
            dry_run(file.path()),
            fault([Path::new("apply"), file.path()]),
        ] {
            let text = String::from_utf8_lossy(&out.stderr).into_owned();
            assert_eq!(out.status.code(), Some(2), "{text}");
            for says in [
                format!("found no container {name}"),
                "podman has none by that name".into(),
                "docker has none by that name".into(),
            ] {
                assert!(text.contains(&says), "`{says}` in:\n{text}");
            }
        }
    }
    assert_no_leftovers();
}
