#![no_main]
//! See `busline_fuzz::address`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| busline_fuzz::address(data));
