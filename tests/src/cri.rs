//! Kubernetes pods on this machine without a cluster: a private containerd with its CRI
//! plugin, and pods made through the CRI the way the kubelet makes them (cgroupfs layout,
//! runc, a CNI bridge), so fault's pod targets meet what a node has.
//!
//! Everything containerd is given lives under [`RUN_DIR`] and [`ROOT_DIR`]: its config, state,
//! socket, runc's state, CNI configuration and address leases. The system's own containerd
//! (its systemd unit, /etc/containerd/config.toml, its socket) is never used; only the shims'
//! sockets go where containerd 1.6 always puts them ([`SHIM_SOCKET_ROOT`]), and libcni keeps
//! its cache in [`CNI_CACHE`] while a pod lives.

use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::fs;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    security_profile, ContainerConfig, ContainerMetadata, ContainerState, ContainerStatusRequest,
    CreateContainerRequest, ImageSpec, ImageStatusRequest, LinuxContainerConfig,
    LinuxContainerResources, LinuxContainerSecurityContext, LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext, ListPodSandboxRequest, NamespaceMode, NamespaceOption,
    PodSandboxConfig, PodSandboxFilter, PodSandboxMetadata, PodSandboxState, PodSandboxStateValue,
    PodSandboxStatusRequest, RemovePodSandboxRequest, RunPodSandboxRequest, SecurityProfile,
    StartContainerRequest, StatusRequest, StopPodSandboxRequest, VersionRequest,
};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::cgroup::{kill_all, rmdir_patiently};
use crate::{check, check_quietly, spawn_at, ChildGuard, Place, IMAGE_BUSYBOX};

/// The sandbox ("pause") image `cargo xtask setup` builds: busybox sleeping as the pod's PID 1.
pub const IMAGE_PAUSE: &str = "localhost/fault-pause:latest";

/// containerd's config, state, socket, CNI configuration, leases and the pods' log directories.
pub(crate) const RUN_DIR: &str = "/run/fault-test-containerd";
/// containerd's root: content store, snapshots, metadata.
pub(crate) const ROOT_DIR: &str = "/var/lib/fault-test-containerd";
/// libcni's cache of results (not configurable through containerd 1.6's CRI): it holds an
/// entry per pod while the pod lives, named after the network (`fault-cni-<sandbox id>-eth0`).
pub(crate) const CNI_CACHE: &str = "/var/lib/cni";
/// Where containerd 1.6 puts its shims' sockets (`s/<hash>`) whatever its configured state
/// directory: a compile-time constant (`const socketRoot = defaults.DefaultStateDir` in
/// runtime/v2/shim/util_unix.go). The shims remove their sockets as they exit.
pub(crate) const SHIM_SOCKET_ROOT: &str = "/run/containerd";
/// The CRI and containerd API socket.
const SOCKET: &str = "/run/fault-test-containerd/containerd.sock";
/// The bridge the CNI bridge plugin makes for the pods (it never deletes it: we do).
pub(crate) const BRIDGE: &str = "fault-cni0";
/// The pods' addresses (host-local IPAM); the bridge takes the first as the pods' gateway.
const SUBNET: &str = "10.89.0.0/24";
/// Where containerd's CRI keeps the kubelet's images and containers.
const K8S_NAMESPACE: &str = "k8s.io";
/// Marks the uids of our pods (the first 8 of the uid's last 12 hex digits), so leftover pod
/// cgroups can be told from a kubelet's.
pub(crate) const UID_MARK: &str = "fa017e57";
/// The pod cgroup parents of the kubelet's cgroupfs layout, one per QoS class.
pub(crate) const KUBEPODS_PARENTS: [&str; 3] =
    ["kubepods", "kubepods/besteffort", "kubepods/burstable"];

/// How long containerd gets to answer, and then to call its network ready.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// One CRI call's bound (RunPodSandbox sets up the network and starts the pause container).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a container gets to be running after StartContainer.
const RUNNING_TIMEOUT: Duration = Duration::from_secs(30);
/// How long containerd gets to exit on SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A tokio runtime and a channel to the CRI, shared by [`Containerd`] and its [`Pod`]s so a
/// pod can remove itself; the runtime makes each call synchronous for the tests.
struct Cri {
    rt: tokio::runtime::Runtime,
    channel: Channel,
    /// Set once containerd is stopped: a pod dropped later has no one to ask.
    stopped: AtomicBool,
    /// The network namespaces of our pods, removed at the end should containerd not have.
    netns: Mutex<Vec<PathBuf>>,
}

impl Cri {
    /// Connects lazily: the first call dials, and a failed dial is retried by the next call.
    fn new() -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime for the CRI calls");
        // The URI is a placeholder: the connector dials the socket.
        let endpoint = Endpoint::from_static("http://cri.invalid")
            .connect_timeout(Duration::from_secs(5))
            .timeout(CALL_TIMEOUT);
        let channel = {
            // The channel's worker task is spawned on the runtime entered here.
            let _entered = rt.enter();
            endpoint.connect_with_connector_lazy(tower::service_fn(|_: Uri| async {
                let stream = tokio::net::UnixStream::connect(SOCKET).await?;
                Ok::<_, io::Error>(hyper_util::rt::TokioIo::new(stream))
            }))
        };
        Self {
            rt,
            channel,
            stopped: AtomicBool::new(false),
            netns: Mutex::new(Vec::new()),
        }
    }

    /// One RuntimeService call, waited for; the error names the call.
    fn runtime<T, F>(
        &self,
        call: &str,
        f: impl FnOnce(RuntimeServiceClient<Channel>) -> F,
    ) -> Result<T, String>
    where
        F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.wait(call, f(RuntimeServiceClient::new(self.channel.clone())))
    }

    /// One ImageService call, waited for; the error names the call.
    fn image<T, F>(
        &self,
        call: &str,
        f: impl FnOnce(ImageServiceClient<Channel>) -> F,
    ) -> Result<T, String>
    where
        F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.wait(call, f(ImageServiceClient::new(self.channel.clone())))
    }

    fn wait<T>(
        &self,
        call: &str,
        response: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, String> {
        self.rt.block_on(async {
            match tokio::time::timeout(CALL_TIMEOUT, response).await {
                Ok(Ok(r)) => Ok(r.into_inner()),
                Ok(Err(status)) => Err(format!("CRI {call}: {}", status.message())),
                Err(_) => Err(format!("CRI {call}: no answer within {CALL_TIMEOUT:?}")),
            }
        })
    }

    /// StopPodSandbox (which kills its containers) and RemovePodSandbox, as the kubelet
    /// deletes a pod, then the pod's cgroups, which the kubelet removes itself.
    fn remove_pod(&self, sandbox_id: &str, uid: &str) -> Result<(), String> {
        let id = sandbox_id.to_string();
        self.runtime("StopPodSandbox", |mut c| async move {
            c.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: id })
                .await
        })?;
        let id = sandbox_id.to_string();
        self.runtime("RemovePodSandbox", |mut c| async move {
            c.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id })
                .await
        })?;
        remove_pod_cgroups(uid);
        Ok(())
    }
}

/// A private containerd: own config, root ([`ROOT_DIR`]), state and socket (under
/// [`RUN_DIR`]), own CNI configuration with a bridge network ([`BRIDGE`], 10.89.0.0/24) plus
/// containerd's loopback; stopped on drop (pods removed, process ended, its directories,
/// network namespaces, bridge and pod cgroups removed).
pub struct Containerd {
    cri: Arc<Cri>,
    process: Option<Child>,
    /// net.ipv4.ip_forward as found: the bridge plugin turns it on for a gateway.
    ip_forward: Option<String>,
    /// The kubepods cgroup parents that existed before, which we therefore leave in place.
    kubepods_before: Vec<PathBuf>,
}

impl Containerd {
    /// Starts containerd, imports the pause and busybox images into namespace k8s.io and waits
    /// until the CRI answers with its runtime and network ready; what a killed run left is
    /// removed first. Panics if containerd, ctr or the images are missing (`cargo xtask setup`
    /// installs them), or if a containerd of ours serves another live test.
    pub fn start() -> Containerd {
        for tool in ["containerd", "ctr", "runc"] {
            assert!(
                on_path(tool),
                "`{tool}` is not installed: `cargo xtask setup` installs it (Debian's \
                 containerd package)"
            );
        }
        for image in [IMAGE_PAUSE, IMAGE_BUSYBOX] {
            let exists = Command::new("podman")
                .args(["image", "exists", image])
                .status()
                .is_ok_and(|s| s.success());
            assert!(
                exists,
                "podman has no image {image}: `cargo xtask setup` builds it"
            );
        }
        recover();
        let started = Instant::now();
        let containerd = Self::launch();
        eprintln!(
            "cri: containerd answering, images imported, network ready in {:?}",
            started.elapsed()
        );
        containerd
    }

    /// Writes the configuration, starts containerd and waits until its CRI is ready.
    fn launch() -> Containerd {
        let cni_dir = Path::new(RUN_DIR).join("cni/net.d");
        fs::create_dir_all(&cni_dir)
            .unwrap_or_else(|e| panic!("creating {}: {e}", cni_dir.display()));
        let config = Path::new(RUN_DIR).join("config.toml");
        fs::write(&config, containerd_config())
            .unwrap_or_else(|e| panic!("writing {}: {e}", config.display()));
        fs::write(cni_dir.join("10-fault.conflist"), cni_conflist())
            .unwrap_or_else(|e| panic!("writing the CNI configuration: {e}"));
        let log = fs::File::create(log_path()).expect("creating containerd's log file");
        let kubepods_before = kubepods_dirs();
        let ip_forward = fs::read_to_string("/proc/sys/net/ipv4/ip_forward").ok();
        let process = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("duplicating the log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start containerd: {e}"));
        let mut containerd = Containerd {
            cri: Arc::new(Cri::new()),
            process: Some(process),
            ip_forward,
            kubepods_before,
        };
        containerd.wait_answering();
        containerd.import_images();
        containerd.wait_ready();
        containerd
    }

    /// The CRI (and containerd API) socket.
    pub fn socket(&self) -> &Path {
        Path::new(SOCKET)
    }

    /// The socket as a CRI endpoint URL, as kubelet's `--container-runtime-endpoint` takes it.
    pub fn endpoint(&self) -> String {
        format!("unix://{SOCKET}")
    }

    /// Runs a pod as the kubelet does: RunPodSandbox with its metadata (`name`, `namespace`, a
    /// fresh uid, attempt 0), `labels` and the cgroup parent of a BestEffort pod
    /// (`/kubepods/besteffort/pod<uid>`), then CreateContainer and StartContainer for each of
    /// `containers`, each busybox running `sleep 1000000`. Returns once all of them run.
    pub fn run_pod(
        &self,
        namespace: &str,
        name: &str,
        labels: &[(&str, &str)],
        containers: &[&str],
    ) -> Pod {
        let uid = fresh_uid();
        let sandbox_config = sandbox_config(namespace, name, &uid, labels);
        let log_dir = PathBuf::from(&sandbox_config.log_directory);
        // The kubelet makes the pod's log directory before it asks for the sandbox.
        fs::create_dir_all(&log_dir)
            .unwrap_or_else(|e| panic!("creating {}: {e}", log_dir.display()));
        let config = sandbox_config.clone();
        let sandbox_id = self
            .cri
            .runtime("RunPodSandbox", |mut c| async move {
                c.run_pod_sandbox(RunPodSandboxRequest {
                    config: Some(config),
                    runtime_handler: String::new(),
                })
                .await
            })
            .map(|r| r.pod_sandbox_id)
            .unwrap_or_else(|e| panic!("pod {namespace}/{name}: {e}{}", log_tail()));
        // From here a panic removes the pod through its drop.
        let mut pod = Pod {
            cri: self.cri.clone(),
            label: format!("{namespace}/{name}"),
            sandbox_id,
            uid,
            containers: Vec::new(),
            removed: false,
        };
        let netns = pod.netns_path();
        self.cri.netns.lock().expect("netns list").push(netns);

        // The kubelet names the image by its id, resolved from what the pod spec says.
        let image = ImageSpec {
            image: IMAGE_BUSYBOX.into(),
            ..Default::default()
        };
        let image_id = self
            .cri
            .image("ImageStatus", |mut c| async move {
                c.image_status(ImageStatusRequest {
                    image: Some(image),
                    verbose: false,
                })
                .await
            })
            .unwrap_or_else(|e| panic!("{e}"))
            .image
            .unwrap_or_else(|| panic!("the CRI has no image {IMAGE_BUSYBOX}"))
            .id;
        for container in containers {
            let config = container_config(container, &image_id, &sandbox_config);
            let request = CreateContainerRequest {
                pod_sandbox_id: pod.sandbox_id.clone(),
                config: Some(config),
                sandbox_config: Some(sandbox_config.clone()),
            };
            let id = self
                .cri
                .runtime("CreateContainer", |mut c| async move {
                    c.create_container(request).await
                })
                .map(|r| r.container_id)
                .unwrap_or_else(|e| panic!("pod {}/{container}: {e}{}", pod.label, log_tail()));
            pod.containers.push((container.to_string(), id.clone()));
            let start = id.clone();
            self.cri
                .runtime("StartContainer", |mut c| async move {
                    c.start_container(StartContainerRequest {
                        container_id: start,
                    })
                    .await
                })
                .unwrap_or_else(|e| panic!("pod {}/{container}: {e}{}", pod.label, log_tail()));
        }
        for (container, id) in &pod.containers {
            pod.wait_running(container, id);
        }
        pod
    }

    /// The sandbox ids of the ready pods carrying all of `labels`, found by ListPodSandbox's
    /// label selector as a pod target is.
    pub fn sandboxes_labelled(&self, labels: &[(&str, &str)]) -> Vec<String> {
        let filter = PodSandboxFilter {
            state: Some(PodSandboxStateValue {
                state: PodSandboxState::SandboxReady as i32,
            }),
            label_selector: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        };
        let mut ids: Vec<String> = self
            .cri
            .runtime("ListPodSandbox", |mut c| async move {
                c.list_pod_sandbox(ListPodSandboxRequest {
                    filter: Some(filter),
                })
                .await
            })
            .unwrap_or_else(|e| panic!("{e}"))
            .items
            .into_iter()
            .map(|sandbox| sandbox.id)
            .collect();
        ids.sort();
        ids
    }

    /// Waits until containerd's API answers (Version), or panics with its log.
    fn wait_answering(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let version = self.cri.runtime("Version", |mut c| async move {
                c.version(VersionRequest {
                    version: String::new(),
                })
                .await
            });
            match version {
                Ok(_) => return,
                Err(e) if Instant::now() > deadline => {
                    panic!(
                        "containerd not answering after {START_TIMEOUT:?}: {e}{}",
                        log_tail()
                    )
                }
                Err(_) => {}
            }
            self.check_alive();
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the CRI says both its runtime and its network (the CNI configuration) are
    /// ready, as the kubelet waits before it runs pods.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let status = self
                .cri
                .runtime("Status", |mut c| async move {
                    c.status(StatusRequest { verbose: false }).await
                })
                .unwrap_or_else(|e| panic!("{e}{}", log_tail()));
            let conditions = status.status.map(|s| s.conditions).unwrap_or_default();
            let ready = |kind: &str| conditions.iter().any(|c| c.r#type == kind && c.status);
            if ready("RuntimeReady") && ready("NetworkReady") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the CRI is not ready after {START_TIMEOUT:?}: {conditions:?}{}",
                log_tail()
            );
            self.check_alive();
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn check_alive(&mut self) {
        let process = self.process.as_mut().expect("containerd process");
        if let Ok(Some(status)) = process.try_wait() {
            panic!("containerd exited ({status}){}", log_tail());
        }
    }

    /// There is no registry: podman's images go in through an archive.
    fn import_images(&self) {
        let archive = Path::new(RUN_DIR).join("images.tar");
        check(
            Command::new("podman")
                .args(["save", "-q", "-m", "--format", "docker-archive", "-o"])
                .arg(&archive)
                .args([IMAGE_PAUSE, IMAGE_BUSYBOX]),
        );
        check(
            Command::new("ctr")
                .args(["-a", SOCKET, "-n", K8S_NAMESPACE, "images", "import"])
                .arg(&archive),
        );
        let _ = fs::remove_file(&archive);
    }

    /// Removes every pod, then ends containerd and whatever of ours survives it.
    fn stop(&mut self) {
        let pods = self.cri.runtime("ListPodSandbox", |mut c| async move {
            c.list_pod_sandbox(ListPodSandboxRequest { filter: None })
                .await
        });
        match pods {
            Ok(pods) => {
                for sandbox in pods.items {
                    let uid = sandbox.metadata.map(|m| m.uid).unwrap_or_default();
                    if let Err(e) = self.cri.remove_pod(&sandbox.id, &uid) {
                        eprintln!("cleanup: pod sandbox {}: {e}", sandbox.id);
                    }
                }
            }
            Err(e) => eprintln!("cleanup: {e}"),
        }
        self.cri.stopped.store(true, Ordering::SeqCst);
        if let Some(mut process) = self.process.take() {
            end_process(&mut process, "containerd", STOP_TIMEOUT);
        }
        // Shims outlive containerd by design; with the pods gone they have exited already.
        for (pid, cmdline) in our_processes() {
            eprintln!("cleanup: killing {pid} ({cmdline})");
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        for dir in our_pod_cgroups() {
            remove_cgroup_tree(&dir);
        }
        for netns in self.cri.netns.lock().expect("netns list").drain(..) {
            if netns.exists() {
                detach(&netns);
                if let Err(e) = fs::remove_file(&netns) {
                    eprintln!("cleanup: removing {}: {e}", netns.display());
                }
            }
        }
        remove_state_dirs();
        if Path::new("/sys/class/net").join(BRIDGE).exists() {
            check_quietly(Command::new("ip").args(["link", "del", BRIDGE]));
        }
        // Deepest first; only those we made (rmdir refuses a parent in use anyway).
        for dir in kubepods_dirs().into_iter().rev() {
            if !self.kubepods_before.contains(&dir) {
                if let Err(e) = fs::remove_dir(&dir) {
                    eprintln!("cleanup: removing cgroup {}: {e}", dir.display());
                }
            }
        }
        // Made on demand by containerd and libcni, and again by whoever needs them next:
        // removed when empty, which also covers those a killed run left.
        let made = [
            Path::new(SHIM_SOCKET_ROOT).join("s"),
            SHIM_SOCKET_ROOT.into(),
            Path::new(CNI_CACHE).join("results"),
            CNI_CACHE.into(),
        ];
        for dir in made {
            match fs::remove_dir(&dir) {
                Ok(()) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::DirectoryNotEmpty
                    ) => {}
                Err(e) => eprintln!("cleanup: removing {}: {e}", dir.display()),
            }
        }
        if let Some(before) = &self.ip_forward {
            let now = fs::read_to_string("/proc/sys/net/ipv4/ip_forward").ok();
            if now.as_ref() != Some(before) {
                if let Err(e) = fs::write("/proc/sys/net/ipv4/ip_forward", before) {
                    eprintln!("cleanup: restoring net.ipv4.ip_forward: {e}");
                }
            }
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A pod made by [`Containerd::run_pod`]; removed on drop as the kubelet deletes a pod.
pub struct Pod {
    cri: Arc<Cri>,
    /// `namespace/name`, for messages.
    label: String,
    sandbox_id: String,
    uid: String,
    /// (metadata name, container id), in the order they were created.
    containers: Vec<(String, String)>,
    removed: bool,
}

impl Pod {
    /// The sandbox id the CRI gave.
    pub fn sandbox_id(&self) -> &str {
        &self.sandbox_id
    }

    /// The pod's uid (metadata.uid), fresh for each pod.
    pub fn uid(&self) -> &str {
        &self.uid
    }

    /// The pod's address on the bridge (PodSandboxStatus network ip).
    pub fn ip(&self) -> IpAddr {
        let ip = self
            .sandbox_status(false)
            .0
            .network
            .map(|n| n.ip)
            .unwrap_or_default();
        ip.parse()
            .unwrap_or_else(|e| panic!("pod {}: the CRI gave address `{ip}`: {e}", self.label))
    }

    /// The pod's labels as the CRI reports them (PodSandboxStatus): those given to
    /// [`Containerd::run_pod`] and the kubelet's `io.kubernetes.pod.*`.
    pub fn labels(&self) -> BTreeMap<String, String> {
        self.sandbox_status(false).0.labels.into_iter().collect()
    }

    /// The sandbox's network namespace file (`/var/run/netns/cni-<uuid>`, that is under
    /// /run/netns), from the runtime spec in the verbose PodSandboxStatus.
    pub fn netns_path(&self) -> PathBuf {
        let (_, info) = self.sandbox_status(true);
        let spec = info_json(&info, &self.label);
        spec["runtimeSpec"]["linux"]["namespaces"]
            .as_array()
            .and_then(|namespaces| {
                namespaces
                    .iter()
                    .find(|ns| ns["type"] == "network")
                    .and_then(|ns| ns["path"].as_str())
            })
            .map(PathBuf::from)
            .unwrap_or_else(|| panic!("pod {}: no network namespace path in {spec}", self.label))
    }

    /// The container ids, in the order of `run_pod`'s `containers`.
    pub fn container_ids(&self) -> Vec<String> {
        self.containers.iter().map(|(_, id)| id.clone()).collect()
    }

    /// Host pid of the container's process (from the verbose ContainerStatus).
    pub fn pid(&self, container: &str) -> u32 {
        let id = self.container_id(container);
        let info = self.container_info(id);
        let pid = info["pid"].as_u64().unwrap_or(0);
        assert!(pid > 0, "pod {}/{container}: no pid in {info}", self.label);
        pid as u32
    }

    /// The container's cgroup v2 directory (under [`crate::cgroup2_mount`]), where runc put
    /// its process: `kubepods/besteffort/pod<uid>/<container id>`.
    pub fn cgroup_dir(&self, container: &str) -> PathBuf {
        let pid = self.pid(container);
        let cgroups = fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .unwrap_or_else(|e| panic!("reading /proc/{pid}/cgroup: {e}"));
        let rel = cgroups
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .unwrap_or_else(|| panic!("no cgroup v2 line in /proc/{pid}/cgroup: {cgroups}"));
        crate::cgroup2_mount().join(rel.trim_start_matches('/'))
    }

    /// Where a host process joins the container: its cgroup and the pod's network namespace.
    pub fn place(&self, container: &str) -> Place {
        Place {
            cgroup: Some(self.cgroup_dir(container)),
            netns: Some(self.netns_path()),
        }
    }

    /// Spawns a host process (the fault-probe binary, say) in the container's cgroup and the
    /// pod's network namespace, as [`crate::spawn_in`] does for a test cgroup and namespace.
    pub fn spawn(&self, container: &str, cmd: Command) -> ChildGuard {
        spawn_at(&self.place(container), cmd)
    }

    /// [`Pod::spawn`], waited for (see [`ChildGuard::wait_output`]).
    pub fn run(&self, container: &str, cmd: Command, timeout: Duration) -> Output {
        self.spawn(container, cmd).wait_output(timeout)
    }

    /// StopPodSandbox and RemovePodSandbox, as the kubelet deletes a pod, and the pod's
    /// cgroups, which the kubelet removes itself. Panics if the CRI refuses.
    pub fn remove(mut self) {
        self.removed = true;
        if let Err(e) = self.cri.remove_pod(&self.sandbox_id, &self.uid) {
            panic!("removing pod {}: {e}", self.label);
        }
    }

    fn container_id(&self, container: &str) -> &str {
        self.containers
            .iter()
            .find(|(name, _)| name == container)
            .map(|(_, id)| id.as_str())
            .unwrap_or_else(|| panic!("pod {} has no container {container}", self.label))
    }

    fn sandbox_status(
        &self,
        verbose: bool,
    ) -> (k8s_cri::v1::PodSandboxStatus, HashMap<String, String>) {
        let id = self.sandbox_id.clone();
        let response = self
            .cri
            .runtime("PodSandboxStatus", |mut c| async move {
                c.pod_sandbox_status(PodSandboxStatusRequest {
                    pod_sandbox_id: id,
                    verbose,
                })
                .await
            })
            .unwrap_or_else(|e| panic!("pod {}: {e}", self.label));
        let status = response
            .status
            .unwrap_or_else(|| panic!("pod {}: PodSandboxStatus without a status", self.label));
        (status, response.info)
    }

    /// The verbose ContainerStatus's `info` (containerd's JSON: pid, runtime spec, ...).
    fn container_info(&self, id: &str) -> serde_json::Value {
        let container_id = id.to_string();
        let response = self
            .cri
            .runtime("ContainerStatus", |mut c| async move {
                c.container_status(ContainerStatusRequest {
                    container_id,
                    verbose: true,
                })
                .await
            })
            .unwrap_or_else(|e| panic!("pod {}: {e}", self.label));
        info_json(&response.info, &self.label)
    }

    fn wait_running(&self, container: &str, id: &str) {
        let deadline = Instant::now() + RUNNING_TIMEOUT;
        loop {
            let container_id = id.to_string();
            let status = self
                .cri
                .runtime("ContainerStatus", |mut c| async move {
                    c.container_status(ContainerStatusRequest {
                        container_id,
                        verbose: false,
                    })
                    .await
                })
                .unwrap_or_else(|e| panic!("pod {}/{container}: {e}", self.label))
                .status
                .unwrap_or_default();
            match ContainerState::try_from(status.state) {
                Ok(ContainerState::ContainerRunning) => return,
                Ok(ContainerState::ContainerExited) => panic!(
                    "pod {}/{container} exited ({}, {}): {}",
                    self.label, status.exit_code, status.reason, status.message
                ),
                _ => {}
            }
            assert!(
                Instant::now() < deadline,
                "pod {}/{container} not running after {RUNNING_TIMEOUT:?}: state {}",
                self.label,
                status.state
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        // After its containerd stopped, the pod went with it.
        if self.removed || self.cri.stopped.load(Ordering::SeqCst) {
            return;
        }
        if let Err(e) = self.cri.remove_pod(&self.sandbox_id, &self.uid) {
            eprintln!("cleanup: pod {}: {e}", self.label);
        }
    }
}

/// A test run killed before its drops leaves its containerd running (orphaned), its shims
/// and pods, or only their state. A containerd started over that state finds the pods again,
/// and its drop removes them as any pods. Panics if a containerd of ours serves a live test.
fn recover() {
    for (pid, cmdline) in our_processes() {
        if comm_of(pid) != "containerd" {
            continue;
        }
        let parent = parent_of(pid).unwrap_or(1);
        assert!(
            parent == 1,
            "a containerd of ours (pid {pid}: {cmdline}) serves process {parent}: one test at a \
             time (--test-threads=1), or end that run"
        );
        eprintln!("cri: stopping containerd {pid}, left running by a killed test run");
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: as above; harmless if it has exited meanwhile.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    if Path::new(ROOT_DIR).exists() {
        eprintln!("cri: removing what a killed test run left in {ROOT_DIR}");
        let mut old = Containerd::launch();
        // Those were the killed run's, not the machine's.
        old.kubepods_before.clear();
        drop(old);
    }
    // A run killed before containerd made its root leaves only these.
    remove_state_dirs();
}

/// /proc/PID/comm, without the newline; empty if the process is gone.
pub(crate) fn comm_of(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim_end().to_string())
        .unwrap_or_default()
}

/// The parent pid, from /proc/PID/stat (`pid (comm) state ppid ...`; comm may hold spaces).
pub(crate) fn parent_of(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, after_comm) = stat.rsplit_once(')')?;
    after_comm.split_whitespace().nth(1)?.parse().ok()
}

/// containerd's configuration: everything of its own under our directories, and what this
/// machine needs. Each setting that differs from containerd 1.6's default says why.
fn containerd_config() -> String {
    format!(
        r#"# Written by the fault test harness (tests/src/cri.rs).
version = 2
# Ours, not the system's /var/lib/containerd and /run/containerd.
root = "{ROOT_DIR}"
state = "{RUN_DIR}/state"
# Snapshotters that cannot work here (no btrfs, zfs, aufs or device-mapper pool) only add
# errors to the log.
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = "{SOCKET}"

[ttrpc]
  address = "{SOCKET}.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  # Default /opt/containerd, outside our directories.
  path = "{ROOT_DIR}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  # No registry: the pause image is the local one `cargo xtask setup` builds.
  sandbox_image = "{IMAGE_PAUSE}"
  # The CRI gives the pause container oom_score_adj -998; lowering it needs CAP_SYS_RESOURCE,
  # which this VM does not grant, so the value is clamped to containerd's own.
  restrict_oom_score_adj = true
  # The exec/attach streaming server: loopback, on a free port (a system containerd would
  # hold 10010).
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        # The kubelet's cgroupfs driver: no systemd here, and crun refuses the hybrid layout.
        BinaryName = "runc"
        SystemdCgroup = false
        # runc's state, by default /run/containerd/runc.
        Root = "{RUN_DIR}/runc"

  [plugins."io.containerd.grpc.v1.cri".cni]
    # Debian's containernetworking-plugins, not /opt/cni/bin.
    bin_dir = "/usr/lib/cni"
    # Ours, not /etc/cni/net.d; containerd adds the loopback network to it itself.
    conf_dir = "{RUN_DIR}/cni/net.d"
    max_conf_num = 1
"#
    )
}

/// The pods' network: a bridge with the first address as their gateway (so the host reaches
/// them), no masquerading (they talk only to each other and to the host), leases kept in our
/// directory rather than /var/lib/cni/networks.
fn cni_conflist() -> String {
    format!(
        r#"{{
  "cniVersion": "1.0.0",
  "name": "fault-cni",
  "plugins": [
    {{
      "type": "bridge",
      "bridge": "{BRIDGE}",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {{
        "type": "host-local",
        "ranges": [[{{"subnet": "{SUBNET}"}}]],
        "routes": [{{"dst": "0.0.0.0/0"}}],
        "dataDir": "{RUN_DIR}/ipam"
      }}
    }}
  ]
}}
"#
    )
}

/// Paths the kubelet masks in a container's /proc and /sys unless the pod asks for an
/// unmasked proc mount (k8s.io/kubernetes pkg/securitycontext).
const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
/// Paths the kubelet makes read-only in a container.
const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The namespaces of a pod without host namespaces: network and IPC shared in the pod, a pid
/// namespace per container.
fn pod_namespaces() -> NamespaceOption {
    NamespaceOption {
        network: NamespaceMode::Pod as i32,
        pid: NamespaceMode::Container as i32,
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// The kubelet's default seccomp profile (without --seccomp-default): none.
fn unconfined() -> SecurityProfile {
    SecurityProfile {
        profile_type: security_profile::ProfileType::Unconfined as i32,
        localhost_ref: String::new(),
    }
}

/// The PodSandboxConfig the kubelet sends for a BestEffort pod with these labels.
fn sandbox_config(
    namespace: &str,
    name: &str,
    uid: &str,
    labels: &[(&str, &str)],
) -> PodSandboxConfig {
    let mut all_labels: HashMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    all_labels.insert("io.kubernetes.pod.name".into(), name.into());
    all_labels.insert("io.kubernetes.pod.namespace".into(), namespace.into());
    all_labels.insert("io.kubernetes.pod.uid".into(), uid.into());
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: uid.into(),
            namespace: namespace.into(),
            attempt: 0,
        }),
        hostname: name.into(),
        // The kubelet's /var/log/pods/<namespace>_<name>_<uid>, in our directory.
        log_directory: format!("{RUN_DIR}/pods/{namespace}_{name}_{uid}"),
        labels: all_labels,
        annotations: HashMap::from([("kubernetes.io/config.source".into(), "api".into())]),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: format!("/kubepods/besteffort/pod{uid}"),
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(pod_namespaces()),
                seccomp: Some(unconfined()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The ContainerConfig the kubelet sends for a BestEffort container running busybox's
/// `sleep 1000000`.
fn container_config(name: &str, image_id: &str, sandbox: &PodSandboxConfig) -> ContainerConfig {
    let pod = sandbox.metadata.as_ref().expect("sandbox metadata");
    let labels = HashMap::from([
        ("io.kubernetes.container.name".into(), name.into()),
        ("io.kubernetes.pod.name".into(), pod.name.clone()),
        ("io.kubernetes.pod.namespace".into(), pod.namespace.clone()),
        ("io.kubernetes.pod.uid".into(), pod.uid.clone()),
    ]);
    let annotations = HashMap::from([
        ("io.kubernetes.container.restartCount".into(), "0".into()),
        (
            "io.kubernetes.container.terminationMessagePath".into(),
            "/dev/termination-log".into(),
        ),
        (
            "io.kubernetes.container.terminationMessagePolicy".into(),
            "File".into(),
        ),
        (
            "io.kubernetes.pod.terminationGracePeriod".into(),
            "30".into(),
        ),
    ]);
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: image_id.into(),
            user_specified_image: IMAGE_BUSYBOX.into(),
            ..Default::default()
        }),
        command: vec!["sleep".into(), "1000000".into()],
        labels,
        annotations,
        log_path: format!("{name}/0.log"),
        linux: Some(LinuxContainerConfig {
            // BestEffort: the minimum CPU shares, the CFS period, the OOM killer's first pick.
            resources: Some(LinuxContainerResources {
                cpu_period: 100_000,
                cpu_shares: 2,
                oom_score_adj: 1000,
                ..Default::default()
            }),
            security_context: Some(LinuxContainerSecurityContext {
                namespace_options: Some(pod_namespaces()),
                masked_paths: MASKED_PATHS.iter().map(|p| p.to_string()).collect(),
                readonly_paths: READONLY_PATHS.iter().map(|p| p.to_string()).collect(),
                seccomp: Some(unconfined()),
                ..Default::default()
            }),
        }),
        ..Default::default()
    }
}

/// A random (version 4) uid whose last group starts with [`UID_MARK`].
fn fresh_uid() -> String {
    let uuid = fs::read_to_string("/proc/sys/kernel/random/uuid")
        .expect("reading /proc/sys/kernel/random/uuid");
    let uuid = uuid.trim();
    let (head, last) = uuid.rsplit_once('-').expect("a uuid has groups");
    format!("{head}-{UID_MARK}{}", &last[UID_MARK.len()..])
}

/// The JSON of a verbose status's `info` entry.
fn info_json(info: &HashMap<String, String>, label: &str) -> serde_json::Value {
    let text = info
        .get("info")
        .unwrap_or_else(|| panic!("pod {label}: verbose status without `info`: {info:?}"));
    serde_json::from_str(text).unwrap_or_else(|e| panic!("pod {label}: info is not JSON ({e})"))
}

fn log_path() -> PathBuf {
    Path::new(RUN_DIR).join("containerd.log")
}

/// The end of containerd's log, for a panic message.
fn log_tail() -> String {
    let log = fs::read_to_string(log_path()).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    let tail = lines[lines.len().saturating_sub(20)..].join("\n  ");
    format!("\ncontainerd's log ends:\n  {tail}")
}

pub(crate) fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
}

/// SIGTERM, then SIGKILL if it has not exited in time; reaped either way.
pub(crate) fn end_process(process: &mut Child, what: &str, timeout: Duration) {
    // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child.
    unsafe { libc::kill(process.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = process.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("cleanup: {what} did not exit on SIGTERM in {timeout:?}; killing it");
    let _ = process.kill();
    let _ = process.wait();
}

/// containerd and its shims of ours (named containerd*, with our directory in their command
/// lines), as (pid, command line).
pub(crate) fn our_processes() -> Vec<(u32, String)> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.starts_with("containerd"))
        })
        .filter_map(|pid| {
            let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
            cmdline
                .contains(RUN_DIR)
                .then(|| (pid, cmdline.trim().to_string()))
        })
        .collect()
}

/// Every cgroup hierarchy's mount point: the v2 one and, on hybrid hosts, each v1 one (runc
/// puts a container in all of them).
pub(crate) fn cgroup_mounts() -> Vec<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let fstype = after.split_whitespace().next()?;
            if fstype != "cgroup" && fstype != "cgroup2" {
                return None;
            }
            let mount_point = before.split_whitespace().nth(4)?;
            Some(PathBuf::from(crate::unescape_mountinfo(mount_point)))
        })
        .collect()
}

/// The kubepods parent cgroups that exist, parents before children.
fn kubepods_dirs() -> Vec<PathBuf> {
    cgroup_mounts()
        .iter()
        .flat_map(|mount| KUBEPODS_PARENTS.map(|p| mount.join(p)))
        .filter(|dir| dir.is_dir())
        .collect()
}

/// The pod cgroups of our pods (uid marked with [`UID_MARK`]) in every hierarchy.
pub(crate) fn our_pod_cgroups() -> Vec<PathBuf> {
    kubepods_dirs()
        .into_iter()
        .flat_map(|parent| {
            fs::read_dir(&parent)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .collect::<Vec<_>>()
        })
        .filter(|dir| {
            let name = dir.file_name().map(|n| n.to_string_lossy().into_owned());
            name.is_some_and(|n| n.starts_with("pod") && n.contains(UID_MARK)) && dir.is_dir()
        })
        .collect()
}

/// Removes the pod's cgroup (`kubepods/besteffort/pod<uid>`) from every hierarchy.
fn remove_pod_cgroups(uid: &str) {
    if uid.is_empty() {
        return;
    }
    for mount in cgroup_mounts() {
        for parent in KUBEPODS_PARENTS {
            let dir = mount.join(parent).join(format!("pod{uid}"));
            if dir.is_dir() {
                remove_cgroup_tree(&dir);
            }
        }
    }
}

/// Empties and removes a cgroup and its children, deepest first.
pub(crate) fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&entry.path());
            }
        }
    }
    if let Err(e) = kill_all(dir) {
        eprintln!("cleanup: emptying cgroup {}: {e}", dir.display());
    }
    if let Err(e) = rmdir_patiently(dir) {
        eprintln!("cleanup: removing cgroup {}: {e}", dir.display());
    }
}

/// Unmounts whatever is mounted below our directories (sandbox /dev/shm, rootfs overlays),
/// then removes them.
fn remove_state_dirs() {
    remove_dirs_below_mounts(&[RUN_DIR, ROOT_DIR]);
}

/// Unmounts whatever is mounted below `dirs`, deepest first so no mount hides another,
/// then removes them.
pub(crate) fn remove_dirs_below_mounts(dirs: &[&str]) {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut mounts: Vec<String> = info
        .lines()
        .filter_map(|line| line.split_whitespace().nth(4))
        .map(crate::unescape_mountinfo)
        .filter(|m| dirs.iter().any(|d| m.starts_with(d)))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for mount in mounts {
        detach(Path::new(&mount));
    }
    for dir in dirs {
        match fs::remove_dir_all(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => eprintln!("cleanup: removing {dir}: {e}"),
        }
    }
}

/// umount2(MNT_DETACH); failures are reported, never a panic.
pub(crate) fn detach(path: &Path) {
    let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else {
        return;
    };
    // SAFETY: a valid C string; unmounting has no memory-safety preconditions.
    let rc = unsafe { libc::umount2(c_path.as_ptr(), libc::MNT_DETACH) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        // EINVAL: not a mount point (any more).
        if e.raw_os_error() != Some(libc::EINVAL) {
            eprintln!("cleanup: unmounting {}: {e}", path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_uid_is_a_marked_uuid() {
        let uid = fresh_uid();
        let groups: Vec<&str> = uid.split('-').collect();
        assert_eq!(
            groups.iter().map(|g| g.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12],
            "{uid}"
        );
        assert!(groups[4].starts_with(UID_MARK), "{uid}");
        assert_ne!(uid, fresh_uid(), "each uid is new");
    }

    #[test]
    fn the_config_keeps_containerd_in_our_directories() {
        let config = containerd_config();
        assert!(config.contains(r#"root = "/var/lib/fault-test-containerd""#));
        assert!(config.contains(r#"address = "/run/fault-test-containerd/containerd.sock""#));
        assert!(
            config.contains(r#"conf_dir = "/run/fault-test-containerd/cni/net.d""#),
            "{config}"
        );
        assert!(config.contains(r#"Root = "/run/fault-test-containerd/runc""#));
        let cni: serde_json::Value = serde_json::from_str(&cni_conflist()).expect("CNI JSON");
        assert_eq!(cni["plugins"][0]["bridge"], BRIDGE);
        assert_eq!(
            cni["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
            "10.89.0.0/24"
        );
    }
}
