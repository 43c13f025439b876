//! The CRI harness itself works: a private containerd runs pods as the kubelet makes them,
//! their containers sit in the kubelet's cgroup layout, the pods reach each other over the
//! CNI bridge, a host process joins a container, and removing pods (or dropping containerd)
//! leaves the machine clean. No fault involved, so a failure here is the harness's.

use std::fs;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use fault_tests::{assert_no_leftovers, require_root, udp_at, Containerd, Pod};

/// The cgroup.procs of `dir`, as pids.
fn procs(dir: &Path) -> Vec<u32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_else(|e| panic!("reading {}/cgroup.procs: {e}", dir.display()))
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// The inode of a network namespace, from its file or /proc/PID/ns/net.
fn netns_inode(path: &Path) -> u64 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .ino()
}

/// Checks what a pod's container should look like on the host.
fn check_container(pod: &Pod, container: &str, id: &str) {
    let pid = pod.pid(container);
    let cgroup = pod.cgroup_dir(container);
    let expected_tail = Path::new("kubepods/besteffort")
        .join(format!("pod{}", pod.uid()))
        .join(id);
    assert!(
        cgroup.ends_with(&expected_tail),
        "container {container} in the kubelet's cgroupfs layout (…/{}): {}",
        expected_tail.display(),
        cgroup.display()
    );
    assert!(
        procs(&cgroup).contains(&pid),
        "pid {pid} of {container} is in {}",
        cgroup.display()
    );
    assert_eq!(
        netns_inode(Path::new(&format!("/proc/{pid}/ns/net"))),
        netns_inode(&pod.netns_path()),
        "{container} runs in the sandbox's network namespace"
    );
}

fn in_pod_subnet(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V4(v4) if v4.octets()[..3] == [10, 89, 0])
}

#[test]
fn two_pods_run_with_labels_cgroups_and_a_network_and_go_away_cleanly() {
    require_root();
    {
        let started = Instant::now();
        let containerd = Containerd::start();
        eprintln!("containerd started in {:?}", started.elapsed());
        assert_eq!(
            containerd.endpoint(),
            "unix:///run/fault-test-containerd/containerd.sock"
        );
        assert!(containerd.socket().exists());

        let started = Instant::now();
        let web = containerd.run_pod(
            "shop",
            "web-0",
            &[("app", "web"), ("tier", "front")],
            &["main", "sidecar"],
        );
        eprintln!(
            "pod shop/web-0 (2 containers) running in {:?}",
            started.elapsed()
        );
        let started = Instant::now();
        let db = containerd.run_pod("shop", "db-0", &[("app", "db")], &["main"]);
        eprintln!(
            "pod shop/db-0 (1 container) running in {:?}",
            started.elapsed()
        );

        // Labels as given, plus the kubelet's; selection by label as a pod target does it.
        let labels = web.labels();
        assert_eq!(
            labels.get("app").map(String::as_str),
            Some("web"),
            "{labels:?}"
        );
        assert_eq!(labels.get("tier").map(String::as_str), Some("front"));
        assert_eq!(
            labels
                .get("io.kubernetes.pod.namespace")
                .map(String::as_str),
            Some("shop")
        );
        assert_eq!(
            labels.get("io.kubernetes.pod.uid").map(String::as_str),
            Some(web.uid())
        );
        assert_eq!(
            containerd.sandboxes_labelled(&[("app", "web")]),
            [web.sandbox_id().to_string()]
        );
        assert_eq!(
            containerd.sandboxes_labelled(&[("app", "db")]),
            [db.sandbox_id().to_string()]
        );
        assert_eq!(
            containerd
                .sandboxes_labelled(&[("io.kubernetes.pod.namespace", "shop")])
                .len(),
            2
        );
        assert_ne!(web.uid(), db.uid(), "each pod has a fresh uid");

        // Each container's process in its own cgroup under the pod's.
        let web_ids = web.container_ids();
        assert_eq!(web_ids.len(), 2, "{web_ids:?}");
        check_container(&web, "main", &web_ids[0]);
        check_container(&web, "sidecar", &web_ids[1]);
        check_container(&db, "main", &db.container_ids()[0]);
        assert_ne!(web.cgroup_dir("main"), web.cgroup_dir("sidecar"));

        // Addresses on the bridge, and UDP across it both ways from inside the containers.
        let (web_ip, db_ip) = (web.ip(), db.ip());
        assert!(
            in_pod_subnet(web_ip) && in_pod_subnet(db_ip),
            "{web_ip} {db_ip}"
        );
        assert_ne!(web_ip, db_ip);
        let (sent, got) = udp_at(
            &web.place("main"),
            &db.place("main"),
            &format!("{db_ip}:7100"),
            200,
        );
        assert_eq!(sent["sent"], 200, "{sent}");
        assert_eq!(got["unique"], 200, "200 of 200 from web-0 to db-0: {got}");
        let (_, got) = udp_at(
            &db.place("main"),
            &web.place("sidecar"),
            &format!("{web_ip}:7101"),
            200,
        );
        assert_eq!(got["unique"], 200, "200 of 200 from db-0 to web-0: {got}");

        // A host process joined to a container: its cgroup and the pod's network namespace.
        let mut sleeper = Command::new("sleep");
        sleeper.arg("30");
        let joined = web.spawn("sidecar", sleeper);
        assert!(
            procs(&web.cgroup_dir("sidecar")).contains(&joined.pid()),
            "the spawned process is in the sidecar's cgroup"
        );
        assert_eq!(
            netns_inode(Path::new(&format!("/proc/{}/ns/net", joined.pid()))),
            netns_inode(&web.netns_path())
        );
        let out = web.run("main", Command::new("true"), Duration::from_secs(10));
        assert!(out.status.success(), "{out:?}");
        drop(joined);

        // Removing a pod takes its containers' and its own cgroups and its namespace.
        let cgroup = web.cgroup_dir("main");
        let pod_cgroup = cgroup.parent().expect("a pod cgroup").to_path_buf();
        let netns = web.netns_path();
        let started = Instant::now();
        web.remove();
        eprintln!("pod shop/web-0 removed in {:?}", started.elapsed());
        assert!(!cgroup.exists(), "{} removed", cgroup.display());
        assert!(!pod_cgroup.exists(), "{} removed", pod_cgroup.display());
        assert!(!netns.exists(), "{} removed", netns.display());
        assert!(containerd.sandboxes_labelled(&[("app", "web")]).is_empty());
        assert!(db.cgroup_dir("main").exists(), "the other pod is untouched");

        drop(db);
        let started = Instant::now();
        drop(containerd);
        eprintln!("containerd stopped in {:?}", started.elapsed());
    }
    assert_no_leftovers();
}

#[test]
fn dropping_containerd_takes_the_pods_it_still_runs() {
    require_root();
    {
        let containerd = Containerd::start();
        let pod = containerd.run_pod("shop", "cache-0", &[("app", "cache")], &["main"]);
        let cgroup = pod.cgroup_dir("main");
        let netns = pod.netns_path();
        // A host process still in the container's cgroup, outside its pid namespace, which
        // stopping the container does not kill: the harness still gets the cgroup removed.
        let mut sleeper = Command::new("sleep");
        sleeper.arg("60");
        let mut joined = pod.spawn("main", sleeper);
        // The pod outlives its containerd here: its own drop has nothing left to do.
        drop(containerd);
        assert!(!cgroup.exists(), "{} removed", cgroup.display());
        assert!(!netns.exists(), "{} removed", netns.display());
        assert!(
            joined.try_wait().is_some(),
            "the process left in the container's cgroup was ended with it"
        );
        drop(pod);
    }
    assert_no_leftovers();
}
