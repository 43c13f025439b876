//! Partitions between groups as directed cuts: "nothing from group A reaches group B". Each
//! form (`between`, `groups`, `isolate`, and Jepsen's topologies over a list of nodes) is a
//! set of cuts; the plan turns each into drop rules on both sides once the groups'
//! addresses are known.

use std::collections::BTreeSet;

use super::experiment::group_index;
use super::experiment_document::{Partition, Topology};
use super::{Group, Invalid};

/// Packets from group `from` to group `to` are dropped (indices into `Policy::groups`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cut {
    pub from: usize,
    pub to: usize,
}

pub(super) fn cuts(p: &Partition, groups: &[Group], path: &str) -> Result<Vec<Cut>, Invalid> {
    let forms = [
        p.between.is_some(),
        p.groups.is_some(),
        p.isolate.is_some(),
        p.topology.is_some(),
    ];
    if forms.iter().filter(|f| **f).count() != 1 {
        return Err(Invalid::new(
            path,
            "expected exactly one of between, groups, isolate or topology (with of)",
        ));
    }
    if p.one_way && p.between.is_none() {
        return Err(Invalid::new(
            format!("{path}.one_way"),
            "one_way goes with between only",
        ));
    }
    if p.of.is_some() != p.topology.is_some() {
        return Err(Invalid::new(path, "topology and of go together"));
    }
    let names = |list: &[String], at: &str| -> Result<Vec<usize>, Invalid> {
        let mut out: Vec<usize> = Vec::new();
        for (i, n) in list.iter().enumerate() {
            let g = group_index(groups, n, &format!("{path}.{at}[{i}]"))?;
            if out.contains(&g) {
                return Err(Invalid::new(
                    format!("{path}.{at}[{i}]"),
                    format!("group {n:?} is named twice"),
                ));
            }
            out.push(g);
        }
        Ok(out)
    };
    let cuts = if let Some(between) = &p.between {
        let g = names(between, "between")?;
        if g.len() != 2 {
            return Err(Invalid::new(
                format!("{path}.between"),
                format!("expected two groups, got {}", g.len()),
            ));
        }
        let mut c = vec![Cut {
            from: g[0],
            to: g[1],
        }];
        if !p.one_way {
            c.push(Cut {
                from: g[1],
                to: g[0],
            });
        }
        c
    } else if let Some(sides) = &p.groups {
        sides_cuts(sides, &names, path)?
    } else if let Some(one) = &p.isolate {
        let g = group_index(groups, one, &format!("{path}.isolate"))?;
        if groups.len() < 2 {
            return Err(Invalid::new(
                format!("{path}.isolate"),
                "there is no other group to isolate it from",
            ));
        }
        let others: Vec<usize> = (0..groups.len()).filter(|&o| o != g).collect();
        apart(&[g], &others)
    } else {
        let of = names(p.of.as_deref().unwrap_or_default(), "of")?;
        topology(p.topology.expect("checked above"), &of, path)?
    };
    Ok(cuts
        .into_iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect())
}

/// Every group of one side cut both ways from every group of the other.
fn apart(a: &[usize], b: &[usize]) -> Vec<Cut> {
    let mut out = Vec::new();
    for &x in a {
        for &y in b {
            out.push(Cut { from: x, to: y });
            out.push(Cut { from: y, to: x });
        }
    }
    out
}

type Names<'a> = dyn Fn(&[String], &str) -> Result<Vec<usize>, Invalid> + 'a;

fn sides_cuts(sides: &[Vec<String>], names: &Names, path: &str) -> Result<Vec<Cut>, Invalid> {
    if sides.len() < 2 {
        return Err(Invalid::new(
            format!("{path}.groups"),
            "expected at least two sides, like [[a, b], [c]]",
        ));
    }
    let mut resolved: Vec<Vec<usize>> = Vec::new();
    for (i, side) in sides.iter().enumerate() {
        let s = names(side, &format!("groups[{i}]"))?;
        if s.is_empty() {
            return Err(Invalid::new(
                format!("{path}.groups[{i}]"),
                "expected at least one group",
            ));
        }
        if let Some(g) = s.iter().find(|g| resolved.iter().any(|r| r.contains(g))) {
            return Err(Invalid::new(
                format!("{path}.groups[{i}]"),
                format!("group {g} is on two sides"),
            ));
        }
        resolved.push(s);
    }
    let mut out = Vec::new();
    for (i, a) in resolved.iter().enumerate() {
        for b in &resolved[i + 1..] {
            out.extend(apart(a, b));
        }
    }
    Ok(out)
}

/// Which nodes each node may hear from, as Jepsen defines the topology; every other pair is
/// a cut towards the listener.
fn topology(kind: Topology, of: &[usize], path: &str) -> Result<Vec<Cut>, Invalid> {
    let n = of.len();
    let least = match kind {
        Topology::MajoritiesRing => 3,
        Topology::Bridge => 3,
    };
    if n < least {
        return Err(Invalid::new(
            format!("{path}.of"),
            format!("expected at least {least} groups, got {n}"),
        ));
    }
    let hears = |i: usize, j: usize| match kind {
        Topology::MajoritiesRing => ring_sees(n, i, j),
        Topology::Bridge => bridge_sees(n, i, j),
    };
    let mut out = Vec::new();
    for i in 0..n {
        for j in (0..n).filter(|&j| j != i && !hears(i, j)) {
            out.push(Cut {
                from: of[j],
                to: of[i],
            });
        }
    }
    Ok(out)
}

/// Majorities ring: node `i` sees the majority of nodes nearest to it around the ring
/// (itself, then neighbours on both sides), so every node sees a majority and no two see
/// the same one. With 5 nodes that is itself and its two ring neighbours.
pub(super) fn ring_sees(n: usize, i: usize, j: usize) -> bool {
    let majority = n / 2 + 1;
    let behind = (majority - 1) / 2;
    let ahead = majority - 1 - behind;
    let forward = (j + n - i) % n;
    let backward = (i + n - j) % n;
    forward <= ahead || backward <= behind
}

/// Bridge: two halves that cannot see each other, and the node in the middle that sees both.
pub(super) fn bridge_sees(n: usize, i: usize, j: usize) -> bool {
    let middle = n / 2;
    let side = |k: usize| k.cmp(&middle);
    i == middle || j == middle || side(i) == side(j)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(n: usize, sees: fn(usize, usize, usize) -> bool) -> Vec<Vec<usize>> {
        (0..n)
            .map(|i| (0..n).filter(|&j| j != i && sees(n, i, j)).collect())
            .collect()
    }

    #[test]
    fn a_ring_of_five_sees_its_two_neighbours() {
        assert_eq!(
            matrix(5, ring_sees),
            vec![vec![1, 4], vec![0, 2], vec![1, 3], vec![2, 4], vec![0, 3]]
        );
    }

    #[test]
    fn every_node_of_a_ring_sees_a_majority_and_no_two_the_same() {
        for n in 3..=9 {
            let mut seen: Vec<Vec<usize>> = Vec::new();
            for i in 0..n {
                let mut view: Vec<usize> = (0..n).filter(|&j| ring_sees(n, i, j)).collect();
                view.sort_unstable();
                assert!(view.len() > n / 2, "n={n} node {i} sees {view:?}");
                assert!(!seen.contains(&view), "n={n}: {view:?} twice");
                seen.push(view);
            }
        }
    }

    #[test]
    fn a_bridge_of_five_has_two_halves_and_a_middle_that_sees_both() {
        assert_eq!(
            matrix(5, bridge_sees),
            vec![
                vec![1, 2],
                vec![0, 2],
                vec![0, 1, 3, 4],
                vec![2, 4],
                vec![2, 3]
            ]
        );
    }
}
