//! The Kubernetes deployment in deploy/kubernetes: every manifest validates offline against
//! the Kubernetes schemas (kubernetes-validate, strict), the pieces agree with one another and
//! with the agent, the experiment in the ConfigMap passes `fault check`, and the image `cargo
//! xtask image` builds runs the binary it was built from.
//!
//! kubernetes-validate (PyPI) and podman are installed by `cargo xtask setup`; without them
//! these tests fail, naming what is missing. The qemu guests have neither and skip this suite
//! (xtask/src/test.rs).

// The image is built by the code `cargo xtask image` runs, compiled in here.
#[path = "../../xtask/src/image/oci.rs"]
mod oci;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use fault_tests::{assert_no_leftovers, fault_bin, require_root, unique_name, workspace_root};
use serde::Deserialize as _;
use serde_yaml::Value;

/// The pinned validator (xtask/src/setup.rs installs this version).
const VALIDATOR_VERSION: &str = "1.37.0";

/// The oldest and the newest Kubernetes whose schemas that version ships.
const KUBERNETES: [&str; 2] = ["1.34.0", "1.37.0"];

/// kustomize's own configuration, not a Kubernetes API object: no schema exists for it.
const KUSTOMIZATION: &str = "kustomization.yaml";

/// What the image test builds and removes again.
const TEST_IMAGE: &str = "localhost/fault-agent:test";

/// The values the API server accepts for `hostPath.type` (core/v1 HostPathType).
const HOST_PATH_TYPES: [&str; 8] = [
    "",
    "DirectoryOrCreate",
    "Directory",
    "FileOrCreate",
    "File",
    "Socket",
    "CharDevice",
    "BlockDevice",
];

fn deploy_dir() -> PathBuf {
    workspace_root().join("deploy/kubernetes")
}

/// The manifests of deploy/kubernetes, kustomization.yaml aside, by file name.
fn manifests() -> Vec<PathBuf> {
    let dir = deploy_dir();
    let mut found: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .filter(|p| !p.ends_with(KUSTOMIZATION))
        .collect();
    found.sort();
    assert!(
        found.len() >= 5,
        "expected namespace, serviceaccount, configmap, daemonset and service manifests in {}, \
         found {found:?}",
        dir.display()
    );
    found
}

/// Every YAML document of `path`.
fn documents(path: &Path) -> Vec<Value> {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|doc| !doc.is_null())
        .collect()
}

/// The single document of deploy/kubernetes/`name`.
fn manifest(name: &str) -> Value {
    let path = deploy_dir().join(name);
    let mut docs = documents(&path);
    assert_eq!(docs.len(), 1, "{} holds one document", path.display());
    docs.remove(0)
}

fn str_of<'a>(value: &'a Value, what: &str) -> &'a str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("expected a string at {what}, got {value:?}"))
}

fn seq_of<'a>(value: &'a Value, what: &str) -> &'a [Value] {
    value
        .as_sequence()
        .unwrap_or_else(|| panic!("expected a list at {what}, got {value:?}"))
}

fn run(command: &mut Command) -> Output {
    command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"))
}

fn shown(out: &Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

// ---- kubernetes-validate -----------------------------------------------------------------

/// `python3 -m kubernetes_validate`, after checking (once) that it is the pinned version.
fn validator() -> Command {
    static CHECKED: OnceLock<()> = OnceLock::new();
    CHECKED.get_or_init(check_validator_version);
    let mut command = Command::new("python3");
    command.args(["-m", "kubernetes_validate", "--strict"]);
    for version in KUBERNETES {
        command.args(["-k", version]);
    }
    command
}

fn check_validator_version() {
    let out = Command::new("python3")
        .args(["-m", "kubernetes_validate", "--version"])
        .stdin(Stdio::null())
        .output();
    let version = match &out {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_string(),
        _ => panic!(
            "kubernetes-validate is not installed (`python3 -m kubernetes_validate --version`: \
             {out:?}): run `cargo xtask setup`"
        ),
    };
    assert_eq!(
        version, VALIDATOR_VERSION,
        "kubernetes-validate {VALIDATOR_VERSION} is the pinned version: run `cargo xtask setup`"
    );
}

/// Validates `file` in strict mode against each version of [`KUBERNETES`]; Err with the
/// validator's words unless every document passed against every version. A document of a
/// kind the validator has no schema for is only a warning to it (exit 0), and a failure here.
fn validate(file: &Path) -> Result<(), String> {
    let out = run(validator().arg(file));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let passed = stdout
        .lines()
        .filter(|l| l.starts_with("INFO ") && l.contains(" passed for resource "))
        .count();
    let expected = documents(file).len() * KUBERNETES.len();
    let other: Vec<&str> = stdout.lines().filter(|l| !l.starts_with("INFO ")).collect();
    if out.status.success() && other.is_empty() && passed == expected && expected > 0 {
        Ok(())
    } else {
        Err(format!(
            "{}: {passed} of {expected} validations passed:\n{}",
            file.display(),
            shown(&out)
        ))
    }
}

#[test]
fn every_manifest_validates_against_the_kubernetes_schemas() {
    let refused: Vec<String> = manifests()
        .iter()
        .filter_map(|file| validate(file).err())
        .collect();
    assert!(
        refused.is_empty(),
        "kubernetes-validate --strict (Kubernetes {KUBERNETES:?}) refused:\n{}",
        refused.join("\n")
    );
}

/// The check above is only worth something if it can fail: a misspelt field (strict mode), a
/// wrong type and an unknown kind are each refused.
#[test]
fn the_validation_refuses_broken_manifests() {
    let good = fs::read_to_string(deploy_dir().join("daemonset.yaml")).expect("daemonset.yaml");
    let scratch = tempfile::tempdir().expect("temporary directory");
    let broken = [
        (
            "misspelt-field",
            good.replacen("hostPID: true", "hostPid: true", 1),
        ),
        (
            "wrong-type",
            good.replacen(
                "terminationGracePeriodSeconds: 30",
                "terminationGracePeriodSeconds: thirty",
                1,
            ),
        ),
        (
            "unknown-kind",
            good.replacen("kind: DaemonSet", "kind: DaemonSett", 1),
        ),
    ];
    for (name, text) in broken {
        assert_ne!(text, good, "the {name} edit applies to daemonset.yaml");
        let file = scratch.path().join(format!("{name}.yaml"));
        fs::write(&file, text).expect("write the broken manifest");
        let verdict = validate(&file);
        assert!(
            verdict.is_err(),
            "the {name} manifest was accepted: the check cannot fail"
        );
    }
}

#[test]
fn the_kustomization_lists_every_manifest() {
    let kustomization = manifest(KUSTOMIZATION);
    let listed: BTreeSet<&str> = seq_of(&kustomization["resources"], "resources")
        .iter()
        .map(|r| str_of(r, "resources[]"))
        .collect();
    let present: Vec<String> = manifests()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    let present: BTreeSet<&str> = present.iter().map(String::as_str).collect();
    assert_eq!(
        listed, present,
        "{KUSTOMIZATION} lists exactly the manifests beside it"
    );
}

// ---- the pieces against one another --------------------------------------------------------

/// The DaemonSet runs the image `cargo xtask image` tags by default, with the agent on the
/// ConfigMap's mount and its metrics on the port the Service names, under exactly the
/// capabilities fault-user/src/sys/caps.rs checks for.
#[test]
fn the_daemonset_runs_the_agent_on_the_configmap() {
    let daemonset = manifest("daemonset.yaml");
    let pod = &daemonset["spec"]["template"]["spec"];
    let containers = seq_of(&pod["containers"], "containers");
    assert_eq!(containers.len(), 1, "one container, the agent");
    let agent = &containers[0];

    let expected_image = oci::default_tag(&fault_bin()).expect("the image's default tag");
    assert_eq!(
        str_of(&agent["image"], "image"),
        expected_image,
        "the DaemonSet runs what `cargo xtask image` builds from this fault"
    );

    let configmap = manifest("configmap.yaml");
    let configmap_name = str_of(&configmap["metadata"]["name"], "metadata.name");
    let volume = seq_of(&pod["volumes"], "volumes")
        .iter()
        .find(|v| v["configMap"]["name"].as_str() == Some(configmap_name))
        .unwrap_or_else(|| panic!("no volume of ConfigMap {configmap_name}"));
    let mount = seq_of(&agent["volumeMounts"], "volumeMounts")
        .iter()
        .find(|m| m["name"] == volume["name"])
        .expect("the ConfigMap's volume is mounted");
    let experiments = str_of(&mount["mountPath"], "mountPath");

    let args: Vec<&str> = seq_of(&agent["args"], "args")
        .iter()
        .map(|a| str_of(a, "args[]"))
        .collect();
    let metrics = args
        .iter()
        .position(|a| *a == "--metrics")
        .and_then(|i| args.get(i + 1))
        .expect("the agent serves metrics (--metrics ADDR)");
    assert_eq!(
        args,
        ["agent", "--dir", experiments, "--metrics", metrics],
        "the agent watches the ConfigMap's mount"
    );
    let metrics_port: u64 = metrics
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .unwrap_or_else(|| panic!("--metrics {metrics} ends in a port"));

    let service = manifest("service.yaml");
    let service_port = &seq_of(&service["spec"]["ports"], "spec.ports")[0];
    let target = str_of(&service_port["targetPort"], "targetPort");
    let container_port = seq_of(&agent["ports"], "ports")
        .iter()
        .find(|p| p["name"].as_str() == Some(target))
        .unwrap_or_else(|| panic!("the Service's targetPort {target} is a port of the agent"));
    assert_eq!(container_port["containerPort"].as_u64(), Some(metrics_port));
    assert_eq!(service_port["port"].as_u64(), Some(metrics_port));
    assert_eq!(
        service["spec"]["selector"], daemonset["spec"]["template"]["metadata"]["labels"],
        "the Service selects the agents"
    );

    let security = &agent["securityContext"];
    assert_eq!(security["privileged"].as_bool(), Some(false));
    let drop: Vec<&str> = seq_of(&security["capabilities"]["drop"], "capabilities.drop")
        .iter()
        .map(|c| str_of(c, "drop[]"))
        .collect();
    assert_eq!(drop, ["ALL"]);
    let add: BTreeSet<&str> = seq_of(&security["capabilities"]["add"], "capabilities.add")
        .iter()
        .map(|c| str_of(c, "add[]"))
        .collect();
    assert_eq!(
        add,
        BTreeSet::from(["BPF", "KILL", "NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE"]),
        "the capabilities caps.rs checks for apply and stop, as root"
    );
    assert_eq!(pod["hostPID"].as_bool(), Some(true));

    // The schemas take a hostPath's type for any string (the API server checks the value),
    // so it is checked here, with where each node directory is mounted.
    let mut host_paths = BTreeSet::new();
    for volume in seq_of(&pod["volumes"], "volumes") {
        let Some(host) = volume.get("hostPath") else {
            continue;
        };
        let path = str_of(&host["path"], "hostPath.path");
        let kind = str_of(&host["type"], "hostPath.type");
        assert!(
            HOST_PATH_TYPES.contains(&kind),
            "hostPath {path}: type {kind} is none of {HOST_PATH_TYPES:?}"
        );
        let mount = seq_of(&agent["volumeMounts"], "volumeMounts")
            .iter()
            .find(|m| m["name"] == volume["name"])
            .unwrap_or_else(|| panic!("hostPath {path} is mounted"));
        assert_eq!(
            str_of(&mount["mountPath"], "mountPath"),
            path,
            "the node's {path} is where fault looks for it"
        );
        host_paths.insert(path);
    }
    assert_eq!(
        host_paths,
        BTreeSet::from([
            "/run/containerd",
            "/run/fault",
            "/sys/fs/bpf",
            "/sys/fs/cgroup"
        ])
    );
}

/// The experiments the ConfigMap carries, each by its key, written to a directory the way
/// the kubelet mounts them.
#[test]
fn the_example_experiment_passes_fault_check() {
    let configmap = manifest("configmap.yaml");
    let data = configmap["data"]
        .as_mapping()
        .expect("the ConfigMap has data");
    let scratch = tempfile::tempdir().expect("temporary directory");
    let mut files = Vec::new();
    for (key, text) in data {
        let key = str_of(key, "data key");
        assert!(
            key.ends_with(".yaml") || key.ends_with(".yml"),
            "the agent reads *.yaml and *.yml only; data key {key} would be passed over"
        );
        let file = scratch.path().join(key);
        fs::write(&file, str_of(text, key)).expect("write the experiment");
        files.push(file);
    }
    assert!(!files.is_empty(), "the ConfigMap carries an experiment");
    let out = run(Command::new(fault_bin()).arg("check").args(&files));
    assert!(out.status.success(), "fault check: {}", shown(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        said.lines().filter(|l| l.contains(": ok")).count(),
        files.len(),
        "fault check passes each of {files:?}: {said}"
    );
}

// ---- the image -----------------------------------------------------------------------------

/// An image removed (`podman rmi`) when dropped.
struct Image(&'static str);

impl Image {
    fn build(binary: &Path, tag: &'static str) -> Image {
        remove_image(tag);
        let image = Image(tag);
        oci::build(binary, tag).unwrap_or_else(|e| panic!("building {tag}: {e:#}"));
        image
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        remove_image(self.0);
    }
}

fn remove_image(tag: &str) {
    let exists = Command::new("podman")
        .args(["image", "exists", tag])
        .status()
        .is_ok_and(|s| s.success());
    if exists {
        match Command::new("podman")
            .args(["rmi", "--force", tag])
            .output()
        {
            Ok(out) if out.status.success() => {}
            other => eprintln!("cleanup: podman rmi {tag}: {other:?}"),
        }
    }
}

#[test]
fn the_image_runs_the_binary_it_was_built_from() {
    require_root();
    let podman = Command::new("podman").arg("--version").output();
    assert!(
        podman.as_ref().is_ok_and(|o| o.status.success()),
        "podman is not installed ({podman:?}): run `cargo xtask setup`"
    );
    let binary = fault_bin();
    let started = std::time::Instant::now();
    let image = Image::build(&binary, TEST_IMAGE);
    eprintln!("built {} in {:.1?}", image.0, started.elapsed());

    let config = run(Command::new("podman").args([
        "image",
        "inspect",
        "--format",
        "{{json .Config.Entrypoint}} {{json .Config.Cmd}}",
        image.0,
    ]));
    assert!(
        config.status.success(),
        "podman image inspect: {}",
        shown(&config)
    );
    let daemonset = manifest("daemonset.yaml");
    let args = seq_of(
        &daemonset["spec"]["template"]["spec"]["containers"][0]["args"],
        "args",
    );
    let dir = str_of(&args[2], "args[2]");
    assert_eq!(
        String::from_utf8_lossy(&config.stdout).trim(),
        format!(r#"["/usr/local/bin/fault"] ["agent","--dir","{dir}"]"#),
        "the image runs the agent on the DaemonSet's experiment directory by default"
    );

    // No network: a bridge would make netavark change the host's forwarding and iptables.
    let name = unique_name("fault-t-image");
    let ran = run(Command::new("podman").args([
        "run",
        "--rm",
        "--network",
        "none",
        "--name",
        &name,
        image.0,
        "--version",
    ]));
    assert!(
        ran.status.success(),
        "podman run {}: {}",
        image.0,
        shown(&ran)
    );
    let host = run(Command::new(&binary).arg("--version"));
    assert!(
        host.status.success(),
        "{} --version: {}",
        binary.display(),
        shown(&host)
    );
    assert_eq!(
        String::from_utf8_lossy(&ran.stdout),
        String::from_utf8_lossy(&host.stdout),
        "the image's fault is {}",
        binary.display()
    );
    assert!(
        String::from_utf8_lossy(&ran.stdout).starts_with("fault "),
        "fault --version names fault: {}",
        shown(&ran)
    );
    drop(image);
    let left = run(Command::new("podman").args(["image", "exists", TEST_IMAGE]));
    assert!(!left.status.success(), "{TEST_IMAGE} was removed");
    assert_no_leftovers();
}
