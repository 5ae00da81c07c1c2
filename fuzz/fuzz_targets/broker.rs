#![no_main]
//! See `busline_fuzz::broker`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| busline_fuzz::broker(data));
