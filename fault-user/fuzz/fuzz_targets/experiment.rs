//! Parse, validate and compile of `kind: Experiment` (groups, steps, partitions, probes).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    fault_fuzz::run("Experiment", data);
});
