//! Network steps switching on and off by map updates alone: the programs stay attached for
//! the whole run, and the trie holds the entries of the rules that are on now. A switch
//! writes the entries that are new or point elsewhere first and removes the stale ones after,
//! so every packet finds either the old rule or the new one. Ramps rewrite their rule's
//! drop threshold in RULES.

use std::{collections::HashMap, time::Duration};

use anyhow::Context as _;
use aya::{
    maps::{lpm_trie::Key, Array, LpmTrie},
    Ebpf,
};
use fault_common::{maps, NetRule, RuleKey};

use crate::{
    plan::TrieEntries,
    policy::{self, Rule},
    timeline::Window,
};

/// How often a ramp's threshold moves: a 10 s ramp takes 100 small steps.
const RAMP_STEP: Duration = Duration::from_millis(100);

/// What the trie and RULES hold now.
#[derive(Default)]
pub struct Switch {
    on: Vec<bool>,
    installed: HashMap<(u32, RuleKey), u32>,
    /// The drop threshold last written for each ramped rule.
    ramped: HashMap<usize, u64>,
    /// How many times a step went on or off, for the live view.
    pub switches: u64,
}

fn is_on(rule: &Rule, t: Duration) -> bool {
    rule.window.is_none_or(|w| w.is_on(t))
}

/// The rules that are on at `t`.
pub fn on_at(rules: &[Rule], t: Duration) -> Vec<bool> {
    rules.iter().map(|r| is_on(r, t)).collect()
}

/// The trie's entries with only the rules `on` in it.
pub fn entries(rules: &[Rule], on: &[bool]) -> anyhow::Result<TrieEntries> {
    Ok(policy::lpm_entries_of(rules, |i| on[i])?)
}

/// A rule's action at `t`: its ramp moved along, if it has one.
pub fn action_at(rule: &Rule, t: Duration) -> NetRule {
    let mut action = rule.action;
    if let (Some((from, to)), Some(w)) = (rule.ramp, rule.window) {
        let p = w.progress(t);
        action.drop_p = (from as f64 + (to as f64 - from as f64) * p).round() as u64;
    }
    action
}

impl Switch {
    /// The state `load` put in the maps: `entries` for the rules `on`.
    pub fn loaded(on: Vec<bool>, entries: &TrieEntries) -> Switch {
        Switch {
            on,
            installed: entries.iter().map(|(p, k, i)| ((*p, *k), *i)).collect(),
            ..Default::default()
        }
    }

    /// Brings the maps to `t`; returns when the next change is due.
    pub fn apply(
        &mut self,
        ebpf: &mut Ebpf,
        rules: &[Rule],
        t: Duration,
    ) -> anyhow::Result<Option<Duration>> {
        let on = on_at(rules, t);
        if on != self.on {
            self.retrie(ebpf, rules, &on)?;
            self.switches += on.iter().zip(&self.on).filter(|(a, b)| a != b).count() as u64;
            self.on = on;
        }
        self.ramp(ebpf, rules, t)?;
        Ok(next_change(rules, t))
    }

    /// Writes the trie again for the rules that are on now, after their addresses changed.
    pub fn rematch(&mut self, ebpf: &mut Ebpf, rules: &[Rule]) -> anyhow::Result<()> {
        let on = self.on.clone();
        self.retrie(ebpf, rules, &on)
    }

    fn retrie(&mut self, ebpf: &mut Ebpf, rules: &[Rule], on: &[bool]) -> anyhow::Result<()> {
        let wanted: HashMap<(u32, RuleKey), u32> = entries(rules, on)?
            .into_iter()
            .map(|(p, k, i)| ((p, k), i))
            .collect();
        let mut trie: LpmTrie<_, RuleKey, u32> = ebpf
            .map_mut(maps::RULE_LPM)
            .context("RULE_LPM missing")?
            .try_into()?;
        for (&(prefix, key), index) in &wanted {
            if self.installed.get(&(prefix, key)) != Some(index) {
                trie.insert(&Key::new(prefix, key), index, 0)
                    .context("switch RULE_LPM")?;
            }
        }
        for &(prefix, key) in self.installed.keys() {
            if !wanted.contains_key(&(prefix, key)) {
                trie.remove(&Key::new(prefix, key))
                    .context("switch RULE_LPM")?;
            }
        }
        self.installed = wanted;
        Ok(())
    }

    fn ramp(&mut self, ebpf: &mut Ebpf, rules: &[Rule], t: Duration) -> anyhow::Result<()> {
        let mut table: Option<Array<_, NetRule>> = None;
        for (i, r) in rules.iter().enumerate().filter(|(_, r)| r.ramp.is_some()) {
            let action = action_at(r, t);
            if self.ramped.get(&i) == Some(&action.drop_p) {
                continue;
            }
            if table.is_none() {
                table = Some(
                    ebpf.map_mut(maps::RULES)
                        .context("RULES missing")?
                        .try_into()?,
                );
            }
            if let Some(tab) = table.as_mut() {
                tab.set(i as u32, action, 0).context("ramp RULES")?;
            }
            self.ramped.insert(i, action.drop_p);
        }
        Ok(())
    }
}

/// The next time after `t` a rule goes on or off, or a ramp that is on moves.
pub fn next_change(rules: &[Rule], t: Duration) -> Option<Duration> {
    let edges = rules
        .iter()
        .filter_map(|r| r.window.and_then(|w| w.next_change(t)));
    let ramps = rules
        .iter()
        .filter(|r| r.ramp.is_some())
        .filter_map(|r| r.window.filter(|w| w.spans(t)))
        .map(|w: Window| (t + RAMP_STEP).min(w.end()));
    edges.chain(ramps).min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timeline::Flap;

    fn rule(window: Window, ramp: Option<(u64, u64)>) -> Rule {
        let text = "apiVersion: fault/v1\nkind: FaultPolicy\nmetadata: {name: t}\nspec:\n  \
                    duration: 1m\n  targets: [{cgroup: x}]\n  network:\n  - {direction: egress, \
                    drop: {probability: 1%}}\n";
        let mut r = policy::parse(text, std::path::Path::new("t.yaml"))
            .expect("valid")
            .rules
            .remove(0);
        r.window = Some(window);
        r.ramp = ramp;
        r
    }

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn flapping_rules_come_and_go_from_the_trie() {
        let w = Window {
            at: s(1),
            len: s(4),
            flap: Some(Flap {
                on: s(1),
                off: s(1),
            }),
        };
        let rules = vec![rule(w, None)];
        let at = |t| entries(&rules, &on_at(&rules, t)).unwrap().len();
        assert_eq!(at(s(0)), 0);
        // No cidrs: every IPv4 and every IPv6 peer.
        assert_eq!(at(s(1)), 2);
        assert_eq!(at(s(2)), 0);
        assert_eq!(at(s(3)), 2);
        assert_eq!(at(s(5)), 0);
        assert_eq!(next_change(&rules, s(0)), Some(s(1)));
        assert_eq!(next_change(&rules, s(1)), Some(s(2)));
    }

    #[test]
    fn a_ramp_moves_its_threshold_and_asks_to_be_told_every_step() {
        let w = Window {
            at: s(10),
            len: s(10),
            flap: None,
        };
        let r = rule(w, Some((0, 1000)));
        assert_eq!(action_at(&r, s(10)).drop_p, 0);
        assert_eq!(action_at(&r, s(15)).drop_p, 500);
        assert_eq!(action_at(&r, s(30)).drop_p, 1000);
        let rules = vec![r];
        assert_eq!(
            next_change(&rules, s(12)),
            Some(s(12) + Duration::from_millis(100))
        );
    }
}
