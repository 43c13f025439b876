//! Removing what a loader that is no longer running left.

use crate::{
    clock,
    net::{
        clsact, fq,
        intents::{self, Intents},
        loader,
    },
    pause,
    state::{self, State},
};

/// Thaws the cgroups a pause may have frozen, and ends injection through the pinned CONFIG,
/// so even a filter that cannot be removed is inert; then lets go of held processes,
/// restores clocks, filters, qdiscs, and removes the record.
pub fn cleanup_dead(s: &State) -> Vec<String> {
    let mut problems = pause::thaw_recorded(s);
    if let Ok(dir) = state::pin_dir(&s.name) {
        let _ = loader::expire_pinned(&dir);
        // Processes the dead loader held at exec go on (unpatched, or patched and reverted
        // below).
        clock::exec::release_pinned(&dir);
    }
    problems.extend(clock::revert_recorded(&s.clock_processes));
    // The record may predate the first patch: the targets' processes are looked at all the
    // same (reading a process's maps is all it costs when there is nothing to restore).
    problems.extend(clock::revert_unrecorded(&s.targets, &s.clock_processes));
    // Filters added after the record was last written first, so that the recorded qdiscs
    // they are on can go.
    problems.extend(intents::remove_intended(&Intents::of(&s.name).read()));
    problems.extend(clsact::remove_recorded(&s.attachments, &s.qdiscs));
    problems.extend(fq::restore_recorded(&s.fq));
    if let Err(e) = state::remove_pins(&s.name) {
        problems.push(format!("{e:#}"));
    }
    if let Err(e) = s.remove_file() {
        problems.push(format!("{e:#}"));
    }
    problems
}
