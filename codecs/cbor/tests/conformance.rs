//! The shared codec contract, run over this codec.

#[test]
fn conformance() {
    busline_core::testing::codec_conformance(busline_cbor::CborCodec::with_max_frame_size);
}
