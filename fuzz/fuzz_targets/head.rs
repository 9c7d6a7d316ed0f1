//! Fuzz target `head`: an HTTP/1 request head through the router's header rules. The checks
//! are `spaceroute_fuzz::check_head`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let _ = spaceroute_fuzz::check_head(input);
});
