//! Pods on this node, from the container runtime's CRI (containerd's socket, as the kubelet
//! uses it): which sandboxes a `pod:` or `pods:` target names, and where their containers'
//! processes are. Only this node's runtime is asked, so only this node's pods are found.
//!
//! The CRI is gRPC (tonic, with the k8s-cri crate's bindings). Callers are synchronous and
//! may run inside the loader's own runtime, so each query runs on a thread of its own with
//! a runtime of its own.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use k8s_cri::v1::{
    runtime_service_client::RuntimeServiceClient, ContainerFilter, ContainerState,
    ContainerStateValue, ContainerStatusRequest, ListContainersRequest, ListPodSandboxRequest,
    PodSandboxFilter, PodSandboxState, PodSandboxStateValue,
};
use tonic::transport::Channel;

/// The CRI socket unless FAULT_CRI_ENDPOINT names another (`unix:///path` or a path).
pub const DEFAULT_ENDPOINT: &str = "/run/containerd/containerd.sock";
/// One query's bound: a runtime that does not answer is reported, not waited for.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Which pods a target names: in one namespace, by name or by labels, and optionally one
/// container in each.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PodSelector {
    pub namespace: String,
    pub name: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub container: Option<String>,
}

/// A running pod (or one container of it) that a selector names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodFound {
    /// `pod NAMESPACE/NAME`, with `/CONTAINER` for a container target.
    pub label: String,
    pub uid: String,
    /// A process of each running container of it (of the one container, for a container
    /// target).
    pub pids: Vec<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum CriError {
    #[error("cannot reach the CRI at {endpoint}: {why}")]
    Unreachable { endpoint: String, why: String },
    #[error("the CRI at {endpoint} refused {call}: {why}")]
    Call {
        endpoint: String,
        call: &'static str,
        why: String,
    },
}

impl CriError {
    /// Whether the node has no CRI at all (not the policy's fault).
    pub fn is_host(&self) -> bool {
        matches!(self, CriError::Unreachable { .. })
    }
}

pub fn endpoint() -> String {
    let e = std::env::var("FAULT_CRI_ENDPOINT").unwrap_or_else(|_| DEFAULT_ENDPOINT.into());
    e.strip_prefix("unix://").unwrap_or(&e).to_owned()
}

/// The running pods `sel` names, by label then uid.
pub fn find(sel: &PodSelector) -> Result<Vec<PodFound>, CriError> {
    let sel = sel.clone();
    on_own_thread(move |endpoint| async move { query(&endpoint, &sel).await })
}

/// The pid of a running container of the CRI, by id (or a unique prefix of one) or by its
/// name in its pod when only one container has it; `None` when the CRI has no such one.
pub fn container_pid(name: &str) -> Result<Option<u32>, CriError> {
    let name = name.to_owned();
    on_own_thread(move |endpoint| async move { container(&endpoint, &name).await })
}

/// Runs a query on a thread and a runtime of its own, bounded by [`TIMEOUT`].
fn on_own_thread<T, F, Fut>(q: F) -> Result<T, CriError>
where
    T: Send + 'static,
    F: FnOnce(String) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, CriError>>,
{
    let endpoint = endpoint();
    let on_thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| CriError::Unreachable {
                endpoint: endpoint.clone(),
                why: format!("start a runtime: {e}"),
            })?;
        rt.block_on(async {
            match tokio::time::timeout(TIMEOUT, q(endpoint.clone())).await {
                Ok(r) => r,
                Err(_) => Err(CriError::Unreachable {
                    endpoint: endpoint.clone(),
                    why: format!("no answer within {TIMEOUT:?}"),
                }),
            }
        })
    });
    on_thread.join().unwrap_or_else(|_| {
        Err(CriError::Unreachable {
            endpoint: self::endpoint(),
            why: "the query's thread panicked".into(),
        })
    })
}

async fn connect(endpoint: &str) -> Result<RuntimeServiceClient<Channel>, CriError> {
    let path = PathBuf::from(endpoint);
    // The URI is a placeholder: the connector below dials the socket.
    let channel = tonic::transport::Endpoint::from_static("http://cri.invalid")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                let s = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
            }
        }))
        .await
        .map_err(|e| CriError::Unreachable {
            endpoint: endpoint.into(),
            why: format!(
                "{e}: {}",
                std::error::Error::source(&e).map_or(String::new(), |s| s.to_string())
            ),
        })?;
    Ok(RuntimeServiceClient::new(channel))
}

async fn query(endpoint: &str, sel: &PodSelector) -> Result<Vec<PodFound>, CriError> {
    let mut client = connect(endpoint).await?;
    let call = |call: &'static str| {
        move |e: tonic::Status| CriError::Call {
            endpoint: endpoint.into(),
            call,
            why: e.message().to_owned(),
        }
    };
    let sandboxes = client
        .list_pod_sandbox(ListPodSandboxRequest {
            filter: Some(PodSandboxFilter {
                state: Some(PodSandboxStateValue {
                    state: PodSandboxState::SandboxReady as i32,
                }),
                label_selector: sel.labels.clone().into_iter().collect(),
                ..Default::default()
            }),
        })
        .await
        .map_err(call("ListPodSandbox"))?
        .into_inner()
        .items;
    let mut out = Vec::new();
    for sb in sandboxes {
        let Some(meta) = sb.metadata else { continue };
        let named = sel.name.as_ref().is_none_or(|n| *n == meta.name);
        if meta.namespace != sel.namespace || !named {
            continue;
        }
        let containers = client
            .list_containers(ListContainersRequest {
                filter: Some(ContainerFilter {
                    pod_sandbox_id: sb.id.clone(),
                    state: Some(ContainerStateValue {
                        state: ContainerState::ContainerRunning as i32,
                    }),
                    ..Default::default()
                }),
            })
            .await
            .map_err(call("ListContainers"))?
            .into_inner()
            .containers;
        let mut pids = Vec::new();
        for c in containers {
            let cname = c.metadata.as_ref().map(|m| m.name.as_str()).unwrap_or("");
            if sel.container.as_ref().is_some_and(|want| want != cname) {
                continue;
            }
            let status = client
                .container_status(ContainerStatusRequest {
                    container_id: c.id.clone(),
                    verbose: true,
                })
                .await
                .map_err(call("ContainerStatus"))?
                .into_inner();
            pids.extend(status.info.get("info").and_then(|i| pid_of(i)));
        }
        if pids.is_empty() {
            continue; // nothing running in it yet: found at a later look
        }
        let mut label = format!("pod {}/{}", meta.namespace, meta.name);
        if let Some(c) = &sel.container {
            label.push_str(&format!("/{c}"));
        }
        out.push(PodFound {
            label,
            uid: meta.uid,
            pids,
        });
    }
    out.sort_by(|a, b| (&a.label, &a.uid).cmp(&(&b.label, &b.uid)));
    Ok(out)
}

async fn container(endpoint: &str, name: &str) -> Result<Option<u32>, CriError> {
    let mut client = connect(endpoint).await?;
    let running = client
        .list_containers(ListContainersRequest {
            filter: Some(ContainerFilter {
                state: Some(ContainerStateValue {
                    state: ContainerState::ContainerRunning as i32,
                }),
                ..Default::default()
            }),
        })
        .await
        .map_err(|e| CriError::Call {
            endpoint: endpoint.into(),
            call: "ListContainers",
            why: e.message().to_owned(),
        })?
        .into_inner()
        .containers;
    let by_id: Vec<_> = running.iter().filter(|c| c.id.starts_with(name)).collect();
    let by_name: Vec<_> = running
        .iter()
        .filter(|c| c.metadata.as_ref().is_some_and(|m| m.name == name))
        .collect();
    let id = match (by_id.as_slice(), by_name.as_slice()) {
        ([one], _) | ([], [one]) => one.id.clone(),
        ([], []) => return Ok(None),
        _ => {
            return Err(CriError::Call {
                endpoint: endpoint.into(),
                call: "ListContainers",
                why: format!("more than one running container is {name}; name it by its id"),
            })
        }
    };
    let status = client
        .container_status(ContainerStatusRequest {
            container_id: id,
            verbose: true,
        })
        .await
        .map_err(|e| CriError::Call {
            endpoint: endpoint.into(),
            call: "ContainerStatus",
            why: e.message().to_owned(),
        })?
        .into_inner();
    Ok(status.info.get("info").and_then(|i| pid_of(i)))
}

/// The `pid` of a verbose ContainerStatus's `info` (JSON, as containerd gives it).
fn pid_of(info: &str) -> Option<u32> {
    let v: serde_json::Value = serde_json::from_str(info).ok()?;
    v["pid"]
        .as_u64()
        .and_then(|p| u32::try_from(p).ok())
        .filter(|p| *p > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pid_is_read_from_containerds_verbose_info() {
        assert_eq!(
            pid_of(r#"{"sandboxID":"x","pid":4242,"runtimeSpec":{}}"#),
            Some(4242)
        );
        assert_eq!(pid_of(r#"{"pid":0}"#), None);
        assert_eq!(pid_of("not json"), None);
    }

    #[test]
    fn the_endpoint_takes_a_unix_url_or_a_path() {
        // Only this test sets the variable.
        std::env::set_var("FAULT_CRI_ENDPOINT", "unix:///run/x/c.sock");
        assert_eq!(endpoint(), "/run/x/c.sock");
        std::env::remove_var("FAULT_CRI_ENDPOINT");
        assert_eq!(endpoint(), DEFAULT_ENDPOINT);
    }
}
