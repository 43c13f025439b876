//! From the document as written to a checked [`Policy`]: every range, format and cross-field
//! rule, each refused with the YAML path of the value at fault.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use fault_common::{
    NetRule, CSUM_FIX, CSUM_KEEP, DROP_BERNOULLI, DROP_GILBERT_ELLIOTT, DROP_NONE, PROB_ONE,
};
use ipnet::IpNet;

use super::document::{
    Checksum, Direction, Document, Header, NetworkRule, PortSpec, Probability, Target,
};
use super::{Invalid, Policy, Protocol, Rule, TargetSpec, API_VERSION, KIND};

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
    if header.kind != KIND {
        return Err(Invalid::new(
            "kind",
            format!("expected {KIND}, got {:?}", header.kind),
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

    if spec.network.is_empty() {
        return Err(Invalid::new(
            "spec.network",
            "expected at least one network rule",
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

    Ok(Policy {
        file: file.to_owned(),
        name,
        duration,
        targets,
        rules,
    })
}

fn policy_name(name: &str) -> Result<String, Invalid> {
    let valid = (1..=MAX_POLICY_NAME).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if valid {
        Ok(name.to_owned())
    } else {
        Err(Invalid::new(
            "metadata.name",
            format!(
                "expected 1 to {MAX_POLICY_NAME} characters from a-z, 0-9 and \"-\" \
                 (it names a directory), got {name:?}"
            ),
        ))
    }
}

fn duration(text: &str) -> Result<Duration, Invalid> {
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

fn target(target: Target, path: &str) -> Result<TargetSpec, Invalid> {
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
            Ok(TargetSpec::Container(name))
        }
        (None, None, Some(0)) => Err(Invalid::new(
            format!("{path}.pid"),
            "expected a process id above 0, got 0",
        )),
        (None, None, Some(pid)) => Ok(TargetSpec::Pid(pid)),
        (None, None, None) => Err(Invalid::new(
            path,
            "expected one of cgroup, container or pid",
        )),
        _ => Err(Invalid::new(
            path,
            "expected one of cgroup, container or pid, not several; \
             list each as a target of its own",
        )),
    }
}

fn rule(raw: NetworkRule, index: usize, path: &str) -> Result<Rule, Invalid> {
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
    if !ports.is_empty() && matches.protocol == Protocol::Icmp {
        return Err(Invalid::new(
            format!("{path}.match.ports"),
            "icmp has no ports; use protocol tcp, udp or any, or remove ports",
        ));
    }

    let action = action(&raw, path)?;
    if ingress {
        // Ingress faults run in a cgroup_skb program (see fault-ebpf/src/cgroup_skb.rs), which
        // may drop a packet but not rewrite or clone it.
        for (field, present) in [
            ("corrupt", raw.corrupt.is_some()),
            ("duplicate", raw.duplicate.is_some()),
        ] {
            if present {
                return Err(Invalid::new(
                    format!("{path}.{field}"),
                    format!(
                        "{field} works on egress only (packets the target sends); \
                         use direction: egress here, and put ingress drops in a rule of their own"
                    ),
                ));
            }
        }
    }
    Ok(Rule {
        name,
        egress,
        ingress,
        protocol: matches.protocol,
        cidrs,
        ports,
        action,
    })
}

fn rule_name(name: &str, path: &str) -> Result<String, Invalid> {
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
    if raw.drop.is_none() && raw.corrupt.is_none() && raw.duplicate.is_none() && !raw.partition {
        return Err(Invalid::new(
            path,
            "expected at least one of drop, corrupt, duplicate or partition",
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
    Ok(action)
}

/// A probability as the kernel's threshold out of [`PROB_ONE`].
fn threshold(raw: &Probability, path: &str) -> Result<u64, Invalid> {
    probability(raw).map(to_threshold).ok_or_else(|| {
        let shown = match raw {
            Probability::Number(number) => number.to_string(),
            Probability::Text(text) => format!("{text:?}"),
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
