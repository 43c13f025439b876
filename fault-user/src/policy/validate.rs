//! From the document as written to a checked [`Policy`]: every range, format and cross-field
//! rule, each refused with the YAML path of the value at fault.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use fault_common::{
    NetRule, CSUM_FIX, CSUM_KEEP, DIST_NORMAL, DIST_PARETO, DIST_PARETONORMAL, DIST_UNIFORM,
    DROP_BERNOULLI, DROP_GILBERT_ELLIOTT, DROP_NONE, PROB_ONE,
};
use ipnet::IpNet;

use super::document::{
    self, Checksum, Direction, Distribution, Document, Header, NetworkRule, PortSpec, Probability,
    Scalar, Target,
};
use super::{
    ClockId, ClockJumps, ClockRule, Invalid, Policy, Protocol, Rule, TargetSpec, API_VERSION, KIND,
    KIND_EXPERIMENT,
};

/// The longest `metadata.name`: it names a directory in bpffs and prefixes pin names, so it
/// stays well inside the kernel's 255-byte file names.
const MAX_POLICY_NAME: usize = 40;
/// The longest rule name: short enough for one column of the status table.
const MAX_RULE_NAME: usize = 32;
/// The longest run: a forgotten fault should not outlive a working day.
const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// Gilbert-Elliott defaults: the textbook simple Gilbert model, where every packet in the
/// bad state is lost and none in the good state is.
const GE_LOSS_BAD_DEFAULT: f64 = 1.0;
const GE_LOSS_GOOD_DEFAULT: f64 = 0.0;

pub(super) fn header(header: &Header) -> Result<(), Invalid> {
    if header.api_version != API_VERSION {
        return Err(Invalid::new(
            "apiVersion",
            format!("expected {API_VERSION}, got {:?}", header.api_version),
        ));
    }
    if header.kind != KIND && header.kind != KIND_EXPERIMENT {
        return Err(Invalid::new(
            "kind",
            format!(
                "expected {KIND} or {KIND_EXPERIMENT}, got {:?}",
                header.kind
            ),
        ));
    }
    Ok(())
}

pub(super) fn policy(document: Document, file: &Path) -> Result<Policy, Invalid> {
    let name = policy_name(&document.metadata.name)?;
    let spec = document.spec;
    let duration = duration(&spec.duration.0)?;

    if spec.targets.is_empty() {
        return Err(Invalid::new("spec.targets", "expected at least one target"));
    }
    let targets = spec
        .targets
        .into_iter()
        .enumerate()
        .map(|(index, target)| self::target(target, &format!("spec.targets[{index}]")))
        .collect::<Result<Vec<_>, _>>()?;

    if spec.network.is_empty() && spec.clock.is_empty() {
        return Err(Invalid::new(
            "spec",
            "expected at least one rule, under network or clock (or both)",
        ));
    }
    let mut rules = Vec::with_capacity(spec.network.len());
    // Name -> index of the rule that has it, to point at the first one on a clash.
    let mut names: HashMap<String, usize> = HashMap::new();
    for (index, raw) in spec.network.into_iter().enumerate() {
        let path = format!("spec.network[{index}]");
        let rule = rule(raw, index, &path)?;
        if let Some(first) = names.insert(rule.name.clone(), index) {
            return Err(Invalid::new(
                format!("{path}.name"),
                format!(
                    "rule name {:?} is already used by spec.network[{first}]; names must be unique",
                    rule.name
                ),
            ));
        }
        rules.push(rule);
    }
    let clock = clock_rules(spec.clock, &names, duration)?;

    Ok(Policy {
        file: file.to_owned(),
        name,
        duration,
        targets,
        rules,
        clock,
        seed: None,
        allow_host_wide: spec.allow_host_wide,
        groups: Vec::new(),
        steps: Vec::new(),
        probes: Vec::new(),
        aborts: Vec::new(),
    })
}

pub(super) fn policy_name(name: &str) -> Result<String, Invalid> {
    // A leading "-" would read as an option (`fault stop --all`, `fault logs -f`).
    let valid = (1..=MAX_POLICY_NAME).contains(&name.len())
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if valid {
        Ok(name.to_owned())
    } else {
        Err(Invalid::new(
            "metadata.name",
            format!(
                "expected 1 to {MAX_POLICY_NAME} characters from a-z, 0-9 and \"-\", not \
                 starting with \"-\" (it names a directory), got {name:?}"
            ),
        ))
    }
}

pub(super) fn duration(text: &str) -> Result<Duration, Invalid> {
    const PATH: &str = "spec.duration";
    let duration = humantime::parse_duration(text.trim()).map_err(|err| {
        Invalid::new(
            PATH,
            format!("expected a duration like 500ms, 30s, 2m or 1h, got {text:?} ({err})"),
        )
    })?;
    if duration.is_zero() {
        return Err(Invalid::new(PATH, "expected a duration longer than zero"));
    }
    if duration > MAX_DURATION {
        return Err(Invalid::new(
            PATH,
            format!(
                "expected at most {}, got {text:?}",
                humantime::format_duration(MAX_DURATION)
            ),
        ));
    }
    Ok(duration)
}

pub(super) fn target(target: Target, path: &str) -> Result<TargetSpec, Invalid> {
    let set = [
        target.cgroup.is_some(),
        target.container.is_some(),
        target.pid.is_some(),
        target.pod.is_some(),
        target.pods.is_some(),
    ];
    if set.iter().filter(|s| **s).count() > 1 {
        return Err(Invalid::new(
            path,
            "expected one of cgroup, container, pid, pod or pods, not several; \
             list each as a target of its own",
        ));
    }
    if let Some(p) = target.pod {
        return pod_target(
            p.namespace,
            Some(p.name),
            Default::default(),
            p.container,
            path,
        );
    }
    if let Some(p) = target.pods {
        return pod_target(p.namespace, None, p.labels, p.container, path);
    }
    match (target.cgroup, target.container, target.pid) {
        (Some(text), None, None) => {
            let path = format!("{path}.cgroup");
            let cgroup = PathBuf::from(&text);
            if text.trim().is_empty() {
                return Err(Invalid::new(
                    path,
                    "expected a cgroup path, got an empty one",
                ));
            }
            // A relative path is resolved under the cgroup2 mount; ".." could leave it, and in
            // an absolute path it only obscures which cgroup is meant.
            if cgroup.components().any(|c| c == Component::ParentDir) {
                return Err(Invalid::new(
                    path,
                    format!("expected a cgroup path without \"..\" components, got {text:?}"),
                ));
            }
            Ok(TargetSpec::Cgroup(cgroup))
        }
        (None, Some(name), None) => {
            if name.trim().is_empty() {
                return Err(Invalid::new(
                    format!("{path}.container"),
                    "expected a container name or id, got an empty one",
                ));
            }
            // podman and docker would read it as an option (`--latest`: whoever's container
            // was created last).
            if name.starts_with('-') {
                return Err(Invalid::new(
                    format!("{path}.container"),
                    format!("expected a container name or id, which never starts with \"-\", got {name:?}"),
                ));
            }
            Ok(TargetSpec::Container(name))
        }
        (None, None, Some(0)) => Err(Invalid::new(
            format!("{path}.pid"),
            "expected a process id above 0, got 0",
        )),
        (None, None, Some(pid)) => Ok(TargetSpec::Pid(pid)),
        _ => Err(Invalid::new(
            path,
            "expected one of cgroup, container, pid, pod or pods",
        )),
    }
}

/// `pod:` (a name) or `pods:` (labels): names as Kubernetes writes them.
fn pod_target(
    namespace: String,
    name: Option<String>,
    labels: std::collections::BTreeMap<String, String>,
    container: Option<String>,
    path: &str,
) -> Result<TargetSpec, Invalid> {
    let kind = if name.is_some() { "pod" } else { "pods" };
    let field = |f: &str| format!("{path}.{kind}.{f}");
    if namespace.trim().is_empty() {
        return Err(Invalid::new(
            field("namespace"),
            "expected a namespace, got an empty one",
        ));
    }
    if name.as_ref().is_some_and(|n| n.trim().is_empty()) {
        return Err(Invalid::new(
            field("name"),
            "expected a pod name, got an empty one",
        ));
    }
    if name.is_none() && labels.is_empty() {
        return Err(Invalid::new(
            field("labels"),
            "expected at least one label; to take every pod of a namespace, name them by a label they share",
        ));
    }
    if container.as_ref().is_some_and(|c| c.trim().is_empty()) {
        return Err(Invalid::new(
            field("container"),
            "expected a container name, got an empty one",
        ));
    }
    Ok(TargetSpec::Pod(crate::cri::PodSelector {
        namespace,
        name,
        labels,
        container,
    }))
}

pub(super) fn rule(raw: NetworkRule, index: usize, path: &str) -> Result<Rule, Invalid> {
    let name = match &raw.name {
        Some(name) => rule_name(name, &format!("{path}.name"))?,
        None => format!("rule-{index}"),
    };
    let (egress, ingress) = match raw.direction {
        Direction::Egress => (true, false),
        Direction::Ingress => (false, true),
        Direction::Both => (true, true),
    };

    let matches = &raw.matches;
    let cidrs = matches
        .cidrs
        .iter()
        .enumerate()
        .map(|(i, text)| cidr(text, &format!("{path}.match.cidrs[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    let ports = matches
        .ports
        .iter()
        .enumerate()
        .map(|(i, spec)| port_range(spec, &format!("{path}.match.ports[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    let local_ports = matches
        .local_ports
        .iter()
        .enumerate()
        .map(|(i, spec)| port_range(spec, &format!("{path}.match.local_ports[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    for (field, given) in [("ports", &ports), ("local_ports", &local_ports)] {
        if !given.is_empty() && matches.protocol == Protocol::Icmp {
            return Err(Invalid::new(
                format!("{path}.match.{field}"),
                format!("icmp has no ports; use protocol tcp, udp or any, or remove {field}"),
            ));
        }
    }

    // Ingress drops run in a cgroup_skb program (see fault-ebpf/src/cgroup_skb.rs); ingress
    // delay, rate, reorder, corruption and duplication at the far end of the target's veth
    // (fault-user/src/net/peer.rs), which the plan finds or refuses.
    let action = action(&raw, path)?;
    Ok(Rule {
        name,
        egress,
        ingress,
        protocol: matches.protocol,
        cidrs,
        ports,
        local_ports,
        loopback: matches.loopback,
        action,
        class: 0,
        window: None,
        ramp: None,
        step: None,
    })
}

pub(super) fn rule_name(name: &str, path: &str) -> Result<String, Invalid> {
    let valid = (1..=MAX_RULE_NAME).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if valid {
        Ok(name.to_owned())
    } else {
        Err(Invalid::new(
            path,
            format!(
                "expected 1 to {MAX_RULE_NAME} characters from A-Z, a-z, 0-9, \"_\", \".\" \
                 and \"-\", got {name:?}"
            ),
        ))
    }
}

/// A CIDR, or a bare address meaning just that host. Host bits are cleared: the trie would
/// ignore them anyway, and clearing them makes equal prefixes compare equal.
fn cidr(text: &str, path: &str) -> Result<IpNet, Invalid> {
    let trimmed = text.trim();
    if let Ok(net) = trimmed.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    if let Ok(addr) = trimmed.parse::<IpAddr>() {
        return Ok(IpNet::from(addr));
    }
    Err(Invalid::new(
        path,
        format!(
            "expected an address or a CIDR like 10.0.0.0/8 or \"fd00::/8\" \
             (prefix at most 32 for IPv4, 128 for IPv6), got {text:?}"
        ),
    ))
}

fn port_range(spec: &PortSpec, path: &str) -> Result<(u16, u16), Invalid> {
    let expected = "expected a port 1-65535 or a range like \"6000-6100\"";
    let range = match spec {
        PortSpec::Number(number) => port(*number).map(|p| (p, p)),
        PortSpec::Text(text) => {
            let parse = |s: &str| s.trim().parse::<i128>().ok().and_then(port);
            match text.split_once('-') {
                Some((first, last)) => parse(first).zip(parse(last)),
                None => parse(text).map(|p| (p, p)),
            }
        }
    };
    let shown = match spec {
        PortSpec::Number(number) => number.to_string(),
        PortSpec::Text(text) => format!("{text:?}"),
    };
    match range {
        None => Err(Invalid::new(path, format!("{expected}, got {shown}"))),
        Some((first, last)) if first > last => Err(Invalid::new(
            path,
            format!("expected a range from low to high like \"{last}-{first}\", got {shown}"),
        )),
        Some(range) => Ok(range),
    }
}

/// Port 0 is refused: in the trie it means "no port".
fn port(number: i128) -> Option<u16> {
    u16::try_from(number).ok().filter(|&p| p != 0)
}

fn action(raw: &NetworkRule, path: &str) -> Result<NetRule, Invalid> {
    if raw.drop.is_none()
        && raw.corrupt.is_none()
        && raw.duplicate.is_none()
        && !raw.partition
        && raw.delay.is_none()
        && raw.rate.is_none()
    {
        return Err(Invalid::new(
            path,
            "expected at least one of drop, corrupt, duplicate, partition, delay or rate",
        ));
    }
    if raw.partition && raw.drop.is_some() {
        return Err(Invalid::new(
            format!("{path}.partition"),
            "partition already drops every packet; use either partition or drop",
        ));
    }

    let mut action = NetRule {
        drop_model: DROP_NONE,
        corrupt_csum: CSUM_FIX,
        ..NetRule::default()
    };
    if raw.partition {
        action.drop_model = DROP_BERNOULLI;
        action.drop_p = PROB_ONE;
    }
    if let Some(drop) = &raw.drop {
        let path = format!("{path}.drop");
        match (&drop.probability, &drop.correlation, &drop.gilbert_elliott) {
            (Some(probability), correlation, None) => {
                action.drop_model = DROP_BERNOULLI;
                action.drop_p = threshold(probability, &format!("{path}.probability"))?;
                action.drop_corr = match correlation {
                    Some(c) => threshold(c, &format!("{path}.correlation"))?,
                    None => 0,
                };
            }
            (None, None, Some(model)) => {
                let path = format!("{path}.gilbert_elliott");
                action.drop_model = DROP_GILBERT_ELLIOTT;
                action.drop_p = threshold(&model.p, &format!("{path}.p"))?;
                action.drop_corr = threshold(&model.r, &format!("{path}.r"))?;
                action.ge_loss_bad = match &model.loss_bad {
                    Some(p) => threshold(p, &format!("{path}.loss_bad"))?,
                    None => to_threshold(GE_LOSS_BAD_DEFAULT),
                };
                action.ge_loss_good = match &model.loss_good {
                    Some(p) => threshold(p, &format!("{path}.loss_good"))?,
                    None => to_threshold(GE_LOSS_GOOD_DEFAULT),
                };
            }
            (None, Some(_), None) => {
                return Err(Invalid::new(
                    path,
                    "correlation needs a probability next to it",
                ))
            }
            (None, None, None) => {
                return Err(Invalid::new(
                    path,
                    "expected probability (with optional correlation) or gilbert_elliott",
                ))
            }
            (_, _, Some(_)) => {
                return Err(Invalid::new(
                    path,
                    "gilbert_elliott sets its own loss probabilities; \
                     it cannot be combined with probability or correlation",
                ))
            }
        }
    }
    if let Some(corrupt) = &raw.corrupt {
        action.corrupt_p = threshold(&corrupt.probability, &format!("{path}.corrupt.probability"))?;
        action.corrupt_csum = match corrupt.checksum {
            Checksum::Fix => CSUM_FIX,
            Checksum::Keep => CSUM_KEEP,
        };
    }
    if let Some(duplicate) = &raw.duplicate {
        action.dup_p = threshold(
            &duplicate.probability,
            &format!("{path}.duplicate.probability"),
        )?;
    }
    timing(raw, path, &mut action)?;
    Ok(action)
}

/// fq drops packets scheduled further ahead than its horizon (10 s unless configured).
const FQ_HORIZON: Duration = Duration::from_secs(10);

/// Delay, jitter, rate and reordering, carried out by EDT and fq (fault-ebpf/src/edt.rs).
fn timing(raw: &NetworkRule, path: &str, action: &mut NetRule) -> Result<(), Invalid> {
    if let Some(delay) = &raw.delay {
        let path = format!("{path}.delay");
        let latency = timing_duration(&delay.latency, &format!("{path}.latency"))?;
        let jitter = match &delay.jitter {
            Some(j) => timing_duration(j, &format!("{path}.jitter"))?,
            None => Duration::ZERO,
        };
        // A normal draw stays within 4 standard deviations but for 1 in 15,000; Pareto's
        // tail is longer, and fq would drop what lands past its horizon.
        let reach = latency + jitter * 4;
        if reach > FQ_HORIZON {
            return Err(Invalid::new(
                path,
                format!(
                    "latency plus 4 x jitter must stay within fq's horizon of {}, got {}",
                    humantime::format_duration(FQ_HORIZON),
                    humantime::format_duration(reach)
                ),
            ));
        }
        action.delay_ns = latency.as_nanos() as u64;
        action.jitter_ns = jitter.as_nanos() as u64;
        action.jitter_dist = match delay.distribution {
            Distribution::Uniform => DIST_UNIFORM,
            Distribution::Normal => DIST_NORMAL,
            Distribution::Pareto => DIST_PARETO,
            Distribution::Paretonormal => DIST_PARETONORMAL,
        };
        if let Some(c) = &delay.correlation {
            action.jitter_corr = threshold(c, &format!("{path}.correlation"))?;
        }
    }
    if let Some(rate) = &raw.rate {
        action.rate_bytes = match rate_bytes(&rate.0) {
            Some(bytes) if bytes <= MAX_RATE_BYTES => bytes,
            parsed => {
                let why = match parsed {
                    Some(_) => "over the limit of 1000gbit (no link is that fast)",
                    None => "expected a rate above zero like 10mbit, 1gbit or 500kbps",
                };
                return Err(Invalid::new(
                    format!("{path}.rate"),
                    format!("{why}, got {:?}", rate.0),
                ));
            }
        };
    }
    if let Some(reorder) = &raw.reorder {
        if action.delay_ns == 0 && action.jitter_ns == 0 {
            return Err(Invalid::new(
                format!("{path}.reorder"),
                "reordering sends some packets ahead of delayed ones; it needs a delay",
            ));
        }
        action.reorder_p = threshold(&reorder.probability, &format!("{path}.reorder.probability"))?;
    }
    Ok(())
}

fn timing_duration(raw: &Scalar, path: &str) -> Result<Duration, Invalid> {
    humantime::parse_duration(raw.0.trim()).map_err(|_| {
        Invalid::new(
            path,
            format!("expected a duration like 100ms or 1s, got {:?}", raw.0),
        )
    })
}

/// The fastest rate a rule may give: 1000 Gbit/s, past any link, so a typo of many digits is
/// refused rather than cut to what a u64 holds.
const MAX_RATE_BYTES: u64 = 125_000_000_000;

/// Bytes per second from tc's notation: `bit`, `kbit`, `mbit`, `gbit` (bits, decimal
/// prefixes) or `bps`, `kbps`, `mbps`, `gbps` (bytes).
fn rate_bytes(text: &str) -> Option<u64> {
    let t = text.trim().to_ascii_lowercase();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = t.split_at(split);
    let number: f64 = number.parse().ok()?;
    let (scale, bits) = match unit {
        "bit" => (1.0, true),
        "kbit" => (1e3, true),
        "mbit" => (1e6, true),
        "gbit" => (1e9, true),
        "bps" => (1.0, false),
        "kbps" => (1e3, false),
        "mbps" => (1e6, false),
        "gbps" => (1e9, false),
        _ => return None,
    };
    let bytes = number * scale / if bits { 8.0 } else { 1.0 };
    // Past u64 the cast would saturate: such a rate is refused above as over the limit.
    (bytes >= 1.0 && bytes.is_finite()).then_some(bytes.min(u64::MAX as f64).round() as u64)
}

/// A probability as the kernel's threshold out of [`PROB_ONE`].
pub(super) fn threshold(raw: &Probability, path: &str) -> Result<u64, Invalid> {
    probability(raw).map(to_threshold).ok_or_else(|| {
        let shown =
            match raw {
                Probability::Number(number) => number.to_string(),
                Probability::Text(text) => format!("{text:?}"),
                Probability::Ramp(_) => return Invalid::new(
                    path,
                    "a ramp ({from, to}) is only allowed as drop.probability in an experiment step",
                ),
            };
        Invalid::new(
            path,
            format!("expected a probability between 0 and 1 (like 0.05 or \"5%\"), got {shown}"),
        )
    })
}

/// The value of a probability in [0, 1], or `None` when it is not one.
fn probability(raw: &Probability) -> Option<f64> {
    let value = match raw {
        Probability::Number(number) => *number,
        Probability::Ramp(_) => return None,
        Probability::Text(text) => {
            let text = text.trim();
            match text.strip_suffix('%') {
                Some(percent) => percent.trim_end().parse::<f64>().ok()? / 100.0,
                None => text.parse::<f64>().ok()?,
            }
        }
    };
    // The range check also refuses NaN, which Rust's float parser accepts as "NaN".
    (0.0..=1.0).contains(&value).then_some(value)
}

/// Rounds to the nearest threshold; 1.0 gives exactly [`PROB_ONE`] because 2^32 is exact in
/// an f64.
fn to_threshold(probability: f64) -> u64 {
    // The product is in [0, 2^32], so the cast neither truncates nor saturates.
    (probability * PROB_ONE as f64).round() as u64
}

// ---- clock rules ------------------------------------------------------------------------------

/// The largest offset: ten years either way keeps every faulted reading far inside the
/// 64-bit nanosecond range the stub computes in.
const MAX_CLOCK_OFFSET_NS: u64 = 10 * 365 * 24 * 3600 * 1_000_000_000;
/// The largest drift: at 50% a clock still moves forward at half speed, and the stub's
/// fixed-point product cannot overflow within a day.
const MAX_DRIFT_PPM: f64 = 500_000.0;
/// The shortest jump interval: below a millisecond a jump is noise, which `jitter` is for.
const MIN_JUMP_EVERY_NS: u64 = 1_000_000;
/// The largest jitter: noise of more than ten seconds is an offset, not noise.
const MAX_JITTER_NS: u64 = 10 * 1_000_000_000;

fn clock_rules(
    raw: Vec<document::ClockRule>,
    network_names: &HashMap<String, usize>,
    duration: Duration,
) -> Result<Vec<ClockRule>, Invalid> {
    let mut rules: Vec<ClockRule> = Vec::with_capacity(raw.len());
    let mut names: HashMap<String, usize> = HashMap::new();
    // Clock -> index of the rule that faults it.
    let mut owners: HashMap<ClockId, usize> = HashMap::new();
    for (index, raw) in raw.into_iter().enumerate() {
        let path = format!("spec.clock[{index}]");
        let rule = clock_rule(raw, index, &path, duration)?;
        let clash = match (
            names.insert(rule.name.clone(), index),
            network_names.get(&rule.name),
        ) {
            (Some(first), _) => Some(format!("spec.clock[{first}]")),
            (None, Some(first)) => Some(format!("spec.network[{first}]")),
            (None, None) => None,
        };
        if let Some(first) = clash {
            return Err(Invalid::new(
                format!("{path}.name"),
                format!(
                    "rule name {:?} is already used by {first}; names must be unique",
                    rule.name
                ),
            ));
        }
        for (i, clock) in rule.clocks.iter().enumerate() {
            if let Some(first) = owners.insert(*clock, index) {
                return Err(Invalid::new(
                    format!("{path}.clocks[{i}]"),
                    format!(
                        "clock {clock} is already faulted by spec.clock[{first}]; \
                         a clock takes one rule"
                    ),
                ));
            }
        }
        rules.push(rule);
    }
    Ok(rules)
}

pub(super) fn clock_rule(
    raw: document::ClockRule,
    index: usize,
    path: &str,
    duration: Duration,
) -> Result<ClockRule, Invalid> {
    let name = match &raw.name {
        Some(name) => rule_name(name, &format!("{path}.name"))?,
        None => format!("clock-{index}"),
    };
    let clocks = clock_list(raw.clocks.as_deref(), &format!("{path}.clocks"))?;
    let offset_ns = match &raw.offset {
        Some(text) => {
            let path = format!("{path}.offset");
            let ns = signed_duration(text, &path)?;
            if ns.unsigned_abs() > MAX_CLOCK_OFFSET_NS {
                return Err(Invalid::new(
                    path,
                    format!("expected at most 10 years either way, got {:?}", text.0),
                ));
            }
            ns
        }
        None => 0,
    };
    let drift_ppm = match &raw.drift {
        Some(text) => ppm(text, &format!("{path}.drift"))?,
        None => 0.0,
    };
    let jumps = match (&raw.jumps, &raw.strobe) {
        (Some(_), Some(_)) => {
            return Err(Invalid::new(
                format!("{path}.strobe"),
                "expected jumps or strobe, not both: a strobe is jumps that flip back",
            ))
        }
        (Some(jumps), None) => Some(clock_jumps(jumps, &format!("{path}.jumps"), duration)?),
        (None, Some(strobe)) => Some(ClockJumps {
            strobe: true,
            ..clock_jumps(strobe, &format!("{path}.strobe"), duration)?
        }),
        (None, None) => None,
    };
    let jitter_ns = match &raw.jitter {
        Some(text) => {
            let path = format!("{path}.jitter");
            let ns = signed_duration(text, &path)?;
            if ns < 0 || ns.unsigned_abs() > MAX_JITTER_NS {
                return Err(Invalid::new(
                    path,
                    format!(
                        "expected an amplitude from 0 to 10s, like 2ms, got {:?}",
                        text.0
                    ),
                ));
            }
            ns as u64
        }
        None => 0,
    };
    if offset_ns == 0 && drift_ppm == 0.0 && jumps.is_none() && jitter_ns == 0 {
        return Err(Invalid::new(
            path,
            "expected at least one of offset, drift, jumps, strobe or jitter with a value other \
             than 0",
        ));
    }
    if !raw.allow_backwards {
        if let Some(clock) = clocks.iter().find(|c| c.never_backwards()) {
            let backwards = if offset_ns < 0 {
                Some(("offset", "a negative offset"))
            } else if jumps.is_some_and(|j| j.strobe) {
                Some(("strobe", "a strobe, which flips back every other interval,"))
            } else if jumps.is_some_and(|j| j.by_ns < 0) {
                Some(("jumps.by", "a backward jump"))
            } else {
                None
            };
            if let Some((field, what)) = backwards {
                return Err(Invalid::new(
                    format!("{path}.{field}"),
                    format!(
                        "{what} makes {clock} go backwards, which programs rely on it never \
                         doing; use a positive value, or set allow_backwards: true"
                    ),
                ));
            }
        }
    }
    Ok(ClockRule {
        name,
        clocks,
        offset_ns,
        drift_ppm,
        jumps,
        jitter_ns,
        allow_backwards: raw.allow_backwards,
    })
}

fn clock_list(raw: Option<&[String]>, path: &str) -> Result<Vec<ClockId>, Invalid> {
    let Some(raw) = raw else {
        return Ok(vec![ClockId::Realtime]);
    };
    if raw.is_empty() {
        return Err(Invalid::new(
            path,
            "expected at least one clock (leave clocks out for realtime)",
        ));
    }
    let mut clocks = Vec::new();
    for (i, name) in raw.iter().enumerate() {
        let item = format!("{path}[{i}]");
        let name = name.trim();
        if name == "all" {
            if raw.len() > 1 {
                return Err(Invalid::new(
                    item,
                    "all already names every clock; list it alone",
                ));
            }
            return Ok(ClockId::ALL.to_vec());
        }
        let Some(clock) = ClockId::from_name(name) else {
            let known = join_names();
            return Err(Invalid::new(
                item,
                format!("expected one of {known} or all, got {name:?}"),
            ));
        };
        if clocks.contains(&clock) {
            return Err(Invalid::new(item, format!("clock {clock} is listed twice")));
        }
        clocks.push(clock);
    }
    Ok(clocks)
}

fn join_names() -> String {
    ClockId::ALL
        .iter()
        .map(|c| c.name())
        .collect::<Vec<_>>()
        .join(", ")
}

fn clock_jumps(
    raw: &document::Jumps,
    path: &str,
    duration: Duration,
) -> Result<ClockJumps, Invalid> {
    let every_path = format!("{path}.every");
    let every = signed_duration(&raw.every, &every_path)?;
    if every < MIN_JUMP_EVERY_NS as i64 {
        return Err(Invalid::new(
            every_path,
            format!(
                "expected an interval of at least 1ms, like 30s, got {:?}",
                raw.every.0
            ),
        ));
    }
    let by_path = format!("{path}.by");
    let by_ns = signed_duration(&raw.by, &by_path)?;
    if by_ns == 0 {
        return Err(Invalid::new(
            by_path,
            "expected a step other than 0, like -1s or 500ms",
        ));
    }
    // Every jump adds up: the total over the whole run must stay as bounded as an offset
    // (a strobe's do not, so this bounds it more than it needs).
    let count = (duration.as_nanos() / every as u128) as u64;
    if u128::from(by_ns.unsigned_abs()) * u128::from(count) > u128::from(MAX_CLOCK_OFFSET_NS) {
        return Err(Invalid::new(
            by_path,
            format!(
                "{count} jumps of {:?} add up to more than 10 years within spec.duration; \
                 jump less often or by less",
                raw.by.0
            ),
        ));
    }
    Ok(ClockJumps {
        every_ns: every as u64,
        by_ns,
        strobe: false,
    })
}

/// A duration with an optional sign (`-2s`, `+1.5s`, `500ms`), or a bare `0`, in ns.
fn signed_duration(text: &Scalar, path: &str) -> Result<i64, Invalid> {
    let raw = text.0.trim();
    let invalid = |why: String| {
        Invalid::new(
            path,
            format!(
                "expected a duration with an optional sign, like -2s, 1.5s or 500ms, got {:?}{why}",
                text.0
            ),
        )
    };
    let (negative, magnitude) = match raw.strip_prefix('-') {
        Some(rest) => (true, rest.trim_start()),
        None => (false, raw.strip_prefix('+').unwrap_or(raw).trim_start()),
    };
    if magnitude == "0" {
        return Ok(0);
    }
    let ns = parse_magnitude(magnitude).map_err(|e| invalid(format!(" ({e})")))?;
    let ns = i64::try_from(ns).map_err(|_| invalid(" (too large)".to_owned()))?;
    Ok(if negative { -ns } else { ns })
}

/// humantime's durations plus decimal fractions (`1.5s`, `0.25ms`), in ns.
fn parse_magnitude(text: &str) -> Result<u128, String> {
    if let Ok(d) = humantime::parse_duration(text) {
        return Ok(d.as_nanos());
    }
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| "a unit is missing".to_owned())?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{number:?} is not a number"))?;
    let scale = match unit.trim() {
        "ns" => 1.0,
        "us" | "µs" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        "m" | "min" => 60e9,
        "h" => 3600e9,
        "d" => 86400e9,
        other => return Err(format!("unknown unit {other:?}")),
    };
    let ns = (value * scale).round();
    if !ns.is_finite() || ns > 1e30 {
        return Err("too large".to_owned());
    }
    Ok(ns as u128)
}

/// `500ppm`, `-20ppm`, `+1.5ppm`, or `0`.
fn ppm(text: &Scalar, path: &str) -> Result<f64, Invalid> {
    let raw = text.0.trim();
    let value = if raw == "0" {
        Some(0.0)
    } else {
        raw.strip_suffix("ppm")
            .and_then(|n| n.trim().parse::<f64>().ok())
    };
    match value {
        Some(v) if v.is_finite() && v.abs() <= MAX_DRIFT_PPM => Ok(v),
        _ => Err(Invalid::new(
            path,
            format!(
                "expected a rate in parts per million from -500000ppm to +500000ppm, \
                 like 500ppm or -20ppm, got {:?}",
                text.0
            ),
        )),
    }
}
