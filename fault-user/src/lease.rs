//! The heartbeat that ends every fault within a second of the loader's death.
//!
//! Nothing fault puts in place is allowed to act past `now + LEASE` unless fault renews it:
//! the network programs' CONFIG deadline, the exec hold's, and the deadlines in each patched
//! process's clock page are all moved forward every [`RENEW_EVERY`] by a thread of the
//! loader, and never past the policy's own deadline. If the loader dies, however it dies,
//! the renewals stop and every program and clock stub sees its deadline pass within
//! [`LEASE_NS`]: the checks they already make for the policy's deadline end the fault.

use std::{
    sync::{mpsc, Arc, Mutex},
    thread::JoinHandle,
    time::Duration,
};

use aya::maps::{Array, MapData};
use fault_common::Config;

use crate::sys::time::monotonic_ns;

/// How long a fault outlives its last renewal.
pub const LEASE_NS: u64 = 1_000_000_000;
/// How often the lease is renewed: ten times a lease, so a loader that is merely slow for a
/// moment does not end its faults.
pub const RENEW_EVERY: Duration = Duration::from_millis(100);

/// Something whose faults end at a CLOCK_MONOTONIC time fault moves forward.
pub trait Renew: Send {
    /// Lets the fault act until `until_ns`, and no later than its own deadline.
    fn renew(&mut self, until_ns: u64);
}

type Renewers = Arc<Mutex<Vec<Box<dyn Renew>>>>;

/// The renewing thread of one run.
pub struct Lease {
    renewers: Renewers,
    stop: Mutex<Option<(mpsc::Sender<()>, JoinHandle<()>)>>,
}

impl Lease {
    pub fn start() -> std::io::Result<Lease> {
        let renewers: Renewers = Arc::default();
        let (tx, rx) = mpsc::channel::<()>();
        let shared = Arc::clone(&renewers);
        let thread = std::thread::Builder::new()
            .name("fault-lease".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(RENEW_EVERY) {
                    renew_all(&shared);
                }
            })?;
        Ok(Lease {
            renewers,
            stop: Mutex::new(Some((tx, thread))),
        })
    }

    /// Renews `r` now and from then on with the others.
    pub fn add(&self, mut r: Box<dyn Renew>) {
        r.renew(monotonic_ns() + LEASE_NS);
        self.renewers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(r);
    }

    /// Stops renewing: from here the faults end by themselves within a lease, unless they
    /// are taken off first.
    pub fn stop(&self) {
        let taken = self.stop.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some((tx, thread)) = taken {
            drop(tx);
            let _ = thread.join();
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.stop();
    }
}

fn renew_all(renewers: &Renewers) {
    let until = monotonic_ns() + LEASE_NS;
    for r in renewers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter_mut()
    {
        r.renew(until);
    }
}

/// The CONFIG map of a loaded object: its deadline is the lease, capped at `deadline_ns`.
pub struct ConfigLease {
    pub config: Array<MapData, Config>,
    pub deadline_ns: u64,
}

impl Renew for ConfigLease {
    fn renew(&mut self, until_ns: u64) {
        let Ok(mut c) = self.config.get(&0, 0) else {
            return;
        };
        c.deadline_ns = until_ns.min(self.deadline_ns);
        let _ = self.config.set(0, c, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Count(Arc<Mutex<Vec<u64>>>);

    impl Renew for Count {
        fn renew(&mut self, until_ns: u64) {
            self.0.lock().unwrap().push(until_ns);
        }
    }

    #[test]
    fn renewals_move_forward_and_stop_when_asked() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let lease = Lease::start().unwrap();
        let before = monotonic_ns();
        lease.add(Box::new(Count(Arc::clone(&seen))));
        std::thread::sleep(RENEW_EVERY * 5);
        lease.stop();
        let after_stop = seen.lock().unwrap().len();
        std::thread::sleep(RENEW_EVERY * 3);
        let got = seen.lock().unwrap().clone();
        assert!(
            got.len() >= 3,
            "renewed at add and then periodically: {got:?}"
        );
        assert_eq!(got.len(), after_stop, "no renewal after stop");
        assert!(got.windows(2).all(|w| w[0] <= w[1]), "{got:?}");
        assert!(
            got[0] >= before + LEASE_NS,
            "a lease reaches a second ahead"
        );
    }
}
