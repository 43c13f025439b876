//! Parse, validate and compile of `kind: FaultPolicy`: whatever the body, fault answers
//! with a policy or a refusal, within the bounds (no panic, no hang, no huge allocation).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    fault_fuzz::run("FaultPolicy", data);
});
