//! virtio-net: features, the 12-byte virtio_net_hdr_v1, TX and RX chain handling.
// INTERFACE (fixed): pub const DEVICE_FEATURES: u64 (VERSION_1 | MAC | EVENT_IDX | MRG_RXBUF);
//   pub const NET_HDR_LEN: usize = 12; pub fn config_space(mac: [u8; 6]) -> Vec<u8>;
//   pub const RX_QUEUE: u16 = 0; pub const TX_QUEUE: u16 = 1; pub const MAX_FRAME: usize = 65550
