//! Two runs that would give the same target faults of one kind: the second is refused with
//! exit 2 naming both, the first goes on untouched; a fault of another kind on the same
//! target goes along; once the first run ends the second applies. Run one at a time
//! (`--test-threads=1`); each test leaves nothing behind.

use std::path::Path;

use fault_tests::{
    anchor, assert_no_leftovers, fault, require_root, write_policy, Cgroup, FaultApply, Netns,
    PolicyFile, STATE_DIR,
};

const NETWORK: &str = "  network:\n    - direction: egress\n      drop: {probability: 10%}\n";
const CLOCK: &str = "  clock:\n    - name: ahead\n      offset: 5s\n";

fn policy(name: &str, cgroup: &Cgroup, body: &str) -> PolicyFile {
    write_policy(&format!(
        "apiVersion: fault/v1\nkind: FaultPolicy\nmetadata:\n  name: {name}\nspec:\n  \
         duration: 60s\n  targets:\n    - cgroup: {}\n{body}",
        cgroup.path().display()
    ))
}

/// An experiment with one clock step on `cgroup`, on from the start.
fn clock_experiment(name: &str, cgroup: &Cgroup) -> PolicyFile {
    write_policy(&format!(
        "apiVersion: fault/v1\nkind: Experiment\nmetadata:\n  name: {name}\nspec:\n  \
         duration: 60s\n  groups:\n    a: [{{cgroup: {}}}]\n  steps:\n    - name: skew\n      \
         at: 0s\n      for: 30s\n      targets: a\n      clock: [{{offset: 3s}}]\n",
        cgroup.path().display()
    ))
}

#[track_caller]
fn assert_refused(file: &PolicyFile, name: &str, other: &str, kind: &str) {
    let out = fault(["apply", file.path().to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{name} is refused:\n{err}");
    for word in [name, other, kind] {
        assert!(
            err.contains(word),
            "the refusal of {name} names {word}:\n{err}"
        );
    }
    assert!(
        !Path::new(STATE_DIR).join(format!("{name}.json")).exists(),
        "a refused run leaves no record"
    );
}

#[test]
fn a_second_run_of_one_kind_on_a_target_is_refused_naming_both() {
    require_root();
    {
        let ns = Netns::new("collide");
        let cgroup = Cgroup::new("collide");
        let _anchor = anchor(&cgroup, &ns);
        let first = policy("collide-one", &cgroup, NETWORK);
        let second = policy("collide-two", &cgroup, NETWORK);
        let clock = policy("collide-clock", &cgroup, CLOCK);
        let skew = clock_experiment("collide-skew", &cgroup);

        let mut one = FaultApply::start(first.path(), "collide-one");
        one.wait_ready();
        assert_refused(&second, "collide-two", "collide-one", "network");
        // Another kind on the same target goes along.
        let mut clocked = FaultApply::start(clock.path(), "collide-clock");
        clocked.wait_ready();
        // An experiment's clock step on it is the same kind as the policy's clock rule.
        assert_refused(&skew, "collide-skew", "collide-clock", "clock");
        assert!(
            one.try_wait().is_none() && clocked.try_wait().is_none(),
            "the runs already there go on"
        );
        // Once the first has ended, the second applies.
        let (status, log) = one.stop();
        assert!(status.success(), "{log}");
        let mut two = FaultApply::start(second.path(), "collide-two");
        two.wait_ready();
        drop(two);
        drop(clocked);
    }
    assert_no_leftovers();
}
