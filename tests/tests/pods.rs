//! Pod targets on a real containerd through its CRI, with pods made as the kubelet makes
//! them (tests/src/cri.rs): `pods: {labels}` faults exactly the pods it selects, in its
//! namespace, and not a neighbour; a selected pod deleted and created again, and a new pod
//! that matches, are faulted within a second, with nothing of the old one left; and the
//! agent runs the same from its directory.

use std::time::{Duration, Instant};

use fault_tests::{
    assert_no_leftovers, fault, fault_bin, fault_ok, require_root, udp_at, write_policy,
    Containerd, FaultApply, Pod,
};
use serde_json::Value;

fn policy(name: &str, target: &str) -> String {
    format!(
        "apiVersion: fault/v1\nkind: FaultPolicy\nmetadata:\n  name: {name}\nspec:\n  \
         duration: 2m\n  targets:\n    - {target}\n  network:\n    - direction: egress\n      \
         match: {{protocol: udp}}\n      drop: {{probability: 100%}}\n"
    )
}

/// Datagrams (of 40) that `from` gets through to `to`'s address, on `port`.
fn delivered(from: &Pod, to: &Pod, port: u16) -> u64 {
    let (_, got) = udp_at(
        &from.place("app"),
        &to.place("app"),
        &format!("{}:{port}", to.ip()),
        40,
    );
    got["received"].as_u64().unwrap_or(u64::MAX)
}

fn apply(cri: &Containerd, file: &std::path::Path, name: &str) -> FaultApply {
    let endpoint = cri.endpoint();
    let mut apply = FaultApply::start_env(
        [std::ffi::OsStr::new("apply"), file.as_os_str()],
        name,
        &[("FAULT_CRI_ENDPOINT", endpoint.as_str())],
    );
    apply.wait_ready();
    apply
}

#[test]
fn pods_selected_by_labels_are_faulted_and_their_neighbours_are_not() {
    require_root();
    {
        let cri = Containerd::start();
        let pg0 = cri.run_pod("db", "pg-0", &[("app", "pg")], &["app"]);
        let pg1 = cri.run_pod("db", "pg-1", &[("app", "pg")], &["app"]);
        let web = cri.run_pod("db", "web-0", &[("app", "web")], &["app"]);
        let elsewhere = cri.run_pod("other", "pg-0", &[("app", "pg")], &["app"]);
        let file = write_policy(&policy(
            "t-pods",
            "pods: {namespace: db, labels: {app: pg}}",
        ));
        let apply = apply(&cri, file.path(), "t-pods");
        let log = apply.log();
        assert!(log.contains("2 target cgroup(s)"), "{log}");
        let status: Value = serde_json::from_str(&fault_ok(["status", "--json"])).unwrap();
        let labels: Vec<&str> = status[0]["targets"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|t| t["label"].as_str())
            .collect();
        assert_eq!(labels, ["pod db/pg-0", "pod db/pg-1"], "{status:#}");

        assert_eq!(delivered(&pg0, &web, 7401), 0, "pg-0 is selected");
        assert_eq!(delivered(&pg1, &web, 7402), 0, "pg-1 is selected");
        assert_eq!(
            delivered(&web, &pg0, 7403),
            40,
            "web-0 is not (and egress only)"
        );
        assert_eq!(
            delivered(&elsewhere, &web, 7404),
            40,
            "another namespace's pg-0 is not"
        );
        drop(apply);
        assert_eq!(delivered(&pg0, &web, 7405), 40, "reverted");
        for p in [pg0, pg1, web, elsewhere] {
            p.remove();
        }
    }
    assert_no_leftovers();
}

/// Polls `fault status --json` until the run's targets are `want` (labels with the pod
/// uid each was found under: its cgroup names it), at most 10 s; how long that took.
fn targets_become(want: &[(&str, &str)]) -> Duration {
    let started = Instant::now();
    let mut last = Value::Null;
    while started.elapsed() < Duration::from_secs(10) {
        last = serde_json::from_str(&fault_ok(["status", "--json"])).unwrap();
        let have: Vec<(String, String)> = last[0]["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| std::path::Path::new(t["cgroup"].as_str().unwrap_or("")).exists())
            .map(|t| {
                (
                    t["label"].as_str().unwrap_or("").to_owned(),
                    t["cgroup"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect();
        let matches = have.len() == want.len()
            && want
                .iter()
                .all(|(l, uid)| have.iter().any(|(hl, cg)| hl == l && cg.contains(uid)));
        if matches {
            return started.elapsed();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the run's targets did not become {want:?}: {last:#}")
}

#[test]
fn a_recreated_pod_and_a_new_matching_pod_are_faulted_within_a_second() {
    require_root();
    {
        let cri = Containerd::start();
        let pg0 = cri.run_pod("db", "pg-0", &[("app", "pg")], &["app"]);
        let web = cri.run_pod("db", "web-0", &[("app", "web")], &["app"]);
        let file = write_policy(&policy(
            "t-pods-churn",
            "pods: {namespace: db, labels: {app: pg}}",
        ));
        let apply = apply(&cri, file.path(), "t-pods-churn");
        assert_eq!(delivered(&pg0, &web, 7411), 0);

        // Deleted and created again under its name, as a StatefulSet does: a new uid, so a
        // new pod cgroup and network namespace.
        let old_uid = pg0.uid().to_owned();
        let old_cgroup = pg0.cgroup_dir("app");
        pg0.remove();
        let pg0 = cri.run_pod("db", "pg-0", &[("app", "pg")], &["app"]);
        let took = targets_become(&[("pod db/pg-0", pg0.uid())]);
        eprintln!("a recreated pod became a target {took:?} after its containers ran");
        assert_ne!(pg0.uid(), old_uid);
        assert!(!old_cgroup.exists(), "the old pod's cgroup is gone");
        assert_eq!(
            delivered(&pg0, &web, 7412),
            0,
            "the recreated pg-0 is faulted"
        );

        // A new pod that matches (a Deployment's replacement, under a new name).
        let pg7 = cri.run_pod("db", "pg-7f9c", &[("app", "pg")], &["app"]);
        let took = targets_become(&[("pod db/pg-0", pg0.uid()), ("pod db/pg-7f9c", pg7.uid())]);
        eprintln!("a new matching pod became a target {took:?} after its containers ran");
        assert_eq!(delivered(&pg7, &web, 7413), 0, "the new pod is faulted");
        assert_eq!(delivered(&web, &pg7, 7414), 40, "web-0 still is not");
        let log = apply.log();
        assert!(log.contains("pod db/pg-7f9c started"), "{log}");
        drop(apply);
        for p in [pg0, pg7, web] {
            p.remove();
        }
    }
    assert_no_leftovers();
}

#[test]
fn the_agent_applies_a_pod_experiment_from_its_directory() {
    require_root();
    {
        let cri = Containerd::start();
        let pg0 = cri.run_pod("db", "pg-0", &[("app", "pg")], &["app"]);
        let web = cri.run_pod("db", "web-0", &[("app", "web")], &["app"]);
        let dir = tempfile::tempdir().unwrap();
        let text = policy(
            "t-pods-agent",
            "pod: {namespace: db, name: pg-0, container: app}",
        );
        std::fs::write(dir.path().join("pg.yaml"), &text).unwrap();
        let mut agent = std::process::Command::new(fault_bin())
            .args(["agent", "--dir"])
            .arg(dir.path())
            .env("FAULT_CRI_ENDPOINT", cri.endpoint())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let until = Instant::now() + Duration::from_secs(10);
        let mut active = false;
        while Instant::now() < until && !active {
            let shown = fault(["status", "--agent"]).stdout;
            active = String::from_utf8_lossy(&shown).contains(": active");
            std::thread::sleep(Duration::from_millis(20));
        }
        let delivered_then = delivered(&pg0, &web, 7421);
        // SAFETY: kill has no memory preconditions; the pid is our unreaped child's.
        unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
        let status = agent.wait().unwrap();
        assert!(active, "the agent never applied pg.yaml");
        assert_eq!(
            delivered_then, 0,
            "pg-0's container is faulted under the agent"
        );
        assert!(status.success(), "{status:?}");
        assert_eq!(delivered(&pg0, &web, 7422), 40, "and not after the agent");
        let _ = std::fs::remove_dir_all("/run/fault/.agent");
        let _ = std::fs::remove_dir_all("/run/fault/t-pods-agent");
        for p in [pg0, web] {
            p.remove();
        }
    }
    assert_no_leftovers();
}

fn dry_run(cri: &Containerd, file: &std::path::Path) -> std::process::Output {
    fault_tests::output_of(
        std::process::Command::new(fault_bin())
            .args(["apply", "--dry-run"])
            .arg(file)
            .env("FAULT_CRI_ENDPOINT", cri.endpoint()),
    )
}

#[test]
fn a_container_target_resolves_through_containerd_by_id_or_by_name() {
    require_root();
    {
        let cri = Containerd::start();
        let pod = cri.run_pod("db", "pg-0", &[("app", "pg")], &["app", "sidecar"]);
        let side = pod.cgroup_dir("sidecar").display().to_string();
        let id = pod.container_ids()[1].clone();
        for name in [id.as_str(), &id[..12], "sidecar"] {
            let file = write_policy(&policy("t-pods-ctr", &format!("container: {name}")));
            let out = dry_run(&cri, file.path());
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success() && text.contains(&side),
                "{name}: {text}"
            );
        }
        // `app` is one container's name here; ask by one no container has.
        let file = write_policy(&policy("t-pods-ctr", "container: nosuch"));
        let out = dry_run(&cri, file.path());
        let text = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(2), "{text}");
        assert!(text.contains("the CRI (containerd) has none"), "{text}");
        pod.remove();
    }
    assert_no_leftovers();
}

#[test]
fn a_loader_killed_while_it_faults_pods_ends_its_faults_within_a_second() {
    require_root();
    {
        let cri = Containerd::start();
        let pg0 = cri.run_pod("db", "pg-0", &[("app", "pg")], &["app"]);
        let web = cri.run_pod("db", "web-0", &[("app", "web")], &["app"]);
        let file = write_policy(&policy(
            "t-pods-kill",
            "pods: {namespace: db, labels: {app: pg}}",
        ));
        let apply = apply(&cri, file.path(), "t-pods-kill");
        assert_eq!(delivered(&pg0, &web, 7431), 0);
        // SAFETY: kill has no memory preconditions; the pid is the test's child.
        unsafe { libc::kill(apply.pid() as i32, libc::SIGKILL) };
        let killed = Instant::now();
        std::thread::sleep(Duration::from_millis(1100));
        let sent_at = killed.elapsed();
        let got = delivered(&pg0, &web, 7432);
        eprintln!("{got}/40 delivered, sent from {sent_at:?} after the SIGKILL");
        assert_eq!(got, 40, "the faults end within the heartbeat's second");
        let stopped = fault_ok(["stop", "--all"]);
        assert!(stopped.contains("stopped t-pods-kill"), "{stopped}");
        drop(apply);
        for p in [pg0, web] {
            p.remove();
        }
    }
    assert_no_leftovers();
}
