#![no_main]
//! See `busline_fuzz::shm_ring`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| busline_fuzz::shm_ring(data));
