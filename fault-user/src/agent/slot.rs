//! One file of the directory and the loader running it: the reconcile of a single file.
//! Each step compares what the file asks for with what runs, and moves one way: start a
//! loader for new content, stop one whose file changed or went, take a loader's end. A
//! changed file's old loader is stopped and reverted before the new one starts, since both
//! would claim the same targets.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use super::{
    dir::{Verdict, Wanted},
    loader::{Ended, Loader, Phase},
};

/// A file's state, as `fault status` and the status file say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileState {
    /// Its loader is putting the faults in place.
    Applying,
    /// Every fault is in place.
    Active,
    /// Its content changed: the old experiment is reverting, the new one starts next.
    Replacing,
    /// Its file is gone: its experiment is reverting.
    Removing,
    /// Not an experiment this agent can run; nothing of it is applied.
    Invalid,
    /// Its loader refused it (exit 2: a target or a host check); retried when it changes.
    Refused,
    /// Its loader failed; retried with a growing pause.
    Failed,
    /// It ran its duration (or was stopped by `fault stop`); run again when it changes.
    Ended,
    /// Its probes aborted it (exit 3); run again when it changes.
    Aborted,
}

impl FileState {
    pub const ALL: [FileState; 9] = [
        FileState::Applying,
        FileState::Active,
        FileState::Replacing,
        FileState::Removing,
        FileState::Invalid,
        FileState::Refused,
        FileState::Failed,
        FileState::Ended,
        FileState::Aborted,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FileState::Applying => "applying",
            FileState::Active => "active",
            FileState::Replacing => "replacing",
            FileState::Removing => "removing",
            FileState::Invalid => "invalid",
            FileState::Refused => "refused",
            FileState::Failed => "failed",
            FileState::Ended => "ended",
            FileState::Aborted => "aborted",
        }
    }
}

/// What a step did, for the event log, the metrics and the agent's own log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Happened {
    Started {
        name: String,
        pid: u32,
    },
    Applied {
        name: String,
        took: Duration,
    },
    Stopping {
        name: String,
    },
    Reverted {
        name: String,
    },
    Ended {
        name: String,
        state: FileState,
        why: String,
    },
    Invalid {
        why: String,
    },
    StartFailed {
        why: String,
    },
}

pub struct Slot {
    pub file: PathBuf,
    /// What the file asks for now; `None` once it is gone.
    pub want: Option<Wanted>,
    pub loader: Option<Loader>,
    /// The last loader's end, for the content (hash) it ran.
    pub last: Option<(u64, FileState, String)>,
    failures: u32,
    retry_at: Option<Instant>,
    /// When the current content was first seen: the apply latency counts from here.
    noticed: Instant,
}

/// The pause before a failed loader is started again: 1 s, doubling, at most 30 s.
fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1 << failures.saturating_sub(1).min(5)).min(Duration::from_secs(30))
}

impl Slot {
    /// A file not read yet: [`Slot::set_want`] gives it its content.
    pub fn new(file: PathBuf) -> Slot {
        Slot {
            file,
            want: None,
            loader: None,
            last: None,
            failures: 0,
            retry_at: None,
            noticed: Instant::now(),
        }
    }

    /// The file as just read (`None`: gone). New content starts afresh: no pause, no
    /// earlier end holding it back.
    pub fn set_want(&mut self, want: Option<Wanted>) -> Option<Happened> {
        let changed = want.as_ref().map(|w| w.hash) != self.want.as_ref().map(|w| w.hash);
        let mut said = None;
        if changed {
            self.failures = 0;
            self.retry_at = None;
            self.noticed = Instant::now();
            if let Some(Wanted {
                verdict: Verdict::Invalid { why },
                ..
            }) = &want
            {
                said = Some(Happened::Invalid { why: why.clone() });
            }
        }
        self.want = want;
        said
    }

    /// Whether nothing is left of it: the file is gone and its loader ended.
    pub fn is_done(&self) -> bool {
        self.want.is_none() && self.loader.is_none()
    }

    /// One reconcile step.
    pub fn step(&mut self, now: Instant) -> Vec<Happened> {
        let mut out = Vec::new();
        self.take_end(now, &mut out);
        let runnable = self.runnable();
        if let Some(l) = &mut self.loader {
            if runnable.as_ref().is_none_or(|(_, hash)| *hash != l.hash) {
                if !matches!(l.phase, Phase::Stopping(_)) {
                    out.push(Happened::Stopping {
                        name: l.name.clone(),
                    });
                }
                l.stop();
            }
            return out;
        }
        if let Some((name, hash)) = runnable {
            if self.may_start(hash, now) {
                self.start(name, hash, now, &mut out);
            }
        }
        out
    }

    /// The valid content the file asks for: its name and hash.
    fn runnable(&self) -> Option<(String, u64)> {
        match &self.want {
            Some(Wanted {
                verdict: Verdict::Valid { name },
                hash,
                ..
            }) => Some((name.clone(), *hash)),
            _ => None,
        }
    }

    fn may_start(&self, hash: u64, now: Instant) -> bool {
        let held = matches!(&self.last, Some((h, s, _)) if *h == hash && *s != FileState::Failed);
        !held && self.retry_at.is_none_or(|t| now >= t)
    }

    fn start(&mut self, name: String, hash: u64, now: Instant, out: &mut Vec<Happened>) {
        let Some(want) = &self.want else { return };
        match Loader::start(&want.file, &name, hash) {
            Ok(l) => {
                out.push(Happened::Started { name, pid: l.pid() });
                self.loader = Some(l);
            }
            Err(e) => {
                self.fail(hash, format!("{e:#}"), now);
                out.push(Happened::StartFailed {
                    why: format!("{e:#}"),
                });
            }
        }
    }

    fn fail(&mut self, hash: u64, why: String, now: Instant) {
        self.failures += 1;
        self.retry_at = Some(now + backoff(self.failures));
        self.last = Some((hash, FileState::Failed, why));
    }

    /// Readiness and the end of the running loader, if either came.
    fn take_end(&mut self, now: Instant, out: &mut Vec<Happened>) {
        let Some(l) = &mut self.loader else { return };
        let was = l.phase;
        let ended = l.poll();
        if was == Phase::Starting && l.phase == Phase::Active {
            out.push(Happened::Applied {
                name: l.name.clone(),
                took: self.noticed.elapsed(),
            });
        }
        let Some(end) = ended else { return };
        let (name, hash) = (l.name.clone(), l.hash);
        self.loader = None;
        if matches!(was, Phase::Stopping(_)) {
            out.push(Happened::Reverted { name });
            return;
        }
        let state = end_state(&end);
        if state == FileState::Failed {
            self.fail(hash, end.why.clone(), now);
        } else {
            self.last = Some((hash, state, end.why.clone()));
        }
        out.push(Happened::Ended {
            name,
            state,
            why: end.why,
        });
    }

    /// The state to show, with why (for the states that have one).
    pub fn state(&self) -> Option<(FileState, Option<String>)> {
        if let Some(l) = &self.loader {
            let s = match (l.phase, &self.want) {
                (Phase::Starting, _) => FileState::Applying,
                (Phase::Active, _) => FileState::Active,
                (Phase::Stopping(_), Some(_)) => FileState::Replacing,
                (Phase::Stopping(_), None) => FileState::Removing,
            };
            return Some((s, None));
        }
        let want = self.want.as_ref()?;
        if let Verdict::Invalid { why } = &want.verdict {
            return Some((FileState::Invalid, Some(why.clone())));
        }
        match &self.last {
            Some((h, s, why)) if *h == want.hash => Some((*s, Some(why.clone()))),
            _ => Some((FileState::Applying, None)),
        }
    }

    pub fn name(&self) -> Option<&str> {
        if let Some(l) = &self.loader {
            return Some(&l.name);
        }
        match &self.want.as_ref()?.verdict {
            Verdict::Valid { name } => Some(name),
            Verdict::Invalid { .. } => None,
        }
    }
}

/// What a loader's end means for its file.
fn end_state(end: &Ended) -> FileState {
    match (end.code, end.was_active) {
        (Some(0), _) => FileState::Ended,
        (Some(2), false) => FileState::Refused,
        (Some(3), _) => FileState::Aborted,
        _ => FileState::Failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_loader_waits_longer_each_time_up_to_half_a_minute() {
        let got: Vec<u64> = (1..=8).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 16, 30, 30, 30]);
    }

    fn ended(code: Option<i32>, was_active: bool) -> FileState {
        end_state(&Ended {
            code,
            was_active,
            why: String::new(),
        })
    }

    #[test]
    fn an_end_is_read_from_the_exit_code() {
        assert_eq!(ended(Some(0), true), FileState::Ended);
        assert_eq!(ended(Some(2), false), FileState::Refused);
        assert_eq!(ended(Some(3), true), FileState::Aborted);
        assert_eq!(ended(Some(1), false), FileState::Failed);
        assert_eq!(ended(None, true), FileState::Failed);
        // A refusal after the faults went on is not about the file.
        assert_eq!(ended(Some(2), true), FileState::Failed);
    }

    #[test]
    fn new_content_clears_the_pause_and_says_why_it_is_invalid() {
        let want = |hash, verdict| Wanted {
            file: "/x/a.yaml".into(),
            hash,
            verdict,
        };
        let mut s = Slot::new("/x/a.yaml".into());
        s.set_want(Some(want(1, Verdict::Valid { name: "a".into() })));
        s.fail(1, "boom".into(), Instant::now());
        assert!(!s.may_start(1, Instant::now()));
        let said = s.set_want(Some(want(2, Verdict::Invalid { why: "bad".into() })));
        assert_eq!(said, Some(Happened::Invalid { why: "bad".into() }));
        assert!(s.may_start(2, Instant::now()));
        assert_eq!(s.state(), Some((FileState::Invalid, Some("bad".into()))));
        assert_eq!(s.set_want(None), None);
        assert!(s.is_done());
    }
}
