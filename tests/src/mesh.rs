//! N sandbox hosts in a full mesh, for partitions between groups: each host is a network
//! namespace and a cgroup with a resident process (so fault finds the host's namespace, and
//! its addresses, through the cgroup), every two hosts share a veth pair of their own, and
//! who reaches whom is measured on real packets.

use std::fmt;
use std::net::IpAddr;
use std::process::Command;
use std::time::Duration;

use crate::{anchor, probe, probe_json, spawn_in, Cgroup, ChildGuard, Netns, VethPair};

/// Datagrams each host sends to each other host per measurement.
const DATAGRAMS: u64 = 5;
/// Between two of them: five go out in 80 ms.
const DATAGRAM_INTERVAL_US: &str = "20000";
/// Past the last send, how long the receivers keep counting: a veth delivers in
/// microseconds, and this leaves room for a slow (emulated) machine.
const SETTLE: Duration = Duration::from_millis(200);

/// One sandbox host. Fields drop in order: the resident process, its cgroup, the namespace.
pub struct MeshHost {
    _anchor: ChildGuard,
    pub name: String,
    pub cgroup: Cgroup,
    pub ns: Netns,
}

/// Hosts in a full mesh. The links go first on drop (the namespaces would take them anyway).
pub struct Mesh {
    /// (i, j, the pair), i < j; end A is in host i.
    links: Vec<(usize, usize, VethPair)>,
    hosts: Vec<MeshHost>,
}

/// Hosts named `names` (in that order), in a full mesh: the link of hosts i < j is
/// `<net>.<k>.0/24`, k counting the pairs, with host i at `<net>.<k>.<i + 1>` and host j at
/// `<net>.<k>.<j + 1>`: an address's last byte says whose it is.
pub fn mesh(label: &str, net: &str, names: &[&str]) -> Mesh {
    let hosts: Vec<MeshHost> = names
        .iter()
        .map(|name| {
            let ns = Netns::new(&format!("{label}-{name}"));
            let cgroup = Cgroup::new(&format!("{label}-{name}"));
            MeshHost {
                _anchor: anchor(&cgroup, &ns),
                name: (*name).to_string(),
                cgroup,
                ns,
            }
        })
        .collect();
    let mut links = Vec::new();
    for i in 0..hosts.len() {
        for j in i + 1..hosts.len() {
            let k = links.len();
            let pair = VethPair::new(
                &hosts[i].ns,
                &format!("{net}.{k}.{}/24", i + 1),
                &hosts[j].ns,
                &format!("{net}.{k}.{}/24", j + 1),
            );
            links.push((i, j, pair));
        }
    }
    Mesh { links, hosts }
}

impl Mesh {
    pub fn hosts(&self) -> &[MeshHost] {
        &self.hosts
    }

    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// Host `of`'s address on the link it shares with host `towards`.
    pub fn addr(&self, of: usize, towards: usize) -> IpAddr {
        assert_ne!(of, towards, "a host has no link to itself");
        let (_, _, pair) = self
            .links
            .iter()
            .find(|(i, j, _)| (*i, *j) == (of.min(towards), of.max(towards)))
            .expect("every two hosts share a link");
        match of < towards {
            true => pair.ip_a(),
            false => pair.ip_b(),
        }
    }

    /// `spec.groups` of an experiment: a group per host, named after it, holding its cgroup
    /// (lines indented for their place under `groups:`).
    pub fn groups_yaml(&self, indent: usize) -> String {
        self.hosts
            .iter()
            .map(|h| {
                format!(
                    "{:indent$}{}: [{{cgroup: {}}}]\n",
                    "",
                    h.name,
                    h.cgroup.path().display()
                )
            })
            .collect()
    }

    /// Who reaches whom, one way: every host sends [`DATAGRAMS`] numbered datagrams to every
    /// other host's address on their shared link, from its cgroup and namespace, to a
    /// counter in the receiver's cgroup and namespace on `port`; all pairs at once.
    pub fn reach(&self, port: u16) -> Reach {
        let mut counters: Vec<ChildGuard> = self
            .hosts
            .iter()
            .map(|h| {
                spawn_in(
                    Some(&h.cgroup),
                    Some(&h.ns),
                    probe(&["udp-tally", "--bind", &format!("0.0.0.0:{port}")]),
                )
            })
            .collect();
        for c in &mut counters {
            c.wait_listening(port);
        }
        let mut senders = Vec::new();
        for (i, h) in self.hosts.iter().enumerate() {
            for j in (0..self.len()).filter(|&j| j != i) {
                let to = format!("{}:{port}", self.addr(j, i));
                let cmd: Command = probe(&[
                    "udp-send",
                    "--to",
                    &to,
                    "--count",
                    &DATAGRAMS.to_string(),
                    "--interval-us",
                    DATAGRAM_INTERVAL_US,
                ]);
                senders.push(spawn_in(Some(&h.cgroup), Some(&h.ns), cmd));
            }
        }
        for s in senders {
            probe_json(&s.wait_output(Duration::from_secs(30)));
        }
        std::thread::sleep(SETTLE);
        let mut arrived = vec![vec![0u64; self.len()]; self.len()];
        for (j, c) in counters.into_iter().enumerate() {
            c.signal(libc::SIGTERM);
            let tally = probe_json(&c.wait_output(Duration::from_secs(10)));
            let from = tally["from"].as_object().cloned().unwrap_or_default();
            for (source, n) in from {
                let ip: IpAddr = source
                    .parse()
                    .unwrap_or_else(|e| panic!("udp-tally gave source `{source}`: {e}"));
                let i = (0..self.len())
                    .find(|&i| i != j && self.addr(i, j) == ip)
                    .unwrap_or_else(|| {
                        panic!(
                            "host {} heard from {ip}, no neighbour's address on its link: {tally}",
                            self.hosts[j].name
                        )
                    });
                arrived[i][j] = n.as_u64().expect("a count");
            }
        }
        Reach {
            names: self.hosts.iter().map(|h| h.name.clone()).collect(),
            arrived,
            sent: DATAGRAMS,
        }
    }
}

/// One-way reachability: `arrived[i][j]` of `sent` datagrams from host i reached host j.
#[derive(Debug, Clone)]
pub struct Reach {
    pub names: Vec<String>,
    pub arrived: Vec<Vec<u64>>,
    pub sent: u64,
}

impl Reach {
    /// Every ordered pair whose outcome is not `expected(from, to)` (true: all datagrams
    /// arrive, false: none), as "h1 -> h2: 0/5 arrived, expected all".
    pub fn differences(&self, expected: impl Fn(usize, usize) -> bool) -> Vec<String> {
        let n = self.names.len();
        let mut out = Vec::new();
        for i in 0..n {
            for j in (0..n).filter(|&j| j != i) {
                let got = self.arrived[i][j];
                let want_all = expected(i, j);
                let ok = match want_all {
                    true => got == self.sent,
                    false => got == 0,
                };
                if !ok {
                    out.push(format!(
                        "{} -> {}: {got}/{} arrived, expected {}",
                        self.names[i],
                        self.names[j],
                        self.sent,
                        if want_all { "all" } else { "none" }
                    ));
                }
            }
        }
        out
    }
}

/// A grid, rows the senders and columns the receivers: `ok` all arrived, `--` none, else
/// the count.
impl fmt::Display for Reach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let corner = "from\\to";
        let longest = self.names.iter().map(String::len).max().unwrap_or(0);
        let first = longest.max(corner.len()) + 2;
        let width = longest.max(3) + 2;
        write!(f, "{corner:first$}")?;
        for name in &self.names {
            write!(f, "{name:>width$}")?;
        }
        for (i, row) in self.arrived.iter().enumerate() {
            write!(f, "\n{:first$}", self.names[i])?;
            for (j, &got) in row.iter().enumerate() {
                let cell = match got {
                    _ if i == j => ".".to_string(),
                    0 => "--".to_string(),
                    n if n == self.sent => "ok".to_string(),
                    n => format!("{n}/{}", self.sent),
                };
                write!(f, "{cell:>width$}")?;
            }
        }
        Ok(())
    }
}
