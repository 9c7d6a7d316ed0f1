//! Fuzz target `load`: arbitrary space file and zone file text through load, validate and
//! compile. The checks are `spaceroute_fuzz::check_load`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let _ = spaceroute_fuzz::check_load(input);
});
