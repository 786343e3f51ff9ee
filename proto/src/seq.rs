//! Sequence numbers on the wire: per-boot `u32` counters that wrap.
//!
//! Order between two of them is serial-number arithmetic (RFC 1982,
//! section 3.2): `a` is before `b` when `b - a`, wrapped, is less than
//! 2^31. The device's backlog and the gateway's admission both compare
//! with it, so they agree across the wrap.

/// True when sequence number `a` is at or before `b` (RFC 1982).
pub fn seq_le(a: u32, b: u32) -> bool {
    // Reinterpreting the wrapped difference as signed is the point.
    (b.wrapping_sub(a) as i32) >= 0
}

#[cfg(test)]
mod tests {
    use super::seq_le;

    #[test]
    fn order_survives_the_wrap() {
        assert!(seq_le(u32::MAX, 0));
        assert!(seq_le(u32::MAX - 3, 2));
        assert!(!seq_le(2, u32::MAX - 3));
        assert!(seq_le(5, 5));
        assert!(!seq_le(6, 5));
    }
}
