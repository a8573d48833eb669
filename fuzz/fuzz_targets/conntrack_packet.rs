#![no_main]
// The body is vswitch_core::fuzzing::conntrack_packet (also replayed by the regression tests).
libfuzzer_sys::fuzz_target!(|data: &[u8]| vswitch_core::fuzzing::conntrack_packet(data));
