#![no_main]
//! Any bytes through the jsonrpc decoder: see `busline_fuzz::decode`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| busline_fuzz::decode(busline_fuzz::Wire::JsonRpc, data));
