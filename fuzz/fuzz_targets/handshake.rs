#![no_main]
//! See `busline_fuzz::handshake`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| busline_fuzz::handshake(data));
