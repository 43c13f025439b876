//! The network kind of fault, as the engine runs it.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context as _;
use aya::Ebpf;

use super::{
    attach::Attached,
    fq::{self, Fq},
    intents::Intents,
    loader, peer,
    resend::Resender,
    switch::{self, Switch},
    DelayPath, Direction, NetPlan,
};
use crate::{
    display,
    engine::{Event, Fault, Run},
    program_log::LogReader,
    state::{RuleInfo, State},
    target::{self, Netns},
};

/// The network faults of one run. Fields drop in order: the programs come off their
/// interfaces before fq goes, and the object (with its maps) goes last.
#[derive(Default)]
pub struct NetFault {
    attached: Attached,
    fq: Vec<Fq>,
    resender: Option<Resender>,
    /// The programs' rare events (`fault apply -v`).
    log: Option<LogReader>,
    ebpf: Option<Ebpf>,
    /// Cgroup ids covered so far.
    ids: BTreeSet<u64>,
    /// Namespaces covered so far, by inode, with the cookie each had (see
    /// [`crate::sys::netns::cookie`]; a new namespace may get a gone one's inode number)
    /// and a process that was in it.
    netns: BTreeMap<u64, (Option<u64>, u32)>,
    rules: Vec<RuleInfo>,
    /// Which rules are on (experiments switch them along the timeline).
    switch: Switch,
}

impl NetFault {
    pub fn new(run: &Run) -> Self {
        let mut net = NetFault {
            rules: RuleInfo::of(&run.plan.policy),
            ..Default::default()
        };
        // Filters and fq are written down before they go on (see `super::intents`).
        net.attached
            .note_intents(Intents::of(&run.plan.policy.name));
        net
    }

    fn plan(run: &Run) -> &NetPlan {
        run.plan
            .net
            .as_ref()
            .expect("a network kind has a network plan")
    }

    fn ebpf(&mut self) -> anyhow::Result<&mut Ebpf> {
        self.ebpf
            .as_mut()
            .context("the network object is not loaded")
    }

    fn load(&mut self, run: &Run) -> anyhow::Result<()> {
        let plan = Self::plan(run);
        let rules = &run.plan.policy.rules;
        // The timeline begins once every kind is in place (see `crate::engine`): until then
        // only the steps on at its zero are in the trie. Counting from the start of apply
        // here switched a later step on for as long as the rest took to attach.
        let t = std::time::Duration::ZERO;
        let actions: Vec<_> = rules.iter().map(|r| switch::action_at(r, t)).collect();
        let on = switch::on_at(rules, t);
        let initial = switch::entries(rules, &on)?;
        let classes = target::class_ids(&run.plan.resolved.targets);
        self.ids.extend(classes.iter().map(|(id, _)| *id));
        let resend = plan.delay_path == Some(DelayPath::Userspace);
        let ebpf = loader::load(&loader::Tables {
            classes: &classes,
            lpm: &run.plan.lpm,
            initial: &initial,
            rules: &actions,
            deadline_ns: run.deadline_ns,
            resend,
            peer: plan.at_peer,
            seed: run.plan.policy.seed.map_or(0, kernel_seed),
        })?;
        let mut ebpf = ebpf;
        match LogReader::start(&mut ebpf, run.plan.options.verbose) {
            Ok(reader) => self.log = Some(reader),
            Err(why) if run.plan.options.verbose => eprintln!("fault: warning: {why}"),
            Err(_) => {}
        }
        loader::pin(&ebpf, &run.pin_dir)?;
        run.lease.add(Box::new(loader::config_lease(
            &run.pin_dir,
            run.deadline_ns,
        )?));
        self.ebpf = Some(ebpf);
        self.switch = Switch::loaded(on, &initial);
        if resend {
            // Ready, with its sockets, before the program hands it anything.
            let r = Resender::start(self.ebpf()?, run.plan.options.debug_resend)
                .context("start the userspace delay path")?;
            self.resender = Some(r);
        }
        Ok(())
    }

    /// Attaches in `netns` (and at `peers`): egress on their interfaces, ingress delay at
    /// the far ends, the resender's sockets, fq.
    fn cover(&mut self, run: &Run, netns: &[Netns], peers: &[peer::Peer]) -> anyhow::Result<()> {
        let plan = Self::plan(run);
        let cookies = netns
            .iter()
            .map(|n| (n.inode, (crate::sys::netns::cookie(n), n.pid)));
        self.netns.extend(cookies);
        let ebpf = self
            .ebpf
            .as_mut()
            .context("the network object is not loaded")?;
        if plan.directions.contains(&Direction::Egress) {
            let program = loader::egress_program(ebpf);
            for ns in netns {
                self.attached
                    .attach_egress(ebpf, program, ns, None, plan.tc, plan.loopback)?;
            }
        }
        if run.plan.policy.is_experiment() {
            classify_peers(ebpf, run, peers)?;
        }
        let program = loader::peer_program(ebpf);
        for p in peers {
            let only = std::slice::from_ref(&p.ifname);
            self.attached
                .attach_egress(ebpf, program, &p.netns, Some(only), plan.tc, true)?;
        }
        if let Some(r) = &self.resender {
            for n in netns.iter().chain(peers.iter().map(|p| &p.netns)) {
                r.add_netns(n)?;
            }
        }
        if plan.delay_path == Some(DelayPath::Fq) {
            fq::install(
                &NetPlan::fq_places(netns, peers),
                &Intents::of(&run.plan.policy.name),
                &mut self.fq,
            )
            .context(
                "delay and rate need sch_fq as the root qdisc (--delay-path userspace uses \
                 fault's own, slower, path instead)",
            )?;
        }
        Ok(())
    }

    /// Forgets the namespaces among `netns` whose inode number a gone namespace had (a
    /// container started again may get its predecessor's): their cookie is another, and
    /// what was attached there went with the old one. They are covered again as new.
    fn forget_reused(&mut self, netns: &[Netns]) {
        for n in netns {
            let Some(&(Some(was), pid)) = self.netns.get(&n.inode) else {
                continue;
            };
            // While the process seen in it is still there, it is the same namespace.
            if Netns::of_pid(pid).is_ok_and(|now| now.inode == n.inode) {
                continue;
            }
            match crate::sys::netns::cookie(n) {
                Some(now) if now != was => {}
                // The same one, with another process in it now.
                Some(_) => {
                    self.netns.insert(n.inode, (Some(was), n.pid));
                    continue;
                }
                None => continue,
            }
            println!(
                "fault: network namespace {} is a new one under a gone one's number; attaching \
                 there again",
                n.inode
            );
            self.attached.forget_netns(n.inode);
            for f in self
                .fq
                .iter_mut()
                .filter(|f| f.record.netns.inode == n.inode)
            {
                f.forget();
            }
            self.fq.retain(|f| f.record.netns.inode != n.inode);
            self.netns.remove(&n.inode);
        }
    }

    /// Attaches the cgroup programs to `cgroups`: the ingress one for ingress rules, and
    /// the egress one for certain drops (at the sockets, so in place before a target's
    /// process starts in a namespace the TC program is not attached to yet).
    fn attach_cgroups(&mut self, run: &Run, cgroups: &[std::path::PathBuf]) -> anyhow::Result<()> {
        let plan = Self::plan(run);
        let ebpf = self
            .ebpf
            .as_mut()
            .context("the network object is not loaded")?;
        if plan.directions.contains(&Direction::Ingress) {
            self.attached
                .attach_cgroups(ebpf, cgroups, Direction::Ingress)?;
        }
        if plan.certain_egress_drop {
            self.attached
                .attach_cgroups(ebpf, cgroups, Direction::Egress)?;
        }
        Ok(())
    }

    fn counters(&self, run: &Run) -> Option<Vec<display::RuleReport>> {
        let ebpf = self.ebpf.as_ref()?;
        let c = loader::live_counters(ebpf, run.plan.policy.rules.len()).ok()?;
        Some(display::rule_reports(&self.rules, &c))
    }
}

/// The seed as the programs take it: never 0, which means "no seed" to them.
pub fn kernel_seed(seed: u64) -> u64 {
    seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1
}

/// Tells the ingress-delay program the class of the target behind each far end.
fn classify_peers(ebpf: &mut Ebpf, run: &Run, peers: &[peer::Peer]) -> anyhow::Result<()> {
    if peers.is_empty() {
        return Ok(());
    }
    let classes = target::netns_classes(&run.plan.resolved.targets);
    for p in peers {
        let Some(&class) = classes.get(&p.target_netns) else {
            continue;
        };
        let name = p.ifname.clone();
        let index = crate::sys::netns::in_netns(&p.netns, move || {
            Ok(crate::sys::rtnl::link_index(&name)?)
        })?;
        loader::set_peer_class(ebpf, index, class)?;
    }
    Ok(())
}

impl Fault for NetFault {
    fn start(&mut self, run: &Run) -> anyhow::Result<()> {
        self.load(run)?;
        let resolved = &run.plan.resolved;
        let cgroups: Vec<_> = resolved.targets.iter().map(|t| t.cgroup.clone()).collect();
        self.attach_cgroups(run, &cgroups)?;
        self.cover(run, &resolved.netns, &Self::plan(run).peers)
    }

    /// New cgroup ids go into TARGETS; new network namespaces get the programs (ingress
    /// needs nothing there: cgroup programs apply to descendants by themselves).
    fn follow(&mut self, run: &Run) -> anyhow::Result<()> {
        let (_, netns) = target::scan(&run.plan.resolved.targets);
        self.forget_reused(&netns);
        // Targets found under another cgroup (a container started again).
        let moved: Vec<_> = run.moved.iter().map(|m| m.to.clone()).collect();
        self.attach_cgroups(run, &moved)?;
        if !moved.is_empty() {
            // A moved group's partitions may cut by new addresses.
            let ebpf = self
                .ebpf
                .as_mut()
                .context("the network object is not loaded")?;
            self.switch.rematch(ebpf, &run.plan.policy.rules)?;
        }
        let new_ids: Vec<(u64, u8)> = target::class_ids(&run.plan.resolved.targets)
            .into_iter()
            .filter(|(i, _)| !self.ids.contains(i))
            .collect();
        if !new_ids.is_empty() {
            loader::add_targets(self.ebpf()?, &new_ids)?;
            self.ids.extend(new_ids.iter().map(|(id, _)| *id));
        }
        let new_ns: Vec<Netns> = netns
            .into_iter()
            .filter(|n| !self.netns.contains_key(&n.inode))
            .collect();
        let plan = Self::plan(run);
        let wanted = plan.directions.contains(&Direction::Egress) || plan.at_peer;
        if !wanted || new_ns.is_empty() {
            return Ok(());
        }
        // A namespace of the host's is never new, so the far ends need no check here.
        let peers = match plan.at_peer {
            true => peer::find(&new_ns)?,
            false => Vec::new(),
        };
        let covered = self.cover(run, &new_ns, &peers);
        for n in &new_ns {
            println!(
                "fault: a target process appeared in network namespace {}; attached there",
                n.inode
            );
        }
        covered
    }

    fn tick(
        &mut self,
        run: &Run,
        t: std::time::Duration,
    ) -> anyhow::Result<Option<std::time::Duration>> {
        let Some(ebpf) = self.ebpf.as_mut() else {
            return Ok(None);
        };
        self.switch.apply(ebpf, &run.plan.policy.rules, t)
    }

    fn event<'a>(&'a mut self, _run: &'a Run) -> Event<'a> {
        Box::pin(async move {
            match self.log.as_mut() {
                Some(log) => log.next().await,
                None => std::future::pending().await,
            }
        })
    }

    fn record(&self, state: &mut State) {
        state.attachments = self.attached.records();
        state.qdiscs = self.attached.qdisc_records();
        state.ingress_cgroups = self.attached.cgroups(Direction::Ingress);
        state.fq = self.fq.iter().map(|f| f.record.clone()).collect();
    }

    fn banner(&self, run: &Run) -> Vec<String> {
        let plan = Self::plan(run);
        let policy = &run.plan.policy;
        let mut lines = vec![format!(
            "fault: {} active for {}: egress via {} on {} interfaces in {} network namespace(s), ingress on {} cgroup(s); Ctrl-C reverts",
            policy.name,
            humantime::format_duration(policy.duration),
            plan.tc.name(),
            self.attached.records().len(),
            run.plan.resolved.netns.len(),
            self.attached.cgroups(Direction::Ingress).len(),
        )];
        let egress_cgroups = self.attached.cgroups(Direction::Egress).len();
        if egress_cgroups > 0 {
            lines.push(format!(
                "  certain drops also at the sockets of {egress_cgroups} cgroup(s), so a target's \
                 first packets in a new namespace are dropped too"
            ));
        }
        let ifaces = self.attached.interfaces();
        if !ifaces.is_empty() {
            lines.push(format!("  interfaces: {}", ifaces.join(" ")));
        }
        lines.extend(plan.describe().into_iter().map(|l| format!("  {l}")));
        lines.extend(run.plan.resolved.targets.iter().map(|t| {
            format!(
                "  target {} -> cgroup {} (id {})",
                t.label,
                t.cgroup.display(),
                t.cgroup_id
            )
        }));
        lines
    }

    fn sample(&self, run: &Run, sample: &mut crate::observe::event::Sample) {
        let Some(ebpf) = self.ebpf.as_ref() else {
            return;
        };
        let Ok(counters) = loader::live_counters(ebpf, run.plan.policy.rules.len()) else {
            return;
        };
        sample.rules = self
            .rules
            .iter()
            .zip(&counters)
            .map(|(r, c)| crate::observe::event::RuleCounts::of(&r.name, c))
            .collect();
    }

    fn live(&self, run: &Run) -> Vec<String> {
        if run.live_in_place {
            return Vec::new(); // the live view draws the rules' rates itself
        }
        self.counters(run)
            .map(|c| display::counter_lines(&c))
            .unwrap_or_default()
    }

    fn stop(&mut self, run: &Run) -> (Vec<String>, Vec<String>) {
        let mut lines = Vec::new();
        if let Some(c) = self.counters(run) {
            lines.push("final counters:".to_string());
            lines.extend(display::counter_lines(&c));
        }
        let mut problems = std::mem::take(&mut self.attached).detach();
        problems.extend(self.fq.iter_mut().filter_map(|f| f.take_down().err()));
        self.fq.clear();
        match self.resender.take().map(Resender::finish) {
            Some(Ok(r)) => lines.push(display::resend_line(&r)),
            Some(Err(e)) => problems.push(format!("userspace delay path: {e:#}")),
            None => {}
        }
        self.ebpf = None;
        (lines, problems)
    }
}
