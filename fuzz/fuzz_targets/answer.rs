//! Fuzz target `answer`: arbitrary query bytes from a chosen source over UDP or TCP, against
//! the two-spaces fixture. The checks are `spaceroute_fuzz::check_answer`.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use spaceroute::snapshot::Snapshot;

static FIXTURE: OnceLock<Snapshot> = OnceLock::new();

fuzz_target!(|input: &[u8]| {
    let snapshot = FIXTURE.get_or_init(spaceroute_fuzz::fixture);
    let _ = spaceroute_fuzz::check_answer(snapshot, input);
});
