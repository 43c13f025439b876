//! Resolving a policy's targets (cgroup paths, containers, pids) to cgroup ids and network
//! namespaces.
//!
//! A target's traffic is recognised in the kernel by the cgroup id of its sockets: the inode
//! number of the cgroup2 directory. Descendant cgroups belong to the target too, so their ids
//! are collected as well. The programs are attached in every network namespace that a
//! target's processes use.

use std::{
    collections::BTreeMap,
    os::unix::fs::MetadataExt as _,
    path::{Component, Path, PathBuf},
    process::Command,
};

use serde::{Deserialize, Serialize};

use crate::{policy::TargetSpec, sys::mounts as sysfs};

/// A target that could not be resolved; `index` is its position in `spec.targets` (or in
/// the group `spec.groups.<group>` of an experiment).
#[derive(Debug, thiserror::Error)]
#[error("{}[{index}].{field}: {message}", match .group { Some(g) => format!("spec.groups.{g}"), None => "spec.targets".to_owned() })]
pub struct TargetError {
    /// The experiment group the target is in.
    pub group: Option<String>,
    pub index: usize,
    pub field: &'static str,
    pub message: String,
    /// The host lacks what resolving needs (a cgroup2 mount, any container engine), so the
    /// policy is not to blame.
    pub host: bool,
}

impl TargetError {
    pub fn in_group(self, group: &str) -> Self {
        TargetError {
            group: Some(group.to_owned()),
            ..self
        }
    }
}

/// A network namespace, named by a process inside it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Netns {
    /// Inode of the namespace (as `ls -L -i /proc/PID/ns/net` shows it).
    pub inode: u64,
    /// A process in it when it was resolved; `/proc/PID/ns/net` opens it.
    pub pid: u32,
}

impl Netns {
    /// A path that opens this namespace now: through the recorded pid if it is still in it,
    /// else through any process that is, else through a bind mount in /run/netns. `None`
    /// when nothing names it any more (it is gone, or will be with its last reference).
    pub fn locate(&self) -> Option<PathBuf> {
        let is_it = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.ino() == self.inode);
        let own = PathBuf::from(format!("/proc/{}/ns/net", self.pid));
        if is_it(&own) {
            return Some(own);
        }
        netns_paths().map(|(_, p)| p).find(|p| is_it(p))
    }

    /// Whether the namespace can still be reached.
    pub fn is_current(&self) -> bool {
        self.locate().is_some()
    }

    /// Every namespace that can be opened now, once each: those of processes and those bound
    /// in /run/netns.
    pub fn all() -> Vec<(Netns, PathBuf)> {
        let mut found: std::collections::BTreeMap<u64, (Netns, PathBuf)> = Default::default();
        for (pid, path) in netns_paths() {
            if let Ok(m) = std::fs::metadata(&path) {
                found.entry(m.ino()).or_insert((
                    Netns {
                        inode: m.ino(),
                        pid,
                    },
                    path,
                ));
            }
        }
        found.into_values().collect()
    }

    pub fn of_pid(pid: u32) -> std::io::Result<Self> {
        let inode = std::fs::metadata(format!("/proc/{pid}/ns/net"))?.ino();
        Ok(Self { inode, pid })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResolvedTarget {
    /// How the policy named it, for messages (`container pg-replica`).
    pub label: String,
    pub cgroup: PathBuf,
    pub cgroup_id: u64,
    /// The class its packets are looked up with: 0 for a policy's targets, the group's for
    /// an experiment's.
    #[serde(default)]
    pub class: u8,
    /// The container name it was found by: a container removed and started again under
    /// that name is looked up again (see `crate::churn`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Resolved {
    pub targets: Vec<ResolvedTarget>,
    /// Every cgroup id that counts as targeted: the targets and their descendants.
    pub cgroup_ids: Vec<u64>,
    pub netns: Vec<Netns>,
    /// Set when no process was found in any target, so fault attached in its own
    /// namespace: processes that join the cgroup there later are covered.
    pub empty: bool,
}

/// Paths that open a network namespace: `/proc/PID/ns/net` of every process (with its pid),
/// then the bind mounts in /run/netns (pid 0).
pub fn netns_paths() -> impl Iterator<Item = (u32, PathBuf)> {
    let procs = std::fs::read_dir("/proc").into_iter().flatten().flatten();
    let by_pid = procs.filter_map(|e| {
        let pid = e.file_name().to_string_lossy().parse::<u32>().ok()?;
        Some((pid, e.path().join("ns/net")))
    });
    let mounts = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten();
    by_pid.chain(mounts.map(|e| (0, e.path())))
}

pub fn resolve(targets: &[TargetSpec]) -> Result<Resolved, TargetError> {
    let mount = sysfs::cgroup2_mount().map_err(|e| TargetError {
        group: None,
        index: 0,
        field: "cgroup",
        message: format!("cannot find the cgroup2 mount: {e}"),
        host: true,
    })?;
    let mut out = Vec::new();
    let mut ids = Vec::new();
    let mut netns = BTreeMap::new();
    for (index, spec) in targets.iter().enumerate() {
        for t in resolve_one(&mount, index, spec)? {
            scan_one(&t.cgroup, &mut ids, &mut netns);
            out.push(t);
        }
    }
    ids.sort_unstable();
    ids.dedup();
    let empty = netns.is_empty();
    if empty {
        let own = Netns::of_pid(std::process::id()).map_err(|e| TargetError {
            group: None,
            index: 0,
            field: "cgroup",
            message: format!("cannot read our own network namespace: {e}"),
            host: true,
        })?;
        netns.insert(own.inode, own);
    }
    Ok(Resolved {
        targets: out,
        cgroup_ids: ids,
        netns: netns.into_values().collect(),
        empty,
    })
}

/// The error of target `index`'s `field`: `host` when the host, not the policy, lacks
/// what resolving needs.
fn failed_at(index: usize, field: &'static str, host: bool) -> impl Fn(String) -> TargetError {
    move |message| TargetError {
        group: None,
        index,
        field,
        message,
        host,
    }
}

/// One target as named in the policy: one cgroup, or for `pods:` one per pod found.
fn resolve_one(
    mount: &Path,
    index: usize,
    spec: &TargetSpec,
) -> Result<Vec<ResolvedTarget>, TargetError> {
    let (label, cgroup, container) = match spec {
        TargetSpec::Pod(sel) => {
            let field = if sel.name.is_some() { "pod" } else { "pods" };
            let found = pod_cgroups(mount, sel)
                .map_err(|(message, host)| failed_at(index, field, host)(message))?;
            let found = found
                .into_iter()
                .map(|(label, cgroup, cgroup_id)| ResolvedTarget {
                    label,
                    cgroup,
                    cgroup_id,
                    class: 0,
                    container: None,
                });
            return Ok(found.collect());
        }
        TargetSpec::Cgroup(path) => (
            format!("cgroup {}", path.display()),
            cgroup_dir(mount, path).map_err(failed_at(index, "cgroup", false))?,
            None,
        ),
        TargetSpec::Pid(pid) => (
            format!("pid {pid}"),
            pid_cgroup(mount, *pid).map_err(failed_at(index, "pid", false))?,
            None,
        ),
        TargetSpec::Container(name) => {
            let pid = container_pid(name)
                .map_err(|(message, host)| failed_at(index, "container", host)(message))?;
            let cg = pid_cgroup(mount, pid).map_err(failed_at(index, "container", false))?;
            (format!("container {name}"), cg, Some(name.clone()))
        }
    };
    let cgroup_id = inode(&cgroup).map_err(failed_at(index, "cgroup", false))?;
    Ok(vec![ResolvedTarget {
        label,
        cgroup,
        cgroup_id,
        class: 0,
        container,
    }])
}

/// A pod found: its label, its cgroup and the cgroup's id.
pub type PodCgroup = (String, PathBuf, u64);

/// The cgroups of the running pods `sel` names on this node: each pod's
/// own cgroup (the parent of its containers', as the kubelet lays them out), or the one
/// container's. None running is no error: on the other nodes of a fleet that is the rule.
pub fn pod_cgroups(
    mount: &Path,
    sel: &crate::cri::PodSelector,
) -> Result<Vec<PodCgroup>, (String, bool)> {
    let pods = crate::cri::find(sel).map_err(|e| (e.to_string(), e.is_host()))?;
    let mut out = Vec::new();
    for p in pods {
        let mut cgroups: Vec<PathBuf> = p
            .pids
            .iter()
            .filter_map(|pid| pid_cgroup(mount, *pid).ok())
            .collect();
        cgroups.sort();
        cgroups.dedup();
        let dir = match (&sel.container, cgroups.as_slice()) {
            (_, []) => continue, // its processes ended meanwhile
            (Some(_), [one, ..]) => one.clone(),
            (None, all) => match pod_dir(all, &p.uid) {
                Some(d) => d,
                None => {
                    return Err((
                        format!(
                            "{}: its containers' cgroups ({}) are not under one pod cgroup",
                            p.label,
                            all.iter()
                                .map(|c| c.display().to_string())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                        false,
                    ))
                }
            },
        };
        let id = inode(&dir).map_err(|m| (m, false))?;
        out.push((p.label, dir, id));
    }
    Ok(out)
}

/// The pod's cgroup: the one parent of all its containers' cgroups, whose name carries
/// the pod's uid (`pod<uid>` with cgroupfs, `…-pod<uid with _>.slice` with systemd).
fn pod_dir(containers: &[PathBuf], uid: &str) -> Option<PathBuf> {
    let parent = containers.first()?.parent()?.to_path_buf();
    let name = parent.file_name()?.to_string_lossy().into_owned();
    let named = name.contains(uid) || name.contains(&uid.replace('-', "_"));
    let shared = containers
        .iter()
        .all(|c| c.parent() == Some(parent.as_path()));
    (named && shared).then_some(parent)
}

/// Where a container target is now, looked up again by its name: its cgroup and that
/// cgroup's id. `Ok(None)` for a target that is no container.
pub fn relocate(t: &ResolvedTarget) -> Result<Option<(PathBuf, u64)>, String> {
    let Some(name) = &t.container else {
        return Ok(None);
    };
    let mount = sysfs::cgroup2_mount().map_err(|e| format!("no cgroup2 mount: {e}"))?;
    let pid = container_pid(name).map_err(|(message, _)| message)?;
    let cgroup = pid_cgroup(&mount, pid)?;
    let id = inode(&cgroup)?;
    Ok(Some((cgroup, id)))
}

/// The targets' cgroup ids (with descendants) and network namespaces as they are now:
/// processes come and go, and so do child cgroups.
pub fn scan(targets: &[ResolvedTarget]) -> (Vec<u64>, Vec<Netns>) {
    let mut ids = Vec::new();
    let mut netns = BTreeMap::new();
    for t in targets {
        scan_one(&t.cgroup, &mut ids, &mut netns);
    }
    ids.sort_unstable();
    ids.dedup();
    (ids, netns.into_values().collect())
}

/// Every cgroup id of the targets now (descendants included), with its target's class.
pub fn class_ids(targets: &[ResolvedTarget]) -> Vec<(u64, u8)> {
    let mut out: Vec<(u64, u8)> = targets
        .iter()
        .flat_map(|t| walk(&t.cgroup).into_iter().map(move |d| (d, t.class)))
        .filter_map(|(dir, class)| inode(&dir).ok().map(|id| (id, class)))
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// The class of the targets whose processes use each network namespace now, by inode.
pub fn netns_classes(targets: &[ResolvedTarget]) -> BTreeMap<u64, u8> {
    let mut out = BTreeMap::new();
    for t in targets {
        for pid in walk(&t.cgroup).iter().flat_map(|d| procs(d)) {
            if let Ok(ns) = Netns::of_pid(pid) {
                out.entry(ns.inode).or_insert(t.class);
            }
        }
    }
    out
}

/// Every process in the targets (and their descendant cgroups) now, sorted.
pub fn pids(targets: &[ResolvedTarget]) -> Vec<u32> {
    let mut out: Vec<u32> = targets
        .iter()
        .flat_map(|t| subtree_pids(&t.cgroup))
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// The processes in `cgroup` and its descendants.
pub fn subtree_pids(cgroup: &Path) -> Vec<u32> {
    walk(cgroup).iter().flat_map(|dir| procs(dir)).collect()
}

fn scan_one(cgroup: &Path, ids: &mut Vec<u64>, netns: &mut BTreeMap<u64, Netns>) {
    for dir in walk(cgroup) {
        if let Ok(id) = inode(&dir) {
            ids.push(id);
        }
        for pid in procs(&dir) {
            if let Ok(ns) = Netns::of_pid(pid) {
                netns.entry(ns.inode).or_insert(ns);
            }
        }
    }
}

/// An absolute path must lie inside the cgroup2 mount; a relative one is taken from it.
fn cgroup_dir(mount: &Path, path: &Path) -> Result<PathBuf, String> {
    let full = if path.is_absolute() {
        path.to_path_buf()
    } else {
        mount.join(path)
    };
    if full.components().any(|c| c == Component::ParentDir) || !full.starts_with(mount) {
        return Err(format!(
            "expected a cgroup under the cgroup2 mount {}, got {}",
            mount.display(),
            path.display()
        ));
    }
    if !full.join("cgroup.procs").is_file() {
        return Err(format!(
            "expected an existing cgroup2 directory, {} is not one",
            full.display()
        ));
    }
    Ok(full)
}

fn pid_cgroup(mount: &Path, pid: u32) -> Result<PathBuf, String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map_err(|e| format!("expected a running process, pid {pid}: {e}"))?;
    // The cgroup2 line is "0::/path" on both unified and hybrid hosts.
    let rel = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or_else(|| format!("process {pid} is in no cgroup2 cgroup"))?;
    let full = mount.join(rel.trim_start_matches('/'));
    if !full.is_dir() {
        return Err(format!(
            "the cgroup of process {pid} ({rel}) is not visible under {}",
            mount.display()
        ));
    }
    Ok(full)
}

/// The host pid of a running container's main process, from podman, or from Docker where its
/// socket exists.
/// On failure: the reason, and whether it is the host's (no engine to ask at all).
fn container_pid(name: &str) -> Result<u32, (String, bool)> {
    container_pid_from_engines(name).map_err(|(message, tried)| {
        let host = tried.iter().all(|t| {
            matches!(
                *t,
                "podman is not installed" | "no docker socket" | "no CRI socket"
            )
        });
        (message, host && !tried.is_empty())
    })
}

fn container_pid_from_engines(name: &str) -> Result<u32, (String, Vec<&'static str>)> {
    let mut tried = Vec::new();
    match Command::new("podman")
        .args([
            "inspect",
            "--type",
            "container",
            "--format",
            "{{.State.Pid}}",
            // A name is never an option, even one that starts with a dash.
            "--",
            name,
        ])
        .output()
    {
        Ok(out) if out.status.success() => {
            let pid: u32 = String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .map_err(|_| (format!("podman gave no pid for container {name}"), vec![]))?;
            if pid == 0 {
                return Err((
                    format!("expected a running container, {name} is not running"),
                    vec![],
                ));
            }
            return Ok(pid);
        }
        Ok(_) => tried.push("podman has none by that name"),
        Err(_) => tried.push("podman is not installed"),
    }
    let docker = Path::new("/var/run/docker.sock");
    if docker.exists() {
        match docker_pid(docker, name) {
            Ok(Some(pid)) => return Ok(pid),
            Ok(None) => tried.push("docker has none by that name"),
            Err(e) => return Err((format!("asking docker about {name}: {e}"), vec![])),
        }
    } else {
        tried.push("no docker socket");
    }
    if Path::new(&crate::cri::endpoint()).exists() {
        match crate::cri::container_pid(name) {
            Ok(Some(pid)) => return Ok(pid),
            Ok(None) => tried.push("the CRI (containerd) has none by that name or id"),
            Err(e) => return Err((format!("asking the CRI about {name}: {e}"), vec![])),
        }
    } else {
        tried.push("no CRI socket");
    }
    let message = format!(
        "expected the name or id of a running container, found no container {name} ({})",
        tried.join("; ")
    );
    Err((message, tried))
}

/// Asks the Docker Engine API for a container's pid (HTTP/1.0 over the unix socket, so the
/// reply ends when the connection closes).
fn docker_pid(socket: &Path, name: &str) -> std::io::Result<Option<u32>> {
    use std::io::{Read as _, Write as _};
    let mut s = std::os::unix::net::UnixStream::connect(socket)?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    write!(
        s,
        "GET /containers/{name}/json HTTP/1.0\r\nHost: docker\r\n\r\n"
    )?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        return Ok(None);
    }
    let v: serde_json::Value = serde_json::from_str(body).map_err(std::io::Error::other)?;
    Ok(v["State"]["Pid"]
        .as_u64()
        .filter(|&p| p > 0)
        .map(|p| p as u32))
}

fn inode(path: &Path) -> Result<u64, String> {
    std::fs::metadata(path)
        .map(|m| m.ino())
        .map_err(|e| format!("cannot stat {}: {e}", path.display()))
}

/// The cgroup and all cgroups below it.
fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![root.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        if let Ok(entries) = std::fs::read_dir(&out[i]) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    out.push(e.path());
                }
            }
        }
        i += 1;
    }
    out
}

fn procs(cgroup: &Path) -> Vec<u32> {
    std::fs::read_to_string(cgroup.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_paths_must_stay_under_the_mount() {
        let mount = Path::new("/sys/fs/cgroup/unified");
        let err = cgroup_dir(mount, Path::new("/tmp/x")).unwrap_err();
        assert!(err.contains("under the cgroup2 mount"), "{err}");
        let err = cgroup_dir(mount, Path::new("a/../../x")).unwrap_err();
        assert!(err.contains("under the cgroup2 mount"), "{err}");
    }
}
