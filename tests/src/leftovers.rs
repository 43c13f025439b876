//! What a test (or fault itself) may have left behind on the host.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::cgroup::CGROUP_PARENT;
use crate::container::CONTAINER_PREFIX;
use crate::cri::{our_pod_cgroups, our_processes, BRIDGE, CNI_CACHE, ROOT_DIR, RUN_DIR};
use crate::netns::NETNS_PREFIX;
use crate::{cgroup2_mount, STATE_DIR};

/// fault's pins live under this bpffs directory.
const PIN_DIR: &str = "/sys/fs/bpf/fault";
/// fault's eBPF programs are all named with this prefix.
const PROG_PREFIX: &str = "fault_";

/// Everything of ours still present: test namespaces, containers and cgroups, the private
/// containerd's process, directories, pod namespaces, bridge and pod cgroups, the private
/// dockerd's processes, directories, socket and container cgroups, fault's pins and state
/// files, and BPF links or programs named `fault_*`. Empty means clean. A check that
/// cannot run (bpftool missing) is itself reported.
pub fn leftovers() -> Vec<String> {
    let mut found = Vec::new();
    for name in dir_names(Path::new("/run/netns")) {
        // cni-<uuid> are containerd's (ours, as no other containerd runs on a test machine).
        if name.starts_with(NETNS_PREFIX) || name.starts_with("cni-") {
            found.push(format!("network namespace {name}"));
        }
    }
    found.extend(containerd());
    found.extend(crate::docker::leftovers());
    walk(Path::new(PIN_DIR), &mut |p| {
        found.push(format!("bpffs pin {}", p.display()))
    });
    walk(Path::new(STATE_DIR), &mut |p| {
        found.push(format!("state file {}", p.display()))
    });
    let test_cgroups = cgroup2_mount().join(CGROUP_PARENT);
    for name in dir_names(&test_cgroups) {
        if test_cgroups.join(&name).is_dir() {
            found.push(format!("cgroup {}", test_cgroups.join(name).display()));
        }
    }
    found.extend(containers());
    found.extend(bpf_objects());
    found
}

/// Panics listing [`leftovers`]. Waits up to 2 s first: the kernel frees programs and links
/// of an exited process asynchronously.
pub fn assert_no_leftovers() {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let found = leftovers();
        if found.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            panic!("left behind:\n  {}", found.join("\n  "));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn dir_names(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Calls `f` on every file and directory below `dir` (not `dir` itself).
fn walk(dir: &Path, f: &mut dyn FnMut(&Path)) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        f(&path);
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            walk(&path, f);
        }
    }
}

/// What [`crate::Containerd`] leaves if its drop did not run or failed.
fn containerd() -> Vec<String> {
    let mut found: Vec<String> = our_processes()
        .into_iter()
        .map(|(pid, cmdline)| format!("process {pid} of the test containerd ({cmdline})"))
        .collect();
    for dir in [RUN_DIR, ROOT_DIR] {
        if Path::new(dir).exists() {
            found.push(format!("test containerd directory {dir}"));
        }
    }
    if Path::new("/sys/class/net").join(BRIDGE).exists() {
        found.push(format!("bridge {BRIDGE}"));
    }
    // Named after the network: fault-cni, and containerd's own loopback.
    for name in dir_names(&Path::new(CNI_CACHE).join("results")) {
        if name.starts_with("fault-cni-") || name.starts_with("cni-loopback-") {
            found.push(format!("CNI result {CNI_CACHE}/results/{name}"));
        }
    }
    for dir in our_pod_cgroups() {
        found.push(format!("pod cgroup {}", dir.display()));
    }
    found
}

fn containers() -> Vec<String> {
    let filter = format!("name=^{CONTAINER_PREFIX}");
    // No podman, no containers of ours.
    let Ok(out) = Command::new("podman")
        .args(["ps", "-a", "--filter", &filter, "--format", "{{.Names}}"])
        .output()
    else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|name| format!("container {name}"))
        .collect()
}

fn bpftool_json(what: &str) -> Result<Vec<serde_json::Value>, String> {
    let out = Command::new("bpftool")
        .args(["-j", what, "list"])
        .output()
        .map_err(|e| format!("cannot check BPF {what}s: bpftool: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cannot check BPF {what}s: bpftool failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    // bpftool prints nothing at all (not `[]`) on some versions when the list is empty.
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("cannot check BPF {what}s: bpftool printed invalid JSON: {e}"))
}

/// Links whose program is `fault_*`, and `fault_*` programs still loaded without a link (held
/// by a pin, a netlink tc filter or a live process).
fn bpf_objects() -> Vec<String> {
    let progs = match bpftool_json("prog") {
        Ok(p) => p,
        Err(e) => return vec![e],
    };
    let ours: HashMap<u64, &str> = progs
        .iter()
        .filter_map(|p| Some((p["id"].as_u64()?, p["name"].as_str()?)))
        .filter(|(_, name)| name.starts_with(PROG_PREFIX))
        .collect();
    let links = match bpftool_json("link") {
        Ok(l) => l,
        Err(e) => return vec![e],
    };
    let mut found = Vec::new();
    let mut linked = HashSet::new();
    for link in &links {
        let Some(prog_id) = link["prog_id"].as_u64() else {
            continue;
        };
        if let Some(name) = ours.get(&prog_id) {
            linked.insert(prog_id);
            found.push(format!(
                "BPF link {} ({}) of program {name}",
                link["id"],
                link["type"].as_str().unwrap_or("?")
            ));
        }
    }
    let mut unlinked: Vec<_> = ours.iter().filter(|(id, _)| !linked.contains(id)).collect();
    unlinked.sort();
    for (id, name) in unlinked {
        found.push(format!("BPF program {name} (id {id}) still loaded"));
    }
    found
}
